//! TLS connections: accept, handshake, serve HTTP/1.1 or h2 by ALPN, and
//! shut down in phases.
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
//! - h2: a connection with no request activity (HEADERS, CONTINUATION or
//!   DATA frames) closes after `idle_timeout`. PING, SETTINGS and the like
//!   keep a socket busy but are not requests: a client that only pings
//!   would otherwise hold a connection slot for ever.
//! - Writes: a peer that stops reading is cut off after `write_timeout`; and
//!   a response that cannot leave within `write_timeout` (an h2 client that
//!   keeps its flow-control window at zero while it pings) closes the
//!   connection, so no client holds responses in memory as long as it likes.
//! - Headers: at most `max_headers` per request, h2 as HTTP/1.1 (where
//!   hyper refuses more than 100); the header block size is bounded too.
//! - Connection count: beyond `max_connections`, new connections are closed
//!   at once, so idle sockets cannot exhaust memory or descriptors.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use http::header::{CONNECTION, HeaderValue};
use http::{Request, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::Health;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
    /// Request line plus headers (HTTP/1.1); the header block (h2).
    pub max_header_bytes: usize,
    /// Header fields per request (hyper's own HTTP/1.1 limit is 100).
    pub max_headers: usize,
    /// Request body bytes one connection may hold at once (all its h2
    /// streams together), within the process-wide budget.
    pub max_conn_inflight_bytes: usize,
    pub h2_max_concurrent_streams: u32,
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
            // The API server speaks HTTP/1.1 to webhooks; h2 clients are
            // tools, which need few streams at once.
            h2_max_concurrent_streams: 64,
        }
    }
}

/// h2 header blocks: far more than any admission request's few headers,
/// far less than the 64 KiB request head HTTP/1.1 allows (an h2 header
/// list can hold thousands of one-byte HPACK references).
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
/// h2 receive windows. Bodies are read as they arrive, so small windows
/// cost no throughput on a webhook's bodies and bound what a connection can
/// push at the server before it is read.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONN_WINDOW: u32 = 512 * 1024;

/// A connection's share of the in-flight byte budget, one permit a byte;
/// handed to the handler with each request.
#[derive(Debug, Clone)]
pub struct ConnBudget(pub Arc<Semaphore>);

/// Where the server is in its life. Connections watch this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// SIGTERM received: still serving, HTTP/1.1 responses carry
    /// `Connection: close`, h2 connections get GOAWAY.
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
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(GuardedIo {
            inner: tls,
            activity: activity.clone(),
            write_timeout: self.limits.write_timeout,
            write_deadline: None,
            read_idle: h2.then(|| {
                (
                    self.limits.idle_timeout,
                    Box::pin(tokio::time::sleep(self.limits.idle_timeout)),
                )
            }),
            frames: FrameScanner::default(),
            last_read: Instant::now(),
        });
        let app = self.app.clone();
        let health = self.health.clone();
        let responses = Arc::new(Responses::default());
        let tracked = responses.clone();
        let max_headers = self.limits.max_headers;
        let budget = ConnBudget(Arc::new(Semaphore::new(
            self.limits.max_conn_inflight_bytes,
        )));
        let svc = service_fn(move |mut req: Request<Incoming>| {
            let app = app.clone();
            let health = health.clone();
            let tracked = tracked.clone();
            req.extensions_mut().insert(budget.clone());
            async move {
                let version = req.version();
                let mut resp = if req.headers().len() > max_headers {
                    super::http::too_many_headers(max_headers).into_response()
                } else {
                    let Ok(resp) = app.oneshot(req.map(Body::new)).await;
                    resp
                };
                if version <= Version::HTTP_11 {
                    // While draining, tell HTTP/1.1 clients not to reuse
                    // this connection, so the API server's next request goes
                    // to a replica that is staying.
                    if health.draining.load(Ordering::Relaxed) {
                        resp.headers_mut()
                            .insert(CONNECTION, HeaderValue::from_static("close"));
                    }
                } else {
                    // Connection-specific headers are illegal in h2 (RFC 9113
                    // 8.2.2), and an unread body ends only its own stream, so
                    // a handler's "close this connection" does not apply.
                    resp.headers_mut().remove(CONNECTION);
                }
                // Tracked until its last byte is handed to the connection.
                Ok::<_, Infallible>(resp.map(|b| Body::new(Tracked::new(b, tracked))))
            }
        });
        let watchdog = (responses, self.limits.write_timeout);
        if h2 {
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(self.limits.h2_max_concurrent_streams)
                .max_header_list_size(H2_MAX_HEADER_LIST)
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONN_WINDOW);
            drive(
                b.serve_connection(io, svc),
                self.phase.clone(),
                true,
                watchdog,
            )
            .await;
        } else {
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
            drive(
                b.serve_connection(io, svc),
                self.phase.clone(),
                false,
                watchdog,
            )
            .await;
        }
    }
}

/// The responses of one connection that have not yet been handed over
/// whole, by when each was ready.
#[derive(Debug, Default)]
struct Responses {
    pending: Mutex<BTreeMap<u64, Instant>>,
    next: AtomicU64,
    changed: Notify,
}

