//! Configuration: the raw TOML file ([`Config`]) and the validated [`Settings`] it becomes.
//!
//! Loading is two-stage (parse, don't validate): serde reads a [`Config`] with
//! `deny_unknown_fields`, merged from defaults < config file < `PORTCULLIS_*` environment <
//! command-line flags, and [`Settings::from_config`] checks it once and resolves everything
//! the gateway needs (canonical resource URI, upstream credentials from the environment,
//! Host/Origin allow-lists). Nothing downstream re-validates configuration.
//!
//! Invariants: a secret never appears in the file (static upstream credentials name an
//! environment variable instead), and the loader never reads the process environment
//! itself: callers pass an env map, so tests pass their own.

mod raw;

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use http::HeaderName;
use secrecy::SecretString;
use url::Url;

pub use raw::{AuthConfig, Config, CredentialConfig, UpstreamConfig};

/// Environment variable prefix for configuration overrides (`PORTCULLIS_LISTEN`,
/// `PORTCULLIS_AUTH__MAX_TOKEN_TTL`: `__` separates nested keys).
pub const ENV_PREFIX: &str = "PORTCULLIS_";

/// Configuration errors: the file, a key or a value is wrong. Each message names the key or
/// the file and says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read or parsed, or holds an unknown key (figment names the key
    /// and the file).
    #[error("{0}")]
    Load(Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("invalid configuration: {key}: {reason}")]
    Invalid {
        /// The offending key, e.g. `upstream[1].url`.
        key: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

impl From<figment::Error> for Error {
    fn from(error: figment::Error) -> Self {
        Self::Load(Box::new(error))
    }
}

/// `PORTCULLIS_*` variables that are not configuration keys: the log filter
/// (`PORTCULLIS_LOG`) and the test harness's (`PORTCULLIS_TEST_*`, `PORTCULLIS_SKIP_*`).
fn is_non_config_env(key: &str) -> bool {
    key == "LOG" || key.starts_with("TEST_") || key.starts_with("SKIP_")
}

/// Command-line values that override the file and the environment (`portcullis serve` flags).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen ADDR`.
    pub listen: Option<SocketAddr>,
    /// `--public-url URL`.
    pub public_url: Option<Url>,
    /// `--data-dir DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--upstream NAME=URL`, appended to the file's upstreams.
    pub upstreams: Vec<(String, Url)>,
}

/// Validated gateway settings, built once by [`Settings::from_config`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Socket address the HTTP server binds.
    pub listen: SocketAddr,
    /// Externally visible base URL, without a trailing slash (`https://mcp.example.com`).
    pub public_url: Url,
    /// Canonical resource URI of the MCP endpoint, `<public_url>/mcp`: the audience every
    /// access token must name (RFC 8707 §2, MCP 2025-11-25 basic/authorization).
    pub resource: String,
    /// Directory for the embedded authorization server's key and other state.
    pub data_dir: PathBuf,
    /// Accepted `Host` header values (hostname or `host:port`), checked by the transport.
    pub allowed_hosts: Vec<String>,
    /// Accepted `Origin` values (`scheme://host[:port]`); a request with another Origin gets 403.
    pub allowed_origins: Vec<String>,
    /// Maximum JSON-RPC request body size in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Idle time after which a client session is closed.
    pub session_idle_timeout: Duration,
    /// Token settings.
    pub auth: AuthSettings,
    /// The allow-listed upstream MCP servers, in configuration order.
    pub upstreams: Vec<UpstreamSettings>,
    /// Audit trail settings (`[audit]`).
    pub audit: crate::audit::AuditSettings,
}

/// Token issuance and validation settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Issuer identifier of the embedded authorization server (RFC 8414 §2): `public_url`.
    pub issuer: String,
    /// Lifetime of tokens minted by `portcullis token` when `--ttl` is not given.
    pub default_token_ttl: Duration,
    /// Longest lifetime (`exp - iat`) the embedded issuer mints.
    pub max_token_ttl: Duration,
    /// Clock-skew leeway for `exp`/`nbf` (RFC 7519 §4.1.4); at most 60 seconds.
    pub leeway: Duration,
    /// Scopes advertised in protected-resource metadata and `WWW-Authenticate` challenges.
    pub scopes_supported: Vec<String>,
}

/// One allow-listed upstream MCP server.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Unique name (`[A-Za-z0-9_-]`, 1–32 characters); used in errors, logs and policy targets.
    pub name: String,
    /// Streamable-HTTP MCP endpoint of the upstream.
    pub url: Url,
    /// Prefix prepended to the upstream's tool and prompt names (default `"<name>__"`).
    pub tool_prefix: String,
    /// Time allowed to connect and complete the MCP `initialize` handshake.
    pub connect_timeout: Duration,
    /// Time allowed for one forwarded request (`tools/call`, `resources/read`, …).
    pub request_timeout: Duration,
    /// Static credential sent on every request to this upstream, if configured.
    pub credential: Option<StaticCredential>,
}

