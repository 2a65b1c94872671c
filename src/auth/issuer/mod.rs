//! The embedded authorization server: the gateway's own token issuer for the default set-up.
//!
//! On first start it generates an ES256 (ECDSA P-256, RFC 7518 §3.4) signing key in the data
//! directory (`issuer/signing-key.pem`, PKCS#8, file mode 0600) and reuses it afterwards. It
//! publishes RFC 8414 authorization-server metadata and a JWKS (RFC 7517) so that anyone can
//! verify its tokens, and mints short-lived access tokens in the RFC 9068 JWT profile
//! (`typ: at+jwt`, `aud` = the canonical resource URI) for `portcullis token` and the demo.
//!
//! Invariants: the private key never leaves this module; every minted token carries `iss`,
//! `sub`, `aud`, `exp`, `iat`, `nbf` and a random `jti`, and lives at most
//! `auth.max_token_ttl`.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

pub mod token;

use aws_lc_rs::{
    digest,
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use base64::{Engine, engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Value, json};

/// Key file name inside `<data_dir>/issuer/`.
const KEY_FILE: &str = "signing-key.pem";

/// Errors of the embedded authorization server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key file could not be read or written.
    #[error("signing key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The key file exists but is not a PKCS#8 P-256 private key.
    #[error("signing key {path} is not a PKCS#8 ECDSA P-256 private key (delete it to generate a new one)")]
    BadKey {
        /// The key file.
        path: PathBuf,
    },
    /// Key generation or signing failed in the crypto library.
    #[error("crypto failure: {0}")]
    Crypto(String),
    /// A requested lifetime is zero or above the configured maximum.
    #[error("token lifetime {requested}s is outside 1..={max}s (auth.max_token_ttl)")]
    Lifetime {
        /// Requested lifetime in seconds.
        requested: u64,
        /// Configured maximum in seconds.
        max: u64,
    },
}

/// The embedded issuer's signing key with its public JWK and key id.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    x: String,
    y: String,
}

/// The embedded authorization server: key, issuer identifier and audience.
pub struct EmbeddedIssuer {
    key: SigningKey,
    issuer: String,
    resource: String,
    max_ttl: Duration,
    scopes_supported: Vec<String>,
}

/// What to put in a minted access token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `sub`: the principal's subject.
    pub subject: String,
    /// `scope`: space-separated scopes (RFC 9068 §2.2.3).
    pub scopes: Vec<String>,
    /// Lifetime; must be within `1 s ..= auth.max_token_ttl`.
    pub ttl: Duration,
    /// `client_id` claim (RFC 9068 §2.2); defaults to `portcullis-cli`.
    pub client_id: Option<String>,
}

#[derive(Serialize)]
struct AccessTokenClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    nbf: u64,
    jti: String,
    client_id: &'a str,
    scope: String,
}

// === impl SigningKey ===

impl SigningKey {
    /// Loads `<data_dir>/issuer/signing-key.pem`, generating it (mode 0600) if absent.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory or file cannot be created or read, [`Error::BadKey`]
    /// when the file is not a P-256 PKCS#8 key.
    pub fn load_or_generate(data_dir: &Path) -> Result<Self, Error> {
        let dir = data_dir.join("issuer");
        let path = dir.join(KEY_FILE);
        let io = |source| Error::Io { path: path.clone(), source };
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let der = decode_pem(&pem).ok_or_else(|| Error::BadKey { path: path.clone() })?;
                Self::from_pkcs8(&der).map_err(|_| Error::BadKey { path: path.clone() })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir).map_err(io)?;
                let document = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                    .map_err(|_| Error::Crypto("P-256 key generation failed".into()))?;
                let der = document.as_ref();
                write_private(&path, encode_pem(der).as_bytes()).map_err(io)?;
                tracing::info!(path = %path.display(), "generated embedded issuer signing key");
                Self::from_pkcs8(der)
            }
            Err(error) => Err(io(error)),
        }
    }

    /// Loads a key from PEM text (PKCS#8, `-----BEGIN PRIVATE KEY-----`).
    ///
    /// # Errors
    /// [`Error::BadKey`] naming `origin` when the text is not a P-256 PKCS#8 key.
    pub fn from_pem(pem: &str, origin: &Path) -> Result<Self, Error> {
        let der = decode_pem(pem).ok_or_else(|| Error::BadKey { path: origin.to_owned() })?;
        Self::from_pkcs8(&der).map_err(|_| Error::BadKey { path: origin.to_owned() })
    }

    /// Builds the key from PKCS#8 DER bytes of a P-256 private key.
    ///
    /// # Errors
    /// [`Error::Crypto`] when the bytes are not such a key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, Error> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| Error::Crypto(format!("not a P-256 PKCS#8 key: {e}")))?;
        let point = pair.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 || X (32 bytes) || Y (32 bytes).
        if point.len() != 65 || point[0] != 4 {
            return Err(Error::Crypto("unexpected P-256 public key encoding".into()));
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        // RFC 7638 JWK thumbprint: members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()));
        let decoding = DecodingKey::from_ec_components(&x, &y)
            .map_err(|e| Error::Crypto(format!("public key: {e}")))?;
        Ok(Self { kid, encoding: EncodingKey::from_ec_der(der), decoding, x, y })
    }

    /// Key id: the RFC 7638 thumbprint of the public JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Public key for verifying this key's signatures.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The public JWK (RFC 7517 §4, RFC 7518 §6.2.1).
    pub fn public_jwk(&self) -> Value {
        json!({"kty": "EC", "crv": "P-256", "x": self.x, "y": self.y, "kid": self.kid, "alg": "ES256", "use": "sig"})
    }
}

