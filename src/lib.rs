//! Portcullis: an OAuth-secured remote MCP gateway.
//!
//! To MCP clients, Portcullis is one remote MCP server at `<public_url>/mcp` (streamable
//! HTTP). To the upstream MCP servers a team allow-lists, it is one MCP client. Every request
//! is authenticated with a short-lived, audience-bound JWT; every tool, resource and prompt
//! is advertised and callable only where policy allows; the client's token never travels
//! upstream. See `docs/DESIGN.md` for the request flow.
//!
//! # Layout
//! - [`config`]: the TOML file, `PORTCULLIS_*` environment overrides, validated [`config::Settings`].
//! - [`transport`]: axum application; Host/Origin allow-lists, body cap, JSON checks, OAuth
//!   metadata endpoints, and the hand-off to rmcp's streamable-HTTP server.
//! - [`auth`]: the resource server (bearer JWT → [`auth::Principal`]); [`auth::issuer`] is the
//!   embedded authorization server (signing key, JWKS, token minting).
//! - [`session`]: binds each MCP session to the principal that created it.
//! - [`router`]: the per-session MCP server; dispatches lists to the catalog and calls to
//!   upstreams; keeps the catalog in sync.
//! - [`catalog`]: merged, prefixed catalog of upstream tools, prompts, resources, templates.
//! - [`limits`]: per-principal request rate limits (`[limits]`), answered 429 with `Retry-After`.
//! - [`policy`]: `[[policy]]` rules and deny-by-default decisions; [`policy::Grant`] proves a
//!   call was allowed.
//! - [`upstream`]: rmcp streamable-HTTP client connections to allow-listed upstreams and the
//!   relay of their notifications and requests back to the right client session.
//! - [`telemetry`]: logs, OpenTelemetry traces (OTLP/HTTP), Prometheus metrics, W3C trace
//!   context propagation, and the health registry behind `/healthz` and `/readyz`.
//! - [`guard`]: scans tool results, resources, prompts and definitions for prompt-injection
//!   markers (strip, annotate or block) and pins tool definitions against rug pulls.
//! - [`audit`]: the tamper-evident audit trail (hash-chained, append-only, group-committed
//!   to SQLite or PostgreSQL, signed checkpoints) and its `verify`/`export` commands.
//! - [`redact`]: the one scrubber for secrets and personal data (audit arguments, logs, errors).
//! - [`demo`]: the built-in demo upstream used by `portcullis demo`.
//! - [`cli`]: command-line parsing and the `serve`, `token`, `demo` and `policy explain` commands.

pub mod audit;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod demo;
pub mod guard;
pub mod limits;
pub mod policy;
pub mod redact;
pub mod router;
pub mod session;
pub mod telemetry;
pub mod transport;
pub mod upstream;

use std::{collections::HashMap, future::Future, sync::Arc};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{
        ResourceServer, TrustedIssuer,
        issuer::{EmbeddedIssuer, SigningKey},
        jwks::JwksCache,
    },
    catalog::CatalogStore,
    config::Settings,
    policy::Policy,
    audit::AuditLog,
    guard::PinStore,
    router::{CatalogSync, Gateway, Vetting},
    transport::AppState,
    upstream::Upstream,
};

/// Loads the gateway's signing key (data dir, file or environment, per `auth`) and builds
/// the embedded issuer around it.
///
/// # Errors
/// When the key cannot be read, parsed or created.
pub fn embedded_issuer(settings: &Settings) -> anyhow::Result<EmbeddedIssuer> {
    use secrecy::ExposeSecret;
    let key = match &settings.auth.signing_key {
        config::SigningKeySource::DataDir => SigningKey::load_or_generate(&settings.data_dir)
            .with_context(|| format!("loading the signing key from data dir {}", settings.data_dir.display()))?,
        config::SigningKeySource::File(path) => {
            let pem = std::fs::read_to_string(path).with_context(|| format!("reading auth.signing_key_file {}", path.display()))?;
            SigningKey::from_pem(&pem, path)?
        }
        config::SigningKeySource::Pem(pem) => {
            SigningKey::from_pem(pem.expose_secret(), std::path::Path::new("$auth.signing_key_env"))?
        }
    };
    Ok(EmbeddedIssuer::new(key, settings.auth.issuer.clone(), settings.resource.clone(), settings.auth.max_token_ttl)
        .with_scopes_supported(settings.auth.scopes_supported.clone()))
}

