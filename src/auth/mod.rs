//! OAuth 2.1 resource server: turns a bearer token into a [`Principal`], or refuses.
//!
//! Every request to `/mcp` carries `Authorization: Bearer <JWT>` (RFC 6750 §2.1). The token
//! must be signed with an asymmetric algorithm by a trusted issuer (today: the embedded
//! authorization server in [`issuer`]), name this gateway's canonical resource URI in `aud`
//! (RFC 8707 §2, MCP 2025-11-25 basic/authorization "Token Audience Binding"), carry `exp`,
//! and be within its `nbf`/`exp` window with a small leeway (RFC 8725 §3). Anything else is
//! rejected with a stable [`Error::reason`] code for logs and metrics; the token itself is
//! never logged. The client is answered 401 with a `WWW-Authenticate` challenge pointing at
//! the RFC 9728 protected-resource metadata (see [`challenge`]).
//!
//! Invariant: only this module constructs a [`Principal`]; holding one proves the request
//! was authenticated.

pub mod issuer;
pub mod jwks;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use issuer::EmbeddedIssuer;

/// Why a token was refused. [`Error::reason`] gives the stable code used in logs/metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No `Authorization` header, or not the `Bearer` scheme.
    #[error("missing bearer token")]
    Missing,
    /// Not a compact JWS, or header/claims are not valid JSON.
    #[error("malformed token")]
    Malformed,
    /// `alg` is not on the allow-list (`none`, HMAC, or anything unexpected).
    #[error("token algorithm not allowed")]
    AlgorithmNotAllowed,
    /// `kid` names no key of a trusted issuer.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `iss` is not a trusted issuer.
    #[error("untrusted issuer")]
    WrongIssuer,
    /// `aud` does not contain this gateway's canonical resource URI.
    #[error("token not issued for this resource")]
    WrongAudience,
    /// `exp` is in the past (beyond leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// A required claim (`exp`, `sub`, `iss`, `aud`) is missing.
    #[error("required claim missing")]
    MissingClaim,
    /// `exp - iat` exceeds the accepted maximum lifetime.
    #[error("token lifetime too long")]
    LifetimeTooLong,
    /// `typ` is not `at+jwt` where the issuer requires it (RFC 9068 §2.1).
    #[error("token type not accepted")]
    WrongType,
}

/// An authenticated caller, built only by [`ResourceServer::authenticate`].
// The private field is a proof marker (rustls style): `#[non_exhaustive]` would still let
// the rest of this crate build a Principal without authenticating.
#[allow(clippy::manual_non_exhaustive)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `iss` of the token.
    pub issuer: String,
    /// `sub` of the token.
    pub subject: String,
    /// `client_id` (RFC 9068 §2.2) or `azp`, if present.
    pub client_id: Option<String>,
    /// Granted scopes, from `scope` (space-separated) or `scp` (array).
    pub scopes: BTreeSet<String>,
    /// `jti`, if present.
    pub token_id: Option<String>,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
    /// The token's other claims — everything but `iss`, `sub`, `exp`, `iat`, `client_id`,
    /// `azp`, `scope`, `scp`, `jti` — for policy rules on claims such as `groups`.
    pub claims: Arc<serde_json::Map<String, serde_json::Value>>,
    _proof: (),
}

/// Validates bearer tokens against the trusted issuers.
pub struct ResourceServer {
    issuers: Vec<TrustedIssuer>,
    leeway: u64,
    /// Recently validated tokens (SHA-256 of the token → principal, valid-until).
    cache: std::sync::Mutex<std::collections::HashMap<[u8; 32], (Principal, u64)>>,
}

/// How long a validated token is trusted without checking its signature again, in seconds.
/// A key removed from an issuer's JWKS stops being honoured for tokens already seen after at
/// most this long; expiry is still checked on every request.
pub const VALIDATION_CACHE_SECS: u64 = 30;
/// Most cached validations; the cache is cleared when full (tokens are re-verified).
const VALIDATION_CACHE_MAX: usize = 10_000;

/// One authorization server whose tokens are accepted, with its validation rules.
pub struct TrustedIssuer {
    issuer: String,
    keys: Keys,
    /// One prepared validation per allowed algorithm (RFC 8725 §3.1 allow-list).
    validations: Vec<(Algorithm, Validation)>,
    require_typ: bool,
    max_lifetime: Duration,
}

enum Keys {
    Embedded(Arc<EmbeddedIssuer>),
    Jwks(Arc<jwks::JwksCache>),
}

#[derive(Deserialize)]
struct Claims {
    #[serde(flatten)]
    all: serde_json::Map<String, serde_json::Value>,
    sub: Option<String>,
    iss: Option<String>,
    exp: Option<u64>,
    iat: Option<u64>,
    client_id: Option<String>,
    azp: Option<String>,
    scope: Option<String>,
    scp: Option<ScopeClaim>,
    jti: Option<String>,
}

/// `scp`: an array (Okta, RFC 9068 examples) or a space-separated string (Entra ID).
#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    List(Vec<String>),
    Text(String),
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
}

