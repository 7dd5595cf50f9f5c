//! How the router answers a request: an [`OpError`], or a [`Reply`] carrying the
//! operation's typed [`Answer`] (the `result` of its `ok` frame, serialized at the edge in
//! `requests.rs`).

use serde::Serialize;

use crate::protocol::{
    BindingList, ConnectionList, ErrorCode, ExchangeList, Got, HandlerList, MessageCount, Moved,
    PeekedMessages, PermissionList, PluginDeleted, PluginDeployed, PluginHistory, PluginList,
    PluginLogs, PluginPruned, PluginReset, QueueInfo, QueueList, RouteTrace, Subscribed,
    TrialDropped, TrialStatus, UserList, VhostList,
};

/// An operation's failure, answered as an `error` frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpError {
    pub code: ErrorCode,
    pub message: String,
}

impl OpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OpError {
            code,
            message: message.into(),
        }
    }
}

/// How an operation is answered.
pub(crate) enum Reply {
    /// No success reply (acks, publishes without confirms).
    Silent,
    Ok(Answer),
    /// `ok` once this turn's store batch has committed.
    OkAfterCommit(Answer),
    Confirm,
    /// `confirm` once this turn's store batch has committed.
    ConfirmAfterCommit,
}

/// Declares [`Answer`] with a variant per result type, and `From` each of them.
macro_rules! answers {
    ($($variant:ident($result:ty)),* $(,)?) => {
        /// What an operation answers on success: nothing ([`Answer::Done`]), or its
        /// result type (`protocol/results.rs`, `protocol/plugin_results.rs`).
        #[derive(Debug, Serialize)]
        #[serde(untagged)]
        pub(crate) enum Answer {
            /// An `ok` frame without `result`.
            Done,
            $($variant($result),)*
        }

        $(impl From<$result> for Answer {
            fn from(result: $result) -> Self {
                Answer::$variant(result)
            }
        })*
    };
}

answers! {
    Queue(QueueInfo),
    Queues(QueueList),
    Messages(MessageCount),
    Subscribed(Subscribed),
    Got(Got),
    Peeked(PeekedMessages),
    Moved(Moved),
    Exchanges(ExchangeList),
    Bindings(BindingList),
    Connections(ConnectionList),
    Vhosts(VhostList),
    Permissions(PermissionList),
    Users(UserList),
    PluginDeployed(PluginDeployed),
    TrialDropped(TrialDropped),
    TrialStatus(TrialStatus),
    Plugins(PluginList),
    PluginHistory(PluginHistory),
    PluginLogs(PluginLogs),
    PluginPruned(PluginPruned),
    PluginDeleted(PluginDeleted),
    PluginReset(PluginReset),
    Route(RouteTrace),
    Handlers(HandlerList),
}

impl Answer {
    /// The `ok` frame's `result` (null, and so absent, for [`Answer::Done`]).
    pub fn into_json(self) -> serde_json::Value {
        serde_json::to_value(self).expect("results serialize to JSON")
    }
}
