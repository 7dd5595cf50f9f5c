//! A STOMP connection's writer: turns what the router sends (deliveries, answers,
//! errors) into MESSAGE, RECEIPT and ERROR frames, and heart-beats; accounts written
//! delivery bytes like the JSON connection's writer. An ERROR ends the connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::router::ConnRx;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{ServerCommand, Version, encode};
use super::headers::message_frame;
use super::transport::Sink;
use crate::protocol::{RequestId, ServerFrame};
use crate::queue::ConnId;
use crate::router::{Command, MAX_OUTBOUND_BYTES, Outbound, RouterHandle, outbound_cost};
use crate::vhost::LocalNames;

/// Frames written before one flush.
const MAX_FRAMES_PER_FLUSH: usize = 256;

/// What the writer does with the answer to a request, carried in the request's id (the
/// router echoes it), so that reader and writer share no state.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Answer {
    /// Nothing: errors still become ERROR frames.
    Nothing,
    /// RECEIPT `receipt` once the answer came and the connection's first
    /// `after_publishes` publishes are confirmed.
    Receipt {
        receipt: String,
        after_publishes: u64,
    },
    /// As `Receipt` (without one when empty), then the connection ends: DISCONNECT.
    Disconnect {
        receipt: String,
        after_publishes: u64,
    },
}

impl Answer {
    /// The id of request number `n` that asks for this answer.
    pub fn request_id(self, n: u64) -> RequestId {
        match self {
            Answer::Nothing => RequestId::Num(n),
            Answer::Receipt {
                receipt,
                after_publishes,
            } => RequestId::Str(format!("r{after_publishes}:{receipt}")),
            Answer::Disconnect {
                receipt,
                after_publishes,
            } => RequestId::Str(format!("d{after_publishes}:{receipt}")),
        }
    }

    fn of(id: &RequestId) -> Answer {
        let RequestId::Str(text) = id else {
            return Answer::Nothing;
        };
        let parse = |rest: &str| {
            let (count, receipt) = rest.split_once(':')?;
            Some((count.parse().ok()?, receipt.to_string()))
        };
        match (text.get(..1), text.get(1..).and_then(parse)) {
            (Some("r"), Some((after_publishes, receipt))) => Answer::Receipt {
                receipt,
                after_publishes,
            },
            (Some("d"), Some((after_publishes, receipt))) => Answer::Disconnect {
                receipt,
                after_publishes,
            },
            _ => Answer::Nothing,
        }
    }

    fn receipt(&self) -> Option<&str> {
        match self {
            Answer::Receipt { receipt, .. } => Some(receipt),
            Answer::Disconnect { receipt, .. } if !receipt.is_empty() => Some(receipt),
            _ => None,
        }
    }
}

pub(super) struct Writer<S> {
    pub sink: Sink<S>,
    pub conn: ConnId,
    pub router: RouterHandle,
    pub version: Version,
    pub outbound: Arc<AtomicUsize>,
    pub names: LocalNames,
}

/// What handling one outbound item left to do.
enum Next {
    Continue,
    /// The connection ends (after an ERROR, a DISCONNECT, or the broker's close).
    End,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Writer<S> {
    /// Writes until the channel closes, an ERROR or DISCONNECT ends the connection, or the
    /// socket fails; then closes the socket.
    pub async fn run(mut self, mut rx: ConnRx) {
        let mut confirmed: u64 = 0;
        // RECEIPTs waiting for earlier publishes' confirms.
        let mut waiting: Vec<Answer> = Vec::new();
        let mut written_auto_acks = Vec::new();
        'outer: while let Some((_, _, first)) = rx.recv().await {
            let mut next = Some(first);
            let mut count = 0;
            let mut written_bytes = 0;
            while let Some(out) = next {
                let step = match out {
                    Outbound::Frame(frame) => {
                        self.frame(frame, &mut confirmed, &mut waiting, &mut written_bytes)
                            .await
                    }
                    Outbound::AutoAckDelivery(delivery) => {
                        written_auto_acks.push(delivery.delivery_tag);
                        let frame = ServerFrame::Deliver(delivery);
                        self.frame(frame, &mut confirmed, &mut waiting, &mut written_bytes)
                            .await
                    }
                    Outbound::Ping => self
                        .sink
                        .feed(Bytes::from_static(b"\n"))
                        .await
                        .map(|()| Next::Continue),
                    Outbound::Close(reason) => {
                        tracing::info!(conn = self.conn, %reason, "the broker closes the connection");
                        self.error(&reason, None).await.map(|()| Next::End)
                    }
                };
                match step {
                    Ok(Next::Continue) => {}
                    Ok(Next::End) | Err(_) => break 'outer,
                }
                count += 1;
                next = if count < MAX_FRAMES_PER_FLUSH {
                    rx.try_recv().ok().map(|(_, _, out)| out)
                } else {
                    None
                };
            }
            if self.sink.flush().await.is_err() {
                break;
            }
            if !written_auto_acks.is_empty() {
                let delivery_tags = std::mem::take(&mut written_auto_acks);
                let conn = self.conn;
                let written = Command::Written {
                    conn,
                    delivery_tags,
                };
                self.router.send_request(written).await;
            }
            self.account(written_bytes).await;
        }
        self.sink.close().await;
    }

