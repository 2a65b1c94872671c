//! Transport: the HTTP face of the gateway. `/mcp` speaks MCP streamable HTTP (revisions
//! 2025-03-26, 2025-06-18, 2025-11-25 and, as far as rmcp 3.9 implements it, 2026-07-28);
//! `/.well-known/*` publishes OAuth metadata; `/healthz` answers liveness.
//!
//! Every request to `/mcp` passes these steps, in this order, before rmcp sees it:
//! 1. **Host and Origin allow-lists** (DNS-rebinding defence, MCP 2025-11-25
//!    basic/transports §Security): first, so a hostile page learns nothing, not even
//!    whether it would need a token. Bad Host or Origin → 403.
//! 2. **Authentication** ([`crate::auth`]): no or bad token → 401 with a `WWW-Authenticate`
//!    challenge naming the RFC 9728 metadata.
//! 3. **Session binding** ([`crate::session`]): a session id created by another principal
//!    → 404, as if it did not exist.
//! 4. **Body** (POST): over the cap → 413; not JSON → 400 with JSON-RPC `-32700`; a batch, or
//!    an object with a duplicate member (`method` twice: which one counts is up to each
//!    parser, so the gateway and the upstream could disagree) → 400 `-32600`.
//! 5. **Rate limit** ([`crate::limits`], when `[limits]` is on): a JSON-RPC request over the
//!    principal's budget → 429 with `Retry-After` and JSON-RPC `-32053`.
//! 6. **Scope step-up**: a call whose kind the token's scopes cannot reach → 403
//!    `insufficient_scope` naming the scopes needed (RFC 6750 §3.1).
//!
//! A plain `initialize` (the plain headers below, a stateful protocol revision) is answered
//! by the transport: audited like any request, a session id minted and bound, its parameters
//! kept so that rmcp builds its own session state only at the session's first request rmcp
//! must serve ([`crate::session`] module docs). The client's `notifications/initialized` for
//! such a session is acknowledged (202) here, whether or not rmcp has built it yet (rmcp gets
//! the handshake replayed); `ping` and `tools/list` are answered here too.
//!
//! A `tools/call` in an established session then takes the direct path
//! ([`crate::router::DirectCalls`]): the router's steps run on the raw JSON-RPC envelope
//! and the call goes upstream without rmcp in between; so do the client's answers to
//! upstream requests relayed on that path and its cancellations of such calls. Everything
//! else — and any request whose headers are not the plain case (Accept, Content-Type,
//! `MCP-Protocol-Version`) — goes to rmcp, which validates Accept, Content-Type,
//! `MCP-Protocol-Version` and the session, and runs the [`crate::router`]. Its Host/Origin
//! checks run again with the same lists.
//!
//! Session idle expiry is the transport's: a sweeper ends sessions (rmcp's and the direct
//! path's) whose binding lapsed after `session_idle_timeout` without a request.

mod metadata;
mod serve;

pub use serve::{BodyTimeout, Timeouts, serve};

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService,
    session::{SessionManager as _, local::LocalSessionManager},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    auth::{self, ResourceServer, issuer::EmbeddedIssuer},
    config::Settings,
    router::{DirectCalls, DirectReply, Gateway, SessionHandler},
    limits::RateLimits,
    session::{Binding, InitializeStates, SessionBindings},
    telemetry::{AccessLog, Outcome, method_label},
};

const SESSION_HEADER: &str = "mcp-session-id";

/// Everything the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    settings: Arc<Settings>,
    gateway: Arc<Gateway>,
    resource_server: Arc<ResourceServer>,
    issuer: Arc<EmbeddedIssuer>,
    bindings: Arc<SessionBindings>,
    direct: Arc<DirectCalls>,
    /// rmcp's sessions (built on a session's first rmcp request, or at an `initialize` the
    /// transport leaves to rmcp).
    sessions: Arc<LocalSessionManager>,
    /// `initialize` parameters of live sessions, from which rmcp builds its state on demand.
    initialize_states: Arc<InitializeStates>,
    /// Per-principal request budgets (`[limits]`).
    limits: Arc<RateLimits>,
    mcp: Arc<StreamableHttpService<SessionHandler, LocalSessionManager>>,
}

// === impl AppState ===

