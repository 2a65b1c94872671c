//! Negative and positive cases for bearer-token validation (RFC 8725, RFC 9068, RFC 8707).

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::json;

use super::{Error, Principal, ResourceServer, TrustedIssuer, issuer::{EmbeddedIssuer, SigningKey, TokenRequest, unix_now}};

/// The embedded issuer never awaits (no JWKS fetch), so tests drive it on a local runtime.
trait AuthenticateNow {
    fn authenticate_now(&self, authorization: Option<&str>) -> Result<Principal, Error>;
}

impl AuthenticateNow for ResourceServer {
    fn authenticate_now(&self, authorization: Option<&str>) -> Result<Principal, Error> {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(self.authenticate(authorization))
    }
}

const ISSUER: &str = "http://gw.test";
const RESOURCE: &str = "http://gw.test/mcp";

fn issuer(dir: &std::path::Path) -> Arc<EmbeddedIssuer> {
    let key = SigningKey::load_or_generate(dir).unwrap();
    Arc::new(EmbeddedIssuer::new(key, ISSUER.into(), RESOURCE.into(), Duration::from_secs(3600)))
}

fn server(issuer: &Arc<EmbeddedIssuer>) -> ResourceServer {
    ResourceServer::new(vec![TrustedIssuer::embedded(issuer.clone(), RESOURCE, Duration::from_secs(3600))], Duration::from_secs(30))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn claims(overrides: serde_json::Value) -> serde_json::Value {
    let now = unix_now();
    let mut base = json!({"iss": ISSUER, "sub": "alice", "aud": RESOURCE, "exp": now + 300, "iat": now, "nbf": now, "scope": "mcp:tools", "jti": "j1"});
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

#[test]
fn minted_token_yields_principal_with_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer(dir.path());
    let token = issuer
        .mint(&TokenRequest { subject: "alice".into(), scopes: vec!["mcp:tools".into(), "mcp:prompts".into()], ttl: Duration::from_secs(60), client_id: Some("cli".into()) })
        .unwrap();
    let principal = server(&issuer).authenticate_now(Some(&bearer(&token))).unwrap();
    assert_eq!(principal.subject, "alice");
    assert_eq!(principal.issuer, ISSUER);
    assert_eq!(principal.client_id.as_deref(), Some("cli"));
    assert!(principal.has_scope("mcp:tools") && principal.has_scope("mcp:prompts") && !principal.has_scope("mcp:resources"));
    // The scheme is case-insensitive (RFC 9110 §11.1).
    assert!(server(&issuer).authenticate_now(Some(&format!("bearer {token}"))).is_ok());
}

#[test]
fn scp_array_is_accepted_as_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer(dir.path());
    let token = issuer.sign("at+jwt", &claims(json!({"scope": null, "scp": ["mcp:resources"]}))).unwrap();
    let principal = server(&issuer).authenticate_now(Some(&bearer(&token))).unwrap();
    assert!(principal.has_scope("mcp:resources"));
}

#[test]
fn missing_or_non_bearer_authorization_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&issuer(dir.path()));
    assert_eq!(server.authenticate_now(None), Err(Error::Missing));
    assert_eq!(server.authenticate_now(Some("Basic YWxpY2U6cHc=")), Err(Error::Missing));
    assert_eq!(server.authenticate_now(Some("Bearer ")), Err(Error::Missing));
}

#[test]
fn garbage_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&issuer(dir.path()));
    assert_eq!(server.authenticate_now(Some("Bearer not-a-jwt")), Err(Error::Malformed));
    assert_eq!(server.authenticate_now(Some("Bearer a.b.c.d")), Err(Error::Malformed));
}

#[test]
fn token_signed_by_another_key_is_refused() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let other = issuer(theirs.path());
    let token = other.sign("at+jwt", &claims(json!({}))).unwrap();
    // The other key has another kid: refused before any signature check.
    assert_eq!(server(&issuer(ours.path())).authenticate_now(Some(&bearer(&token))), Err(Error::UnknownKey));
    // Same claims, kid stripped: the signature check refuses it.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[0]).unwrap()).unwrap();
    header.as_object_mut().unwrap().remove("kid");
    parts[0] = URL_SAFE_NO_PAD.encode(header.to_string());
    assert_eq!(server(&issuer(ours.path())).authenticate_now(Some(&bearer(&parts.join(".")))), Err(Error::BadSignature));
}

