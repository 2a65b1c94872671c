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
    embedded: Arc<EmbeddedIssuer>,
    validation: Validation,
    max_lifetime: Duration,
    leeway: u64,
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
    scp: Option<Vec<String>>,
    jti: Option<String>,
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
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

// === impl ResourceServer ===

impl ResourceServer {
    /// A resource server for `resource` (the canonical URI, `aud`) trusting `embedded`.
    /// `leeway` applies to `exp`/`nbf`/`iat`; `max_lifetime` bounds `exp - iat`.
    pub fn new(embedded: Arc<EmbeddedIssuer>, resource: &str, leeway: Duration, max_lifetime: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[embedded.issuer()]);
        validation.set_audience(&[resource]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        Self { embedded, validation, max_lifetime, leeway: leeway.as_secs() }
    }

    /// Authenticates the value of an `Authorization` header.
    ///
    /// # Errors
    /// An [`Error`] naming why the token is refused; the caller answers 401.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Error> {
        let token = bearer_token(authorization).ok_or(Error::Missing)?;
        let header = peek_header(token)?;
        // RFC 8725 §3.1: only the algorithm we expect for this issuer, decided before any
        // cryptography; `none` and HMAC (key confusion with a public key) never verify.
        if header.alg != "ES256" {
            return Err(Error::AlgorithmNotAllowed);
        }
        if header.kid.as_deref().is_some_and(|kid| kid != self.embedded.key().kid()) {
            return Err(Error::UnknownKey);
        }
        let data = jsonwebtoken::decode::<Claims>(token, self.embedded.key().decoding_key(), &self.validation)
            .map_err(map_jwt_error)?;
        let claims = data.claims;
        let now = issuer::unix_now();
        if claims.iat.is_some_and(|iat| iat > now + self.leeway) {
            return Err(Error::NotYetValid);
        }
        let (Some(exp), Some(subject), Some(issuer)) = (claims.exp, claims.sub, claims.iss) else {
            return Err(Error::MissingClaim);
        };
        if let Some(iat) = claims.iat
            && exp.saturating_sub(iat) > self.max_lifetime.as_secs()
        {
            return Err(Error::LifetimeTooLong);
        }
        let mut scopes: BTreeSet<String> =
            claims.scope.as_deref().unwrap_or_default().split_ascii_whitespace().map(str::to_owned).collect();
        scopes.extend(claims.scp.unwrap_or_default());
        Ok(Principal {
            issuer,
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

fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    // RFC 6750 §2.1 / RFC 9110 §11.1: the scheme is case-insensitive.
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

fn peek_header(token: &str) -> Result<JoseHeader, Error> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Error::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| Error::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Error::Malformed)
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