impl AppState {
    /// Builds the transport state and starts the idle-session sweeper (a Tokio task);
    /// `cancel` ends all MCP sessions and the sweeper when triggered.
    pub fn new(
        gateway: Arc<Gateway>,
        resource_server: Arc<ResourceServer>,
        issuer: Arc<EmbeddedIssuer>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Self {
        let settings = gateway.settings.clone();
        let mut sessions = LocalSessionManager::default();
        // Idle expiry is the sweeper's (module docs): direct calls never touch rmcp's session.
        sessions.session_config.keep_alive = None;
        let sessions = Arc::new(sessions);
        let initialize_states = Arc::new(InitializeStates::default());
        let mut config = StreamableHttpServerConfig::default()
            .with_allowed_hosts(settings.allowed_hosts.clone())
            .with_allowed_origins(settings.allowed_origins.clone())
            .with_max_request_body_bytes(settings.max_body_bytes)
            .with_cancellation_token(cancel.clone());
        config.session_store = Some(initialize_states.clone());
        let factory_gateway = gateway.clone();
        let mcp = StreamableHttpService::new(move || Ok(SessionHandler::new(factory_gateway.clone())), sessions.clone(), config);
        let bindings = Arc::new(SessionBindings::new(settings.session_idle_timeout));
        let direct = Arc::new(DirectCalls::new(gateway.clone()));
        let limits = Arc::new(RateLimits::new(&settings.limits));
        let state = Self { settings, gateway, resource_server, issuer, bindings, direct, sessions, initialize_states, limits, mcp: Arc::new(mcp) };
        tokio::spawn(sweep_idle_sessions(state.clone(), cancel));
        state
    }

    /// Session bindings (for metrics and tests).
    pub fn bindings(&self) -> &Arc<SessionBindings> {
        &self.bindings
    }

    /// A new session `id`, initialized by `binding_key`'s principal with `initialize` params:
    /// bound, counted, and given its direct-path state.
    fn open_session(&self, id: &str, binding_key: String, initialize: Option<&Value>) {
        self.bindings.bind(id, binding_key);
        self.gateway.metrics.session_opened();
        self.direct.open(id, initialize);
    }

    /// Ends session `id` everywhere but in rmcp (the caller closes rmcp's, or rmcp already
    /// did): binding, gauge (once, however many paths end it), recorded `initialize`, direct
    /// path and client peer.
    fn end_session(&self, id: &str) {
        if self.bindings.unbind(id) {
            self.gateway.metrics.session_closed();
        }
        self.initialize_states.remove(id);
        self.direct.close(id);
    }

    /// Closes rmcp's state of session `id`, if it has any.
    async fn close_rmcp_session(&self, id: &str) {
        if let Err(error) = self.sessions.close_session(&Arc::from(id)).await {
            tracing::debug!(%error, "rmcp session already gone");
        }
    }
}

/// Ends sessions whose binding lapsed, and forgets rate-limit state of principals whose
/// budget is full again, every quarter of the idle timeout (1–30 s).
async fn sweep_idle_sessions(state: AppState, cancel: tokio_util::sync::CancellationToken) {
    let period = (state.bindings.idle_timeout() / 4).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(30));
    let mut ticks = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for id in state.bindings.sweep() {
            // `sweep` already dropped the binding; the gauge counts it here.
            state.gateway.metrics.session_closed();
            state.end_session(&id);
            state.close_rmcp_session(&id).await;
        }
        state.limits.retain_recent();
    }
}

/// The gateway's HTTP application.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/mcp", any(mcp_entry))
        .route("/.well-known/oauth-protected-resource", get(metadata::protected_resource))
        .route("/.well-known/oauth-protected-resource/mcp", get(metadata::protected_resource))
        .route("/.well-known/oauth-authorization-server", get(metadata::authorization_server))
        .route("/.well-known/jwks.json", get(metadata::jwks))
        // Token requests are small forms; cap them well below the MCP body cap.
        .route("/oauth/token", axum::routing::post(metadata::token).layer(axum::extract::DefaultBodyLimit::max(16 * 1024)))
        .with_state(state)
}

