//! Upstreams: the allow-listed MCP servers, reached as an MCP client over streamable HTTP.
//!
//! Only servers named in configuration are ever contacted ([`Upstream`] is built from
//! [`UpstreamSettings`] and nothing else opens connections). Each [`Connection`] is one rmcp
//! client session to one upstream. A client session of the gateway opens its own connection
//! to an upstream lazily, on the first forwarded request, so that everything the upstream
//! sends back for that session (progress, log messages, `resources/updated`, and
//! server-to-client requests such as `sampling/createMessage`, `elicitation/create`,
//! `roots/list`) is relayed by [`Relay`] to exactly that client session. JSON-RPC ids never
//! collide: each hop is its own JSON-RPC peer with its own id space, and a relayed request's
//! answer returns through the hop that asked.
//!
//! Invariants: [`Connection::forward`] requires a policy [`Grant`] for the same upstream; the
//! client's own access token is never sent (connections carry only the upstream's configured
//! credential); every request has a deadline, so a dead or slow upstream yields an error that
//! names it, never a hang.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rmcp::{
    RoleClient, RoleServer,
    model::{
        ClientCapabilities, ClientConfig, ClientRequest, ClientResult, ErrorData, Implementation,
        ProgressToken, RequestId, RequestMetaObject, ServerNotification, ServerRequest, ServerResult,
    },
    service::{
        InboundStreamOrigin, NotificationContext, OriginatingRequestId, Peer, PeerRequestOptions,
        RequestContext, RunningService, Service, ServiceError,
    },
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use tokio::sync::mpsc;

pub mod credentials;
pub mod raw;

use crate::{auth::issuer::EmbeddedIssuer, config::UpstreamSettings, policy::Grant};
use credentials::{CallContext, CredentialSource, GatewayHttpClient, SessionIdentity};

/// JSON-RPC error code: the upstream could not be reached or its session failed.
pub const UPSTREAM_UNAVAILABLE: i32 = -32050;
/// JSON-RPC error code: the upstream did not answer within its `request_timeout`.
pub const UPSTREAM_TIMEOUT: i32 = -32051;

/// Upstream failures. Messages name the upstream; they never carry credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting or the MCP `initialize` handshake failed.
    #[error("upstream {upstream:?} unavailable: {reason}")]
    Unavailable {
        /// Upstream name.
        upstream: Arc<str>,
        /// Short cause (scrubbed of secrets by construction: no headers are included).
        reason: String,
    },
    /// No answer within the deadline.
    #[error("upstream {upstream:?} timed out after {timeout:?}")]
    Timeout {
        /// Upstream name.
        upstream: Arc<str>,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The upstream answered with a JSON-RPC error; relayed to the client as-is.
    #[error("upstream {upstream:?} returned error {}: {}", .error.code.0, .error.message)]
    Rpc {
        /// Upstream name.
        upstream: Arc<str>,
        /// The upstream's error object.
        error: ErrorData,
    },
    /// A grant for another upstream was presented (a gateway bug; fails closed).
    #[error("grant for upstream {granted:?} presented to upstream {upstream:?}")]
    GrantMismatch {
        /// Upstream of the connection.
        upstream: Arc<str>,
        /// Upstream named by the grant.
        granted: String,
    },
}

/// Events a catalog connection reports to the catalog (list changes at the upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogEvent {
    /// `notifications/tools/list_changed`.
    ToolsChanged,
    /// `notifications/prompts/list_changed`.
    PromptsChanged,
    /// `notifications/resources/list_changed`.
    ResourcesChanged,
}

// === impl CatalogEvent ===

impl CatalogEvent {
    /// The catalog event a server notification announces, if it is a list change.
    pub fn of(notification: &ServerNotification) -> Option<Self> {
        match notification {
            ServerNotification::ToolListChangedNotification(_) => Some(Self::ToolsChanged),
            ServerNotification::PromptListChangedNotification(_) => Some(Self::PromptsChanged),
            ServerNotification::ResourceListChangedNotification(_) => Some(Self::ResourcesChanged),
            _ => None,
        }
    }

    /// The catalog event a notification `method` announces (`notifications/tools/list_changed`
    /// …), if it is a list change (MCP server/tools, server/prompts, server/resources "List
    /// Changed Notification").
    pub fn of_method(method: &str) -> Option<Self> {
        match method {
            "notifications/tools/list_changed" => Some(Self::ToolsChanged),
            "notifications/prompts/list_changed" => Some(Self::PromptsChanged),
            "notifications/resources/list_changed" => Some(Self::ResourcesChanged),
            _ => None,
        }
    }
}

/// One configured upstream and the HTTP client used to reach it.
pub struct Upstream {
    name: Arc<str>,
    settings: UpstreamSettings,
    http: reqwest::Client,
    credentials: Arc<CredentialSource>,
    signer: Arc<EmbeddedIssuer>,
}

