//! The spans of one request and its access log line.
//!
//! - [`server_span`]: one per JSON-RPC request from a client, kind SERVER, named
//!   `{mcp.method.name} {target}` (OpenTelemetry semantic conventions for MCP: the target is
//!   the tool or prompt name; methods without one are named by the method alone).
//! - [`client_span`]: one per call to an upstream, kind CLIENT, a child of the current span.
//!
//! Attributes are `tracing` fields with the semantic-convention names; those known only later
//! (principal, session, decision, …) are declared empty and recorded through [`McpSpanExt`].
//! The `otel.*` fields are read by tracing-opentelemetry: `otel.name` sets the span name
//! (`tracing` names are static), `otel.kind` the kind, `otel.status_code` the status.
//!
//! What never goes in: argument values, tokens, secrets, resource URIs (they can embed
//! credentials or user data) and raw session ids. `mcp.session.id` is the SHA-256 (hex) of
//! the id, as in audit rows and identity assertions: the semantic convention asks for the
//! id, but a streamable-HTTP session id is a capability that a trace backend's readers must
//! not be able to replay, and the hash still joins traces, logs and audit rows.

use std::time::Duration;

use opentelemetry::Context;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::metrics::Outcome;

/// Longest target kept in a span name or attribute, in bytes (a client-supplied tool name
/// may be anything; longer ones are cut at a character boundary).
pub const MAX_TARGET_LEN: usize = 128;

/// `gen_ai.operation.name` of `tools/call` (GenAI semantic conventions).
pub const OPERATION_EXECUTE_TOOL: &str = "execute_tool";

/// Records the attributes known after a span starts. Implemented for [`tracing::Span`];
/// every method is a no-op on a disabled span.
pub trait McpSpanExt {
    /// `enduser.id` (the principal's subject) and `client.id` (its OAuth client, if any).
    fn record_principal(&self, subject: &str, client_id: Option<&str>);
    /// `mcp.session.id`: the SHA-256 hex of the client's `Mcp-Session-Id` (never the id).
    fn record_session(&self, session_id: &str);
    /// `mcp.protocol.version`, e.g. `2025-11-25`.
    fn record_protocol_version(&self, version: &str);
    /// `jsonrpc.request.id` (a number or string id, as text).
    fn record_request_id(&self, id: &dyn std::fmt::Display);
    /// `portcullis.upstream`: the upstream the request resolved to.
    fn record_upstream(&self, upstream: &str);
    /// `portcullis.policy.decision`: `allow`, `deny` or `deny_missing_scopes`.
    fn record_decision(&self, decision: &'static str);
    /// `portcullis.guard.findings`: how many findings the guard reported on the result.
    fn record_guard_findings(&self, count: u64);
    /// `error.type` (a JSON-RPC error code as text such as `-32602`, `tool_error` for a tool
    /// result with `isError`, or a short class such as `timeout`) and status ERROR.
    fn record_error(&self, error_type: &str);
}

/// One access log line, written with [`AccessLog::emit`] when a request ends.
#[derive(Debug, Clone, Copy)]
pub struct AccessLog<'a> {
    /// The principal's subject, or `None` before authentication.
    pub principal: Option<&'a str>,
    /// The principal's OAuth client id.
    pub client_id: Option<&'a str>,
    /// JSON-RPC method (or the HTTP method for non-JSON-RPC requests).
    pub method: &'a str,
    /// Tool or prompt name, resource URI… as the client named it; cut to
    /// [`MAX_TARGET_LEN`].
    pub target: Option<&'a str>,
    /// Outcome class (also the metric label).
    pub outcome: Outcome,
    /// Time from the request's arrival to its answer.
    pub latency: Duration,
}

/// The server span of one JSON-RPC request, with `parent` (from
/// [`super::parent_context`]) as its parent, or a new trace when `parent` is empty. The
/// span never inherits the current `tracing` span: a request's trace is the client's.
///
/// `target` is the tool or prompt name (span name `tools/call get_forecast`); `None` for
/// methods without one (span name `tools/list`). For `tools/call`, `gen_ai.tool.name` and
/// `gen_ai.operation.name = execute_tool` are set; for `prompts/get`, `gen_ai.prompt.name`.
pub fn server_span(method: &str, target: Option<&str>, parent: Context) -> tracing::Span {
    let target = target.map(truncate);
    let name = span_name(method, target);
    let span = tracing::info_span!(
        parent: None,
        "mcp.server",
        "otel.name" = %name,
        "otel.kind" = "server",
        "otel.status_code" = Empty,
        "mcp.method.name" = method,
        "mcp.session.id" = Empty,
        "mcp.protocol.version" = Empty,
        "jsonrpc.request.id" = Empty,
        "gen_ai.tool.name" = Empty,
        "gen_ai.prompt.name" = Empty,
        "gen_ai.operation.name" = Empty,
        "network.transport" = "tcp",
        "network.protocol.name" = "http",
        "error.type" = Empty,
        "enduser.id" = Empty,
        "client.id" = Empty,
        "portcullis.upstream" = Empty,
        "portcullis.policy.decision" = Empty,
        "portcullis.guard.findings" = Empty,
    );
    record_target(&span, method, target);
    // Fails only when the span is disabled or export is off: nothing to parent then.
    let _ = span.set_parent(parent);
    span
}

