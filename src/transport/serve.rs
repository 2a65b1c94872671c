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
//! and a request body that trickles is not bounded by this timeout.
//!
//! Shutdown is graceful: no new connection is accepted; each connection ends after the
//! response in flight (HTTP/1.1 keep-alive stops); the loop returns when all have closed.

use std::{future::Future, io, time::Duration};

use axum::{Router, body::Body};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;

/// How long accepting pauses after an error other than a failed handshake (for example, the
/// process ran out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown` completes, then shuts down gracefully (module
/// docs). Every connection gets `TCP_NODELAY` (rmcp writes an answer in small pieces, which
/// Nagle's algorithm would hold ~40 ms each for the client's delayed ACK) and is closed when
/// it sends no complete request head for `idle_timeout`.
///
/// # Errors
/// None today: accept errors are logged and retried; the `io::Result` is the contract of a
/// server loop.
pub async fn serve(listener: TcpListener, app: Router, idle_timeout: Duration, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    // Handlers become routes once, not on every request (as `axum::serve` does).
    let app: Router = app.with_state(());
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(idle_timeout);
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
        let service = service_fn(move |request: hyper::Request<Incoming>| app.clone().oneshot(request.map(Body::new)));
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
