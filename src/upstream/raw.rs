//! The upstream leg of the direct call path: one MCP session with an upstream spoken as
//! raw JSON-RPC over streamable HTTP (MCP 2025-11-25 basic/transports), without rmcp's
//! client service in between.
//!
//! `tools/call` is the hot path of a gateway. Relaying it through rmcp's client session
//! means a task, several channels and a full parse into rmcp's model per call; here the
//! router builds the JSON-RPC message itself, [`RawSession::post`] sends it with the
//! upstream's credential and the caller's identity assertion (the same
//! [`GatewayHttpClient`] decoration as every other upstream request: nothing from the
//! client's request is copied), and the reply comes back as bytes — one JSON body, or the
//! `data` of each server-sent event — for the router to inspect, sanitize and relay.
//!
//! A session is opened by the MCP `initialize` handshake with the client's sampling,
//! elicitation and roots capabilities mirrored (so the upstream asks only for what the
//! client can answer), and ended with HTTP DELETE. An upstream that forgot the session
//! (HTTP 404) is reported as [`PostError::SessionExpired`] so the caller can reopen it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::{StreamExt as _, stream::BoxStream};
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use rmcp::model::ClientConfig;
use serde::Deserialize;
use serde_json::{Value, json};
use sse_stream::Sse;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    Error, Upstream,
    credentials::{CallContext, GatewayHttpClient, SessionIdentity},
};

/// Cap on one upstream reply, in bytes: the JSON body, or everything one SSE response
/// stream carries. A reply that grows past it fails the request (-32050) instead of
/// exhausting memory.
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// Protocol revision the gateway asks upstreams for (the newest one with sessions).
const PROTOCOL_VERSION: &str = "2025-11-25";

/// Reconnections of one SSE stream in a row without a new event id before it is given up.
const MAX_RESUMES: u32 = 3;
/// Bounds on the wait before a reconnection, whatever the upstream's `retry:` hint says.
const RESUME_WAIT: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// Wait before a reconnection when the upstream sent no `retry:` hint.
const RESUME_WAIT_DEFAULT: Duration = Duration::from_secs(1);

const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
const SESSION_HEADER: HeaderName = HeaderName::from_static("mcp-session-id");
const VERSION_HEADER: HeaderName = HeaderName::from_static("mcp-protocol-version");
const ACCEPT_BOTH: HeaderValue = HeaderValue::from_static("application/json, text/event-stream");

/// One MCP session with an upstream, for the direct call path.
pub struct RawSession {
    upstream: Arc<str>,
    url: reqwest::Url,
    client: GatewayHttpClient,
    session_id: Option<HeaderValue>,
    protocol_version: HeaderValue,
    next_id: AtomicU64,
    request_timeout: Duration,
    /// Stops this session's background work (the standalone stream reader) when the
    /// session is closed or dropped.
    stop: CancellationToken,
    _stop: DropGuard,
}

/// What an upstream answered to a POST.
pub enum Reply {
    /// `application/json`: exactly one JSON-RPC message.
    Json(Bytes),
    /// `text/event-stream`: the `data` of each non-empty event, in order (priming events
    /// and comments are skipped).
    Events(BoxStream<'static, Result<Bytes, PostError>>),
    /// `202 Accepted`: nothing to read (the answer to a notification or a response).
    Accepted,
}

/// Why a POST to an upstream failed. Messages never carry credentials.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The upstream does not know the session any more (HTTP 404): reopen it.
    #[error("upstream session expired")]
    SessionExpired,
    /// The request could not be sent, the upstream refused it, or the reply was malformed
    /// or too large.
    #[error("{0}")]
    Failed(String),
}

#[derive(Deserialize)]
struct Probe {
    result: Option<InitializeResult>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct InitializeResult {
    #[serde(rename = "protocolVersion")]
    protocol_version: String,
}

// === impl Upstream ===

impl Upstream {
    /// Opens a [`RawSession`] for a client session: `initialize` (capabilities mirrored from
    /// `client`), then `notifications/initialized`, bounded by `connect_timeout`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the upstream cannot be reached or refuses the handshake,
    /// [`Error::Timeout`] when it does not finish in time.
    pub async fn open_raw(&self, client: Option<&ClientConfig>, identity: SessionIdentity) -> Result<RawSession, Error> {
        let http = GatewayHttpClient::new(self.http.clone(), self.credentials.clone(), self.signer.clone(), &self.settings, Some(identity));
        let stop = CancellationToken::new();
        let mut session = RawSession {
            upstream: self.name.clone(),
            url: self.settings.url.clone(),
            client: http,
            session_id: None,
            protocol_version: HeaderValue::from_static(PROTOCOL_VERSION),
            next_id: AtomicU64::new(1),
            request_timeout: self.settings.request_timeout,
            _stop: stop.clone().drop_guard(),
            stop,
        };
        let config = super::client_config(client);
        let handshake = session.initialize(&config);
        tokio::time::timeout(self.settings.connect_timeout, handshake)
            .await
            .map_err(|_| Error::Timeout { upstream: self.name.clone(), timeout: self.settings.connect_timeout })?
            .map_err(|error| Error::Unavailable { upstream: self.name.clone(), reason: error.to_string() })?;
        Ok(session)
    }
}

// === impl RawSession ===

impl RawSession {
    /// The upstream's name.
    pub fn upstream(&self) -> &Arc<str> {
        &self.upstream
    }