#[test]
fn tampered_claims_fail_the_signature() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer(dir.path());
    let token = issuer.sign("at+jwt", &claims(json!({}))).unwrap();
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(claims(json!({"sub": "root", "scope": "mcp:tools mcp:resources mcp:prompts"})).to_string());
    assert_eq!(server(&issuer).authenticate_now(Some(&bearer(&parts.join(".")))), Err(Error::BadSignature));
}

#[test]
fn alg_none_and_hmac_are_refused_before_verification() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer(dir.path());
    let body = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
    for alg in ["none", "HS256", "RS256"] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "at+jwt", "kid": issuer.key().kid()}).to_string());
        let token = format!("{header}.{body}.");
        assert_eq!(server(&issuer).authenticate_now(Some(&bearer(&token))), Err(Error::AlgorithmNotAllowed), "alg {alg}");
    }
}

#[test]
fn wrong_audience_and_issuer_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer(dir.path());
    let server = server(&issuer);
    let other_aud = issuer.sign("at+jwt", &claims(json!({"aud": "http://other.test/mcp"}))).unwrap();
    assert_eq!(server.authenticate_now(Some(&bearer(&other_aud))), Err(Error::WrongAudience));
    let no_aud = issuer.sign("at+jwt", &claims(json!({"aud": null}))).unwrap();
    assert_eq!(server.authenticate_now(Some(&bearer(&no_aud))), Err(Error::MissingClaim));
    let aud_list = issuer.sign("at+jwt", &claims(json!({"aud": ["http://x", RESOURCE]}))).unwrap();
    assert!(server.authenticate_now(Some(&bearer(&aud_list))).is_ok());
    let other_iss = issuer.sign("at+jwt", &claims(json!({"iss": "http://evil.test"}))).unwrap();
    assert_eq!(server.authenticate_now(Some(&bearer(&other_iss))), Err(Error::WrongIssuer));
}

#[test]
fn time_claims_are_enforced_with_leeway() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer(dir.path());
    let server = server(&issuer);
    let now = unix_now();
    let expired = issuer.sign("at+jwt", &claims(json!({"exp": now - 120, "iat": now - 400, "nbf": now - 400}))).unwrap();
    assert_eq!(server.authenticate_now(Some(&bearer(&expired))), Err(Error::Expired));
    let within_leeway = issuer.sign("at+jwt", &claims(json!({"exp": now - 10}))).unwrap();
    assert!(server.authenticate_now(Some(&bearer(&within_leeway))).is_ok());
    let future = issuer.sign("at+jwt", &claims(json!({"nbf": now + 600, "iat": now, "exp": now + 900}))).unwrap();
    assert_eq!(server.authenticate_now(Some(&bearer(&future))), Err(Error::NotYetValid));
    let future_iat = issuer.sign("at+jwt", &claims(json!({"iat": now + 600, "nbf": null, "exp": now + 900}))).unwrap();
    assert_eq!(server.authenticate_now(Some(&bearer(&future_iat))), Err(Error::NotYetValid));
    let no_exp = issuer.sign("at+jwt", &claims(json!({"exp": null}))).unwrap();
    assert_eq!(server.authenticate_now(Some(&bearer(&no_exp))), Err(Error::MissingClaim));
    let too_long = issuer.sign("at+jwt", &claims(json!({"exp": now + 7200}))).unwrap();
    assert_eq!(server.authenticate_now(Some(&bearer(&too_long))), Err(Error::LifetimeTooLong));
}

#[test]
fn reason_codes_are_stable() {
    assert_eq!(Error::Expired.reason(), "expired");
    assert_eq!(Error::AlgorithmNotAllowed.reason(), "alg_not_allowed");
    assert_eq!(Error::WrongAudience.reason(), "wrong_audience");
}

#[test]
fn challenge_names_metadata_error_and_scope() {
    let value = super::challenge("http://gw/.well-known/oauth-protected-resource/mcp", Some("insufficient_scope"), Some("mcp:tools"));
    assert_eq!(
        value,
        r#"Bearer error="insufficient_scope", scope="mcp:tools", resource_metadata="http://gw/.well-known/oauth-protected-resource/mcp""#
    );
}
