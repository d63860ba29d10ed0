//! Host ids: the characters they may hold, and the host an `instance`
//! label (`host:port`) names. Shared by the gateway, which maps Prometheus
//! series to hosts, and query-api, which maps them back.

/// Characters of a host id (and of node ids): letters, digits, `.`, `_`,
/// `-` (nothing that is special in a Redis key pattern or hash tag). The
/// gateway, query-api, host-manager, cluster-ctl and the config check
/// ids with this one rule.
pub fn byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// The host id an `instance` label value stands for: without its `:port`
/// (and IPv6 brackets), other characters a host id cannot hold as `_`.
pub fn from_instance(instance: &str) -> String {
    let host = if let Some(rest) = instance.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match instance.rsplit_once(':') {
            Some((h, port))
                if !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && !h.contains(':') =>
            {
                h
            }
            _ => instance,
        }
    };
    host.chars()
        .map(|c| {
            if c.is_ascii() && byte(c as u8) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_becomes_a_host_id() {
        assert_eq!(from_instance("127.0.0.1:9100"), "127.0.0.1");
        assert_eq!(from_instance("web-1.example.org:9100"), "web-1.example.org");
        assert_eq!(from_instance("web-1"), "web-1");
        assert_eq!(from_instance("[::1]:9100"), "__1");
        assert_eq!(from_instance("fe80::1"), "fe80__1");
        assert_eq!(from_instance("a b*{c}:x"), "a_b__c__x");
    }
}