    /// The upstream's `request_timeout`.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Cancelled when the session is closed or dropped.
    pub fn stopped(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Opens the session's standalone SSE stream (HTTP GET; MCP basic/transports "Listening
    /// for Messages from the Server"): the `data` of each event the upstream sends outside
    /// any request. `None` when the upstream offers no such stream (HTTP 405). If the upstream
    /// closes the stream after an event with an id, it is resumed (see [`RawSession::post`]).
    ///
    /// # Errors
    /// [`PostError`] as for [`RawSession::post`].
    pub async fn listen(self: &Arc<Self>) -> Result<Option<BoxStream<'static, Result<Bytes, PostError>>>, PostError> {
        let response = self.get(None, None).await?;
        match response.status() {
            StatusCode::METHOD_NOT_ALLOWED => Ok(None),
            _ => match reply(response, Some((self, None))).await? {
                Reply::Events(events) => Ok(Some(events)),
                Reply::Json(_) | Reply::Accepted => Ok(None),
            },
        }
    }

    /// A fresh JSON-RPC request id in this session's id space.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn initialize(&mut self, config: &ClientConfig) -> Result<(), PostError> {
        let mut params = serde_json::to_value(config).map_err(|e| PostError::Failed(e.to_string()))?;
        params["protocolVersion"] = json!(PROTOCOL_VERSION);
        let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params});
        let response = self.send(Bytes::from(body.to_string()), None, &[]).await?;
        if let Some(id) = response.headers().get(SESSION_HEADER) {
            self.session_id = Some(id.clone());
        }
        let message = match reply(response, None).await? {
            Reply::Json(bytes) => bytes,
            Reply::Events(mut events) => loop {
                match events.next().await {
                    Some(Ok(data)) if is_response(&data) => break data,
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => return Err(error),
                    None => return Err(PostError::Failed("initialize: stream ended without a result".into())),
                }
            },
            Reply::Accepted => return Err(PostError::Failed("initialize: no result".into())),
        };
        let probe: Probe = serde_json::from_slice(&message).map_err(|e| PostError::Failed(format!("initialize: {e}")))?;
        if let Some(error) = probe.error {
            return Err(PostError::Failed(format!("initialize refused: {}", error.get("message").and_then(Value::as_str).unwrap_or("error"))));
        }
        let version = probe.result.ok_or_else(|| PostError::Failed("initialize: no result".into()))?.protocol_version;
        self.protocol_version = HeaderValue::from_str(&version).map_err(|_| PostError::Failed("initialize: bad protocolVersion".into()))?;
        let initialized = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        match reply(self.send(initialized, None, &[]).await?, None).await? {
            Reply::Accepted | Reply::Json(_) | Reply::Events(_) => Ok(()),
        }
    }

    /// Sends one JSON-RPC message (`body`, already serialized) in this session. `call`
    /// narrows the identity assertion to the call's scopes and target; `extra` adds
    /// per-request headers (W3C `traceparent`/`tracestate`).
    ///
    /// An SSE reply is resumable (MCP 2025-11-25 basic/transports "Resumability and
    /// Redelivery"): when the upstream closes it before it is read to the end the caller
    /// wants (a server may close a call's stream and let the client poll), and an event
    /// carried an id, the stream is reopened with HTTP GET and `Last-Event-ID` after the
    /// upstream's `retry:` hint (clamped to 0.1–5 s), at most three times in a row
    /// without progress, and the events go on as one stream.
    ///
    /// # Errors
    /// [`PostError::SessionExpired`] on HTTP 404; [`PostError::Failed`] when the request
    /// cannot be sent, a credential cannot be obtained, or the upstream answers with an
    /// error status or an unexpected content type.
    pub async fn post(self: &Arc<Self>, body: Bytes, call: Option<&CallContext>, extra: &[(HeaderName, HeaderValue)]) -> Result<Reply, PostError> {
        reply(self.send(body, call, extra).await?, Some((self, call))).await
    }

    /// Reopens an SSE stream after the event `last_event_id` (HTTP GET with `Last-Event-ID`).
    async fn resume(&self, last_event_id: &str, call: Option<&CallContext>) -> Result<BoxStream<'static, Result<Sse, PostError>>, PostError> {
        let id = HeaderValue::from_str(last_event_id).map_err(|_| PostError::Failed("unusable event id".into()))?;
        let response = self.get(call, Some(id)).await?;
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !status.is_success() || !content_type.to_ascii_lowercase().starts_with("text/event-stream") {
            return Err(PostError::Failed(format!("stream could not be resumed: HTTP {status}")));
        }
        Ok(sse(response))
    }

    /// An SSE GET in this session (the standalone stream, or a stream resumed after
    /// `last_event_id`), with the identity assertion narrowed to `call` when given.
    ///
    /// # Errors
    /// [`PostError::SessionExpired`] on HTTP 404; [`PostError::Failed`] when the request
    /// cannot be sent or a credential cannot be obtained.
    async fn get(&self, call: Option<&CallContext>, last_event_id: Option<HeaderValue>) -> Result<reqwest::Response, PostError> {
        let mut request = self.request(Method::GET, call, &[]).await?.header(header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header(LAST_EVENT_ID, id);
        }
        let response = request.send().await.map_err(|e| PostError::Failed(describe(&e)))?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(PostError::SessionExpired);
        }
        Ok(response)
    }

    async fn send(&self, body: Bytes, call: Option<&CallContext>, extra: &[(HeaderName, HeaderValue)]) -> Result<reqwest::Response, PostError> {
        let request = self
            .request(Method::POST, call, extra)
            .await?
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, ACCEPT_BOTH);
        let response = request.body(body).send().await.map_err(|e| PostError::Failed(describe(&e)))?;
        if response.status() == StatusCode::NOT_FOUND && self.session_id.is_some() {
            return Err(PostError::SessionExpired);
        }
        Ok(response)
    }

    /// Ends the session at the upstream (HTTP DELETE; errors are ignored: the upstream
    /// expires it anyway).
    pub async fn close(&self) {
        self.stop.cancel();
        if self.session_id.is_none() {
            return;
        }
        if let Ok(request) = self.request(Method::DELETE, None, &[]).await {
            let _ = request.timeout(Duration::from_secs(5)).send().await;
        }
    }

    /// A request to the upstream's MCP endpoint in this session: the protocol version and
    /// session id headers, the upstream credential and identity assertion (narrowed to `call`
    /// when given), then `extra`.
    ///
    /// # Errors
    /// [`PostError::Failed`] when the credential cannot be obtained.
    async fn request(&self, method: Method, call: Option<&CallContext>, extra: &[(HeaderName, HeaderValue)]) -> Result<reqwest::RequestBuilder, PostError> {
        let mut headers = HashMap::new();
        self.client.decorate(&mut headers, call).await.map_err(|_| PostError::Failed("upstream credential unavailable".into()))?;
        let mut request = self.client.http().request(method, self.url.clone()).header(VERSION_HEADER, self.protocol_version.clone());
        if let Some(id) = &self.session_id {
            request = request.header(SESSION_HEADER, id.clone());
        }
        for (name, value) in headers.into_iter().chain(extra.iter().cloned()) {
            request = request.header(name, value);
        }
        Ok(request)
    }
}

