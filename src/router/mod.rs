//! Router: the MCP server the clients talk to. Dispatches each JSON-RPC request to the
//! catalog (lists), to one upstream (calls), or answers locally (`ping`).
//!
//! One [`SessionHandler`] exists per client session that reaches rmcp (rmcp creates it at
//! `initialize`, or when it restores a session the transport initialized; a session that
//! only calls tools never gets one: see [`crate::session`]). Every
//! request goes through the same ordered steps (the transport already authenticated it,
//! checked its session binding and its scopes):
//! 1. `RequestCtx::begin`: recover the [`Principal`] (missing → internal error: fail closed)
//!    and open the server span, parented to the client's W3C trace context;
//! 2. resolve the target in the catalog (unknown → the "unknown" error for its kind);
//! 3. ask policy; a denial answers exactly like an unknown target, a missing scope with
//!    `insufficient_scope`;
//! 4. write the audit intent row and wait until it is durable (fail closed: `-32052`);
//! 5. forward through this session's connection to the target's upstream, with the
//!    [`crate::policy::Grant`] as proof, in a client span, within the upstream's timeout;
//! 6. sanitize what comes back with the guard (tool results, resources, prompts);
//! 7. `RequestCtx::finish`: outcome row, access log line, metrics, span status.
//!
//! Lists are answered from the catalog, filtered by the same policy decision, and audited
//! the same way.

// Logging (`logging/setLevel`, `notifications/message`) is deprecated by SEP-2577 for
// 2026-07-28 but is part of every earlier revision the gateway serves, so it is relayed.
#![allow(deprecated)]

mod ctx;
mod direct;
mod sync;

use std::{collections::HashMap, sync::Arc, time::Instant};

use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, ClientConfig, ClientRequest, CompleteRequestParams,
        CompleteResult, GetPromptRequestParams, GetPromptResponse, InitializeRequestParams, InitializeResult,
        ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
        PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, Reference, Request,
        ServerCapabilities, ServerConfig, ServerResult, SetLevelRequestParams, SubscribeRequestParams,
        UnsubscribeRequestParams,
    },
    service::{NotificationContext, RequestContext},
};
use serde_json::Value;
use tokio::sync::{Mutex, OnceCell, broadcast};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument as _;

pub use direct::{DirectCalls, DirectReply, DirectSession, REQUEST_CANCELLED};
pub use sync::{CatalogSync, ListChanged, Vetting};
use ctx::RequestCtx;

use crate::{
    audit::AuditLog,
    auth::Principal,
    catalog::{CatalogStore, ResourceRoute},
    config::Settings,
    guard::Guard,
    policy::{Decision, Policy, Target, TargetKind},
    telemetry::{McpSpanExt as _, Metrics, client_span, inject_meta},
    upstream::{
        self, Connection, Origin, RelayTarget, Upstream,
        credentials::SessionIdentity,
    },
};

/// Shared state of the gateway: settings, policy, catalog and upstreams.
pub struct Gateway {
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// Policy engine.
    pub policy: Policy,
    /// Current catalog.
    pub catalog: Arc<CatalogStore>,
    /// Upstreams by name.
    pub upstreams: HashMap<Arc<str>, Arc<Upstream>>,
    /// Catalog change notifications for client sessions.
    pub list_changed: broadcast::Sender<ListChanged>,
    /// Where upstream list-change announcements go (the catalog sync).
    pub catalog_events: upstream::CatalogEvents,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The audit trail (write-ahead intents, outcomes); `None` only when `[audit] url = "none"`.
    pub audit: Option<Arc<AuditLog>>,
    /// The guard that sanitizes what upstreams send back.
    pub guard: Arc<Guard>,
    /// rmcp peers of initialized client sessions (for the direct path's relaying).
    pub client_peers: ClientPeers,
}

/// The rmcp peer of each initialized client session, by MCP session id: where the direct
/// path relays what an upstream sends outside any call (on its standalone SSE stream) —
/// log messages, `resources/updated`, server-to-client requests. A session has a slot from
/// [`ClientPeers::open`] (the direct path's session open) and a peer once rmcp serves it
/// (`notifications/initialized`, also when rmcp restores a session the transport
/// initialized); until then there is no client stream to relay to, and
/// [`ClientPeers::wait`] holds the direct path's upstream standalone streams unopened.
/// (`P` is the peer type: rmcp's, or a stand-in in unit tests.)
pub struct ClientPeers<P = rmcp::service::Peer<RoleServer>>(Arc<std::sync::Mutex<HashMap<String, tokio::sync::watch::Sender<Option<P>>>>>);