/// Sender of catalog events: which upstream announced which list change.
pub type CatalogEvents = mpsc::UnboundedSender<(Arc<str>, CatalogEvent)>;

/// Where a [`Relay`] sends what the upstream pushes. List changes always go to the catalog,
/// which re-lists the upstream and tells every client session (after policy); an upstream
/// may announce a change on any of its sessions.
#[derive(Clone)]
pub enum RelayTarget {
    /// A catalog connection: everything but list changes is dropped.
    Catalog(CatalogEvents),
    /// A client session's connection: everything else goes to that client.
    Session(Peer<RoleServer>, CatalogEvents),
}

/// The gateway's client-side MCP service for one upstream connection: answers the
/// upstream's requests by relaying them to the client session, and relays notifications.
#[derive(Clone)]
pub struct Relay {
    upstream: Arc<str>,
    target: RelayTarget,
    config: ClientConfig,
    routes: Arc<Routes>,
}

/// Per-connection maps from upstream-side identifiers to the client's own.
#[derive(Default)]
struct Routes {
    /// Upstream-side progress token → the client's progress token.
    progress: Mutex<HashMap<ProgressToken, ProgressToken>>,
    /// Our request id at the upstream → the client's request id it serves.
    requests: Mutex<HashMap<RequestId, RequestId>>,
}

/// A live client session with one upstream.
pub struct Connection {
    upstream: Arc<str>,
    request_timeout: Duration,
    service: RunningService<RoleClient, Relay>,
    routes: Arc<Routes>,
}

/// What the gateway knows of the client request a forwarded request serves.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The client's JSON-RPC request id.
    pub request_id: Option<RequestId>,
    /// The client's `_meta` (progress token, trace context, …).
    pub meta: RequestMetaObject,
    /// `kind:upstream/name` of the target, for the identity assertion.
    pub target: String,
}

// === impl Upstream ===

impl Upstream {
    /// An upstream reached with the shared `http` client; `signer` signs identity assertions.
    pub fn new(settings: UpstreamSettings, http: reqwest::Client, signer: Arc<EmbeddedIssuer>) -> Self {
        let credentials = Arc::new(CredentialSource::new(settings.clone(), http.clone()));
        Self { name: Arc::from(settings.name.as_str()), settings, http, credentials, signer }
    }

    /// The configured name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The configuration.
    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// Opens an MCP session with this upstream, bounded by `connect_timeout`.
    ///
    /// `client` describes the client session this connection serves (its capabilities are
    /// mirrored so the upstream only asks for what the client can answer); `target` receives
    /// what the upstream pushes.
    ///
    /// # Errors
    /// [`Error::Unavailable`] on connection or handshake failure, [`Error::Timeout`] when the
    /// handshake does not finish in time.
    pub async fn connect(
        &self,
        client: Option<&ClientConfig>,
        target: RelayTarget,
        identity: Option<SessionIdentity>,
    ) -> Result<Connection, Error> {
        // Credentials and identity assertions are added per HTTP request by the client
        // wrapper; the transport itself carries no fixed headers.
        let transport_config =
            StreamableHttpClientTransportConfig::with_uri(self.settings.url.as_str()).reinit_on_expired_session(true);
        let http = GatewayHttpClient::new(self.http.clone(), self.credentials.clone(), self.signer.clone(), &self.settings, identity);
        let transport = StreamableHttpClientTransport::with_client(http, transport_config);
        let routes = Arc::new(Routes::default());
        let relay = Relay { upstream: self.name.clone(), target, config: client_config(client), routes: routes.clone() };
        let service = tokio::time::timeout(self.settings.connect_timeout, rmcp::serve_client(relay, transport))
            .await
            .map_err(|_| Error::Timeout { upstream: self.name.clone(), timeout: self.settings.connect_timeout })?
            .map_err(|error| self.unavailable(&error.to_string()))?;
        Ok(Connection { upstream: self.name.clone(), request_timeout: self.settings.request_timeout, service, routes })
    }

    fn unavailable(&self, reason: &str) -> Error {
        Error::Unavailable { upstream: self.name.clone(), reason: reason.to_owned() }
    }
}

/// The `initialize` parameters the gateway sends upstream: its own identity, with the
/// client's sampling/elicitation/roots capabilities mirrored (the gateway relays those).
fn client_config(client: Option<&ClientConfig>) -> ClientConfig {
    let mut capabilities = ClientCapabilities::default();
    if let Some(client) = client {
        capabilities.sampling = client.capabilities.sampling.clone();
        capabilities.elicitation = client.capabilities.elicitation.clone();
        capabilities.roots = client.capabilities.roots.clone();
    }
    ClientConfig::new(capabilities, Implementation::new("portcullis", env!("CARGO_PKG_VERSION")))
}

