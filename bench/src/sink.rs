//! A local OTLP/HTTP sink for set-up (e): accepts `POST /v1/traces` (and any other path),
//! answers `200` with an empty body (a valid empty `Export*ServiceResponse` in protobuf) or `{}`
//! for JSON, and counts what it received so the report can show that spans were exported.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Requests and body bytes received so far.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

/// A running sink, on a thread of its own (so that its CPU is not the load generator's).
pub(crate) struct Sink {
    pub(crate) addr: SocketAddr,
    pub(crate) counters: Arc<Counters>,
    /// The sink thread's id, for its CPU time ([`crate::procs::thread_cpu_ticks`]).
    pub(crate) tid: u32,
    /// Dropped, it stops the sink.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Binds a loopback port and serves, on a new thread with its own runtime, until dropped.
pub(crate) fn start() -> anyhow::Result<Sink> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let counters = Arc::new(Counters::default());
    let shared = counters.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (tid_sender, tid) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("otlp-sink".into()).spawn(move || {
        let _ = tid_sender.send(crate::procs::current_thread_id());
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
            Ok(runtime) => runtime,
            Err(error) => return eprintln!("OTLP sink: no runtime: {error}"),
        };
        runtime.block_on(async move {
            let Ok(listener) = TcpListener::from_std(listener) else { return };
            tokio::select! {
                _ = stopped => {}
                () = serve(listener, shared) => {}
            }
        });
    })?;
    let tid = tid.recv()?.ok_or_else(|| anyhow::anyhow!("OTLP sink: thread id unknown (no /proc/thread-self)"))?;
    Ok(Sink { addr, counters, tid, _stop: stop })
}

async fn serve(listener: TcpListener, counters: Arc<Counters>) {
    while let Ok((stream, _)) = listener.accept().await {
        let counters = counters.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let counters = counters.clone();
            async move {
                let json = request.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
                let body = request.into_body().collect().await?.to_bytes();
                counters.requests.fetch_add(1, Ordering::Relaxed);
                counters.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                let (content_type, body) = if json { ("application/json", Bytes::from_static(b"{}")) } else { ("application/x-protobuf", Bytes::new()) };
                Ok::<_, anyhow::Error>(Response::builder().header(header::CONTENT_TYPE, content_type).body(Full::new(body))?)
            }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