impl<P> Default for ClientPeers<P> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<P> Clone for ClientPeers<P> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

// === impl ClientPeers ===

impl<P: Clone> ClientPeers<P> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio::sync::watch::Sender<Option<P>>>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the slot of session `id` (no peer yet).
    pub fn open(&self, id: &str) {
        self.lock().entry(id.to_owned()).or_insert_with(|| tokio::sync::watch::channel(None).0);
    }

    /// Registers the peer of session `id`, waking its waiters; ignored when the session has
    /// no slot (never opened, or already ended: a late registration must not revive it).
    pub fn insert(&self, id: &str, peer: P) {
        if let Some(slot) = self.lock().get(id) {
            slot.send_replace(Some(peer));
        }
    }

    /// The peer of session `id`.
    pub fn get(&self, id: &str) -> Option<P> {
        self.lock().get(id).and_then(|slot| slot.borrow().clone())
    }

    /// Waits until session `id` has a peer; `None` when the session has no slot or ends
    /// first.
    pub async fn wait(&self, id: &str) -> Option<P> {
        let mut registered = self.lock().get(id)?.subscribe();
        registered.wait_for(Option::is_some).await.ok().and_then(|peer| peer.clone())
    }

    /// Forgets session `id` (its waiters get `None`).
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// The MCP server for one client session.
pub struct SessionHandler {
    gateway: Arc<Gateway>,
    state: Arc<SessionState>,
}

struct SessionState {
    client: OnceCell<ClientConfig>,
    connections: HashMap<Arc<str>, Mutex<Option<Arc<Connection>>>>,
    log_level: std::sync::Mutex<Option<rmcp::model::LoggingLevel>>,
    /// Whether `notifications/initialized` was handled (its relay task runs once).
    initialized: std::sync::atomic::AtomicBool,
    /// Stops this session's background tasks when the session ends.
    _stop: DropGuard,
    stop: CancellationToken,
}

// === impl SessionHandler ===

