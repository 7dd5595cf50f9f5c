//! Authentication of a WebSocket connection before the router hears of it, and the user
//! requests a connection answers itself (they hash passwords: never on the router).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::gate::Gate;
use super::tls::MaybeTls;
use crate::auth::{AuthError, Principal, UserRecord, hash_password};
use crate::protocol::{
    ErrorCode, Op, Request, RequestId, ServerFrame, encode_server_frame, parse_request,
};
use crate::router::UserChange;

/// A connection logged in.
pub(super) struct LoggedIn {
    pub principal: Principal,
    /// The `authenticate` request to answer, once the router knows the connection (so
    /// that a listing made by anyone after the answer shows it).
    pub answer: Option<ServerFrame>,
}

/// Logs the connection in: as the user its verified client certificate names, else with
/// the upgrade request's credentials, or else with the first `authenticate` request
/// (other requests are refused until then). `None` when it did not authenticate in time,
/// or failed (the connection is then closed).
pub(super) async fn login(
    ws: &mut WebSocketStream<MaybeTls>,
    gate: &Gate,
    peer: SocketAddr,
    credentials: Option<(String, String)>,
    vhost: &str,
    within: Duration,
) -> Option<LoggedIn> {
    let logged_in = |principal| LoggedIn {
        principal,
        answer: None,
    };
    if let Some(certified) = ws.get_ref().client_user() {
        // Credentials sent alongside must not name someone else (they are not checked:
        // the certificate is the proof).
        let result = match credentials {
            Some((user, _)) if user != certified => {
                tracing::warn!(target: "audit", event = "authentication_failed", user = %certified, %peer, method = "certificate", credentials_user = %user, "authentication failed: credentials for another user");
                Err(AuthError::CertificateMismatch {
                    certificate: certified,
                    credentials: user,
                })
            }
            _ => {
                gate.auth
                    .authenticate_certificate(&certified, peer.ip())
                    .await
            }
        };
        let result = result.and_then(|p| gate.auth.open_vhost(&p, vhost).map(|_| p));
        return match result {
            Ok(principal) => Some(logged_in(principal)),
            Err(e) => {
                refuse(ws, None, &e).await;
                None
            }
        };
    }
    if let Some((user, password)) = credentials {
        let login = gate.auth.authenticate(&user, &password, peer.ip()).await;
        return match login.and_then(|p| gate.auth.open_vhost(&p, vhost).map(|_| p)) {
            Ok(principal) => Some(logged_in(principal)),
            Err(e) => {
                refuse(ws, None, &e).await;
                None
            }
        };
    }
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .ok()??
            .ok()?;
        let text = match frame {
            WsMessage::Text(text) => text,
            WsMessage::Binary(_) => {
                reply(ws, not_yet(None)).await;
                continue;
            }
            WsMessage::Close(_) => return None,
            _ => continue,
        };
        let request = match parse_request(&text) {
            Ok(request) => request,
            Err(e) => {
                reply(ws, ServerFrame::error(e.id, e.code, e.message)).await;
                continue;
            }
        };
        let Request { id, op } = request;
        let Op::Authenticate { username, password } = op else {
            reply(ws, not_yet(Some(id))).await;
            continue;
        };
        let login = gate
            .auth
            .authenticate(&username, &password, peer.ip())
            .await;
        match login.and_then(|p| gate.auth.open_vhost(&p, vhost).map(|_| p)) {
            Ok(principal) => {
                let result = serde_json::json!({ "user": username });
                let answer = Some(ServerFrame::Ok { id, result });
                return Some(LoggedIn { principal, answer });
            }
            Err(e) => {
                refuse(ws, Some(id), &e).await;
                return None;
            }
        }
    }
}

fn not_yet(id: Option<RequestId>) -> ServerFrame {
    ServerFrame::error(
        id,
        ErrorCode::AccessRefused,
        "authenticate first: send {\"op\": \"authenticate\", \"username\": ..., \"password\": ...} \
         or HTTP Basic credentials on the upgrade request",
    )
}

async fn reply(ws: &mut WebSocketStream<MaybeTls>, frame: ServerFrame) {
    let _ = ws
        .send(WsMessage::Text(encode_server_frame(&frame).into()))
        .await;
}

/// Answers a failed login with `access_refused` and closes the connection.
async fn refuse(ws: &mut WebSocketStream<MaybeTls>, id: Option<RequestId>, e: &AuthError) {
    reply(
        ws,
        ServerFrame::error(id, ErrorCode::AccessRefused, e.to_string()),
    )
    .await;
    let _ = ws.close(None).await;
}

/// A user request the connection turns into a [`UserChange`] (hashing the password off
/// the async runtime's workers), or the error to answer it with.
pub(super) async fn user_change(
    gate: &Gate,
    principal: &Principal,
    op: Op,
) -> Result<UserChange, (ErrorCode, String)> {
    let refused = |what: &str| {
        (
            ErrorCode::AccessRefused,
            format!("{what} needs the administrator tag"),
        )
    };
    match op {
        Op::AddUser {
            user,
            password,
            imported,
            tags,
        } => {
            if !principal.is_administrator() {
                return Err(refused("add_user"));
            }
            crate::auth::check_user_name(&user).map_err(|e| (ErrorCode::InvalidField, e))?;
            let existing = gate.auth.get(&user);
            let hashed = match (password, imported) {
                (Some(password), None) => hash_off_runtime(password).await,
                (None, Some(imported)) => crate::auth::rabbitmq_hash(&imported)
                    .map_err(|e| (ErrorCode::InvalidField, e))?,
                _ => {
                    let text = "give either `password` or `password_hash` with `hashing_algorithm`";
                    return Err((ErrorCode::InvalidField, text.into()));
                }
            };
            let record = UserRecord {
                name: user,
                password_hash: hashed,
                tags,
                limits: existing
                    .as_ref()
                    .map(|u| u.limits.clone())
                    .unwrap_or_default(),
                loopback_only: existing.as_ref().is_some_and(|u| u.loopback_only),
                permissions: existing.map(|u| u.permissions).unwrap_or_default(),
            };
            Ok(UserChange::Put(record))
        }
        Op::ChangePassword { user, password } => {
            if !principal.is_administrator() && *principal.user != *user {
                return Err(refused("changing another user's password"));
            }
            let Some(mut record) = gate.auth.get(&user) else {
                return Err((ErrorCode::UserNotFound, format!("no user `{user}`")));
            };
            record.password_hash = hash_off_runtime(password).await;
            Ok(UserChange::Put(record))
        }
        Op::Authenticate { .. } => Err((
            ErrorCode::InvalidField,
            "this connection is already authenticated".into(),
        )),
        _ => unreachable!("only user requests are passed here"),
    }
}

async fn hash_off_runtime(password: String) -> String {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .expect("hashing does not panic")
}
