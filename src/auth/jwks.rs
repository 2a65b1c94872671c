//! JWKS of an external authorization server: discovery, fetching, caching and rotation.
//!
//! The JWKS URI comes from configuration or from discovery: RFC 8414 authorization-server
//! metadata (`/.well-known/oauth-authorization-server`, inserted before the issuer's path as
//! §3.1 requires) and, failing that, OpenID Connect Discovery 1.0
//! (`<issuer>/.well-known/openid-configuration`). The metadata's `issuer` must equal the
//! configured issuer exactly (RFC 8414 §3.3), or the issuer is not trusted at all.
//!
//! Keys are cached by `kid`. A token naming an unknown `kid` triggers a refresh, at most once
//! per `min_refresh_interval` (so a flood of forged kids cannot hammer the IdP); the set is
//! also refreshed every `refresh_interval`, which is how rotation is picked up without a
//! restart. Only asymmetric keys (RSA, EC P-256, Ed25519) are ever loaded: a symmetric `oct`
//! key in a JWKS is ignored, so HMAC can never verify a token.
//!
//! Invariant: on any fetch failure the cache keeps its previous keys and a token whose key is
//! not cached is refused (fail closed).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet},
};
use serde::Deserialize;
use tokio::{sync::Mutex, time::Instant};
use url::Url;

/// JWKS and discovery failures (logged with the issuer; never shown to clients).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An HTTP request failed.
    #[error("fetching {url}: {reason}")]
    Fetch {
        /// What was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// Discovery metadata names another issuer.
    #[error("metadata at {url} names issuer {found:?}, expected {expected:?}")]
    IssuerMismatch {
        /// Metadata URL.
        url: String,
        /// Issuer in the metadata.
        found: String,
        /// Configured issuer.
        expected: String,
    },
    /// Neither RFC 8414 nor OpenID Connect metadata was found.
    #[error("no authorization-server metadata for issuer {0} (tried RFC 8414 and OpenID Connect discovery)")]
    NoMetadata(String),
    /// A URL is not HTTPS (plain HTTP is allowed only for loopback hosts).
    #[error("{0} must use https (http is only allowed on loopback)")]
    Insecure(String),
}

/// A cached verification key and the algorithms it can verify.
#[derive(Clone)]
pub struct CachedKey {
    key: DecodingKey,
    algorithms: &'static [Algorithm],
}

/// The cached key set of one issuer.
pub struct JwksCache {
    issuer: String,
    configured_jwks_uri: Option<Url>,
    http: reqwest::Client,
    min_refresh_interval: Duration,
    jwks_uri: Mutex<Option<Url>>,
    keys: RwLock<Arc<HashMap<String, CachedKey>>>,
    last_refresh: Mutex<Option<Instant>>,
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    jwks_uri: Option<String>,
}

// === impl CachedKey ===

impl CachedKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn supports(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    /// The verification key.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

// === impl JwksCache ===

impl JwksCache {
    /// A cache for `issuer`; `jwks_uri` skips discovery when given.
    pub fn new(issuer: String, jwks_uri: Option<Url>, http: reqwest::Client, min_refresh_interval: Duration) -> Self {
        Self {
            issuer,
            configured_jwks_uri: jwks_uri,
            http,
            min_refresh_interval,
            jwks_uri: Mutex::new(None),
            keys: RwLock::new(Arc::default()),
            last_refresh: Mutex::new(None),
        }
    }

    /// The issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Number of cached keys.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether no key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Arc<HashMap<String, CachedKey>> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The key for `kid` (or the only key when the token names none), refreshing the set
    /// once if it is unknown and the rate limit allows.
    pub async fn key(&self, kid: Option<&str>) -> Option<CachedKey> {
        if let Some(key) = lookup(&self.snapshot(), kid) {
            return Some(key);
        }
        if self.refresh_if_allowed().await {
            return lookup(&self.snapshot(), kid);
        }
        None
    }

    async fn refresh_if_allowed(&self) -> bool {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.min_refresh_interval) {
            return false;
        }
        *last = Some(Instant::now());
        drop(last);
        match self.refresh().await {
            Ok(count) => {
                tracing::info!(issuer = %self.issuer, keys = count, "JWKS refreshed");
                true
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer, %error, "JWKS refresh failed; keeping cached keys");
                false
            }
        }
    }

    /// Fetches the key set now (discovering the JWKS URI first if needed).
    ///
    /// # Errors
    /// Discovery, transport or parse failures; the cached keys are kept.
    pub async fn refresh(&self) -> Result<usize, Error> {
        let uri = self.jwks_uri().await?;
        let set: JwkSet = get_json(&self.http, &uri).await?;
        let mut keys = HashMap::new();
        for (index, jwk) in set.keys.iter().enumerate() {
            let Some(cached) = cache_entry(jwk) else { continue };
            let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{index}"));
            keys.insert(kid, cached);
        }
        let count = keys.len();
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        *self.last_refresh.lock().await = Some(Instant::now());
        Ok(count)
    }

    async fn jwks_uri(&self) -> Result<Url, Error> {
        let mut cached = self.jwks_uri.lock().await;
        if let Some(uri) = cached.as_ref() {
            return Ok(uri.clone());
        }
        let uri = match &self.configured_jwks_uri {
            Some(uri) => uri.clone(),
            None => discover(&self.http, &self.issuer).await?,
        };
        require_secure(&uri)?;
        *cached = Some(uri.clone());
        Ok(uri)
    }

    /// Refreshes every `interval` until `stop`, so rotated keys appear without a restart.
    /// Reports each refresh into `component`: up when it worked, degraded (cached keys still
    /// used) when it failed.
    pub async fn run(self: Arc<Self>, interval: Duration, stop: tokio_util::sync::CancellationToken, component: crate::telemetry::ComponentHandle) {
        if self.is_empty() {
            component.degraded("no keys loaded yet");
        } else {
            component.up();
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match self.refresh().await {
                Ok(_) => component.up(),
                Err(error) => {
                    tracing::warn!(issuer = %self.issuer, %error, "periodic JWKS refresh failed; keeping cached keys");
                    component.degraded(&error.to_string());
                }
            }
        }
    }
}

