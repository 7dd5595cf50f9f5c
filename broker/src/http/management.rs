//! The HTTP API's way into the router: one in-broker connection that sends the same
//! requests a WebSocket client would (parsed by the same [`parse_request`]) and matches
//! the replies to their callers by request id. Validation and error codes are therefore
//! the protocol's own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::protocol::{ErrorCode, RequestId, ServerFrame, parse_request};
use crate::queue::ConnId;
use crate::router::{Command, Outbound, RouterHandle};

/// The management connection's id: client connections count from 1.
pub const MANAGEMENT_CONN: ConnId = 0;

/// How long a request may wait for the router (a commit included) before it fails.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<ServerFrame>>>>;

/// A failed management request: the protocol's code and message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

#[derive(Clone)]
pub struct Management {
    router: RouterHandle,
    waiters: Waiters,
    next_id: Arc<AtomicU64>,
}

impl Management {
    /// Opens the management connection on the router and starts matching its replies.
    pub fn open(router: RouterHandle) -> Management {
        let (tx, rx) = mpsc::unbounded_channel();
        router.send(Command::Open {
            conn: MANAGEMENT_CONN,
            tx,
            peer: None,
        });
        let waiters = Waiters::default();
        tokio::spawn(match_replies(rx, waiters.clone()));
        Management {
            router,
            waiters,
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Sends `request` (a JSON object with `op` and its fields, without `id`) as a
    /// protocol request and returns its `ok` result.
    pub async fn call(
        &self,
        mut request: serde_json::Value,
    ) -> Result<serde_json::Value, ApiError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(object) = request.as_object_mut() {
            object.insert("id".into(), id.into());
        }
        let request =
            parse_request(&request.to_string()).map_err(|e| ApiError::new(e.code, e.message))?;
        let (done, reply) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock poisoned")
            .insert(id, done);
        let unavailable = || ApiError::new(ErrorCode::StoreError, "the broker is shutting down");
        if !self.router.send(Command::Request {
            conn: MANAGEMENT_CONN,
            request,
        }) {
            self.forget(id);
            return Err(unavailable());
        }
        let frame = match tokio::time::timeout(REPLY_TIMEOUT, reply).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => return Err(unavailable()),
            Err(_) => {
                self.forget(id);
                return Err(ApiError::new(
                    ErrorCode::StoreError,
                    "no reply from the broker in time",
                ));
            }
        };
        match frame {
            ServerFrame::Ok { result, .. } => Ok(result),
            ServerFrame::Confirm { .. } => Ok(serde_json::Value::Null),
            ServerFrame::Error { code, message, .. } => Err(ApiError::new(code, message)),
            other => Err(ApiError::new(
                ErrorCode::StoreError,
                format!("unexpected reply {other:?}"),
            )),
        }
    }

    fn forget(&self, id: u64) {
        self.waiters
            .lock()
            .expect("waiters lock poisoned")
            .remove(&id);
    }
}

/// Hands each reply frame to the caller waiting for its id; ends with the router.
async fn match_replies(mut rx: mpsc::UnboundedReceiver<Outbound>, waiters: Waiters) {
    while let Some(out) = rx.recv().await {
        let Outbound::Frame(frame) = out else {
            continue; // the management connection never subscribes
        };
        let id = match &frame {
            ServerFrame::Ok { id, .. }
            | ServerFrame::Confirm { id }
            | ServerFrame::Error { id: Some(id), .. } => id,
            _ => continue,
        };
        let RequestId::Num(id) = id else { continue };
        let waiter = waiters.lock().expect("waiters lock poisoned").remove(id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(frame);
        }
    }
    // The router stopped: callers still waiting get an error.
    waiters.lock().expect("waiters lock poisoned").clear();
}