impl SessionHandler {
    /// A handler for a new client session.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        let stop = CancellationToken::new();
        let connections = gateway.upstreams.keys().map(|name| (name.clone(), Mutex::new(None))).collect();
        let state = SessionState {
            client: OnceCell::new(),
            connections,
            log_level: std::sync::Mutex::new(None),
            initialized: std::sync::atomic::AtomicBool::new(false),
            _stop: stop.clone().drop_guard(),
            stop,
        };
        Self { gateway, state: Arc::new(state) }
    }

    /// This session's connection to `upstream`, opened on first use and reopened if the
    /// upstream's session ended.
    async fn connection(
        &self,
        upstream: &Arc<str>,
        principal: &Principal,
        context: &RequestContext<RoleServer>,
    ) -> Result<Arc<Connection>, upstream::Error> {
        let (Some(slot), Some(target)) = (self.state.connections.get(upstream), self.gateway.upstreams.get(upstream)) else {
            return Err(upstream::Error::Unavailable { upstream: upstream.clone(), reason: "not configured".into() });
        };
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(connection.clone());
        }
        // The session is bound to one issuer + subject (transport), so the identity this
        // connection asserts upstream is that principal's for the connection's lifetime.
        let identity = SessionIdentity { principal: principal.clone(), session_hash: session_id(context).map(|id| crate::session::hash_id(&id)) };
        let relay = RelayTarget::Session(context.peer.clone(), self.gateway.catalog_events.clone());
        let connection = Arc::new(target.connect(self.state.client.get(), relay, Some(identity)).await?);
        let level = *self.state.log_level.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(level) = level {
            let request = ClientRequest::SetLevelRequest(Request::new(SetLevelRequestParams::new(level)));
            if let Err(error) = connection.send_unscoped(request).await {
                tracing::debug!(%upstream, %error, "upstream refused logging/setLevel");
            }
        }
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Steps 3–5 of the module docs for one target: policy, durable intent, forward.
    async fn forward(
        &self,
        ctx: &mut RequestCtx,
        target: Target<'_>,
        request: ClientRequest,
        context: &RequestContext<RoleServer>,
        arguments: Option<Value>,
    ) -> Result<ServerResult, ErrorData> {
        ctx.upstream = Some(Arc::from(target.upstream));
        ctx.span.record_upstream(target.upstream);
        let grant = match self.gateway.policy.decide(&ctx.principal, target) {
            Decision::Allow(grant) => {
                ctx.allow(&grant);
                grant
            }
            Decision::DenyMissingScopes(scopes) => {
                ctx.deny(None);
                ctx.record_intent(&self.gateway, arguments).await?;
                return Err(crate::policy::insufficient_scope_error(&scopes));
            }
            Decision::Deny { rule } => {
                ctx.deny(rule.map(|r| r.to_string()));
                ctx.record_intent(&self.gateway, arguments).await?;
                return Err(hidden(target.kind, target.name));
            }
        };
        // Write-ahead: the intent is durable before anything reaches the upstream.
        ctx.record_intent(&self.gateway, arguments).await?;
        let upstream: Arc<str> = Arc::from(grant.upstream());
        let connection = self.connection(&upstream, &ctx.principal, context).await.map_err(|e| upstream_error(&e))?;
        let span = client_span(&upstream, ctx.method, Some(target.name));
        let mut meta = context.meta.clone();
        // The upstream continues the client's trace (params._meta here; the HTTP header is
        // copied from it by the upstream HTTP client).
        inject_meta(&span, &mut meta);
        let origin = Origin {
            request_id: Some(context.id.clone()),
            meta,
            target: format!("{}:{}/{}", target.kind.as_str(), target.upstream, target.name),
        };
        let started = Instant::now();
        let result = connection.forward(&grant, request, &origin).instrument(span.clone()).await;
        self.gateway.metrics.record_upstream_call(&upstream, ctx.method, started.elapsed());
        result.map_err(|error| {
            if let upstream::Error::Unavailable { .. } = error {
                tracing::warn!(%error, "upstream call failed");
            }
            let error = upstream_error(&error);
            span.record_error(upstream_error_class(&error));
            error
        })
    }

    /// Answers a request the gateway handles itself (lists, `initialize`, `ping`,
    /// `logging/setLevel`): allowed, audited, timed.
    async fn local<T>(
        &self,
        method: &'static str,
        context: &RequestContext<RoleServer>,
        work: impl AsyncFnOnce(&mut RequestCtx) -> Result<T, ErrorData>,
    ) -> Result<T, ErrorData> {
        let ctx = RequestCtx::begin(method, None, context)?;
        self.gateway.run_local(ctx, work).await
    }
}

/// The client's MCP session id, from the HTTP request rmcp handed over.
fn session_id(context: &RequestContext<RoleServer>) -> Option<String> {
    let parts = context.extensions.get::<http::request::Parts>()?;
    parts.headers.get("mcp-session-id")?.to_str().ok().map(str::to_owned)
}

/// A tool's policy target, with its annotations and whether its upstream is trusted for them.
fn tool_target<'a>(gateway: &Gateway, entry: &'a crate::catalog::Entry<rmcp::model::Tool>) -> Target<'a> {
    let trusted = gateway.upstreams.get(&entry.upstream).is_some_and(|u| u.settings().trusted_annotations);
    Target::new(TargetKind::Tool, &entry.upstream, &entry.original).with_annotations(entry.item.annotations.as_ref(), trusted)
}

// === impl Gateway ===

impl Gateway {
    /// Answers an `initialize` the transport takes itself (before any rmcp session exists;
    /// [`crate::session::InitializeStates`]): the same span, policy record and durable audit
    /// intent as rmcp's path, and the same result ([`SessionHandler`]'s server info, with the
    /// protocol version negotiated as rmcp negotiates it: MCP 2025-11-25 basic/lifecycle
    /// §Version Negotiation).
    ///
    /// # Errors
    /// `-32052` when the audit store cannot take the intent (fail closed); an invalid-params
    /// error when no protocol version can be agreed.
    pub async fn initialize(
        &self,
        principal: Principal,
        headers: &http::HeaderMap,
        id: &rmcp::model::RequestId,
        params: &InitializeRequestParams,
    ) -> Result<InitializeResult, ErrorData> {
        let meta = params.meta.clone().unwrap_or_default();
        self.answer_local("initialize", principal, headers, id, &meta, None, async |_| ServerInfo.negotiate_initialize(params)).await
    }

