//! How a group's operations become table writes, in one transaction (`writer.rs` commits
//! it). Two shortcuts keep the writer's per-message cost down at load: a message put and
//! acked within one group is never written, and acked messages are removed in runs.

use redb::WriteTransaction;

use super::writer::StoreOp;
use super::{
    ACTIVE_PLUGINS, BINDINGS, CommitError, DEDUP, ENTRY_STATE, EXCHANGES, HANDLERS, MESSAGES,
    PLUGIN_ARTIFACTS, PLUGIN_VERSIONS, PLUGIN_WASM, QUEUES, USERS, VHOSTS, VhostRecord,
    encode_entry,
};
use crate::fast_map::FastSet;

/// Applies `ops` (a group's, in order) in `txn`; `buf` is scratch for message encodings.
pub(super) fn apply_group<'a>(
    txn: &WriteTransaction,
    ops: impl Iterator<Item = &'a StoreOp> + Clone,
    buf: &mut Vec<u8>,
) -> Result<(), CommitError> {
    let acked = put_and_deleted(ops.clone());
    apply(txn, ops, &acked, buf)
}

/// Messages both put and deleted within one group (acked before their first commit): the
/// transaction's outcome is the same without either write, and at load that is most of
/// them (redb's insert and remove are the writer's main per-message cost).
fn put_and_deleted<'a>(ops: impl Iterator<Item = &'a StoreOp>) -> FastSet<(u64, u64)> {
    let mut put = FastSet::default();
    let mut both = FastSet::default();
    for op in ops {
        match op {
            StoreOp::PutMessage { queue, seq, .. } => {
                put.insert((*queue, *seq));
            }
            StoreOp::DeleteMessage { queue, seq, .. } if put.contains(&(*queue, *seq)) => {
                both.insert((*queue, *seq));
            }
            _ => {}
        }
    }
    both
}

fn apply<'a>(
    txn: &WriteTransaction,
    ops: impl Iterator<Item = &'a StoreOp>,
    acked: &FastSet<(u64, u64)>,
    buf: &mut Vec<u8>,
) -> Result<(), CommitError> {
    let mut queues = txn.open_table(QUEUES)?;
    let mut exchanges = txn.open_table(EXCHANGES)?;
    let mut bindings = txn.open_table(BINDINGS)?;
    let mut messages = txn.open_table(MESSAGES)?;
    let mut entry_state = txn.open_table(ENTRY_STATE)?;
    let mut plugin_versions = txn.open_table(PLUGIN_VERSIONS)?;
    let mut plugin_wasm = txn.open_table(PLUGIN_WASM)?;
    let mut active_plugins = txn.open_table(ACTIVE_PLUGINS)?;
    let mut plugin_artifacts = txn.open_table(PLUGIN_ARTIFACTS)?;
    let mut handlers = txn.open_table(HANDLERS)?;
    // Opened only by the rare batch that changes users, or publishes with a message id to
    // a queue with a dedup window.
    let mut users = None;
    let mut dedup = None;
    // Removed last, in runs: no operation of a group reads or re-puts a removed message
    // (a queue's seqs are never reused).
    let mut removed = Vec::new();
    for op in ops {
        match op {
            StoreOp::PutQueue(record) => {
                queues.insert(record.name.as_str(), json(record).as_slice())?;
            }
            StoreOp::DeleteQueue { name, id } => {
                queues.remove(name.as_str())?;
                let range = (*id, 0)..=(*id, u64::MAX);
                messages.retain_in(range.clone(), |_, _| false)?;
                entry_state.retain_in(range, |_, _| false)?;
                let table = match &mut dedup {
                    Some(table) => table,
                    None => dedup.insert(txn.open_table(DEDUP)?),
                };
                table.retain_in((*id, "")..(*id + 1, ""), |_, _| false)?;
            }
            StoreOp::PutExchange(record) => {
                exchanges.insert(record.name.as_str(), json(record).as_slice())?;
            }
            StoreOp::DeleteExchange(name) => {
                exchanges.remove(name.as_str())?;
            }
            StoreOp::PutBinding(id, binding) => {
                bindings.insert(*id, json(binding).as_slice())?;
            }
            StoreOp::PutExchangeBinding(id, binding) => {
                bindings.insert(*id, json(binding).as_slice())?;
            }
            StoreOp::DeleteBinding(id) => {
                bindings.remove(*id)?;
            }
            StoreOp::PutMessage {
                queue,
                seq,
                enqueued_at,
                message,
            } => {
                if acked.contains(&(*queue, *seq)) {
                    continue;
                }
                encode_entry(*enqueued_at, message, buf);
                messages.insert((*queue, *seq), buf.as_slice())?;
            }
            StoreOp::DeleteMessage { queue, seq, state } => {
                if !acked.contains(&(*queue, *seq)) {
                    removed.push((*queue, *seq));
                }
                if *state {
                    entry_state.remove((*queue, *seq))?;
                }
            }
            StoreOp::PutPluginVersion(version) => {
                let key = (version.name.as_str(), version.version);
                plugin_versions.insert(key, json(version).as_slice())?;
                plugin_wasm.insert(key, version.wasm.as_ref())?;
            }
            StoreOp::PutPluginArtifact { key, artifact } => {
                plugin_artifacts.insert(key.as_str(), artifact.as_slice())?;
            }
            StoreOp::DeletePluginVersion { name, version } => {
                plugin_versions.remove((name.as_str(), *version))?;
                plugin_wasm.remove((name.as_str(), *version))?;
            }
            StoreOp::DeletePluginArtifact(key) => {
                plugin_artifacts.remove(key.as_str())?;
            }
            StoreOp::SetActivePlugin { name, version } => {
                active_plugins.insert(name.as_str(), *version)?;
            }
            StoreOp::ClearActivePlugin(name) => {
                active_plugins.remove(name.as_str())?;
            }
            StoreOp::SetPluginTrial { name, trial } => {
                let mut trials = txn.open_table(super::PLUGIN_TRIALS)?;
                match trial {
                    Some(trial) => trials.insert(name.as_str(), json(trial).as_slice())?,
                    None => trials.remove(name.as_str())?,
                };
            }
            StoreOp::SetEntryState {
                queue,
                seq,
                delivery_count,
                not_before,
            } => {
                let state = (*delivery_count, not_before.unwrap_or(0));
                entry_state.insert((*queue, *seq), state)?;
            }
            StoreOp::PutHandler(record) => {
                let key = (record.queue.as_str(), record.plugin.as_str());
                handlers.insert(key, json(record).as_slice())?;
            }
            StoreOp::DeleteHandler { queue, plugin } => {
                handlers.remove((queue.as_str(), plugin.as_str()))?;
            }
            StoreOp::PutUser(record) => {
                let table = match &mut users {
                    Some(table) => table,
                    None => users.insert(txn.open_table(USERS)?),
                };
                table.insert(record.name.as_str(), json(record).as_slice())?;
            }
            StoreOp::DeleteUser(name) => {
                let table = match &mut users {
                    Some(table) => table,
                    None => users.insert(txn.open_table(USERS)?),
                };
                table.remove(name.as_str())?;
            }
            StoreOp::PutVhost(name) => {
                let record = VhostRecord { name: name.clone() };
                let mut table = txn.open_table(VHOSTS)?;
                table.insert(name.as_str(), json(&record).as_slice())?;
            }
            StoreOp::DeleteVhost(name) => {
                txn.open_table(VHOSTS)?.remove(name.as_str())?;
            }
            StoreOp::PutDedup {
                queue,
                message_id,
                until,
            } => {
                let table = match &mut dedup {
                    Some(table) => table,
                    None => dedup.insert(txn.open_table(DEDUP)?),
                };
                table.insert((*queue, message_id.as_str()), *until)?;
            }
            StoreOp::DeleteDedup { queue, message_id } => {
                let table = match &mut dedup {
                    Some(table) => table,
                    None => dedup.insert(txn.open_table(DEDUP)?),
                };
                table.remove((*queue, message_id.as_str()))?;
            }
        }
    }
    remove_messages(&mut messages, &mut removed)
}

