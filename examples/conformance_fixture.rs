//! MCP conformance "everything" fixture server.
//!
//! A streamable-HTTP MCP server that implements the fixture described in the conformance
//! fixture spec in the repo's docs (`docs/conformance-fixture.md`): the tools, resources,
//! resource templates, prompts, completion and logging behaviour that the official
//! `@modelcontextprotocol/conformance` server suite exercises, served statefully at `/mcp`
//! with rmcp's [`StreamableHttpService`] and an in-memory session manager.
//!
//! Portcullis' own tests use it as a real upstream, so it also offers a few extra tools that
//! do not interfere with conformance:
//!
//! - `echo {text}` returns `text`; `large_result {bytes}` returns that many `x` characters;
//! - `slow {seconds}` sleeps, then returns `done` (it stops early if the call is cancelled);
//! - `whoami_headers` returns, as JSON text, the HTTP request headers of its own `tools/call`;
//! - `close_standalone_stream` closes the session's standalone SSE stream without an event id
//!   (as a proxy's idle timeout would), then for 5 s sends a `notifications/message` with data
//!   `"standalone stream reopened"` every 100 ms outside any request, which reaches the client
//!   only if it opens the stream again;
//! - with `--extra-tools N`, `N` synthetic tools `extra_000`, `extra_001`, … (each returns its
//!   own name), for benchmarks of large catalogs (`bench/`, "10 upstreams × 100 tools").
//!
//! With `FIXTURE_STANDALONE_WITHOUT_IDS` set, the standalone SSE stream's events carry no id
//! and no stream opens with a priming event (as from a server without an event store), so a
//! closed standalone stream cannot be resumed, only opened again (`test_reconnection` then
//! cannot work).
//!
//! With `FIXTURE_RECORD_HEADERS=/path/file.jsonl` set, every HTTP request to `/mcp` is appended
//! to that file as one JSON line, `{"method": ..., "headers": {...}}`, so tests can assert what
//! an upstream behind the gateway received.
//!
//! Usage: `conformance_fixture --listen 127.0.0.1:PORT [--extra-tools N]`. Once bound, the
//! fixture prints exactly one line, `listening on http://ADDR/mcp`, to stdout; diagnostics go
//! to stderr. It exits cleanly on SIGTERM or Ctrl-C.

// Logging, sampling and `resources/subscribe` are deprecated by SEP-2577 (2026-07-28), but the
// 2025-x conformance scenarios this fixture serves require all three.
#![allow(deprecated)]

use std::{
    collections::{HashMap, HashSet},
    fs::{File, OpenOptions},
    io::Write as _,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    serve::ListenerExt as _,
};
use clap::Parser;
use futures::Stream;
use http::{HeaderMap, Method, StatusCode};
use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities,
        ClientJsonRpcMessage, ClientRequest, ClientResult, CompleteRequestParams, CompleteResult,
        CompletionInfo, ContentBlock, CreateMessageRequestParams, ElicitRequest,
        ElicitRequestParams, ErrorCode, GetPromptRequestParams, GetPromptResponse, GetPromptResult,
        Implementation, JsonObject, ListPromptsResult, ListResourceTemplatesResult,
        ListResourcesResult, ListToolsResult, LoggingLevel, LoggingMessageNotificationParam,
        PaginatedRequestParams, ProgressNotificationParam, Prompt, PromptArgument, PromptMessage,
        ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
        RequestId, Resource, ResourceContents, ResourceTemplate, Role, ServerCapabilities,
        ServerConfig, ServerJsonRpcMessage, ServerRequest, SetLevelRequestParams,
        SubscribeRequestParams, SubscriptionFilter, Tool, UnsubscribeRequestParams,
    },
    service::{RequestContext, SubscriptionContext},
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::{
            SessionId, SessionManager,
            session::{
                ServerSseMessage,
                local::{LocalSessionHandle, LocalSessionManager, LocalSessionManagerError},
            },
        },
    },
};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// A 1×1 PNG, base64-encoded.
const PNG_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";
/// A WAV file with eight samples of 8 kHz mono silence, base64-encoded.
const WAV_BASE64: &str = "UklGRiwAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQgAAACAgICAgICAgA==";

/// The `retry:` hint of the priming event that opens every SSE stream.
const PRIMING_RETRY: Duration = Duration::from_secs(5);
/// The `retry:` hint sent when `test_reconnection` closes its stream: short, so that SDK
/// clients, which honour it, reconnect quickly.
const RECONNECT_RETRY: Duration = Duration::from_millis(500);
/// How long `test_reconnection` waits for the client to resume its stream before answering.
const RECONNECT_WAIT: Duration = Duration::from_secs(10);
/// Default size of the `large_result` payload.
const DEFAULT_LARGE_RESULT_BYTES: u64 = 65_536;
/// Upper bound on the `large_result` payload, so a typo cannot exhaust memory.
const MAX_LARGE_RESULT_BYTES: u64 = 256 * 1024 * 1024;
/// How long shutdown waits for open connections to drain before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Hostnames accepted in `Host` and `Origin` headers (the DNS-rebinding guard).
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(about = "MCP conformance \"everything\" fixture server (streamable HTTP at /mcp)")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Number of synthetic `extra_NNN` tools to add to the catalog (benchmarks).
    #[arg(long, value_name = "N", default_value_t = 0)]
    extra_tools: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let recorder = match std::env::var_os("FIXTURE_RECORD_HEADERS") {
        Some(path) => Some(Arc::new(HeaderRecorder::open(Path::new(&path))?)),
        None => None,
    };

    let shutdown = CancellationToken::new();
    let standalone_without_ids = std::env::var_os("FIXTURE_STANDALONE_WITHOUT_IDS").is_some();
    let manager = Arc::new(FixtureSessionManager::new(standalone_without_ids));
    let config = StreamableHttpServerConfig::default()
        .with_sse_retry((!standalone_without_ids).then_some(PRIMING_RETRY))
        .with_allowed_hosts(LOOPBACK_HOSTS)
        .with_allowed_origins(
            LOOPBACK_HOSTS
                .iter()
                .flat_map(|host| [format!("http://{host}:*"), format!("https://{host}:*")]),
        )
        .with_cancellation_token(shutdown.child_token());
    let handler_manager = Arc::clone(&manager);
    let (list_changes, _) = broadcast::channel(16);
    let extra_tools: Arc<[Tool]> = extra_tools(args.extra_tools).into();
    let service = StreamableHttpService::new(
        move || {
            Ok(Fixture::new(
                Arc::clone(&handler_manager),
                list_changes.clone(),
                Arc::clone(&extra_tools),
            ))
        },
        Arc::clone(&manager),
        config,
    );
    let state = Arc::new(AppState { manager, recorder });
    let app = Router::new()
        .route_service("/mcp", service)
        .route_layer(middleware::from_fn_with_state(state, observe_request));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{addr}/mcp").context("writing to stdout")?;
        stdout.flush().context("flushing stdout")?;
    }

    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            shutdown.cancel();
        }
    });
    // TCP_NODELAY: a streamable-HTTP answer is written in small pieces (headers, priming
    // event, message); with Nagle's algorithm each small write after the first waits for the
    // client's delayed ACK, about 40 ms on Linux.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            eprintln!("conformance_fixture: cannot set TCP_NODELAY: {error}");
        }
    });
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        result = server => result.context("serving HTTP")?,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => eprintln!("conformance_fixture: connections still open after {SHUTDOWN_GRACE:?}; exiting"),
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                eprintln!("conformance_fixture: cannot listen for SIGTERM: {error}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP layer: header recording and the DELETE guard
// ---------------------------------------------------------------------------------------------

/// State shared by the `/mcp` middleware.
struct AppState {
    /// The session manager, to answer DELETEs for unknown sessions.
    manager: Arc<FixtureSessionManager>,
    /// Where to record request headers, if `FIXTURE_RECORD_HEADERS` is set.
    recorder: Option<Arc<HeaderRecorder>>,
}

/// Middleware on `/mcp`: records the request's headers, and makes DELETE answer as the spec
/// says: 404 for an unknown session and 200 for a terminated one (rmcp answers 202 to both).
async fn observe_request(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(recorder) = &state.recorder {
        recorder.record(request.method(), request.headers());
    }
    if request.method() == Method::DELETE
        && let Some(session_id) = request
            .headers()
            .get("mcp-session-id")
            .and_then(|value| value.to_str().ok())
        && !state
            .manager
            .inner
            .sessions
            .read()
            .await
            .contains_key(session_id)
    {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({
                "jsonrpc": "2.0",
                "error": {"code": -32001, "message": "Session not found"},
                "id": null,
            })),
        )
            .into_response();
    }
    let is_delete = request.method() == Method::DELETE;
    let mut response = next.run(request).await;
    if is_delete && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::OK;
    }
    response
}

/// Appends one JSON line per HTTP request to a file.
struct HeaderRecorder {
    /// The open JSONL file.
    file: Mutex<File>,
}

impl HeaderRecorder {
    /// Opens (creating if needed) `path` for appending.
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening FIXTURE_RECORD_HEADERS file {}", path.display()))?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// Writes `{"method": ..., "headers": {...}}` as one line; failures go to stderr.
    fn record(&self, method: &Method, headers: &HeaderMap) {
        let mut line =
            json!({"method": method.as_str(), "headers": headers_to_json(headers)}).to_string();
        line.push('\n');
        let mut file = lock(&self.file);
        if let Err(error) = file.write_all(line.as_bytes()).and_then(|()| file.flush()) {
            eprintln!("conformance_fixture: cannot record headers: {error}");
        }
    }
}

/// Headers as a JSON object of lowercase name → value; repeated headers are joined with `, `.
fn headers_to_json(headers: &HeaderMap) -> JsonObject {
    let mut object = JsonObject::new();
    for name in headers.keys() {
        let value = headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        object.insert(name.as_str().to_owned(), Value::String(value));
    }
    object
}

/// Locks a mutex, ignoring poisoning (the guarded data stays consistent on panic).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Session manager: rmcp's LocalSessionManager, plus what `test_reconnection` needs
// ---------------------------------------------------------------------------------------------

/// [`LocalSessionManager`] with bookkeeping for `test_reconnection`.
///
/// rmcp gives a tool handler no way to close its own SSE response stream: only
/// [`LocalSessionHandle::close_sse_stream`] can, and it needs the id of the HTTP request's
/// stream, which the stock manager does not expose. This wrapper opens request streams itself
/// to learn that id, and notices when a client resumes a stream with `Last-Event-ID`, so the
/// tool can answer only once the client is listening again.
struct FixtureSessionManager {
    /// The session store doing the actual work.
    inner: LocalSessionManager,
    /// In-flight `test_reconnection` calls: (session, JSON-RPC id) → HTTP stream id.
    reconnection_calls: Mutex<HashMap<(SessionId, RequestId), u64>>,
    /// Streams whose resumption a tool awaits: (session, HTTP stream id) → signal.
    resume_waiters: Mutex<HashMap<(SessionId, u64), Arc<Notify>>>,
    /// `FIXTURE_STANDALONE_WITHOUT_IDS` is set: standalone stream events carry no id.
    standalone_without_ids: bool,
}

