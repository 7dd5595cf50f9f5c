//! Queue arguments with meaning: parsed and validated at `declare_queue`.
//!
//! Unknown arguments are stored as given (users keep metadata there); known ones must be
//! well formed, so a typo in a value is an error, not a silently ignored setting.

use crate::message::Headers;

/// Where a queue's dead letters go.
#[derive(Debug, Clone, PartialEq)]
pub enum DeadLetterTarget {
    /// The durable queue `<queue>.dlq`, declared on first use.
    DefaultQueue,
    /// Through an exchange (`""` is the default exchange), with this routing key or the
    /// message's own.
    Exchange {
        exchange: String,
        routing_key: Option<String>,
    },
    /// Dropped (and counted).
    Drop,
}

/// What happens when a publish would exceed `max_length` / `max_length_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Dead-letter the oldest messages to make room.
    DropHead,
    /// Refuse the new message: the publisher gets a negative confirm.
    RejectPublish,
    /// As `RejectPublish`, and the refused message is dead-lettered (reason
    /// `max_length`), as RabbitMQ's `reject-publish-dlx`.
    RejectPublishDlx,
}

/// The failure semantics of one queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    /// Deliveries after which a nacked / rejected / abandoned message is dead-lettered.
    pub max_deliveries: Option<u32>,
    /// Delays before each redelivery after a nack with requeue; the last one repeats.
    pub retry_backoff_ms: Vec<u64>,
    pub dead_letter: DeadLetterTarget,
    pub message_ttl_ms: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    /// Priorities above this are treated as this; `None` means FIFO only.
    pub max_priority: Option<u8>,
    /// Ready messages held as they are; past it a stored queue keeps bodies only on disk
    /// and any other queue packs them (see `Queue`).
    pub max_in_memory_length: usize,
    /// How long a message id is remembered: a publish repeating one within it is
    /// confirmed but not enqueued again (`None`: no deduplication).
    pub dedup_window_ms: Option<u64>,
    /// The queue is deleted after being unused this long (see `Queue::expired_unused`).
    pub expires_ms: Option<u64>,
    /// Only the oldest consumer receives; the next takes over when it goes (RabbitMQ's
    /// single active consumer: one consumer at a time, in queue order).
    pub single_active_consumer: bool,
    /// How long a delivery from this queue may stay unacked before its consumer's
    /// connection is closed (RabbitMQ's `x-consumer-timeout`); `None`: the broker's
    /// `--consumer-timeout`. A consumer's own timeout comes first.
    pub consumer_timeout_ms: Option<u64>,
}

/// The default `max_in_memory_length`: a message costs ~600 bytes in memory, so a queue
/// that keeps up never pays for paging, and a backlog of millions stays small.
pub const DEFAULT_MAX_IN_MEMORY_LENGTH: usize = 10_000;

/// Highest `max_priority` accepted.
pub const MAX_PRIORITY: u8 = 10;