    /// Answers `tools/list` for a session the transport serves without rmcp: the same
    /// policy-filtered catalog, span and audit rows as [`SessionHandler`]'s `tools/list` (all
    /// tools in one page, as there). `session_id` is the client's (raw; hashed where stored).
    ///
    /// # Errors
    /// `-32052` when the audit store cannot take the intent (fail closed).
    pub async fn list_tools(
        &self,
        principal: Principal,
        headers: &http::HeaderMap,
        id: &rmcp::model::RequestId,
        meta: &rmcp::model::RequestMetaObject,
        session_id: &str,
    ) -> Result<ListToolsResult, ErrorData> {
        self.answer_local("tools/list", principal, headers, id, meta, Some(session_id), async |ctx| {
            Ok(ListToolsResult::with_all_items(self.visible_tools(&ctx.principal)))
        })
        .await
    }

    /// Answers `ping` for a session the transport serves without rmcp (audited like rmcp's).
    ///
    /// # Errors
    /// `-32052` when the audit store cannot take the intent (fail closed).
    pub async fn ping(&self, principal: Principal, headers: &http::HeaderMap, id: &rmcp::model::RequestId, session_id: &str) -> Result<(), ErrorData> {
        self.answer_local("ping", principal, headers, id, &Default::default(), Some(session_id), async |_| Ok(())).await
    }

    /// The tools `principal` may see: the catalog filtered by policy (deny by default).
    fn visible_tools(&self, principal: &Principal) -> Vec<rmcp::model::Tool> {
        let catalog = self.catalog.current();
        catalog.tools().iter().filter(|e| self.policy.permits(principal, tool_target(self, e))).map(|e| e.item.clone()).collect()
    }

    /// A request the transport hands over for the gateway to answer itself (outside rmcp).
    #[allow(clippy::too_many_arguments)]
    async fn answer_local<T>(
        &self,
        method: &'static str,
        principal: Principal,
        headers: &http::HeaderMap,
        id: &rmcp::model::RequestId,
        meta: &rmcp::model::RequestMetaObject,
        session_id: Option<&str>,
        work: impl AsyncFnOnce(&mut RequestCtx) -> Result<T, ErrorData>,
    ) -> Result<T, ErrorData> {
        let ctx = RequestCtx::start(method, None, principal, Some(headers), meta, id, session_id.map(str::to_owned));
        self.run_local(ctx, work).await
    }

    /// The steps of a request the gateway answers itself (lists, `initialize`, `ping`): an
    /// allowing decision by the gateway, the durable audit intent, `work`, the outcome.
    async fn run_local<T>(&self, mut ctx: RequestCtx, work: impl AsyncFnOnce(&mut RequestCtx) -> Result<T, ErrorData>) -> Result<T, ErrorData> {
        let method = ctx.method;
        ctx.allow_local(method);
        let span = ctx.span.clone();
        let result = async {
            ctx.record_intent(self, None).await?;
            work(&mut ctx).await
        }
        .instrument(span)
        .await;
        ctx.finish(self, &result);
        result
    }

    /// A shared handle on the client peers (for background tasks).
    pub fn client_peers_handle(&self) -> ClientPeers {
        self.client_peers.clone()
    }

    /// The scopes `principal` lacks for the target of a call, decided before rmcp sees the
    /// request so the transport can answer HTTP 403 `insufficient_scope` (RFC 6750 §3.1).
    /// `None` when the call is allowed, hidden or unknown: the router answers those.
    pub fn preflight(&self, principal: &Principal, method: &str, params: Option<&serde_json::Value>) -> Option<Vec<String>> {
        let catalog = self.catalog.current();
        let field = |name: &str| params.and_then(|p| p.get(name)).and_then(|v| v.as_str());
        let resource = |uri: &'_ str| match catalog.route_resource(uri) {
            ResourceRoute::Upstream(upstream) => Some(upstream),
            ResourceRoute::Ambiguous | ResourceRoute::Unknown => None,
        };
        let decision = match method {
            "tools/call" => {
                let entry = catalog.tool(field("name")?)?;
                self.policy.decide(principal, tool_target(self, entry))
            }
            "prompts/get" => {
                let entry = catalog.prompt(field("name")?)?;
                self.policy.decide(principal, Target::new(TargetKind::Prompt, &entry.upstream, &entry.original))
            }
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                let uri = field("uri")?;
                let upstream = resource(uri)?;
                self.policy.decide(principal, Target::new(TargetKind::Resource, &upstream, uri))
            }
            "completion/complete" => {
                let reference = params?.get("ref")?;
                match reference.get("type")?.as_str()? {
                    "ref/prompt" => {
                        let entry = catalog.prompt(reference.get("name")?.as_str()?)?;
                        self.policy.decide(principal, Target::new(TargetKind::Prompt, &entry.upstream, &entry.original))
                    }
                    "ref/resource" => {
                        let uri = reference.get("uri")?.as_str()?;
                        let upstream = resource(uri)?;
                        self.policy.decide(principal, Target::new(TargetKind::Resource, &upstream, uri))
                    }
                    _ => return None,
                }
            }
            _ => return None,
        };
        match decision {
            Decision::DenyMissingScopes(scopes) => Some(scopes),
            Decision::Allow(_) | Decision::Deny { .. } => None,
        }
    }
}