impl FixtureSessionManager {
    /// A manager whose request streams open with a [`PRIMING_RETRY`] priming event.
    fn new(standalone_without_ids: bool) -> Self {
        let mut inner = LocalSessionManager::default();
        inner.session_config.sse_retry = (!standalone_without_ids).then_some(PRIMING_RETRY);
        Self {
            inner,
            reconnection_calls: Mutex::default(),
            resume_waiters: Mutex::default(),
            standalone_without_ids,
        }
    }

    /// The handle of a live session.
    async fn session_handle(
        &self,
        id: &SessionId,
    ) -> Result<LocalSessionHandle, LocalSessionManagerError> {
        self.inner
            .sessions
            .read()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| LocalSessionManagerError::SessionNotFound(id.clone()))
    }

    /// Removes and returns the HTTP stream id of an in-flight `test_reconnection` call.
    fn take_reconnection_call(&self, session: &SessionId, request: &RequestId) -> Option<u64> {
        lock(&self.reconnection_calls).remove(&(session.clone(), request.clone()))
    }
}

/// The JSON-RPC id of `message` if it is a `tools/call` of `test_reconnection`.
fn reconnection_call_id(message: &ClientJsonRpcMessage) -> Option<RequestId> {
    match message {
        ClientJsonRpcMessage::Request(request) => match &request.request {
            ClientRequest::CallToolRequest(call) if call.params.name == "test_reconnection" => {
                Some(request.id.clone())
            }
            _ => None,
        },
        _ => None,
    }
}

/// The server-to-client events of one SSE stream.
struct SseEvents(mpsc::Receiver<ServerSseMessage>);

impl Stream for SseEvents {
    type Item = ServerSseMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

impl SessionManager for FixtureSessionManager {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        self.inner.create_session().await
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.inner.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        lock(&self.reconnection_calls).retain(|(session, _), _| session != id);
        lock(&self.resume_waiters).retain(|(session, _), _| session != id);
        self.inner.close_session(id).await
    }

    /// Same as [`LocalSessionManager::create_stream`], but remembers which stream carries a
    /// `test_reconnection` call.
    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let handle = self.session_handle(id).await?;
        let receiver = handle.establish_request_wise_channel().await?;
        if let (Some(stream), Some(request)) =
            (receiver.http_request_id, reconnection_call_id(&message))
        {
            lock(&self.reconnection_calls).insert((id.clone(), request), stream);
        }
        handle
            .push_message(message, receiver.http_request_id)
            .await?;
        Ok(SseEvents(receiver.inner))
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let strip = self.standalone_without_ids;
        let events = self.inner.create_standalone_stream(id).await?;
        Ok(futures::StreamExt::map(events, move |mut event| {
            if strip {
                event.event_id = None;
            }
            event
        }))
    }

    /// Same as [`LocalSessionManager::resume`], then wakes a tool waiting for that stream.
    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        // rmcp's event ids are `<index>/<HTTP stream id>` (`<index>` alone on the GET stream).
        let stream_id = last_event_id
            .split_once('/')
            .and_then(|(_, stream)| stream.parse::<u64>().ok());
        let events = self.inner.resume(id, last_event_id).await?;
        if let Some(stream_id) = stream_id
            && let Some(waiter) = lock(&self.resume_waiters).get(&(id.clone(), stream_id))
        {
            waiter.notify_one();
        }
        Ok(events)
    }
}

// ---------------------------------------------------------------------------------------------
// The MCP handler
// ---------------------------------------------------------------------------------------------

/// A change of a list, announced by the `test_trigger_*_change` tools.
#[derive(Debug, Clone, Copy)]
enum ListChange {
    /// The tool list changed.
    Tools,
    /// The prompt list changed.
    Prompts,
}

/// The fixture's MCP server: one instance per session, or per request on the stateless
/// (2026-07-28) path.
struct Fixture {
    /// The session manager, for `test_reconnection`.
    manager: Arc<FixtureSessionManager>,
    /// List changes, shared by all instances so `subscriptions/listen` streams hear them.
    list_changes: broadcast::Sender<ListChange>,
    /// The level set by `logging/setLevel`; `None` sends every level.
    log_level: Mutex<Option<LoggingLevel>>,
    /// Resource URIs this session subscribed to.
    subscriptions: Mutex<HashSet<String>>,
    /// The `--extra-tools` synthetic tools, shared by all instances.
    extra_tools: Arc<[Tool]>,
}

impl Fixture {
    /// A handler for a new session.
    fn new(
        manager: Arc<FixtureSessionManager>,
        list_changes: broadcast::Sender<ListChange>,
        extra_tools: Arc<[Tool]>,
    ) -> Self {
        Self {
            manager,
            list_changes,
            log_level: Mutex::new(None),
            subscriptions: Mutex::default(),
            extra_tools,
        }
    }

    /// Sends a `notifications/message` unless `level` is below the session's level.
    async fn log(&self, context: &RequestContext<RoleServer>, level: LoggingLevel, data: &str) {
        let threshold = *lock(&self.log_level);
        if threshold.is_some_and(|threshold| severity(level) < severity(threshold)) {
            return;
        }
        let params = LoggingMessageNotificationParam::new(level, json!(data));
        if let Err(error) = context.peer.notify_logging_message(params).await {
            eprintln!("conformance_fixture: cannot send log message: {error}");
        }
    }

