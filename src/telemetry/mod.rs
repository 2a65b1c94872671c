//! Telemetry: logs, OpenTelemetry traces, Prometheus metrics and health.
//!
//! This is the only module that sets up `tracing` subscribers and OpenTelemetry exporters
//! (house style 21); every other module emits `tracing` events, records on the spans made
//! here and calls the typed recorders of [`Metrics`].
//!
//! - [`init`] / [`TelemetryBuilder`]: the process-wide `tracing` subscriber. Logs are JSON
//!   lines on stderr (human-readable text on a terminal), filtered by `PORTCULLIS_LOG`
//!   (default `info,rmcp=warn,portcullis::access=off`); when an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_*` or
//!   `telemetry.otlp_endpoint`) the gateway's spans are also exported over OTLP/HTTP
//!   (protobuf), honouring the standard `OTEL_*` variables. [`TelemetryGuard`] flushes the
//!   exporter when dropped.
//! - [`context`]: W3C Trace Context in and out: the parent of a request comes from the HTTP
//!   `traceparent` header, else from `params._meta.traceparent`; calls to upstreams carry
//!   the client span's context in both places.
//! - [`span`]: the server span of one JSON-RPC request (`{mcp.method.name} {target}`) and the
//!   client span of one upstream call, with the OpenTelemetry MCP and GenAI semantic
//!   convention attribute names, and the access log line.
//! - [`metrics`]: [`Metrics`], the Prometheus registry served at `/metrics`.
//! - [`health`]: [`Health`], the component registry behind `/healthz` and `/readyz`, and
//!   [`supervise`], which restarts a background task with capped exponential backoff.
//!
//! Invariants: no argument value, token, secret or raw session id is ever put in a span
//! attribute (session ids are recorded as their SHA-256, like everywhere else in the
//! gateway); every metric label takes values from a bounded set (methods outside the MCP
//! method list are counted as `other`); library code never reads the process environment:
//! callers pass the env map ([`crate::process_env`]).

pub mod context;
pub mod health;
pub mod metrics;
mod otlp;
pub mod span;

use std::{collections::HashMap, io::IsTerminal as _};

use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::{
    EnvFilter, Layer as _, Registry,
    filter::Targets,
    fmt::{MakeWriter, writer::BoxMakeWriter},
    layer::SubscriberExt as _,
};
use url::Url;

pub use context::{inject_headers, inject_meta, parent_context};
pub use health::{Backoff, ComponentHandle, ComponentState, Health, health_router, supervise};
pub use metrics::{AuditCommitter, Metrics, Outcome, method_label, metrics_router};
pub use span::{AccessLog, McpSpanExt, client_span, server_span};

/// Variable holding the log filter (`tracing_subscriber::EnvFilter` syntax).
pub const LOG_ENV: &str = "PORTCULLIS_LOG";
/// Log filter used when [`LOG_ENV`] is unset or empty.
pub const DEFAULT_LOG_FILTER: &str = "info,rmcp=warn,portcullis::access=off";
/// Health component of the OTLP trace exporter ([`TelemetryBuilder::health`]).
pub const EXPORTER_COMPONENT: &str = "trace_exporter";

/// Telemetry set-up failures. Each names the variable or setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `OTEL_*` or `PORTCULLIS_LOG` variable holds a value the gateway cannot use.
    #[error("invalid {variable}: {reason}")]
    InvalidEnv {
        /// The variable, e.g. `OTEL_TRACES_SAMPLER`.
        variable: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The OTLP exporter could not be built (message from opentelemetry-otlp).
    #[error("cannot build the OTLP trace exporter: {0}")]
    Exporter(String),
    /// OTLP export is on but no tokio runtime is running to carry its HTTP requests.
    #[error("OTLP trace export needs a tokio runtime: initialise telemetry inside the runtime")]
    NoRuntime,
    /// A global `tracing` subscriber was installed before.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialized,
    /// Flushing or shutting down the exporter failed (spans may be lost).
    #[error("OTLP trace export: {0}")]
    Export(String),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// JSON lines when stderr is not a terminal, text otherwise.
    #[default]
    Auto,
    /// One JSON object per line, event fields flattened (`tracing_subscriber` JSON format).
    Json,
    /// Human-readable single lines with colours (`tracing_subscriber` default format).
    Text,
}

/// Builds the process-wide `tracing` subscriber: the log layer and, when an OTLP endpoint
/// is configured, the OpenTelemetry layer. See [`init`] for the one-call form.
pub struct TelemetryBuilder {
    env: HashMap<String, String>,
    otlp_endpoint: Option<Url>,
    writer: Option<BoxMakeWriter>,
    format: LogFormat,
    runtime: Option<tokio::runtime::Handle>,
    health: Option<Health>,
}

/// Keeps the OpenTelemetry exporter alive; dropping it flushes buffered spans and shuts the
/// exporter down (blocking up to the export timeout).
///
/// Drop it outside the runtime, or on a multi-thread runtime (it then uses
/// `block_in_place`); on a current-thread runtime the final export cannot run and is lost
/// after the SDK's shutdown timeout.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

/// Initialises logging and, when configured, trace export, for the whole process.
///
/// `env` is the process environment ([`crate::process_env`]); `otlp_endpoint` is
/// `telemetry.otlp_endpoint` from the configuration, used when no `OTEL_EXPORTER_OTLP_*`
/// endpoint variable is set. Must run inside the tokio runtime when export is on.
///
/// # Errors
/// [`Error::InvalidEnv`] for an unusable `OTEL_*`/`PORTCULLIS_LOG` value,
/// [`Error::NoRuntime`], [`Error::Exporter`], [`Error::AlreadyInitialized`].
pub fn init(env: &HashMap<String, String>, otlp_endpoint: Option<Url>) -> Result<TelemetryGuard, Error> {
    TelemetryBuilder::new(env).otlp_endpoint(otlp_endpoint).init()
}

