//! How requests reach the store writer and how it gathers them into one commit (see
//! `writer.rs` for why).
//!
//! The inbox is a queue under a mutex with a condition variable, rather than a channel, so
//! that the writer is woken only when that changes what it does: when it is idle, and
//! while it holds a group of acks, only for a batch somebody waits for. While it lingers
//! or commits, submitting costs a lock and a push, no wake-up: at 5,000 msg/s a channel
//! receive per request was 10,000 wake-ups a second of the writer thread.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::writer::{Request, StoreOp, WriteBatch};

/// How long a group somebody waits for (a confirm, a declare) gathers, at load.
pub(super) const LINGER: Duration = Duration::from_millis(2);
/// How long a group that only deletes messages (acks) may wait for company.
pub(super) const ACK_LINGER: Duration = Duration::from_millis(20);
/// A group this large already: the load makes groups, lingering would only add latency.
const LINGER_BELOW: usize = 32;
/// After a linger that gathered nothing waited-for, no lingering for this long: a lone
/// synchronous publisher pays one linger per backoff, not one per message.
const QUIET_BACKOFF: Duration = Duration::from_millis(50);

/// What submitters and the writer share.
#[derive(Default)]
pub(super) struct Inbox {
    state: Mutex<InboxState>,
    wake: Condvar,
}