    /// `test_tool_with_logging`: three info messages ~50 ms apart.
    async fn tool_with_logging(&self, context: &RequestContext<RoleServer>) -> CallToolResult {
        self.log(context, LoggingLevel::Info, "Tool execution started")
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.log(context, LoggingLevel::Info, "Tool processing data")
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.log(context, LoggingLevel::Info, "Tool execution completed")
            .await;
        text_result("Tool with logging executed successfully")
    }

    /// `test_reconnection`: closes the SSE stream of its own call, waits for the client to
    /// resume it with `Last-Event-ID`, then answers on the resumed stream.
    async fn reconnection(&self, context: &RequestContext<RoleServer>) -> CallToolResult {
        const DONE: &str = "Reconnection test completed successfully";
        let stream = session_id(context).and_then(|session| {
            let stream = self.manager.take_reconnection_call(&session, &context.id)?;
            Some((session, stream))
        });
        let Some((session, stream)) = stream else {
            // Not on a session stream (e.g. a stateless request): nothing to close.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return text_result(DONE);
        };
        let key = (session.clone(), stream);
        let resumed = Arc::new(Notify::new());
        lock(&self.manager.resume_waiters).insert(key.clone(), Arc::clone(&resumed));
        let closed = match self.manager.session_handle(&session).await {
            Ok(handle) => handle
                .close_sse_stream(stream, Some(RECONNECT_RETRY))
                .await
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match closed {
            Ok(()) => {
                if tokio::time::timeout(RECONNECT_WAIT, resumed.notified())
                    .await
                    .is_err()
                {
                    eprintln!(
                        "conformance_fixture: test_reconnection: no resume within {RECONNECT_WAIT:?}"
                    );
                }
            }
            Err(error) => eprintln!("conformance_fixture: cannot close SSE stream: {error}"),
        }
        lock(&self.manager.resume_waiters).remove(&key);
        tokio::time::sleep(Duration::from_millis(100)).await;
        text_result(DONE)
    }

    /// `test_tool_with_progress`: three progress notifications for the caller's token.
    async fn tool_with_progress(&self, context: &RequestContext<RoleServer>) -> CallToolResult {
        let Some(token) = context.meta.get_progress_token() else {
            return text_result("No progress token provided");
        };
        for (step, progress) in [0.0, 50.0, 100.0].into_iter().enumerate() {
            if step > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let params = ProgressNotificationParam::new(token.clone(), progress)
                .with_total(100.0)
                .with_message(format!("Completed step {} of 3", step + 1));
            if let Err(error) = context.peer.notify_progress(params).await {
                eprintln!("conformance_fixture: cannot send progress: {error}");
            }
        }
        text_result(token.0.to_string())
    }

    /// `test_sampling`: asks the client's LLM to answer `prompt`.
    async fn sampling(
        &self,
        context: &RequestContext<RoleServer>,
        arguments: &JsonObject,
    ) -> CallToolResult {
        let Some(prompt) = string_argument(arguments, "prompt") else {
            return CallToolResult::error(vec![ContentBlock::text("Missing argument: prompt")]);
        };
        let params = serde_json::from_value::<CreateMessageRequestParams>(json!({
            "messages": [{"role": "user", "content": {"type": "text", "text": prompt}}],
            "maxTokens": 100,
        }));
        let answer = match params {
            Ok(params) => context
                .peer
                .create_message(params)
                .await
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match answer.and_then(|answer| serde_json::to_value(answer).map_err(|e| e.to_string())) {
            Ok(answer) => text_result(format!("LLM response: {}", first_text(&answer["content"]))),
            Err(error) => text_result(format!("Sampling failed: {error}")),
        }
    }

    /// `test_elicitation`: asks the user for a username and an email.
    async fn elicitation(
        &self,
        context: &RequestContext<RoleServer>,
        arguments: &JsonObject,
    ) -> CallToolResult {
        let Some(message) = string_argument(arguments, "message") else {
            return CallToolResult::error(vec![ContentBlock::text("Missing argument: message")]);
        };
        let request = json!({
            "message": message,
            "requestedSchema": {
                "type": "object",
                "properties": {
                    "username": {"type": "string", "description": "User's response"},
                    "email": {"type": "string", "description": "User's email address"},
                },
                "required": ["username", "email"],
            },
        });
        match elicit(context, request).await {
            Ok((action, content)) => {
                text_result(format!("User response: action={action}, content={content}"))
            }
            Err(error) => text_result(format!("Elicitation failed: {error}")),
        }
    }

    /// `test_elicitation_sep1034_defaults` and `test_elicitation_sep1330_enums`.
    async fn elicitation_schema(
        &self,
        context: &RequestContext<RoleServer>,
        request: Value,
    ) -> CallToolResult {
        match elicit(context, request).await {
            Ok((action, content)) => text_result(format!(
                "Elicitation completed: action={action}, content={content}"
            )),
            Err(error) => text_result(format!("Elicitation failed: {error}")),
        }
    }

    /// `test_trigger_tool_change` / `test_trigger_prompt_change`: announces a list change on
    /// every `subscriptions/listen` stream and, on a session, to the caller.
    async fn trigger_change(
        &self,
        context: &RequestContext<RoleServer>,
        change: ListChange,
    ) -> CallToolResult {
        // No listener is not an error.
        let _ = self.list_changes.send(change);
        if session_id(context).is_some() {
            let sent = match change {
                ListChange::Tools => context.peer.notify_tool_list_changed().await,
                ListChange::Prompts => context.peer.notify_prompt_list_changed().await,
            };
            if let Err(error) = sent {
                eprintln!("conformance_fixture: cannot send list_changed: {error}");
            }
        }
        text_result(format!("{change:?} list change announced"))
    }

    /// `test_logging_tool`: logs only when the request's `_meta` carries a log level (the
    /// 2026-07-28 per-request logging opt-in).
    async fn logging_tool(&self, context: &RequestContext<RoleServer>) -> CallToolResult {
        if let Some(level) = context.meta.log_level()
            && severity(LoggingLevel::Info) >= severity(level)
        {
            let params = LoggingMessageNotificationParam::new(
                LoggingLevel::Info,
                json!("Logging tool executed"),
            );
            if let Err(error) = context.peer.notify_logging_message(params).await {
                eprintln!("conformance_fixture: cannot send log message: {error}");
            }
        }
        text_result("Logging tool executed")
    }

    /// `test_missing_capability`: needs the client's `sampling` capability (-32021 without).
    fn missing_capability(
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        if context
            .client_capabilities()
            .is_some_and(|capabilities| capabilities.sampling.is_some())
        {
            Ok(text_result("The client declared the sampling capability"))
        } else {
            Err(ErrorData::missing_required_client_capability(
                ClientCapabilities::builder().enable_sampling().build(),
            ))
        }
    }

    /// `test_streaming_elicitation`: streams progress notifications (when the caller asked for
    /// progress), never a server-to-client request, then the result.
    async fn streaming_elicitation(context: &RequestContext<RoleServer>) -> CallToolResult {
        if let Some(token) = context.meta.get_progress_token() {
            for progress in [50.0, 100.0] {
                let params =
                    ProgressNotificationParam::new(token.clone(), progress).with_total(100.0);
                if let Err(error) = context.peer.notify_progress(params).await {
                    eprintln!("conformance_fixture: cannot send progress: {error}");
                }
            }
        }
        text_result("Streaming completed without server-to-client requests")
    }

    /// `close_standalone_stream`: see the module docs.
    async fn close_standalone_stream(&self, context: &RequestContext<RoleServer>) -> CallToolResult {
        let Some(session) = session_id(context) else {
            return CallToolResult::error(vec![ContentBlock::text("not in a session")]);
        };
        let closed = match self.manager.session_handle(&session).await {
            Ok(handle) => handle.close_standalone_sse_stream(None).await.is_ok(),
            Err(_) => false,
        };
        let peer = context.peer.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let params = LoggingMessageNotificationParam::new(
                    LoggingLevel::Info,
                    json!("standalone stream reopened"),
                );
                if peer.notify_logging_message(params).await.is_err() {
                    return;
                }
            }
        });
        text_result(if closed { "closed" } else { "no standalone stream" })
    }

    /// `whoami_headers`: the HTTP headers of this `tools/call`, as JSON text.
    fn whoami_headers(context: &RequestContext<RoleServer>) -> CallToolResult {
        let headers = context
            .extensions
            .get::<http::request::Parts>()
            .map(|parts| headers_to_json(&parts.headers))
            .unwrap_or_default();
        text_result(Value::Object(headers).to_string())
    }
}