impl Responses {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Instant>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(&self) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Instant::now());
        self.changed.notify_waiters();
        id
    }

    fn done(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Resolves once some response has waited longer than `limit`.
    async fn stalled(&self, limit: Duration) {
        loop {
            let changed = self.changed.notified();
            let oldest = self.lock().values().min().copied();
            match oldest {
                None => changed.await,
                Some(t) => {
                    let deadline = t + limit;
                    if Instant::now() >= deadline {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                        _ = changed => {}
                    }
                }
            }
        }
    }
}

/// A response body that tells [`Responses`] when it has been handed over
/// whole (hyper drops it then).
struct Tracked {
    inner: Body,
    responses: Arc<Responses>,
    id: u64,
}

impl Tracked {
    fn new(inner: Body, responses: Arc<Responses>) -> Self {
        let id = responses.start();
        Tracked {
            inner,
            responses,
            id,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.responses.done(self.id);
    }
}

impl HttpBody for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads the frame headers of an h2 connection's incoming bytes (after
/// TLS) to tell requests from keep-alive chatter: HEADERS, CONTINUATION and
/// DATA are request activity; PING, SETTINGS, WINDOW_UPDATE and the rest
/// are not.
#[derive(Debug)]
struct FrameScanner {
    /// Bytes of the client connection preface still to pass.
    preface: usize,
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
}

impl Default for FrameScanner {
    fn default() -> Self {
        FrameScanner {
            preface: 24,
            header: [0; 9],
            have: 0,
            skip: 0,
        }
    }
}

impl FrameScanner {
    /// Feeds bytes read; true when a request frame began among them.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        let mut active = false;
        while !data.is_empty() {
            let n = if self.preface > 0 {
                let n = self.preface.min(data.len());
                self.preface -= n;
                n
            } else if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                n
            } else {
                let n = (9 - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                if self.have == 9 {
                    let h = self.header;
                    self.skip =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    // DATA, HEADERS, CONTINUATION.
                    active |= matches!(h[3], 0x0 | 0x1 | 0x9);
                    self.have = 0;
                }
                n
            };
            data = &data[n..];
        }
        active
    }
}

/// Runs a connection to completion, asking it to finish gracefully when the
/// phase says so (h2 already when draining: GOAWAY lets the client move
/// new streams elsewhere while in-flight ones complete), and closing it
/// when a response has waited longer than the write timeout to leave.
async fn drive<C>(
    conn: C,
    mut phase: watch::Receiver<Phase>,
    shutdown_on_drain: bool,
    (responses, write_timeout): (Arc<Responses>, Duration),
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let should_stop =
        |p: Phase| p == Phase::Stopping || (shutdown_on_drain && p == Phase::Draining);
    tokio::pin!(conn);
    let mut stopping = should_stop(*phase.borrow_and_update());
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
                if should_stop(p) {
                    conn.as_mut().graceful_shutdown();
                    stopping = true;
                }
            }
            _ = responses.stalled(write_timeout) => {
                debug!(?write_timeout, "a response waited too long to be sent; closing the connection");
                return;
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
    /// h2 only: close after this long without request activity.
    read_idle: Option<(Duration, Pin<Box<Sleep>>)>,
    frames: FrameScanner,
    last_read: Instant,
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
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.activity.on_read();
                    if self.read_idle.is_some() {
                        let this = &mut *self;
                        if this.frames.feed(&buf.filled()[before..]) {
                            this.last_read = Instant::now();
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let last_read = self.last_read;
                if let Some((idle, sleep)) = self.read_idle.as_mut() {
                    let deadline = tokio::time::Instant::from_std(last_read + *idle);
                    if sleep.deadline() != deadline {
                        sleep.as_mut().reset(deadline);
                    }
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "idle connection",
                        )));
                    }
                }
                Poll::Pending
            }
            err => err,
        }
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

#[cfg(test)]
mod tests {
    use super::FrameScanner;

    fn frame(ty: u8, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, ty, 0, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn pings_and_settings_are_not_requests() {
        let mut s = FrameScanner::default();
        assert!(!s.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!s.feed(&frame(0x4, &[0; 12])), "SETTINGS");
        assert!(!s.feed(&frame(0x6, &[1; 8])), "PING");
        assert!(!s.feed(&frame(0x8, &[0, 0, 0, 1])), "WINDOW_UPDATE");
        assert!(s.feed(&frame(0x1, &[0x82; 5])), "HEADERS");
        assert!(s.feed(&frame(0x0, &[0; 100])), "DATA");
    }

    #[test]
    fn frames_split_anywhere_are_still_read() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for _ in 0..3 {
            bytes.extend(frame(0x6, &[7; 8]));
        }
        bytes.extend(frame(0x1, &[0; 300]));
        let mut s = FrameScanner::default();
        let mut seen = Vec::new();
        for chunk in bytes.chunks(5) {
            seen.push(s.feed(chunk));
        }
        let first = seen.iter().position(|&a| a).expect("HEADERS seen");
        // Only from the chunk holding the HEADERS frame's ninth header byte.
        assert_eq!(first, (24 + 3 * 17 + 9 - 1) / 5);
    }
}