/// The client span of one call to `upstream`, a child of the current span (enter the server
/// span, or pass it with `.instrument`, before calling). Inject its context into the
/// upstream request with [`super::inject_headers`] and [`super::inject_meta`].
pub fn client_span(upstream: &str, method: &str, target: Option<&str>) -> tracing::Span {
    let target = target.map(truncate);
    let name = span_name(method, target);
    let span = tracing::info_span!(
        "mcp.client",
        "otel.name" = %name,
        "otel.kind" = "client",
        "otel.status_code" = Empty,
        "mcp.method.name" = method,
        "mcp.session.id" = Empty,
        "mcp.protocol.version" = Empty,
        "jsonrpc.request.id" = Empty,
        "gen_ai.tool.name" = Empty,
        "gen_ai.prompt.name" = Empty,
        "gen_ai.operation.name" = Empty,
        "network.transport" = "tcp",
        "network.protocol.name" = "http",
        "error.type" = Empty,
        "portcullis.upstream" = upstream,
    );
    record_target(&span, method, target);
    span
}

/// `{method} {target}`, or `{method}` alone.
pub fn span_name(method: &str, target: Option<&str>) -> String {
    match target {
        Some(target) if !target.is_empty() => format!("{method} {target}"),
        _ => method.to_owned(),
    }
}

fn record_target(span: &tracing::Span, method: &str, target: Option<&str>) {
    match (method, target) {
        ("tools/call", Some(tool)) => {
            span.record("gen_ai.tool.name", tool);
            span.record("gen_ai.operation.name", OPERATION_EXECUTE_TOOL);
        }
        ("prompts/get", Some(prompt)) => {
            span.record("gen_ai.prompt.name", prompt);
        }
        _ => {}
    }
}

fn truncate(value: &str) -> &str {
    if value.len() <= MAX_TARGET_LEN {
        return value;
    }
    let mut end = MAX_TARGET_LEN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}


// === impl McpSpanExt ===

impl McpSpanExt for tracing::Span {
    fn record_principal(&self, subject: &str, client_id: Option<&str>) {
        self.record("enduser.id", subject);
        if let Some(client_id) = client_id {
            self.record("client.id", client_id);
        }
    }

    fn record_session(&self, session_id: &str) {
        self.record("mcp.session.id", crate::session::hash_id(session_id).as_str());
    }

    fn record_protocol_version(&self, version: &str) {
        self.record("mcp.protocol.version", version);
    }

    fn record_request_id(&self, id: &dyn std::fmt::Display) {
        self.record("jsonrpc.request.id", tracing::field::display(id));
    }

    fn record_upstream(&self, upstream: &str) {
        self.record("portcullis.upstream", upstream);
    }

    fn record_decision(&self, decision: &'static str) {
        self.record("portcullis.policy.decision", decision);
    }

    fn record_guard_findings(&self, count: u64) {
        self.record("portcullis.guard.findings", count);
    }

    fn record_error(&self, error_type: &str) {
        self.record("error.type", error_type);
        self.record("otel.status_code", "error");
    }
}

// === impl AccessLog ===

impl AccessLog<'_> {
    /// Writes the line: an `info` event with target `portcullis::access` (off by default;
    /// enable it with `PORTCULLIS_LOG=info,portcullis::access=info`), fields `principal`, `client_id`, `method`,
    /// `target_name` (not `target`: JSON lines already carry the event's `target`),
    /// `outcome`, `latency_ms`.
    pub fn emit(&self) {
        let latency_ms = self.latency.as_secs_f64() * 1000.0;
        tracing::info!(
            target: "portcullis::access",
            principal = self.principal,
            client_id = self.client_id,
            method = self.method,
            target_name = self.target.map(truncate),
            outcome = self.outcome.as_str(),
            latency_ms,
            "request"
        );
    }
}
