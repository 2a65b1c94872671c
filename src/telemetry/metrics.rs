//! Prometheus metrics, served at `/metrics` in the OpenMetrics 1.0 text format
//! (`application/openmetrics-text; version=1.0.0`), which Prometheus scrapes natively.
//!
//! [`Metrics`] owns one `prometheus-client` registry; it is cheap to clone (one `Arc`) and
//! every recorder is a few atomic operations. Every label takes values from a bounded set:
//! methods from the MCP method list (anything else is `other`), outcomes from [`Outcome`],
//! reasons, kinds and families from `&'static str` constants of the calling module, and
//! upstream names from the configuration. A client can therefore never grow the registry.

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets of the request and upstream latency histograms, in seconds.
const LATENCY_BUCKETS: [f64; 13] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Buckets of the audit commit histogram, in seconds (group commits are short).
const COMMIT_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// JSON-RPC methods counted under their own name; any other is counted as `other`.
const KNOWN_METHODS: [&str; 18] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "notifications",
];

/// How a request ended: the `outcome` label of `portcullis_requests_total` and the access
/// log's `outcome` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered with a result.
    Ok,
    /// Refused as malformed or invalid (4xx, JSON-RPC -32600/-32602/-32700…).
    ClientError,
    /// No or invalid token (401).
    Unauthorized,
    /// Refused by policy: hidden target or missing scope (403 / "unknown" error).
    Denied,
    /// Refused by a rate limit or quota (429).
    RateLimited,
    /// The upstream failed or answered with an error.
    UpstreamError,
    /// The upstream did not answer in time.
    Timeout,
    /// The gateway itself failed (audit not durable, a bug): 5xx.
    InternalError,
}

/// Gateway metrics; see the README ("Telemetry and health") for the full list.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<MethodOutcome, Counter>,
    request_duration: Family<MethodLabel, Histogram>,
    upstream_duration: Family<UpstreamMethod, Histogram>,
    auth_rejections: Family<Reason, Counter>,
    policy_denials: Family<Kind, Counter>,
    guard_findings: Family<FamilyLabel, Counter>,
    audit_queue_depth: Gauge,
    audit_commit_duration: Family<CommitterLabel, Histogram>,
    upstream_up: Family<UpstreamLabel, Gauge>,
    rate_limit_rejections: Counter,
    sessions_open: Gauge,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodOutcome {
    method: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamMethod {
    upstream: String,
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommitterLabel {
    committer: &'static str,
}

/// Who committed an audit batch (the `committer` label of
/// `portcullis_audit_commit_duration_seconds`; `audit::writer` module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditCommitter {
    /// The writer (SQLite: its own thread; PostgreSQL: its task), `writer`.
    Writer,
    /// A request that committed its own intent on its own thread (SQLite), `leader`.
    Leader,
}

// === impl AuditCommitter ===

impl AuditCommitter {
    /// The label value: `writer` or `leader`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Writer => "writer",
            Self::Leader => "leader",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabel {
    family: &'static str,
}

/// The `method` label for a JSON-RPC method: itself when it is an MCP request method,
/// `notifications` for any notification, else `other`.
pub fn method_label(method: &str) -> &'static str {
    if method.starts_with("notifications/") {
        return "notifications";
    }
    KNOWN_METHODS.iter().copied().find(|known| *known == method).unwrap_or("other")
}

/// `GET /metrics` serving `metrics` (mount it on the main app or a separate listener,
/// `telemetry.metrics_listen`).
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new().route("/metrics", get(serve_metrics)).with_state(metrics)
}

async fn serve_metrics(State(metrics): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render())
}

// === impl Outcome ===

