//! docs/protocol.md against the broker's own parsers: every example request parses (or
//! gets exactly the error its example reply shows), every example broker frame is a
//! `ServerFrame` written exactly as the broker writes it, results carry every field the
//! broker sends, every operation is listed once, and every error code an operation's
//! section names is in §6's "Produced by" list for it.

use std::collections::{BTreeMap, BTreeSet};

use broker::protocol::{
    BindingList, ConnectionList, ExchangeList, MessageCount, Moved, PeekedMessages, QueueInfo,
    QueueList, Request, ServerFrame, Subscribed, parse_request, parse_server_frame,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).unwrap()
}

/// The text between `start` and `end` (two headings).
fn section<'a>(doc: &'a str, start: &str, end: &str) -> &'a str {
    let from = doc.find(start).unwrap_or_else(|| panic!("no `{start}`"));
    let to = from
        + doc[from..]
            .find(end)
            .unwrap_or_else(|| panic!("no `{end}`"));
    &doc[from..to]
}

/// Each fenced block's info string and text, failing on a block left open (it would
/// swallow what follows, headings included).
fn code_blocks(doc: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for (n, line) in doc.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), n + 1, String::new())),
            (Some(_), Some(_)) => {
                let (info, _, text) = open.take().unwrap();
                blocks.push((info, text));
            }
            (Some((_, start, _)), None) if line.starts_with('#') => {
                panic!("the code block opened at line {start} swallows `{line}`")
            }
            (Some((_, _, text)), None) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "a code block is never closed");
    blocks
}

const FRAME_TYPES: [&str; 8] = [
    "ok",
    "error",
    "confirm",
    "deliver",
    "return",
    "cancelled",
    "blocked",
    "unblocked",
];

/// Example frames in order: (is a request, text, value). JSON that is neither a request
/// nor a broker frame (records, arguments, plugin data) is left out.
fn example_frames(doc: &str) -> Vec<(bool, String, Value)> {
    let mut frames = Vec::new();
    for (info, text) in code_blocks(doc) {
        if info != "json" {
            continue;
        }
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(value) = serde_json::from_str::<Value>(line) else {
                continue; // a multi-line or deliberately broken example: not a frame line
            };
            if value.get("op").is_some() {
                frames.push((true, line.to_owned(), value));
            } else if value["type"]
                .as_str()
                .is_some_and(|t| FRAME_TYPES.contains(&t))
            {
                frames.push((false, line.to_owned(), value));
            }
        }
    }
    frames
}

/// Every example request parses with the broker's parser, unless its reply is the error
/// the parser gives it (same code, same id).
#[test]
fn every_example_request_parses_or_gets_its_shown_error() {
    let doc = doc();
    let frames = example_frames(&doc);
    assert!(frames.iter().filter(|f| f.0).count() > 50, "examples found");
    for (i, (is_request, text, _)) in frames.iter().enumerate() {
        if !is_request {
            continue;
        }
        if let Err(err) = parse_request(text) {
            let reply = frames[i + 1..].iter().find(|f| !f.0).map(|f| &f.2);
            let id = serde_json::to_value(&err.id).unwrap();
            assert!(
                reply.is_some_and(|r| r["type"] == "error"
                    && r["code"] == err.code.as_str()
                    && r["id"] == id),
                "example request does not parse ({}: {}) and its reply does not say so: \
                 {text}",
                err.code,
                err.message
            );
        }
    }
}

/// Every example broker frame is a `ServerFrame` that the broker would write with the same
/// fields (none missing, none extra).
#[test]
fn every_example_broker_frame_is_a_server_frame_as_sent() {
    let doc = doc();
    let frames = example_frames(&doc);
    assert!(
        frames.iter().filter(|f| !f.0).count() > 50,
        "examples found"
    );
    for (_, text, value) in frames.iter().filter(|f| !f.0) {
        let frame: ServerFrame =
            parse_server_frame(text).unwrap_or_else(|e| panic!("not a ServerFrame ({e}): {text}"));
        assert_eq!(
            &serde_json::to_value(&frame).unwrap(),
            value,
            "the broker writes this frame differently"
        );
    }
}

fn same_as_sent<T: DeserializeOwned + Serialize>(result: &Value, what: &str) {
    let typed: T = serde_json::from_value(result.clone())
        .unwrap_or_else(|e| panic!("{what} result does not parse ({e}): {result}"));
    assert_eq!(
        &serde_json::to_value(typed).unwrap(),
        result,
        "{what}: the broker sends other fields"
    );
}

