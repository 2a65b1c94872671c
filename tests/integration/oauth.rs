//! A real external IdP (oidc-provider) trusted by the gateway: its client-credentials tokens
//! work, forged and misissued ones fail, and a key rotation is picked up without a restart.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::{self, Fixture, Gateway, IdentityProvider, UpstreamSpec};

async fn status_for(gateway: &Gateway, token: &str) -> (u16, String) {
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"oauth-test","version":"0"}}});
    let response = reqwest::Client::new()
        .post(&gateway.url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (response.status().as_u16(), challenge)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn forge(idp: &IdentityProvider, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    header.typ = Some("at+jwt".into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(idp.private_key_pem.as_bytes()).unwrap()).unwrap()
}

#[tokio::test]
async fn external_idp_tokens_are_validated_and_rotation_needs_no_restart() {
    let fixture = Fixture::start(&[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resource = format!("http://{}/mcp", listener.local_addr().unwrap());
    let idp = IdentityProvider::start(0, "k1", &resource).await;
    let issuer = idp.issuer.clone();
    let gateway = Gateway::start_on(listener, vec![UpstreamSpec::new("fx", &fixture.url)], |config| {
        let mut trusted: portcullis::config::IssuerConfig =
            serde_json::from_value(json!({"issuer": issuer, "jwks_min_refresh_interval": "1s"})).unwrap();
        trusted.require_typ = false;
        config.auth.issuer.push(trusted);
    })
    .await;

    // The JWKS refresher is a supervised component of readiness.
    let readyz: Value = reqwest::get(format!("http://{}/readyz", gateway.addr)).await.unwrap().json().await.unwrap();
    assert!(readyz.to_string().contains("jwks"), "JWKS refresher not reported: {readyz}");

    // A real client-credentials token from the IdP, audience = our resource (RFC 8707).
    let token = idp.client_credentials(&resource, "mcp:tools").await;
    let (client, _) = common::connect(&gateway.url, &token).await.unwrap();
    let tools = client.peer().list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "fx__echo"));
    client.cancel().await.unwrap();

    // Tokens for another audience, from another issuer, and forged ones are refused.
    let base = json!({"iss": idp.issuer, "sub": "svc", "aud": resource, "iat": now(), "exp": now() + 300, "scope": "mcp:tools", "client_id": "gateway-svc"});
    let with = |patch: Value| {
        let mut claims = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    };
    assert_eq!(status_for(&gateway, &forge(&idp, "k1", &base)).await.0, 200, "control: a well-formed forged-by-IdP token is accepted");
    let other_audience = idp.client_credentials("http://other.example/mcp", "mcp:tools").await;
    let cases: Vec<(&str, String)> = vec![
        ("another audience (real IdP token)", other_audience),
        ("another issuer", forge(&idp, "k1", &with(json!({"iss": "http://127.0.0.1:1"})))),
        ("expired", forge(&idp, "k1", &with(json!({"iat": now() - 900, "exp": now() - 600})))),
        ("not yet valid", forge(&idp, "k1", &with(json!({"nbf": now() + 600})))),
        ("too long-lived", forge(&idp, "k1", &with(json!({"exp": now() + 3 * 3600})))),
        ("unknown kid", forge(&idp, "not-a-key", &base)),
        ("alg none", {
            let header = base64_url(&json!({"alg": "none", "typ": "at+jwt", "kid": "k1"}));
            format!("{header}.{}.", base64_url(&base))
        }),
        ("HS256 keyed with the RSA public key", {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("k1".into());
            jsonwebtoken::encode(&header, &base, &EncodingKey::from_secret(idp.public_key_pem.as_bytes())).unwrap()
        }),
        ("tampered payload", {
            let good = forge(&idp, "k1", &base);
            let parts: Vec<&str> = good.split('.').collect();
            format!("{}.{}.{}", parts[0], base64_url(&with(json!({"sub": "admin", "scope": "mcp:tools mcp:prompts"}))), parts[2])
        }),
    ];
    for (case, token) in &cases {
        let (status, challenge) = status_for(&gateway, token).await;
        assert_eq!(status, 401, "{case} was accepted");
        assert!(challenge.contains("error=\"invalid_token\""), "{case}: {challenge}");
    }

    // Rotation: the IdP restarts with a new key; the gateway refetches on the unknown kid.
    let port = idp.port;
    idp.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the unknown-kid rate limit
    let rotated = IdentityProvider::start(port, "k2", &resource).await;
    let token = rotated.client_credentials(&resource, "mcp:tools").await;
    let (status, challenge) = status_for(&gateway, &token).await;
    assert_eq!(status, 200, "rotated key not picked up: {challenge}");
    rotated.stop().await;
    gateway.stop().await;
}

fn base64_url(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

/// The embedded authorization server's `client_credentials` grant for configured machine
/// clients; its tokens work at `/mcp`.
#[tokio::test]
async fn embedded_token_endpoint_serves_machine_clients() {
    let fixture = Fixture::start(&[]).await;
    let digest = sha256_hex("a-long-random-machine-secret");
    let gateway = Gateway::start_with(vec![UpstreamSpec::new("fx", &fixture.url)], |config| {
        config.auth.client.push(
            serde_json::from_value(json!({"client_id": "ci-bot", "secret_sha256": digest, "scopes": ["mcp:tools"], "max_ttl": "5m"})).unwrap(),
        );
    })
    .await;
    let http = reqwest::Client::new();
    let metadata: Value = http.get(format!("http://{}/.well-known/oauth-authorization-server", gateway.addr)).send().await.unwrap().json().await.unwrap();
    let endpoint = metadata["token_endpoint"].as_str().unwrap().to_owned();
    let token = |secret: &'static str, resource: String| {
        http.post(&endpoint)
            .basic_auth("ci-bot", Some(secret))
            .form(&[("grant_type", "client_credentials"), ("scope", "mcp:tools"), ("resource", &resource)])
            .send()
    };
    let response = token("a-long-random-machine-secret", gateway.url.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["expires_in"], 300);
    let (client, _) = common::connect(&gateway.url, body["access_token"].as_str().unwrap()).await.unwrap();
    assert!(!client.peer().list_all_tools().await.unwrap().is_empty());
    client.cancel().await.unwrap();

    let wrong = token("wrong-secret", gateway.url.clone()).await.unwrap();
    assert_eq!(wrong.status(), 401);
    let other = token("a-long-random-machine-secret", "http://elsewhere.example/mcp".into()).await.unwrap();
    assert_eq!(other.status(), 400);
    assert_eq!(other.json::<Value>().await.unwrap()["error"], "invalid_target");
    gateway.stop().await;
}

fn sha256_hex(value: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(value.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The gateway's own credential toward an upstream: an OAuth client-credentials token from
/// the real IdP, cached across calls; or an RFC 8693 token exchanged on behalf of the caller.
#[tokio::test]
async fn upstream_gets_oauth_tokens_obtained_by_the_gateway() {
    common::init_logs();
    let fixture = Fixture::start(&[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_addr = listener.local_addr().unwrap();
    let jwks = format!("http://{gateway_addr}/.well-known/jwks.json");
    let idp = IdentityProvider::start_with(0, "k1", &fixture.url, Some(&jwks)).await;
    let token_url = format!("{}/token", idp.issuer);
    let cc = UpstreamSpec::new("cc", &fixture.url);
    let te = UpstreamSpec::new("te", &fixture.url);
    let gateway = Gateway::start_on(listener, vec![cc, te], |config| {
        for (upstream, grant) in config.upstream.iter_mut().zip(["client_credentials", "token_exchange"]) {
            upstream.oauth = Some(
                serde_json::from_value(json!({
                    "grant": grant, "token_url": token_url, "client_id": "gateway-svc",
                    "client_secret_env": "PORTCULLIS_TEST_IDP_SECRET", "scope": "mcp:tools"
                }))
                .unwrap(),
            );
        }
    })
    .await;
    let caller_token = gateway.token("alice", common::ALL_SCOPES);
    let (client, _) = common::connect(&gateway.url, &caller_token).await.unwrap();
    let headers = |name: &'static str| {
        let peer = client.peer().clone();
        async move {
            let mut params = rmcp::model::CallToolRequestParams::new(name);
            params.arguments = Some(serde_json::Map::new());
            let result = peer.call_tool(params).await.unwrap();
            let text = serde_json::to_value(&result.content).unwrap()[0]["text"].as_str().unwrap().to_owned();
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let first = headers("cc__whoami_headers").await;
    let second = headers("cc__whoami_headers").await;
    let bearer = first["authorization"].as_str().expect("no credential upstream").to_owned();
    assert_eq!(Some(bearer.as_str()), second["authorization"].as_str(), "client-credentials token not cached");
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(bearer.trim_start_matches("Bearer ")).unwrap().claims;
    assert_eq!(claims["iss"], idp.issuer.as_str(), "not the IdP's token: {claims}");
    assert_eq!(claims["aud"], fixture.url.as_str());
    assert!(!bearer.contains(&caller_token));

    // The IdP verifies subject tokens against the gateway's JWKS, which is served only once
    // the gateway listens: the token-exchange upstream's catalog arrives on a retry.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !client.peer().list_all_tools().await.unwrap().iter().any(|t| t.name == "te__whoami_headers") {
        assert!(std::time::Instant::now() < deadline, "token-exchange upstream never listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let exchanged = headers("te__whoami_headers").await;
    let bearer = exchanged["authorization"].as_str().expect("no exchanged credential").to_owned();
    assert!(bearer.starts_with("Bearer exchanged.alice."), "token exchange did not act for the caller: {bearer}");
    client.cancel().await.unwrap();
    idp.stop().await;
    gateway.stop().await;
}