#[derive(Deserialize)]
struct IssuerOnly {
    iss: Option<String>,
}

// === impl Error ===

impl Error {
    /// Stable reason code for logs and metrics (snake_case).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::AlgorithmNotAllowed => "alg_not_allowed",
            Self::UnknownKey => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::MissingClaim => "missing_claim",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::WrongType => "wrong_typ",
        }
    }
}

// === impl Principal ===

impl Principal {
    /// Whether the principal was granted `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// A stable key for binding sessions to this caller: issuer and subject.
    pub fn binding_key(&self) -> String {
        format!("{}\u{1f}{}", self.issuer, self.subject)
    }

    /// A principal with every attribute set, for unit tests of other modules.
    #[cfg(test)]
    #[allow(dead_code)] // used by the policy tests
    pub(crate) fn for_tests_full(
        issuer: &str,
        subject: &str,
        client_id: Option<&str>,
        scopes: &[&str],
        claims: serde_json::Value,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            subject: subject.into(),
            client_id: client_id.map(str::to_owned),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            token_id: None,
            expires_at: u64::MAX,
            claims: Arc::new(claims.as_object().cloned().unwrap_or_default()),
            _proof: (),
        }
    }

    /// A principal for unit tests of other modules.
    #[cfg(test)]
    pub(crate) fn for_tests(subject: &str, scopes: &[&str]) -> Self {
        Self {
            issuer: "http://test".into(),
            subject: subject.into(),
            client_id: None,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            token_id: None,
            expires_at: u64::MAX,
            claims: Arc::default(),
            _proof: (),
        }
    }
}

// === impl TrustedIssuer ===

impl TrustedIssuer {
    /// The embedded authorization server: ES256 only, its own key.
    pub fn embedded(issuer: Arc<EmbeddedIssuer>, audience: &str, max_lifetime: Duration) -> Self {
        let name = issuer.issuer().to_owned();
        Self {
            validations: vec![(Algorithm::ES256, validation(Algorithm::ES256, &name, audience))],
            issuer: name,
            keys: Keys::Embedded(issuer),
            require_typ: false,
            max_lifetime,
        }
    }

    /// An external authorization server whose keys come from `jwks`.
    ///
    /// `algorithms` is the allow-list (only RS256, PS256, ES256 and EdDSA are ever accepted;
    /// anything else given here is dropped); `require_typ` demands `typ: at+jwt`.
    pub fn external(jwks: Arc<jwks::JwksCache>, audience: &str, algorithms: &[Algorithm], require_typ: bool, max_lifetime: Duration) -> Self {
        let name = jwks.issuer().to_owned();
        let validations = algorithms
            .iter()
            .filter(|alg| matches!(alg, Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256 | Algorithm::EdDSA))
            .map(|alg| (*alg, validation(*alg, &name, audience)))
            .collect();
        Self { issuer: name, keys: Keys::Jwks(jwks), validations, require_typ, max_lifetime }
    }

    /// The issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

fn validation(alg: Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation
}

// === impl ResourceServer ===

impl ResourceServer {
    /// A resource server accepting tokens from `issuers`; `leeway` (at most 60 s, enforced by
    /// configuration) applies to `exp`, `nbf` and `iat`.
    pub fn new(issuers: Vec<TrustedIssuer>, leeway: Duration) -> Self {
        let leeway_secs = leeway.as_secs();
        let issuers = issuers
            .into_iter()
            .map(|mut issuer| {
                for (_, validation) in &mut issuer.validations {
                    validation.leeway = leeway_secs;
                }
                issuer
            })
            .collect();
        Self { issuers, leeway: leeway_secs, cache: std::sync::Mutex::new(std::collections::HashMap::new()) }
    }

    /// The trusted issuers' identifiers (published in RFC 9728 metadata).
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().map(TrustedIssuer::issuer)
    }

    /// Authenticates the value of an `Authorization` header.
    ///
    /// # Errors
    /// An [`Error`] naming why the token is refused; the caller answers 401.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Error> {
        let token = bearer_token(authorization).ok_or(Error::Missing)?;
        // Signature verification dominates the cost of a request; a token seen moments ago
        // is trusted for VALIDATION_CACHE_SECS, its expiry still checked every time.
        let digest: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref().try_into().unwrap_or([0; 32]);
        let now = issuer::unix_now();
        {
            let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((principal, until)) = cache.get(&digest)
                && now < *until
            {
                return Ok(principal.clone());
            }
        }
        let principal = self.validate(token).await?;
        let until = (principal.expires_at + self.leeway).min(now + VALIDATION_CACHE_SECS);
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= VALIDATION_CACHE_MAX {
            cache.retain(|_, (_, until)| now < *until);
            if cache.len() >= VALIDATION_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(digest, (principal.clone(), until));
        Ok(principal)
    }