/// Builds the trusted issuers: the embedded one (unless disabled) and each external one,
/// whose keys are fetched now (a failure is logged and retried on demand: its tokens are
/// refused meanwhile) and refreshed in the background until `stop`.
async fn trusted_issuers(
    settings: &Settings,
    embedded: &Arc<EmbeddedIssuer>,
    http: &reqwest::Client,
    stop: &CancellationToken,
    health: &telemetry::Health,
) -> Vec<TrustedIssuer> {
    let mut issuers = Vec::new();
    if settings.auth.embedded_issuer {
        issuers.push(TrustedIssuer::embedded(embedded.clone(), &settings.resource, settings.auth.max_token_ttl));
    }
    for issuer in &settings.auth.issuers {
        let cache = Arc::new(JwksCache::new(issuer.issuer.clone(), issuer.jwks_uri.clone(), http.clone(), issuer.jwks_min_refresh_interval));
        match cache.refresh().await {
            Ok(keys) => tracing::info!(issuer = %issuer.issuer, keys, "external issuer keys loaded"),
            Err(error) => tracing::error!(issuer = %issuer.issuer, %error, "external issuer keys unavailable; its tokens are refused until they load"),
        }
        // The refresher is a supervised background task: restarted with backoff if it ever
        // stops, reported under `jwks/<issuer>` in /readyz meanwhile.
        let (refresher, interval) = (cache.clone(), issuer.jwks_refresh_interval);
        telemetry::supervise(
            health.register_member("jwks", &issuer.issuer),
            telemetry::Backoff::default(),
            stop.child_token(),
            move |component, stop| {
                let refresher = refresher.clone();
                async move {
                    refresher.run(interval, stop, component).await;
                    Ok::<(), std::convert::Infallible>(())
                }
            },
        );
        issuers.push(TrustedIssuer::external(cache, &issuer.audience, &issuer.algorithms, issuer.require_typ, issuer.max_token_lifetime));
    }
    issuers
}

/// The observability handles shared by the binary and the gateway: the health registry
/// (which the trace exporter may already report into) and the metrics registry.
#[derive(Clone, Default)]
pub struct Observability {
    /// Component health behind `/healthz` and `/readyz`.
    pub health: telemetry::Health,
    /// Prometheus metrics behind `/metrics`.
    pub metrics: telemetry::Metrics,
}

/// Runs the gateway on an already-bound `listener` until `shutdown` completes, with fresh
/// health and metrics registries. See [`run_with`].
///
/// # Errors
/// As [`run_with`].
pub async fn run(settings: Settings, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    run_with(settings, listener, shutdown, Observability::default()).await
}

