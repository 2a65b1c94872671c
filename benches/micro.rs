//! Micro-benchmarks of the per-request security steps (issue 7, item 4): `cargo bench --bench micro`.
//!
//! - `jwt/*`: [`ResourceServer::authenticate`] on a valid bearer token, per algorithm: ES256
//!   through the embedded issuer; RS256 (2048-bit) and EdDSA (Ed25519) through an external
//!   issuer whose JWKS is served on loopback and cached, as in production.
//! - `policy/*`: [`Policy::decide`] with 100 rules (10 deny, 90 allow, with scope, subject
//!   and claim conditions): allowed by the last rule, denied by a deny rule, hidden (deny by
//!   default), step-up; and `tools/list` filtering of 1,000 tools with [`Policy::permits`].
//!
//! The other micro-benchmarks of item 4 are criterion groups in their own targets, each after
//! a short report: guard scan per KiB on benign and hostile text (`cargo bench --bench
//! guard`), redaction per KiB (`--bench redact`) and audit append (`--bench audit`).
//!
//! Performance goals live in `bench/` (the end-to-end harness); these numbers explain where
//! the time of one request goes. They are never asserted.

// A bench is a test-like binary: panicking on a broken set-up is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{hint::black_box, sync::Arc, time::Duration};

use aws_lc_rs::encoding::AsDer as _;
use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use portcullis::{
    auth::{
        Principal, ResourceServer, TrustedIssuer,
        issuer::{EmbeddedIssuer, SigningKey, TokenRequest},
        jwks::JwksCache,
    },
    policy::{Decision, Policy, PolicyRuleConfig, Target, TargetKind, WhenConfig, compile_rules},
};
use serde_json::json;

const ISSUER: &str = "http://gw.bench";
const RESOURCE: &str = "http://gw.bench/mcp";
const UPSTREAMS: [&str; 10] = ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8", "u9"];

