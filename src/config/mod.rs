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

pub use raw::{
    AuthConfig, ClientConfig, Config, CredentialConfig, IssuerConfig, OAuthGrant, TelemetryConfig, UpstreamConfig,
    UpstreamOAuthConfig,
};

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

impl From<crate::policy::Error> for Error {
    fn from(error: crate::policy::Error) -> Self {
        let crate::policy::Error::InvalidRule { key, reason } = error;
        Self::Invalid { key, reason }
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
    /// A client connection that sends no complete request head for this long is closed
    /// (keep-alive idle and slow headers; [`crate::transport::serve`]).
    pub connection_idle_timeout: Duration,
    /// A request body must arrive whole within this long of its head; a slower one fails
    /// ([`crate::transport::BodyTimeout`]) and `/mcp` answers 408.
    pub request_body_timeout: Duration,
    /// Token settings.
    pub auth: AuthSettings,
    /// The allow-listed upstream MCP servers, in configuration order.
    pub upstreams: Vec<UpstreamSettings>,
    /// Compiled `[[policy]]` rules in configuration order; empty → the default rules
    /// (`crate::policy::Policy::from_rules`).
    pub policy: Vec<crate::policy::Rule>,
    /// Trace export and the metrics listener.
    pub telemetry: TelemetrySettings,
    /// Audit trail settings (`[audit]`).
    pub audit: crate::audit::AuditSettings,
    /// `false` when `[audit] url = "none"`: no trail is written (never the default).
    pub audit_enabled: bool,
    /// The guard, built (and so validated) from `[guard]` and each `[upstream.guard]`.
    pub guard: std::sync::Arc<crate::guard::Guard>,
    /// Per-principal request rate limits (`[limits]`, validated; off by default).
    pub limits: crate::limits::LimitsConfig,
}

/// `[telemetry]`, validated.
#[derive(Debug, Clone, Default)]
pub struct TelemetrySettings {
    /// OTLP/HTTP base URL (`/v1/traces` is appended); the `OTEL_EXPORTER_OTLP_*` endpoint
    /// variables take precedence (`crate::telemetry::TelemetryBuilder::otlp_endpoint`).
    pub otlp_endpoint: Option<Url>,
    /// Separate listen address for `/metrics`, `/healthz`, `/readyz`; `None` → the main
    /// listener serves them. Never equal to `listen`.
    pub metrics_listen: Option<SocketAddr>,
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
    /// Whether tokens of the embedded authorization server are accepted.
    pub embedded_issuer: bool,
    /// Where the gateway's own signing key comes from.
    pub signing_key: SigningKeySource,
    /// Trusted external authorization servers.
    pub issuers: Vec<IssuerSettings>,
    /// Machine clients of the embedded authorization server.
    pub clients: Vec<MachineClient>,
}

/// A confidential client of the embedded authorization server.
#[derive(Debug, Clone)]
pub struct MachineClient {
    /// Client identifier.
    pub client_id: String,
    /// SHA-256 of the secret (32 bytes).
    pub secret_sha256: [u8; 32],
    /// Scopes it may request.
    pub scopes: Vec<String>,
    /// Longest token lifetime.
    pub max_ttl: Duration,
}

/// Source of the gateway's signing key (embedded issuer tokens, identity assertions,
/// audit checkpoints).
#[derive(Debug, Clone)]
pub enum SigningKeySource {
    /// `<data_dir>/issuer/signing-key.pem`, generated on first start.
    DataDir,
    /// A PEM file (`auth.signing_key_file`).
    File(PathBuf),
    /// PEM text from the environment variable named by `auth.signing_key_env`.
    Pem(SecretString),
}

/// A trusted external authorization server, validated.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// Issuer identifier (exact).
    pub issuer: String,
    /// Expected audience.
    pub audience: String,
    /// Accepted algorithms (a subset of RS256, PS256, ES256, EdDSA).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// JWKS URL, or `None` to discover it.
    pub jwks_uri: Option<Url>,
    /// Require `typ: at+jwt`.
    pub require_typ: bool,
    /// Longest accepted `exp - iat`.
    pub max_token_lifetime: Duration,
    /// Periodic JWKS refresh interval.
    pub jwks_refresh_interval: Duration,
    /// Minimum interval between unknown-`kid` refreshes.
    pub jwks_min_refresh_interval: Duration,
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
    /// OAuth credential the gateway obtains for this upstream, if configured.
    pub oauth: Option<UpstreamOAuth>,
    /// Header for the identity assertion, or `None` when disabled.
    pub identity_header: Option<HeaderName>,
    /// `aud` of identity assertions.
    pub identity_audience: String,
    /// Lifetime of identity assertions.
    pub identity_ttl: Duration,
    /// Whether policy rules may rely on this upstream's tool annotations (`readOnlyHint`, …).
    pub trusted_annotations: bool,
    /// Guard overrides for this upstream.
    pub guard: Option<crate::guard::GuardOverride>,
}

