//! Hash algorithms and allocation-free hashing of point keys.

use std::fmt;
use std::str::FromStr;

use crc::{CRC_32_ISO_HDLC, Crc, Table};
use serde::{Deserialize, Serialize};
use twox_hash::XxHash3_64;

use crate::RingError;

/// CRC32/IEEE (Go's `crc32.ChecksumIEEE`), slice-by-16 tables built at
/// compile time.
static CRC32: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISO_HDLC);

/// Longest decimal `i64`: `"-9223372036854775808"`.
const MAX_I64_DIGITS: usize = 20;

/// Size of the stack buffer a point key is assembled in (the single-shot
/// hash is faster than feeding three pieces). Longer keys (host ids over 235
/// bytes) are fed to the CRC32 digest piece by piece, or copied to a heap
/// buffer for xxh3.
const STACK_KEY: usize = 256;

/// Hash function for vnode positions and shard keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    /// CRC32 (IEEE polynomial, `crc::CRC_32_ISO_HDLC`): the exact placement
    /// of the original Go design, for compatibility with it. Its vnode
    /// placement balances poorly (see `DEFAULT_VNODES` and
    /// docs/adr/0001-ring-hash-default.md).
    Crc32,
    /// xxh3-64 with seed 0, truncated to its low 32 bits. The default.
    #[default]
    Xxh3,
}

impl HashAlgorithm {
    /// Every algorithm, in declaration order.
    pub const ALL: [HashAlgorithm; 2] = [HashAlgorithm::Crc32, HashAlgorithm::Xxh3];

    /// The configuration name: `"crc32"` or `"xxh3"`.
    pub fn as_str(self) -> &'static str {
        match self {
            HashAlgorithm::Crc32 => "crc32",
            HashAlgorithm::Xxh3 => "xxh3",
        }
    }

    /// Hash an arbitrary key.
    #[inline]
    pub fn hash_bytes(self, key: &[u8]) -> u32 {
        match self {
            HashAlgorithm::Crc32 => CRC32.checksum(key),
            HashAlgorithm::Xxh3 => XxHash3_64::oneshot(key) as u32,
        }
    }

    /// Hash the shard key `"{host_id}:{timestamp}"` without building the
    /// string on the heap; equal to `hash_bytes(format!(..).as_bytes())`.
    #[inline]
    pub fn hash_point(self, host_id: &str, timestamp: i64) -> u32 {
        let mut digits = [0u8; MAX_I64_DIGITS];
        let ts = format_i64(timestamp, &mut digits);
        let host = host_id.as_bytes();
        let len = host.len() + 1 + ts.len();
        if len <= STACK_KEY {
            let mut buf = [0u8; STACK_KEY];
            buf[..host.len()].copy_from_slice(host);
            buf[host.len()] = b':';
            buf[host.len() + 1..len].copy_from_slice(ts);
            return self.hash_bytes(&buf[..len]);
        }
        match self {
            HashAlgorithm::Crc32 => {
                let mut digest = CRC32.digest();
                digest.update(host);
                digest.update(b":");
                digest.update(ts);
                digest.finalize()
            }
            HashAlgorithm::Xxh3 => {
                let mut buf = Vec::with_capacity(len);
                buf.extend_from_slice(host);
                buf.push(b':');
                buf.extend_from_slice(ts);
                self.hash_bytes(&buf)
            }
        }
    }
}

