//! The raw configuration file, exactly as serde reads it. Every key is documented in README.md
//! ("Configuration"); keep the two in step.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use url::Url;

/// Default bind address: loopback only, so a fresh start is never exposed to the network.
pub(crate) const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);
/// Default data directory, relative to the working directory.
pub(crate) const DEFAULT_DATA_DIR: &str = "portcullis-data";

/// The configuration file (TOML). Unknown keys are rejected.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Bind address (default `127.0.0.1:8080`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Externally visible base URL (default `http://<listen>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<Url>,
    /// Data directory (default `./portcullis-data`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Extra accepted `Host` values besides loopback and the public URL's host.
    pub allowed_hosts: Vec<String>,
    /// Extra accepted `Origin` values besides loopback and the public URL's origin.
    pub allowed_origins: Vec<String>,
    /// Request body cap in bytes (default 4 MiB).
    pub max_body_bytes: usize,
    /// Idle time after which a client session closes (default `30m`).
    #[serde(with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// A client connection that sends no complete request head for this long is closed: an
    /// idle keep-alive connection, or one trickling its headers (default `120s`).
    #[serde(with = "humantime_serde")]
    pub connection_idle_timeout: Duration,
    /// A request body must arrive whole within this long of its head, else 408 (default
    /// `60s`).
    #[serde(with = "humantime_serde")]
    pub request_body_timeout: Duration,
    /// Token settings.
    pub auth: AuthConfig,
    /// Allow-listed upstream MCP servers (`[[upstream]]` tables).
    pub upstream: Vec<UpstreamConfig>,
    /// Policy rules (`[[policy]]` tables); none → the default scope rules.
    pub policy: Vec<crate::policy::PolicyRuleConfig>,
    /// Traces, metrics and health endpoints.
    pub telemetry: TelemetryConfig,
    /// Audit trail (`[audit]`).
    pub audit: crate::audit::AuditConfig,
    /// Prompt-injection guard (`[guard]`).
    pub guard: crate::guard::GuardConfig,
    /// Per-principal request rate limits (`[limits]`; off by default).
    pub limits: crate::limits::LimitsConfig,
}

/// `[telemetry]`: trace export and the metrics listener. The standard `OTEL_*` environment
/// variables take precedence (README "Telemetry and health").
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL of the trace collector, e.g. `http://otel-collector:4318`
    /// (`/v1/traces` is appended); unset → traces are not exported unless
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<Url>,
    /// Separate address for `/metrics`, `/healthz` and `/readyz` (e.g. `0.0.0.0:9090`);
    /// unset → they are served on the main listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
}

/// `[auth]`: the embedded authorization server and token validation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of tokens from `portcullis token` without `--ttl` (default `15m`).
    #[serde(with = "humantime_serde")]
    pub default_token_ttl: Duration,
    /// Longest token lifetime the embedded issuer mints (default `1h`).
    #[serde(with = "humantime_serde")]
    pub max_token_ttl: Duration,
    /// Clock-skew leeway for `exp`/`nbf` (default `30s`, at most `60s`).
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Accept tokens from the embedded authorization server (default `true`).
    pub embedded_issuer: bool,
    /// PEM (PKCS#8 P-256) file with the gateway's signing key, instead of the data dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
    /// Environment variable holding the PEM signing key (e.g. from a Kubernetes Secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key_env: Option<String>,
    /// Trusted external authorization servers (`[[auth.issuer]]`).
    pub issuer: Vec<IssuerConfig>,
    /// Confidential machine clients of the embedded authorization server (`[[auth.client]]`).
    pub client: Vec<ClientConfig>,
}

/// `[[auth.client]]`: a confidential client that gets tokens with the `client_credentials`
/// grant (RFC 6749 §4.4) from the embedded authorization server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Client identifier; also the `sub` of its tokens.
    pub client_id: String,
    /// Hex SHA-256 of the client secret (`printf %s "$SECRET" | sha256sum`); never the secret.
    pub secret_sha256: String,
    /// Scopes the client may request; a request without `scope` gets all of them.
    pub scopes: Vec<String>,
    /// Longest token lifetime for this client (default `auth.default_token_ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde::option")]
    pub max_ttl: Option<Duration>,
}

