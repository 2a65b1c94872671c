//! Telemetry tests: trace context in and out, span names and attributes, a real OTLP/HTTP
//! export to an in-process receiver, the access log line, metrics exposition, health and
//! supervision.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Request, StatusCode},
    routing::post,
};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{AnyValue, KeyValue, any_value},
    trace::v1::{Span as OtlpSpan, span::SpanKind, status::StatusCode as OtlpStatus},
};
use prost::Message as _;
use rmcp::model::RequestMetaObject;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{span::span_name, *};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const META_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn trace_id_of(context: &opentelemetry::Context) -> String {
    context.span().span_context().trace_id().to_string()
}

/// A log sink the tests can read back.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Binds loopback port 0 and serves `app`.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`.
async fn otlp_receiver() -> (SocketAddr, mpsc::UnboundedReceiver<(HeaderMap, ExportTraceServiceRequest)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(|State(tx): State<mpsc::UnboundedSender<_>>, headers: HeaderMap, body: Bytes| async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        let _ = tx.send((headers, request));
                        (StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
                    }
                    Err(_) => (StatusCode::BAD_REQUEST, Vec::new()),
                }
            }),
        )
        .with_state(tx);
    (serve(app).await, rx)
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v: &AnyValue| v.value.as_ref())
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

// --- trace context ---

