//! TLS connections: accept, handshake, serve HTTP/1.1, and shut down in
//! phases.
//!
//! HTTP/1.1 only, as the API server speaks it to webhooks: its webhook
//! client sets ALPN to `http/1.1` on purpose so load spreads over replicas
//! (kubernetes/kubernetes#75791, `apiserver/pkg/util/webhook/client.go`).
//! TLS offers no other protocol, so there is no h2 stream, window or PING
//! handling to defend here.
//!
//! Timeouts that protect the server without hurting the API server:
//! - TLS handshake: bounded, so a half-open or plain-HTTP client is dropped.
//! - HTTP/1.1: the API server keeps idle keep-alive connections for 90 s
//!   (Go's default), and a server-side close racing its next POST fails that
//!   admission call. So an idle connection is kept for `idle_timeout`
//!   (longer than 90 s), while a request, once its first byte arrives, must
//!   deliver its headers within `header_read_timeout`. hyper has a single
//!   header-read timer that starts as soon as the connection is idle; the
//!   [`HeaderTimer`] below gives it both meanings.
//! - Writes: a peer that stops reading is cut off after `write_timeout`, so
//!   no client holds a response in memory as long as it likes.
//! - Headers: at most `max_headers` fields per request, and the request
//!   head (line plus headers) at most `max_header_bytes`.
//! - Connection count: beyond `max_connections`, new connections are closed
//!   at once, so idle sockets cannot exhaust memory or descriptors.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use http::Request;
use http::header::{CONNECTION, HeaderValue};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::Health;
use super::budget::ConnBudget;
use crate::telemetry::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
    /// Request line plus headers.
    pub max_header_bytes: usize,
    /// Header fields per request (hyper's own limit is 100).
    pub max_headers: usize,
    /// Request body bytes one connection may hold at once, within the
    /// process-wide budget.
    pub max_conn_inflight_bytes: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_conn_inflight_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Where the server is in its life. Connections watch this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// SIGTERM received: still serving, responses carry `Connection:
    /// close` so the API server moves to a replica that stays.
    Draining,
    /// No new connections; open ones finish their request and close.
    Stopping,
}

/// Accepts until the phase is `Stopping`. Returns the tracker of open
/// connections, already closed to new ones, for the caller to wait on.
pub async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    limits: ConnLimits,
    mut phase: watch::Receiver<Phase>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopping(&mut phase) => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connections_rejected.inc();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn = Connection {
            acceptor: acceptor.clone(),
            app: app.clone(),
            limits: limits.clone(),
            phase: phase.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
        };
        tracker.spawn(async move {
            conn.run(tcp).await;
            drop(permit);
        });
    }
    tracker.close();
    tracker
}

/// Resolves when the phase reaches `Stopping` (or the sender is gone),
/// without holding the watch guard across an await.
async fn stopping(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p == Phase::Stopping).await;
}

struct Connection {
    acceptor: TlsAcceptor,
    app: Router,
    limits: ConnLimits,
    phase: watch::Receiver<Phase>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl Connection {
    async fn run(self, tcp: TcpStream) {
        self.metrics.connections_open.inc();
        let _open = OnDrop(|| {
            self.metrics.connections_open.dec();
        });
        let tls = match tokio::time::timeout(
            self.limits.tls_handshake_timeout,
            self.acceptor.accept(tcp),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.metrics.tls_handshake_failures.inc();
                debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                self.metrics.tls_handshake_failures.inc();
                debug!("TLS handshake timed out");
                return;
            }
        };
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(GuardedIo {
            inner: tls,
            activity: activity.clone(),
            write_timeout: self.limits.write_timeout,
            write_deadline: None,
        });
        let app = self.app.clone();
        let health = self.health.clone();
        let max_headers = self.limits.max_headers;
        let budget = ConnBudget(Arc::new(Semaphore::new(
            self.limits.max_conn_inflight_bytes,
        )));
        let svc = service_fn(move |mut req: Request<Incoming>| {
            let app = app.clone();
            let health = health.clone();
            req.extensions_mut().insert(budget.clone());
            async move {
                let mut resp = if req.headers().len() > max_headers {
                    super::http::too_many_headers(max_headers).into_response()
                } else {
                    let Ok(resp) = app.oneshot(req.map(Body::new)).await;
                    resp
                };
                // While draining, tell the client not to reuse this
                // connection, so the API server's next request goes to a
                // replica that is staying.
                if health.draining.load(Ordering::Relaxed) {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(resp)
            }
        });
        let mut b = http1::Builder::new();
        b.timer(HeaderTimer {
            activity,
            header_timeout: self.limits.header_read_timeout,
        })
        // hyper's header timer doubles as the idle timer; HeaderTimer
        // shortens it to header_read_timeout once a request starts.
        .header_read_timeout(self.limits.idle_timeout)
        .keep_alive(true)
        // Request line plus headers beyond the limit: 431, then close.
        .max_header_size(self.limits.max_header_bytes)
        .max_buf_size(self.limits.max_header_bytes.max(8192) + 16 * 1024);
        drive(b.serve_connection(io, svc), self.phase.clone()).await;
    }
}

/// Runs a connection to completion, asking it to finish its request and
/// close once the server is stopping.
async fn drive<I, S>(conn: http1::Connection<I, S>, mut phase: watch::Receiver<Phase>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    let mut stopping = *phase.borrow_and_update() == Phase::Stopping;
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = phase.changed(), if !stopping => {
                let p = if changed.is_ok() { *phase.borrow_and_update() } else { Phase::Stopping };
                if p == Phase::Stopping {
                    conn.as_mut().graceful_shutdown();
                    stopping = true;
                }
            }
        }
    }
}