// === impl EmbeddedIssuer ===

impl EmbeddedIssuer {
    /// An issuer named `issuer` (the gateway's public URL) minting tokens for `resource`.
    pub fn new(key: SigningKey, issuer: String, resource: String, max_ttl: Duration) -> Self {
        Self { key, issuer, resource, max_ttl, scopes_supported: crate::policy::DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect() }
    }

    /// Sets the scopes advertised in metadata (`auth.scopes_supported`: the policy's scopes).
    pub fn with_scopes_supported(mut self, scopes: Vec<String>) -> Self {
        self.scopes_supported = scopes;
        self
    }

    /// Issuer identifier (RFC 8414 §2).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Mints an RFC 9068 access token for the canonical resource.
    ///
    /// # Errors
    /// [`Error::Lifetime`] when `ttl` is zero or above `auth.max_token_ttl`; [`Error::Crypto`]
    /// when signing fails.
    pub fn mint(&self, request: &TokenRequest) -> Result<String, Error> {
        let ttl = request.ttl.as_secs();
        if ttl == 0 || request.ttl > self.max_ttl {
            return Err(Error::Lifetime { requested: ttl, max: self.max_ttl.as_secs() });
        }
        let now = unix_now();
        let claims = AccessTokenClaims {
            iss: &self.issuer,
            sub: &request.subject,
            aud: &self.resource,
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            client_id: request.client_id.as_deref().unwrap_or("portcullis-cli"),
            scope: request.scopes.join(" "),
        };
        self.sign("at+jwt", &claims)
    }

    /// Signs arbitrary claims with the issuer key (ES256, `kid` set, `typ` as given).
    ///
    /// # Errors
    /// [`Error::Crypto`] when serialization or signing fails.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key.kid.clone());
        header.typ = Some(typ.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key.encoding).map_err(|e| Error::Crypto(e.to_string()))
    }

    /// The JWKS document (RFC 7517 §5) served at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.key.public_jwk()]})
    }

    /// RFC 8414 authorization-server metadata: a token endpoint for the `client_credentials`
    /// grant of configured machine clients (interactive grants are not offered).
    pub fn metadata(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.issuer),
            "scopes_supported": self.scopes_supported,
            "token_endpoint": format!("{}/oauth/token", self.issuer),
            "response_types_supported": [],
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "resource_indicators_supported": true,
        })
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn encode_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

fn decode_pem(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .trim()
        .strip_prefix("-----BEGIN PRIVATE KEY-----")?
        .strip_suffix("-----END PRIVATE KEY-----")?
        .split_whitespace()
        .collect();
    STANDARD.decode(body).ok()
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_generated_once_with_private_mode_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = SigningKey::load_or_generate(dir.path()).unwrap();
        let second = SigningKey::load_or_generate(dir.path()).unwrap();
        assert_eq!(first.kid(), second.kid());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("issuer").join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn key_from_pem_text_matches_the_data_dir_key() {
        let dir = tempfile::tempdir().unwrap();
        let generated = SigningKey::load_or_generate(dir.path()).unwrap();
        let pem = std::fs::read_to_string(dir.path().join("issuer").join(KEY_FILE)).unwrap();
        let loaded = SigningKey::from_pem(&pem, Path::new("env")).unwrap();
        assert_eq!(generated.kid(), loaded.kid());
        assert!(matches!(SigningKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", Path::new("env")), Err(Error::BadKey { .. })));
    }

    #[test]
    fn corrupt_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("issuer")).unwrap();
        std::fs::write(dir.path().join("issuer").join(KEY_FILE), "garbage").unwrap();
        assert!(matches!(SigningKey::load_or_generate(dir.path()), Err(Error::BadKey { .. })));
    }

    #[test]
    fn mint_refuses_lifetimes_above_the_maximum() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_generate(dir.path()).unwrap();
        let issuer = EmbeddedIssuer::new(key, "http://gw".into(), "http://gw/mcp".into(), Duration::from_secs(60));
        let request = TokenRequest { subject: "a".into(), scopes: vec![], ttl: Duration::from_secs(61), client_id: None };
        assert!(matches!(issuer.mint(&request), Err(Error::Lifetime { requested: 61, max: 60 })));
    }
}