fn upstream_error(error: &upstream::Error) -> ErrorData {
    upstream::to_error_data(error)
}

/// The client span's `error.type` for a failed upstream call, from the JSON-RPC error the
/// client gets (one classification for rmcp's path and the direct path): `timeout`,
/// `unavailable` (unreachable), else `upstream_error` (the upstream's own error).
fn upstream_error_class(error: &ErrorData) -> &'static str {
    match i64::from(error.code.0) {
        code if code == i64::from(upstream::UPSTREAM_TIMEOUT) => "timeout",
        code if code == i64::from(upstream::UPSTREAM_UNAVAILABLE) => "unavailable",
        _ => "upstream_error",
    }
}

/// The error for an unknown target, also used for a denied one (they must be identical).
fn hidden(kind: TargetKind, name: &str) -> ErrorData {
    match kind {
        TargetKind::Tool => ErrorData::invalid_params(format!("Unknown tool: {name}"), None),
        TargetKind::Prompt => ErrorData::invalid_params(format!("Unknown prompt: {name}"), None),
        TargetKind::Resource => ErrorData::resource_not_found(
            format!("Resource {name} not found"),
            Some(serde_json::json!({"uri": name})),
        ),
    }
}

/// The error for a tool name that is not in the catalog: "definition changed; awaiting
/// approval" (or the guard's reason) when the guard withholds a tool this principal could
/// otherwise use, else exactly the unknown-tool error.
fn withheld_or_unknown(gateway: &Gateway, principal: &Principal, name: &str) -> ErrorData {
    let catalog = gateway.catalog.current();
    if let Some((entry, reason)) = catalog.withheld_tool(name)
        && gateway.policy.permits(principal, tool_target(gateway, entry))
    {
        return ErrorData::invalid_params(format!("Tool {name} is withheld: {reason}"), Some(serde_json::json!({"tool": name, "withheld": reason})));
    }
    hidden(TargetKind::Tool, name)
}

fn unexpected(upstream: &str) -> ErrorData {
    ErrorData::new(
        rmcp::model::ErrorCode(upstream::UPSTREAM_UNAVAILABLE),
        format!("upstream {upstream:?} sent an unexpected result"),
        Some(serde_json::json!({"upstream": upstream})),
    )
}

/// Converts an untyped upstream result into the expected result type (rmcp decodes results
/// without knowing the request, so a result may land in a sibling variant).
fn convert<T: serde::de::DeserializeOwned>(result: ServerResult, upstream: &str) -> Result<T, ErrorData> {
    let value = serde_json::to_value(result).map_err(|_| unexpected(upstream))?;
    serde_json::from_value(value).map_err(|_| unexpected(upstream))
}

/// What the gateway tells every client at `initialize`: the capabilities it serves and its
/// name. One definition for rmcp's path ([`SessionHandler`]) and the transport's
/// ([`Gateway::initialize`]).
fn server_info() -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_logging()
            .enable_completions()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources()
            .enable_resources_list_changed()
            .enable_resources_subscribe()
            .enable_tools()
            .enable_tool_list_changed()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(rmcp::model::Implementation::new("portcullis", env!("CARGO_PKG_VERSION")))
            .with_instructions("Portcullis MCP gateway: tools, resources and prompts of the allow-listed upstream servers this token may use.")
}

/// rmcp's `initialize` negotiation over [`server_info`], without a session.
struct ServerInfo;

impl ServerHandler for ServerInfo {
    fn get_info(&self) -> ServerConfig {
        server_info()
    }
}