/// Orders logging levels by severity.
fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// The `Mcp-Session-Id` of the HTTP request that carried this MCP request.
fn session_id(context: &RequestContext<RoleServer>) -> Option<SessionId> {
    let parts = context.extensions.get::<http::request::Parts>()?;
    let id = parts.headers.get("mcp-session-id")?.to_str().ok()?;
    Some(id.into())
}

/// Sends `elicitation/create` with `params`; returns the action and the content as JSON text.
async fn elicit(
    context: &RequestContext<RoleServer>,
    params: Value,
) -> Result<(String, String), String> {
    let params =
        serde_json::from_value::<ElicitRequestParams>(params).map_err(|error| error.to_string())?;
    let response = context
        .peer
        .send_request(ServerRequest::ElicitRequest(ElicitRequest::new(params)))
        .await
        .map_err(|error| error.to_string())?;
    let ClientResult::ElicitResult(result) = response else {
        return Err("the client did not answer with an elicitation result".to_owned());
    };
    let action = match serde_json::to_value(result.action) {
        Ok(Value::String(action)) => action,
        other => format!("{other:?}"),
    };
    let content = result.content.unwrap_or_else(|| json!({})).to_string();
    Ok((action, content))
}

/// The text of a content block, or of the first text block of a list of them.
fn first_text(content: &Value) -> String {
    let block = match content {
        Value::Array(blocks) => blocks
            .iter()
            .find(|block| block["type"] == "text")
            .unwrap_or(&Value::Null),
        block => block,
    };
    block["text"].as_str().unwrap_or_default().to_owned()
}

/// A successful result with one text item.
fn text_result(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

/// A string argument, if present.
fn string_argument<'a>(arguments: &'a JsonObject, name: &str) -> Option<&'a str> {
    arguments.get(name).and_then(Value::as_str)
}

/// A prompt argument rendered as text (non-string JSON values are rendered as JSON).
fn prompt_argument(arguments: &JsonObject, name: &str) -> Result<String, ErrorData> {
    match arguments.get(name) {
        Some(Value::String(value)) => Ok(value.clone()),
        Some(value) => Ok(value.to_string()),
        None => Err(ErrorData::invalid_params(
            format!("Missing required argument: {name}"),
            None,
        )),
    }
}

/// Converts a JSON object literal into a tool input schema.
fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(object) => Arc::new(object),
        _ => Arc::default(),
    }
}

/// The input schema of a tool without arguments.
fn no_arguments() -> Arc<JsonObject> {
    schema(json!({"type": "object", "properties": {}}))
}

