//! A strict reader of the Prometheus text format for the metrics tests: every sample's
//! family declared first, valid names and labels, cumulative histograms.

use std::collections::HashMap;

/// One parsed sample: name, labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// Parses Prometheus text format strictly enough to catch mistakes: every sample belongs
/// to a family declared with `# TYPE` before it, names and labels are well formed,
/// values are numbers, histogram buckets are cumulative and end in `+Inf` = `_count`.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_else(|| panic!("bad comment: {line}"));
            assert!(valid_name(name), "{line}");
            match kind {
                Some("HELP") => assert!(value.is_some_and(|h| !h.is_empty()), "{line}"),
                Some("TYPE") => {
                    let kind = value.unwrap();
                    assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                    assert!(
                        types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "family declared twice: {name}"
                    );
                }
                _ => panic!("unknown comment: {line}"),
            }
            continue;
        }
        assert!(!line.is_empty(), "blank line in exposition");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (label, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    assert!(valid_name(label), "{line}");
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, c)) => value.push(c),
                                None => panic!("{line}"),
                            },
                            Some((i, '"')) => break i,
                            Some((_, c)) => value.push(c),
                            None => panic!("unterminated label: {line}"),
                        }
                    };
                    labels.push((label.to_owned(), value));
                    rest = after[end + 1..]
                        .strip_prefix(',')
                        .unwrap_or(&after[end + 1..]);
                }
                (name, labels)
            }
        };
        assert!(valid_name(name), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample before its # TYPE: {line}"
        );
        samples.push((name.to_owned(), labels, value));
    }
    // Histograms: cumulative buckets, +Inf last and equal to _count.
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let buckets: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.0 == format!("{family}_bucket"))
            .collect();
        assert!(!buckets.is_empty(), "{family} has no buckets");
        // One series per label set (the labels other than `le`).
        let series_labels = |s: &Sample| -> Vec<(String, String)> {
            s.1.iter().filter(|(k, _)| k != "le").cloned().collect()
        };
        let mut series: Vec<Vec<(String, String)>> =
            buckets.iter().map(|s| series_labels(s)).collect();
        series.dedup();
        for labels in series {
            let buckets: Vec<&&Sample> = buckets
                .iter()
                .filter(|s| series_labels(s) == labels)
                .collect();
            assert!(
                buckets.windows(2).all(|w| w[0].2 <= w[1].2),
                "{family}{labels:?} not cumulative"
            );
            let last = buckets.last().unwrap();
            assert_eq!(
                last.1.last().unwrap(),
                &("le".to_owned(), "+Inf".to_owned())
            );
            let count = samples
                .iter()
                .find(|s| s.0 == format!("{family}_count") && s.1 == labels)
                .unwrap();
            assert_eq!(last.2, count.2, "{family}{labels:?}: +Inf bucket != count");
        }
    }
    samples
}

pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
        .2
}
