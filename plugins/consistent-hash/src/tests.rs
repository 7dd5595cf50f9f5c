use super::*;

fn exchange(bindings: &[(BindingId, u32)]) -> ConsistentHash {
    let mut ex = ConsistentHash::new("ch", &Headers::new()).unwrap();
    for &(id, weight) in bindings {
        ex.bind(id, &weight.to_string(), &Headers::new()).unwrap();
    }
    ex
}

fn route(ex: &mut ConsistentHash, msg: &Message) -> Vec<BindingId> {
    let mut out = Vec::new();
    ex.route(msg, &mut out);
    out
}

/// The one binding key `key` goes to.
fn owner(ex: &mut ConsistentHash, key: &str) -> BindingId {
    let out = route(ex, &Message::new(key));
    assert_eq!(out.len(), 1, "key {key} went to {out:?}");
    out[0]
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("customer-{i}")).collect()
}

#[test]
fn weights_are_whole_numbers_in_range() {
    for good in ["1", "10", "100", " 7 "] {
        assert!(parse_weight(good).is_ok(), "{good}");
    }
    for bad in ["", "0", "101", "-1", "1.5", "ten", "99999999999"] {
        let err = parse_weight(bad).unwrap_err();
        assert!(err.contains("weight"), "{bad}: {err}");
    }
    let ex = exchange(&[]);
    assert!(ex.validate_binding("abc", &Headers::new()).is_err());
    assert!(ex.validate_binding("5", &Headers::new()).is_ok());
}

#[test]
fn arguments_are_checked() {
    let args = Headers::new().with("hash_header", "user");
    assert!(ConsistentHash::new("ch", &args).is_ok());
    for bad in [
        Headers::new().with("hash_header", 5i64),
        Headers::new().with("hash_header", ""),
        Headers::new().with("hash_heder", "user"),
    ] {
        assert!(ConsistentHash::new("ch", &bad).is_err(), "{bad:?}");
    }
}

#[test]
fn each_message_goes_to_exactly_one_binding_and_none_without_bindings() {
    let mut ex = exchange(&[]);
    assert!(route(&mut ex, &Message::new("k")).is_empty());
    let mut ex = exchange(&[(1, 1), (2, 1), (3, 1)]);
    for key in keys(1000) {
        owner(&mut ex, &key);
    }
}

#[test]
fn deterministic_across_instances_and_binding_order() {
    let mut a = exchange(&[(1, 2), (2, 1), (3, 5)]);
    let mut b = exchange(&[(3, 5), (1, 2), (2, 1)]);
    for key in keys(2000) {
        assert_eq!(owner(&mut a, &key), owner(&mut b, &key));
    }
}

#[test]
fn shares_follow_weights() {
    let mut ex = exchange(&[(1, 1), (2, 3)]);
    let n = 20_000;
    let ones = keys(n).iter().filter(|k| owner(&mut ex, k) == 1).count();
    let share = ones as f64 / n as f64;
    assert!((0.20..0.30).contains(&share), "weight-1 share {share}");

    let mut even = exchange(&[(1, 1), (2, 1), (3, 1), (4, 1)]);
    let mut counts = [0usize; 5];
    for key in keys(n) {
        counts[owner(&mut even, &key) as usize] += 1;
    }
    for (id, &c) in counts.iter().enumerate().skip(1) {
        let share = c as f64 / n as f64;
        assert!((0.19..0.31).contains(&share), "binding {id}: {share}");
    }
}

#[test]
fn adding_a_binding_moves_only_its_share_of_keys() {
    let mut ex = exchange(&(1..=10).map(|id| (id, 1)).collect::<Vec<_>>());
    let keys = keys(20_000);
    let before: Vec<BindingId> = keys.iter().map(|k| owner(&mut ex, k)).collect();
    ex.bind(11, "1", &Headers::new()).unwrap();
    let after: Vec<BindingId> = keys.iter().map(|k| owner(&mut ex, k)).collect();
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        if b != a {
            moved += 1;
            assert_eq!(*a, 11, "a key moved between two old bindings");
        }
    }
    let share = moved as f64 / keys.len() as f64;
    // 1/11 ≈ 0.09 in expectation.
    assert!((0.05..0.14).contains(&share), "moved {share}");

    // Removing it puts every key back where it was.
    ex.unbind(11);
    let restored: Vec<BindingId> = keys.iter().map(|k| owner(&mut ex, k)).collect();
    assert_eq!(restored, before);
}

#[test]
fn removing_a_binding_moves_only_its_keys() {
    let mut ex = exchange(&(1..=8).map(|id| (id, 2)).collect::<Vec<_>>());
    let keys = keys(10_000);
    let before: Vec<BindingId> = keys.iter().map(|k| owner(&mut ex, k)).collect();
    ex.unbind(3);
    for (key, &b) in keys.iter().zip(&before) {
        let a = owner(&mut ex, key);
        if b == 3 {
            assert_ne!(a, 3);
        } else {
            assert_eq!(a, b, "key {key} moved although its binding stayed");
        }
    }
}

#[test]
fn rebinding_an_id_changes_its_weight() {
    let mut ex = exchange(&[(1, 1), (2, 1)]);
    ex.bind(1, "9", &Headers::new()).unwrap();
    let n = 10_000;
    let ones = keys(n).iter().filter(|k| owner(&mut ex, k) == 1).count();
    let share = ones as f64 / n as f64;
    assert!((0.85..0.95).contains(&share), "weight-9 share {share}");
}

#[test]
fn hash_header_decides_and_a_missing_header_routes_nowhere() {
    let args = Headers::new().with("hash_header", "user");
    let mut ex = ConsistentHash::new("ch", &args).unwrap();
    for id in 1..=5 {
        ex.bind(id, "1", &Headers::new()).unwrap();
    }
    for user in 0..200i64 {
        let a = route(&mut ex, &Message::new("a").with_header("user", user));
        let b = route(&mut ex, &Message::new("b").with_header("user", user));
        assert_eq!(a.len(), 1);
        assert_eq!(a, b, "the routing key must not matter");
    }
    // Whole numbers hash by their decimal text, so "7", 7 and 7.0 agree.
    let seven = route(&mut ex, &Message::new("").with_header("user", "7"));
    assert_eq!(
        seven,
        route(&mut ex, &Message::new("").with_header("user", 7i64))
    );
    assert_eq!(
        seven,
        route(&mut ex, &Message::new("").with_header("user", 7.0))
    );
    assert_eq!(
        route(&mut ex, &Message::new("").with_header("user", 7.5)).len(),
        1
    );
    assert!(route(&mut ex, &Message::new("a")).is_empty());
    assert!(route(&mut ex, &Message::new("a").with_header("user", Value::Null)).is_empty());
}

#[test]
fn a_full_ring_refuses_more_weight() {
    let per_binding = u64::from(MAX_WEIGHT * POINTS_PER_WEIGHT);
    let fit = MAX_POINTS / per_binding;
    let mut ex = exchange(&[]);
    for id in 0..fit {
        ex.bind(id, "100", &Headers::new()).unwrap();
    }
    let err = ex.validate_binding("100", &Headers::new()).unwrap_err();
    assert!(err.contains("ring is full"), "{err}");
    assert!(ex.bind(fit, "100", &Headers::new()).is_err());
    // Replacing a binding's weight with the same weight still fits.
    assert!(ex.bind(0, "100", &Headers::new()).is_ok());
}
