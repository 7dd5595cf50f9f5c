use super::*;

const ORDER_SCHEMA: &str = r#"{
    "type": "object",
    "required": ["id", "amount", "currency"],
    "additionalProperties": false,
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "amount": {"type": "number", "minimum": 0, "maximum": 1000000},
        "currency": {"type": "string", "enum": ["EUR", "USD"]},
        "email": {"type": "string", "minLength": 3, "maxLength": 50},
        "gift": {"type": "boolean"},
        "note": {"type": ["string", "null"]},
        "lines": {
            "type": "array", "minItems": 1, "maxItems": 3,
            "items": {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}}
        }
    }
}"#;

fn gate(schema: &str) -> SchemaGate {
    SchemaGate::new(
        "orders",
        &Headers::new().with("schema", Value::Json(schema.into())),
    )
    .unwrap()
}

fn route(ex: &mut SchemaGate, key: &str, body: &str) -> Vec<BindingId> {
    let mut out = Vec::new();
    ex.route(&Message::new(key).with_body(body), &mut out);
    out.sort_unstable();
    out
}

#[test]
fn validation_table() {
    let ex = gate(ORDER_SCHEMA);
    let valid = [
        r#"{"id": 1, "amount": 10.5, "currency": "EUR"}"#,
        r#"{"id": 2.0, "amount": 0, "currency": "USD", "gift": true, "note": null}"#,
        r#"{"id": 3, "amount": 1, "currency": "EUR", "note": "hi", "email": "a@b"}"#,
        r#"{"id": 4, "amount": 1, "currency": "EUR", "lines": [{"sku": "A"}, {"sku": "B", "qty": 2}]}"#,
    ];
    for body in valid {
        assert_eq!(ex.check(body.as_bytes()), Ok(()), "{body}");
    }
    let invalid = [
        ("", "not JSON"),
        ("{\"id\": ", "not JSON"),
        ("[]", "$: expected object"),
        (
            r#"{"id": 1, "amount": 1}"#,
            "missing required field `currency`",
        ),
        (
            r#"{"id": "1", "amount": 1, "currency": "EUR"}"#,
            "$.id: expected integer",
        ),
        (
            r#"{"id": 1.5, "amount": 1, "currency": "EUR"}"#,
            "$.id: expected integer",
        ),
        (
            r#"{"id": 0, "amount": 1, "currency": "EUR"}"#,
            "$.id: below the minimum",
        ),
        (
            r#"{"id": 1, "amount": 2e6, "currency": "EUR"}"#,
            "$.amount: above the maximum",
        ),
        (
            r#"{"id": 1, "amount": 1, "currency": "GBP"}"#,
            "$.currency: not one of",
        ),
        (
            r#"{"id": 1, "amount": 1, "currency": "EUR", "x": 1}"#,
            "unexpected field `x`",
        ),
        (
            r#"{"id": 1, "amount": 1, "currency": "EUR", "email": "ab"}"#,
            "$.email: shorter than 3",
        ),
        (
            r#"{"id": 1, "amount": 1, "currency": "EUR", "gift": "yes"}"#,
            "$.gift: expected boolean",
        ),
        (
            r#"{"id": 1, "amount": 1, "currency": "EUR", "note": 5}"#,
            "$.note: expected string or null",
        ),
        (
            r#"{"id": 1, "amount": 1, "currency": "EUR", "lines": []}"#,
            "$.lines: fewer items than 1",
        ),
        (
            r#"{"id": 1, "amount": 1, "currency": "EUR", "lines": [{}, {}, {}, {}]}"#,
            "$.lines: more items than 3",
        ),
        (
            r#"{"id": 1, "amount": 1, "currency": "EUR", "lines": [{"sku": "A"}, {"sku": 2}]}"#,
            "$.lines[1].sku: expected string",
        ),
    ];
    for (body, want) in invalid {
        let err = ex.check(body.as_bytes()).unwrap_err();
        assert!(err.contains(want), "{body}: {err}");
    }
}

#[test]
fn bad_schemas_and_arguments_are_refused_at_declare() {
    let table = [
        (Headers::new(), "needs a `schema`"),
        (Headers::new().with("schema", 5i64), "must be a JSON object"),
        (Headers::new().with("schema", "{not json"), "not JSON"),
        (Headers::new().with("schema", "[1]"), "must be an object"),
        (
            Headers::new().with("schema", r#"{"type": "text"}"#),
            "unknown type",
        ),
        (
            Headers::new().with("schema", r#"{"pattern": "^a"}"#),
            "unsupported keyword `pattern`",
        ),
        (
            Headers::new().with("schema", r#"{"properties": {"a": {"minLength": -1}}}"#),
            "schema at $.a",
        ),
        (
            Headers::new().with("schema", r#"{"required": [1]}"#),
            "list of names",
        ),
        (
            Headers::new()
                .with("schema", "{}")
                .with("rejects_key", 1i64),
            "rejects_key",
        ),
        (
            Headers::new().with("schema", "{}").with("schemas", "{}"),
            "unknown schema-gate argument",
        ),
    ];
    for (args, want) in table {
        let err = SchemaGate::new("g", &args).err().unwrap_or_default();
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // A schema given as a string holding JSON works too.
    assert!(SchemaGate::new("g", &Headers::new().with("schema", "{}")).is_ok());
}

#[test]
fn valid_messages_route_direct_style_and_invalid_ones_to_the_rejects_bindings() {
    let mut ex = gate(ORDER_SCHEMA);
    ex.bind(1, "eu", &Headers::new()).unwrap();
    ex.bind(2, "us", &Headers::new()).unwrap();
    ex.bind(3, "eu", &Headers::new()).unwrap();
    ex.bind(9, DEFAULT_REJECTS_KEY, &Headers::new()).unwrap();
    let good = r#"{"id": 1, "amount": 3, "currency": "EUR"}"#;
    let bad = r#"{"id": 1}"#;
    assert_eq!(route(&mut ex, "eu", good), [1, 3]);
    assert_eq!(route(&mut ex, "us", good), [2]);
    assert!(route(&mut ex, "asia", good).is_empty());
    assert_eq!(route(&mut ex, "eu", bad), [9]);
    assert_eq!(route(&mut ex, "asia", "not json"), [9]);
    // The rejects bindings only get invalid messages, whatever the routing key.
    assert!(route(&mut ex, DEFAULT_REJECTS_KEY, good).is_empty());
    ex.unbind(9);
    assert!(route(&mut ex, "eu", bad).is_empty());
    ex.bind(1, "us", &Headers::new()).unwrap();
    assert_eq!(route(&mut ex, "us", good), [1, 2]);
}

#[test]
fn the_rejects_key_is_configurable() {
    let args = Headers::new()
        .with("schema", "{\"type\": \"object\"}")
        .with("rejects_key", "dead");
    let mut ex = SchemaGate::new("g", &args).unwrap();
    ex.bind(1, "dead", &Headers::new()).unwrap();
    ex.bind(2, DEFAULT_REJECTS_KEY, &Headers::new()).unwrap();
    ex.bind(3, "k", &Headers::new()).unwrap();
    assert_eq!(route(&mut ex, "k", "[]"), [1]);
    assert_eq!(route(&mut ex, "k", "{}"), [3]);
    assert_eq!(route(&mut ex, DEFAULT_REJECTS_KEY, "{}"), [2]);
}
