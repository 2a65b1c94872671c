//! The HTTP/1.1 server loop: accepts client connections and serves the gateway's [`Router`]
//! on each, with hyper's connection builder configured for a gateway rather than left at
//! `axum::serve`'s defaults.
//!
//! What `axum::serve` leaves out, and this adds: a connection that sends no complete request
//! head for [`serve`]'s `idle_timeout` is closed. That is an idle keep-alive connection (a
//! client gone quiet holds a socket, a task and its buffers: bench/RESULTS.md, "Notes on the
//! tenth session") and one that trickles its headers (slowloris). Without it, idle or slow
//! clients could hold connections until the gateway runs out of file descriptors or memory.
//!
//! It is hyper's header read timeout, which runs only while the connection waits for a
//! request head: between requests, and while a head arrives. A request body being read, a
//! handler running (a long tool call) and a response being produced (an SSE stream) are not
//! timed. Two edges: hyper counts a response as done once its last bytes are buffered, so a
//! client that takes longer than the timeout to read the end of a large answer can lose it;
//! and a request body is not bounded by this timeout, but by the next one.
//!
//! Each request body must also arrive whole within `body_timeout` of its head ([`BodyTimeout`]):
//! a body that trickles (a slow POST to `/mcp` or to the token endpoint) fails when it
//! passes, and the handler reading it answers 408 (`/mcp`) or 400. The time counts from the
//! head, so it includes the token check before the body is read; at the defaults (4 MiB, 60 s)
//! a client must send about 70 KB/s. The timer is only armed when a read has to wait: a small
//! body that came with its head costs none.
//!
//! Shutdown is graceful: no new connection is accepted; each connection ends after the
//! response in flight (HTTP/1.1 keep-alive stops); the loop returns when all have closed.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body};
use bytes::Bytes;
use hyper::{
    body::{Frame, Incoming, SizeHint},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;

/// How long accepting pauses after an error other than a failed handshake (for example, the
/// process ran out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Client-side time limits of [`serve`] (module docs).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A connection that sends no complete request head for this long is closed.
    pub idle: Duration,
    /// A request body must arrive whole within this long of its head.
    pub body: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then shuts down gracefully (module
/// docs). Every connection gets `TCP_NODELAY` (rmcp writes an answer in small pieces, which
/// Nagle's algorithm would hold ~40 ms each for the client's delayed ACK), is closed when it
/// sends no complete request head for `timeouts.idle`, and has each request body bounded by
/// `timeouts.body`.
///
/// # Errors
/// None today: accept errors are logged and retried; the `io::Result` is the contract of a
/// server loop.
pub async fn serve(listener: TcpListener, app: Router, timeouts: Timeouts, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    // Handlers become routes once, not on every request (as `axum::serve` does).
    let app: Router = app.with_state(());
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(timeouts.idle);
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) if is_handshake_error(&error) => continue,
            Err(error) => {
                tracing::error!(%error, "accepting a client connection failed; pausing");
                // Out of file descriptors is when this pause happens: shutdown must not wait.
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY on a client connection");
        }
        let app = app.clone();
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            app.clone().oneshot(request.map(|body| Body::new(DeadlineBody::new(body, timeouts.body))))
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let closing = closing.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = closing.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            // A client that closes or times out is routine: debug, never an error.
            if let Err(error) = served {
                tracing::debug!(%error, "client connection ended");
            }
        });
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Errors of one connection's handshake, after which accepting goes on at once (as
/// `axum::serve` does).
fn is_handshake_error(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

/// The error of a request body that did not arrive whole within the body timeout ([`serve`]).
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub struct BodyTimeout(pub Duration);

impl BodyTimeout {
    /// Whether `error`, or an error it wraps, is a [`BodyTimeout`] (body readers wrap their
    /// body's errors).
    pub fn is_cause_of(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(error) = next {
            if error.is::<Self>() {
                return true;
            }
            next = error.source();
        }
        false
    }
}

/// A request body that fails with [`BodyTimeout`] once `timeout` has passed since the request
/// arrived and the body has not ended. The timer is armed on the first read that has to wait.
struct DeadlineBody {
    inner: Incoming,
    deadline: tokio::time::Instant,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The deadline passed: every later read fails too, and no data follows the error.
    expired: bool,
}

// === impl DeadlineBody ===

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self { inner, deadline: tokio::time::Instant::now() + timeout, timeout, sleep: None, expired: false }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(this.deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.expired = true;
                Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
