//! An in-process client of the router: parts of the broker that act on its state (the
//! plugins-directory watcher, management endpoints) use the same operations, validation
//! and error codes as a WebSocket connection.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::{Command, Outbound, RouterHandle};
use crate::protocol::{ErrorCode, Op, Request, RequestId, ServerFrame};
use crate::queue::ConnId;

/// Session ids count down from the top, away from the acceptor's, which count up from 1.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(u64::MAX);

/// Why a session's operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("{code}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the broker is shutting down")]
    Stopped,
}

/// A registered pseudo-connection; closed (like a dropped socket) when dropped.
pub struct Session {
    conn: ConnId,
    router: RouterHandle,
    rx: mpsc::UnboundedReceiver<Outbound>,
    next_id: u64,
}

impl Session {
    pub fn open(router: &RouterHandle) -> Session {
        let conn = NEXT_SESSION.fetch_sub(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        router.send(Command::Open { conn, tx });
        Session {
            conn,
            router: router.clone(),
            rx,
            next_id: 1,
        }
    }

    /// Runs one operation and waits for its reply (frames for other requests, such as
    /// deliveries, are not expected on a session and are skipped).
    pub async fn call(&mut self, op: Op) -> Result<serde_json::Value, SessionError> {
        let id = RequestId::Num(self.next_id);
        self.next_id += 1;
        let request = Request { id: id.clone(), op };
        if !self.router.send(Command::Request {
            conn: self.conn,
            request,
        }) {
            return Err(SessionError::Stopped);
        }
        while let Some(outbound) = self.rx.recv().await {
            match outbound {
                Outbound::Frame(ServerFrame::Ok { id: got, result }) if got == id => {
                    return Ok(result);
                }
                Outbound::Frame(ServerFrame::Error {
                    id: Some(got),
                    code,
                    message,
                }) if got == id => return Err(SessionError::Refused { code, message }),
                _ => {}
            }
        }
        Err(SessionError::Stopped)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.router.send(Command::Close {
            conn: self.conn,
            broker_stopping: false,
        });
    }
}