/// The result of each `ok` example has exactly the fields the broker sends for its
/// operation (for the operations whose result has a protocol type).
#[test]
fn example_results_have_every_field_the_broker_sends() {
    let doc = doc();
    let mut ops_by_id: BTreeMap<String, String> = BTreeMap::new();
    let mut checked = 0;
    for (is_request, _, value) in example_frames(&doc) {
        let id = value["id"].to_string();
        if is_request {
            ops_by_id.insert(id, value["op"].as_str().unwrap_or("").to_owned());
            continue;
        }
        if value["type"] != "ok" || value.get("result").is_none() {
            continue;
        }
        let result = &value["result"];
        let op = ops_by_id.get(&id).map(String::as_str).unwrap_or("");
        checked += 1;
        match op {
            "declare_queue" | "queue_info" => same_as_sent::<QueueInfo>(result, op),
            "list_queues" => same_as_sent::<QueueList>(result, op),
            "delete_queue" | "purge_queue" => same_as_sent::<MessageCount>(result, op),
            "subscribe" => same_as_sent::<Subscribed>(result, op),
            "peek_queue" => same_as_sent::<PeekedMessages>(result, op),
            "requeue_dead_letters" => same_as_sent::<Moved>(result, op),
            "list_exchanges" => same_as_sent::<ExchangeList>(result, op),
            "list_bindings" => same_as_sent::<BindingList>(result, op),
            "list_connections" => same_as_sent::<ConnectionList>(result, op),
            _ => checked -= 1,
        }
    }
    assert!(checked >= 10, "only {checked} results checked");
}

/// The operations the broker knows, from its own parser: serde lists every variant when
/// one is unknown.
fn broker_ops() -> BTreeSet<String> {
    let err = serde_json::from_str::<Request>(r#"{"id":1,"op":"-"}"#).unwrap_err();
    let text = err.to_string();
    let list = &text[text.find("expected one of").expect(&text)..];
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// §5 lists every operation once, in its table and with a section of its own, and §2.1
/// gives their number.
#[test]
fn every_operation_is_listed_once() {
    let doc = doc();
    let ops = section(&doc, "## 5. Operations", "## 6. Error codes");
    let mut table = Vec::new();
    let mut headings = Vec::new();
    for line in ops.lines() {
        if let Some(row) = line.strip_prefix("| [`") {
            table.push(row.split('`').next().unwrap().to_owned());
        }
        if let Some(heading) = line.strip_prefix("### `") {
            headings.push(heading.trim_end_matches('`').to_owned());
        }
    }
    let known = broker_ops();
    assert!(known.len() > 20, "{known:?}");
    for list in [&table, &headings] {
        let unique: BTreeSet<String> = list.iter().cloned().collect();
        assert_eq!(unique.len(), list.len(), "listed twice: {list:?}");
        assert_eq!(unique, known, "the doc's operations against the broker's");
    }
    // The table is one table: no row after a paragraph that ended it.
    let rows = ops
        .lines()
        .skip_while(|l| !l.starts_with("| Operation"))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| l.starts_with("| [`"))
        .count();
    assert_eq!(rows, known.len(), "the operations table is cut in two");
    let count = format!("one of the {} names in", known.len());
    assert!(doc.contains(&count), "§2.1 should say `{count}`");
}

/// The error codes each operation's section names (in its errors and its example replies)
/// appear in §6's "Produced by" list for that operation, and every code is in §6.
#[test]
fn section_6_lists_who_produces_each_code() {
    let doc = doc();
    let codes = section(&doc, "## 6. Error codes", "## 7.");
    let mut produced: BTreeMap<String, String> = BTreeMap::new();
    for line in codes.lines() {
        let cells: Vec<&str> = line.split(" | ").collect();
        if let (Some(code), Some(by)) = (cells.first(), cells.last())
            && let Some(code) = code.strip_prefix("| `")
        {
            produced.insert(code.trim_end_matches('`').to_owned(), by.to_string());
        }
    }
    for code in all_codes() {
        assert!(produced.contains_key(&code), "§6 lacks `{code}`");
    }
    let ops = section(&doc, "## 5. Operations", "## 6. Error codes");
    let sections = ops.split("\n### `").skip(1);
    let mut missing = Vec::new();
    for part in sections {
        let op = part.split('`').next().unwrap();
        let errors = part
            .find("Errors")
            .map(|at| {
                let rest = &part[at..];
                &rest[..rest.find("```").unwrap_or(rest.len())]
            })
            .unwrap_or("");
        let mut named: BTreeSet<String> = errors
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| produced.contains_key(*w))
            .map(str::to_owned)
            .collect();
        // Error replies in the section's examples to requests of this operation.
        let mut of_op = false;
        for (is_request, _, value) in example_frames(part) {
            if is_request {
                of_op = value["op"] == op;
            } else if let (true, Some(code)) = (of_op, value["code"].as_str()) {
                named.insert(code.to_owned());
            }
        }
        for code in named {
            let by = &produced[&code];
            let generic = ["any request", "any frame"].iter().any(|g| by.contains(g));
            if !generic && !by.contains(&format!("`{op}`")) {
                missing.push(format!("{code} from {op}"));
            }
        }
    }
    assert!(missing.is_empty(), "§6 does not list: {missing:?}");
}

/// Every error code's wire name, from the broker's parser (serde lists the variants).
fn all_codes() -> Vec<String> {
    let err = serde_json::from_str::<broker::protocol::ErrorCode>(r#""-""#).unwrap_err();
    let text = err.to_string();
    let list = &text[text.find("expected one of").expect(&text)..];
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}