/// Whether `data` is a JSON-RPC response (has `result` or `error`, no `method`).
fn is_response(data: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Shape<'a> {
        #[serde(borrow)]
        method: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow)]
        result: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow)]
        error: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_slice::<Shape<'_>>(data).is_ok_and(|s| s.method.is_none() && (s.result.is_some() || s.error.is_some()))
}

/// Classifies a response by status and content type; a JSON body is read whole (capped); an
/// event stream is resumable when `resume` is given.
async fn reply(response: reqwest::Response, resume: Option<(&Arc<RawSession>, Option<&CallContext>)>) -> Result<Reply, PostError> {
    let status = response.status();
    if status == StatusCode::ACCEPTED {
        return Ok(Reply::Accepted);
    }
    if !status.is_success() {
        return Err(PostError::Failed(format!("HTTP {status}")));
    }
    if response.content_length().is_some_and(|n| n > MAX_REPLY_BYTES as u64) {
        return Err(PostError::Failed(format!("reply exceeds {MAX_REPLY_BYTES} bytes")));
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
    if content_type.starts_with("application/json") {
        let mut body = capped(response);
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk?);
        }
        return Ok(Reply::Json(Bytes::from(out)));
    }
    if content_type.starts_with("text/event-stream") {
        return Ok(Reply::Events(match resume {
            Some((session, call)) => Resume::new(session, call).events(sse(response)),
            None => data(sse(response)),
        }));
    }
    Err(PostError::Failed(format!("unexpected content type {content_type:?}")))
}

