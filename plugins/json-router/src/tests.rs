use super::*;

fn matches(expression: &str, body: &str) -> bool {
    let doc: serde_json::Value = serde_json::from_str(body).unwrap();
    expr::parse(expression)
        .unwrap_or_else(|e| panic!("`{expression}`: {e}"))
        .eval(&doc)
}

fn args(expression: &str) -> Headers {
    Headers::new().with("match", expression)
}

fn route(ex: &mut JsonRouter, body: &str) -> Vec<BindingId> {
    let mut out = Vec::new();
    ex.route(&Message::new("ignored").with_body(body), &mut out);
    out
}

#[test]
fn expression_table() {
    let order = r#"{"amount": 150, "country": "DE", "vip": true, "note": null,
        "order": {"status": "paid", "items": [{"sku": "A-1", "qty": 2}]},
        "price": 9.5, "tags": ["x"], "city": "Zürich 🏔"}"#;
    let table = [
        ("amount > 100", true),
        ("amount > 150", false),
        ("amount >= 150", true),
        ("amount < 150.5", true),
        ("amount <= 149", false),
        ("amount == 150.0", true),
        ("amount != 150", false),
        ("country == \"DE\"", true),
        ("country != \"FR\"", true),
        ("country < \"EE\"", true),
        ("amount > 100 && country == \"DE\"", true),
        ("amount > 100 && country == \"FR\"", false),
        ("amount > 1000 || country == \"DE\"", true),
        ("amount > 1000 || country == \"FR\"", false),
        ("!(amount > 1000)", true),
        ("!vip", false),
        ("vip", true),
        ("country", false),
        ("(amount > 1000 || vip) && price < 10", true),
        ("a || b && c", false),
        ("vip || missing && nothing", true),
        ("order.status in [\"paid\", \"shipped\"]", true),
        ("order.status in [\"new\"]", false),
        ("amount in [1, 150.0]", true),
        ("missing in [null]", false),
        ("note in [null]", true),
        ("note == null", true),
        ("order.items.0.sku == \"A-1\"", true),
        ("order.items.1.sku == \"A-1\"", false),
        ("exists(order.status)", true),
        ("exists(note)", true),
        ("exists(order.missing)", false),
        ("!exists(missing)", true),
        // A missing field makes every comparison false, `!=` too.
        ("missing == 1", false),
        ("missing != 1", false),
        ("missing < 1", false),
        // Ordering needs two numbers or two strings.
        ("country > 1", false),
        ("vip > false", false),
        ("true", true),
        ("false || 1 == 1", true),
        ("-5 < amount", true),
        ("price == 9.5e0", true),
        ("\"a\\\"b\" != \"a\"", true),
        ("city == \"Zürich 🏔\"", true),
    ];
    for (expression, want) in table {
        assert_eq!(matches(expression, order), want, "`{expression}`");
    }
}

#[test]
fn bad_expressions_are_refused_with_a_position() {
    let table = [
        ("", "empty"),
        ("amount >", "at the end"),
        ("amount > > 1", "at byte 9"),
        ("(amount > 1", "`)`"),
        ("amount > 1)", "at byte 10"),
        ("amount = 1", "unexpected `=`"),
        ("country == \"DE", "unterminated string"),
        ("amount in 1", "`[`"),
        ("amount in [a]", "literal"),
        ("amount in [1 2]", "`,`"),
        ("exists(1)", "field name"),
        ("order.", "field name"),
        ("10abc > 1", "bad number"),
        ("amount > 1 &&", "at the end"),
        ("a && || b", "at byte 5"),
        ("a ~ b", "unexpected `~`"),
        ("order.items.0.qty * 2", "unexpected `*`"),
        ("größe > 1", "unexpected `ö`"),
        ("a == \"\\é", "unterminated string"),
        // No array or object literals: compare their elements instead.
        ("tags == [\"x\"]", "a field path or a literal"),
    ];
    for (expression, want) in table {
        let err = expr::parse(expression).unwrap_err();
        assert!(err.contains(want), "`{expression}`: {err}");
    }
}

#[test]
fn nesting_and_length_are_bounded() {
    let deep = format!("{}a{}", "(".repeat(40), ")".repeat(40));
    assert!(expr::parse(&deep).unwrap_err().contains("nested"));
    let nots = format!("{}a", "!".repeat(40));
    assert!(expr::parse(&nots).unwrap_err().contains("nested"));
    let ok = format!("{}a{}", "(".repeat(10), ")".repeat(10));
    assert!(expr::parse(&ok).is_ok());
    // Long flat chains are fine (and evaluate without deep recursion).
    let chain = vec!["a == 1"; 400].join(" && ");
    assert!(chain.len() < expr::MAX_LEN);
    assert!(matches(&chain, r#"{"a": 1}"#));
    let long = "a".repeat(expr::MAX_LEN + 1);
    assert!(expr::parse(&long).unwrap_err().contains("longer"));
}

#[test]
fn bindings_need_a_valid_match_argument() {
    let ex = JsonRouter::new("j", &Headers::new()).unwrap();
    assert!(ex.validate_binding("", &args("amount > 1")).is_ok());
    assert!(
        ex.validate_binding("", &Headers::new().with("match", true))
            .is_ok()
    );
    let bad = [
        (Headers::new(), "needs a `match`"),
        (args("amount >"), "bad match expression"),
        (Headers::new().with("match", 5i64), "must be an expression"),
        (
            args("a").with("other", "x"),
            "unknown json-router binding argument",
        ),
    ];
    for (arguments, want) in bad {
        let err = ex.validate_binding("", &arguments).unwrap_err();
        assert!(err.contains(want), "{arguments:?}: {err}");
    }
    assert!(JsonRouter::new("j", &Headers::new().with("x", 1i64)).is_err());
}

#[test]
fn routes_to_every_matching_binding_and_nowhere_for_non_json() {
    let mut ex = JsonRouter::new("j", &Headers::new()).unwrap();
    ex.bind(1, "", &args("amount > 100")).unwrap();
    ex.bind(2, "", &args("country == \"DE\"")).unwrap();
    ex.bind(3, "", &Headers::new().with("match", true)).unwrap();
    assert_eq!(
        route(&mut ex, r#"{"amount": 500, "country": "DE"}"#),
        [1, 2, 3]
    );
    assert_eq!(route(&mut ex, r#"{"amount": 5, "country": "FR"}"#), [3]);
    assert_eq!(route(&mut ex, r#"[1, 2]"#), [3]);
    for junk in ["", "not json", "{\"amount\": ", "\u{0}\u{1}", "[[[[[[[[[["] {
        assert!(route(&mut ex, junk).is_empty(), "{junk:?}");
    }
    let nested = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    assert!(
        route(&mut ex, &nested).is_empty(),
        "over serde_json's depth limit"
    );
    ex.unbind(3);
    assert_eq!(route(&mut ex, r#"{"amount": 5}"#), Vec::<BindingId>::new());
    ex.bind(1, "", &args("amount < 10")).unwrap();
    assert_eq!(route(&mut ex, r#"{"amount": 5}"#), [1]);
}