/// An OAuth credential toward an upstream; the secret came from the environment.
#[derive(Debug, Clone)]
pub struct UpstreamOAuth {
    /// Grant type.
    pub grant: OAuthGrant,
    /// Token endpoint.
    pub token_url: Url,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: SecretString,
    /// Scopes to request.
    pub scopes: Vec<String>,
    /// RFC 8707 resource.
    pub resource: String,
    /// RFC 8693 audience.
    pub audience: Option<String>,
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
    /// leeway above 60 seconds, a zero body cap, a `[[policy]]` rule that does not compile, a
    /// non-HTTP(S) `telemetry.otlp_endpoint`, or a `telemetry.metrics_listen` equal to `listen`.
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
        if config.connection_idle_timeout < Duration::from_secs(1) {
            return Err(invalid("connection_idle_timeout", "must be at least 1s"));
        }
        if config.request_body_timeout < Duration::from_secs(1) {
            return Err(invalid("request_body_timeout", "must be at least 1s"));
        }
        config.limits.validate().map_err(|e| invalid("limits.burst", &e.to_string()))?;
        let signing_key = match (&config.auth.signing_key_file, &config.auth.signing_key_env) {
            (Some(_), Some(_)) => {
                return Err(invalid("auth.signing_key_file", "set either signing_key_file or signing_key_env, not both"));
            }
            (Some(path), None) => SigningKeySource::File(path.clone()),
            (None, Some(name)) => match env.get(name).filter(|v| !v.is_empty()) {
                Some(pem) => SigningKeySource::Pem(SecretString::from(pem.clone())),
                None => {
                    return Err(invalid("auth.signing_key_env", &format!("environment variable {name} is not set")));
                }
            },
            (None, None) => SigningKeySource::DataDir,
        };
        let mut issuers = Vec::with_capacity(config.auth.issuer.len());
        for (index, issuer) in config.auth.issuer.iter().enumerate() {
            issuers.push(issuer_settings(issuer, index, &resource, config.auth.max_token_ttl)?);
        }
        let mut clients: Vec<MachineClient> = Vec::with_capacity(config.auth.client.len());
        for (index, client) in config.auth.client.iter().enumerate() {
            let key = format!("auth.client[{index}]");
            let hex = client.secret_sha256.trim();
            let bytes: Option<Vec<u8>> = (hex.len() == 64)
                .then(|| (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect::<Option<Vec<u8>>>())
                .flatten();
            let Some(Ok(secret_sha256)) = bytes.map(<[u8; 32]>::try_from) else {
                return Err(invalid(&format!("{key}.secret_sha256"), "must be 64 hex digits (SHA-256 of the secret)"));
            };
            if client.client_id.is_empty() || clients.iter().any(|c| c.client_id == client.client_id) {
                return Err(invalid(&format!("{key}.client_id"), "must be non-empty and unique"));
            }
            let max_ttl = client.max_ttl.unwrap_or(config.auth.default_token_ttl);
            if max_ttl.is_zero() || max_ttl > config.auth.max_token_ttl {
                return Err(invalid(&format!("{key}.max_ttl"), "must be > 0 and ≤ auth.max_token_ttl"));
            }
            clients.push(MachineClient { client_id: client.client_id.clone(), secret_sha256, scopes: client.scopes.clone(), max_ttl });
        }
        if !config.auth.embedded_issuer && issuers.is_empty() {
            return Err(invalid("auth.embedded_issuer", "is false but no [[auth.issuer]] is configured: no token could ever be accepted"));
        }
        let mut auth = AuthSettings {
            issuer: base.clone(),
            default_token_ttl: config.auth.default_token_ttl,
            max_token_ttl: config.auth.max_token_ttl,
            leeway: config.auth.leeway,
            scopes_supported: crate::policy::DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            embedded_issuer: config.auth.embedded_issuer,
            signing_key,
            issuers,
            clients,
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
        let telemetry = telemetry_settings(config.telemetry, listen)?;
        let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        let policy = crate::policy::compile_rules(&config.policy, &names)?;
        auth.scopes_supported = crate::policy::Policy::from_rules(policy.clone()).scopes_supported();

        let data_dir = config.data_dir.unwrap_or_else(|| PathBuf::from(raw::DEFAULT_DATA_DIR));
        // `[audit] url = "none"` turns the trail off (benchmarks, throwaway set-ups); the
        // gateway says so loudly at every start.
        let audit_enabled = config.audit.url.as_deref() != Some("none");
        let mut audit_config = config.audit.clone();
        if !audit_enabled {
            audit_config.url = None;
        }
        let audit = crate::audit::AuditSettings::from_config(&audit_config, &data_dir).map_err(|e| match e {
            crate::audit::Error::Config { key, reason } => Error::Invalid { key, reason },
            other => Error::Invalid { key: "audit".into(), reason: other.to_string() },
        })?;
        let overrides = upstreams.iter().filter_map(|u| Some((u.name.as_str(), u.guard.as_ref()?)));
        let guard = crate::guard::Guard::new(&config.guard, overrides)
            .map_err(|e| Error::Invalid { key: "guard".into(), reason: e.to_string() })?;
        Ok(Self {
            guard: std::sync::Arc::new(guard),
            listen,
            public_url,
            resource,
            data_dir,
            allowed_hosts,
            allowed_origins,
            max_body_bytes: config.max_body_bytes,
            session_idle_timeout: config.session_idle_timeout,
            connection_idle_timeout: config.connection_idle_timeout,
            request_body_timeout: config.request_body_timeout,
            auth,
            upstreams,
            policy,
            telemetry,
            audit,
            audit_enabled,
            limits: config.limits,
        })
    }

    /// URL of this gateway's RFC 9728 protected-resource metadata for `/mcp`
    /// (`<public_url>/.well-known/oauth-protected-resource/mcp`, RFC 9728 §3.1).
    pub fn resource_metadata_url(&self) -> String {
        format!("{}/.well-known/oauth-protected-resource/mcp", self.public_url.as_str().trim_end_matches('/'))
    }
}

fn telemetry_settings(config: TelemetryConfig, listen: SocketAddr) -> Result<TelemetrySettings, Error> {
    if let Some(url) = &config.otlp_endpoint
        && (!matches!(url.scheme(), "http" | "https") || url.host_str().is_none())
    {
        return Err(invalid("telemetry.otlp_endpoint", "must be an http(s) URL of an OTLP/HTTP collector, e.g. http://otel-collector:4318"));
    }
    if let Some(address) = config.metrics_listen
        && address == listen
        && address.port() != 0
    {
        return Err(invalid("telemetry.metrics_listen", "must differ from listen (omit it to serve /metrics on the main listener)"));
    }
    Ok(TelemetrySettings { otlp_endpoint: config.otlp_endpoint, metrics_listen: config.metrics_listen })
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

fn issuer_settings(issuer: &IssuerConfig, index: usize, resource: &str, default_lifetime: Duration) -> Result<IssuerSettings, Error> {
    use jsonwebtoken::Algorithm;
    let key = format!("auth.issuer[{index}]");
    let url = Url::parse(&issuer.issuer).map_err(|e| invalid(&format!("{key}.issuer"), &format!("not a URL: {e}")))?;
    if crate::auth::jwks::require_secure(&url).is_err() {
        return Err(invalid(&format!("{key}.issuer"), "must use https (http only on loopback)"));
    }
    let algorithms = match &issuer.algorithms {
        None => vec![Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA],
        Some(names) => {
            let mut algorithms = Vec::new();
            for name in names {
                match name.as_str() {
                    "RS256" => algorithms.push(Algorithm::RS256),
                    "PS256" => algorithms.push(Algorithm::PS256),
                    "ES256" => algorithms.push(Algorithm::ES256),
                    "EdDSA" => algorithms.push(Algorithm::EdDSA),
                    other => {
                        return Err(invalid(
                            &format!("{key}.algorithms"),
                            &format!("{other:?} is not allowed (asymmetric only: RS256, PS256, ES256, EdDSA; RFC 8725 §3.1)"),
                        ));
                    }
                }
            }
            if algorithms.is_empty() {
                return Err(invalid(&format!("{key}.algorithms"), "must not be empty"));
            }
            algorithms
        }
    };
    if let Some(uri) = &issuer.jwks_uri
        && crate::auth::jwks::require_secure(uri).is_err()
    {
        return Err(invalid(&format!("{key}.jwks_uri"), "must use https (http only on loopback)"));
    }
    Ok(IssuerSettings {
        issuer: issuer.issuer.clone(),
        audience: issuer.audience.clone().unwrap_or_else(|| resource.to_owned()),
        algorithms,
        jwks_uri: issuer.jwks_uri.clone(),
        require_typ: issuer.require_typ,
        max_token_lifetime: issuer.max_token_lifetime.unwrap_or(default_lifetime),
        jwks_refresh_interval: issuer.jwks_refresh_interval,
        jwks_min_refresh_interval: issuer.jwks_min_refresh_interval,
    })
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
    let oauth = match upstream.oauth {
        None => None,
        Some(_) if credential.is_some() => {
            return Err(invalid(&format!("{key}.oauth"), "set either credential or oauth, not both"));
        }
        Some(oauth) => {
            if crate::auth::jwks::require_secure(&oauth.token_url).is_err() {
                return Err(invalid(&format!("{key}.oauth.token_url"), "must use https (http only on loopback)"));
            }
            let Some(secret) = env.get(&oauth.client_secret_env).filter(|v| !v.is_empty()) else {
                return Err(invalid(
                    &format!("{key}.oauth.client_secret_env"),
                    &format!("environment variable {} is not set", oauth.client_secret_env),
                ));
            };
            Some(UpstreamOAuth {
                grant: oauth.grant,
                token_url: oauth.token_url,
                client_id: oauth.client_id,
                client_secret: SecretString::from(secret.clone()),
                scopes: oauth.scope.unwrap_or_default().split_ascii_whitespace().map(str::to_owned).collect(),
                resource: oauth.resource.unwrap_or_else(|| upstream.url.to_string()),
                audience: oauth.audience,
            })
        }
    };
    let identity_header = match upstream.identity_header.as_str() {
        "" => None,
        name => Some(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            invalid(&format!("{key}.identity_header"), "not a valid HTTP header name")
        })?),
    };
    if upstream.identity_ttl.is_zero() || upstream.identity_ttl > Duration::from_secs(300) {
        return Err(invalid(&format!("{key}.identity_ttl"), "must be between 1s and 5m"));
    }
    Ok(UpstreamSettings {
        identity_audience: upstream.identity_audience.unwrap_or_else(|| upstream.url.to_string()),
        name: upstream.name,
        url: upstream.url,
        tool_prefix,
        connect_timeout: upstream.connect_timeout,
        request_timeout: upstream.request_timeout,
        credential,
        oauth,
        identity_header,
        identity_ttl: upstream.identity_ttl,
        trusted_annotations: upstream.trusted_annotations,
        guard: upstream.guard,
    })
}

#[cfg(test)]
mod tests;