/// The six steps of the module docs, then rmcp.
async fn mcp_entry(State(state): State<AppState>, request: Request) -> Response {
    // 1. Host and Origin, before anything else.
    if let Err(reason) = check_host_and_origin(&state.settings, request.headers()) {
        tracing::warn!(reason, "request refused by Host/Origin allow-list");
        return json_rpc_error(StatusCode::FORBIDDEN, -32000, &format!("Forbidden: {reason}"), Value::Null);
    }
    // 2. Authentication.
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let principal = match state.resource_server.authenticate(authorization).await {
        Ok(principal) => principal,
        Err(error) => {
            state.gateway.metrics.record_auth_rejection(error.reason());
            return unauthorized(&state.settings, error);
        }
    };
    // 3. Session binding.
    let session_id = request.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(id) = &session_id {
        match state.bindings.check(id, &principal.binding_key()) {
            Binding::Owned => {}
            Binding::Foreign => {
                tracing::warn!(subject = %principal.subject, "session presented by a principal that does not own it");
                return json_rpc_error(StatusCode::NOT_FOUND, -32001, "Session not found", Value::Null);
            }
            Binding::Unbound => {
                return json_rpc_error(StatusCode::NOT_FOUND, -32001, "Session not found", Value::Null);
            }
        }
    }
    let method = request.method().clone();
    let (mut parts, body) = request.into_parts();
    let mut is_initialize = false;
    let mut initialize_params = None;
    let body = if method == Method::POST {
        // 4. Body cap and JSON.
        let bytes = match Limited::new(body, state.settings.max_body_bytes).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                let message = format!("request body exceeds {} bytes", state.settings.max_body_bytes);
                return json_rpc_error(StatusCode::PAYLOAD_TOO_LARGE, -32600, &message, Value::Null);
            }
            Err(error) if BodyTimeout::is_cause_of(&*error) => {
                let message = format!("request body not received within {}", humantime::format_duration(state.settings.request_body_timeout));
                // The rest of the body may still come: the connection cannot carry another
                // request, and says so (RFC 9110 §15.5.9).
                let mut response = json_rpc_error(StatusCode::REQUEST_TIMEOUT, -32600, &message, Value::Null);
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return response;
            }
            Err(_) => return json_rpc_error(StatusCode::BAD_REQUEST, -32700, "Parse error: body could not be read", Value::Null),
        };
        let envelope = match parse_envelope(&bytes) {
            Ok(envelope) => envelope,
            Err(response) => return *response,
        };
        // 5. Rate limit: JSON-RPC requests only (module docs of `crate::limits`).
        if state.limits.enabled()
            && let (Some(method), Some(id)) = (envelope.method.as_deref(), envelope.id.as_ref())
            && let Err(wait) = state.limits.check(principal.binding_key())
        {
            return rate_limited(&state, &principal, method, id.clone(), wait);
        }
        is_initialize = envelope.method.as_deref() == Some("initialize");
        if is_initialize {
            initialize_params = envelope.params.clone();
        }
        // 6. Scope step-up for calls, decided by the same policy the router applies.
        if let Some(method) = envelope.method.as_deref()
            && let Some(missing) = state.gateway.preflight(&principal, method, envelope.params.as_ref())
        {
            state.gateway.metrics.record_policy_denial("insufficient_scope");
            return insufficient_scope(&state.settings, &missing, envelope.id.unwrap_or(Value::Null));
        }
        // `initialize` in the plain case is the transport's: no rmcp state until needed.
        if is_initialize
            && session_id.is_none()
            && let Some((id, params)) = gateway_initialize(&parts.headers, &envelope)
        {
            return initialize(&state, principal, &parts.headers, id, params, initialize_params).await;
        }
        // The client's `notifications/initialized` after such an `initialize`: rmcp replays
        // the handshake itself when it builds the session (before or after this arrives).
        if let Some(id) = &session_id
            && envelope.method.as_deref() == Some("notifications/initialized")
            && envelope.id.is_none()
            && plain_headers(&parts.headers)
            && state.initialize_states.contains(id)
        {
            return StatusCode::ACCEPTED.into_response();
        }
        // The direct path, for an established session.
        if let Some(id) = &session_id
            && let Some(direct) = state.direct.session(id)
        {
            match direct_route(&parts.headers, envelope) {
                Direct::Call { id, params } => {
                    let reply = state.direct.call_tool(direct, principal, &parts.headers, id, params).await;
                    return direct_response(reply);
                }
                Direct::Cancel(request_id) if state.direct.cancel(&direct, &request_id) => {
                    return StatusCode::ACCEPTED.into_response();
                }
                Direct::Answer { id, message } => {
                    if let Some(answered) = state.direct.answer(&direct, &id, message).await {
                        return match answered {
                            Ok(()) => StatusCode::ACCEPTED.into_response(),
                            Err(reason) => {
                                tracing::warn!(%reason, "relaying the client's answer upstream failed");
                                json_rpc_error(StatusCode::BAD_GATEWAY, i64::from(crate::upstream::UPSTREAM_UNAVAILABLE), "upstream unavailable", Value::Null)
                            }
                        };
                    }
                }
                Direct::ListTools { id, meta } => {
                    let result = state.gateway.list_tools(principal, &parts.headers, &id, &meta, session_id.as_deref().unwrap_or_default()).await;
                    return local_response(&id, result);
                }
                Direct::Ping(id) => {
                    let result = state.gateway.ping(principal, &parts.headers, &id, session_id.as_deref().unwrap_or_default()).await;
                    return local_response(&id, result.map(|()| json!({})));
                }
                Direct::SetLevel(params) => state.direct.set_level(&direct, params),
                Direct::Cancel(_) | Direct::Rmcp => {}
            }
        }
        Body::from(bytes)
    } else {
        body
    };
    let binding_key = principal.binding_key();
    parts.extensions.insert(principal);
    let request = Request::from_parts(parts, body);
    // A session the transport initialized is restored by rmcp at its first request here; that
    // request goes alone (`InitializeStates`), later ones straight through.
    let gate = session_id.as_deref().and_then(|id| state.initialize_states.restore_gate(id));
    let response = match gate {
        Some(gate) => {
            let mut restored = gate.lock().await;
            if *restored {
                drop(restored);
                state.mcp.handle(request).await
            } else {
                let response = state.mcp.handle(request).await;
                *restored = !response.status().is_server_error();
                response
            }
        }
        None => state.mcp.handle(request).await,
    };
    let (parts, body) = response.into_parts();
    if is_initialize
        && session_id.is_none()
        && let Some(new_id) = parts.headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok())
    {
        state.open_session(new_id, binding_key, initialize_params.as_ref());
    }
    if let Some(id) = &session_id {
        if method == Method::DELETE && parts.status.is_success() {
            state.end_session(id);
        } else if !state.bindings.is_bound(id) {
            // Ended (DELETE, idle sweep) while this request was with rmcp, which may have
            // restored it meanwhile: close that state too, so that nothing outlives the session.
            state.close_rmcp_session(id).await;
        }
    }
    Response::from_parts(parts, Body::new(body))
}