/// `[[auth.issuer]]`: a trusted external authorization server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Issuer identifier, compared exactly with `iss` and with discovery metadata.
    pub issuer: String,
    /// Expected `aud` (default: the canonical resource URI `<public_url>/mcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Accepted algorithms (default `["RS256", "PS256", "ES256", "EdDSA"]`; nothing else is
    /// ever accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// JWKS URL; when absent it is discovered (RFC 8414, then OpenID Connect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<Url>,
    /// Require `typ: at+jwt` (RFC 9068) (default `false`: many IdPs send `JWT`).
    #[serde(default)]
    pub require_typ: bool,
    /// Longest accepted `exp - iat` (default `auth.max_token_ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde::option")]
    pub max_token_lifetime: Option<Duration>,
    /// Periodic JWKS refresh (default `5m`).
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// Minimum time between refreshes triggered by an unknown `kid` (default `30s`).
    #[serde(default = "default_jwks_min_refresh", with = "humantime_serde")]
    pub jwks_min_refresh_interval: Duration,
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_jwks_min_refresh() -> Duration {
    Duration::from_secs(30)
}

/// `[[upstream]]`: one allow-listed upstream MCP server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Unique name.
    pub name: String,
    /// Streamable-HTTP endpoint URL.
    pub url: Url,
    /// Name prefix for tools and prompts (default `"<name>__"`; `""` allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_prefix: Option<String>,
    /// Connect + `initialize` timeout (default `5s`).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Per-request timeout (default `60s`).
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Optional static credential header whose value comes from an environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialConfig>,
    /// Optional OAuth 2.0 credential (client credentials or RFC 8693 token exchange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<UpstreamOAuthConfig>,
    /// Header carrying the gateway-signed identity assertion (default
    /// `X-Portcullis-Identity`; `""` disables it).
    #[serde(default = "default_identity_header")]
    pub identity_header: String,
    /// `aud` of identity assertions (default: the upstream's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_audience: Option<String>,
    /// Lifetime of identity assertions (default `60s`).
    #[serde(default = "default_identity_ttl", with = "humantime_serde")]
    pub identity_ttl: Duration,
    /// Whether policy rules may rely on this upstream's tool annotations (default false).
    #[serde(default)]
    pub trusted_annotations: bool,
    /// Guard overrides for this upstream (`[upstream.guard]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::guard::GuardOverride>,
}

/// `[upstream.oauth]`: the gateway obtains its own access token for this upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamOAuthConfig {
    /// `client_credentials` (RFC 6749 §4.4) or `token_exchange` (RFC 8693, on behalf of the
    /// caller, with the identity assertion as subject token).
    pub grant: OAuthGrant,
    /// Token endpoint URL.
    pub token_url: Url,
    /// The gateway's client id at that authorization server.
    pub client_id: String,
    /// Environment variable holding the client secret.
    pub client_secret_env: String,
    /// Space-separated scopes to request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// RFC 8707 `resource` to request (default: the upstream's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// RFC 8693 `audience` (token exchange only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// The OAuth grant the gateway uses toward an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthGrant {
    /// RFC 6749 §4.4.
    ClientCredentials,
    /// RFC 8693.
    TokenExchange,
}

fn default_identity_header() -> String {
    "X-Portcullis-Identity".to_owned()
}

fn default_identity_ttl() -> Duration {
    Duration::from_secs(60)
}

/// `[upstream.credential]`: a header whose value is read from the environment at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Header name (default `Authorization`).
    #[serde(default = "default_credential_header")]
    pub header: String,
    /// Name of the environment variable holding the secret (never the secret itself).
    pub env: String,
    /// Text put before the secret, e.g. `"Bearer "` (default empty).
    #[serde(default)]
    pub prefix: String,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_credential_header() -> String {
    "Authorization".to_owned()
}

// === impl Config ===

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: None,
            public_url: None,
            data_dir: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            session_idle_timeout: Duration::from_secs(30 * 60),
            connection_idle_timeout: Duration::from_secs(120),
            request_body_timeout: Duration::from_secs(60),
            auth: AuthConfig::default(),
            upstream: Vec::new(),
            policy: Vec::new(),
            telemetry: TelemetryConfig::default(),
            audit: crate::audit::AuditConfig::default(),
            guard: crate::guard::GuardConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
        }
    }
}

// === impl AuthConfig ===

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            default_token_ttl: Duration::from_secs(15 * 60),
            max_token_ttl: Duration::from_secs(60 * 60),
            leeway: Duration::from_secs(30),
            embedded_issuer: true,
            signing_key_file: None,
            signing_key_env: None,
            issuer: Vec::new(),
            client: Vec::new(),
        }
    }
}

// === impl UpstreamConfig ===

impl UpstreamConfig {
    /// An upstream with default prefix, timeouts and no credential (`--upstream NAME=URL`).
    pub fn new(name: String, url: Url) -> Self {
        Self {
            name,
            url,
            tool_prefix: None,
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
            credential: None,
            oauth: None,
            identity_header: default_identity_header(),
            identity_audience: None,
            identity_ttl: default_identity_ttl(),
            trusted_annotations: false,
            guard: None,
        }
    }
}