#[test]
fn parent_comes_from_the_header_first_then_meta() {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", traceparent(TRACE_ID, PARENT_ID).parse().unwrap());
    let mut meta = RequestMetaObject::new();
    meta.set_traceparent(traceparent(META_TRACE_ID, "b7ad6b7169203331"));

    let both = parent_context(Some(&headers), Some(&meta));
    assert_eq!(trace_id_of(&both), TRACE_ID, "the HTTP header is the nearer parent");
    assert!(both.span().span_context().is_remote());
    assert_eq!(both.span().span_context().span_id().to_string(), PARENT_ID);

    let meta_only = parent_context(Some(&HeaderMap::new()), Some(&meta));
    assert_eq!(trace_id_of(&meta_only), META_TRACE_ID);

    // An invalid header is ignored as if absent (W3C Trace Context §3.2.2.3).
    let mut bad = HeaderMap::new();
    bad.insert("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse().unwrap());
    assert_eq!(trace_id_of(&parent_context(Some(&bad), Some(&meta))), META_TRACE_ID);
    bad.insert("traceparent", "garbage".parse().unwrap());
    assert!(!parent_context(Some(&bad), None).span().span_context().is_valid());
    assert!(!parent_context(None, None).span().span_context().is_valid());

    // The transport's raw JSON view gives the same answer.
    let params = serde_json::json!({"name": "t", "_meta": {"traceparent": traceparent(META_TRACE_ID, "b7ad6b7169203331"), "progressToken": 1}});
    assert_eq!(trace_id_of(&context::parent_context_from_params(None, Some(&params))), META_TRACE_ID);
    assert_eq!(trace_id_of(&context::parent_context_from_params(Some(&headers), Some(&params))), TRACE_ID);
    assert!(!context::parent_context_from_params(None, Some(&serde_json::json!({"_meta": 5}))).span().span_context().is_valid());
}

#[test]
fn inject_without_trace_export_leaves_everything_unchanged() {
    let (dispatch, guard) = TelemetryBuilder::new(&env(&[])).writer(Buffer::default()).build().unwrap();
    assert!(!guard.tracing_enabled());
    let _default = tracing::dispatcher::set_default(&dispatch);
    let span = server_span("tools/call", Some("t"), opentelemetry::Context::new());
    let mut meta = RequestMetaObject::new();
    meta.set_traceparent(traceparent(META_TRACE_ID, "b7ad6b7169203331"));
    let before = meta.clone();
    inject_meta(&span, &mut meta);
    assert_eq!(meta, before, "the client's own trace context passes through");
    let mut headers = HeaderMap::new();
    inject_headers(&span, &mut headers);
    assert!(headers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_round_trips_through_headers_and_meta() {
    // Export goes to the discard port: these spans are never flushed.
    let environment = env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")]);
    let (dispatch, guard) = TelemetryBuilder::new(&environment).writer(Buffer::default()).build().unwrap();
    assert!(guard.tracing_enabled());
    let _default = tracing::dispatcher::set_default(&dispatch);

    let mut incoming = HeaderMap::new();
    incoming.insert("traceparent", traceparent(TRACE_ID, PARENT_ID).parse().unwrap());
    incoming.insert("tracestate", "vendor=abc".parse().unwrap());
    let server = server_span("tools/call", Some("weather__get_forecast"), parent_context(Some(&incoming), None));
    let client = server.in_scope(|| client_span("weather", "tools/call", Some("get_forecast")));
    let client_id = client.context().span().span_context().span_id();
    let server_id = server.context().span().span_context().span_id();
    assert_ne!(client_id, server_id);

    let mut headers = HeaderMap::new();
    inject_headers(&client, &mut headers);
    let sent = headers.get("traceparent").unwrap().to_str().unwrap().to_owned();
    assert_eq!(sent, traceparent(TRACE_ID, &client_id.to_string()));
    assert_eq!(headers.get("tracestate").unwrap(), "vendor=abc", "tracestate travels on");

    let mut meta = RequestMetaObject::new();
    meta.set_traceparent(traceparent(META_TRACE_ID, "b7ad6b7169203331"));
    meta.set_tracestate("stale=1");
    meta.set_progress_token(rmcp::model::ProgressToken(rmcp::model::NumberOrString::Number(3)));
    inject_meta(&client, &mut meta);
    assert_eq!(meta.get_traceparent(), Some(sent.as_str()), "our client span replaces the client's parent");
    assert_eq!(meta.get_tracestate(), Some("vendor=abc"));
    assert!(meta.get_progress_token().is_some(), "other _meta keys are kept");

    // What the upstream reads back names our client span in the client's trace.
    let upstream_view = parent_context(Some(&headers), Some(&meta));
    assert_eq!(trace_id_of(&upstream_view), TRACE_ID);
    assert_eq!(upstream_view.span().span_context().span_id(), client_id);
    drop((client, server));
    tokio::task::spawn_blocking(move || drop(guard)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_collector_degrades_the_exporter_but_not_readiness() {
    let environment = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "300")]);
    let health = Health::new();
    let (dispatch, guard) = TelemetryBuilder::new(&environment).writer(Buffer::default()).health(&health).build().unwrap();
    assert_eq!(health.state(EXPORTER_COMPONENT), Some(ComponentState::Up));
    tracing::dispatcher::with_default(&dispatch, || drop(server_span("ping", None, opentelemetry::Context::new())));
    let guard = tokio::task::spawn_blocking(move || {
        assert!(guard.force_flush().is_err(), "nothing listens on the discard port");
        guard
    })
    .await
    .unwrap();
    assert_eq!(health.state(EXPORTER_COMPONENT), Some(ComponentState::Degraded("collector unreachable".into())));
    assert!(health.readiness().ready, "lost traces never make the gateway unready");
    tokio::task::spawn_blocking(move || drop(guard)).await.unwrap();
}

#[test]
fn span_names_follow_the_mcp_convention() {
    assert_eq!(span_name("tools/call", Some("weather__get_forecast")), "tools/call weather__get_forecast");
    assert_eq!(span_name("tools/list", None), "tools/list");
    assert_eq!(span_name("prompts/get", Some("")), "prompts/get");
    let (dispatch, _guard) = TelemetryBuilder::new(&env(&[])).writer(Buffer::default()).build().unwrap();
    let _default = tracing::dispatcher::set_default(&dispatch);
    let long = "é".repeat(200);
    let span = server_span("tools/call", Some(&long), opentelemetry::Context::new());
    assert_eq!(span.metadata().unwrap().name(), "mcp.server");
    assert!(span.metadata().unwrap().fields().field("gen_ai.tool.name").is_some());
    assert_eq!(client_span("u", "ping", None).metadata().unwrap().name(), "mcp.client");
}

#[test]
fn bad_log_filter_names_the_variable() {
    let error = TelemetryBuilder::new(&env(&[(LOG_ENV, "info,[[[")])).build().unwrap_err();
    assert!(error.to_string().contains("PORTCULLIS_LOG"), "{error}");
}

#[test]
fn export_without_a_runtime_is_refused() {
    let environment = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")]);
    assert!(matches!(TelemetryBuilder::new(&environment).build(), Err(Error::NoRuntime)));
}

// --- a real OTLP export ---

/// A `tools/call` as the router and upstream will record it: the server span parented to
/// the client's `traceparent`, a client span for the upstream call whose context reaches a
/// real upstream HTTP server, exported over OTLP/HTTP to a real receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_call_exports_server_and_client_spans_in_the_clients_trace() {
    let (receiver, mut exports) = otlp_receiver().await;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<HeaderMap>();
    let upstream = serve(
        Router::new()
            .route(
                "/mcp",
                post(|State(tx): State<mpsc::UnboundedSender<HeaderMap>>, headers: HeaderMap| async move {
                    let _ = tx.send(headers);
                    "{}"
                }),
            )
            .with_state(seen_tx),
    )
    .await;

    let environment = env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{receiver}")),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-tenant=acme"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test"),
        ("OTEL_SERVICE_NAME", "portcullis-test"),
        ("PORTCULLIS_LOG", "info,rmcp=warn,portcullis::access=info"),
    ]);
    let logs = Buffer::default();
    let health = Health::new();
    let (dispatch, guard) =
        TelemetryBuilder::new(&environment).format(LogFormat::Json).writer(logs.clone()).health(&health).build().unwrap();
    let _default = tracing::dispatcher::set_default(&dispatch);

    let session_id = "a1b2c3d4-raw-session-id";
    let mut incoming = HeaderMap::new();
    incoming.insert("traceparent", traceparent(TRACE_ID, PARENT_ID).parse().unwrap());
    let server = server_span("tools/call", Some("weather__get_forecast"), parent_context(Some(&incoming), None));
    server.record_principal("alice", Some("cli-app"));
    server.record_session(session_id);
    server.record_protocol_version("2025-11-25");
    server.record_request_id(&7);
    server.record_upstream("weather");
    server.record_decision("allow");
    server.record_guard_findings(2);

    let client = server.in_scope(|| client_span("weather", "tools/call", Some("get_forecast")));
    client.record_request_id(&1);
    let mut headers = HeaderMap::new();
    inject_headers(&client, &mut headers);
    let status = reqwest::Client::new()
        .post(format!("http://{upstream}/mcp"))
        .headers(headers)
        .body("{}")
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success());
    client.record_error("-32050");
    let client_span_id = client.context().span().span_context().span_id().to_string();
    let server_span_id = server.context().span().span_context().span_id().to_string();
    server.in_scope(|| {
        AccessLog {
            principal: Some("alice"),
            client_id: Some("cli-app"),
            method: "tools/call",
            target: Some("weather__get_forecast"),
            outcome: Outcome::Ok,
            latency: Duration::from_millis(12),
        }
        .emit();
    });
    drop(client);
    drop(server);

    // The upstream received our client span's context in the client's trace.
    let seen = seen_rx.recv().await.unwrap();
    assert_eq!(seen.get("traceparent").unwrap().to_str().unwrap(), traceparent(TRACE_ID, &client_span_id));

    let guard = tokio::task::spawn_blocking(move || {
        guard.force_flush().unwrap();
        guard
    })
    .await
    .unwrap();
    let mut spans: Vec<OtlpSpan> = Vec::new();
    let mut resource = Vec::new();
    let mut export_headers = HeaderMap::new();
    while spans.len() < 2 {
        let (headers, request) = tokio::time::timeout(Duration::from_secs(10), exports.recv()).await.unwrap().unwrap();
        export_headers = headers;
        for resource_spans in request.resource_spans {
            resource = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
            spans.extend(resource_spans.scope_spans.into_iter().flat_map(|s| s.spans));
        }
    }
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert_eq!(health.state(EXPORTER_COMPONENT), Some(ComponentState::Up));
    assert_eq!(export_headers.get("x-collector-tenant").unwrap(), "acme");
    assert_eq!(export_headers.get("content-type").unwrap(), "application/x-protobuf");
    assert_eq!(string_attribute(&resource, "service.name").as_deref(), Some("portcullis-test"));
    assert_eq!(string_attribute(&resource, "deployment.environment.name").as_deref(), Some("test"));

    let hex = hex::encode::<&[u8]>;
    let server = spans.iter().find(|s| s.kind == SpanKind::Server as i32).expect("a server span");
    let client = spans.iter().find(|s| s.kind == SpanKind::Client as i32).expect("a client span");
    assert_eq!(server.name, "tools/call weather__get_forecast");
    assert_eq!(client.name, "tools/call get_forecast");
    assert_eq!(hex(&server.trace_id), TRACE_ID);
    assert_eq!(hex(&client.trace_id), TRACE_ID, "one trace");
    assert_eq!(hex(&server.parent_span_id), PARENT_ID, "parented to the client's traceparent");
    assert_eq!(hex(&server.span_id), server_span_id);
    assert_eq!(hex(&client.parent_span_id), server_span_id, "the upstream call is a child of the request");
    assert_eq!(hex(&client.span_id), client_span_id);

    let expect = |span: &OtlpSpan, key: &str, value: &str| {
        assert_eq!(string_attribute(&span.attributes, key).as_deref(), Some(value), "{key} on {}", span.name);
    };
    expect(server, "mcp.method.name", "tools/call");
    expect(server, "gen_ai.tool.name", "weather__get_forecast");
    expect(server, "gen_ai.operation.name", "execute_tool");
    expect(server, "network.transport", "tcp");
    expect(server, "mcp.protocol.version", "2025-11-25");
    expect(server, "jsonrpc.request.id", "7");
    expect(server, "enduser.id", "alice");
    expect(server, "client.id", "cli-app");
    expect(server, "portcullis.upstream", "weather");
    expect(server, "portcullis.policy.decision", "allow");
    expect(server, "portcullis.guard.findings", "2");
    expect(server, "mcp.session.id", &crate::session::hash_id(session_id));
    assert!(attribute(&server.attributes, "error.type").is_none());
    expect(client, "portcullis.upstream", "weather");
    expect(client, "gen_ai.tool.name", "get_forecast");
    expect(client, "error.type", "-32050");
    expect(client, "jsonrpc.request.id", "1");
    assert_eq!(client.status.as_ref().map(|s| s.code), Some(OtlpStatus::Error as i32));
    for span in &spans {
        assert!(!format!("{span:?}").contains(session_id), "a raw session id reached a span: {span:?}");
        assert!(attribute(&span.attributes, "otel.name").is_none() && attribute(&span.attributes, "otel.kind").is_none());
    }

    // The access line (enabled above; off by default): one JSON object with the request's
    // summary.
    let logs = logs.text();
    let line = logs.lines().find(|l| l.contains("portcullis::access")).expect("an access line");
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["principal"], "alice");
    assert_eq!(line["method"], "tools/call");
    assert_eq!(line["target_name"], "weather__get_forecast");
    assert_eq!(line["outcome"], "ok");
    assert_eq!(line["latency_ms"], 12.0);
    assert!(!logs.contains(session_id), "a raw session id reached the logs");
    tokio::task::spawn_blocking(move || drop(guard)).await.unwrap();
}