/// The JSON-RPC envelope fields the transport needs.
#[derive(Deserialize)]
struct Envelope {
    id: Option<Value>,
    method: Option<String>,
    params: Option<Value>,
    result: Option<Value>,
    error: Option<Value>,
}

/// Where a POST in a session with direct-path state goes.
enum Direct {
    /// `tools/call` on the direct path.
    Call { id: Value, params: serde_json::Map<String, Value> },
    /// `notifications/cancelled` for this request id (direct if it names a direct call).
    Cancel(Value),
    /// A JSON-RPC response (direct if it answers a request relayed on the direct path).
    Answer { id: Value, message: Value },
    /// `tools/list`, answered from the catalog without rmcp.
    ListTools { id: rmcp::model::RequestId, meta: rmcp::model::RequestMetaObject },
    /// `ping`, answered without rmcp.
    Ping(rmcp::model::RequestId),
    /// `logging/setLevel`: recorded for the direct path's upstream sessions, then to rmcp.
    SetLevel(Value),
    /// Everything else.
    Rmcp,
}

/// Routes a POST: the direct path takes only the plain case — Accept naming both JSON and
/// SSE, a JSON Content-Type, a known `MCP-Protocol-Version` (or none), and no task
/// augmentation — so that every malformed or unusual request gets rmcp's answer.
fn direct_route(headers: &http::HeaderMap, envelope: Envelope) -> Direct {
    if !plain_headers(headers) {
        return Direct::Rmcp;
    }
    match (envelope.method.as_deref(), envelope.id, envelope.params) {
        (Some("tools/call"), Some(id), Some(Value::Object(params))) if !params.contains_key("task") => Direct::Call { id, params },
        (Some(method @ ("tools/list" | "ping")), Some(id), params) if local_answer_allowed(headers, params.as_ref()) => {
            let Ok(id) = serde_json::from_value(id) else { return Direct::Rmcp };
            if method == "ping" {
                return Direct::Ping(id);
            }
            // Parameters that do not parse get rmcp's answer (-32602), not a list.
            match serde_json::from_value::<Option<rmcp::model::PaginatedRequestParams>>(params.unwrap_or(Value::Null)) {
                Ok(params) => Direct::ListTools { id, meta: params.and_then(|p| p.meta).unwrap_or_default() },
                Err(_) => Direct::Rmcp,
            }
        }
        (Some("logging/setLevel"), Some(_), Some(params)) => Direct::SetLevel(params),
        (Some("notifications/cancelled"), None, Some(params)) => match params.get("requestId") {
            Some(request_id) => Direct::Cancel(request_id.clone()),
            None => Direct::Rmcp,
        },
        (None, Some(id), None) if envelope.result.is_some() || envelope.error.is_some() => {
            let mut message = serde_json::Map::new();
            message.insert("jsonrpc".into(), Value::String("2.0".into()));
            message.insert("id".into(), id.clone());
            if let Some(result) = envelope.result {
                message.insert("result".into(), result);
            }
            if let Some(error) = envelope.error {
                message.insert("error".into(), error);
            }
            Direct::Answer { id, message: Value::Object(message) }
        }
        _ => Direct::Rmcp,
    }
}

