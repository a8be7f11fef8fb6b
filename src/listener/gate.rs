//! What one connection may hold: admission against a cap per listener and
//! per peer address (a refused connection is closed at once, before any
//! byte is read), and a deadline for its first bytes (a peer that connects
//! and says nothing, or stops inside the HTTP/2 preface, is dropped).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Connections one listener admits: at most `max_total` at once, and at
/// most `max_per_peer` from one IP address.
#[derive(Clone, Debug)]
pub struct ConnectionGate {
    total: Arc<Semaphore>,
    per_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_peer: usize,
}

/// An admitted connection's place; released when dropped.
#[derive(Debug)]
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
    peer: IpAddr,
    per_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.per_peer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

impl ConnectionGate {
    pub fn new(max_total: usize, max_per_peer: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max_total)),
            per_peer: Arc::new(Mutex::new(HashMap::new())),
            max_per_peer,
        }
    }

    /// A place for a connection from `peer`, or `None` when the listener
    /// or that peer is at its cap.
    pub fn admit(&self, peer: IpAddr) -> Option<Admitted> {
        let slot = self.total.clone().try_acquire_owned().ok()?;
        let mut counts = self.per_peer.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(peer).or_insert(0);
        if *n >= self.max_per_peer {
            return None;
        }
        *n += 1;
        Some(Admitted {
            _slot: slot,
            peer,
            per_peer: self.per_peer.clone(),
        })
    }
}

/// A connection holding its admission, that must deliver its first
/// `first_bytes` bytes before `deadline` or fail with `TimedOut`.
pub struct Guarded<T> {
    inner: T,
    _admitted: Admitted,
    first_bytes: usize,
    read: usize,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> Guarded<T> {
    pub fn new(inner: T, admitted: Admitted, first_bytes: usize, deadline: Duration) -> Self {
        Self {
            inner,
            _admitted: admitted,
            first_bytes,
            read: 0,
            deadline: Some(Box::pin(tokio::time::sleep(deadline))),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            self.read += buf.filled().len() - before;
        }
        if self.read >= self.first_bytes {
            self.deadline = None;
        } else if polled.is_pending()
            && let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within the first-bytes deadline",
            )));
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Guarded<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_and_a_listener_are_capped_and_places_come_back() {
        let gate = ConnectionGate::new(3, 2);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = gate.admit(a).expect("first");
        let second = gate.admit(a).expect("second");
        assert!(gate.admit(a).is_none(), "per-peer cap");
        let third = gate.admit(b).expect("another peer");
        assert!(gate.admit(b).is_none(), "listener cap");
        drop(first);
        assert!(gate.admit(b).is_some(), "a place came back");
        drop((second, third));
    }
}