    /// Full validation of one token (no cache).
    async fn validate(&self, token: &str) -> Result<Principal, Error> {
        let (header, payload) = peek(token)?;
        // RFC 8725 §3.1: decide the algorithm before any cryptography; `none` and HMAC
        // (key confusion with a public key) never verify, whatever the issuer.
        let alg: Algorithm = header.alg.parse().map_err(|_| Error::AlgorithmNotAllowed)?;
        if !matches!(alg, Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256 | Algorithm::EdDSA) {
            return Err(Error::AlgorithmNotAllowed);
        }
        // RFC 8725 §3.8: the issuer selects the keys and rules; it must be trusted exactly.
        let iss = payload.iss.ok_or(Error::MissingClaim)?;
        let issuer = self.issuers.iter().find(|i| i.issuer == iss).ok_or(Error::WrongIssuer)?;
        let validation = issuer.validations.iter().find(|(a, _)| *a == alg).map(|(_, v)| v).ok_or(Error::AlgorithmNotAllowed)?;
        if issuer.require_typ && !header.typ.as_deref().is_some_and(is_access_token_type) {
            return Err(Error::WrongType);
        }
        let claims = match &issuer.keys {
            Keys::Embedded(embedded) => {
                if header.kid.as_deref().is_some_and(|kid| kid != embedded.key().kid()) {
                    return Err(Error::UnknownKey);
                }
                jsonwebtoken::decode::<Claims>(token, embedded.key().decoding_key(), validation)
            }
            Keys::Jwks(cache) => {
                let key = cache.key(header.kid.as_deref()).await.ok_or(Error::UnknownKey)?;
                if !key.supports(alg) {
                    return Err(Error::AlgorithmNotAllowed);
                }
                jsonwebtoken::decode::<Claims>(token, key.decoding_key(), validation)
            }
        }
        .map_err(map_jwt_error)?
        .claims;
        let now = issuer::unix_now();
        if claims.iat.is_some_and(|iat| iat > now + self.leeway) {
            return Err(Error::NotYetValid);
        }
        let (Some(exp), Some(subject), Some(iss)) = (claims.exp, claims.sub, claims.iss) else {
            return Err(Error::MissingClaim);
        };
        // "Short-lived" is enforced: a token claiming a longer life than allowed is refused
        // even while unexpired. Without `iat`, the remaining life is bounded instead.
        let lifetime = exp.saturating_sub(claims.iat.unwrap_or(now));
        if lifetime > issuer.max_lifetime.as_secs() + self.leeway {
            return Err(Error::LifetimeTooLong);
        }
        let mut scopes: BTreeSet<String> =
            claims.scope.as_deref().unwrap_or_default().split_ascii_whitespace().map(str::to_owned).collect();
        match claims.scp {
            Some(ScopeClaim::List(list)) => scopes.extend(list),
            Some(ScopeClaim::Text(text)) => scopes.extend(text.split_ascii_whitespace().map(str::to_owned)),
            None => {}
        }
        Ok(Principal {
            issuer: iss,
            subject,
            client_id: claims.client_id.or(claims.azp),
            scopes,
            token_id: claims.jti,
            expires_at: exp,
            claims: Arc::new(claims.all),
            _proof: (),
        })
    }
}

/// RFC 9068 §2.1: `at+jwt`, also written `application/at+jwt`, case-insensitive.
fn is_access_token_type(typ: &str) -> bool {
    let typ = typ.to_ascii_lowercase();
    typ == "at+jwt" || typ == "application/at+jwt"
}

fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    // RFC 6750 §2.1 / RFC 9110 §11.1: the scheme is case-insensitive.
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

fn peek(token: &str) -> Result<(JoseHeader, IssuerOnly), Error> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Error::Malformed);
    };
    let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| Error::Malformed)?;
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| Error::Malformed)?;
    Ok((
        serde_json::from_slice(&header).map_err(|_| Error::Malformed)?,
        serde_json::from_slice(&payload).map_err(|_| Error::Malformed)?,
    ))
}

fn map_jwt_error(error: jsonwebtoken::errors::Error) -> Error {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => Error::BadSignature,
        ErrorKind::ExpiredSignature => Error::Expired,
        ErrorKind::ImmatureSignature => Error::NotYetValid,
        ErrorKind::InvalidAudience => Error::WrongAudience,
        ErrorKind::InvalidIssuer => Error::WrongIssuer,
        ErrorKind::MissingRequiredClaim(_) => Error::MissingClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Error::AlgorithmNotAllowed,
        _ => Error::Malformed,
    }
}

/// Builds a `WWW-Authenticate` value: `Bearer resource_metadata="…"` plus, when given,
/// `error="…"` and `scope="…"` (RFC 6750 §3, RFC 9728 §5.1).
pub fn challenge(resource_metadata: &str, error: Option<&str>, scope: Option<&str>) -> String {
    let mut value = String::from("Bearer ");
    if let Some(error) = error {
        value.push_str(&format!("error=\"{error}\", "));
    }
    if let Some(scope) = scope {
        value.push_str(&format!("scope=\"{scope}\", "));
    }
    value.push_str(&format!("resource_metadata=\"{resource_metadata}\""));
    value
}

#[cfg(test)]
mod tests;