/// Whether a POST's headers are the plain case the transport answers without rmcp: Accept
/// naming both JSON and SSE, a JSON Content-Type, and a known `MCP-Protocol-Version` or none.
fn plain_headers(headers: &http::HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
    let accept = text(header::ACCEPT);
    accept.contains("application/json")
        && accept.contains("text/event-stream")
        && text(header::CONTENT_TYPE).starts_with("application/json")
        && headers.get("mcp-protocol-version").is_none_or(|v| {
            rmcp::model::ProtocolVersion::KNOWN_VERSIONS.iter().any(|known| known.as_str().as_bytes() == v.as_bytes())
        })
}

/// Whether a `ping` or `tools/list` may be answered by the transport: the session's own
/// revision (no `MCP-Protocol-Version`, or a stateful one), and no per-request protocol keys
/// in `_meta` (SEP-2575: rmcp validates those, or serves the request statelessly).
fn local_answer_allowed(headers: &http::HeaderMap, params: Option<&Value>) -> bool {
    let version_ok = headers.get("mcp-protocol-version").is_none_or(|v| GATEWAY_INITIALIZE_VERSIONS.iter().any(|known| known.as_bytes() == v.as_bytes()));
    let meta_ok = match params.and_then(|p| p.get("_meta")) {
        None => true,
        Some(Value::Object(meta)) => !meta.keys().any(|key| key.starts_with("io.modelcontextprotocol/")),
        Some(_) => false,
    };
    version_ok && meta_ok && params.is_none_or(Value::is_object)
}

/// Protocol revisions whose `initialize` the transport answers itself (the stateful ones;
/// 2026-07-28 and anything newer or unknown go to rmcp).
const GATEWAY_INITIALIZE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The id and parameters of an `initialize` the transport answers itself: plain headers, no
/// `Mcp-Method` header, an id, parameters that parse, a stateful protocol revision, and an
/// `MCP-Protocol-Version` header that is absent or names that revision. Anything else goes
/// to rmcp, which answers the odd cases (a header contradicting the body → -32600).
fn gateway_initialize(headers: &http::HeaderMap, envelope: &Envelope) -> Option<(rmcp::model::RequestId, rmcp::model::InitializeRequestParams)> {
    if !plain_headers(headers) || headers.contains_key("mcp-method") {
        return None;
    }
    let id = serde_json::from_value(envelope.id.clone()?).ok()?;
    let params: rmcp::model::InitializeRequestParams = serde_json::from_value(envelope.params.clone()?).ok()?;
    let version = params.protocol_version.as_str();
    let header_agrees = headers.get("mcp-protocol-version").is_none_or(|v| v.as_bytes() == version.as_bytes());
    (header_agrees && GATEWAY_INITIALIZE_VERSIONS.contains(&version)).then_some((id, params))
}