#[derive(Default)]
struct InboxState {
    requests: VecDeque<Request>,
    /// A waited-for request (or `Close`) is queued.
    waited: bool,
    /// The writer sleeps on the condition variable: empty-handed (`Idle`) or holding acks.
    writer: WriterWait,
    /// The writer thread has ended: nothing submitted will commit.
    stopped: bool,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum WriterWait {
    #[default]
    Busy,
    Idle,
    HoldingAcks,
}

/// Whether anyone waits for `batch`'s commit (or it changes more than acked messages).
fn waited_for(batch: &WriteBatch) -> bool {
    !batch.completions.is_empty()
        || batch
            .ops
            .iter()
            .any(|op| !matches!(op, StoreOp::DeleteMessage { .. }))
}

impl Inbox {
    /// Queues `request`; gives it back when the writer has stopped.
    pub(super) fn push(&self, request: Request) -> Result<(), Request> {
        let mut state = self.state.lock().unwrap();
        if state.stopped {
            return Err(request);
        }
        let waited = match &request {
            Request::Write(batch) => waited_for(batch),
            Request::Close => true,
        };
        state.waited |= waited;
        state.requests.push_back(request);
        let wake = match state.writer {
            WriterWait::Busy => false,
            WriterWait::Idle => true,
            WriterWait::HoldingAcks => waited,
        };
        drop(state);
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Marks the writer stopped; returns what was still queued.
    pub(super) fn stop(&self) -> Vec<Request> {
        let mut state = self.state.lock().unwrap();
        state.stopped = true;
        state.requests.drain(..).collect()
    }

    /// Takes everything queued: (requests, whether any is waited-for).
    fn take(state: &mut InboxState) -> (Vec<Request>, bool) {
        let waited = std::mem::take(&mut state.waited);
        (state.requests.drain(..).collect(), waited)
    }
}

/// The writer's memory of how gathering went.
#[derive(Default)]
pub(super) struct Gathering {
    /// No lingering for waited-for groups before this.
    pub(super) quiet_until: Option<Instant>,
}

/// The next group of batches to commit together: waits for a first request; a group of
/// acks alone waits up to `ACK_LINGER` for a waited-for batch; a waited-for group of fewer
/// than `LINGER_BELOW` batches lingers `LINGER` (unless the last linger gathered nothing)
/// and takes what came meanwhile.
/// `closing` is set once a `Close` was taken (the group still commits).
pub(super) fn gather(
    inbox: &Inbox,
    gathering: &mut Gathering,
    closing: &mut bool,
) -> Vec<WriteBatch> {
    let mut state = inbox.state.lock().unwrap();
    while state.requests.is_empty() {
        state.writer = WriterWait::Idle;
        state = inbox.wake.wait(state).unwrap();
    }
    if !state.waited {
        let until = Instant::now() + ACK_LINGER;
        while !state.waited {
            let now = Instant::now();
            if now >= until {
                break;
            }
            state.writer = WriterWait::HoldingAcks;
            state = inbox.wake.wait_timeout(state, until - now).unwrap().0;
        }
    }
    state.writer = WriterWait::Busy;
    let (mut requests, waited) = Inbox::take(&mut state);
    drop(state);

    let now = Instant::now();
    let linger = waited
        && requests.len() < LINGER_BELOW
        && !requests.iter().any(|r| matches!(r, Request::Close))
        && gathering.quiet_until.is_none_or(|q| now >= q);
    if linger {
        std::thread::sleep(LINGER);
        let (more, more_waited) = Inbox::take(&mut inbox.state.lock().unwrap());
        if !more_waited {
            gathering.quiet_until = Some(Instant::now() + QUIET_BACKOFF);
        }
        requests.extend(more);
    }
    let mut batches = Vec::with_capacity(requests.len());
    for request in requests {
        match request {
            Request::Write(batch) => batches.push(batch),
            Request::Close => *closing = true,
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CommitError;

    fn ack(seq: u64) -> Request {
        Request::Write(WriteBatch {
            ops: vec![StoreOp::DeleteMessage {
                queue: 1,
                seq,
                state: false,
            }],
            completions: Vec::new(),
        })
    }

    fn confirmed() -> Request {
        let done: Box<dyn FnOnce(Result<(), CommitError>) + Send> = Box::new(|_| {});
        Request::Write(WriteBatch {
            ops: Vec::new(),
            completions: vec![done],
        })
    }

    #[test]
    fn acks_and_a_waited_for_batch_queued_together_commit_together() {
        let inbox = Inbox::default();
        for request in [ack(1), ack(2), confirmed()] {
            assert!(inbox.push(request).is_ok());
        }
        let (mut gathering, mut closing) = (Gathering::default(), false);
        assert_eq!(gather(&inbox, &mut gathering, &mut closing).len(), 3);
        assert!(!closing);
    }

    #[test]
    fn an_ack_alone_still_commits_and_close_ends_gathering() {
        let inbox = Inbox::default();
        let (mut gathering, mut closing) = (Gathering::default(), false);
        assert!(inbox.push(ack(1)).is_ok());
        // Nothing else comes: the ack commits after its linger.
        assert_eq!(gather(&inbox, &mut gathering, &mut closing).len(), 1);
        assert!(inbox.push(ack(2)).is_ok());
        assert!(inbox.push(Request::Close).is_ok());
        assert_eq!(gather(&inbox, &mut gathering, &mut closing).len(), 1);
        assert!(closing);
    }

    #[test]
    fn a_linger_that_gathers_nothing_turns_lingering_off_for_a_while() {
        let inbox = Inbox::default();
        let (mut gathering, mut closing) = (Gathering::default(), false);
        assert!(inbox.push(confirmed()).is_ok());
        assert_eq!(gather(&inbox, &mut gathering, &mut closing).len(), 1);
        assert!(gathering.quiet_until.is_some());
    }

    #[test]
    fn a_large_group_does_not_linger() {
        let inbox = Inbox::default();
        let (mut gathering, mut closing) = (Gathering::default(), false);
        for _ in 0..LINGER_BELOW {
            assert!(inbox.push(confirmed()).is_ok());
        }
        assert_eq!(
            gather(&inbox, &mut gathering, &mut closing).len(),
            LINGER_BELOW
        );
        // No linger, so no verdict on lingering either.
        assert!(gathering.quiet_until.is_none());
    }

    #[test]
    fn a_stopped_writer_gives_requests_back() {
        let inbox = Inbox::default();
        assert!(inbox.push(ack(1)).is_ok());
        assert_eq!(inbox.stop().len(), 1);
        assert!(inbox.push(confirmed()).is_err());
    }
}
