//! Connections: the accept loop, its connection cap, and the per-connection timeouts.
//!
//! * At most [`ServerOptions::max_connections`] connections are served at once; one more is
//!   answered `503` with a JSON error and closed (a few such answers at a time; past that a
//!   connection is closed unanswered), so `/health` answers or is refused, never hangs.
//! * A connection waiting for a request (its first, or the next on a kept-alive connection) is
//!   closed after [`ServerOptions::idle_timeout`] (hyper's header-read timer, which starts when
//!   the connection begins waiting for a request head).
//! * Once the first byte of a request arrives, its head must be complete within
//!   [`ServerOptions::header_timeout`] ([`TimedIo`]); the body has
//!   [`ServerOptions::body_timeout`] from then on (see `read_body` in the routes).
//! * Accept errors (out of file descriptors, a connection reset before it was accepted) are
//!   waited out, not fatal.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use super::ServerOptions;

/// Refusals (the canned 503) written at once; past this a connection over the cap is just
/// closed.
const MAX_REFUSING: usize = 32;

/// File descriptors kept free of connections for the process itself (model files, the
/// runtime, refusals).
const RESERVED_FDS: u64 = 64 + MAX_REFUSING as u64;

/// The default connection cap: 1024, or fewer when the open-file limit is lower (it minus
/// `RESERVED_FDS`, the descriptors the process keeps for itself; at least 1).
pub fn default_max_connections() -> usize {
    match open_file_limit() {
        Some(n) => n.saturating_sub(RESERVED_FDS).clamp(1, 1024) as usize,
        None => 1024,
    }
}

/// The most connections the open-file limit leaves room for, if it is known.
pub fn connection_limit() -> Option<usize> {
    open_file_limit().map(|n| n.saturating_sub(RESERVED_FDS).max(1) as usize)
}

/// The soft limit on open files (`ulimit -n`), if the platform has one.
#[cfg(unix)]
fn open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through the pointer, which points at a live,
    // properly aligned local.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every Unix
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur as u64)
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<u64> {
    None
}

/// Accept connections and serve `app` on each until `shutdown` completes; then stop
/// accepting, let every connection finish the request it is in (idle ones close at once), and
/// return.
pub async fn accept_loop(
    listener: TcpListener,
    app: Router,
    opts: &ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(opts.idle_timeout);
    let (header_timeout, max_connections) = (opts.header_timeout, opts.max_connections);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE / ENFILE / ECONNABORTED...: nothing to do but wait a moment
                    if !is_transient(&e) {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Ok(permit) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream, max_connections).await;
                    drop(permit);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::new(ConnState::default());
        let io = TokioIo::new(TimedIo::new(stream, state.clone(), header_timeout));
        let service = ConnService {
            app: app.clone(),
            state,
        };
        let conn = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            // a connection that errs (timed out, reset, bad request head) just ends
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | OutOfMemory
    ) || e.raw_os_error().is_some_and(is_fd_exhaustion)
}

#[cfg(unix)]
fn is_fd_exhaustion(code: i32) -> bool {
    code == libc::EMFILE || code == libc::ENFILE || code == libc::ENOBUFS || code == libc::ENOMEM
}

#[cfg(not(unix))]
fn is_fd_exhaustion(_code: i32) -> bool {
    false
}

/// Answer a connection over the cap with a 503 and close it (within a second).
async fn refuse(mut stream: TcpStream, cap: usize) {
    let body = format!(
        r#"{{"error":{{"message":"the server is at its limit of {cap} connections; retry later","type":"server_error","param":null,"code":null}}}}"#
    );
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(msg.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// What a connection's service tells its transport: whether a request is being served, and
/// how many have started (so the transport knows a head it was timing has arrived).
#[derive(Default)]
struct ConnState {
    busy: AtomicBool,
    started: AtomicU64,
}

/// The router for one connection, marking each request's start and end in [`ConnState`].
#[derive(Clone)]
struct ConnService {
    app: Router,
    state: Arc<ConnState>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.state.started.fetch_add(1, Ordering::AcqRel);
        self.state.busy.store(true, Ordering::Release);
        let state = self.state.clone();
        let mut app = self.app.clone();
        Box::pin(async move {
            let resp = tower_service::Service::call(&mut app, req.map(axum::body::Body::new)).await;
            state.busy.store(false, Ordering::Release);
            resp
        })
    }
}

/// A TCP stream that fails its reads once a request head has been arriving for longer than
/// the header timeout: the clock starts at the first byte read while no request is being
/// served and stops when the head is complete (the service is called).
struct TimedIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    timeout: Duration,
    /// The running head deadline, and the request count when it started.
    deadline: Option<(Pin<Box<Sleep>>, u64)>,
}

impl TimedIo {
    fn new(inner: TcpStream, state: Arc<ConnState>, timeout: Duration) -> Self {
        TimedIo {
            inner,
            state,
            timeout,
            deadline: None,
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let started = this.state.started.load(Ordering::Acquire);
        if this.state.busy.load(Ordering::Acquire)
            || this.deadline.as_ref().is_some_and(|(_, n)| *n != started)
        {
            // a request is being served (its body has its own timeout), or the head being
            // timed has arrived since
            this.deadline = None;
        }
        if let Some((sleep, _)) = this.deadline.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not received in time",
                )));
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && this.deadline.is_none()
            && !this.state.busy.load(Ordering::Acquire)
        {
            let mut sleep = Box::pin(tokio::time::sleep(this.timeout));
            // register the timer with this task, so a stalled head wakes it
            let _ = sleep.as_mut().poll(cx);
            this.deadline = Some((sleep, started));
        }
        r
    }
}

impl AsyncWrite for TimedIo {
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