/// The response body as chunks, failing once more than [`MAX_REPLY_BYTES`] arrived.
fn capped(response: reqwest::Response) -> BoxStream<'static, Result<Bytes, PostError>> {
    let mut seen = 0usize;
    response
        .bytes_stream()
        .map(move |chunk| {
            let chunk = chunk.map_err(|e| PostError::Failed(describe(&e)))?;
            seen += chunk.len();
            if seen > MAX_REPLY_BYTES {
                return Err(PostError::Failed(format!("reply exceeds {MAX_REPLY_BYTES} bytes")));
            }
            Ok(chunk)
        })
        .boxed()
}

/// The events of an SSE response (HTML Living Standard §9.2).
fn sse(response: reqwest::Response) -> BoxStream<'static, Result<Sse, PostError>> {
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Chunk(String);
    let body = capped(response).map(|r| r.map_err(|e| Chunk(e.to_string())));
    sse_stream::SseStream::from_bytes_stream(body).map(|event| event.map_err(|error| PostError::Failed(format!("event stream: {error}")))).boxed()
}

/// The `data` of each event, empty ones (priming events, keep-alives) skipped.
fn data(events: BoxStream<'static, Result<Sse, PostError>>) -> BoxStream<'static, Result<Bytes, PostError>> {
    events.filter_map(|event| async move { event.map(|e| e.data.filter(|d| !d.is_empty()).map(Bytes::from)).transpose() }).boxed()
}

/// What it takes to reopen an SSE stream of a session: the session (weakly: a stream does not
/// keep a closed session alive) and the call whose identity assertion the reopening carries.
struct Resume {
    session: Weak<RawSession>,
    call: Option<CallContext>,
}

/// The state of a resumable stream while it is read.
struct Resuming {
    resume: Resume,
    events: BoxStream<'static, Result<Sse, PostError>>,
    last_event_id: Option<String>,
    retry: Option<Duration>,
    resumes: u32,
    done: bool,
}

// === impl Resume ===

impl Resume {
    fn new(session: &Arc<RawSession>, call: Option<&CallContext>) -> Self {
        Self { session: Arc::downgrade(session), call: call.cloned() }
    }

    /// The `data` of each event of `events` and of the streams that resume it.
    fn events(self, events: BoxStream<'static, Result<Sse, PostError>>) -> BoxStream<'static, Result<Bytes, PostError>> {
        let state = Resuming { resume: self, events, last_event_id: None, retry: None, resumes: 0, done: false };
        futures::stream::unfold(state, |mut state| async move {
            if state.done {
                return None;
            }
            loop {
                let ended = match state.events.next().await {
                    Some(Ok(event)) => {
                        if let Some(id) = event.id.filter(|id| !id.is_empty()) {
                            state.last_event_id = Some(id);
                            state.resumes = 0;
                        }
                        if let Some(retry) = event.retry {
                            state.retry = Some(Duration::from_millis(retry));
                        }
                        match event.data.filter(|d| !d.is_empty()) {
                            Some(data) => return Some((Ok(Bytes::from(data)), state)),
                            None => continue,
                        }
                    }
                    Some(Err(error)) => Some(error),
                    None => None,
                };
                // The stream ended (or broke) while the reader still wants events.
                let resumable = state.last_event_id.clone().zip(state.resume.session.upgrade()).filter(|_| state.resumes < MAX_RESUMES);
                let Some((last_event_id, session)) = resumable else {
                    state.done = true;
                    return ended.map(|error| (Err(error), state));
                };
                state.resumes += 1;
                let wait = state.retry.unwrap_or(RESUME_WAIT_DEFAULT).clamp(RESUME_WAIT.0, RESUME_WAIT.1);
                tracing::debug!(upstream = %session.upstream, wait_ms = wait.as_millis() as u64, "upstream closed an event stream; resuming it");
                tokio::select! {
                    () = session.stop.cancelled() => return None,
                    () = tokio::time::sleep(wait) => {}
                }
                match session.resume(&last_event_id, state.resume.call.as_ref()).await {
                    Ok(events) => state.events = events,
                    Err(error) => {
                        state.done = true;
                        return Some((Err(error), state));
                    }
                }
            }
        })
        .boxed()
    }
}

/// A transport error without its URL's query (which could carry a secret).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "reply could not be read"
    } else {
        "request failed"
    };
    kind.to_owned()
}
