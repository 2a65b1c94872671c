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
    /// Token settings.
    pub auth: AuthConfig,
    /// Allow-listed upstream MCP servers (`[[upstream]]` tables).
    pub upstream: Vec<UpstreamConfig>,
    /// Audit trail (`[audit]`).
    pub audit: crate::audit::AuditConfig,
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
            auth: AuthConfig::default(),
            upstream: Vec::new(),
            audit: crate::audit::AuditConfig::default(),
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
        }
    }
}
