//! The HTTP API's write endpoints, as RabbitMQ's management API has them: declare and
//! delete queues and exchanges, bind and unbind, publish. Each is the protocol request of
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
        (["api", "exchanges", exchange, "publish"], _, true, _) => match body_object(req).await {
            Ok(body) => publish(state, who, exchange, body).await,
            Err(e) => Err(e),
        },
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
    // RabbitMQ's API names the default exchange `amq.default` (a path has no empty name).
    let exchange = if exchange == "amq.default" {
        ""
    } else {
        exchange
    };
    body.insert("op".into(), "publish".into());
    body.insert("exchange".into(), exchange.into());
    // Returned rather than dropped when unroutable, so the reply can say so.
    body.insert("mandatory".into(), true.into());
    let result = op(state, who, Value::Object(body)).await?;
    let returned = result.get("returned").is_some();
    Ok(json!({ "routed": !returned }))
}