    async fn frame(
        &mut self,
        frame: ServerFrame,
        confirmed: &mut u64,
        waiting: &mut Vec<Answer>,
        written_bytes: &mut usize,
    ) -> Result<Next, String> {
        match self.names.frame(frame) {
            ServerFrame::Deliver(delivery) => {
                *written_bytes += outbound_cost(&delivery);
                let bytes = message_frame(&delivery, self.version);
                self.sink.feed(bytes).await?;
                Ok(Next::Continue)
            }
            ServerFrame::Confirm { id } => {
                *confirmed += 1;
                let answered = self.answered(&id, *confirmed, waiting).await?;
                // Earlier RECEIPTs may have waited for this confirm.
                let mut still = Vec::new();
                let mut end = matches!(answered, Next::End);
                for answer in std::mem::take(waiting) {
                    match self.receipt_due(answer, *confirmed, &mut still).await? {
                        Next::End => end = true,
                        Next::Continue => {}
                    }
                }
                *waiting = still;
                Ok(if end { Next::End } else { Next::Continue })
            }
            ServerFrame::Ok { id, .. } => self.answered(&id, *confirmed, waiting).await,
            ServerFrame::Error { id, message, .. } => {
                let answer = id.as_ref().map_or(Answer::Nothing, Answer::of);
                self.error(&message, answer.receipt()).await?;
                Ok(Next::End)
            }
            ServerFrame::Cancelled {
                consumer_tag,
                reason,
            } => {
                let message = format!("subscription `{consumer_tag}` ended: {reason}");
                self.error(&message, None).await?;
                Ok(Next::End)
            }
            // No mandatory publishes; STOMP has no blocked notification.
            ServerFrame::Return { .. } | ServerFrame::Blocked { .. } | ServerFrame::Unblocked => {
                Ok(Next::Continue)
            }
        }
    }

    /// A request was answered: its RECEIPT now, or once enough publishes are confirmed.
    async fn answered(
        &mut self,
        id: &RequestId,
        confirmed: u64,
        waiting: &mut Vec<Answer>,
    ) -> Result<Next, String> {
        self.receipt_due(Answer::of(id), confirmed, waiting).await
    }

    async fn receipt_due(
        &mut self,
        answer: Answer,
        confirmed: u64,
        waiting: &mut Vec<Answer>,
    ) -> Result<Next, String> {
        let after = match &answer {
            Answer::Nothing => return Ok(Next::Continue),
            Answer::Receipt {
                after_publishes, ..
            }
            | Answer::Disconnect {
                after_publishes, ..
            } => *after_publishes,
        };
        if confirmed < after {
            waiting.push(answer);
            return Ok(Next::Continue);
        }
        if let Some(receipt) = answer.receipt() {
            let frame = encode(
                ServerCommand::Receipt,
                &[("receipt-id", receipt)],
                b"",
                self.version,
            );
            self.sink.feed(frame).await?;
        }
        Ok(match answer {
            Answer::Disconnect { .. } => Next::End,
            _ => Next::Continue,
        })
    }

    /// An ERROR frame: a short `message` header and the whole text as its body.
    async fn error(&mut self, message: &str, receipt: Option<&str>) -> Result<(), String> {
        let short: String = message
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        let mut headers = vec![("message", short.as_str()), ("content-type", "text/plain")];
        if let Some(receipt) = receipt {
            headers.push(("receipt-id", receipt));
        }
        let frame = encode(
            ServerCommand::Error,
            &headers,
            message.as_bytes(),
            self.version,
        );
        self.sink.feed(frame).await?;
        self.sink.flush().await
    }

    /// Subtracts written delivery bytes; tells the router when the connection drained
    /// below [`MAX_OUTBOUND_BYTES`].
    async fn account(&mut self, written_bytes: usize) {
        let before = self
            .outbound
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                Some(queued.saturating_sub(written_bytes))
            })
            .expect("the update always returns Some");
        if before >= MAX_OUTBOUND_BYTES && before.saturating_sub(written_bytes) < MAX_OUTBOUND_BYTES
        {
            let conn = self.conn;
            self.router.send_request(Command::Drained { conn }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_through_request_ids() {
        for answer in [
            Answer::Nothing,
            Answer::Receipt {
                receipt: "a:b".into(),
                after_publishes: 3,
            },
            Answer::Disconnect {
                receipt: String::new(),
                after_publishes: 0,
            },
        ] {
            assert_eq!(Answer::of(&answer.clone().request_id(7)), answer);
        }
        assert_eq!(Answer::of(&RequestId::Str("zz".into())), Answer::Nothing);
    }
}
