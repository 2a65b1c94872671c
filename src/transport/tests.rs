//! Router-level tests of the transport steps, driven with `oneshot` (no upstreams needed).

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::{
    auth::issuer::{SigningKey, TokenRequest},
    catalog::CatalogStore,
    config::{Config, Overrides},
    policy::Policy,
};

struct Harness {
    app: Router,
    state: AppState,
    issuer: Arc<EmbeddedIssuer>,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides { data_dir: Some(dir.path().to_owned()), ..Overrides::default() };
    let mut config = Config::load(None, &HashMap::new(), &overrides).unwrap();
    config.max_body_bytes = 1024;
    let settings = Arc::new(Settings::from_config(config, &HashMap::new()).unwrap());
    let key = SigningKey::load_or_generate(dir.path()).unwrap();
    let issuer = Arc::new(EmbeddedIssuer::new(key, settings.auth.issuer.clone(), settings.resource.clone(), Duration::from_secs(3600)));
    let resource_server = Arc::new(ResourceServer::new(vec![crate::auth::TrustedIssuer::embedded(issuer.clone(), &settings.resource, Duration::from_secs(3600))], Duration::from_secs(30)));
    let audit = Arc::new(crate::audit::AuditLog::open(&settings.audit, issuer.clone()).await.unwrap());
    let gateway = Arc::new(Gateway {
        metrics: crate::telemetry::Metrics::new(),
        audit: Some(audit),
        guard: settings.guard.clone(),
        settings,
        policy: Policy::default(),
        catalog: Arc::new(CatalogStore::new(vec![])),
        upstreams: HashMap::new(),
        list_changed: tokio::sync::broadcast::channel(4).0,
        catalog_events: tokio::sync::mpsc::unbounded_channel().0,
        client_peers: Default::default(),
    });
    let state = AppState::new(gateway, resource_server, issuer.clone(), tokio_util::sync::CancellationToken::new());
    Harness { app: app(state.clone()), state, issuer, _dir: dir }
}

impl Harness {
    fn token(&self, subject: &str, scopes: &[&str]) -> String {
        let request = TokenRequest { subject: subject.into(), scopes: scopes.iter().map(|s| (*s).to_owned()).collect(), ttl: Duration::from_secs(60), client_id: None };
        self.issuer.mint(&request).unwrap()
    }

