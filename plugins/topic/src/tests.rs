use super::*;

fn topic(patterns: &[(BindingId, &str)]) -> Topic {
    let mut ex = Topic::new("t", &Headers::new()).unwrap();
    for (id, pattern) in patterns {
        ex.bind(*id, pattern, &Headers::new()).unwrap();
    }
    ex
}

fn routed(ex: &mut Topic, key: &str) -> Vec<BindingId> {
    let mut out = Vec::new();
    ex.route(&Message::new(key), &mut out);
    out
}

/// Does `pattern` match `key`? Each case is a single binding.
fn is_match(pattern: &str, key: &str) -> bool {
    routed(&mut topic(&[(1, pattern)]), key) == [1]
}

#[test]
fn amqp_pattern_table() {
    // (pattern, key, matches)
    let table = [
        ("a.b.c", "a.b.c", true),
        ("a.b.c", "a.b", false),
        ("a.b.c", "a.b.c.d", false),
        ("a.*.c", "a.b.c", true),
        ("a.*.c", "a.c", false),
        ("a.*.c", "a.b.b.c", false),
        ("*", "a", true),
        ("*", "", false),
        ("*", "a.b", false),
        ("*.*", "a.b", true),
        ("*.*", "a", false),
        ("#", "", true),
        ("#", "a", true),
        ("#", "a.b.c", true),
        ("#.#", "", true),
        ("#.#", "a.b", true),
        ("a.#", "a", true),
        ("a.#", "a.b.c", true),
        ("a.#", "b.a", false),
        ("#.a", "a", true),
        ("#.a", "x.y.a", true),
        ("#.a", "a.x", false),
        ("a.#.b", "a.b", true),
        ("a.#.b", "a.x.b", true),
        ("a.#.b", "a.x.y.b", true),
        ("a.#.b", "a.x.y", false),
        ("a.#.b", "b.a.b", false),
        ("#.b.#", "b", true),
        ("#.b.#", "a.b.c", true),
        ("#.b.#", "a.c", false),
        ("*.#", "", false),
        ("*.#", "a", true),
        ("#.*", "a.b.c", true),
        ("a.*.#", "a", false),
        ("a.*.#", "a.b", true),
        // Empty key and empty words.
        ("", "", true),
        ("", "a", false),
        ("a.", "a.", true),
        ("a.", "a", false),
        ("a.*", "a.", true),
        ("*.", ".", true),
        (".", "", false),
        ("a..b", "a..b", true),
        ("a.*.b", "a..b", true),
        ("#", ".", true),
        // `*` and `#` are wildcards only as whole words.
        ("a*", "ab", false),
        ("a*", "a*", true),
        ("a#", "a.b", false),
        ("a.b", "A.B", false),
    ];
    for (pattern, key, want) in table {
        assert_eq!(
            is_match(pattern, key),
            want,
            "pattern {pattern:?} key {key:?}"
        );
    }
}

#[test]
fn many_bindings_each_reported_once_and_sorted() {
    let mut ex = topic(&[
        (5, "#"),
        (4, "stock.#"),
        (3, "stock.*.nyse"),
        (2, "#.nyse"),
        (1, "stock.ibm.nyse"),
        (6, "#.#.#"),
        (7, "forex.*"),
    ]);
    assert_eq!(routed(&mut ex, "stock.ibm.nyse"), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(routed(&mut ex, "forex.usd"), vec![5, 6, 7]);
    assert_eq!(routed(&mut ex, ""), vec![5, 6]);
}

#[test]
fn same_pattern_twice_and_rebinding() {
    let mut ex = topic(&[(1, "a.*"), (2, "a.*")]);
    assert_eq!(routed(&mut ex, "a.b"), vec![1, 2]);
    ex.bind(1, "b.#", &Headers::new()).unwrap();
    assert_eq!(routed(&mut ex, "a.b"), vec![2]);
    assert_eq!(routed(&mut ex, "b.c.d"), vec![1]);
}

#[test]
fn unbind_prunes_the_trie() {
    let mut ex = topic(&[(1, "a.#.b"), (2, "a.*"), (3, "#")]);
    ex.unbind(3);
    ex.unbind(1);
    assert_eq!(routed(&mut ex, "a.x.b"), Vec::<BindingId>::new());
    assert_eq!(routed(&mut ex, "a.x"), vec![2]);
    ex.unbind(2);
    ex.unbind(99);
    assert!(ex.root.is_empty());
    assert!(ex.patterns.is_empty());
}

#[test]
fn overlapping_hashes_stay_fast() {
    // Without collapsing and memoising `#`, this pattern would explode on a long key.
    let mut ex = topic(&[(1, "#.#.#.#.a.#.#.#.#.a.#.#.#.#.b")]);
    let key = vec!["a"; 120].join(".");
    let started = std::time::Instant::now();
    assert_eq!(routed(&mut ex, &key), Vec::<BindingId>::new());
    assert_eq!(routed(&mut ex, &format!("{key}.b")), vec![1]);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn overlong_patterns_are_rejected() {
    let ex = topic(&[]);
    let long = "a".repeat(MAX_PATTERN_LEN + 1);
    assert!(ex.validate_binding(&long, &Headers::new()).is_err());
    assert!(ex.validate_binding(&long[1..], &Headers::new()).is_ok());
}
