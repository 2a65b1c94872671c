//! The direct call path: `tools/call` in an established session, relayed as raw JSON-RPC.
//!
//! A gateway's hot path is `tools/call`. Through rmcp it crosses two MCP sessions (the
//! client-facing server session and the session's own upstream client session), each with
//! its tasks, channels and a full parse into rmcp's model. Here the transport hands the
//! call's JSON-RPC envelope straight to [`DirectCalls::call_tool`], which runs the same
//! ordered steps as the router (module docs of [`crate::router`]: principal, catalog,
//! policy, durable audit intent, forward, guard, outcome) and forwards through a
//! [`RawSession`] — one per client session and upstream, opened lazily with the client's
//! capabilities mirrored.
//!
//! What the upstream sends on the call's response stream is relayed on the client's:
//! notifications verbatim (progress carries the client's own token, which is forwarded
//! unchanged), list changes to the catalog instead, and server-to-client requests
//! (`sampling/createMessage`, `elicitation/create`, `roots/list`) under a gateway-assigned
//! id (`portcullis-<n>`), so that the client's answer — POSTed to the gateway — is routed
//! back by [`DirectCalls::answer`] to the upstream that asked, under the upstream's id.
//! `ping` from the upstream is answered by the gateway. `notifications/cancelled` from the
//! client for a direct call is handled by [`DirectCalls::cancel`] and passed on upstream.
//!
//! Invariant: the reply is one JSON object when the upstream sent nothing before its
//! result, else an SSE stream; either way the result is sanitized by the guard before it
//! leaves the gateway, and the request ends in exactly one [`RequestCtx::finish`].

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use futures::{StreamExt as _, stream::BoxStream};
use http::{HeaderMap, HeaderName, HeaderValue};
use rmcp::{
    ErrorData,
    model::{CallToolResult, ClientConfig, ErrorCode, RequestId, RequestMetaObject},
};
use serde::Deserialize;
use serde_json::{Map, Value, json, value::RawValue};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{Gateway, ctx::RequestCtx, tool_target, unexpected, withheld_or_unknown};
use crate::{
    auth::Principal,
    policy::Decision,
    telemetry::{McpSpanExt as _, client_span, inject_meta},
    upstream::{
        self, CatalogEvent,
        credentials::{CallContext, SessionIdentity},
        raw::{PostError, RawSession, Reply},
    },
};

/// JSON-RPC error code of a request the client cancelled (the answer is sent in case the
/// client still reads it; MCP basic/utilities/cancellation says it SHOULD ignore it).
pub const REQUEST_CANCELLED: i32 = -32800;

/// Prefix of the ids under which upstream requests are relayed to the client (rmcp's own
/// server-to-client ids are numbers, so the two never collide).
const RELAY_PREFIX: &str = "portcullis-";

/// Direct-path state of every client session, by MCP session id.
pub struct DirectCalls {
    gateway: Arc<Gateway>,
    sessions: Mutex<HashMap<Arc<str>, Arc<DirectSession>>>,
}

/// Direct-path state of one client session.
pub struct DirectSession {
    session_id: Arc<str>,
    session_hash: String,
    /// The client's last `logging/setLevel` params, applied to each upstream session.
    log_level: Mutex<Option<Value>>,
    client: Option<ClientConfig>,
    connections: HashMap<Arc<str>, tokio::sync::Mutex<Option<Arc<RawSession>>>>,
    /// Direct calls in flight: the client's JSON-RPC id (serialized) → its cancellation.
    in_flight: Mutex<HashMap<String, CancellationToken>>,
    /// Upstream requests relayed to the client: gateway id → where the answer goes.
    relayed: Mutex<HashMap<String, Relayed>>,
    next_relay: AtomicU64,
}

struct Relayed {
    connection: Arc<RawSession>,
    upstream_id: Box<RawValue>,
    /// The client request (serialized id) whose call the upstream asked during.
    call: String,
}

