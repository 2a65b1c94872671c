//! The whole request pipeline with real parts: audit (SQLite and a real PostgreSQL behind a
//! cuttable TCP hop), guard, tool pinning, metrics and readiness, OpenTelemetry export.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sqlx::{Connection as _, Executor as _};

use crate::common::{self, ALL_SCOPES, Fixture, Gateway, UpstreamSpec, connect};

fn call(name: &str, arguments: Value) -> rmcp::model::CallToolRequestParams {
    let mut params = rmcp::model::CallToolRequestParams::new(name.to_owned());
    params.arguments = arguments.as_object().cloned();
    params
}

/// A TCP hop the test can cut: while down, it drops every connection (an unreachable
/// database, as a network partition or a dead server looks to the gateway).
struct Hop {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Hop {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(tokio::sync::watch::channel(0u64).0);
        let (flag, gen_tx) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let mut cut = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { addr, up, generation }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

async fn readyz(gateway: &Gateway) -> (u16, Value) {
    let response = reqwest::get(format!("http://{}/readyz", gateway.addr)).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn tool_calls_recorded(path: &str) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter(|l| l.contains("tools/call")).count()
}

/// Audit store down → calls refused (`-32052`), nothing forwarded, `/readyz` unready; back
/// up → calls flow again and `/readyz` recovers, without a restart. A real PostgreSQL behind a
/// TCP hop the test cuts.
#[tokio::test]
async fn audit_store_down_refuses_calls_and_recovers_without_restart() {
    let Ok(base) = std::env::var("PORTCULLIS_TEST_POSTGRES_URL") else {
        assert!(std::env::var("PORTCULLIS_SKIP_POSTGRES").is_ok(), "PORTCULLIS_TEST_POSTGRES_URL is not set (bash scripts/test.sh starts PostgreSQL)");
        return;
    };
    let name = format!("gw_audit_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    let pg: url::Url = base.parse().unwrap();
    let target = format!("{}:{}", pg.host_str().unwrap(), pg.port().unwrap()).parse().unwrap();
    let hop = Hop::start(target).await;
    let mut through_hop = pg.clone();
    through_hop.set_port(Some(hop.addr.port())).unwrap();
    through_hop.set_path(&format!("/{name}"));

    let record = tempfile::NamedTempFile::new().unwrap();
    let record_path = record.path().to_str().unwrap().to_owned();
    let fixture = Fixture::start(&[("FIXTURE_RECORD_HEADERS", &record_path)]).await;
    let audit_url = through_hop.to_string();
    let gateway = Gateway::start_with(vec![UpstreamSpec::new("fx", &fixture.url)], |config| {
        config.audit.url = Some(audit_url);
    })
    .await;
    let (client, _) = connect(&gateway.url, &gateway.token("alice", ALL_SCOPES)).await.unwrap();
    client.peer().call_tool(call("fx__echo", json!({"text": "before"}))).await.unwrap();
    assert_eq!(readyz(&gateway).await.0, 200);
    let forwarded_before = tool_calls_recorded(&record_path);

    hop.cut();
    let error = client.peer().call_tool(call("fx__echo", json!({"text": "during"}))).await.unwrap_err();
    let rmcp::service::ServiceError::McpError(data) = error else { panic!("expected a JSON-RPC error, got {error}") };
    assert_eq!(data.code.0, -32052, "{}", data.message);
    assert_eq!(tool_calls_recorded(&record_path), forwarded_before, "a call reached the upstream without a durable intent");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz(&gateway).await;
        if status == 503 {
            assert_eq!(body["components"]["audit"]["state"], "down", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz stayed ready with the audit store down: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    hop.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.peer().call_tool(call("fx__echo", json!({"text": "after"}))).await {
            Ok(_) => break,
            Err(error) => assert!(Instant::now() < deadline, "calls did not recover: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(&gateway).await.0 != 200 {
        assert!(Instant::now() < deadline, "/readyz did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.cancel().await.unwrap();
    gateway.stop().await;
    admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.unwrap();
}

/// Lists and calls, allowed and denied, all leave rows; `portcullis audit verify` passes and
/// the argument values are redacted.
#[tokio::test]
async fn every_request_is_audited_and_the_record_verifies() {
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url)]).await;
    let (client, _) = connect(&gateway.url, &gateway.token("alice", ALL_SCOPES)).await.unwrap();
    client.peer().list_all_tools().await.unwrap();
    let secret = "AKIAZ4T7QW2MXJ5RPL6N";
    client.peer().call_tool(call("fx__echo", json!({"text": format!("key {secret}")}))).await.unwrap();
    client.peer().call_tool(call("fx__nope", json!({}))).await.unwrap_err();
    client.cancel().await.unwrap();
    let data_dir = gateway.stop().await;
    let data_dir = data_dir.path();

    let portcullis = env!("CARGO_BIN_EXE_portcullis");
    let verify = std::process::Command::new(portcullis).args(["audit", "verify", "--data-dir"]).arg(data_dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "verify failed: {stdout}{}", String::from_utf8_lossy(&verify.stderr));
    let export = std::process::Command::new(portcullis).args(["audit", "export", "--since", "1h", "--data-dir"]).arg(data_dir).output().unwrap();
    let rows: Vec<Value> = String::from_utf8_lossy(&export.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let text = serde_json::to_string(&rows).unwrap();
    assert!(!text.contains(secret), "an argument secret reached the audit table: {text}");
    for method in ["initialize", "tools/list", "tools/call"] {
        assert!(rows.iter().any(|r| r.to_string().contains(&format!("\"{method}\""))), "no row for {method}: {text}");
    }
    assert!(text.contains("fx__nope"), "the unknown-tool request was not audited");
    assert!(text.contains("alice"));
}

/// The guard blocks an injected instruction in a tool result: the client gets `isError` with
/// a neutral message and the guard's `_meta`, never the payload.
#[tokio::test]
async fn guard_blocks_an_injected_tool_result() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let demo = portcullis::demo::spawn(listener, cancel.clone()).unwrap();
    let gateway = Gateway::start(vec![UpstreamSpec::new("demo", &format!("http://{demo}/mcp"))]).await;
    let (client, _) = connect(&gateway.url, &gateway.token("alice", ALL_SCOPES)).await.unwrap();
    let result = client.peer().call_tool(call("demo__fetch_webpage", json!({"url": "https://example.com"}))).await.unwrap();
    let value = serde_json::to_value(&result).unwrap();
    assert_eq!(value["isError"], true, "{value}");
    assert!(!value.to_string().contains("Ignore all previous instructions"), "payload reached the client: {value}");
    assert!(!value.to_string().contains("attacker.example"), "payload reached the client: {value}");
    let guard = &value["_meta"]["io.portcullis/guard"];
    assert_eq!(guard["action"], "block", "{value}");
    assert!(!guard["findings"].as_array().unwrap().is_empty());
    let benign = client.peer().call_tool(call("demo__get_forecast", json!({"city": "Oslo"}))).await.unwrap();
    assert_ne!(serde_json::to_value(&benign).unwrap()["isError"], true);

    let metrics = reqwest::get(format!("http://{}/metrics", gateway.addr)).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("portcullis_guard_findings_total") && !l.ends_with(" 0")), "{metrics}");
    let calls: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_requests_total{") && l.contains("tools/call") && l.contains("outcome=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(calls, 2.0, "{metrics}");
    // Each call's intent was committed before it was forwarded, and each commit is measured,
    // by the writer or by the request as leader.
    let commits: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_audit_commit_duration_seconds_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(commits >= 2.0, "audit commits not measured: {metrics}");
    client.cancel().await.unwrap();
    gateway.stop().await;
    cancel.cancel();
}

/// A tool whose definition changes after it was pinned (a rug pull) is withheld from lists
/// and calls until an operator approves it with `portcullis tools approve`.
#[tokio::test]
async fn changed_tool_definition_is_withheld_until_approved() {
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url)]).await;
    let (client, _) = connect(&gateway.url, &gateway.token("alice", ALL_SCOPES)).await.unwrap();
    assert!(client.peer().list_all_tools().await.unwrap().iter().any(|t| t.name == "fx__echo"));

