//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>) in and out of the gateway.
//!
//! **In.** A request's parent comes from the HTTP `traceparent`/`tracestate` headers first,
//! then from `params._meta.traceparent`/`tracestate` (MCP SEP-414). The header wins because
//! it is the nearer hop: an instrumented HTTP client puts there the context of its HTTP
//! span, itself a child of the MCP client span whose context went into `_meta`, so both
//! name the same trace and the header names the closer parent. An invalid value is ignored
//! as if absent (W3C Trace Context §3.2.2.3: restart the trace).
//!
//! **Out.** A call to an upstream carries the context of its client span in both places:
//! the HTTP headers of the upstream request and the forwarded `params._meta`. When trace
//! export is off, spans have no OpenTelemetry context and nothing is injected: the client's
//! own `_meta` values then pass through unchanged (the router forwards `_meta`).

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::TraceContextExt as _,
};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rmcp::model::RequestMetaObject;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Reads `traceparent`/`tracestate` from a request's `_meta` object.
struct MetaExtractor<'a>(&'a RequestMetaObject);

/// Reads `traceparent`/`tracestate` from a raw `_meta` JSON value.
struct JsonMetaExtractor<'a>(&'a serde_json::Value);

/// Collects what the propagator writes, for copying into `_meta`.
#[derive(Default)]
struct Collected {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// The remote parent of a request: the context in `headers` if valid, else the one in
/// `meta`, else an empty context (the request starts a new trace).
///
/// Pass the result to [`super::server_span`].
pub fn parent_context(headers: Option<&http::HeaderMap>, meta: Option<&RequestMetaObject>) -> Context {
    let propagator = TraceContextPropagator::new();
    if let Some(headers) = headers {
        let context = propagator.extract(&HeaderExtractor(headers));
        if context.span().span_context().is_valid() {
            return context;
        }
    }
    if let Some(meta) = meta {
        let context = propagator.extract(&MetaExtractor(meta));
        if context.span().span_context().is_valid() {
            return context;
        }
    }
    Context::new()
}

/// Like [`parent_context`] for a raw JSON-RPC `params` value (the transport's view of the
/// request, before rmcp parses it).
pub fn parent_context_from_params(headers: Option<&http::HeaderMap>, params: Option<&serde_json::Value>) -> Context {
    let propagator = TraceContextPropagator::new();
    if let Some(headers) = headers {
        let context = propagator.extract(&HeaderExtractor(headers));
        if context.span().span_context().is_valid() {
            return context;
        }
    }
    if let Some(meta) = params.and_then(|p| p.get("_meta")) {
        let context = propagator.extract(&JsonMetaExtractor(meta));
        if context.span().span_context().is_valid() {
            return context;
        }
    }
    Context::new()
}

/// Writes the context of `span` (normally the upstream call's [`super::client_span`]) into
/// `headers` as `traceparent` (and `tracestate` when non-empty). Does nothing when `span`
/// has no valid OpenTelemetry context (export off, or the span is disabled).
pub fn inject_headers(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return;
    }
    headers.remove(TRACESTATE);
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    if headers.get(TRACESTATE).is_some_and(|v| v.is_empty()) {
        headers.remove(TRACESTATE);
    }
}

/// Writes the context of `span` into a forwarded request's `_meta` (`traceparent`, and
/// `tracestate` when non-empty, else removed so a stale client value is not forwarded with
/// our parent). Does nothing when `span` has no valid OpenTelemetry context.
pub fn inject_meta(span: &tracing::Span, meta: &mut RequestMetaObject) {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return;
    }
    let mut collected = Collected::default();
    TraceContextPropagator::new().inject_context(&context, &mut collected);
    if let Some(traceparent) = collected.traceparent {
        meta.set_traceparent(traceparent);
    }
    match collected.tracestate.filter(|s| !s.is_empty()) {
        Some(tracestate) => meta.set_tracestate(tracestate),
        None => {
            meta.0.0.remove(TRACESTATE);
        }
    }
}

// === impl MetaExtractor ===

impl Extractor for MetaExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.0.get_traceparent(),
            TRACESTATE => self.0.get_tracestate(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        [TRACEPARENT, TRACESTATE].into_iter().filter(|k| self.get(k).is_some()).collect()
    }
}

// === impl JsonMetaExtractor ===

impl Extractor for JsonMetaExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT | TRACESTATE => self.0.get(key).and_then(serde_json::Value::as_str),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        [TRACEPARENT, TRACESTATE].into_iter().filter(|k| self.get(k).is_some()).collect()
    }
}

// === impl Collected ===

impl Injector for Collected {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE => self.tracestate = Some(value),
            _ => {}
        }
    }
}
