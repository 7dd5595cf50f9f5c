//! Answers and work spread over several queue shards: a request every shard applies (a
//! cancel, a `multiple` ack, a listing), or a publish split by the shards of its queues,
//! is answered once, from every shard's part ([`Gather`]); messages one shard hands to
//! another are counted back in ([`Countdown`]) before what waits on their commit runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedSemaphorePermit;

use super::reply::{Answer, OpError, Reply};
use super::{ConnTx, Outbound};
use crate::protocol::{ConnectionList, RequestId};

/// How the shards' parts of one request make its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Combine {
    /// The home shard's (shard 0): the others apply their share and agree.
    Home,
    /// Success if any shard succeeded (the one that held the consumer or delivery);
    /// otherwise the home shard's error.
    AnyOk,
    /// The shards' lists, merged.
    Lists,
    /// A publish's parts: the first error, else a confirm if any part confirmed.
    Publish,
}

/// One request's parts, answered when the last arrives.
pub(crate) struct Gather {
    id: RequestId,
    combine: Combine,
    remaining: AtomicUsize,
    parts: Mutex<Vec<(usize, Result<Reply, OpError>)>>,
    /// A publish's share of its connection's unconfirmed-publish limit, given back with
    /// the answer.
    credit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Gather {
    pub fn new(
        parts: usize,
        id: RequestId,
        combine: Combine,
        credit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Gather {
            id,
            combine,
            remaining: AtomicUsize::new(parts),
            parts: Mutex::new(Vec::with_capacity(parts)),
            credit: Mutex::new(credit),
        }
    }

    pub fn id(&self) -> &RequestId {
        &self.id
    }

    /// Shard `shard`'s part (after its commit, where the answer waits for one); the last
    /// part sends the answer on `tx`.
    pub fn part(&self, shard: usize, result: Result<Reply, OpError>, tx: &ConnTx) {
        let mut parts = self.parts.lock().expect("gather lock poisoned");
        parts.push((shard, result));
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let parts = std::mem::take(&mut *parts);
        let answer = combine(self.combine, parts);
        if let Some(frame) = super::requests::frame_of(self.id.clone(), answer) {
            let _ = tx.send(Outbound::Frame(frame));
        }
        drop(self.credit.lock().expect("gather lock poisoned").take());
    }
}

fn combine(
    how: Combine,
    mut parts: Vec<(usize, Result<Reply, OpError>)>,
) -> Result<Reply, OpError> {
    parts.sort_by_key(|(shard, _)| *shard);
    let mut results = parts.into_iter().map(|(_, result)| result);
    match how {
        Combine::Home => results.next().expect("a part per shard"),
        Combine::AnyOk => {
            let mut first = None;
            for result in results {
                match result {
                    Ok(reply) => return Ok(reply),
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                }
            }
            Err(first.expect("a part per shard"))
        }
        Combine::Publish => {
            let mut confirm = false;
            for result in results {
                match result? {
                    Reply::Confirm | Reply::ConfirmAfterCommit => confirm = true,
                    _ => {}
                }
            }
            Ok(if confirm {
                Reply::Confirm
            } else {
                Reply::Silent
            })
        }
        Combine::Lists => {
            let mut merged: Option<Answer> = None;
            for result in results {
                let Reply::Ok(answer) = result? else {
                    continue;
                };
                merged = Some(match (merged, answer) {
                    (None, answer) => answer,
                    (Some(Answer::Queues(mut all)), Answer::Queues(more)) => {
                        all.queues.extend(more.queues);
                        Answer::Queues(all)
                    }
                    (Some(Answer::Connections(all)), Answer::Connections(more)) => {
                        Answer::Connections(merge_connections(all, more))
                    }
                    (Some(Answer::Handlers(mut all)), Answer::Handlers(more)) => {
                        all.handlers.extend(more.handlers);
                        Answer::Handlers(all)
                    }
                    (Some(kept), _) => kept,
                });
            }
            match &mut merged {
                Some(Answer::Queues(list)) => list.queues.sort_by(|a, b| a.queue.cmp(&b.queue)),
                Some(Answer::Handlers(list)) => {
                    let key = |h: &crate::protocol::HandlerRow| (h.queue.clone(), h.plugin.clone());
                    list.handlers.sort_by_key(key);
                }
                _ => {}
            }
            Ok(Reply::Ok(merged.unwrap_or(Answer::Done)))
        }
    }
}

/// Every shard lists every connection (each has a copy); their consumers are each
/// shard's own. Unacked counts are shared, so the first shard's stand.
fn merge_connections(mut all: ConnectionList, more: ConnectionList) -> ConnectionList {
    for row in more.connections {
        if let Some(kept) = all.connections.iter_mut().find(|c| c.conn == row.conn) {
            kept.consumers.extend(row.consumers);
        }
    }
    all
}

/// Why not every part of a [`Countdown`] was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unstored {
    /// A commit failed.
    Failed,
    /// These queues refused their part (full, `reject_publish`).
    Refused(Vec<Arc<str>>),
}