// === impl TelemetryBuilder ===

impl TelemetryBuilder {
    /// A builder reading `PORTCULLIS_LOG` and the `OTEL_*` variables from `env`.
    pub fn new(env: &HashMap<String, String>) -> Self {
        Self { env: env.clone(), otlp_endpoint: None, writer: None, format: LogFormat::Auto, runtime: None, health: None }
    }

    /// `telemetry.otlp_endpoint`: the OTLP/HTTP base URL (`/v1/traces` is appended), used
    /// only when neither `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` nor
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (environment over file, as for every setting).
    pub fn otlp_endpoint(mut self, endpoint: Option<Url>) -> Self {
        self.otlp_endpoint = endpoint;
        self
    }

    /// Where log lines go (default stderr). The hook for the `redact` scrubber: pass a
    /// `MakeWriter` that scrubs and forwards to stderr.
    pub fn writer<W>(mut self, writer: W) -> Self
    where
        W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    {
        self.writer = Some(BoxMakeWriter::new(writer));
        self
    }

    /// Overrides the log format (default [`LogFormat::Auto`]).
    pub fn format(mut self, format: LogFormat) -> Self {
        self.format = format;
        self
    }

    /// The runtime that carries OTLP HTTP requests (default: the current one).
    pub fn runtime(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Registers the `trace_exporter` component in `health` when export is on: `up` once
    /// built and after each successful export, `degraded` (still ready: only traces are
    /// lost) while exports fail.
    pub fn health(mut self, health: &Health) -> Self {
        self.health = Some(health.clone());
        self
    }

    /// Builds the subscriber without installing it (tests install it per thread with
    /// `tracing::dispatcher::set_default`).
    ///
    /// # Errors
    /// As [`init`], except [`Error::AlreadyInitialized`].
    pub fn build(self) -> Result<(tracing::Dispatch, TelemetryGuard), Error> {
        let filter = match self.env.get(LOG_ENV).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            Some(directives) => EnvFilter::try_new(directives).map_err(|error| Error::InvalidEnv {
                variable: LOG_ENV,
                reason: format!("{error} (example: PORTCULLIS_LOG=info,portcullis=debug)"),
            })?,
            None => EnvFilter::new(DEFAULT_LOG_FILTER),
        };
        let json = match self.format {
            LogFormat::Auto => !std::io::stderr().is_terminal(),
            LogFormat::Json => true,
            LogFormat::Text => false,
        };
        let writer = self.writer.unwrap_or_else(|| BoxMakeWriter::new(std::io::stderr));
        let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
        let fmt = if json { fmt.json().flatten_event(true).boxed() } else { fmt.boxed() };

        let exporter = otlp::ExportSettings::from_env(&self.env, self.otlp_endpoint.as_ref())?;
        let (otel, provider) = match exporter {
            None => (None, None),
            Some(settings) => {
                let runtime = match self.runtime {
                    Some(runtime) => runtime,
                    None => tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?,
                };
                let component = self.health.as_ref().map(|health| {
                    let component = health.register(EXPORTER_COMPONENT);
                    component.up();
                    component
                });
                let provider = otlp::tracer_provider(&settings, runtime, component)?;
                let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "portcullis");
                // Only the gateway's own spans (and the events inside them) are exported: rmcp
                // and HTTP-stack spans would add per-session noise and could outlive requests.
                let targets = Targets::new().with_target("portcullis", tracing::Level::INFO);
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_location(false)
                    .with_threads(false)
                    .with_filter(targets);
                (Some(layer), Some(provider))
            }
        };
        // The per-request `mcp.*` spans are for traces, not for log lines: the fmt layer would
        // format every field of every request's spans (≈10 % of a small call's CPU, issue 7
        // profile) only to print them with the rare event logged inside a request.
        let not_request_span = tracing_subscriber::filter::filter_fn(|meta| !(meta.is_span() && meta.name().starts_with("mcp.")));
        let subscriber = Registry::default().with(otel).with(fmt.with_filter(filter.and(not_request_span)));
        Ok((tracing::Dispatch::new(subscriber), TelemetryGuard { provider }))
    }

    /// Builds the subscriber and installs it for the whole process.
    ///
    /// # Errors
    /// As [`init`].
    pub fn init(self) -> Result<TelemetryGuard, Error> {
        let (dispatch, guard) = self.build()?;
        tracing::dispatcher::set_global_default(dispatch).map_err(|_| Error::AlreadyInitialized)?;
        if guard.tracing_enabled() {
            tracing::info!("OpenTelemetry trace export on (OTLP/HTTP)");
        }
        Ok(guard)
    }
}

// === impl TelemetryGuard ===

impl TelemetryGuard {
    /// Whether spans are exported (an OTLP endpoint was configured).
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every finished span now. Blocks: call it from a blocking context
    /// (`spawn_blocking`), never on a current-thread runtime.
    ///
    /// # Errors
    /// [`Error::Export`] when the export failed or timed out.
    pub fn force_flush(&self) -> Result<(), Error> {
        match &self.provider {
            Some(provider) => provider.force_flush().map_err(|e| Error::Export(e.to_string())),
            None => Ok(()),
        }
    }

    fn shutdown_now(&mut self) {
        let Some(provider) = self.provider.take() else { return };
        let shutdown = move || {
            if let Err(error) = provider.shutdown() {
                tracing::warn!(%error, "OpenTelemetry exporter shutdown failed; some spans may be lost");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(shutdown);
            }
            _ => shutdown(),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard").field("tracing_enabled", &self.tracing_enabled()).finish()
    }
}

#[cfg(test)]
mod tests;
