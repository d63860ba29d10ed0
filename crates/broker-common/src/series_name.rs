//! Metric names that carry labels, in Prometheus's series notation:
//! `node_cpu_seconds_total{cpu="0",mode="idle"}`.
//!
//! The broker's model is one snapshot per host and second, a map of metric
//! name to value. Series from Prometheus remote write (and agents that want
//! them) have labels beyond the host; they travel and are stored as the
//! metric name written here, with the labels sorted by name, so one series
//! always has one name. query-api parses the name back, so PromQL sees the
//! labels Prometheus had. A plain name (`cpu_user`) is a series with no
//! labels of its own.

/// Characters of a metric name's base (and of label names agents send).
pub fn base_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':')
}

/// Checks a metric name as the gateway accepts it and query-api reads it:
/// a non-empty base of [`base_byte`]s, optionally followed by a well-formed
/// label block, at most `max` bytes in all. The error names the problem.
pub fn check(name: &str, max: usize) -> Result<(), String> {
    let shown = || name.chars().take(64).collect::<String>();
    if name.len() > max {
        return Err(format!(
            "metric name {:?} is {} bytes long, the limit is {max}",
            shown(),
            name.len()
        ));
    }
    let base = &name[..name.find('{').unwrap_or(name.len())];
    if base.is_empty() {
        return Err(format!(
            "metric name {:?} has an empty name before its labels",
            shown()
        ));
    }
    if let Some(c) = base.chars().find(|c| !c.is_ascii() || !base_byte(*c as u8)) {
        return Err(format!(
            "metric name {:?} contains {c:?} (allowed: letters, digits, '.', '_', '-', ':', then optional {{label=\"value\",...}})",
            shown()
        ));
    }
    // Checked without building the values: this runs for every name of
    // every batch the gateway takes.
    let mut keys: Vec<&str> = Vec::new();
    scan(name, |key, _| {
        if keys.contains(&key) {
            return Err(format!("label {key:?} appears twice"));
        }
        keys.push(key);
        Ok(())
    })
    .map(|_| ())
    .map_err(|e| format!("metric name {:?}: {e}", shown()))
}

/// Formats `base{k="v",...}` with `labels` sorted by name and values
/// escaped as in Prometheus's text format (`\\`, `\"`, `\n`); `base` alone
/// when there are no labels.
pub fn format(base: &str, labels: &mut [(&str, &str)]) -> String {
    if labels.is_empty() {
        return base.to_string();
    }
    labels.sort_unstable();
    let mut out = String::with_capacity(
        base.len()
            + 2
            + labels
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>(),
    );
    out.push_str(base);
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// A metric name split into its base and its labels, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesName<'a> {
    pub base: &'a str,
    pub labels: Vec<(&'a str, String)>,
}

/// Parses a name written by [`format`] (or a plain name); `Err` says what
/// is wrong with the label block. Label names must be `[A-Za-z_][A-Za-z0-9_]*`
/// and appear at most once; a trailing comma is allowed, as in PromQL.
pub fn parse(name: &str) -> Result<SeriesName<'_>, String> {
    let mut labels: Vec<(&str, String)> = Vec::new();
    let base = scan(name, |key, raw| {
        if labels.iter().any(|(k, _)| *k == key) {
            return Err(format!("label {key:?} appears twice"));
        }
        labels.push((key, unescape(raw)));
        Ok(())
    })?;
    labels.sort_unstable_by(|a, b| a.0.cmp(b.0));
    Ok(SeriesName { base, labels })
}

/// Walks `name`'s label block, checking its syntax, and hands each label's
/// name and value as written (escapes in place) to `label`; returns the
/// base. Escapes are `\\`, `\"` and `\n`.
fn scan<'a>(
    name: &'a str,
    mut label: impl FnMut(&'a str, &'a str) -> Result<(), String>,
) -> Result<&'a str, String> {
    let Some(open) = name.find('{') else {
        return Ok(name);
    };
    let base = &name[..open];
    let Some(block) = name[open + 1..].strip_suffix('}') else {
        return Err("a label block must end with '}'".into());
    };
    let mut rest = block;
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else {
            return Err(format!("label {rest:?} has no '=\"value\"'"));
        };
        let key = &rest[..eq];
        let valid_key = key
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
        if key.is_empty() || !valid_key {
            return Err(format!("label name {key:?} is not [A-Za-z_][A-Za-z0-9_]*"));
        }
        let Some(after) = rest[eq + 1..].strip_prefix('"') else {
            return Err(format!("the value of label {key:?} must be quoted"));
        };
        // '"' and '\\' are ASCII, never inside a multi-byte character, so
        // the byte positions found are character boundaries.
        let bytes = after.as_bytes();
        let mut i = 0;
        let end = loop {
            match bytes.get(i) {
                None => return Err(format!("the value of label {key:?} is not closed")),
                Some(b'"') => break i,
                Some(b'\\') => match bytes.get(i + 1) {
                    Some(b'\\' | b'"' | b'n') => i += 2,
                    _ => return Err(format!("bad escape in the value of label {key:?}")),
                },
                Some(_) => i += 1,
            }
        };
        label(key, &after[..end])?;
        rest = &after[end + 1..];
        rest = match rest.strip_prefix(',') {
            Some(r) => r,
            None if rest.is_empty() => rest,
            None => return Err(format!("expected ',' or '}}' after label {key:?}")),
        };
    }
    Ok(base)
}