impl Outcome {
    /// The label value: `ok`, `client_error`, `unauthorized`, `denied`, `rate_limited`,
    /// `upstream_error`, `timeout`, `internal_error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ClientError => "client_error",
            Self::Unauthorized => "unauthorized",
            Self::Denied => "denied",
            Self::RateLimited => "rate_limited",
            Self::UpstreamError => "upstream_error",
            Self::Timeout => "timeout",
            Self::InternalError => "internal_error",
        }
    }
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every gateway metric registered (all at zero).
    pub fn new() -> Self {
        let latency = || Histogram::new(LATENCY_BUCKETS);
        let mut registry = Registry::default();
        let requests = Family::<MethodOutcome, Counter>::default();
        registry.register("portcullis_requests", "JSON-RPC requests by method and outcome", requests.clone());
        let request_duration = Family::<MethodLabel, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register_with_unit(
            "portcullis_request_duration",
            "Time from a request's arrival to its answer",
            Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_duration = Family::<UpstreamMethod, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register_with_unit(
            "portcullis_upstream_duration",
            "Duration of calls to upstream MCP servers",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let auth_rejections = Family::<Reason, Counter>::default();
        registry.register("portcullis_auth_rejections", "Requests refused by authentication, by reason", auth_rejections.clone());
        let policy_denials = Family::<Kind, Counter>::default();
        registry.register("portcullis_policy_denials", "Calls denied by policy, by kind", policy_denials.clone());
        let guard_findings = Family::<FamilyLabel, Counter>::default();
        registry.register("portcullis_guard_findings", "Guard findings in upstream results and definitions, by family", guard_findings.clone());
        let audit_queue_depth = Gauge::default();
        registry.register("portcullis_audit_queue_depth", "Audit records waiting for the writer", audit_queue_depth.clone());
        let audit_commit_duration = Family::<CommitterLabel, Histogram>::new_with_constructor((|| Histogram::new(COMMIT_BUCKETS)) as fn() -> Histogram);
        registry.register_with_unit(
            "portcullis_audit_commit_duration",
            "Duration of audit group commits, by committer (writer or leader)",
            Unit::Seconds,
            audit_commit_duration.clone(),
        );
        let upstream_up = Family::<UpstreamLabel, Gauge>::default();
        registry.register("portcullis_upstream_up", "Whether the upstream is reachable (1) or not (0)", upstream_up.clone());
        let rate_limit_rejections = Counter::default();
        registry.register("portcullis_rate_limit_rejections", "Requests refused by rate limits or quotas", rate_limit_rejections.clone());
        let sessions_open = Gauge::default();
        registry.register("portcullis_sessions_open", "Client MCP sessions open", sessions_open.clone());
        Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                request_duration,
                upstream_duration,
                auth_rejections,
                policy_denials,
                guard_findings,
                audit_queue_depth,
                audit_commit_duration,
                upstream_up,
                rate_limit_rejections,
                sessions_open,
            }),
        }
    }

    /// Counts one request (`portcullis_requests_total{method,outcome}`) and observes its
    /// latency (`portcullis_request_duration_seconds{method}`). `method` is the JSON-RPC
    /// method as received; see [`method_label`].
    pub fn record_request(&self, method: &str, outcome: Outcome, latency: Duration) {
        let method = method_label(method);
        self.inner.requests.get_or_create(&MethodOutcome { method, outcome: outcome.as_str() }).inc();
        self.inner.request_duration.get_or_create(&MethodLabel { method }).observe(latency.as_secs_f64());
    }

    /// Observes one upstream call (`portcullis_upstream_duration_seconds{upstream,method}`);
    /// `upstream` is a configured upstream name.
    pub fn record_upstream_call(&self, upstream: &str, method: &str, latency: Duration) {
        let labels = UpstreamMethod { upstream: upstream.to_owned(), method: method_label(method) };
        self.inner.upstream_duration.get_or_create(&labels).observe(latency.as_secs_f64());
    }

    /// Counts one authentication refusal (`portcullis_auth_rejections_total{reason}`), with
    /// the reason of `auth::Error::reason`.
    pub fn record_auth_rejection(&self, reason: &'static str) {
        self.inner.auth_rejections.get_or_create(&Reason { reason }).inc();
    }

    /// Counts one policy denial (`portcullis_policy_denials_total{kind}`): `deny` (hidden
    /// target) or `missing_scopes` (step-up).
    pub fn record_policy_denial(&self, kind: &'static str) {
        self.inner.policy_denials.get_or_create(&Kind { kind }).inc();
    }

    /// Adds `count` guard findings of `family` (`portcullis_guard_findings_total{family}`),
    /// e.g. `injection`, `invisible_unicode`, `terminal_escape`, `exfiltration_link`.
    pub fn record_guard_findings(&self, family: &'static str, count: u64) {
        self.inner.guard_findings.get_or_create(&FamilyLabel { family }).inc_by(count);
    }

    /// Sets `portcullis_audit_queue_depth` (records waiting for the audit writer).
    pub fn set_audit_queue_depth(&self, depth: i64) {
        self.inner.audit_queue_depth.set(depth);
    }

    /// Observes one audit group commit
    /// (`portcullis_audit_commit_duration_seconds{committer}`).
    pub fn record_audit_commit(&self, committer: AuditCommitter, duration: Duration) {
        self.inner.audit_commit_duration.get_or_create(&CommitterLabel { committer: committer.label() }).observe(duration.as_secs_f64());
    }

    /// Sets `portcullis_upstream_up{upstream}` to 1 (reachable) or 0.
    pub fn set_upstream_up(&self, upstream: &str, up: bool) {
        self.inner.upstream_up.get_or_create(&UpstreamLabel { upstream: upstream.to_owned() }).set(i64::from(up));
    }

    /// Counts one rate-limit or quota refusal (`portcullis_rate_limit_rejections_total`).
    pub fn record_rate_limit_rejection(&self) {
        self.inner.rate_limit_rejections.inc();
    }

    /// One more open client session (`portcullis_sessions_open`).
    pub fn session_opened(&self) {
        self.inner.sessions_open.inc();
    }

    /// One fewer open client session.
    pub fn session_closed(&self) {
        self.inner.sessions_open.dec();
    }

    /// Sets `portcullis_sessions_open` (for a store that counts its own sessions).
    pub fn set_sessions_open(&self, open: i64) {
        self.inner.sessions_open.set(open);
    }

    /// The OpenMetrics text exposition of every metric ([`CONTENT_TYPE`]), ending in `# EOF`.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an error here would be an encoder bug, and a
        // partial exposition is still better than none.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        text
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}