/// Runs the gateway on an already-bound `listener` until `shutdown` completes.
///
/// Start-up logs one line per component (issuer keys, audit store, each upstream's tool
/// count). An unreachable upstream is logged and retried in the background; a fatal
/// misconfiguration (issuer key, unreachable audit store, two upstreams whose names collide
/// after prefixing) stops the start with a message saying what to fix.
///
/// # Errors
/// A fatal misconfiguration or a server I/O failure.
pub async fn run_with(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    observability: Observability,
) -> anyhow::Result<()> {
    let Observability { health, metrics } = observability;
    let settings = Arc::new(settings);
    let issuer = Arc::new(embedded_issuer(&settings)?);
    tracing::info!(issuer = issuer.issuer(), kid = issuer.key().kid(), "embedded authorization server key loaded");
    // Redirects are not followed: an allow-listed URL must not bounce elsewhere.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build()
        .context("building the HTTP client")?;
    let cancel = CancellationToken::new();
    let resource_server = Arc::new(ResourceServer::new(trusted_issuers(&settings, &issuer, &http, &cancel, &health).await, settings.auth.leeway));

    let audit = if settings.audit_enabled {
        let audit = Arc::new(
            AuditLog::open(&settings.audit, issuer.clone())
                .await
                .with_context(|| format!("opening the audit store at {} (check [audit] url and that the database is up)", settings.audit.display_url()))?,
        );
        tracing::info!(store = %settings.audit.display_url(), "audit store reachable");
        audit.attach_metrics(metrics.clone());
        tokio::spawn(watch_audit(audit.clone(), health.register("audit"), metrics.clone(), cancel.child_token()));
        Some(audit)
    } else {
        tracing::error!("audit trail DISABLED ([audit] url = \"none\"): requests are not recorded");
        None
    };

    let upstreams: Vec<Arc<Upstream>> =
        settings.upstreams.iter().map(|u| Arc::new(Upstream::new(u.clone(), http.clone(), issuer.clone()))).collect();
    let catalog = Arc::new(CatalogStore::new(upstreams.iter().map(|u| u.name().clone()).collect()));
    let (list_changed, _) = tokio::sync::broadcast::channel(64);
    let pins = settings.upstreams.iter().any(|u| settings.guard.policy(&u.name).pin_definitions()).then(|| PinStore::new(&settings.data_dir));
    let vetting = Vetting { guard: settings.guard.clone(), pins };
    let upstream_health = upstreams
        .iter()
        .map(|u| (u.name().clone(), health.register_member("upstreams", u.name())))
        .collect::<HashMap<_, _>>();
    let mut sync = CatalogSync::new(upstreams.clone(), catalog.clone(), list_changed.clone(), vetting)
        .with_health(upstream_health, metrics.clone());
    for status in sync.initial().await.context("refusing to start")? {
        match status.result {
            Ok(tools) => tracing::info!(upstream = %status.upstream, tools, "upstream ready"),
            Err(error) => tracing::warn!(upstream = %status.upstream, %error, "upstream unavailable at start; retrying in the background"),
        }
    }
    if upstreams.is_empty() {
        tracing::warn!("no upstreams configured: the catalog is empty (add [[upstream]] or --upstream NAME=URL)");
    }

    let gateway = Arc::new(Gateway {
        settings: settings.clone(),
        policy: Policy::from_rules(settings.policy.clone()),
        catalog,
        upstreams: upstreams.iter().map(|u| (u.name().clone(), u.clone())).collect::<HashMap<_, _>>(),
        list_changed,
        catalog_events: sync.events(),
        metrics: metrics.clone(),
        audit: audit.clone(),
        guard: settings.guard.clone(),
        client_peers: Default::default(),
    });
    let sync_task = tokio::spawn(sync.run(cancel.child_token()));
    let state = AppState::new(gateway, resource_server, issuer, cancel.child_token());
    let observability = telemetry::metrics_router(metrics).merge(telemetry::health_router(health));
    let app = match settings.telemetry.metrics_listen {
        None => transport::app(state).merge(observability),
        Some(address) => {
            let metrics_listener = TcpListener::bind(address).await.with_context(|| format!("cannot listen on telemetry.metrics_listen {address}"))?;
            tracing::info!(%address, "metrics and health listening");
            let stop = cancel.child_token();
            let timeouts = transport::Timeouts { idle: settings.connection_idle_timeout, body: settings.request_body_timeout };
            tokio::spawn(async move {
                let served = transport::serve(metrics_listener, observability, timeouts, stop.cancelled_owned()).await;
                if let Err(error) = served {
                    tracing::error!(%error, "metrics listener failed");
                }
            });
            transport::app(state)
        }
    };

    let address = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%address, endpoint = %settings.resource, "listening");
    let stop = cancel.clone();
    // TCP_NODELAY on every client connection (issue 7: echo p50 44 ms through the gateway
    // without it, 0.1 ms direct) and the idle-connection timeout: transport::serve.
    let timeouts = transport::Timeouts { idle: settings.connection_idle_timeout, body: settings.request_body_timeout };
    let served = transport::serve(listener, app, timeouts, async move {
        shutdown.await;
        stop.cancel();
    })
    .await;
    cancel.cancel();
    let _ = sync_task.await;
    // Outcome rows still queued are written before the process ends.
    if let Some(audit) = &audit {
        audit.flush().await;
    }
    served.context("HTTP server failed")
}

/// Mirrors the audit log's state into the `audit` health component (calls are refused by the
/// audit log itself while it cannot write) and its queue depth into metrics, and restarts a
/// stopped writer with capped exponential backoff.
async fn watch_audit(audit: Arc<AuditLog>, component: telemetry::ComponentHandle, metrics: telemetry::Metrics, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let backoff = telemetry::Backoff::default();
    let (mut delay, mut next_revive) = (backoff.initial, tokio::time::Instant::now());
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let health = audit.health();
        match &health {
            audit::Health::Ready => {
                component.up();
                delay = backoff.initial;
            }
            audit::Health::Degraded { reason } => component.degraded(reason),
            audit::Health::Unready { reason } => component.down(reason),
        }
        if matches!(&health, audit::Health::Unready { reason } if reason == audit::WRITER_STOPPED)
            && tokio::time::Instant::now() >= next_revive
        {
            match audit.revive().await {
                Ok(_) => tracing::warn!("audit writer was down; restarted"),
                Err(error) => tracing::error!(%error, retry_in_ms = delay.as_millis() as u64, "audit writer restart failed"),
            }
            next_revive = tokio::time::Instant::now() + delay;
            delay = (delay * 2).min(backoff.max);
        }
        metrics.set_audit_queue_depth(i64::try_from(audit.pending()).unwrap_or(i64::MAX));
    }
}

/// The process environment as a map, for [`config::Config::load`].
pub fn process_env() -> HashMap<String, String> {
    std::env::vars().collect()
}