impl ServerHandler for SessionHandler {
    fn get_info(&self) -> ServerConfig {
        server_info()
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        let set_up = || {
            context.peer.set_peer_info(request.clone());
            let _ = self.state.client.set(request.clone());
            self.negotiate_initialize(&request)
        };
        // rmcp restoring a session the transport initialized replays the handshake: the
        // client's `initialize` is already audited, so this one only sets up the session.
        if context.extensions.get::<rmcp::transport::streamable_http_server::session::SessionRestoreMarker>().is_some() {
            return set_up();
        }
        self.local("initialize", &context, async |_ctx| set_up()).await
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // The direct path relays upstream messages outside calls through this peer.
        let session = context.extensions.get::<http::request::Parts>().and_then(|p| p.headers.get("mcp-session-id")).and_then(|v| v.to_str().ok());
        if let Some(id) = session {
            self.gateway.client_peers.insert(id, context.peer.clone());
        }
        // Once per session: a client's own `initialized` after rmcp replayed the handshake
        // must not start a second relay.
        if self.state.initialized.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        // Relay catalog changes to this client until the session ends.
        let mut changes = self.gateway.list_changed.subscribe();
        let peer = context.peer.clone();
        let stop = self.state.stop.clone();
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    () = stop.cancelled() => return,
                    change = changes.recv() => change,
                };
                let sent = match change {
                    Ok(ListChanged::Tools) => peer.notify_tool_list_changed().await,
                    Ok(ListChanged::Prompts) => peer.notify_prompt_list_changed().await,
                    Ok(ListChanged::Resources) => peer.notify_resource_list_changed().await,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if sent.is_err() {
                    return;
                }
            }
        });
    }

    async fn ping(&self, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        self.local("ping", &context, async |_ctx| Ok(())).await
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.local("tools/list", &context, async |ctx| Ok(ListToolsResult::with_all_items(self.gateway.visible_tools(&ctx.principal)))).await
    }

    async fn call_tool(
        &self,
        mut request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let mut ctx = RequestCtx::begin("tools/call", Some(&request.name), &context)?;
        let span = ctx.span.clone();
        let result = async {
            let catalog = self.gateway.catalog.current();
            let arguments = request.arguments.clone().map(Value::Object);
            let Some(entry) = catalog.tool(&request.name) else {
                ctx.record_intent(&self.gateway, arguments).await?;
                return Err(withheld_or_unknown(&self.gateway, &ctx.principal, &request.name));
            };
            let target = tool_target(&self.gateway, entry);
            request.name = entry.original.clone().into();
            request.meta = None;
            let forwarded = self.forward(&mut ctx, target, ClientRequest::CallToolRequest(Request::new(request)), &context, arguments);
            let mut result = match forwarded.await? {
                ServerResult::CallToolResult(result) => result,
                ServerResult::InputRequiredResult(result) => return Ok(CallToolResponse::InputRequired(result)),
                ServerResult::CreateTaskResult(result) => return Ok(CallToolResponse::Task(result)),
                other => convert(other, &entry.upstream)?,
            };
            // Step 6: what the model will read is sanitized before it leaves the gateway.
            ctx.findings = Some(self.gateway.guard.sanitize_tool_result(&entry.upstream, &mut result));
            Ok(CallToolResponse::Complete(result))
        }
        .instrument(span)
        .await;
        ctx.finish(&self.gateway, &result);
        result
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        self.local("prompts/list", &context, async |ctx| {
            let catalog = self.gateway.catalog.current();
            let policy = &self.gateway.policy;
            let prompts = catalog
                .prompts()
                .iter()
                .filter(|e| policy.permits(&ctx.principal, Target::new(TargetKind::Prompt, &e.upstream, &e.original)))
                .map(|e| e.item.clone())
                .collect();
            Ok(ListPromptsResult::with_all_items(prompts))
        })
        .await
    }

    async fn get_prompt(
        &self,
        mut request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let mut ctx = RequestCtx::begin("prompts/get", Some(&request.name), &context)?;
        let span = ctx.span.clone();
        let result = async {
            let catalog = self.gateway.catalog.current();
            let arguments = request.arguments.clone().map(Value::Object);
            let Some(entry) = catalog.prompt(&request.name) else {
                ctx.record_intent(&self.gateway, arguments).await?;
                return Err(hidden(TargetKind::Prompt, &request.name));
            };
            let target = Target::new(TargetKind::Prompt, &entry.upstream, &entry.original);
            request.name = entry.original.clone();
            request.meta = None;
            let forwarded = self.forward(&mut ctx, target, ClientRequest::GetPromptRequest(Request::new(request)), &context, arguments);
            let mut result = match forwarded.await? {
                ServerResult::GetPromptResult(result) => result,
                ServerResult::InputRequiredResult(result) => return Ok(GetPromptResponse::InputRequired(result)),
                other => convert(other, &entry.upstream)?,
            };
            ctx.findings = Some(self.gateway.guard.sanitize_prompt(&entry.upstream, &mut result));
            Ok(GetPromptResponse::Complete(result))
        }
        .instrument(span)
        .await;
        ctx.finish(&self.gateway, &result);
        result
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.local("resources/list", &context, async |ctx| {
            let catalog = self.gateway.catalog.current();
            let policy = &self.gateway.policy;
            let resources = catalog
                .resources()
                .iter()
                .filter(|e| policy.permits(&ctx.principal, Target::new(TargetKind::Resource, &e.upstream, &e.original)))
                .map(|e| e.item.clone())
                .collect();
            Ok(ListResourcesResult::with_all_items(resources))
        })
        .await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.local("resources/templates/list", &context, async |ctx| {
            let catalog = self.gateway.catalog.current();
            let policy = &self.gateway.policy;
            let templates = catalog
                .templates()
                .iter()
                .filter(|e| {
                    let target = Target::new(TargetKind::Resource, &e.upstream, &e.item.uri_template);
                    policy.permits(&ctx.principal, target)
                })
                .map(|e| e.item.clone())
                .collect();
            Ok(ListResourceTemplatesResult::with_all_items(templates))
        })
        .await
    }

    async fn read_resource(
        &self,
        mut request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.clone();
        let mut ctx = RequestCtx::begin("resources/read", Some(&uri), &context)?;
        let span = ctx.span.clone();
        let result = async {
            let upstream = match self.resource_upstream(&uri) {
                Ok(upstream) => upstream,
                Err(error) => {
                    ctx.record_intent(&self.gateway, None).await?;
                    return Err(error);
                }
            };
            let target = Target::new(TargetKind::Resource, &upstream, &uri);
            request.meta = None;
            let forwarded = self.forward(&mut ctx, target, ClientRequest::ReadResourceRequest(Request::new(request)), &context, None);
            let mut result = match forwarded.await? {
                ServerResult::ReadResourceResult(result) => result,
                ServerResult::InputRequiredResult(result) => return Ok(ReadResourceResponse::InputRequired(result)),
                other => convert(other, &upstream)?,
            };
            ctx.findings = Some(self.gateway.guard.sanitize_resource(&upstream, &mut result));
            Ok(ReadResourceResponse::Complete(result))
        }
        .instrument(span)
        .await;
        ctx.finish(&self.gateway, &result);
        result
    }

    async fn subscribe(&self, request: SubscribeRequestParams, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        let uri = request.uri.clone();
        self.resource_call("resources/subscribe", &uri, ClientRequest::SubscribeRequest(Request::new(request)), &context).await
    }

    async fn unsubscribe(&self, request: UnsubscribeRequestParams, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        let uri = request.uri.clone();
        self.resource_call("resources/unsubscribe", &uri, ClientRequest::UnsubscribeRequest(Request::new(request)), &context).await
    }

    async fn complete(&self, mut request: CompleteRequestParams, context: RequestContext<RoleServer>) -> Result<CompleteResult, ErrorData> {
        let target_name = match &request.r#ref {
            Reference::Prompt(prompt) => prompt.name.clone(),
            Reference::Resource(resource) => resource.uri.clone(),
            _ => String::new(),
        };
        let mut ctx = RequestCtx::begin("completion/complete", Some(&target_name), &context)?;
        let span = ctx.span.clone();
        let result = async {
            let catalog = self.gateway.catalog.current();
            let resolved = match &request.r#ref {
                Reference::Prompt(prompt) => catalog
                    .prompt(&prompt.name)
                    .map(|entry| (TargetKind::Prompt, entry.upstream.clone(), entry.original.clone()))
                    .ok_or_else(|| hidden(TargetKind::Prompt, &prompt.name)),
                Reference::Resource(resource) => {
                    self.resource_upstream(&resource.uri).map(|upstream| (TargetKind::Resource, upstream, resource.uri.clone()))
                }
                _ => Err(ErrorData::invalid_params("unsupported completion reference type", None)),
            };
            let (kind, upstream, original) = match resolved {
                Ok(resolved) => resolved,
                Err(error) => {
                    ctx.record_intent(&self.gateway, None).await?;
                    return Err(error);
                }
            };
            if let Reference::Prompt(prompt) = &mut request.r#ref {
                prompt.name = original.clone();
            }
            request.meta = None;
            let target = Target::new(kind, &upstream, &original);
            let forwarded = self.forward(&mut ctx, target, ClientRequest::CompleteRequest(Request::new(request)), &context, None);
            match forwarded.await? {
                ServerResult::CompleteResult(result) => Ok(result),
                other => convert(other, &upstream),
            }
        }
        .instrument(span)
        .await;
        ctx.finish(&self.gateway, &result);
        result
    }

    async fn set_level(&self, request: SetLevelRequestParams, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        self.local("logging/setLevel", &context, async |_ctx| {
            *self.state.log_level.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(request.level);
            // Apply to the upstreams this session already talks to; later ones get it on connect.
            for (upstream, slot) in &self.state.connections {
                let connection = slot.lock().await.clone();
                if let Some(connection) = connection {
                    let request = ClientRequest::SetLevelRequest(Request::new(request.clone()));
                    if let Err(error) = connection.send_unscoped(request).await {
                        tracing::debug!(%upstream, %error, "upstream refused logging/setLevel");
                    }
                }
            }
            Ok(())
        })
        .await
    }
}