impl QueuePolicy {
    /// Parses a queue's arguments. Exclusive queues (temporary reply queues) default to
    /// dropping dead letters rather than creating a durable `.dlq` nobody would read.
    pub fn from_arguments(args: &Headers, exclusive: bool) -> Result<QueuePolicy, String> {
        let dead_letter_on = match args.get("dead_letter") {
            None => !exclusive,
            Some(serde_json::Value::Bool(on)) => *on,
            Some(other) => return Err(format!("`dead_letter` must be true or false, not {other}")),
        };
        let exchange = optional_string(args, "dead_letter_exchange")?;
        let routing_key = optional_string(args, "dead_letter_routing_key")?;
        let dead_letter = match (dead_letter_on, exchange, routing_key) {
            (false, None, None) => DeadLetterTarget::Drop,
            (false, _, _) => {
                return Err("`dead_letter: false` conflicts with `dead_letter_exchange` / `dead_letter_routing_key`".into());
            }
            (true, None, None) => DeadLetterTarget::DefaultQueue,
            (true, exchange, routing_key) => DeadLetterTarget::Exchange {
                exchange: exchange.unwrap_or_default(),
                routing_key,
            },
        };
        let retry_backoff_ms = match args.get("retry_backoff") {
            None => Vec::new(),
            Some(serde_json::Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|d| duration_ms(d).map_err(|e| format!("`retry_backoff`: {e}")))
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(format!(
                    "`retry_backoff` must be a non-empty list of durations, not {other}"
                ));
            }
        };
        let max_priority = match optional_u64(args, "max_priority")? {
            None => None,
            Some(p) if (1..=u64::from(MAX_PRIORITY)).contains(&p) => Some(p as u8),
            Some(p) => {
                return Err(format!(
                    "`max_priority` must be 1 to {MAX_PRIORITY}, not {p}"
                ));
            }
        };
        let overflow = match optional_string(args, "overflow")?.as_deref() {
            None | Some("drop_head") => Overflow::DropHead,
            Some("reject_publish") => Overflow::RejectPublish,
            Some("reject_publish_dlx") => Overflow::RejectPublishDlx,
            Some(other) => {
                return Err(format!(
                    "`overflow` must be `drop_head`, `reject_publish` or `reject_publish_dlx`, not `{other}`"
                ));
            }
        };
        let max_deliveries = match optional_u64(args, "max_deliveries")? {
            Some(0) => return Err("`max_deliveries` must be at least 1".into()),
            Some(n) => Some(u32::try_from(n).map_err(|_| "`max_deliveries` is too large")?),
            None => None,
        };
        let expires_ms = match args.get("expires") {
            None => None,
            Some(d) => match duration_ms(d).map_err(|e| format!("`expires`: {e}"))? {
                0 => return Err("`expires` must be at least 1 ms".into()),
                ms => Some(ms),
            },
        };
        let single_active_consumer = match args.get("single_active_consumer") {
            None => false,
            Some(serde_json::Value::Bool(on)) => *on,
            Some(other) => {
                return Err(format!(
                    "`single_active_consumer` must be true or false, not {other}"
                ));
            }
        };
        let consumer_timeout_ms = match args.get("consumer_timeout") {
            None => None,
            Some(d) => match duration_ms(d).map_err(|e| format!("`consumer_timeout`: {e}"))? {
                0 => return Err("`consumer_timeout` must be at least 1 ms".into()),
                ms => Some(ms),
            },
        };
        Ok(QueuePolicy {
            expires_ms,
            consumer_timeout_ms,
            single_active_consumer,
            max_deliveries,
            retry_backoff_ms,
            dead_letter,
            message_ttl_ms: args
                .get("message_ttl")
                .map(|d| duration_ms(d).map_err(|e| format!("`message_ttl`: {e}")))
                .transpose()?,
            max_length: optional_u64(args, "max_length")?,
            max_length_bytes: optional_u64(args, "max_length_bytes")?,
            overflow,
            max_priority,
            max_in_memory_length: match optional_u64(args, "max_in_memory_length")? {
                Some(n) => usize::try_from(n).map_err(|_| "`max_in_memory_length` is too large")?,
                None => DEFAULT_MAX_IN_MEMORY_LENGTH,
            },
            dedup_window_ms: match args.get("dedup_window") {
                None => None,
                Some(d) => match duration_ms(d).map_err(|e| format!("`dedup_window`: {e}"))? {
                    0 => return Err("`dedup_window` must be longer than 0".into()),
                    ms => Some(ms),
                },
            },
        })
    }

    /// The delay before redelivery number `retry` (1 for the first retry).
    pub fn backoff_ms(&self, retry: u32) -> u64 {
        let index = (retry.max(1) as usize - 1).min(self.retry_backoff_ms.len().saturating_sub(1));
        self.retry_backoff_ms.get(index).copied().unwrap_or(0)
    }

    /// A message's place among priorities in this queue.
    pub fn effective_priority(&self, requested: Option<u8>) -> u8 {
        self.max_priority
            .map_or(0, |max| requested.unwrap_or(0).min(max))
    }
}