/// A static header credential whose value came from the environment, never the file.
#[derive(Debug, Clone)]
pub struct StaticCredential {
    /// Header name, e.g. `Authorization` or `X-Api-Key`.
    pub header: HeaderName,
    /// The full header value (prefix included), kept secret.
    pub value: SecretString,
}

// === impl Config ===

impl Config {
    /// Loads the configuration: defaults < `file` < `PORTCULLIS_*` entries of `env` <
    /// `overrides`.
    ///
    /// # Errors
    /// [`Error::Load`] when the file is unreadable, is not TOML, or holds an unknown key (the
    /// message names the key and the file); [`Error::Invalid`] when an environment override
    /// cannot be parsed.
    pub fn load(
        file: Option<&std::path::Path>,
        env: &HashMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Self, Error> {
        use figment::{
            Figment,
            providers::{Format, Serialized, Toml},
        };

        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(Error::Invalid {
                    key: "--config".into(),
                    reason: format!("file {} does not exist", path.display()),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut env_keys: Vec<_> = env
            .iter()
            .filter_map(|(key, value)| Some((key.strip_prefix(ENV_PREFIX)?, value)))
            .filter(|(key, _)| !is_non_config_env(key))
            .collect();
        env_keys.sort();
        for (key, value) in env_keys {
            let path = key.to_ascii_lowercase().replace("__", ".");
            let parsed: figment::value::Value =
                value.parse().map_err(|_: std::convert::Infallible| Error::Invalid {
                    key: format!("{ENV_PREFIX}{key}"),
                    reason: "unparseable value".into(),
                })?;
            figment = figment.merge(Serialized::global(&path, parsed));
        }
        let mut config: Config = figment.extract()?;
        if let Some(listen) = overrides.listen {
            config.listen = Some(listen);
        }
        if let Some(url) = &overrides.public_url {
            config.public_url = Some(url.clone());
        }
        if let Some(dir) = &overrides.data_dir {
            config.data_dir = Some(dir.clone());
        }
        for (name, url) in &overrides.upstreams {
            config.upstream.push(UpstreamConfig::new(name.clone(), url.clone()));
        }
        Ok(config)
    }
}

// === impl Settings ===

impl Settings {
    /// Validates `config` and resolves derived values; `env` supplies upstream credentials.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the key: a bad public URL, a duplicate or malformed upstream
    /// name, a non-HTTP(S) upstream URL, a credential whose environment variable is unset, a
    /// leeway above 60 seconds, or a zero body cap.
    pub fn from_config(config: Config, env: &HashMap<String, String>) -> Result<Self, Error> {
        let listen = config.listen.unwrap_or(raw::DEFAULT_LISTEN);
        let public_url = match config.public_url {
            Some(url) => url,
            None => default_public_url(listen)?,
        };
        if !matches!(public_url.scheme(), "http" | "https") || public_url.host_str().is_none() {
            return Err(invalid("public_url", "must be an absolute http(s) URL with a host"));
        }
        if public_url.query().is_some() || public_url.fragment().is_some() {
            return Err(invalid("public_url", "must not carry a query or fragment"));
        }
        let base = public_url.as_str().trim_end_matches('/').to_owned();
        let resource = format!("{base}/mcp");
        let public_url = Url::parse(&base).map_err(|e| invalid("public_url", &e.to_string()))?;

        let (allowed_hosts, allowed_origins) =
            host_allow_lists(&public_url, listen, config.allowed_hosts, config.allowed_origins);

        if config.max_body_bytes == 0 {
            return Err(invalid("max_body_bytes", "must be greater than 0"));
        }
        let auth = AuthSettings {
            issuer: base.clone(),
            default_token_ttl: config.auth.default_token_ttl,
            max_token_ttl: config.auth.max_token_ttl,
            leeway: config.auth.leeway,
            scopes_supported: crate::policy::DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        };
        if auth.leeway > Duration::from_secs(60) {
            return Err(invalid("auth.leeway", "must be at most 60s (RFC 8725 §3.10 short skew)"));
        }
        if auth.default_token_ttl > auth.max_token_ttl || auth.max_token_ttl.is_zero() {
            return Err(invalid("auth.default_token_ttl", "must be > 0 and ≤ auth.max_token_ttl"));
        }

        let mut upstreams = Vec::with_capacity(config.upstream.len());
        for (index, upstream) in config.upstream.into_iter().enumerate() {
            let key = format!("upstream[{index}]");
            let settings = upstream_settings(upstream, &key, env)?;
            if upstreams.iter().any(|u: &UpstreamSettings| u.name == settings.name) {
                return Err(invalid(
                    &format!("{key}.name"),
                    &format!("duplicate upstream name {:?}", settings.name),
                ));
            }
            upstreams.push(settings);
        }

        let data_dir = config.data_dir.unwrap_or_else(|| PathBuf::from(raw::DEFAULT_DATA_DIR));
        let audit = crate::audit::AuditSettings::from_config(&config.audit, &data_dir).map_err(|e| match e {
            crate::audit::Error::Config { key, reason } => Error::Invalid { key, reason },
            other => Error::Invalid { key: "audit".into(), reason: other.to_string() },
        })?;
        Ok(Self {
            listen,
            public_url,
            resource,
            data_dir,
            allowed_hosts,
            allowed_origins,
            max_body_bytes: config.max_body_bytes,
            session_idle_timeout: config.session_idle_timeout,
            auth,
            upstreams,
            audit,
        })
    }

    /// URL of this gateway's RFC 9728 protected-resource metadata for `/mcp`
    /// (`<public_url>/.well-known/oauth-protected-resource/mcp`, RFC 9728 §3.1).
    pub fn resource_metadata_url(&self) -> String {
        format!("{}/.well-known/oauth-protected-resource/mcp", self.public_url.as_str().trim_end_matches('/'))
    }
}

fn invalid(key: &str, reason: &str) -> Error {
    Error::Invalid { key: key.to_owned(), reason: reason.to_owned() }
}

fn default_public_url(listen: SocketAddr) -> Result<Url, Error> {
    // An unspecified bind address is not a reachable host: clients on this machine use loopback.
    let host = if listen.ip().is_unspecified() {
        "localhost".to_owned()
    } else if listen.is_ipv6() {
        format!("[{}]", listen.ip())
    } else {
        listen.ip().to_string()
    };
    Url::parse(&format!("http://{host}:{}", listen.port()))
        .map_err(|e| invalid("public_url", &format!("cannot derive from listen address: {e}")))
}

/// Host and Origin allow-lists: loopback names plus the host of `public_url`, plus extras.
///
/// Hosts are matched by rmcp on hostname (any port) or exact `host:port`; Origins on
/// `(scheme, host, port)` (RFC 6454). Loopback origins accept any port so that local tools
/// (MCP Inspector) work; the public origin only with its own port.
fn host_allow_lists(
    public_url: &Url,
    listen: SocketAddr,
    extra_hosts: Vec<String>,
    extra_origins: Vec<String>,
) -> (Vec<String>, Vec<String>) {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1", "[::1]"].map(String::from).into();
    let mut origins: Vec<String> =
        ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"].map(String::from).into();
    if let Some(host) = public_url.host_str() {
        let host = host.to_owned();
        if !hosts.contains(&host) {
            hosts.push(host);
        }
        let port = public_url.port_or_known_default().unwrap_or(listen.port());
        let origin = format!("{}://{}:{port}", public_url.scheme(), public_url.host_str().unwrap_or_default());
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    }
    hosts.extend(extra_hosts);
    origins.extend(extra_origins);
    (hosts, origins)
}

fn upstream_settings(
    upstream: UpstreamConfig,
    key: &str,
    env: &HashMap<String, String>,
) -> Result<UpstreamSettings, Error> {
    let name_ok = !upstream.name.is_empty()
        && upstream.name.len() <= 32
        && upstream.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(invalid(
            &format!("{key}.name"),
            &format!("{:?} must be 1-32 characters of [A-Za-z0-9_-]", upstream.name),
        ));
    }
    if !matches!(upstream.url.scheme(), "http" | "https") {
        return Err(invalid(&format!("{key}.url"), "must be an http(s) URL"));
    }
    let tool_prefix = upstream.tool_prefix.unwrap_or_else(|| format!("{}__", upstream.name));
    if !tool_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/')) {
        return Err(invalid(&format!("{key}.tool_prefix"), "may only use [A-Za-z0-9_./-]"));
    }
    let credential = match upstream.credential {
        None => None,
        Some(credential) => {
            let header = HeaderName::from_bytes(credential.header.as_bytes()).map_err(|_| {
                invalid(&format!("{key}.credential.header"), "not a valid HTTP header name")
            })?;
            let Some(secret) = env.get(&credential.env).filter(|v| !v.is_empty()) else {
                return Err(invalid(
                    &format!("{key}.credential.env"),
                    &format!("environment variable {} is not set", credential.env),
                ));
            };
            let value = format!("{}{secret}", credential.prefix);
            if http::HeaderValue::from_str(&value).is_err() {
                return Err(invalid(
                    &format!("{key}.credential.env"),
                    &format!("value of {} is not a valid header value", credential.env),
                ));
            }
            Some(StaticCredential { header, value: SecretString::from(value) })
        }
    };
    Ok(UpstreamSettings {
        name: upstream.name,
        url: upstream.url,
        tool_prefix,
        connect_timeout: upstream.connect_timeout,
        request_timeout: upstream.request_timeout,
        credential,
    })
}

#[cfg(test)]
mod tests;
