//! OpenTelemetry end to end: the real `portcullis serve` process exports to an in-process
//! OTLP/HTTP receiver; a `tools/call` yields the server span and its child client span in
//! the client's trace, with the MCP attributes, and the upstream receives that context.

use std::{collections::HashMap, time::Duration};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{KeyValue, any_value},
    trace::v1::{Span, span::SpanKind},
};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

use crate::common::{self, Fixture};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

async fn receiver() -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(|State(tx): State<tokio::sync::mpsc::UnboundedSender<_>>, body: Bytes| async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        let _ = tx.send(request);
                        (StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
                    }
                    Err(_) => (StatusCode::BAD_REQUEST, Vec::new()),
                }
            }),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, rx)
}

fn attr(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|kv: &&KeyValue| kv.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn tools_call_is_traced_in_the_clients_trace_and_propagated_upstream() {
    let (otlp, mut exported) = receiver().await;
    let fixture = Fixture::start(&[]).await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream"])
        .arg(format!("fx={}", fixture.url))
        .arg("--data-dir")
        .arg(data_dir.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_SERVICE_NAME", "portcullis-under-test")
        .env("PORTCULLIS_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let address = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.expect("no listening line").unwrap().expect("gateway exited");
        let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
        if event["message"] == "listening" {
            break event["address"].as_str().unwrap().parse::<std::net::SocketAddr>().unwrap();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let settings = common::settings_for(address, data_dir.path(), vec![]);
    let token = portcullis::embedded_issuer(&settings)
        .unwrap()
        .mint(&portcullis::auth::issuer::TokenRequest { subject: "alice".into(), scopes: vec!["mcp:tools".into()], ttl: Duration::from_secs(120), client_id: Some("trace-test".into()) })
        .unwrap();

    let url = format!("http://{address}/mcp");
    let headers = HashMap::from([(
        http::HeaderName::from_static("traceparent"),
        http::HeaderValue::from_str(&format!("00-{TRACE_ID}-{PARENT_ID}-01")).unwrap(),
    )]);
    let config = rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(url)
        .auth_header(token)
        .custom_headers(headers);
    let transport = rmcp::transport::StreamableHttpClientTransport::from_config(config);
    let client = rmcp::serve_client(common::TestClient::default(), transport).await.unwrap();
    let mut params = rmcp::model::CallToolRequestParams::new("fx__whoami_headers");
    params.arguments = json!({}).as_object().cloned();
    let result = client.peer().call_tool(params).await.unwrap();
    let text = serde_json::to_value(&result.content).unwrap()[0]["text"].as_str().unwrap().to_owned();
    let upstream_headers: Value = serde_json::from_str(&text).unwrap();
    let upstream_traceparent = upstream_headers["traceparent"].as_str().expect("upstream got no traceparent header");
    assert!(upstream_traceparent.contains(TRACE_ID), "upstream not in the client's trace: {upstream_traceparent}");
    client.cancel().await.unwrap();

    // Collect exported spans until both the server and the client span of the call arrived.
    let mut spans: Vec<Span> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let find = |spans: &[Span], kind: SpanKind| -> Option<Span> {
        spans.iter().find(|s| s.kind == kind as i32 && attr(s, "mcp.method.name").as_deref() == Some("tools/call")).cloned()
    };
    while find(&spans, SpanKind::Server).is_none() || find(&spans, SpanKind::Client).is_none() {
        let request = tokio::time::timeout_at(deadline, exported.recv()).await.expect("spans not exported in time").unwrap();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    let server = find(&spans, SpanKind::Server).unwrap();
    let client_span = find(&spans, SpanKind::Client).unwrap();
    assert_eq!(hex(&server.trace_id), TRACE_ID);
    assert_eq!(hex(&server.parent_span_id), PARENT_ID, "server span not parented to the client's traceparent");
    assert_eq!(client_span.trace_id, server.trace_id);
    assert_eq!(client_span.parent_span_id, server.span_id, "client span is not a child of the server span");
    assert_eq!(server.name, "tools/call fx__whoami_headers");
    assert!(upstream_traceparent.contains(&hex(&client_span.span_id)), "upstream should continue the client span");
    for (key, value) in [("gen_ai.tool.name", "fx__whoami_headers"), ("gen_ai.operation.name", "execute_tool"), ("enduser.id", "alice"), ("client.id", "trace-test"), ("portcullis.upstream", "fx"), ("network.transport", "tcp")] {
        assert_eq!(attr(&server, key).as_deref(), Some(value), "server span {key}: {:?}", server.attributes);
    }
    assert!(attr(&server, "jsonrpc.request.id").is_some());
    assert!(attr(&server, "mcp.session.id").is_some_and(|s| s.len() == 64), "session id must be hashed");
    assert_eq!(attr(&client_span, "portcullis.upstream").as_deref(), Some("fx"));
    let everything = format!("{spans:?}");
    assert!(!everything.contains("eyJ"), "a token reached a span");
    let _ = child.kill().await;
}
