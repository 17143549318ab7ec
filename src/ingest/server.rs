//! The HTTP ingest server's connection handling: our own accept loop over
//! hyper 1's HTTP/1 connection (and HTTP/2 over TLS) (with hyper-util's tokio I/O, timer and tower
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
//! TLS (`[ingest.tls]`, `tls.rs`): the first byte must open a TLS handshake
//! (plain HTTP gets a fixed 400 naming https and is closed unread); the
//! handshake must finish within `header_timeout_ms`, counted from accept,
//! or the connection is closed; ALPN then picks HTTP/2 or HTTP/1.1. The
//! deadlines above, the memory budget and every limit apply unchanged over
//! both (HTTP/2 has no per-request header deadline in hyper: its streams'
//! headers come in frames of a connection already established, bounded by
//! the idle deadline and hyper's header-list limit).
//!
//! Shutdown: when `stop` turns true the loop stops accepting and asks every
//! connection to finish its request in flight and close. [`serve`] returns
//! once all have closed; the relay bounds that wait by the shutdown grace and
//! then drops what is left. Dropping a connection never takes back an
//! acknowledgement: a 204 is only sent after the append is durable, and an
//! append already handed to the log completes on its blocking thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::tls::Acceptor;

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
/// connection has closed: HTTPS (HTTP/2 or HTTP/1.1 by ALPN) when `tls` is
/// given, plain HTTP/1.1 otherwise.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    tls: Option<Arc<Acceptor>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    // hyper 1 needs a timer for the header deadline (without one
    // `serve_connection` panics on a configured header timeout).
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(timeouts.header);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new());
    let builders = Arc::new((http, h2));
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
                conns.spawn(connection(stream, builders.clone(), tls.clone(), router.clone(), timeouts, stop.clone()));
            }
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// What a client that speaks plain HTTP to a TLS listener reads.
const PLAIN_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 61\r\nConnection: close\r\n\r\nthis walrelay listener speaks TLS only: use an https:// URL\r\n";

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

async fn connection(
    stream: tokio::net::TcpStream,
    builders: Arc<(http1::Builder, http2::Builder<TokioExecutor>)>,
    tls: Option<Arc<Acceptor>>,
    router: Router,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) {
    let last_ms = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let service = TowerToHyperService::new(router);
    let Some(tls) = tls else {
        let io = Tracked {
            inner: stream,
            epoch,
            last_ms: last_ms.clone(),
        };
        let conn = builders.0.serve_connection(TokioIo::new(io), service);
        drive(
            conn,
            http1::Connection::graceful_shutdown,
            &last_ms,
            epoch,
            timeouts,
            stop,
        )
        .await;
        return;
    };
    // The handshake counts against the header deadline: a client that stalls
    // before or inside it holds the connection no longer than that.
    let handshake = async {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1) if first[0] == TLS_HANDSHAKE => {}
            Ok(1) => {
                let mut stream = stream;
                let _ = stream.write_all(PLAIN_ON_TLS).await;
                let _ = stream.shutdown().await;
                tracing::debug!("plain HTTP on the TLS listener refused");
                return None;
            }
            _ => return None,
        }
        let io = Tracked {
            inner: stream,
            epoch,
            last_ms: last_ms.clone(),
        };
        match tokio_rustls::TlsAcceptor::from(tls.current())
            .accept(io)
            .await
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
        }
    };
    let stream = tokio::select! {
        r = tokio::time::timeout(timeouts.header, handshake) => match r {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!(timeout_ms = timeouts.header.as_millis() as u64, "TLS handshake not finished within the header deadline; closing");
                return;
            }
        },
        _ = stop.changed() => return,
    };
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        let conn = builders.1.serve_connection(TokioIo::new(stream), service);
        drive(
            conn,
            http2::Connection::graceful_shutdown,
            &last_ms,
            epoch,
            timeouts,
            stop,
        )
        .await;
    } else {
        let conn = builders.0.serve_connection(TokioIo::new(stream), service);
        drive(
            conn,
            http1::Connection::graceful_shutdown,
            &last_ms,
            epoch,
            timeouts,
            stop,
        )
        .await;
    }
}

/// Runs one HTTP connection to its end: asks it to finish and close when
/// `stop` turns true, drops it after `idle` without a byte moved.
async fn drive<C: Future>(
    conn: C,
    graceful: fn(Pin<&mut C>),
    last_ms: &AtomicU64,
    epoch: Instant,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) {
    tokio::pin!(conn);
    let idle_ms = timeouts.idle.as_millis() as u64;
    let tick = (timeouts.idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut stopping = *stop.borrow();
    if stopping {
        graceful(conn.as_mut());
    }
    loop {
        tokio::select! {
            _ = &mut conn => return,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                graceful(conn.as_mut());
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
