use super::*;

fn args(pairs: &[(&str, Value)]) -> Headers {
    let mut h = Headers::new();
    for (name, value) in pairs {
        h.insert(name, value.clone());
    }
    h
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// Does a binding with `binding` arguments match a message with `headers`?
fn is_match(binding: &[(&str, Value)], headers: &[(&str, Value)]) -> bool {
    let mut ex = HeadersExchange::new("h", &Headers::new()).unwrap();
    ex.bind(1, "ignored", &args(binding)).unwrap();
    let mut out = Vec::new();
    ex.route(
        &Message::new("any.key").with_headers(args(headers)),
        &mut out,
    );
    out == [1]
}

/// (binding arguments, message headers, matches)
type Case = (Vec<(&'static str, Value)>, Vec<(&'static str, Value)>, bool);

#[test]
fn x_match_table() {
    let fmt_pdf = ("format", text("pdf"));
    let type_report = ("type", text("report"));
    let x_all = ("x-match", text("all"));
    let x_any = ("x-match", text("any"));
    let x_all_x = ("x-match", text("all-with-x"));
    let x_any_x = ("x-match", text("any-with-x"));
    let x_custom = ("x-tenant", text("t1"));
    let table: Vec<Case> = vec![
        // all (explicit and default)
        (
            vec![x_all.clone(), fmt_pdf.clone(), type_report.clone()],
            vec![fmt_pdf.clone(), type_report.clone()],
            true,
        ),
        (
            vec![fmt_pdf.clone(), type_report.clone()],
            vec![fmt_pdf.clone(), type_report.clone(), ("extra", text("y"))],
            true,
        ),
        (
            vec![x_all.clone(), fmt_pdf.clone(), type_report.clone()],
            vec![fmt_pdf.clone()],
            false,
        ),
        (
            vec![x_all.clone(), fmt_pdf.clone()],
            vec![("format", text("zip"))],
            false,
        ),
        (vec![x_all.clone()], vec![], true),
        (vec![], vec![fmt_pdf.clone()], true),
        // any
        (
            vec![x_any.clone(), fmt_pdf.clone(), type_report.clone()],
            vec![type_report.clone()],
            true,
        ),
        (
            vec![x_any.clone(), fmt_pdf.clone(), type_report.clone()],
            vec![("type", text("log"))],
            false,
        ),
        (vec![x_any.clone()], vec![fmt_pdf.clone()], false),
        // plain all/any ignore x- arguments
        (
            vec![x_all.clone(), fmt_pdf.clone(), x_custom.clone()],
            vec![fmt_pdf.clone()],
            true,
        ),
        (
            vec![x_any.clone(), x_custom.clone()],
            vec![x_custom.clone()],
            false,
        ),
        // the -with-x modes count them
        (
            vec![x_all_x.clone(), fmt_pdf.clone(), x_custom.clone()],
            vec![fmt_pdf.clone()],
            false,
        ),
        (
            vec![x_all_x.clone(), fmt_pdf.clone(), x_custom.clone()],
            vec![fmt_pdf.clone(), x_custom.clone()],
            true,
        ),
        (
            vec![x_any_x.clone(), x_custom.clone()],
            vec![x_custom.clone()],
            true,
        ),
        (
            vec![x_any_x.clone(), x_custom.clone()],
            vec![fmt_pdf.clone()],
            false,
        ),
        // value types: numbers by value, null = presence, no cross-type equality otherwise
        (
            vec![("n", Value::Int(1))],
            vec![("n", Value::Float(1.0))],
            true,
        ),
        (
            vec![("n", Value::Int(1))],
            vec![("n", Value::Int(2))],
            false,
        ),
        (vec![("n", Value::Int(1))], vec![("n", text("1"))], false),
        (
            vec![("b", Value::Bool(true))],
            vec![("b", Value::Bool(true))],
            true,
        ),
        (
            vec![("p", Value::Null)],
            vec![("p", text("anything"))],
            true,
        ),
        (vec![("p", Value::Null)], vec![], false),
        (
            vec![("j", Value::Json("[1,2]".into()))],
            vec![("j", Value::Json("[1,2]".into()))],
            true,
        ),
    ];
    for (binding, headers, want) in table {
        assert_eq!(
            is_match(&binding, &headers),
            want,
            "binding {binding:?} headers {headers:?}"
        );
    }
}

#[test]
fn invalid_x_match_is_rejected() {
    let ex = HeadersExchange::new("h", &Headers::new()).unwrap();
    assert!(
        ex.validate_binding("", &args(&[("x-match", text("most"))]))
            .is_err()
    );
    assert!(
        ex.validate_binding("", &args(&[("x-match", Value::Int(1))]))
            .is_err()
    );
    assert!(
        ex.validate_binding("", &args(&[("x-match", text("any-with-x"))]))
            .is_ok()
    );
}

#[test]
fn routes_every_matching_binding() {
    let mut ex = HeadersExchange::new("h", &Headers::new()).unwrap();
    ex.bind(3, "", &args(&[("a", Value::Int(1))])).unwrap();
    ex.bind(
        1,
        "",
        &args(&[
            ("x-match", text("any")),
            ("a", Value::Int(1)),
            ("b", Value::Int(2)),
        ]),
    )
    .unwrap();
    ex.bind(2, "", &args(&[("b", Value::Int(2))])).unwrap();
    let mut out = Vec::new();
    ex.route(&Message::new("").with_header("a", 1i64), &mut out);
    assert_eq!(out, vec![1, 3]);
    ex.unbind(3);
    out.clear();
    ex.route(&Message::new("").with_header("a", 1i64), &mut out);
    assert_eq!(out, vec![1]);
}