/// What the client receives for a direct call.
pub enum DirectReply {
    /// One JSON-RPC response (`application/json`).
    Json(Bytes),
    /// JSON-RPC messages to send as server-sent events, the response last.
    Events(BoxStream<'static, Bytes>),
}

/// One message for the client: `Final` is the response.
enum Out {
    Message(Bytes),
    Final(Bytes),
}

#[derive(Deserialize)]
struct Shape<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    method: Option<String>,
}

#[derive(Deserialize)]
struct UpstreamResponse {
    result: Option<Box<RawValue>>,
    error: Option<ErrorData>,
}

/// Locks a map; a poisoned lock only means another request panicked mid-update.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// === impl DirectCalls ===

impl DirectCalls {
    /// No sessions yet.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway, sessions: Mutex::new(HashMap::new()) }
    }

    /// Registers a newly initialized session; `initialize` is the client's `initialize`
    /// params (capabilities to mirror upstream).
    pub fn open(&self, session_id: &str, initialize: Option<&Value>) {
        let client = initialize.and_then(|params| serde_json::from_value::<ClientConfig>(params.clone()).ok());
        let session = DirectSession {
            session_id: Arc::from(session_id),
            session_hash: crate::session::hash_id(session_id),
            log_level: Mutex::new(None),
            client,
            connections: self.gateway.upstreams.keys().map(|name| (name.clone(), tokio::sync::Mutex::new(None))).collect(),
            in_flight: Mutex::new(HashMap::new()),
            relayed: Mutex::new(HashMap::new()),
            next_relay: AtomicU64::new(0),
        };
        self.gateway.client_peers.open(session_id);
        lock(&self.sessions).insert(Arc::from(session_id), Arc::new(session));
    }

    /// The direct-path state of `session_id`, if it was opened.
    pub fn session(&self, session_id: &str) -> Option<Arc<DirectSession>> {
        lock(&self.sessions).get(session_id).cloned()
    }

    /// Forgets a session and ends its upstream sessions (in the background).
    pub fn close(&self, session_id: &str) {
        self.gateway.client_peers.remove(session_id);
        let Some(session) = lock(&self.sessions).remove(session_id) else { return };
        tokio::spawn(async move {
            for slot in session.connections.values() {
                if let Some(connection) = slot.lock().await.take() {
                    connection.close().await;
                }
            }
        });
    }

    /// Number of sessions with direct-path state.
    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs one `tools/call` (`params` as the client sent them, `id` its JSON-RPC id) for
    /// `principal` in `session`; `headers` are the client's HTTP headers (trace context,
    /// protocol version). Always answers: errors are JSON-RPC error responses.
    pub async fn call_tool(&self, session: Arc<DirectSession>, principal: Principal, headers: &HeaderMap, id: Value, params: Map<String, Value>) -> DirectReply {
        let name = params.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let meta: RequestMetaObject = params.get("_meta").and_then(|m| serde_json::from_value(m.clone()).ok()).unwrap_or_default();
        let request_id: RequestId = serde_json::from_value(id.clone()).unwrap_or(RequestId::Number(0));
        let ctx = RequestCtx::start("tools/call", Some(&name), principal, Some(headers), &meta, &request_id, session_header(headers));
        let key = id.to_string();
        let cancel = CancellationToken::new();
        lock(&session.in_flight).insert(key.clone(), cancel.clone());
        let (tx, mut rx) = mpsc::channel(16);
        let call = Call { gateway: self.gateway.clone(), session, ctx, name, params, meta, id, key, cancel, out: tx };
        tokio::spawn(call.run());
        match rx.recv().await {
            Some(Out::Final(bytes)) => DirectReply::Json(bytes),
            Some(Out::Message(first)) => {
                let rest = futures::stream::unfold(rx, |mut rx| async move {
                    match rx.recv().await {
                        Some(Out::Message(bytes) | Out::Final(bytes)) => Some((bytes, rx)),
                        None => None,
                    }
                });
                DirectReply::Events(futures::stream::once(async move { first }).chain(rest).boxed())
            }
            None => DirectReply::Json(error_response(&Value::Null, &ErrorData::internal_error("internal error", None))),
        }
    }

    /// Routes the client's answer (`message`, a JSON-RPC response) to a relayed upstream
    /// request. `None` when `id` names no request relayed in this session (rmcp's own
    /// server-to-client requests are answered through rmcp).
    pub async fn answer(&self, session: &DirectSession, id: &Value, mut message: Value) -> Option<Result<(), String>> {
        let gateway_id = id.as_str().filter(|s| s.starts_with(RELAY_PREFIX))?;
        let relayed = lock(&session.relayed).remove(gateway_id)?;
        message["id"] = serde_json::from_str(relayed.upstream_id.get()).unwrap_or(Value::Null);
        let posted = relayed.connection.post(Bytes::from(message.to_string()), None, &[]).await;
        Some(posted.map(|_| ()).map_err(|e| e.to_string()))
    }

    /// Records the client's `logging/setLevel` (`params`) for this session's upstream
    /// sessions and applies it to those already open (in the background; rmcp applies it
    /// to its own).
    pub fn set_level(&self, session: &Arc<DirectSession>, params: Value) {
        *lock(&session.log_level) = Some(params.clone());
        let session = session.clone();
        tokio::spawn(async move {
            for slot in session.connections.values() {
                let connection = slot.lock().await.clone();
                if let Some(connection) = connection {
                    set_level(&connection, &params).await;
                }
            }
        });
    }

    /// Cancels the direct call with the client's id `request_id`; `false` when no such call
    /// is in flight here.
    pub fn cancel(&self, session: &DirectSession, request_id: &Value) -> bool {
        match lock(&session.in_flight).get(&request_id.to_string()) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

fn session_header(headers: &HeaderMap) -> Option<String> {
    headers.get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A JSON-RPC error response.
fn error_response(id: &Value, error: &ErrorData) -> Bytes {
    Bytes::from(json!({"jsonrpc": "2.0", "id": id, "error": error}).to_string())
}

// === impl DirectSession ===

impl DirectSession {
    /// This session's raw session with `upstream`, opened on first use; `stale` (a session
    /// the upstream forgot) is replaced.
    async fn connection(
        &self,
        gateway: &Gateway,
        upstream: &Arc<str>,
        principal: &Principal,
        stale: Option<&Arc<RawSession>>,
    ) -> Result<Arc<RawSession>, upstream::Error> {
        let (Some(slot), Some(target)) = (self.connections.get(upstream), gateway.upstreams.get(upstream)) else {
            return Err(upstream::Error::Unavailable { upstream: upstream.clone(), reason: "not configured".into() });
        };
        let mut slot = slot.lock().await;
        match (slot.as_ref(), stale) {
            (Some(current), Some(stale)) if Arc::ptr_eq(current, stale) => {}
            (Some(current), _) => return Ok(current.clone()),
            (None, _) => {}
        }
        let identity = SessionIdentity { principal: principal.clone(), session_hash: Some(self.session_hash.clone()) };
        let connection = Arc::new(target.open_raw(self.client.as_ref(), identity).await?);
        let level = lock(&self.log_level).clone();
        if let Some(params) = level {
            set_level(&connection, &params).await;
        }
        tokio::spawn(standalone(Arc::downgrade(&connection), gateway.catalog_events.clone(), gateway.client_peers_handle(), self.session_id.clone()));
        *slot = Some(connection.clone());
        Ok(connection)
    }
}

/// Sends `logging/setLevel` upstream; a refusal only means the upstream does not log.
async fn set_level(connection: &Arc<RawSession>, params: &Value) {
    let request = json!({"jsonrpc": "2.0", "id": connection.next_id(), "method": "logging/setLevel", "params": params});
    if let Err(error) = connection.post(Bytes::from(request.to_string()), None, &[]).await {
        tracing::debug!(upstream = %connection.upstream(), %error, "upstream refused logging/setLevel");
    }
}

/// Reads an upstream session's standalone SSE stream until the session stops: list changes
/// go to the catalog, other notifications to the client session, requests (`sampling/…`,
/// `elicitation/…`, `roots/list`) are relayed to the client and its answer posted back;
/// `ping` is answered here. Holds the session weakly, so dropping it ends the reader.
///
/// The stream is opened only once the client session has an rmcp peer (it reached rmcp:
/// [`super::ClientPeers`]); before that nothing could be relayed, and a session that only
/// calls tools holds no second upstream connection. List changes still reach the catalog
/// through its own upstream sessions.
///
/// A stream the upstream closes is opened again (MCP 2025-11-25 basic/transports: the server
/// may close it at any time; one closed after an event id is first resumed by the raw
/// session). One closed with no id to resume from, as a proxy's idle timeout does, is
/// reopened fresh after [`STANDALONE_REOPEN`]'s first wait, doubled up to its second while
/// reopened streams deliver nothing. The reader ends when the session stops or expires
/// (HTTP 404), the upstream stops offering the stream (HTTP 405), or the first open fails.
async fn standalone(connection: std::sync::Weak<RawSession>, catalog_events: upstream::CatalogEvents, peers: super::ClientPeers, session_id: Arc<str>) {
    let (upstream, stop) = match connection.upgrade() {
        Some(session) => (session.upstream().clone(), session.stopped()),
        None => return,
    };
    tokio::select! {
        () = stop.cancelled() => return,
        peer = peers.wait(&session_id) => if peer.is_none() { return },
    }
    let peer = || peers.get(&session_id);
    let mut wait = STANDALONE_REOPEN.0;
    let mut opened_before = false;
    loop {
        let Some(session) = connection.upgrade() else { return };
        let opened = session.listen().await;
        drop(session);
        let mut events = match opened {
            Ok(Some(events)) => events,
            Ok(None) | Err(PostError::SessionExpired) => return,
            Err(error) if !opened_before => {
                tracing::debug!(%upstream, %error, "no standalone stream from upstream");
                return;
            }
            Err(error) => {
                tracing::debug!(%upstream, %error, "standalone stream could not be reopened");
                futures::stream::empty().boxed()
            }
        };
        opened_before = true;
        let mut delivered = false;
        while let Some(data) = tokio::select! {
            () = stop.cancelled() => return,
            event = events.next() => match event {
                Some(Ok(data)) => Some(data),
                Some(Err(error)) => {
                    tracing::debug!(%upstream, %error, "standalone stream ended");
                    None
                }
                None => None,
            },
        } {
            delivered = true;
            relay_standalone(&data, &upstream, &catalog_events, peer(), &connection).await;
        }
        // The upstream closed the stream (or it could not be reopened) while the session
        // lives: open it again.
        if delivered {
            wait = STANDALONE_REOPEN.0;
        }
        tracing::debug!(%upstream, wait_ms = wait.as_millis() as u64, "standalone stream closed; reopening it");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if !delivered {
            wait = (wait * 2).min(STANDALONE_REOPEN.1);
        }
    }
}

/// Waits before reopening a closed standalone stream, `(first, longest)`: doubled after each
/// reopened stream that delivered nothing.
const STANDALONE_REOPEN: (std::time::Duration, std::time::Duration) = (std::time::Duration::from_millis(250), std::time::Duration::from_secs(30));

/// Handles one message of a standalone stream (see [`standalone`]).
async fn relay_standalone(
    data: &[u8],
    upstream: &Arc<str>,
    catalog_events: &upstream::CatalogEvents,
    peer: Option<rmcp::service::Peer<rmcp::RoleServer>>,
    connection: &std::sync::Weak<RawSession>,
) {
    use rmcp::model::{JsonRpcMessage, ServerJsonRpcMessage, ServerNotification, ServerRequest};
    let Ok(message) = serde_json::from_slice::<ServerJsonRpcMessage>(data) else {
        tracing::debug!(%upstream, "unreadable message on the standalone stream ignored");
        return;
    };
    match message {
        JsonRpcMessage::Notification(notification) => {
            if matches!(notification.notification, ServerNotification::CancelledNotification(_)) {
                return;
            }
            let event = CatalogEvent::of(&notification.notification);
            match (event, peer) {
                (Some(event), _) => {
                    let _ = catalog_events.send((upstream.clone(), event));
                }
                (None, Some(client)) => {
                    if let Err(error) = client.send_notification(notification.notification).await {
                        tracing::debug!(%upstream, %error, "client session gone; notification dropped");
                    }
                }
                (None, None) => tracing::debug!(%upstream, "no client peer yet; notification dropped"),
            }
        }
        JsonRpcMessage::Request(request) => {
            let id = request.id;
            let answer = match (request.request, peer) {
                (ServerRequest::PingRequest(_), _) => json!({"jsonrpc": "2.0", "id": id, "result": {}}),
                (request, Some(client)) => match client.send_request(request).await {
                    Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                    Err(rmcp::ServiceError::McpError(error)) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
                    Err(_) => json!({"jsonrpc": "2.0", "id": id, "error": ErrorData::internal_error("the client did not answer the relayed request", None)}),
                },
                (_, None) => json!({"jsonrpc": "2.0", "id": id, "error": ErrorData::internal_error("client session not ready", None)}),
            };
            let Some(session) = connection.upgrade() else { return };
            let _ = session.post(Bytes::from(answer.to_string()), None, &[]).await;
        }
        _ => {}
    }
}

/// One direct `tools/call`, run in its own task.
struct Call {
    gateway: Arc<Gateway>,
    session: Arc<DirectSession>,
    ctx: RequestCtx,
    name: String,
    params: Map<String, Value>,
    meta: RequestMetaObject,
    id: Value,
    key: String,
    cancel: CancellationToken,
    out: mpsc::Sender<Out>,
}

// === impl Call ===

impl Call {
    async fn run(mut self) {
        let span = self.ctx.span.clone();
        let result = self.execute().instrument(span).await;
        let Self { gateway, session, ctx, id, key, out, .. } = self;
        lock(&session.in_flight).remove(&key);
        lock(&session.relayed).retain(|_, relayed| relayed.call != key);
        let response = match &result {
            Ok(result) => serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "result": result})).map(Bytes::from),
            Err(error) => Ok(error_response(&id, error)),
        };
        ctx.finish(&gateway, &result);
        let response = response.unwrap_or_else(|_| error_response(&id, &ErrorData::internal_error("internal error", None)));
        let _ = out.send(Out::Final(response)).await;
    }

    /// Steps 2–6 of the router's module docs.
    async fn execute(&mut self) -> Result<CallToolResult, ErrorData> {
        let gateway = self.gateway.clone();
        let catalog = gateway.catalog.current();
        let arguments = self.params.get("arguments").cloned();
        let Some(entry) = catalog.tool(&self.name) else {
            self.ctx.record_intent(&gateway, arguments).await?;
            return Err(withheld_or_unknown(&gateway, &self.ctx.principal, &self.name));
        };
        let target = tool_target(&gateway, entry);
        let upstream: Arc<str> = entry.upstream.clone();
        self.ctx.upstream = Some(upstream.clone());
        self.ctx.span.record_upstream(&upstream);
        let grant = match gateway.policy.decide(&self.ctx.principal, target) {
            Decision::Allow(grant) => {
                self.ctx.allow(&grant);
                grant
            }
            Decision::DenyMissingScopes(scopes) => {
                self.ctx.deny(None);
                self.ctx.record_intent(&gateway, arguments).await?;
                return Err(crate::policy::insufficient_scope_error(&scopes));
            }
            Decision::Deny { rule } => {
                self.ctx.deny(rule.map(|r| r.to_string()));
                self.ctx.record_intent(&gateway, arguments).await?;
                return Err(super::hidden(target.kind, target.name));
            }
        };
        // Write-ahead: the intent is durable before anything reaches the upstream.
        self.ctx.record_intent(&gateway, arguments).await?;
        let call = CallContext { scopes: grant.scopes().to_vec(), target: format!("tool:{}/{}", upstream, entry.original) };
        let span = client_span(&upstream, "tools/call", Some(&entry.original));
        // The client's `_meta` minus the SEP-2575 per-request protocol keys (this hop has its
        // own session); the progress token stays: progress comes back on this call's stream.
        let mut meta = self.meta.clone();
        meta.retain(|key, _| !key.starts_with("io.modelcontextprotocol/"));
        inject_meta(&span, &mut meta);
        let mut params = std::mem::take(&mut self.params);
        params.insert("name".into(), Value::String(entry.original.clone()));
        params.remove("_meta");
        if !meta.is_empty() {
            params.insert("_meta".into(), serde_json::to_value(&meta).unwrap_or(Value::Null));
        }
        let extra = trace_headers(&meta);
        let started = std::time::Instant::now();
        let exchanged = self.exchange(&upstream, &params, &call, &extra).instrument(span.clone()).await;
        gateway.metrics.record_upstream_call(&upstream, "tools/call", started.elapsed());
        let message = exchanged.inspect_err(|error| span.record_error(super::upstream_error_class(error)))?;
        let response: UpstreamResponse = serde_json::from_slice(&message).map_err(|_| unexpected(&upstream))?;
        if let Some(error) = response.error {
            span.record_error("upstream_error");
            return Err(error);
        }
        let mut result: CallToolResult =
            response.result.and_then(|raw| serde_json::from_str(raw.get()).ok()).ok_or_else(|| unexpected(&upstream))?;
        // Step 6: what the model will read is sanitized before it leaves the gateway.
        self.ctx.findings = Some(gateway.guard.sanitize_tool_result(&upstream, &mut result));
        Ok(result)
    }

    /// Sends the call upstream and returns the upstream's response message, relaying what
    /// comes before it; bounded by the upstream's `request_timeout` and the client's
    /// cancellation.
    async fn exchange(&self, upstream: &Arc<str>, params: &Map<String, Value>, call: &CallContext, extra: &[(HeaderName, HeaderValue)]) -> Result<Bytes, ErrorData> {
        let unavailable = |reason: String| upstream::to_error_data(&upstream::Error::Unavailable { upstream: upstream.clone(), reason });
        let mut connection =
            self.session.connection(&self.gateway, upstream, &self.ctx.principal, None).await.map_err(|e| upstream::to_error_data(&e))?;
        let timeout = connection.request_timeout();
        // The request in flight upstream, for a cancellation notice.
        let sent: Mutex<Option<(Arc<RawSession>, u64)>> = Mutex::new(None);
        let exchange = async {
            let mut attempt = 0;
            let (connection, upstream_id, reply) = loop {
                let upstream_id = connection.next_id();
                *lock(&sent) = Some((connection.clone(), upstream_id));
                let body = json!({"jsonrpc": "2.0", "id": upstream_id, "method": "tools/call", "params": params});
                match connection.post(Bytes::from(body.to_string()), Some(call), extra).await {
                    Ok(reply) => break (connection.clone(), upstream_id, reply),
                    // The upstream forgot the session (restart, expiry): nothing was run, so
                    // reopen once and resend.
                    Err(PostError::SessionExpired) if attempt == 0 => {
                        attempt += 1;
                        connection = self
                            .session
                            .connection(&self.gateway, upstream, &self.ctx.principal, Some(&connection))
                            .await
                            .map_err(|e| upstream::to_error_data(&e))?;
                    }
                    Err(error) => return Err(unavailable(error.to_string())),
                }
            };
            match reply {
                Reply::Json(bytes) => Ok(bytes),
                Reply::Events(events) => self.relay(&connection, upstream_id, events).await,
                Reply::Accepted => Err(unexpected(upstream)),
            }
        };
        let (outcome, reason) = tokio::select! {
            finished = tokio::time::timeout(timeout, exchange) => match finished {
                Ok(outcome) => return outcome,
                Err(_) => (Err(upstream::to_error_data(&upstream::Error::Timeout { upstream: upstream.clone(), timeout })), "timed out"),
            },
            () = self.cancel.cancelled() => (Err(ErrorData::new(ErrorCode(REQUEST_CANCELLED), "request cancelled", None)), "cancelled by the client"),
        };
        // Tell the upstream the call is abandoned (MCP basic/utilities/cancellation).
        let in_flight = lock(&sent).take();
        if let Some((connection, upstream_id)) = in_flight {
            let notification = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": upstream_id, "reason": reason}});
            let _ = connection.post(Bytes::from(notification.to_string()), None, &[]).await;
        }
        outcome
    }

    /// Reads the upstream's event stream until its response to `upstream_id`, relaying
    /// notifications and requests to the client.
    async fn relay(&self, connection: &Arc<RawSession>, upstream_id: u64, mut events: BoxStream<'static, Result<Bytes, PostError>>) -> Result<Bytes, ErrorData> {
        let upstream = connection.upstream();
        let unavailable = |reason: String| upstream::to_error_data(&upstream::Error::Unavailable { upstream: upstream.clone(), reason });
        while let Some(event) = events.next().await {
            let data = event.map_err(|e| unavailable(e.to_string()))?;
            let Ok(shape) = serde_json::from_slice::<Shape<'_>>(&data) else {
                tracing::debug!(%upstream, "non-JSON event on a call stream ignored");
                continue;
            };
            match (shape.method.as_deref(), shape.id) {
                (None, Some(id)) if id.get() == upstream_id.to_string() => return Ok(data),
                (None, _) => tracing::debug!(%upstream, "response to another request on a call stream ignored"),
                (Some(method), None) => self.notify(upstream, method, data).await,
                (Some("ping"), Some(id)) => {
                    let pong = format!(r#"{{"jsonrpc":"2.0","id":{},"result":{{}}}}"#, id.get());
                    let _ = connection.post(Bytes::from(pong), None, &[]).await;
                }
                (Some(_), Some(id)) => {
                    let gateway_id = format!("{RELAY_PREFIX}{}", self.session.next_relay.fetch_add(1, Ordering::Relaxed));
                    let Ok(mut message) = serde_json::from_slice::<Value>(&data) else { continue };
                    message["id"] = Value::String(gateway_id.clone());
                    let relayed = Relayed { connection: connection.clone(), upstream_id: id.to_owned(), call: self.key.clone() };
                    lock(&self.session.relayed).insert(gateway_id, relayed);
                    let _ = self.out.send(Out::Message(Bytes::from(message.to_string()))).await;
                }
            }
        }
        Err(unavailable("the call's event stream ended without a response".into()))
    }

    /// A notification the upstream sent during the call: list changes go to the catalog,
    /// cancellations stop at the gateway (it owns cancellation on each hop), the rest go to
    /// the client verbatim.
    async fn notify(&self, upstream: &Arc<str>, method: &str, data: Bytes) {
        if method == "notifications/cancelled" {
            return;
        }
        let event = CatalogEvent::of_method(method);
        match event {
            Some(event) => {
                let _ = self.gateway.catalog_events.send((upstream.clone(), event));
            }
            None => {
                let _ = self.out.send(Out::Message(data)).await;
            }
        }
    }
}

/// `traceparent`/`tracestate` headers from the forwarded `_meta` (the upstream sees the
/// trace context both ways, as on the rmcp path).
fn trace_headers(meta: &RequestMetaObject) -> Vec<(HeaderName, HeaderValue)> {
    [("traceparent", meta.get_traceparent()), ("tracestate", meta.get_tracestate())]
        .into_iter()
        .filter_map(|(name, value)| Some((HeaderName::from_static(name), HeaderValue::from_str(value?).ok()?)))
        .collect()
}