/// Answers `initialize` without rmcp: audits it like rmcp's path, mints the session id
/// (UUID v4, as rmcp does), binds it to the principal, and records the parameters rmcp will
/// restore the session from ([`crate::session`] module docs). One JSON body (MCP
/// 2025-11-25 basic/transports allows JSON or SSE).
async fn initialize(
    state: &AppState,
    principal: auth::Principal,
    headers: &http::HeaderMap,
    id: rmcp::model::RequestId,
    params: rmcp::model::InitializeRequestParams,
    raw_params: Option<Value>,
) -> Response {
    let binding_key = principal.binding_key();
    let result = state.gateway.initialize(principal, headers, &id, &params).await;
    let failed = result.is_err();
    let mut response = local_response(&id, result);
    if failed {
        return response;
    }
    let session = uuid::Uuid::new_v4().to_string();
    state.initialize_states.insert(&session, params);
    state.open_session(&session, binding_key, raw_params.as_ref());
    if let Ok(value) = HeaderValue::from_str(&session) {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    response
}

/// The JSON-RPC response to a request the gateway answered itself (one JSON body).
fn local_response<T: serde::Serialize>(id: &rmcp::model::RequestId, result: Result<T, rmcp::ErrorData>) -> Response {
    /// Serialized straight from the typed result (no intermediate `Value`: a list of a
    /// thousand tools is written once).
    #[derive(serde::Serialize)]
    struct Reply<'a, T> {
        jsonrpc: &'static str,
        id: &'a rmcp::model::RequestId,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<T>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<rmcp::ErrorData>,
    }
    let (result, error) = match result {
        Ok(result) => (Some(result), None),
        Err(error) => (None, Some(error)),
    };
    match serde_json::to_vec(&Reply { jsonrpc: "2.0", id, result, error }) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "serializing a local answer failed");
            json_rpc_error(StatusCode::INTERNAL_SERVER_ERROR, -32603, "Internal error", Value::Null)
        }
    }
}

/// The HTTP response for a direct call: one JSON body, or an SSE stream (MCP 2025-11-25
/// basic/transports: either is allowed for a request).
fn direct_response(reply: DirectReply) -> Response {
    match reply {
        DirectReply::Json(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        DirectReply::Events(messages) => {
            use futures::StreamExt as _;
            let events = messages.map(|data| {
                let mut event = Vec::with_capacity(data.len() + 24);
                event.extend_from_slice(b"event: message\n");
                for line in data.split(|b| *b == b'\n') {
                    event.extend_from_slice(b"data: ");
                    event.extend_from_slice(line);
                    event.push(b'\n');
                }
                event.push(b'\n');
                Ok::<_, std::convert::Infallible>(Bytes::from(event))
            });
            (
                [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
                Body::from_stream(events),
            )
                .into_response()
        }
    }
}

fn parse_envelope(bytes: &Bytes) -> Result<Envelope, Box<Response>> {
    // An object is read straight into the envelope: a syntax error is a parse error, valid
    // JSON that is no envelope (a member of the wrong type, a duplicate member) an invalid
    // request. Anything else takes the generic parse below, which names what it is.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return serde_json::from_slice::<Envelope>(bytes).map_err(|error| {
            Box::new(match error.classify() {
                serde_json::error::Category::Data => {
                    let detail = error.to_string();
                    let message = match detail.strip_prefix("duplicate field ") {
                        Some(rest) => format!("Invalid Request: duplicate member {}", rest.split(" at ").next().unwrap_or(rest)),
                        None => "Invalid Request: not a JSON-RPC 2.0 message".to_owned(),
                    };
                    json_rpc_error(StatusCode::BAD_REQUEST, -32600, &message, Value::Null)
                }
                _ => json_rpc_error(StatusCode::BAD_REQUEST, -32700, &format!("Parse error: {error}"), Value::Null),
            })
        });
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|error| {
        let message = format!("Parse error: {error}");
        Box::new(json_rpc_error(StatusCode::BAD_REQUEST, -32700, &message, Value::Null))
    })?;
    match value {
        Value::Object(_) => serde_json::from_value(value).map_err(|_| {
            Box::new(json_rpc_error(StatusCode::BAD_REQUEST, -32600, "Invalid Request: not a JSON-RPC 2.0 message", Value::Null))
        }),
        Value::Array(_) => Err(Box::new(json_rpc_error(
            StatusCode::BAD_REQUEST,
            -32600,
            "Invalid Request: JSON-RPC batches are not supported; send one message per request",
            Value::Null,
        ))),
        _ => Err(Box::new(json_rpc_error(StatusCode::BAD_REQUEST, -32600, "Invalid Request: not a JSON-RPC 2.0 message", Value::Null))),
    }
}