/// The embedded issuer, an external one (RS256 + EdDSA keys behind a loopback JWKS), the
/// resource server trusting both, and a valid token for each algorithm.
struct Auth {
    server: ResourceServer,
    embedded: Arc<EmbeddedIssuer>,
    es256: String,
    rs256: String,
    eddsa: String,
    _data_dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

fn auth() -> Auth {
    let data_dir = tempfile::tempdir().unwrap();
    let key = SigningKey::load_or_generate(data_dir.path()).unwrap();
    let embedded = Arc::new(EmbeddedIssuer::new(key, ISSUER.into(), RESOURCE.into(), Duration::from_secs(3600)));
    let es256 = embedded
        .mint(&TokenRequest { subject: "alice".into(), scopes: vec!["mcp:tools".into()], ttl: Duration::from_secs(900), client_id: Some("bench".into()) })
        .unwrap();

    // External keys, generated fresh: RSA 2048 (PKCS#8 PEM) and Ed25519 (PKCS#8 v1 DER, the
    // 48-byte form `Jwk::from_encoding_key` expects).
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let rsa_pem = pem("PRIVATE KEY", rsa.as_der().unwrap().as_ref());
    let rsa_key = EncodingKey::from_rsa_pem(rsa_pem.as_bytes()).unwrap();
    let ed = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
    let ed_key = EncodingKey::from_ed_der(ed.to_pkcs8v1().unwrap().as_ref());
    let mut rsa_jwk = Jwk::from_encoding_key(&rsa_key, Algorithm::RS256).unwrap();
    rsa_jwk.common.key_id = Some("rsa-1".into());
    let mut ed_jwk = Jwk::from_encoding_key(&ed_key, Algorithm::EdDSA).unwrap();
    ed_jwk.common.key_id = Some("ed-1".into());
    let jwks = json!({"keys": [rsa_jwk, ed_jwk]});

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let external = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/jwks.json", axum::routing::get(move || std::future::ready(axum::Json(jwks.clone()))));
    runtime.spawn(async move { axum::serve(listener, app).await });
    let cache = Arc::new(JwksCache::new(
        external.clone(),
        Some(format!("{external}/jwks.json").parse().unwrap()),
        reqwest::Client::new(),
        Duration::from_secs(30),
    ));
    assert_eq!(runtime.block_on(cache.refresh()).unwrap(), 2);
    let server = ResourceServer::new(
        vec![
            TrustedIssuer::embedded(embedded.clone(), RESOURCE, Duration::from_secs(3600)),
            TrustedIssuer::external(cache, RESOURCE, &[Algorithm::RS256, Algorithm::EdDSA], false, Duration::from_secs(3600)),
        ],
        Duration::from_secs(30),
    );
    let now = unix_now();
    let claims = json!({"iss": external, "sub": "alice", "aud": RESOURCE, "exp": now + 900, "iat": now, "scope": "mcp:tools", "jti": "j1"});
    let sign = |alg, kid: &str, key: &EncodingKey| {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    };
    let rs256 = sign(Algorithm::RS256, "rsa-1", &rsa_key);
    let eddsa = sign(Algorithm::EdDSA, "ed-1", &ed_key);
    Auth { server, embedded, es256, rs256, eddsa, _data_dir: data_dir, _runtime: runtime }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// Authenticates without a runtime: with cached keys, `authenticate` never waits.
fn authenticate(server: &ResourceServer, authorization: &str) -> Principal {
    server.authenticate(Some(authorization)).now_or_never().expect("cached keys: no await").unwrap()
}

fn jwt(c: &mut Criterion) {
    let auth = auth();
    let mut group = c.benchmark_group("jwt");
    for (name, token) in [("ES256", &auth.es256), ("RS256", &auth.rs256), ("EdDSA", &auth.eddsa)] {
        let authorization = format!("Bearer {token}");
        authenticate(&auth.server, &authorization);
        group.bench_function(name, |b| b.iter(|| authenticate(&auth.server, black_box(&authorization))));
    }
    group.finish();
}

/// 100 rules: for each upstream one deny rule and nine allows with assorted conditions; the
/// last allow covers everything for `mcp:tools`, so most targets are decided at the end.
fn hundred_rules() -> Policy {
    let mut rules = Vec::new();
    for (index, upstream) in UPSTREAMS.iter().enumerate() {
        rules.push(PolicyRuleConfig {
            name: format!("deny-{upstream}"),
            effect: "deny".into(),
            tools: Some(vec![format!("{upstream}/delete_*"), format!("{upstream}/drop_*")]),
            ..PolicyRuleConfig::default()
        });
        for variant in 0..9 {
            let when = match variant % 3 {
                0 => WhenConfig { scopes: Some(vec![format!("team{index}:write")]), ..WhenConfig::default() },
                1 => WhenConfig { subjects: Some(vec![format!("svc-{index}-*")]), ..WhenConfig::default() },
                _ => WhenConfig { claims: [("groups".to_owned(), vec![format!("team-{index}-{variant}")])].into(), ..WhenConfig::default() },
            };
            let last = index == UPSTREAMS.len() - 1 && variant == 8;
            rules.push(PolicyRuleConfig {
                name: format!("allow-{upstream}-{variant}"),
                effect: "allow".into(),
                tools: Some(vec![if last { "*/*".to_owned() } else { format!("{upstream}/tool_{variant}_*") }]),
                when: if last { WhenConfig { scopes: Some(vec!["mcp:tools".into()]), ..WhenConfig::default() } } else { when },
                ..PolicyRuleConfig::default()
            });
        }
    }
    assert_eq!(rules.len(), 100);
    Policy::from_rules(compile_rules(&rules, &UPSTREAMS).unwrap())
}

fn policy(c: &mut Criterion) {
    let auth = auth();
    let policy = hundred_rules();
    let principal_with = |scope: &str| {
        let now = unix_now();
        let claims = json!({"iss": ISSUER, "sub": "alice", "aud": RESOURCE, "exp": now + 900, "iat": now, "scope": scope, "groups": ["staff", "team-3-2"]});
        let token = auth.embedded.sign("at+jwt", &claims).unwrap();
        authenticate(&auth.server, &format!("Bearer {token}"))
    };
    let alice = principal_with("mcp:tools");
    let no_scope = principal_with("openid");
    let tool = |upstream, name| Target::new(TargetKind::Tool, upstream, name);

    assert!(matches!(policy.decide(&alice, tool("u9", "search")), Decision::Allow(_)));
    assert!(matches!(policy.decide(&alice, tool("u3", "delete_repo")), Decision::Deny { rule: Some(_) }));
    assert!(matches!(policy.decide(&alice, Target::new(TargetKind::Prompt, "u1", "p")), Decision::Deny { rule: None }));
    assert!(matches!(policy.decide(&no_scope, tool("u9", "search")), Decision::DenyMissingScopes(_)));

    let mut group = c.benchmark_group("policy_100_rules");
    group.bench_function("allow_by_last_rule", |b| b.iter(|| policy.decide(black_box(&alice), tool("u9", "search"))));
    group.bench_function("deny_by_rule", |b| b.iter(|| policy.decide(black_box(&alice), tool("u3", "delete_repo"))));
    group.bench_function("deny_by_default", |b| b.iter(|| policy.decide(black_box(&alice), Target::new(TargetKind::Prompt, "u1", "p"))));
    group.bench_function("step_up", |b| b.iter(|| policy.decide(black_box(&no_scope), tool("u9", "search"))));
    let names: Vec<(String, String)> = (0..1000).map(|i| (UPSTREAMS[i % 10].to_owned(), format!("tool_{}_{i}", i % 12))).collect();
    group.bench_function("list_filter_1000_tools", |b| {
        b.iter(|| names.iter().filter(|(upstream, name)| policy.permits(black_box(&alice), tool(upstream, name))).count())
    });
    group.finish();
}

criterion_group!(benches, jwt, policy);
criterion_main!(benches);
