//! The HTTP ingest server's connection handling: our own accept loop over
//! hyper 1's HTTP/1 connection (with hyper-util's tokio I/O, timer and tower
//! adapter), so that every connection has deadlines and shutdown is bounded.
//! `axum::serve` is not used: it has no header-read or idle deadline.
//!
//! Deadlines (`[ingest]`):
//! - `header_timeout_ms`: a request's headers must arrive within it (hyper
//!   closes the connection otherwise; its timer also runs while a keep-alive
//!   connection waits for its next request, so an idle keep-alive connection
//!   lasts at most the shorter of the two deadlines);
//! - `body_timeout_ms`: the whole body must arrive within it (408; enforced
//!   where the body is read, `http.rs`);
//! - `idle_timeout_ms`: a connection without any traffic for that long is
//!   closed, between requests (keep-alive) or within a stalled one.
//!
//! Shutdown: when `stop` turns true the loop stops accepting and asks every
//! connection to finish its request in flight and close. [`serve`] returns
//! once all have closed; the relay bounds that wait by the shutdown grace and
//! then drops what is left. Dropping a connection never takes back an
//! acknowledgement: a 204 is only sent after the append is durable, and an
//! append already handed to the log completes on its blocking thread.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Connection deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

/// A stream that remembers when it last moved a byte.
struct Tracked<S> {
    inner: S,
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl<S> Tracked<S> {
    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `router` on `listener` until `stop` turns true and every
/// connection has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    // HTTP/1 only, as before. hyper 1 needs a timer for the header deadline
    // (without one `serve_connection` panics on a configured header timeout).
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(timeouts.header);
    let http = Arc::new(http);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                conns.spawn(connection(stream, http.clone(), router.clone(), timeouts, stop.clone()));
            }
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn connection(
    stream: tokio::net::TcpStream,
    http: Arc<http1::Builder>,
    router: Router,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) {
    let last_ms = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let io = Tracked {
        inner: stream,
        epoch,
        last_ms: last_ms.clone(),
    };
    let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(conn);
    let idle_ms = timeouts.idle.as_millis() as u64;
    let tick = (timeouts.idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            _ = &mut conn => return,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(tick) => {
                let idle_for = (epoch.elapsed().as_millis() as u64)
                    .saturating_sub(last_ms.load(Ordering::Relaxed));
                if idle_for >= idle_ms {
                    tracing::debug!(idle_ms = idle_for, "closing an idle connection");
                    return;
                }
            }
        }
    }
}
