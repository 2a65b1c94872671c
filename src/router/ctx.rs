//! Per-request state (`RequestCtx`): who asked what, the server span that times it, the
//! policy decision, the audit intent, and the guard's findings — and the one place where a
//! request ends (outcome row, access log, metrics, span status).
//!
//! Every request that reaches the router gets a `RequestCtx` from [`RequestCtx::begin`] and
//! ends in [`RequestCtx::finish`]. The audit intent is written by [`RequestCtx::record_intent`]
//! and awaited (durable) before anything is forwarded; the outcome row is written in the
//! background when the request ends, and the audit log records `abandoned` for an intent
//! whose handle is dropped without one, so no path skips it.

use std::{sync::Arc, time::Instant};

use rmcp::{
    ErrorData, RoleServer,
    model::{ErrorCode, RequestId, RequestMetaObject},
    service::RequestContext,
};
use serde_json::Value;
use tracing::Span;

use super::Gateway;
use crate::{
    audit::{IntentHandle, IntentRecord, OutcomeRecord, OutcomeStatus, PolicyDecision},
    auth::Principal,
    guard,
    policy::{self, Grant},
    telemetry::{AccessLog, McpSpanExt as _, Outcome, parent_context, server_span},
    upstream,
};

/// The state of one JSON-RPC request in the router.
pub(super) struct RequestCtx {
    /// JSON-RPC method.
    pub(super) method: &'static str,
    /// Tool or prompt name, or resource URI, as the client named it.
    pub(super) target: Option<String>,
    /// The authenticated caller.
    pub(super) principal: Principal,
    /// The server span of this request.
    pub(super) span: Span,
    /// The client's MCP session id (raw; hashed wherever it is stored).
    pub(super) session_id: Option<String>,
    /// The upstream the request resolved to.
    pub(super) upstream: Option<Arc<str>>,
    /// Guard findings on the response.
    pub(super) findings: Option<guard::Outcome>,
    started: Instant,
    request_id: String,
    jsonrpc_id: String,
    trace_id: Option<String>,
    decision: Option<(PolicyDecision, Option<String>)>,
    audit: Option<IntentHandle>,
}

// === impl RequestCtx ===

impl RequestCtx {
    /// Starts a request: recovers the principal the transport authenticated (fail closed if
    /// it is missing) and opens the server span, parented to the client's trace context.
    pub(super) fn begin(method: &'static str, target: Option<&str>, context: &RequestContext<RoleServer>) -> Result<Self, ErrorData> {
        let parts = context.extensions.get::<http::request::Parts>();
        let Some(principal) = parts.and_then(|p| p.extensions.get::<Principal>()).cloned() else {
            tracing::error!(method, "request reached the router without a principal; refused");
            return Err(ErrorData::internal_error("internal error", None));
        };
        let headers = parts.map(|p| &p.headers);
        let session_id = headers.and_then(|h| h.get("mcp-session-id")).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(Self::start(method, target, principal, headers, &context.meta, &context.id, session_id))
    }

    /// Starts a request the transport hands over directly (the direct call path): same
    /// span, ids and audit fields as [`RequestCtx::begin`].
    pub(super) fn start(
        method: &'static str,
        target: Option<&str>,
        principal: Principal,
        headers: Option<&http::HeaderMap>,
        meta: &RequestMetaObject,
        id: &RequestId,
        session_id: Option<String>,
    ) -> Self {
        let span = server_span(method, target, parent_context(headers, Some(meta)));
        span.record_principal(&principal.subject, principal.client_id.as_deref());
        span.record_request_id(id);
        if let Some(id) = &session_id {
            span.record_session(id);
        }
        if let Some(version) = headers.and_then(|h| h.get("mcp-protocol-version")).and_then(|v| v.to_str().ok()) {
            span.record_protocol_version(version);
        }
        let trace_id = trace_id(headers, meta);
        Self {
            method,
            target: target.map(str::to_owned),
            principal,
            span,
            session_id,
            upstream: None,
            findings: None,
            started: Instant::now(),
            request_id: uuid::Uuid::now_v7().simple().to_string(),
            jsonrpc_id: serde_json::to_string(id).unwrap_or_default(),
            trace_id,
            decision: None,
            audit: None,
        }
    }

    /// Records an allowing policy decision.
    pub(super) fn allow(&mut self, grant: &Grant) {
        self.span.record_decision("allow");
        self.decision = Some((PolicyDecision::Allow, Some(grant.rule().to_owned())));
    }

    /// Records a request the gateway answers itself without a policy target (lists,
    /// `initialize`, `ping`): allowed by the gateway, `rule` names why.
    pub(super) fn allow_local(&mut self, rule: &str) {
        self.span.record_decision("allow");
        self.decision = Some((PolicyDecision::Allow, Some(rule.to_owned())));
    }

    /// Records a denying policy decision (`rule` when a deny rule matched).
    pub(super) fn deny(&mut self, rule: Option<String>) {
        self.span.record_decision("deny");
        self.decision = Some((PolicyDecision::Deny, rule));
    }

