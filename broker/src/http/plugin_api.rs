//! The HTTP API's plugin endpoints: deploy a version from the component's raw bytes (the
//! management page's upload; normally, as a shadow or as a canary), roll back, and the recent rates the page's chart starts
//! from. Deploy and rollback are the protocol's `deploy_plugin` and `rollback_plugin`,
//! checked against the caller's `plugin` permission like any request.

use base64::Engine as _;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{ApiError, Caller, HttpState, Request, body_bytes, body_object, op};
use crate::protocol::ErrorCode;

/// `POST /api/plugins/{name}/versions`: the body is the component (`.wasm`) itself, at
/// most the plugin size limit; `?auto_rollback=true` watches the new version as
/// `broker plugin deploy --auto-rollback` does; `?shadow=true` or `?canary=PERCENT`
/// deploys it on trial next to the active version (`deploy_plugin`'s `shadow` and
/// `canary_percent`, which judge the combinations and the percent's range).
pub(super) async fn deploy(
    state: &HttpState,
    who: &Caller,
    name: &str,
    query: &[(String, String)],
    req: Request<Incoming>,
) -> Result<Value, ApiError> {
    let auto_rollback = flag(query, "auto_rollback")?;
    let shadow = flag(query, "shadow")?;
    let canary_percent = canary(query)?;
    let limit = state.plugins.limits().max_module_bytes;
    let wasm = body_bytes(req, limit).await?;
    if wasm.is_empty() {
        let e = "the body must be the plugin's component (.wasm) bytes";
        return Err(ApiError::new(ErrorCode::InvalidPlugin, e));
    }
    let mut request = json!({
        "op": "deploy_plugin",
        "name": name,
        "wasm_base64": base64::engine::general_purpose::STANDARD.encode(&wasm),
        "auto_rollback": auto_rollback,
        "shadow": shadow,
    });
    if let Some(percent) = canary_percent {
        request["canary_percent"] = percent.into();
    }
    op(state, who, request).await
}

/// A `true` / `false` query parameter (absent: false).
fn flag(query: &[(String, String)], key: &str) -> Result<bool, ApiError> {
    match query.iter().find(|(k, _)| k == key) {
        None => Ok(false),
        Some((_, v)) if v == "true" => Ok(true),
        Some((_, v)) if v == "false" => Ok(false),
        Some(_) => {
            let e = format!("`{key}`: true or false");
            Err(ApiError::new(ErrorCode::InvalidField, e))
        }
    }
}

/// `?canary=PERCENT`: a number (the op checks that it is above 0 and at most 100). Not
/// a number, or not a finite one (JSON has no NaN), is refused here.
fn canary(query: &[(String, String)]) -> Result<Option<f64>, ApiError> {
    let Some((_, v)) = query.iter().find(|(k, _)| k == "canary") else {
        return Ok(None);
    };
    match v.trim().parse::<f64>() {
        Ok(percent) if percent.is_finite() => Ok(Some(percent)),
        _ => {
            let e = format!("`canary`: {v:?} is not a percent above 0 and at most 100");
            Err(ApiError::new(ErrorCode::InvalidField, e))
        }
    }
}

/// `POST /api/plugins/{name}/rollback`, optional body `{"version": N}` (default: the
/// version before the active one).
pub(super) async fn rollback(
    state: &HttpState,
    who: &Caller,
    name: &str,
    req: Request<Incoming>,
) -> Result<Value, ApiError> {
    let mut request = body_object(req).await?;
    request.insert("op".into(), "rollback_plugin".into());
    request.insert("name".into(), name.into());
    op(state, who, Value::Object(request)).await
}

/// `GET /api/rates`: the caller's vhost's recent rates, oldest first.
pub(super) fn rates(state: &HttpState, who: &Caller) -> Result<Value, ApiError> {
    // Seeing the rates is seeing the queues: the same permission check.
    super::session_for(state, who, &json!({"op": "list_queues"}))?;
    Ok(json!({
        "interval_ms": super::rate_history::SAMPLE_EVERY.as_millis() as u64,
        "samples": state.rates.of(&who.vhost),
    }))
}