/// Every tool the fixture offers.
fn tools() -> Vec<Tool> {
    let no_arg = |name: &'static str, description: &'static str| {
        Tool::new(name, description, no_arguments())
    };
    vec![
        no_arg("test_simple_text", "Tests simple text content response"),
        no_arg("test_image_content", "Tests image content response"),
        no_arg("test_audio_content", "Tests audio content response"),
        no_arg(
            "test_embedded_resource",
            "Tests embedded resource content response",
        ),
        no_arg(
            "test_multiple_content_types",
            "Tests response with multiple content types (text, image, resource)",
        ),
        no_arg(
            "test_tool_with_logging",
            "Tests tool that emits log messages during execution",
        ),
        no_arg(
            "test_tool_with_progress",
            "Tests tool that reports progress notifications",
        ),
        no_arg("test_error_handling", "Tests error response handling"),
        no_arg(
            "test_reconnection",
            "Tests SSE stream disconnection and client reconnection (SEP-1699): closes its \
             stream mid-call and answers after the client resumes",
        ),
        Tool::new(
            "test_sampling",
            "Tests server-initiated sampling (LLM completion request)",
            schema(json!({
                "type": "object",
                "properties": {
                    "prompt": {"type": "string", "description": "The prompt to send to the LLM"},
                },
                "required": ["prompt"],
            })),
        ),
        Tool::new(
            "test_elicitation",
            "Tests server-initiated elicitation (user input request)",
            schema(json!({
                "type": "object",
                "properties": {
                    "message": {"type": "string", "description": "The message to show the user"},
                },
                "required": ["message"],
            })),
        ),
        no_arg(
            "test_elicitation_sep1034_defaults",
            "Tests elicitation with default values for all primitive types (SEP-1034)",
        ),
        no_arg(
            "test_elicitation_sep1330_enums",
            "Tests elicitation with enum schema improvements (SEP-1330)",
        ),
        Tool::new(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
            schema(json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": {
                    "address": {
                        "$anchor": "addressDef",
                        "type": "object",
                        "properties": {
                            "street": {"type": "string"},
                            "city": {"type": "string"},
                        },
                    },
                },
                "properties": {
                    "name": {"type": "string"},
                    "address": {"$ref": "#/$defs/address"},
                    "contactMethod": {"type": "string", "enum": ["phone", "email"]},
                    "phone": {"type": "string"},
                    "email": {"type": "string"},
                },
                "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
                "if": {
                    "properties": {"contactMethod": {"const": "phone"}},
                    "required": ["contactMethod"],
                },
                "then": {"required": ["phone"]},
                "else": {"required": ["email"]},
                "additionalProperties": false,
            })),
        ),
        no_arg(
            "test_missing_capability",
            "Requires the client's sampling capability; without it fails with -32021",
        ),
        no_arg(
            "test_streaming_elicitation",
            "Streams only notifications on its response stream, then the result",
        ),
        no_arg(
            "test_logging_tool",
            "Logs only if the request's _meta sets io.modelcontextprotocol/logLevel",
        ),
        no_arg(
            "test_trigger_tool_change",
            "Announces notifications/tools/list_changed",
        ),
        no_arg(
            "test_trigger_prompt_change",
            "Announces notifications/prompts/list_changed",
        ),
        Tool::new(
            "echo",
            "Returns its text argument unchanged",
            schema(json!({
                "type": "object",
                "properties": {"text": {"type": "string", "description": "Text to echo"}},
                "required": ["text"],
            })),
        ),
        Tool::new(
            "large_result",
            "Returns one text item of `bytes` 'x' characters",
            schema(json!({
                "type": "object",
                "properties": {
                    "bytes": {
                        "type": "integer",
                        "minimum": 0,
                        "default": DEFAULT_LARGE_RESULT_BYTES,
                        "description": "Size of the text",
                    },
                },
            })),
        ),
        Tool::new(
            "slow",
            "Sleeps for `seconds`, then returns `done`",
            schema(json!({
                "type": "object",
                "properties": {
                    "seconds": {"type": "number", "minimum": 0, "description": "How long to sleep"},
                },
                "required": ["seconds"],
            })),
        ),
        no_arg(
            "whoami_headers",
            "Returns the HTTP request headers of this call as a JSON object",
        ),
        no_arg(
            "close_standalone_stream",
            "Closes this session's standalone SSE stream, then logs outside any request for 5 s",
        ),
    ]
}

/// `count` synthetic tools for catalog-size benchmarks, shaped like real ones: a sentence of
/// description and a two-property input schema. Each returns its own name.
fn extra_tools(count: usize) -> Vec<Tool> {
    (0..count)
        .map(|index| {
            Tool::new(
                format!("extra_{index:03}"),
                format!(
                    "Synthetic tool {index} for catalog-size benchmarks: looks up records matching \
                     a query in an imaginary index and returns its own name"
                ),
                schema(json!({
                    "type": "object",
                    "properties": {
                        "query": {"type": "string", "description": "What to look for"},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 100, "description": "Most results to return"},
                    },
                    "required": ["query"],
                })),
            )
        })
        .collect()
}

/// The request of `test_elicitation_sep1034_defaults`.
fn sep1034_defaults_request() -> Value {
    json!({
        "message": "Please review and update the form fields with defaults",
        "requestedSchema": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "User name", "default": "John Doe"},
                "age": {"type": "integer", "description": "User age", "default": 30},
                "score": {"type": "number", "description": "User score", "default": 95.5},
                "status": {
                    "type": "string",
                    "description": "User status",
                    "enum": ["active", "inactive", "pending"],
                    "default": "active",
                },
                "verified": {
                    "type": "boolean",
                    "description": "Verification status",
                    "default": true,
                },
            },
            "required": [],
        },
    })
}

