//! `GET /readyz`: whether the broker can serve, with the reason when it cannot.

use hyper::StatusCode;
use serde_json::{Value, json};

use super::{HttpResponse, HttpState, json_response};
use crate::plugin::STANDARD_EXCHANGES;
use crate::protocol::ExchangeList;

/// Ready when the router answers, the store's last commit succeeded, and every plugin the
/// stored state needs is loaded.
pub(super) async fn readyz(state: &HttpState) -> HttpResponse {
    let store = state.store.snapshot();
    let store_check = match (store.running, store.failing) {
        (false, _) => Err("the store writer has stopped".to_string()),
        (true, true) => Err("the last store commit failed".to_string()),
        (true, false) => Ok(format!("{} commits", store.commits)),
    };
    let exchanges = state.management.call(json!({"op": "list_exchanges"})).await;
    let router_check = match &exchanges {
        Ok(_) => Ok("answering".to_string()),
        Err(e) => Err(e.message.clone()),
    };
    let loaded: Vec<String> = state
        .plugins
        .plugins()
        .into_iter()
        .map(|p| p.name)
        .collect();
    let missing: Vec<&str> = STANDARD_EXCHANGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !loaded.iter().any(|l| l == name))
        .collect();
    let unrestored: Vec<String> = exchanges
        .ok()
        .and_then(|v| serde_json::from_value::<ExchangeList>(v).ok())
        .map(|list| list.unrestored)
        .unwrap_or_default();
    let plugins_check = if !missing.is_empty() {
        Err(format!(
            "standard exchanges not loaded: {}",
            missing.join(", ")
        ))
    } else if !unrestored.is_empty() {
        Err(format!(
            "exchanges waiting for their plugin type: {}",
            unrestored.join(", ")
        ))
    } else {
        Ok(format!("{} plugins loaded", loaded.len()))
    };
    let checks = [
        ("store", store_check),
        ("router", router_check),
        ("plugins", plugins_check),
    ];
    let ready = checks.iter().all(|(_, check)| check.is_ok());
    let checks: serde_json::Map<String, Value> = checks
        .into_iter()
        .map(|(name, check)| {
            let value = match check {
                Ok(detail) => json!({"ok": true, "detail": detail}),
                Err(detail) => json!({"ok": false, "detail": detail}),
            };
            (name.to_string(), value)
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &json!({"ready": ready, "checks": checks}))
}