// === impl Connection ===

impl Connection {
    /// The upstream's name.
    pub fn upstream(&self) -> &Arc<str> {
        &self.upstream
    }

    /// Whether the session with the upstream has ended (transport closed).
    pub fn is_closed(&self) -> bool {
        self.service.is_transport_closed()
    }

    /// The peer, for catalog listing (no grant needed: listing is the gateway's own work,
    /// filtered by policy before anything reaches a client).
    pub fn peer(&self) -> &Peer<RoleClient> {
        self.service.peer()
    }

    /// Forwards one request authorized by `grant`, relaying progress for `origin`.
    ///
    /// # Errors
    /// [`Error::GrantMismatch`] if `grant` is for another upstream, [`Error::Rpc`] when the
    /// upstream answers with an error, [`Error::Timeout`] after `request_timeout`,
    /// [`Error::Unavailable`] when the session is gone.
    pub async fn forward(&self, grant: &Grant, request: ClientRequest, origin: &Origin) -> Result<ServerResult, Error> {
        if grant.upstream() != &*self.upstream {
            return Err(Error::GrantMismatch { upstream: self.upstream.clone(), granted: grant.upstream().to_owned() });
        }
        let mut request = request;
        let call = CallContext { scopes: grant.scopes().to_vec(), target: origin.target.clone() };
        rmcp::model::GetExtensions::extensions_mut(&mut request).insert(call);
        self.send(request, origin).await
    }

    /// Sends a request that needs no grant (`logging/setLevel`, which only tunes what the
    /// upstream sends this client session).
    ///
    /// # Errors
    /// As [`Connection::forward`].
    pub async fn send_unscoped(&self, request: ClientRequest) -> Result<ServerResult, Error> {
        self.send(request, &Origin::default()).await
    }

    async fn send(&self, request: ClientRequest, origin: &Origin) -> Result<ServerResult, Error> {
        let client_token = origin.meta.get_progress_token();
        let mut options = PeerRequestOptions::no_options();
        options.timeout = Some(self.request_timeout);
        options.meta = Some(forwarded_meta(&origin.meta));
        let handle = self
            .service
            .peer()
            .send_request_with_option(request, options)
            .await
            .map_err(|error| self.map_error(error))?;
        // rmcp always puts its own progress token on the upstream request; map it back to
        // the client's token (if the client asked for progress) and record which client
        // request this upstream request serves, for relayed server-to-client requests.
        let upstream_token = handle.progress_token.clone();
        let upstream_id = handle.id.clone();
        if let Some(token) = client_token.clone() {
            lock(&self.routes.progress).insert(upstream_token.clone(), token);
        }
        if let Some(id) = &origin.request_id {
            lock(&self.routes.requests).insert(upstream_id.clone(), id.clone());
        }
        let result = handle.await_response().await;
        lock(&self.routes.progress).remove(&upstream_token);
        lock(&self.routes.requests).remove(&upstream_id);
        result.map_err(|error| self.map_error(error))
    }

    fn map_error(&self, error: ServiceError) -> Error {
        let upstream = self.upstream.clone();
        match error {
            ServiceError::McpError(error) => Error::Rpc { upstream, error },
            ServiceError::Timeout { timeout } => Error::Timeout { upstream, timeout },
            other => Error::Unavailable { upstream, reason: other.to_string() },
        }
    }

    /// Ends the session with the upstream (HTTP DELETE of its session).
    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

/// The client's `_meta` minus what is per-hop: the progress token (rmcp sets its own) and
/// the SEP-2575 per-request protocol keys (the gateway's connection has its own).
fn forwarded_meta(meta: &RequestMetaObject) -> RequestMetaObject {
    let mut forwarded = meta.clone();
    forwarded.retain(|key, _| key != "progressToken" && !key.starts_with("io.modelcontextprotocol/"));
    forwarded
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned map only means another request panicked mid-insert; the map stays usable.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// === impl Relay ===

impl Relay {
    fn session(&self) -> Option<&Peer<RoleServer>> {
        match &self.target {
            RelayTarget::Session(peer, _) => Some(peer),
            RelayTarget::Catalog(_) => None,
        }
    }

    fn catalog_events(&self) -> &CatalogEvents {
        match &self.target {
            RelayTarget::Session(_, events) | RelayTarget::Catalog(events) => events,
        }
    }
}

impl Service<RoleClient> for Relay {
    async fn handle_request(
        &self,
        request: ServerRequest,
        context: RequestContext<RoleClient>,
    ) -> Result<ClientResult, ErrorData> {
        if let ServerRequest::PingRequest(_) = request {
            return Ok(ClientResult::empty(()));
        }
        let Some(client) = self.session().cloned() else {
            return Err(ErrorData::new(
                rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                "the gateway's catalog session answers no requests",
                None,
            ));
        };
        // Deliver on the client's stream of the request that caused it (SEP-2260), when
        // the upstream sent it on that request's response stream.
        let originating = match context.extensions.get::<InboundStreamOrigin>() {
            Some(InboundStreamOrigin::OutboundRequest(id)) => lock(&self.routes.requests).get(id).cloned(),
            _ => None,
        };
        let mut request = request;
        if let Some(id) = originating {
            rmcp::model::GetExtensions::extensions_mut(&mut request).insert(OriginatingRequestId(id));
        }
        let upstream = self.upstream.clone();
        // A fresh task: rmcp's originating-request marker is task-local, and inside this
        // handler it names the *upstream's* request id, which means nothing to the client.
        let relayed = tokio::spawn(async move { client.send_request(request).await });
        match relayed.await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(ServiceError::McpError(error))) => Err(error),
            Ok(Err(error)) => {
                tracing::debug!(%upstream, %error, "relaying server-to-client request failed");
                Err(ErrorData::internal_error("the client did not answer the relayed request", None))
            }
            Err(_) => Err(ErrorData::internal_error("relay task failed", None)),
        }
    }