    /// Writes the audit intent row and waits until it is durable. Fails closed: when the
    /// audit store cannot take it, the request is refused with `-32052`.
    pub(super) async fn record_intent(&mut self, gateway: &Gateway, arguments: Option<Value>) -> Result<(), ErrorData> {
        let (decision, rule) = match &self.decision {
            Some((decision, rule)) => (Some(*decision), rule.clone()),
            None => (None, None),
        };
        let record = IntentRecord {
            request_id: self.request_id.clone(),
            jsonrpc_id: Some(self.jsonrpc_id.clone()),
            trace_id: self.trace_id.clone(),
            session_id: self.session_id.clone(),
            issuer: Some(self.principal.issuer.clone()),
            subject: Some(self.principal.subject.clone()),
            client_id: self.principal.client_id.clone(),
            token_id: self.principal.token_id.clone(),
            upstream: self.upstream.as_deref().map(str::to_owned),
            method: self.method.to_owned(),
            target: self.target.clone(),
            arguments,
            decision,
            rule,
        };
        let Some(audit) = &gateway.audit else { return Ok(()) };
        match audit.intent(record).await {
            Ok(handle) => {
                self.audit = Some(handle);
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, method = self.method, "audit intent not durable; request refused");
                Err(ErrorData::new(
                    ErrorCode(error.jsonrpc_code() as i32),
                    "audit trail unavailable; request refused",
                    None,
                ))
            }
        }
    }

    /// Ends the request: outcome row (queued, not awaited), access log, metrics, span status.
    pub(super) fn finish<T>(mut self, gateway: &Gateway, result: &Result<T, ErrorData>) {
        let latency = self.started.elapsed();
        let outcome = match result {
            Ok(_) => Outcome::Ok,
            Err(error) => classify(error, self.upstream.is_some()),
        };
        let metrics = &gateway.metrics;
        metrics.record_request(self.method, outcome, latency);
        if let Some(findings) = &self.findings {
            self.span.record_guard_findings(findings.findings.len() as u64);
            for finding in &findings.findings {
                metrics.record_guard_findings(finding.family.as_str(), 1);
            }
        }
        if let Some((PolicyDecision::Deny, _)) = &self.decision {
            metrics.record_policy_denial(self.method);
        }
        if let Err(error) = result {
            self.span.record_error(outcome.as_str());
            tracing::debug!(parent: &self.span, code = error.code.0, "request failed");
        }
        if let Some(handle) = self.audit.take() {
            let record = OutcomeRecord {
                status: audit_status(outcome),
                error_code: result.as_ref().err().map(|e| i64::from(e.code.0)),
                error_message: result.as_ref().err().map(|e| e.message.to_string()),
                findings: self.findings.as_ref().filter(|f| f.flagged()).and_then(|f| serde_json::to_value(f).ok()),
                latency: Some(latency),
            };
            handle.record(record);
        }
        AccessLog {
            principal: Some(&self.principal.subject),
            client_id: self.principal.client_id.as_deref(),
            method: self.method,
            target: self.target.as_deref(),
            outcome,
            latency,
        }
        .emit();
    }
}

/// The outcome class of an error the router answers with.
fn classify(error: &ErrorData, reached_upstream: bool) -> Outcome {
    match i64::from(error.code.0) {
        code if code == i64::from(policy::INSUFFICIENT_SCOPE) => Outcome::Denied,
        crate::audit::JSONRPC_AUDIT_UNAVAILABLE => Outcome::InternalError,
        code if code == i64::from(upstream::UPSTREAM_TIMEOUT) => Outcome::Timeout,
        code if code == i64::from(upstream::UPSTREAM_UNAVAILABLE) => Outcome::UpstreamError,
        _ if reached_upstream => Outcome::UpstreamError,
        -32603 => Outcome::InternalError,
        _ => Outcome::ClientError,
    }
}

fn audit_status(outcome: Outcome) -> OutcomeStatus {
    match outcome {
        Outcome::Ok => OutcomeStatus::Ok,
        Outcome::Denied => OutcomeStatus::Denied,
        Outcome::Timeout => OutcomeStatus::Timeout,
        Outcome::ClientError
        | Outcome::Unauthorized
        | Outcome::RateLimited
        | Outcome::UpstreamError
        | Outcome::InternalError => OutcomeStatus::Error,
    }
}

/// The W3C trace id of the request: from the active span when traces are exported, else
/// from the client's `traceparent` (header first, then `_meta`), so audit rows and logs can
/// be joined with the client's trace either way.
fn trace_id(headers: Option<&http::HeaderMap>, meta: &rmcp::model::RequestMetaObject) -> Option<String> {
    let traceparent = headers
        .and_then(|h| h.get("traceparent"))
        .and_then(|v| v.to_str().ok())
        .or_else(|| meta.get_traceparent())?;
    // version "-" trace-id (32 hex) "-" parent-id "-" flags
    let trace = traceparent.split('-').nth(1)?;
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace.bytes().any(|b| b != b'0'))
        .then(|| trace.to_ascii_lowercase())
}
