//! How a sample's value is held in frames, open-chunk records and sealed
//! chunks, where one f64 per (time, metric) must say three things apart:
//!
//! - **no sample** (a gap in a column): the canonical quiet NaN, the bits
//!   of `f64::NAN` ([`ABSENT`]), as every version of the layouts has
//!   written gaps;
//! - **a sample whose value is NaN** (Prometheus summaries export NaN
//!   quantiles when empty; a legal value): [`NAN`], a quiet NaN with
//!   payload 1;
//! - **Prometheus's staleness marker** (the series ended there):
//!   [`STALE`], Prometheus's own bit pattern.
//!
//! Every other value is itself. Values are stored bit for bit (records as
//! little-endian bits, chunks by pco, which is lossless on bits; the seed
//! layout as text, with `NaN` and `stale` for the two). [`stored`] maps a
//! value that arrives (remote write, OTLP) to what is stored; the agent
//! protocol takes finite values only.

/// A gap: no sample at this time.
pub const ABSENT_BITS: u64 = 0x7ff8_0000_0000_0000;
/// A sample whose value is NaN.
pub const NAN_BITS: u64 = 0x7ff8_0000_0000_0001;
/// Prometheus's staleness marker (`value.StaleNaN`).
pub const STALE_BITS: u64 = 0x7ff0_0000_0000_0002;

/// A value that says "no sample here".
pub const ABSENT: f64 = f64::NAN;

/// Whether `v` is a gap rather than a sample.
pub fn is_absent(v: f64) -> bool {
    v.to_bits() == ABSENT_BITS
}

/// Whether `v` is a staleness marker.
pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_BITS
}

/// Whether `v` is a sample's value (not a gap, not a staleness marker).
pub fn is_value(v: f64) -> bool {
    !is_absent(v) && !is_stale(v)
}

/// What is stored for an arriving value `v`: a staleness marker as it is,
/// any other NaN (whatever its payload) as a NaN sample, every other value
/// as it is.
pub fn stored(v: f64) -> f64 {
    if v.is_nan() && !is_stale(v) {
        f64::from_bits(NAN_BITS)
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_nans_are_told_apart() {
        assert!(is_absent(f64::NAN) && is_absent(ABSENT));
        let nan = stored(f64::NAN);
        assert!(nan.is_nan() && !is_absent(nan) && !is_stale(nan) && is_value(nan));
        let stale = stored(f64::from_bits(STALE_BITS));
        assert!(is_stale(stale) && !is_absent(stale) && !is_value(stale));
        assert_eq!(stored(1.5), 1.5);
        assert_eq!(stored(f64::INFINITY), f64::INFINITY);
        // Another NaN payload (a client's) is a NaN sample too.
        assert_eq!(
            stored(f64::from_bits(0x7ff8_0000_dead_beef)).to_bits(),
            NAN_BITS
        );
    }
}