/// The request of `test_elicitation_sep1330_enums`.
fn sep1330_enums_request() -> Value {
    json!({
        "message": "Please select options from the enum fields",
        "requestedSchema": {
            "type": "object",
            "properties": {
                "untitledSingle": {
                    "type": "string",
                    "description": "Select one option",
                    "enum": ["option1", "option2", "option3"],
                },
                "titledSingle": {
                    "type": "string",
                    "description": "Select one option with titles",
                    "oneOf": [
                        {"const": "value1", "title": "First Option"},
                        {"const": "value2", "title": "Second Option"},
                        {"const": "value3", "title": "Third Option"},
                    ],
                },
                "legacyEnum": {
                    "type": "string",
                    "description": "Select one option (legacy)",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"],
                },
                "untitledMulti": {
                    "type": "array",
                    "description": "Select multiple options",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
                },
                "titledMulti": {
                    "type": "array",
                    "description": "Select multiple options with titles",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": {
                        "anyOf": [
                            {"const": "value1", "title": "First Choice"},
                            {"const": "value2", "title": "Second Choice"},
                            {"const": "value3", "title": "Third Choice"},
                        ],
                    },
                },
            },
            "required": [],
        },
    })
}

/// Reads a resource by URI, or `None` if there is no such resource.
fn read(uri: &str) -> Option<ResourceContents> {
    let text =
        |text: &str, mime: &str| Some(ResourceContents::text(text, uri).with_mime_type(mime));
    match uri {
        "test://static-text" => text(
            "This is the content of the static text resource.",
            "text/plain",
        ),
        "test://static-binary" => {
            Some(ResourceContents::blob(PNG_BASE64, uri).with_mime_type("image/png"))
        }
        "test://watched-resource" => text("Watched resource content", "text/plain"),
        _ => {
            let id = uri
                .strip_prefix("test://template/")?
                .strip_suffix("/data")?;
            if id.is_empty() || id.contains('/') {
                return None;
            }
            let data =
                json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")});
            text(&data.to_string(), "application/json")
        }
    }
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_logging()
            .enable_completions()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_resources_list_changed()
            .enable_tools()
            .enable_tool_list_changed()
            .build();
        ServerConfig::new(capabilities)
            .with_protocol_version(ProtocolVersion::V_2025_11_25)
            .with_server_info(Implementation::new(
                "portcullis-conformance-fixture",
                env!("CARGO_PKG_VERSION"),
            ))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        *lock(&self.log_level) = Some(request.level);
        Ok(())
    }

    async fn complete(
        &self,
        _request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let completion = CompletionInfo::with_all_values(Vec::new())
            .map_err(|error| ErrorData::internal_error(error, None))?;
        Ok(CompleteResult::new(completion))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut all = tools();
        all.extend(self.extra_tools.iter().cloned());
        Ok(ListToolsResult::with_all_items(all))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools()
            .into_iter()
            .find(|tool| tool.name == name)
            .or_else(|| {
                self.extra_tools
                    .iter()
                    .find(|tool| tool.name == name)
                    .cloned()
            })
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let arguments = request.arguments.unwrap_or_default();
        let result = match request.name.as_ref() {
            "test_simple_text" => text_result("This is a simple text response for testing."),
            "test_image_content" => {
                CallToolResult::success(vec![ContentBlock::image(PNG_BASE64, "image/png")])
            }
            "test_audio_content" => {
                CallToolResult::success(vec![ContentBlock::audio(WAV_BASE64, "audio/wav")])
            }
            "test_embedded_resource" => CallToolResult::success(vec![ContentBlock::resource(
                ResourceContents::text(
                    "This is an embedded resource content.",
                    "test://embedded-resource",
                )
                .with_mime_type("text/plain"),
            )]),
            "test_multiple_content_types" => CallToolResult::success(vec![
                ContentBlock::text("Multiple content types test:"),
                ContentBlock::image(PNG_BASE64, "image/png"),
                ContentBlock::resource(
                    ResourceContents::text(
                        json!({"test": "data", "value": 123}).to_string(),
                        "test://mixed-content-resource",
                    )
                    .with_mime_type("application/json"),
                ),
            ]),
            "test_tool_with_logging" => self.tool_with_logging(&context).await,
            "test_tool_with_progress" => self.tool_with_progress(&context).await,
            "test_error_handling" => CallToolResult::error(vec![ContentBlock::text(
                "This tool intentionally returns an error for testing",
            )]),
            "test_reconnection" => self.reconnection(&context).await,
            "test_sampling" => self.sampling(&context, &arguments).await,
            "test_elicitation" => self.elicitation(&context, &arguments).await,
            "test_elicitation_sep1034_defaults" => {
                self.elicitation_schema(&context, sep1034_defaults_request())
                    .await
            }
            "test_elicitation_sep1330_enums" => {
                self.elicitation_schema(&context, sep1330_enums_request())
                    .await
            }
            "json_schema_2020_12_tool" => text_result(format!(
                "JSON Schema 2020-12 tool called with: {}",
                Value::Object(arguments)
            )),
            "test_missing_capability" => Self::missing_capability(&context)?,
            "test_streaming_elicitation" => Self::streaming_elicitation(&context).await,
            "test_logging_tool" => self.logging_tool(&context).await,
            "test_trigger_tool_change" => self.trigger_change(&context, ListChange::Tools).await,
            "test_trigger_prompt_change" => {
                self.trigger_change(&context, ListChange::Prompts).await
            }
            "echo" => match string_argument(&arguments, "text") {
                Some(text) => text_result(text),
                None => {
                    CallToolResult::error(vec![ContentBlock::text("Missing string argument: text")])
                }
            },
            "large_result" => {
                let bytes = match arguments.get("bytes") {
                    None => Some(DEFAULT_LARGE_RESULT_BYTES),
                    Some(value) => value.as_u64().filter(|&n| n <= MAX_LARGE_RESULT_BYTES),
                };
                match bytes.and_then(|bytes| usize::try_from(bytes).ok()) {
                    Some(bytes) => text_result("x".repeat(bytes)),
                    None => CallToolResult::error(vec![ContentBlock::text(format!(
                        "bytes must be an integer from 0 to {MAX_LARGE_RESULT_BYTES}"
                    ))]),
                }
            }
            "slow" => {
                let seconds = arguments.get("seconds").and_then(Value::as_f64);
                match seconds.and_then(|seconds| Duration::try_from_secs_f64(seconds).ok()) {
                    Some(duration) => tokio::select! {
                        () = tokio::time::sleep(duration) => text_result("done"),
                        () = context.ct.cancelled() => text_result("cancelled"),
                    },
                    None => CallToolResult::error(vec![ContentBlock::text(
                        "seconds must be a non-negative number",
                    )]),
                }
            }
            "whoami_headers" => Self::whoami_headers(&context),
            "close_standalone_stream" => self.close_standalone_stream(&context).await,
            name if self.extra_tools.iter().any(|tool| tool.name == name) => text_result(name),
            name => {
                return Err(ErrorData::invalid_params(
                    format!("Unknown tool: {name}"),
                    None,
                ));
            }
        };
        Ok(result.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let resource = |uri: &str, name: &str, description: &str, mime: &str| {
            Resource::new(uri, name)
                .with_description(description)
                .with_mime_type(mime)
        };
        Ok(ListResourcesResult::with_all_items(vec![
            resource(
                "test://static-text",
                "static-text",
                "A static text resource for testing",
                "text/plain",
            ),
            resource(
                "test://static-binary",
                "static-binary",
                "A static binary resource (image) for testing",
                "image/png",
            ),
            resource(
                "test://watched-resource",
                "watched-resource",
                "A resource that can be subscribed to",
                "text/plain",
            ),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("test://template/{id}/data", "template")
                .with_description("A resource template with parameter substitution")
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        match read(&request.uri) {
            Some(contents) => Ok(ReadResourceResult::new(vec![contents]).into()),
            None => Err(ErrorData::new(
                ErrorCode::INVALID_PARAMS,
                format!("Resource {} not found", request.uri),
                Some(json!({"uri": request.uri})),
            )),
        }
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.clone())
    }

    /// `subscriptions/listen` (2026-07-28): relays list changes until the client goes away.
    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let mut changes = self.list_changes.subscribe();
        loop {
            let change = tokio::select! {
                () = context.cancelled() => return Ok(()),
                change = changes.recv() => change,
            };
            // A change the subscription did not ask for is refused by the sink; ignore that.
            let _ = match change {
                Ok(ListChange::Tools) => context.sink().notify_tool_list_changed().await,
                Ok(ListChange::Prompts) => context.sink().notify_prompt_list_changed().await,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
        }
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        lock(&self.subscriptions).insert(request.uri);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        lock(&self.subscriptions).remove(&request.uri);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let required = |name: &str, description: &str| {
            PromptArgument::new(name)
                .with_description(description)
                .with_required(true)
        };
        Ok(ListPromptsResult::with_all_items(vec![
            Prompt::new(
                "test_simple_prompt",
                Some("A simple prompt without arguments"),
                None,
            ),
            Prompt::new(
                "test_prompt_with_arguments",
                Some("A prompt with required arguments"),
                Some(vec![
                    required("arg1", "First test argument"),
                    required("arg2", "Second test argument"),
                ]),
            ),
            Prompt::new(
                "test_prompt_with_embedded_resource",
                Some("A prompt that includes an embedded resource"),
                Some(vec![required(
                    "resourceUri",
                    "URI of the resource to embed",
                )]),
            ),
            Prompt::new(
                "test_prompt_with_image",
                Some("A prompt that includes image content"),
                None,
            ),
        ]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let arguments = request.arguments.unwrap_or_default();
        let messages = match request.name.as_str() {
            "test_simple_prompt" => vec![PromptMessage::new_text(
                Role::User,
                "This is a simple prompt for testing.",
            )],
            "test_prompt_with_arguments" => {
                let arg1 = prompt_argument(&arguments, "arg1")?;
                let arg2 = prompt_argument(&arguments, "arg2")?;
                vec![PromptMessage::new_text(
                    Role::User,
                    format!("Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"),
                )]
            }
            "test_prompt_with_embedded_resource" => {
                let uri = prompt_argument(&arguments, "resourceUri")?;
                vec![
                    PromptMessage::new(
                        Role::User,
                        ContentBlock::resource(
                            ResourceContents::text("Embedded resource content for testing.", uri)
                                .with_mime_type("text/plain"),
                        ),
                    ),
                    PromptMessage::new_text(
                        Role::User,
                        "Please process the embedded resource above.",
                    ),
                ]
            }
            "test_prompt_with_image" => vec![
                PromptMessage::new(Role::User, ContentBlock::image(PNG_BASE64, "image/png")),
                PromptMessage::new_text(Role::User, "Please analyze the image above."),
            ],
            name => {
                return Err(ErrorData::invalid_params(
                    format!("Unknown prompt: {name}"),
                    None,
                ));
            }
        };
        Ok(GetPromptResult::new(messages).into())
    }
}