/// When the current request's first byte arrived, shared between the I/O
/// wrapper (which sees bytes) and the header timer (which hyper starts when
/// it begins waiting for a request).
#[derive(Debug)]
struct Activity {
    state: Mutex<ActivityState>,
}

#[derive(Debug)]
struct ActivityState {
    first_read: Option<Instant>,
    /// The first wait on a new connection: a client that connected should
    /// send its request promptly, so the header deadline counts from the
    /// accept rather than waiting the whole idle timeout.
    fresh: bool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            state: Mutex::new(ActivityState {
                first_read: Some(Instant::now()),
                fresh: true,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        // Nothing can panic while holding this lock; recover regardless.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin_wait(&self) {
        let mut s = self.lock();
        if s.fresh {
            s.fresh = false;
        } else {
            s.first_read = None;
        }
    }

    fn on_read(&self) {
        let mut s = self.lock();
        if s.first_read.is_none() {
            s.first_read = Some(Instant::now());
        }
    }

    fn first_read(&self) -> Option<Instant> {
        self.lock().first_read
    }
}

/// hyper's HTTP/1.1 timer. hyper calls `sleep_until(now + idle_timeout)`
/// when it starts waiting for a request head; the sleep it gets back fires
/// at that idle deadline, or `header_timeout` after the request's first
/// byte, whichever is sooner. (A request whose first bytes were read ahead
/// with the previous one gets only the idle bound.)
#[derive(Clone)]
struct HeaderTimer {
    activity: Arc<Activity>,
    header_timeout: Duration,
}

impl hyper::rt::Timer for HeaderTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(PlainSleep(Box::pin(tokio::time::sleep(duration))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.activity.begin_wait();
        Box::pin(HeaderSleep {
            idle_deadline: deadline,
            header_timeout: self.header_timeout,
            activity: self.activity.clone(),
            inner: Box::pin(tokio::time::sleep_until(deadline.into())),
        })
    }
}

struct PlainSleep(Pin<Box<Sleep>>);

impl Future for PlainSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for PlainSleep {}

struct HeaderSleep {
    idle_deadline: Instant,
    header_timeout: Duration,
    activity: Arc<Activity>,
    inner: Pin<Box<Sleep>>,
}

impl Future for HeaderSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = match self.activity.first_read() {
            Some(t) => self.idle_deadline.min(t + self.header_timeout),
            None => self.idle_deadline,
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.inner.deadline() != deadline {
            self.inner.as_mut().reset(deadline);
        }
        self.inner.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeaderSleep {}

/// The TLS stream, with read activity recorded and stalled writes cut off.
struct GuardedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    write_timeout: Duration,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> GuardedIo<T> {
    /// Called when a write could not make progress: arms (once) and polls
    /// the write deadline.
    fn write_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.write_timeout;
        let sleep = self
            .write_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer stopped reading",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn wrote<R>(&mut self, r: Poll<io::Result<R>>, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match r {
            Poll::Pending => match self.write_stalled(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                self.write_deadline = None;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.wrote(r, cx)
    }
}

struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