/// A label value as [`scan`] found it, its escapes resolved.
fn unescape(raw: &str) -> String {
    if !raw.contains('\\') {
        return raw.to_string();
    }
    let mut value = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => value.push('\n'),
                Some(c) => value.push(c),
                None => {}
            },
            c => value.push(c),
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_sorted_and_escaped_and_parses_back() {
        let mut labels = [("mode", "idle"), ("cpu", "0"), ("path", "C:\\a \"b\"\nc")];
        let s = format("node_cpu_seconds_total", &mut labels);
        assert_eq!(
            s,
            r#"node_cpu_seconds_total{cpu="0",mode="idle",path="C:\\a \"b\"\nc"}"#
        );
        let p = parse(&s).unwrap();
        assert_eq!(p.base, "node_cpu_seconds_total");
        assert_eq!(
            p.labels,
            vec![
                ("cpu", "0".to_string()),
                ("mode", "idle".to_string()),
                ("path", "C:\\a \"b\"\nc".to_string())
            ]
        );
    }

    #[test]
    fn check_and_parse_agree() {
        for name in [
            r#"a{b="c"}"#,
            r#"a{b="c",}"#,
            r#"a{b="c\"d",e="\\",f="\n"}"#,
            r#"a{b="é☃"}"#,
            r#"a{b="c",b="d"}"#,
            r#"a{b="c\x"}"#,
            r#"a{b="c}"#,
            r#"a{b=c}"#,
            r#"a{1b="c"}"#,
            r#"a{b="c"d="e"}"#,
            r#"a{}"#,
        ] {
            assert_eq!(
                check(name, 256).is_ok(),
                parse(name).is_ok(),
                "{name}: {:?} {:?}",
                check(name, 256),
                parse(name)
            );
        }
        assert!(
            check(r#"a{b="c",b="d"}"#, 256)
                .unwrap_err()
                .contains("twice")
        );
        assert_eq!(
            parse(r#"a{b="c\"d",e="\\",f="\n"}"#).unwrap().labels,
            vec![
                ("b", "c\"d".to_string()),
                ("e", "\\".to_string()),
                ("f", "\n".to_string())
            ]
        );
    }

    #[test]
    fn checks_name_the_problem() {
        assert!(check("cpu_user", 128).is_ok());
        assert!(check(r#"node_load1{job="node"}"#, 128).is_ok());
        for (name, problem) in [
            ("", "empty name"),
            ("{a=\"b\"}", "empty name"),
            ("cpu user", "contains ' '"),
            ("cpu*", "contains '*'"),
            ("a{b", "end with '}'"),
        ] {
            let e = check(name, 128).unwrap_err();
            assert!(e.contains(problem), "{name:?}: {e}");
        }
        assert!(
            check(&"a".repeat(129), 128)
                .unwrap_err()
                .contains("limit is 128")
        );
    }

    #[test]
    fn plain_names_have_no_labels() {
        assert_eq!(format("cpu_user", &mut []), "cpu_user");
        let p = parse("cpu_user").unwrap();
        assert_eq!((p.base, p.labels.len()), ("cpu_user", 0));
        assert_eq!(parse("up{}").unwrap().labels.len(), 0);
    }

    #[test]
    fn malformed_label_blocks_say_what_is_wrong() {
        for (name, problem) in [
            ("a{b=\"c\"", "end with '}'"),
            ("a{b}", "no '=\"value\"'"),
            ("a{1b=\"c\"}", "not [A-Za-z_]"),
            ("a{b=c}", "must be quoted"),
            ("a{b=\"c}", "not closed"),
            ("a{b=\"\\x\"}", "bad escape"),
            ("a{b=\"1\",b=\"2\"}", "appears twice"),
            ("a{b=\"1\"c=\"2\"}", "expected ','"),
        ] {
            let e = parse(name).unwrap_err();
            assert!(e.contains(problem), "{name}: {e}");
        }
    }
}