fn optional_string(args: &Headers, name: &str) -> Result<Option<String>, String> {
    match args.get(name) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`{name}` must be a string, not {other}")),
    }
}

fn optional_u64(args: &Headers, name: &str) -> Result<Option<u64>, String> {
    match args.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("`{name}` must be a non-negative integer, not {v}")),
    }
}

/// A duration: a number of milliseconds, or a string with a unit (`250ms`, `5s`, `2m`,
/// `1h`).
pub fn duration_ms(value: &serde_json::Value) -> Result<u64, String> {
    if let Some(ms) = value.as_u64() {
        return Ok(ms);
    }
    let text = value
        .as_str()
        .ok_or_else(|| format!("{value} is not a duration (milliseconds, or e.g. \"5s\")"))?;
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. \"500ms\", \"5s\", \"2m\")"))?;
    let scale = match unit {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return Err(format!("`{text}` has an unknown unit (use ms, s, m or h)")),
    };
    Ok((number * scale).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(args: serde_json::Value) -> Result<QueuePolicy, String> {
        QueuePolicy::from_arguments(args.as_object().unwrap(), false)
    }

    #[test]
    fn defaults_dead_letter_to_the_dlq_queue() {
        let p = parse(json!({})).unwrap();
        assert_eq!(p.dead_letter, DeadLetterTarget::DefaultQueue);
        assert_eq!((p.max_deliveries, p.overflow), (None, Overflow::DropHead));
        let exclusive = QueuePolicy::from_arguments(&Headers::new(), true).unwrap();
        assert_eq!(exclusive.dead_letter, DeadLetterTarget::Drop);
    }

    #[test]
    fn parses_every_known_argument() {
        let p = parse(json!({
            "max_deliveries": 3, "retry_backoff": ["5s", 30000, "2m"],
            "dead_letter_exchange": "dlx", "message_ttl": "1.5s", "max_length": 10,
            "max_length_bytes": 4096, "overflow": "reject_publish", "max_priority": 5,
            "owner": "billing", "expires": "30m"
        }))
        .unwrap();
        assert_eq!(p.max_deliveries, Some(3));
        assert_eq!(p.retry_backoff_ms, [5_000, 30_000, 120_000]);
        assert_eq!(
            p.dead_letter,
            DeadLetterTarget::Exchange {
                exchange: "dlx".into(),
                routing_key: None
            }
        );
        assert_eq!(p.message_ttl_ms, Some(1_500));
        assert_eq!((p.max_length, p.max_length_bytes), (Some(10), Some(4096)));
        assert_eq!(p.overflow, Overflow::RejectPublish);
        assert_eq!(p.max_priority, Some(5));
        assert_eq!(p.expires_ms, Some(1_800_000));
        assert_eq!(p.effective_priority(Some(9)), 5);
        assert_eq!(p.effective_priority(None), 0);
    }

    #[test]
    fn backoff_repeats_its_last_delay() {
        let p = parse(json!({"retry_backoff": ["1s", "2s"]})).unwrap();
        let delays: Vec<_> = (1..=4).map(|r| p.backoff_ms(r)).collect();
        assert_eq!(delays, [1_000, 2_000, 2_000, 2_000]);
        assert_eq!(parse(json!({})).unwrap().backoff_ms(3), 0);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            json!({"max_deliveries": 0}),
            json!({"max_deliveries": "3"}),
            json!({"retry_backoff": []}),
            json!({"retry_backoff": ["5 parsecs"]}),
            json!({"message_ttl": -1}),
            json!({"max_in_memory_length": -1}),
            json!({"max_in_memory_length": "10k"}),
            json!({"max_priority": 11}),
            json!({"overflow": "explode"}),
            json!({"dead_letter": "no"}),
            json!({"dead_letter": false, "dead_letter_exchange": "x"}),
            json!({"max_length": 1.5}),
            json!({"expires": 0}),
            json!({"expires": "soon"}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad} should be refused");
        }
    }
}