/// Removes the messages `keys` (queue, seq), each run of consecutive seqs of a queue with
/// one range removal: redb rewrites a leaf once per range but once per key removed alone,
/// and acks come in runs (a consumer acks in delivery order).
fn remove_messages(
    messages: &mut redb::Table<(u64, u64), &[u8]>,
    keys: &mut Vec<(u64, u64)>,
) -> Result<(), CommitError> {
    keys.sort_unstable();
    keys.dedup();
    let mut rest = keys.as_slice();
    while let Some(&(queue, first)) = rest.first() {
        let run = 1
            + (rest.windows(2))
                .take_while(|pair| {
                    pair[1].0 == queue && pair[0].1.checked_add(1) == Some(pair[1].1)
                })
                .count();
        if run == 1 {
            messages.remove((queue, first))?;
        } else {
            let last = first + run as u64 - 1;
            messages.retain_in((queue, first)..=(queue, last), |_, _| false)?;
        }
        rest = &rest[run..];
    }
    Ok(())
}

/// JSON encoding of the small metadata records (queues, exchanges, bindings).
fn json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize to JSON")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use redb::{Database, ReadableDatabase, ReadableTable};

    use super::*;
    use crate::message::Message;

    fn put(queue: u64, seq: u64) -> StoreOp {
        let message = Arc::new(Message::text("q", "m"));
        StoreOp::PutMessage {
            queue,
            seq,
            enqueued_at: 0,
            message,
        }
    }

    fn ack(queue: u64, seq: u64) -> StoreOp {
        StoreOp::DeleteMessage {
            queue,
            seq,
            state: false,
        }
    }

    fn commit(db: &Database, ops: &[StoreOp]) {
        let txn = db.begin_write().unwrap();
        apply_group(&txn, ops.iter(), &mut Vec::new()).unwrap();
        txn.commit().unwrap();
    }

    fn stored(db: &Database) -> Vec<(u64, u64)> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(MESSAGES).unwrap();
        let keys = table.iter().unwrap().map(|entry| entry.unwrap().0.value());
        keys.collect()
    }

    #[test]
    fn acked_messages_are_removed_in_runs_and_no_other_message_is() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("store.redb")).unwrap();
        let first: Vec<StoreOp> = (1..=10)
            .flat_map(|seq| [put(1, seq), put(2, seq)])
            .collect();
        commit(&db, &first);
        // Out of order: runs (1, 2..=4) and (2, 1..=2), lone acks, one acked twice, one
        // never stored, and a message put and acked within the group (never written).
        let acks = [
            ack(1, 7),
            ack(1, 3),
            ack(2, 2),
            ack(1, 2),
            ack(1, 4),
            ack(2, 1),
            ack(1, 3),
            ack(1, 99),
            ack(2, 10),
            put(3, 1),
            ack(3, 1),
        ];
        commit(&db, &acks);
        let queue_1 = [1, 5, 6, 8, 9, 10].map(|seq| (1, seq));
        let queue_2 = (3..=9).map(|seq| (2, seq));
        let expected: Vec<(u64, u64)> = queue_1.into_iter().chain(queue_2).collect();
        assert_eq!(stored(&db), expected);
    }
}
