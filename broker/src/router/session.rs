//! An in-process client of the router, for the parts of the broker that act on its state
//! (the management HTTP API, the plugins-directory watcher): one pseudo-connection that
//! sends the same requests a WebSocket client would (parsed by the same
//! [`parse_request`]) and matches the replies to their callers by request id. Validation
//! and error codes are therefore the protocol's own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Command, Outbound, RouterHandle};
use crate::protocol::{ErrorCode, RequestId, ServerFrame, parse_request};
use crate::queue::ConnId;

/// How long a request may wait for the router (a commit included) before it fails.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<ServerFrame>>>>;

/// A failed request: the protocol's code and message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SessionError {
    pub code: ErrorCode,
    pub message: String,
}

impl SessionError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        SessionError {
            code,
            message: message.into(),
        }
    }
}

/// A registered pseudo-connection (it has no peer address, so `list_connections` leaves
/// it out). Cheap to clone; concurrent calls are fine.
#[derive(Clone)]
pub struct Session {
    conn: ConnId,
    /// The vhost it acts in: requests name its resources, results speak its names.
    vhost: Arc<str>,
    names: crate::vhost::LocalNames,
    router: RouterHandle,
    waiters: Waiters,
    next_id: Arc<AtomicU64>,
    _registered: Arc<Registered>,
}

/// Closes the pseudo-connection when the last clone of its session is dropped.
struct Registered {
    conn: ConnId,
    router: RouterHandle,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.router.send(Command::Close {
            conn: self.conn,
            broker_stopping: false,
        });
    }
}

impl Session {
    /// Opens the broker's own pseudo-connection (no user: trusted) in the default vhost
    /// and starts matching its replies.
    pub fn open(router: RouterHandle) -> Session {
        Session::open_in(router, crate::vhost::DEFAULT_VHOST, None)
    }

    /// A session acting for `user` in `vhost`, on its own pseudo-connection (closed when
    /// the last clone is dropped): what it declares is the user's (its `max_queues`), and
    /// the router's own checks see the user. The caller has authorized each request.
    pub fn acting_for(&self, user: &crate::auth::Principal, vhost: &str) -> Session {
        Session::open_in(self.router.clone(), vhost, Some(user.clone()))
    }

    /// The broker's own (trusted) session in `vhost`, on its own pseudo-connection.
    pub fn in_vhost(&self, vhost: &str) -> Session {
        Session::open_in(self.router.clone(), vhost, None)
    }

    fn open_in(router: RouterHandle, vhost: &str, user: Option<crate::auth::Principal>) -> Session {
        let conn = router.conn_ids().next();
        let (tx, rx) = super::ConnTx::channel(conn);
        router.send(Command::Open(super::OpenConn {
            conn,
            tx,
            peer: None,
            outbound: None,
            user,
            vhost: vhost.into(),
            session: None,
            protocol: crate::protocol::WireProtocol::Json,
            link: Default::default(),
        }));
        // Confirm mode, so that a publish is answered (after its commit) like any call.
        router.send(Command::Request {
            conn,
            request: crate::protocol::Request {
                id: RequestId::Num(0),
                op: crate::protocol::Op::ConfirmSelect,
            },
            credit: None,
            routed: None,
        });
        let waiters = Waiters::default();
        tokio::spawn(match_replies(rx, waiters.clone()));
        Session {
            conn,
            vhost: vhost.into(),
            names: crate::vhost::LocalNames::new(vhost),
            _registered: Arc::new(Registered {
                conn,
                router: router.clone(),
            }),
            router,
            waiters,
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Sends `request` (a JSON object with `op` and its fields, without `id`) as a
    /// protocol request and returns its `ok` result.
    pub async fn call(
        &self,
        request: serde_json::Value,
    ) -> Result<serde_json::Value, SessionError> {
        let (id, request) = self.numbered_request(request)?;
        let (done, reply) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock poisoned")
            .insert(id, done);
        let unavailable =
            || SessionError::new(ErrorCode::StoreError, "the broker is shutting down");
        let sent = self
            .router
            .send_internal_request(Command::Request {
                conn: self.conn,
                request,
                credit: None,
                routed: None,
            })
            .await;
        if !sent {
            self.forget(id);
            return Err(unavailable());
        }
        let frame = match tokio::time::timeout(REPLY_TIMEOUT, reply).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => return Err(unavailable()),
            Err(_) => {
                self.forget(id);
                return Err(SessionError::new(
                    ErrorCode::StoreError,
                    "no reply from the broker in time",
                ));
            }
        };
        match self.names.frame(frame) {
            ServerFrame::Ok { result, .. } => Ok(result),
            ServerFrame::Confirm { .. } => Ok(serde_json::Value::Null),
            // A `mandatory` publish no queue took (its confirm follows, unheard).
            ServerFrame::Return { reason, .. } => Ok(serde_json::json!({ "returned": reason })),
            ServerFrame::Error { code, message, .. } => Err(SessionError::new(code, message)),
            other => Err(SessionError::new(
                ErrorCode::StoreError,
                format!("unexpected reply {other:?}"),
            )),
        }
    }

    /// Sends `request`, an operation without a success reply (`ack`, `nack`), and does not
    /// wait: a `call` after it is answered once it is applied.
    pub async fn send(&self, request: serde_json::Value) -> Result<(), SessionError> {
        let (_, request) = self.numbered_request(request)?;
        let command = Command::Request {
            conn: self.conn,
            request,
            credit: None,
            routed: None,
        };
        match self.router.send_internal_request(command).await {
            true => Ok(()),
            false => Err(SessionError::new(
                ErrorCode::StoreError,
                "the broker is shutting down",
            )),
        }
    }

    /// `request` with this session's next id, parsed, its names in the session's vhost.
    fn numbered_request(
        &self,
        mut request: serde_json::Value,
    ) -> Result<(u64, crate::protocol::Request), SessionError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(object) = request.as_object_mut() {
            object.insert("id".into(), id.into());
        }
        let mut request = parse_request(&request.to_string())
            .map_err(|e| SessionError::new(e.code, e.message))?;
        crate::vhost::qualify_op(&self.vhost, &mut request.op)
            .map_err(|e| SessionError::new(ErrorCode::InvalidField, e))?;
        Ok((id, request))
    }

    fn forget(&self, id: u64) {
        self.waiters
            .lock()
            .expect("waiters lock poisoned")
            .remove(&id);
    }
}

/// Hands each reply frame to the caller waiting for its id; ends with the router.
async fn match_replies(mut rx: super::ConnRx, waiters: Waiters) {
    while let Some((_, _, out)) = rx.recv().await {
        let Outbound::Frame(frame) = out else {
            continue; // sessions never subscribe
        };
        let id = match &frame {
            ServerFrame::Ok { id, .. }
            | ServerFrame::Confirm { id }
            | ServerFrame::Return { id, .. }
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
