//! The HTTP API's write endpoints, as RabbitMQ's management API has them: declare and
//! delete queues and exchanges, bind and unbind, publish, get messages; and `route`, where
//! a message would go without publishing it. Each is the protocol request of
//! the same name, checked against the caller's permissions like any other request (see
//! [`super::op`]), so `curl` can do what a WebSocket client can.

use hyper::Method;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::{ApiError, Caller, HttpState, Request, body_object, op};
use crate::protocol::ErrorCode;

/// Answers the write endpoints; `None` when the method and path are none of them.
pub(super) async fn write(
    state: &HttpState,
    who: &Caller,
    method: &Method,
    segments: &[&str],
    query: &[(String, String)],
    req: Request<Incoming>,
) -> Option<Result<Value, ApiError>> {
    let put = method == Method::PUT;
    let post = method == Method::POST;
    let delete = method == Method::DELETE;
    let result = match (segments, put, post, delete) {
        (["api", "queues", queue], true, _, _) => {
            let request = body_object(req).await.and_then(|mut body| {
                if body.get("exclusive") == Some(&Value::Bool(true)) {
                    // Each request acts on its own pseudo-connection, gone once it is
                    // answered: the queue would be deleted at once.
                    let e = "`exclusive`: an HTTP request has no connection to own the queue";
                    return Err(ApiError::new(ErrorCode::InvalidField, e));
                }
                body.insert("op".into(), "declare_queue".into());
                body.insert("queue".into(), (*queue).into());
                Ok(body)
            });
            call(state, who, request).await
        }
        (["api", "queues", queue], _, _, true) => {
            let mut request = Map::new();
            request.insert("op".into(), "delete_queue".into());
            request.insert("queue".into(), (*queue).into());
            for flag in ["if_unused", "if_empty"] {
                if query.iter().any(|(k, v)| k == flag && v == "true") {
                    request.insert(flag.into(), true.into());
                }
            }
            call(state, who, Ok(request)).await
        }
        (["api", "exchanges", exchange], true, _, _) => {
            let request = body_object(req).await.map(|mut body| {
                body.insert("op".into(), "declare_exchange".into());
                body.insert("exchange".into(), (*exchange).into());
                body
            });
            call(state, who, request).await
        }
        (["api", "exchanges", exchange], _, _, true) => {
            let request = json!({"op": "delete_exchange", "exchange": exchange});
            op(state, who, request).await
        }
        (["api", "bindings"], _, true, _) | (["api", "bindings"], _, _, true) => {
            let name = if post { "bind" } else { "unbind" };
            let request = body_object(req).await.map(|mut body| {
                body.insert("op".into(), name.into());
                body
            });
            call(state, who, request).await
        }
        (["api", "queues", queue, "get"], _, true, _) => match body_object(req).await {
            Ok(body) => get(state, who, queue, body).await,
            Err(e) => Err(e),
        },
        (["api", "exchanges", exchange, "publish"], _, true, _) => match body_object(req).await {
            Ok(body) => publish(state, who, exchange, body).await,
            Err(e) => Err(e),
        },
        (["api", "exchanges", exchange, "route"], _, true, _) => {
            let request = body_object(req).await.map(|mut body| {
                body.insert("op".into(), "route".into());
                body.insert("exchange".into(), default_exchange(exchange).into());
                body
            });
            call(state, who, request).await
        }
        _ => return None,
    };
    Some(result)
}

async fn call(
    state: &HttpState,
    who: &Caller,
    request: Result<Map<String, Value>, ApiError>,
) -> Result<Value, ApiError> {
    op(state, who, Value::Object(request?)).await
}

/// Publishes the body's message to `exchange` and answers once it is stored where it
/// went: `{"routed": true}`, or `{"routed": false}` when no queue took it.
async fn publish(
    state: &HttpState,
    who: &Caller,
    exchange: &str,
    mut body: Map<String, Value>,
) -> Result<Value, ApiError> {
    if body.contains_key("mandatory") {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "`mandatory`: not a field here (the reply says whether the message was routed)",
        ));
    }
    body.insert("op".into(), "publish".into());
    body.insert("exchange".into(), default_exchange(exchange).into());
    // Returned rather than dropped when unroutable, so the reply can say so.
    body.insert("mandatory".into(), true.into());
    let result = op(state, who, Value::Object(body)).await?;
    let returned = result.get("returned").is_some();
    Ok(json!({ "routed": !returned }))
}

/// RabbitMQ's API names the default exchange `amq.default` (a path has no empty name).
fn default_exchange(exchange: &str) -> &str {
    match exchange {
        "amq.default" => "",
        name => name,
    }
}

/// Most messages one `get` request takes.
const MAX_GET: u64 = 100;

/// Takes up to `count` (default 1) ready messages of `queue`, then acks them all, or with
/// `"requeue": true` (the default, as the management page's "get" should not consume)
/// puts them all back as a consumer's `nack` with requeue would: `{"messages": [delivery,
/// ...], "message_count": left}`.
async fn get(
    state: &HttpState,
    who: &Caller,
    queue: &str,
    body: Map<String, Value>,
) -> Result<Value, ApiError> {
    let field = |name: &str| body.get(name).filter(|v| !v.is_null());
    let count = match field("count") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_GET).contains(n))
            .ok_or_else(|| {
                let e = format!("`count`: a number of messages from 1 to {MAX_GET}");
                ApiError::new(ErrorCode::InvalidField, e)
            })?,
    };
    let requeue = match field("requeue") {
        None => true,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidField, "`requeue`: true or false"))?,
    };
    if let Some(unknown) = body
        .keys()
        .find(|k| !["count", "requeue"].contains(&k.as_str()))
    {
        let e = format!("`{unknown}`: not a field here (count, requeue)");
        return Err(ApiError::new(ErrorCode::InvalidField, e));
    }
    // One session for the gets and their settlement: delivery tags are its own.
    let get = json!({"op": "get", "queue": queue});
    let session = super::session_for(state, who, &get)?;
    let mut messages = Vec::new();
    let mut left = 0;
    for _ in 0..count {
        let result = session.call(get.clone()).await?;
        left = result["message_count"].as_u64().unwrap_or(0);
        match result.get("delivery") {
            Some(delivery) => messages.push(delivery.clone()),
            None => break,
        }
    }
    if let Some(last) = messages.last() {
        let tag = last["delivery_tag"].clone();
        let settle = match requeue {
            true => json!({"op": "nack", "delivery_tag": tag, "multiple": true, "requeue": true}),
            false => json!({"op": "ack", "delivery_tag": tag, "multiple": true}),
        };
        session.send(settle).await?;
        // Answered once the settlement before it is applied.
        left = session
            .call(json!({"op": "queue_info", "queue": queue}))
            .await?["ready"]
            .as_u64()
            .unwrap_or(left);
    }
    Ok(json!({ "messages": messages, "message_count": left }))
}