impl SessionHandler {
    /// `resources/subscribe` and `resources/unsubscribe`: routed like a read.
    async fn resource_call(
        &self,
        method: &'static str,
        uri: &str,
        request: ClientRequest,
        context: &RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let mut ctx = RequestCtx::begin(method, Some(uri), context)?;
        let span = ctx.span.clone();
        let result = async {
            let upstream = match self.resource_upstream(uri) {
                Ok(upstream) => upstream,
                Err(error) => {
                    ctx.record_intent(&self.gateway, None).await?;
                    return Err(error);
                }
            };
            let target = Target::new(TargetKind::Resource, &upstream, uri);
            self.forward(&mut ctx, target, request, context, None).await.map(|_| ())
        }
        .instrument(span)
        .await;
        ctx.finish(&self.gateway, &result);
        result
    }

    fn resource_upstream(&self, uri: &str) -> Result<Arc<str>, ErrorData> {
        match self.gateway.catalog.current().route_resource(uri) {
            ResourceRoute::Upstream(upstream) => Ok(upstream),
            ResourceRoute::Ambiguous | ResourceRoute::Unknown => Err(hidden(TargetKind::Resource, uri)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{ClientPeers, upstream, upstream_error, upstream_error_class};

    #[test]
    fn upstream_failures_are_classified_by_the_error_the_client_gets() {
        let up: std::sync::Arc<str> = std::sync::Arc::from("fx");
        let timeout = upstream::Error::Timeout { upstream: up.clone(), timeout: Duration::from_secs(1) };
        let unavailable = upstream::Error::Unavailable { upstream: up, reason: "refused".into() };
        assert_eq!(upstream_error_class(&upstream_error(&timeout)), "timeout");
        assert_eq!(upstream_error_class(&upstream_error(&unavailable)), "unavailable");
        assert_eq!(upstream_error_class(&rmcp::ErrorData::invalid_params("bad", None)), "upstream_error");
    }

    /// The direct path's upstream standalone streams wait on this: a waiter is woken by the
    /// session's peer, ends with `None` when the session goes, and a session without a slot
    /// (never opened, or already closed) is not waited for.
    #[tokio::test]
    async fn client_peer_waiters_wake_on_registration_and_end_with_the_session() {
        let peers: ClientPeers<&'static str> = ClientPeers::default();
        assert_eq!(peers.wait("unknown").await, None);

        peers.open("s1");
        assert_eq!(peers.get("s1"), None);
        let waiter = tokio::spawn({
            let peers = peers.clone();
            async move { peers.wait("s1").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no peer yet: the waiter must still wait");
        peers.insert("s1", "peer-1");
        assert_eq!(waiter.await.unwrap(), Some("peer-1"));
        assert_eq!(peers.wait("s1").await, Some("peer-1"), "a registered peer is returned at once");

        peers.open("s2");
        let waiter = tokio::spawn({
            let peers = peers.clone();
            async move { peers.wait("s2").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        peers.remove("s2");
        assert_eq!(waiter.await.unwrap(), None);
        assert_eq!(peers.wait("s2").await, None);
        // A late registration does not revive an ended session.
        peers.insert("s2", "late");
        assert_eq!(peers.get("s2"), None);
    }
}