    // Tamper with the pin as if the upstream had changed `echo` since it was first seen.
    let pins_path = gateway.data_dir.path().join("guard").join("pins.json");
    let mut pins: Value = serde_json::from_str(&std::fs::read_to_string(&pins_path).unwrap()).unwrap();
    pins["tools"]["fx/echo"]["hash"] = json!("0".repeat(64));
    std::fs::write(&pins_path, serde_json::to_string(&pins).unwrap()).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while client.peer().list_all_tools().await.unwrap().iter().any(|t| t.name == "fx__echo") {
        assert!(Instant::now() < deadline, "changed tool still listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let error = client.peer().call_tool(call("fx__echo", json!({"text": "x"}))).await.unwrap_err();
    assert!(error.to_string().contains("awaiting approval"), "{error}");

    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["tools", "list", "--pending", "--data-dir"])
        .arg(gateway.data_dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("fx/echo"), "{}", String::from_utf8_lossy(&listed.stdout));
    let approved = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["tools", "approve", "fx/echo", "--data-dir"])
        .arg(gateway.data_dir.path())
        .output()
        .unwrap();
    assert!(approved.status.success(), "{}", String::from_utf8_lossy(&approved.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client.peer().list_all_tools().await.unwrap().iter().any(|t| t.name == "fx__echo") {
        assert!(Instant::now() < deadline, "approved tool not listed again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.peer().call_tool(call("fx__echo", json!({"text": "x"}))).await.unwrap();
    client.cancel().await.unwrap();
    gateway.stop().await;
}

/// `/readyz` names each component; `/healthz` is plain liveness.
#[tokio::test]
async fn readiness_names_components_and_needs_an_upstream() {
    let fixture = Fixture::start(&[]).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url), UpstreamSpec::new("gone", &format!("http://{closed}/mcp"))]).await;
    let (status, body) = readyz(&gateway).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["components"]["audit"]["state"], "up", "{body}");
    assert!(body.to_string().contains("gone"), "{body}");
    gateway.stop().await;

    let nothing = Gateway::start(vec![UpstreamSpec::new("gone", &format!("http://{closed}/mcp"))]).await;
    let (status, body) = readyz(&nothing).await;
    assert_eq!(status, 503, "ready without any reachable upstream: {body}");
    let health = reqwest::get(format!("http://{}/healthz", nothing.addr)).await.unwrap();
    assert_eq!(health.status(), 200);
    nothing.stop().await;
    common::init_logs();
}