/// What runs once every part is in.
type AfterAll = Box<dyn FnOnce(Result<(), Unstored>) + Send>;

/// Messages handed to other shards, counted back in as each commits (or is refused);
/// then `done` runs with whether every one was stored.
pub struct Countdown {
    remaining: AtomicUsize,
    failed: std::sync::atomic::AtomicBool,
    refused: Mutex<Vec<Arc<str>>>,
    done: Mutex<Option<AfterAll>>,
}

impl Countdown {
    pub fn new(parts: usize, done: impl FnOnce(Result<(), Unstored>) + Send + 'static) -> Self {
        Countdown {
            remaining: AtomicUsize::new(parts),
            failed: Default::default(),
            refused: Default::default(),
            done: Mutex::new(Some(Box::new(done))),
        }
    }

    /// One part is stored (or its commit failed).
    pub fn part(&self, stored: bool) {
        if !stored {
            self.failed.store(true, Ordering::Relaxed);
        }
        self.arrived();
    }

    /// One part was refused by `queue`.
    pub fn refused(&self, queue: Arc<str>) {
        self.refused
            .lock()
            .expect("countdown lock poisoned")
            .push(queue);
        self.arrived();
    }

    fn arrived(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(done) = self.done.lock().expect("countdown lock poisoned").take()
        {
            let refused =
                std::mem::take(&mut *self.refused.lock().expect("countdown lock poisoned"));
            done(
                match (self.failed.load(Ordering::Relaxed), refused.is_empty()) {
                    (true, _) => Err(Unstored::Failed),
                    (false, false) => Err(Unstored::Refused(refused)),
                    (false, true) => Ok(()),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    #[test]
    fn any_ok_takes_a_success_and_otherwise_the_home_error() {
        let err = |m: &str| Err(OpError::new(ErrorCode::UnknownConsumer, m));
        let ok = combine(Combine::AnyOk, vec![(1, Ok(Reply::Silent)), (0, err("a"))]);
        assert!(matches!(ok, Ok(Reply::Silent)));
        let none = combine(Combine::AnyOk, vec![(1, err("one")), (0, err("home"))]);
        assert_eq!(none.err().unwrap().message, "home");
    }

    #[test]
    fn a_publish_confirms_when_a_part_did_and_fails_when_a_part_failed() {
        let full = || Err(OpError::new(ErrorCode::QueueFull, "full"));
        let parts = vec![(0, Ok(Reply::Silent)), (1, Ok(Reply::Confirm))];
        assert!(matches!(
            combine(Combine::Publish, parts),
            Ok(Reply::Confirm)
        ));
        let parts = vec![(0, Ok(Reply::Confirm)), (1, full())];
        assert!(combine(Combine::Publish, parts).is_err());
    }

    #[test]
    fn a_countdown_runs_once_after_the_last_part() {
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let countdown = Countdown::new(2, move |ok| record.lock().unwrap().push(ok));
        countdown.part(true);
        assert!(seen.lock().unwrap().is_empty());
        countdown.part(false);
        assert_eq!(*seen.lock().unwrap(), [Err(Unstored::Failed)]);
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let countdown = Countdown::new(3, move |ok| record.lock().unwrap().push(ok));
        countdown.refused("full".into());
        countdown.part(true);
        countdown.part(true);
        assert_eq!(
            *seen.lock().unwrap(),
            [Err(Unstored::Refused(vec!["full".into()]))]
        );
    }
}