    async fn handle_notification(
        &self,
        notification: ServerNotification,
        _context: NotificationContext<RoleClient>,
    ) -> Result<(), ErrorData> {
        let event = CatalogEvent::of(&notification);
        match (&self.target, event) {
            // List changes reach clients from the catalog, after policy and pinning.
            (_, Some(event)) => {
                let _ = self.catalog_events().send((self.upstream.clone(), event));
            }
            (RelayTarget::Catalog(_), None) => {}
            (RelayTarget::Session(client, _), None) => {
                let notification = match notification {
                    ServerNotification::ProgressNotification(mut progress) => {
                        let token = lock(&self.routes.progress).get(&progress.params.progress_token).cloned();
                        let Some(token) = token else { return Ok(()) };
                        progress.params.progress_token = token;
                        ServerNotification::ProgressNotification(progress)
                    }
                    // The gateway owns cancellation on each hop.
                    ServerNotification::CancelledNotification(_) => return Ok(()),
                    other => other,
                };
                if let Err(error) = client.send_notification(notification).await {
                    tracing::debug!(upstream = %self.upstream, %error, "client session gone; notification dropped");
                }
            }
        }
        Ok(())
    }

    fn get_info(&self) -> ClientConfig {
        self.config.clone()
    }
}

/// Maps an upstream error to the JSON-RPC error the client sees: upstream JSON-RPC errors
/// pass through; gateway-side failures get [`UPSTREAM_UNAVAILABLE`] or [`UPSTREAM_TIMEOUT`]
/// with a message naming the upstream.
pub fn to_error_data(error: &Error) -> ErrorData {
    match error {
        Error::Rpc { error, .. } => error.clone(),
        Error::Timeout { upstream, timeout } => ErrorData::new(
            rmcp::model::ErrorCode(UPSTREAM_TIMEOUT),
            format!("upstream {upstream:?} did not answer within {}s", timeout.as_secs_f64()),
            Some(serde_json::json!({"upstream": &**upstream})),
        ),
        Error::Unavailable { upstream, .. } => ErrorData::new(
            rmcp::model::ErrorCode(UPSTREAM_UNAVAILABLE),
            format!("upstream {upstream:?} is unavailable"),
            Some(serde_json::json!({"upstream": &**upstream})),
        ),
        Error::GrantMismatch { .. } => ErrorData::internal_error("internal error", None),
    }
}

#[cfg(test)]
mod tests {
    use rmcp::model::{JsonRpcMessage, ServerJsonRpcMessage};

    use super::*;

    /// Both spellings of a list change (typed notification, method name) map to the same
    /// event; other notifications map to none.
    #[test]
    fn list_changes_map_to_catalog_events() {
        for (method, event) in [
            ("notifications/tools/list_changed", Some(CatalogEvent::ToolsChanged)),
            ("notifications/prompts/list_changed", Some(CatalogEvent::PromptsChanged)),
            ("notifications/resources/list_changed", Some(CatalogEvent::ResourcesChanged)),
            ("notifications/message", None),
        ] {
            let params = if event.is_some() { serde_json::json!({}) } else { serde_json::json!({"level": "info", "data": "x"}) };
            let message: ServerJsonRpcMessage =
                serde_json::from_value(serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params})).unwrap();
            let JsonRpcMessage::Notification(notification) = message else { panic!("{method}: not a notification") };
            assert_eq!(CatalogEvent::of(&notification.notification), event, "{method}");
            assert_eq!(CatalogEvent::of_method(method), event, "{method}");
        }
    }
}
