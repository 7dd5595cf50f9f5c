//! An AMQP connection's reader task: it decodes the client's frames and hands them to the
//! connection task in batches, every frame already whole in the read buffer at once.
//!
//! A publish is at least three frames (method, content header, body) and a consumer acks
//! each delivery with a frame of its own; handed over one by one, each frame cost a
//! channel send, often a wake-up, and a turn of the connection task's `select!`. Frames
//! keep their order within a batch and across batches, so what the connection task does
//! with them — frames of several channels interleaved, a body over several frames, a
//! malformed frame after good ones (the batch ends with its error, and so does the
//! reader) — is exactly what it did frame by frame.

use crate::shard_threads::PlacedTask;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

use super::frames::{Incoming, ReadError, decode, read_frame};

/// Bytes read from the socket at a time.
const READ_BUFFER: usize = 64 * 1024;
/// The most frames in one batch.
const MAX_BATCH_FRAMES: usize = 256;
/// Batches read ahead of the connection task (at most `READ_BUFFER` bytes of frames
/// each, or one larger frame).
const READ_AHEAD_BATCHES: usize = 4;

/// A frame, or why none could be read (the last item the reader sends).
pub(super) type Read = Result<Incoming, ReadError>;

/// The connection task's end: frames one at a time, in order.
pub(super) struct FrameReceiver {
    batches: mpsc::Receiver<Vec<Read>>,
    /// The rest of the last batch received.
    pending: VecDeque<Read>,
}

impl FrameReceiver {
    /// The next frame; `None` once the reader has stopped. Cancel-safe: a frame is taken
    /// only when it is returned.
    pub async fn recv(&mut self) -> Option<Read> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        let batch = self.batches.recv().await?;
        self.pending = batch.into();
        self.pending.pop_front()
    }

    /// The next frame of a batch already received, without waiting.
    pub fn ready(&mut self) -> Option<Read> {
        self.pending.pop_front()
    }
}

/// Starts the reader of `read`; each frame may be at most `frame_max` bytes, as the
/// connection has negotiated it when the frame is read.
pub(super) fn spawn<R>(read: R, frame_max: Arc<AtomicU32>) -> (FrameReceiver, PlacedTask<()>)
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let (tx, batches) = mpsc::channel(READ_AHEAD_BATCHES);
    let task = crate::shard_threads::spawn(async move {
        let mut read = BufReader::with_capacity(READ_BUFFER, read);
        loop {
            let batch = next_batch(&mut read, frame_max.load(Ordering::Relaxed)).await;
            let last = batch.last().is_some_and(Result::is_err);
            if tx.send(batch).await.is_err() || last {
                break;
            }
        }
    });
    let receiver = FrameReceiver {
        batches,
        pending: VecDeque::new(),
    };
    (receiver, task)
}

/// The frames whole in the buffer after at most one read from the socket; when the
/// buffer starts with a frame not yet whole, that frame alone, read to its end. Never
/// empty; an error is the last item.
async fn next_batch<R: AsyncRead + Unpin>(read: &mut BufReader<R>, frame_max: u32) -> Vec<Read> {
    let buffered = match read.fill_buf().await {
        Ok([]) => {
            let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
            return vec![Err(ReadError::Closed(eof))];
        }
        Ok(buffered) => buffered,
        Err(e) => return vec![Err(ReadError::Closed(e))],
    };
    let mut batch = Vec::new();
    let mut used = 0;
    while batch.len() < MAX_BATCH_FRAMES {
        match decode(&buffered[used..], frame_max) {
            Ok(Some((frame, len))) => {
                batch.push(Ok(frame));
                used += len;
            }
            Ok(None) => break,
            Err(e) => {
                batch.push(Err(e));
                break;
            }
        }
    }
    read.consume(used);
    if batch.is_empty() {
        // Part of a frame (which may be larger than the buffer): read the rest.
        batch.push(read_frame(read, frame_max).await);
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.push(0xCE);
        out
    }

    fn heartbeat() -> Vec<u8> {
        frame(8, 0, &[])
    }

    #[tokio::test]
    async fn frames_already_read_arrive_as_one_batch_and_a_partial_frame_alone() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut read = BufReader::with_capacity(READ_BUFFER, server);
        // Three whole frames and the first half of a body frame.
        let body = frame(3, 1, &[7u8; 100]);
        let mut bytes = [heartbeat(), frame(3, 2, b"ab"), heartbeat()].concat();
        bytes.extend_from_slice(&body[..50]);
        client.write_all(&bytes).await.unwrap();
        let batch = next_batch(&mut read, 0).await;
        assert_eq!(batch.len(), 3);
        assert!(matches!(&batch[1], Ok(Incoming::Body(2, b)) if &b[..] == b"ab"));
        // The rest of the body frame arrives later: it is read whole, alone.
        let reading = tokio::spawn(async move { (next_batch(&mut read, 0).await, read) });
        client.write_all(&body[50..]).await.unwrap();
        let (batch, mut read) = reading.await.unwrap();
        assert_eq!(batch.len(), 1);
        assert!(matches!(&batch[0], Ok(Incoming::Body(1, b)) if b.len() == 100));
        // A bad frame after a good one ends the batch; what follows it is not read.
        let bad_end = [&frame(8, 0, &[])[..7], &[0]].concat();
        client
            .write_all(&[heartbeat(), bad_end, heartbeat()].concat())
            .await
            .unwrap();
        let batch = next_batch(&mut read, 0).await;
        assert_eq!(batch.len(), 2);
        assert!(matches!(batch[0], Ok(Incoming::Heartbeat)));
        assert!(matches!(&batch[1], Err(ReadError::Invalid(e)) if e.code() == 501));
        // End of stream.
        drop(client);
        let mut read = BufReader::new(&b""[..]);
        let batch = next_batch(&mut read, 0).await;
        assert!(matches!(&batch[..], [Err(ReadError::Closed(_))]));
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_buffer_is_read_whole() {
        let payload = vec![5u8; READ_BUFFER * 2];
        let bytes = [frame(3, 1, &payload), heartbeat()].concat();
        let mut read = BufReader::with_capacity(READ_BUFFER, &bytes[..]);
        let batch = next_batch(&mut read, 0).await;
        assert!(matches!(&batch[..], [Ok(Incoming::Body(1, b))] if b.len() == payload.len()));
        let batch = next_batch(&mut read, 0).await;
        assert!(matches!(&batch[..], [Ok(Incoming::Heartbeat)]));
        // Over the limit: refused from the header, before the payload is read.
        let mut read = BufReader::with_capacity(READ_BUFFER, &bytes[..]);
        let batch = next_batch(&mut read, 4096).await;
        assert!(matches!(&batch[..], [Err(ReadError::Invalid(e))] if e.code() == 501));
    }
}