fn lookup(keys: &HashMap<String, CachedKey>, kid: Option<&str>) -> Option<CachedKey> {
    match kid {
        Some(kid) => keys.get(kid).cloned(),
        // RFC 7515 §4.1.4: without `kid`, only an unambiguous single key may be used.
        None if keys.len() == 1 => keys.values().next().cloned(),
        None => None,
    }
}

/// Maps a JWK to a verification key with the algorithms its type allows. Symmetric and
/// unknown key types are skipped; a key restricted by `alg` or `use` keeps that restriction.
fn cache_entry(jwk: &Jwk) -> Option<CachedKey> {
    if jwk.common.public_key_use.as_ref().is_some_and(|u| !matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature)) {
        return None;
    }
    let algorithms: &'static [Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[Algorithm::RS256, Algorithm::PS256],
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => &[Algorithm::ES256],
        AlgorithmParameters::OctetKeyPair(_) => &[Algorithm::EdDSA],
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm.and_then(|alg| alg.to_string().parse::<Algorithm>().ok()) {
        Some(alg) => match ALL_ASYMMETRIC.iter().find(|a| **a == alg) {
            Some(_) if algorithms.contains(&alg) => single(alg),
            _ => return None,
        },
        None => algorithms,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(CachedKey { key, algorithms })
}

const ALL_ASYMMETRIC: [Algorithm; 4] = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA];

fn single(alg: Algorithm) -> &'static [Algorithm] {
    match alg {
        Algorithm::RS256 => &[Algorithm::RS256],
        Algorithm::PS256 => &[Algorithm::PS256],
        Algorithm::ES256 => &[Algorithm::ES256],
        _ => &[Algorithm::EdDSA],
    }
}

/// Finds the JWKS URI by RFC 8414, then OpenID Connect discovery.
async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Url, Error> {
    let base = Url::parse(issuer).map_err(|e| Error::Fetch { url: issuer.to_owned(), reason: e.to_string() })?;
    require_secure(&base)?;
    let path = base.path().trim_end_matches('/');
    let origin = format!("{}://{}", base.scheme(), base.host_str().unwrap_or_default())
        + &base.port().map(|p| format!(":{p}")).unwrap_or_default();
    let candidates = [
        // RFC 8414 §3.1: the well-known segment goes between host and path.
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        // OpenID Connect Discovery 1.0 §4: appended to the issuer.
        format!("{origin}{path}/.well-known/openid-configuration"),
    ];
    for candidate in candidates {
        let Ok(url) = Url::parse(&candidate) else { continue };
        let metadata: Metadata = match get_json(http, &url).await {
            Ok(metadata) => metadata,
            Err(error) => {
                tracing::debug!(%error, "discovery candidate failed");
                continue;
            }
        };
        if metadata.issuer != issuer {
            return Err(Error::IssuerMismatch { url: candidate, found: metadata.issuer, expected: issuer.to_owned() });
        }
        if let Some(jwks) = metadata.jwks_uri {
            return Url::parse(&jwks).map_err(|e| Error::Fetch { url: jwks, reason: e.to_string() });
        }
    }
    Err(Error::NoMetadata(issuer.to_owned()))
}

/// HTTPS, or HTTP on a loopback host (tests and sidecars).
pub(crate) fn require_secure(url: &Url) -> Result<(), Error> {
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    if url.scheme() == "https" || (url.scheme() == "http" && loopback) {
        Ok(())
    } else {
        Err(Error::Insecure(url.to_string()))
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &Url) -> Result<T, Error> {
    let fail = |reason: String| Error::Fetch { url: url.to_string(), reason };
    let response = http
        .get(url.clone())
        .header("accept", "application/json")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("HTTP {}", response.status())));
    }
    response.json().await.map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_accepted() {
        for ok in ["https://idp.example.com/x", "http://127.0.0.1:9/x", "http://localhost/x", "http://[::1]:8/x"] {
            assert!(require_secure(&Url::parse(ok).unwrap()).is_ok(), "{ok}");
        }
        for bad in ["http://idp.example.com/x", "ftp://127.0.0.1/x"] {
            assert!(require_secure(&Url::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn symmetric_keys_in_a_jwks_are_ignored() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
            {"kty": "EC", "crv": "P-256", "kid": "ec", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "ec-wrong-alg", "alg": "RS256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]})).unwrap();
        let entries: Vec<_> = set.keys.iter().map(cache_entry).collect();
        assert!(entries[0].is_none(), "oct key loaded");
        assert!(entries[1].as_ref().is_some_and(|k| k.supports(Algorithm::ES256) && !k.supports(Algorithm::RS256)));
        assert!(entries[2].is_none(), "EC key declared RS256 loaded");
    }
}
