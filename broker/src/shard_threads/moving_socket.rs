//! A client's TCP socket that follows its connection's tasks between shard threads.
//!
//! A tokio socket is registered with the reactor of the runtime it was made on, and that
//! runtime's thread is woken for every event on it. When it is used from another shard
//! thread (its connection moved there, `moving_task.rs`), it takes itself out of the old
//! reactor and registers with the new one. Everything above it (TLS, WebSocket, AMQP and
//! STOMP framing and their buffered bytes) is untouched: it is the same object.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An accepted client socket.
#[derive(Debug)]
pub struct Socket {
    /// `None` only when re-registering failed (then every use fails).
    tcp: Option<TcpStream>,
    /// The runtime whose reactor `tcp` is registered with (see `ThreadShard`); 0: one
    /// that is not a shard thread's.
    runtime: u64,
    /// The last tasks that waited on it to read and to write: re-registering drops their
    /// interest in the old reactor, so they are woken to register it again.
    read_waiter: Option<Waker>,
    write_waiter: Option<Waker>,
}

impl Socket {
    /// `tcp`, made on this thread (registered with its runtime's reactor).
    pub fn new(tcp: TcpStream) -> Self {
        Socket {
            tcp: Some(tcp),
            runtime: current_runtime(),
            read_waiter: None,
            write_waiter: None,
        }
    }

    /// The socket, registered with this thread's reactor when this is a shard thread.
    fn here(&mut self) -> io::Result<&mut TcpStream> {
        let runtime = current_runtime();
        if runtime != 0
            && runtime != self.runtime
            && let Some(tcp) = self.tcp.take()
        {
            // Leaves the old reactor; the descriptor stays open and non-blocking.
            self.tcp = Some(TcpStream::from_std(tcp.into_std()?)?);
            self.runtime = runtime;
            for waiter in [self.read_waiter.take(), self.write_waiter.take()] {
                waiter.into_iter().for_each(Waker::wake);
            }
        }
        self.tcp
            .as_mut()
            .ok_or_else(|| io::Error::other("socket lost moving threads"))
    }
}

fn current_runtime() -> u64 {
    super::thread_shard().map_or(0, |t| t.runtime)
}

/// Which of a [`Socket`]'s waiters a poll is for.
#[derive(Clone, Copy)]
enum Waits {
    ToRead,
    ToWrite,
}

impl Socket {
    /// `poll` on the socket, registered here; remembers `cx`'s waker when it must wait.
    fn poll_here<T>(
        &mut self,
        cx: &mut Context<'_>,
        waits: Waits,
        poll: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let polled = match self.here() {
            Ok(tcp) => poll(Pin::new(tcp), cx),
            Err(e) => return Poll::Ready(Err(e)),
        };
        let waiter = match waits {
            Waits::ToRead => &mut self.read_waiter,
            Waits::ToWrite => &mut self.write_waiter,
        };
        if polled.is_pending() && !waiter.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waiter = Some(cx.waker().clone());
        }
        polled
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_here(cx, Waits::ToRead, |tcp, cx| tcp.poll_read(cx, buf))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_here(cx, Waits::ToWrite, |tcp, cx| tcp.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_here(cx, Waits::ToWrite, |tcp, cx| {
            tcp.poll_write_vectored(cx, bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_here(cx, Waits::ToWrite, |tcp, cx| tcp.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_here(cx, Waits::ToWrite, |tcp, cx| tcp.poll_shutdown(cx))
    }
}