/// `"00010203…99"`: two decimal digits per entry.
const DIGIT_PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Write `value` in decimal (as `Display` would) at the end of `buf` and
/// return the written digits. Two digits per division keeps the dependent
/// multiply chain short.
fn format_i64(value: i64, buf: &mut [u8; MAX_I64_DIGITS]) -> &[u8] {
    let mut n = value.unsigned_abs();
    let mut start = buf.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        start -= 2;
        buf[start..start + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        start -= 2;
        buf[start..start + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        start -= 1;
        buf[start] = b'0' + n as u8;
    }
    if value < 0 {
        start -= 1;
        buf[start] = b'-';
    }
    &buf[start..]
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for HashAlgorithm {
    type Err = RingError;

    /// Parse `"crc32"` or `"xxh3"` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HashAlgorithm::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| RingError::UnknownHashAlgorithm(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IntoDeserializer;
    use serde::de::value::Error as ValueError;

    #[test]
    fn crc32_variant_is_ieee() {
        assert_eq!(HashAlgorithm::Crc32.hash_bytes(b"123456789"), 0xCBF4_3926);
        // the slice-by-16 table agrees with the crate's default implementation
        let reference = Crc::<u32>::new(&CRC_32_ISO_HDLC);
        for key in [&b""[..], b"a", b"host-1:1640995200", &[0xAB; 1000]] {
            assert_eq!(
                HashAlgorithm::Crc32.hash_bytes(key),
                reference.checksum(key)
            );
        }
    }

    #[test]
    fn crc32_known_point() {
        let whole = Crc::<u32>::new(&CRC_32_ISO_HDLC).checksum(b"host-1:1640995200");
        assert_eq!(
            HashAlgorithm::Crc32.hash_point("host-1", 1_640_995_200),
            whole
        );
        // pinned (Python zlib.crc32 / Go crc32.ChecksumIEEE give the same)
        assert_eq!(whole, 0x5B77_D648, "got {whole:#010x}");
    }

    #[test]
    fn xxh3_is_low_32_bits_of_seed_0() {
        let key = b"host-1:1640995200";
        let full = XxHash3_64::oneshot_with_seed(0, key);
        assert_eq!(HashAlgorithm::Xxh3.hash_bytes(key), full as u32);
        assert_eq!(
            HashAlgorithm::Xxh3.hash_point("host-1", 1_640_995_200),
            full as u32
        );
    }

    #[test]
    fn format_i64_matches_display() {
        for v in [
            0,
            1,
            -1,
            9,
            10,
            -10,
            1_640_995_200,
            -1_640_995_200,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ] {
            let mut buf = [0u8; MAX_I64_DIGITS];
            assert_eq!(format_i64(v, &mut buf), v.to_string().as_bytes(), "{v}");
        }
    }

    #[test]
    fn point_hash_edges() {
        let long_host = "h".repeat(STACK_KEY * 2);
        for alg in HashAlgorithm::ALL {
            for host in ["", "host-1", long_host.as_str()] {
                for ts in [0, -5, i64::MIN, i64::MAX] {
                    let key = format!("{host}:{ts}");
                    assert_eq!(alg.hash_point(host, ts), alg.hash_bytes(key.as_bytes()));
                }
            }
            // around the stack/heap switch
            for len in STACK_KEY - 25..STACK_KEY + 5 {
                let host = "x".repeat(len);
                for ts in [7, i64::MIN] {
                    let key = format!("{host}:{ts}");
                    assert_eq!(alg.hash_point(&host, ts), alg.hash_bytes(key.as_bytes()));
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for alg in HashAlgorithm::ALL {
            assert_eq!(alg.to_string().parse::<HashAlgorithm>(), Ok(alg));
            let de: Result<HashAlgorithm, ValueError> =
                HashAlgorithm::deserialize(alg.as_str().into_deserializer());
            assert_eq!(de.unwrap(), alg);
        }
        assert_eq!("XXH3".parse::<HashAlgorithm>(), Ok(HashAlgorithm::Xxh3));
        assert_eq!(HashAlgorithm::default(), HashAlgorithm::Xxh3);
        let err = "md5".parse::<HashAlgorithm>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown hash algorithm \"md5\", valid names: crc32, xxh3"
        );
        let de: Result<HashAlgorithm, ValueError> =
            HashAlgorithm::deserialize("Crc32".into_deserializer());
        assert!(de.is_err(), "serde names are lowercase only");
    }
}