// --- metrics ---

/// Parses the OpenMetrics text exposition: `name{labels} value` → value.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    assert_eq!(text.lines().last(), Some("# EOF"));
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("malformed line {line:?}"));
            (series.to_owned(), value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}")))
        })
        .collect()
}

#[test]
fn metrics_render_counts_every_recording() {
    let metrics = Metrics::new();
    for _ in 0..3 {
        metrics.record_request("tools/call", Outcome::Ok, Duration::from_millis(20));
    }
    metrics.record_request("tools/call", Outcome::Denied, Duration::from_millis(2));
    metrics.record_request("attacker/$(random)", Outcome::ClientError, Duration::from_millis(1));
    metrics.record_request("notifications/initialized", Outcome::Ok, Duration::from_millis(1));
    metrics.record_upstream_call("weather", "tools/call", Duration::from_millis(15));
    metrics.record_auth_rejection("expired");
    metrics.record_auth_rejection("expired");
    metrics.record_policy_denial("deny");
    metrics.record_guard_findings("invisible_unicode", 4);
    metrics.set_audit_queue_depth(5);
    metrics.record_audit_commit(AuditCommitter::Writer, Duration::from_micros(1500));
    metrics.record_audit_commit(AuditCommitter::Leader, Duration::from_micros(200));
    metrics.record_audit_commit(AuditCommitter::Leader, Duration::from_micros(300));
    metrics.set_upstream_up("weather", true);
    metrics.set_upstream_up("files", false);
    metrics.record_rate_limit_rejection();
    metrics.session_opened();
    metrics.session_opened();
    metrics.session_closed();

    let series = parse_exposition(&metrics.render());
    let get = |key: &str| *series.get(key).unwrap_or_else(|| panic!("missing {key} in {series:#?}"));
    assert_eq!(get(r#"portcullis_requests_total{method="tools/call",outcome="ok"}"#), 3.0);
    assert_eq!(get(r#"portcullis_requests_total{method="tools/call",outcome="denied"}"#), 1.0);
    assert_eq!(get(r#"portcullis_requests_total{method="other",outcome="client_error"}"#), 1.0);
    assert_eq!(get(r#"portcullis_requests_total{method="notifications",outcome="ok"}"#), 1.0);
    assert_eq!(get(r#"portcullis_request_duration_seconds_count{method="tools/call"}"#), 4.0);
    assert_eq!(get(r#"portcullis_request_duration_seconds_bucket{le="0.025",method="tools/call"}"#), 4.0);
    assert_eq!(get(r#"portcullis_request_duration_seconds_bucket{le="0.01",method="tools/call"}"#), 1.0);
    assert_eq!(get(r#"portcullis_upstream_duration_seconds_count{upstream="weather",method="tools/call"}"#), 1.0);
    assert_eq!(get(r#"portcullis_auth_rejections_total{reason="expired"}"#), 2.0);
    assert_eq!(get(r#"portcullis_policy_denials_total{kind="deny"}"#), 1.0);
    assert_eq!(get(r#"portcullis_guard_findings_total{family="invisible_unicode"}"#), 4.0);
    assert_eq!(get("portcullis_audit_queue_depth"), 5.0);
    assert_eq!(get(r#"portcullis_audit_commit_duration_seconds_count{committer="writer"}"#), 1.0);
    assert_eq!(get(r#"portcullis_audit_commit_duration_seconds_count{committer="leader"}"#), 2.0);
    assert_eq!(get(r#"portcullis_upstream_up{upstream="weather"}"#), 1.0);
    assert_eq!(get(r#"portcullis_upstream_up{upstream="files"}"#), 0.0);
    assert_eq!(get("portcullis_rate_limit_rejections_total"), 1.0);
    assert_eq!(get("portcullis_sessions_open"), 1.0);
    assert!(!series.keys().any(|k| k.contains("attacker")), "client-chosen methods never become labels");
}

#[tokio::test]
async fn metrics_endpoint_serves_openmetrics() {
    let metrics = Metrics::new();
    metrics.record_request("ping", Outcome::Ok, Duration::from_millis(1));
    let response = metrics_router(metrics.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], metrics::CONTENT_TYPE);
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    let series = parse_exposition(std::str::from_utf8(&body).unwrap());
    assert_eq!(series[r#"portcullis_requests_total{method="ping",outcome="ok"}"#], 1.0);
}

// --- health ---

async fn get_json(router: Router, path: &str) -> (StatusCode, serde_json::Value) {
    let response = router.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn readiness_needs_every_component_and_one_member_per_group() {
    let health = Health::new();
    assert!(health.readiness().ready, "nothing registered, nothing required");
    let audit = health.register("audit_writer");
    let weather = health.register_member("upstreams", "weather");
    let files = health.register_member("upstreams", "files");
    let (status, body) = get_json(health_router(health.clone()), "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "unready");
    assert_eq!(body["components"]["audit_writer"]["state"], "starting");

    audit.up();
    weather.down("connection refused");
    files.up();
    let (status, body) = get_json(health_router(health.clone()), "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["components"]["upstreams/weather"], serde_json::json!({"state": "down", "detail": "connection refused"}));
    assert_eq!(body["groups"]["upstreams"], serde_json::json!({"ready": true, "working": 1, "total": 2}));

    files.down("timed out");
    let (status, body) = get_json(health_router(health.clone()), "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "no upstream reachable");
    assert_eq!(body["groups"]["upstreams"]["ready"], false);
    files.degraded("slow");
    assert!(health.readiness().ready, "degraded counts as working");
    audit.down("disk full");
    assert!(!health.readiness().ready && !health.is_up("audit_writer") && !audit.is_up());
    assert_eq!(health.register("audit_writer").state(), ComponentState::Down("disk full".into()), "re-registering keeps the state");

    let response = health_router(health).oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "alive whatever readiness says");
}

#[tokio::test(start_paused = true)]
async fn supervise_restarts_failed_and_panicked_tasks_with_backoff() {
    let health = Health::new();
    let component = health.register("jwks_refresher");
    let runs = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    let backoff = Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(4), stable_after: Duration::from_secs(60) };
    let counter = runs.clone();
    let supervisor = supervise(component, backoff, stop.clone(), move |handle, stop| {
        let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            match run {
                1 => Err("issuer unreachable"),
                2 => panic!("refresher bug"),
                _ => {
                    handle.up();
                    stop.cancelled().await;
                    Ok(())
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(health.state("jwks_refresher"), Some(ComponentState::Down("failed: issuer unreachable".into())));
    assert!(!health.readiness().ready);
    tokio::time::sleep(Duration::from_secs(1)).await; // t = 1.5 s: second run (after 1 s) panicked
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(health.state("jwks_refresher"), Some(ComponentState::Down("panicked".into())));
    tokio::time::sleep(Duration::from_secs(1)).await; // t = 2.5 s: the 2 s delay is still running
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_secs(1)).await; // t = 3.5 s: third run is up
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert!(health.readiness().ready);
    stop.cancel();
    supervisor.await.unwrap();
    assert_eq!(health.state("jwks_refresher"), Some(ComponentState::Down("stopped".into())));
}

#[tokio::test(start_paused = true)]
async fn supervise_backoff_doubles_up_to_the_cap() {
    let health = Health::new();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let backoff = Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(4), stable_after: Duration::from_secs(60) };
    let recorded = starts.clone();
    let begin = tokio::time::Instant::now();
    let supervisor = supervise(health.register("flaky"), backoff, stop.clone(), move |_, _| {
        recorded.lock().unwrap().push(begin.elapsed().as_secs());
        async { Err::<(), _>("no") }
    });
    tokio::time::sleep(Duration::from_secs(20)).await;
    stop.cancel();
    supervisor.await.unwrap();
    assert_eq!(*starts.lock().unwrap(), vec![0, 1, 3, 7, 11, 15, 19]);
}

/// The audit writer scenario of issue 6: while its database is down the writer dies,
/// readiness fails and calls are refused; when the database is back the supervisor's restart
/// recovers without restarting the process.
#[tokio::test(start_paused = true)]
async fn dead_audit_writer_flips_readiness_and_refuses_calls_until_it_recovers() {
    let health = Health::new();
    let database_up = Arc::new(AtomicBool::new(true));
    let stop = CancellationToken::new();
    let backoff = Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(2), stable_after: Duration::from_secs(10) };
    let database = database_up.clone();
    let supervisor = supervise(health.register("audit_writer"), backoff, stop.clone(), move |handle, stop| {
        let database = database.clone();
        async move {
            loop {
                if !database.load(Ordering::SeqCst) {
                    return Err("audit store not writable: connection refused");
                }
                handle.up();
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    });
    // What the request path does before forwarding (fail closed).
    let admit = |health: &Health| if health.is_up("audit_writer") { Ok(()) } else { Err("audit unavailable") };

    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(admit(&health).is_ok() && health.readiness().ready);

    database_up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(admit(&health).is_err(), "calls are refused while the writer is down");
    let (status, body) = get_json(health_router(health.clone()), "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["components"]["audit_writer"]["state"], "down");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(admit(&health).is_err(), "restarts keep failing while the database is down");

    database_up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(admit(&health).is_ok(), "a restart after the database returns recovers");
    assert_eq!(get_json(health_router(health.clone()), "/readyz").await.0, StatusCode::OK);
    stop.cancel();
    supervisor.await.unwrap();
}
