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

/// A running sink.
pub(crate) struct Sink {
    pub(crate) addr: SocketAddr,
    pub(crate) counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds a loopback port and serves until dropped.
pub(crate) async fn start() -> anyhow::Result<Sink> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counters = Arc::new(Counters::default());
    let shared = counters.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counters = shared.clone();
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
    });
    Ok(Sink { addr, counters, task })
}