    async fn post(&self, token: Option<&str>, session: Option<&str>, body: impl Into<Body>, extra: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, String) {
        let mut request = Request::post("/mcp")
            .header("host", "127.0.0.1:8080")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        let response = self.app.clone().oneshot(request.body(body.into()).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn initialize() -> String {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}).to_string()
}

fn error_code(body: &str) -> i64 {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    value["error"]["code"].as_i64().unwrap()
}

#[tokio::test]
async fn missing_token_gets_401_with_resource_metadata_and_scope() {
    let h = harness().await;
    let (status, headers, _) = h.post(None, None, initialize(), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains(r#"resource_metadata="http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp""#), "{challenge}");
    assert!(challenge.contains(r#"scope="mcp:tools mcp:resources mcp:prompts""#), "{challenge}");
    assert!(!challenge.contains("error="), "no error code without credentials (RFC 6750 §3.1)");
}

#[tokio::test]
async fn bad_token_gets_invalid_token_and_is_not_echoed() {
    let h = harness().await;
    let (status, headers, body) = h.post(Some("eyJhbGciOiJub25lIn0.e30."), None, initialize(), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers["www-authenticate"].to_str().unwrap().contains(r#"error="invalid_token""#));
    assert!(!body.contains("eyJhbGciOiJub25lIn0"), "token echoed: {body}");
}

#[tokio::test]
async fn bad_origin_and_host_get_403_before_authentication() {
    let h = harness().await;
    let (status, _, body) = h.post(None, None, initialize(), &[("origin", "http://evil.example.com")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), -32000);
    let token = h.token("alice", &["mcp:tools"]);
    let (status, _, _) = h.post(Some(&token), None, initialize(), &[("origin", "http://127.0.0.1:3000")]).await;
    assert_eq!(status, StatusCode::OK, "loopback origin on any port is allowed");
    let request = Request::post("/mcp").header("host", "evil.example.com").body(Body::from(initialize())).unwrap();
    let response = h.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn oversized_body_gets_413_and_malformed_json_400() {
    let h = harness().await;
    let token = h.token("alice", &["mcp:tools"]);
    let (status, _, body) = h.post(Some(&token), None, "x".repeat(2048), &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&body), -32600);
    let (status, _, body) = h.post(Some(&token), None, "{\"jsonrpc\": \"2.0\", ", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), -32700);
    let (status, _, body) = h.post(Some(&token), None, "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), -32600);
}

/// Step-up needs a target the principal could reach; an unknown tool is never a 403 (that
/// would reveal nothing exists, but must look like any unknown tool). The 403 path with a
/// real catalog is covered end to end in tests/integration.rs.
#[tokio::test]
async fn unknown_target_is_not_a_step_up() {
    let h = harness().await;
    let token = h.token("alice", &["mcp:resources"]);
    let call = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x__y"}}).to_string();
    let (status, headers, _) = h.post(Some(&token), None, call, &[]).await;
    assert_ne!(status, StatusCode::FORBIDDEN);
    assert!(headers.get("www-authenticate").is_none());
}

#[tokio::test]
async fn session_is_bound_to_its_subject() {
    let h = harness().await;
    let alice = h.token("alice", &["mcp:tools"]);
    let (status, headers, _) = h.post(Some(&alice), None, initialize(), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let session = headers["mcp-session-id"].to_str().unwrap().to_owned();
    let ping = json!({"jsonrpc":"2.0","id":2,"method":"ping"}).to_string();
    let (status, _, _) = h.post(Some(&alice), Some(&session), ping.clone(), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let mallory = h.token("mallory", &["mcp:tools"]);
    let (status, _, body) = h.post(Some(&mallory), Some(&session), ping.clone(), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), -32001);
    // Alice's session still works after the attempt.
    let (status, _, _) = h.post(Some(&alice), Some(&session), ping, &[]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn metadata_documents_are_published() {
    let h = harness().await;
    for path in ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"] {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = h.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["resource"], "http://127.0.0.1:8080/mcp");
        assert_eq!(body["authorization_servers"][0], "http://127.0.0.1:8080");
    }
    let request = Request::get("/.well-known/jwks.json").body(Body::empty()).unwrap();
    let body: Value = serde_json::from_slice(&h.app.clone().oneshot(request).await.unwrap().into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["keys"][0]["kty"], "EC");
    assert!(body["keys"][0].get("d").is_none(), "private key component published");
    let request = Request::get("/.well-known/oauth-authorization-server").body(Body::empty()).unwrap();
    let body: Value = serde_json::from_slice(&h.app.clone().oneshot(request).await.unwrap().into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["issuer"], "http://127.0.0.1:8080");
}

#[test]
fn host_and_origin_matching() {
    let hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "[::1]".to_owned(), "gw.example.com:8443".to_owned()];
    assert!(host_allowed("127.0.0.1:9999", &hosts));
    assert!(host_allowed("[::1]:80", &hosts));
    assert!(host_allowed("gw.example.com:8443", &hosts));
    assert!(!host_allowed("gw.example.com:8444", &hosts));
    assert!(!host_allowed("evil.example.com", &hosts));
    let origins = vec!["http://localhost:*".to_owned(), "https://gw.example.com:443".to_owned()];
    assert!(origin_allowed("http://localhost:6274", &origins));
    assert!(origin_allowed("https://gw.example.com", &origins));
    assert!(!origin_allowed("http://gw.example.com", &origins));
    assert!(!origin_allowed("https://localhost:6274", &origins));
    assert!(!origin_allowed("null", &origins));
}

/// An object is read straight into the envelope; an object with a duplicate member is
/// refused as an invalid request (the gateway and the upstream could each pick a different
/// `method`), and so are non-objects; a syntax error is a parse error.
#[tokio::test]
async fn envelope_parse() {
    let parsed = |text: &str| {
        super::parse_envelope(&bytes::Bytes::from(text.to_owned())).map(|e| (e.id, e.method, e.params.is_some())).map_err(|r| r.status())
    };
    assert_eq!(parsed(" \n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}"), Ok((Some(json!(1)), Some("ping".to_owned()), false)));
    assert_eq!(parsed(r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"x","name":"y"}}"#).map(|p| p.2), Ok(true));
    for refused in [
        r#"{"jsonrpc":"2.0","id":"a","method":"tools/list","method":"tools/call","params":{}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
        "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]",
        "\"ping\"",
        "{\"id\":1,",
    ] {
        assert_eq!(parsed(refused), Err(StatusCode::BAD_REQUEST), "{refused}");
    }
    let duplicate = r#"{"jsonrpc":"2.0","id":"a","method":"tools/list","method":"tools/call"}"#;
    let response = super::parse_envelope(&bytes::Bytes::from(duplicate)).err().unwrap();
    let body: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["code"], -32600);
    assert_eq!(body["error"]["message"], "Invalid Request: duplicate member `method`");
}

/// The transport answers a plain `initialize` itself; rmcp builds its session state (worker,
/// channels, handler) only at the session's first request it must serve, restoring it under
/// the same id from the recorded parameters, without a second audit row for the replayed
/// handshake. An `initialize` rmcp must judge (a contradicting version header) is still
/// rmcp's.
#[tokio::test]
async fn rmcp_session_state_is_built_at_first_need() {
    use rmcp::transport::streamable_http_server::session::SessionManager as _;
    let h = harness().await;
    let alice = h.token("alice", &["mcp:tools"]);
    let (status, headers, body) = h.post(Some(&alice), None, initialize(), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let result: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(result["id"], 1);
    assert_eq!(result["result"]["protocolVersion"], "2025-11-25");
    assert_eq!(result["result"]["serverInfo"]["name"], "portcullis");
    assert_eq!(result["result"]["capabilities"]["tools"]["listChanged"], true);
    let session = headers["mcp-session-id"].to_str().unwrap().to_owned();
    let id: rmcp::transport::streamable_http_server::SessionId = Arc::from(session.as_str());
    assert!(!h.state.sessions.has_session(&id).await.unwrap(), "no rmcp state at initialize");
    let gauge = |h: &Harness| h.state.gateway.metrics.render().lines().find(|l| l.starts_with("portcullis_sessions_open ")).map(str::to_owned);
    assert_eq!(gauge(&h).as_deref(), Some("portcullis_sessions_open 1"), "the session counts from initialize");

    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
    let (status, _, _) = h.post(Some(&alice), Some(&session), initialized, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(!h.state.sessions.has_session(&id).await.unwrap(), "none after initialized either");

    // `ping` and `tools/list` are answered without rmcp too.
    let ping = json!({"jsonrpc":"2.0","id":2,"method":"ping"}).to_string();
    let (status, headers, body) = h.post(Some(&alice), Some(&session), ping.clone(), &[("mcp-protocol-version", "2025-11-25")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"jsonrpc":"2.0","id":2,"result":{}}));
    let list = json!({"jsonrpc":"2.0","id":"l","method":"tools/list","params":{}}).to_string();
    let (status, _, body) = h.post(Some(&alice), Some(&session), list, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((&listed["id"], &listed["result"]["tools"]), (&json!("l"), &json!([])), "{body}");
    assert!(!h.state.sessions.has_session(&id).await.unwrap(), "no rmcp state for ping and tools/list");

    // First request rmcp serves: the session is restored under the same id and answers.
    let prompts = json!({"jsonrpc":"2.0","id":3,"method":"prompts/list"}).to_string();
    let (status, _, body) = h.post(Some(&alice), Some(&session), prompts.clone(), &[("mcp-protocol-version", "2025-11-25")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""id":3"#) && body.contains(r#""prompts":[]"#), "{body}");
    assert!(h.state.sessions.has_session(&id).await.unwrap());
    let (status, _, _) = h.post(Some(&alice), Some(&session), prompts.clone(), &[]).await;
    assert_eq!(status, StatusCode::OK);
    // A client's `initialized` after rmcp replayed the handshake is acknowledged here, not
    // handed to rmcp a second time.
    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
    let (status, _, _) = h.post(Some(&alice), Some(&session), initialized, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Another principal still cannot use it.
    let mallory = h.token("mallory", &["mcp:tools"]);
    let (status, _, _) = h.post(Some(&mallory), Some(&session), prompts, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // One audited initialize: the replayed handshake wrote none.
    let audit = h.state.gateway.audit.as_ref().unwrap();
    audit.flush().await;
    let url = format!("sqlite://{}", h._dir.path().join("audit").join("audit.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let methods: Vec<(String, String)> = sqlx::query_as("SELECT kind, method FROM audit_log WHERE kind = 'intent' ORDER BY seq").fetch_all(&pool).await.unwrap();
    let methods: Vec<&str> = methods.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(methods, ["initialize", "ping", "tools/list", "prompts/list", "prompts/list"], "{methods:?}");

    // DELETE ends both; the id is then unknown.
    let request = Request::delete("/mcp")
        .header("host", "127.0.0.1:8080")
        .header("authorization", format!("Bearer {alice}"))
        .header("mcp-session-id", &session)
        .body(Body::empty())
        .unwrap();
    let response = h.app.clone().oneshot(request).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert!(!h.state.sessions.has_session(&id).await.unwrap());
    assert!(!h.state.initialize_states.contains(&session));
    assert_eq!(gauge(&h).as_deref(), Some("portcullis_sessions_open 0"));
    let (status, _, _) = h.post(Some(&alice), Some(&session), ping, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A version header contradicting the body is rmcp's to refuse.
    let (status, _, body) = h.post(Some(&alice), None, initialize(), &[("mcp-protocol-version", "2025-06-18")]).await;
    assert!(body.contains("does not match"), "{status} {body}");
    assert_eq!(gauge(&h).as_deref(), Some("portcullis_sessions_open 0"), "a refused initialize opens no session");
}

/// `ping` and `tools/list` are answered by the transport only in the session's own plain
/// form; per-request protocol keys, a 2026-07-28 header or parameters that do not parse go to
/// rmcp, which validates them.
#[test]
fn local_answers_only_for_the_plain_form() {
    let mut headers = http::HeaderMap::new();
    headers.insert("accept", HeaderValue::from_static("application/json, text/event-stream"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let route = |headers: &http::HeaderMap, body: Value| direct_route(headers, serde_json::from_value(body).unwrap());
    assert!(matches!(route(&headers, json!({"jsonrpc":"2.0","id":1,"method":"tools/list"})), Direct::ListTools { .. }));
    assert!(matches!(route(&headers, json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"c"}})), Direct::ListTools { .. }));
    assert!(matches!(route(&headers, json!({"jsonrpc":"2.0","id":1,"method":"ping"})), Direct::Ping(_)));
    assert!(matches!(route(&headers, json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":5}})), Direct::Rmcp));
    assert!(matches!(route(&headers, json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":[]})), Direct::Rmcp));
    let versioned = json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}});
    assert!(matches!(route(&headers, versioned), Direct::Rmcp));
    let mut newer = headers.clone();
    newer.insert("mcp-protocol-version", HeaderValue::from_static("2026-07-28"));
    assert!(matches!(route(&newer, json!({"jsonrpc":"2.0","id":1,"method":"ping"})), Direct::Rmcp));
    let mut older = headers.clone();
    older.insert("mcp-protocol-version", HeaderValue::from_static("2025-06-18"));
    assert!(matches!(route(&older, json!({"jsonrpc":"2.0","id":1,"method":"ping"})), Direct::Ping(_)));
}