/// A JSON-RPC error response with an HTTP status.
fn json_rpc_error(status: StatusCode, code: i64, message: &str, id: Value) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// HTTP 429 for a request over its principal's budget, `wait` until the next one would be
/// allowed: `Retry-After` in whole seconds (RFC 9110 §10.2.3; RFC 6585 §4) and a JSON-RPC
/// error naming the wait. Counted in `portcullis_rate_limit_rejections_total` and as a
/// `rate_limited` request; the access log records it. Not audited: it never reached the
/// router (like a refused token).
fn rate_limited(state: &AppState, principal: &auth::Principal, method: &str, id: Value, wait: std::time::Duration) -> Response {
    let seconds = crate::limits::retry_after_seconds(wait);
    // The method as a metric label: a known method name or `other`, never the client's text.
    let method = method_label(method);
    let metrics = &state.gateway.metrics;
    metrics.record_rate_limit_rejection();
    metrics.record_request(method, Outcome::RateLimited, std::time::Duration::ZERO);
    AccessLog {
        principal: Some(&principal.subject),
        client_id: principal.client_id.as_deref(),
        method,
        target: None,
        outcome: Outcome::RateLimited,
        latency: std::time::Duration::ZERO,
    }
    .emit();
    let message = format!("rate limit exceeded; retry after {seconds} s");
    let mut response = json_rpc_error(StatusCode::TOO_MANY_REQUESTS, crate::limits::RATE_LIMITED, &message, id);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

fn unauthorized(settings: &Settings, error: auth::Error) -> Response {
    tracing::info!(reason = error.reason(), "token refused");
    let scope = settings.auth.scopes_supported.join(" ");
    // RFC 6750 §3.1: no error code when the request carried no credentials.
    let code = (error != auth::Error::Missing).then_some("invalid_token");
    let scope = (!scope.is_empty()).then_some(scope.as_str());
    let challenge = auth::challenge(&settings.resource_metadata_url(), code, scope);
    let body = match code {
        Some(code) => json!({"error": code, "error_description": error.to_string()}),
        None => json!({"error": "invalid_request", "error_description": error.to_string()}),
    };
    let mut response = (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn insufficient_scope(settings: &Settings, missing: &[String], id: Value) -> Response {
    let scope = missing.join(" ");
    let challenge = auth::challenge(&settings.resource_metadata_url(), Some("insufficient_scope"), Some(&scope));
    let message = format!("insufficient_scope: this call needs scope {scope}");
    let mut response = json_rpc_error(StatusCode::FORBIDDEN, -32003, &message, id);
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Checks `Host` and `Origin` against the configured allow-lists.
fn check_host_and_origin(settings: &Settings, headers: &http::HeaderMap) -> Result<(), &'static str> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).ok_or("missing Host header")?;
    if !host_allowed(host, &settings.allowed_hosts) {
        return Err("Host header is not allowed");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| "invalid Origin header")?;
        if !origin_allowed(origin, &settings.allowed_origins) {
            return Err("Origin header is not allowed");
        }
    }
    Ok(())
}

fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        return match rest.split_once(']') {
            Some((host, port)) => (host, port.strip_prefix(':')),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (authority, None),
    }
}

fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let (name, _) = split_host_port(host);
    allowed.iter().any(|entry| {
        let entry_name = entry.trim_start_matches('[').trim_end_matches(']');
        entry.eq_ignore_ascii_case(host) || (!entry.contains("]:") && split_host_port(entry).1.is_none() && entry_name.eq_ignore_ascii_case(name))
    })
}

fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let Ok(url) = url::Url::parse(origin) else { return false };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else { return false };
    allowed.iter().any(|entry| {
        let Some((scheme, rest)) = entry.split_once("://") else { return false };
        let (entry_host, entry_port) = split_host_port(rest);
        let entry_host = entry_host.trim_start_matches('[').trim_end_matches(']');
        let host = host.trim_start_matches('[').trim_end_matches(']');
        scheme.eq_ignore_ascii_case(url.scheme())
            && entry_host.eq_ignore_ascii_case(host)
            && match entry_port {
                Some("*") => true,
                Some(p) => p.parse::<u16>().ok() == Some(port),
                None => Some(port) == default_port(scheme),
            }
    })
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
