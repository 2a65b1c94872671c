//! Scale points (issue 7, item 3), each on a fresh secured gateway (set-up (b)'s config):
//! - start → ready: spawn to the first `200` on [`procs::READY_PATH`], several starts;
//! - idle sessions: resident memory before and after opening N sessions over a few
//!   connections (and after one call on each, which opens each session's upstream session),
//!   the p50 of a fresh session while they stay open, then the memory with each session's
//!   client holding a keep-alive connection of its own;
//! - a large catalog: `tools/list` latency through a gateway in front of U upstreams of T
//!   tools each (fixtures started with `--extra-tools`).

use std::{path::Path, time::Duration};

use anyhow::{Context as _, ensure};
use tokio::task::JoinSet;

use crate::{
    Args,
    load::{self, Stats, Work},
    mcp::{Conn, Endpoint, Session},
    procs::{self, Fixture, GatewaySpec},
};

/// Connections used to open (and call on) the idle sessions in the sessions-only phase.
pub(crate) const IDLE_CONNECTIONS: usize = 8;
/// Connections opened at a time in the connected phase: bounded, so that connecting never
/// overflows the gateway's accept backlog.
const IDLE_BATCH: usize = 50;

/// Everything the scale points measured.
pub(crate) struct ScaleResults {
    pub(crate) ready: Vec<Duration>,
    pub(crate) idle: IdleResult,
    pub(crate) catalog: CatalogResult,
}

/// The idle-sessions point.
pub(crate) struct IdleResult {
    pub(crate) sessions: usize,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_initialized_kib: u64,
    pub(crate) rss_called_kib: u64,
    /// After the p50 load, with the sessions' connections closed: the connected phase's base.
    pub(crate) rss_unconnected_kib: u64,
    /// With each session's client holding a connection of its own, too.
    pub(crate) rss_connected_kib: u64,
    pub(crate) peak_kib: u64,
    pub(crate) upstream_rss_kib: u64,
    pub(crate) p50_before_ms: f64,
    pub(crate) p50_with_idle_ms: f64,
}

/// The large-catalog point.
pub(crate) struct CatalogResult {
    pub(crate) upstreams: usize,
    pub(crate) tools_per_upstream: usize,
    pub(crate) gateway: Stats,
    pub(crate) gateway_window: Duration,
    pub(crate) direct_one: Stats,
    pub(crate) direct_window: Duration,
    pub(crate) gateway_ready_after: Duration,
}

/// Runs the three scale points.
pub(crate) async fn run(args: &Args, workdir: &Path, fixture: &Fixture, spec: &dyn Fn(&'static str) -> GatewaySpec<'static>) -> anyhow::Result<ScaleResults> {
    let ready = ready_times(args, workdir, spec).await?;
    let idle = idle_sessions(args, workdir, fixture, spec).await?;
    let catalog = catalog(args, workdir, fixture, spec).await?;
    Ok(ScaleResults { ready, idle, catalog })
}

async fn ready_times(args: &Args, workdir: &Path, spec: &dyn Fn(&'static str) -> GatewaySpec<'static>) -> anyhow::Result<Vec<Duration>> {
    const NAMES: [&str; 10] = ["ready-0", "ready-1", "ready-2", "ready-3", "ready-4", "ready-5", "ready-6", "ready-7", "ready-8", "ready-9"];
    let mut times = Vec::new();
    for name in NAMES.iter().take(args.ready_runs.clamp(1, NAMES.len())) {
        let gateway = procs::start_gateway(&args.portcullis, workdir, &spec(name)).await?;
        times.push(gateway.ready_after);
        gateway.proc.stop(Duration::from_secs(3)).await;
    }
    eprintln!("start → ready: {:?}", times);
    Ok(times)
}

async fn idle_sessions(args: &Args, workdir: &Path, fixture: &Fixture, spec: &dyn Fn(&'static str) -> GatewaySpec<'static>) -> anyhow::Result<IdleResult> {
    let gateway = procs::start_gateway(&args.portcullis, workdir, &spec("idle")).await?;
    let pid = gateway.proc.pid();
    let endpoint = Endpoint { addr: gateway.addr, authorization: Some(gateway.authorization.clone()) };
    let work = Work::echo("fx__");
    let no_probe = || ();
    let window = args.duration.min(Duration::from_secs(5));
    let before = load::run(&endpoint, &work, 1, args.warmup, window, no_probe).await.context("p50 before the idle sessions")?;
    clean(&before.stats, "echo before the idle sessions")?;
    let rss_before_kib = procs::status_kib(pid, "VmRSS").unwrap_or(0);

    // The sessions alone: opened over a few connections (sessions are not tied to
    // connections), as idle clients leave them: their HTTP clients close idle keep-alive
    // connections after a few seconds (Node's undici after 4 s, Python's httpx after 5 s).
    let per_connection = args.idle_sessions.div_ceil(IDLE_CONNECTIONS);
    let mut opening = JoinSet::new();
    for index in 0..IDLE_CONNECTIONS {
        let count = per_connection.min(args.idle_sessions.saturating_sub(index * per_connection));
        let endpoint = endpoint.clone();
        opening.spawn(async move {
            let mut conn = Conn::open(&endpoint).await?;
            let mut sessions = Vec::with_capacity(count);
            for _ in 0..count {
                sessions.push(conn.initialize().await?);
            }
            anyhow::Ok((conn, sessions))
        });
    }
    let mut held: Vec<(Conn, Vec<Session>)> = Vec::new();
    while let Some(opened) = opening.join_next().await {
        held.push(opened.context("opening task")?.context("opening the idle sessions")?);
    }
    let sessions: usize = held.iter().map(|(_, s)| s.len()).sum();
    ensure!(sessions == args.idle_sessions, "opened {sessions} of {} sessions", args.idle_sessions);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_initialized_kib = procs::status_kib(pid, "VmRSS").unwrap_or(0);

    // One call on each: the gateway opens that session's upstream session.
    let mut calling = JoinSet::new();
    for (mut conn, mut sessions) in held {
        let work = work.clone();
        calling.spawn(async move {
            for session in &mut sessions {
                conn.request(session, work.method, &work.params, &work.expect, true).await?;
            }
            anyhow::Ok((conn, sessions))
        });
    }
    let mut held = Vec::new();
    while let Some(called) = calling.join_next().await {
        held.push(called.context("calling task")?.context("one call on an idle session")?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_called_kib = procs::status_kib(pid, "VmRSS").unwrap_or(0);
    let with_idle = load::run(&endpoint, &work, 1, args.warmup, window, no_probe).await.context("p50 with the idle sessions open")?;
    clean(&with_idle.stats, "echo with the idle sessions open")?;

    // Then each session's client holding a connection of its own (a second call on each,
    // on a new connection kept open): what connected clients cost on top, measured from the
    // memory after the p50 load and with the first phase's connections closed.
    let mut sessions_left: Vec<Session> = Vec::with_capacity(sessions);
    for (conn, list) in held {
        sessions_left.extend(list);
        // The connection goes; its sessions live on at the gateway.
        drop(conn);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_unconnected_kib = procs::status_kib(pid, "VmRSS").unwrap_or(0);
    let mut connected: Vec<(Conn, Session)> = Vec::with_capacity(sessions);
    while !sessions_left.is_empty() {
        let mut calling = JoinSet::new();
        for mut session in sessions_left.drain(..IDLE_BATCH.min(sessions_left.len())) {
            let (endpoint, work) = (endpoint.clone(), work.clone());
            calling.spawn(async move {
                let mut conn = Conn::open(&endpoint).await?;
                conn.request(&mut session, work.method, &work.params, &work.expect, true).await?;
                anyhow::Ok((conn, session))
            });
        }
        while let Some(done) = calling.join_next().await {
            connected.push(done.context("calling task")?.context("a call on an idle session's own connection")?);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected_kib = procs::status_kib(pid, "VmRSS").unwrap_or(0);
    let peak_kib = procs::status_kib(pid, "VmHWM").unwrap_or(0);
    let result = IdleResult {
        sessions,
        rss_before_kib,
        rss_initialized_kib,
        rss_called_kib,
        rss_unconnected_kib,
        rss_connected_kib,
        peak_kib,
        upstream_rss_kib: procs::status_kib(fixture.proc.pid(), "VmRSS").unwrap_or(0),
        p50_before_ms: before.stats.quantile_ms(0.5),
        p50_with_idle_ms: with_idle.stats.quantile_ms(0.5),
    };
    eprintln!(
        "idle sessions: {sessions}: RSS {} → {} → {} KiB, {} KiB with a connection each (peak {}), p50 {:.3} → {:.3} ms",
        result.rss_before_kib,
        result.rss_initialized_kib,
        result.rss_called_kib,
        result.rss_connected_kib,
        result.peak_kib,
        result.p50_before_ms,
        result.p50_with_idle_ms
    );
    for (mut conn, session) in connected {
        conn.close(session).await;
    }
    gateway.proc.stop(Duration::from_secs(3)).await;
    Ok(result)
}

async fn catalog(args: &Args, workdir: &Path, fixture: &Fixture, spec: &dyn Fn(&'static str) -> GatewaySpec<'static>) -> anyhow::Result<CatalogResult> {
    // How many tools the fixture has of its own, so that each upstream has exactly T.
    let direct = Endpoint { addr: fixture.addr, authorization: None };
    let base = tool_count(&direct).await?;
    let extra = args.catalog_tools.saturating_sub(base);
    let tools_per_upstream = base + extra;
    let mut fixtures = Vec::new();
    for index in 0..args.catalog_upstreams {
        fixtures.push(procs::start_fixture(&args.fixture, extra, &workdir.join(format!("catalog-fixture-{index}.log"))).await?);
    }
    let mut gateway_spec = spec("catalog");
    gateway_spec.upstreams = fixtures.iter().enumerate().map(|(index, f)| (format!("u{index}"), f.addr)).collect();
    let gateway = procs::start_gateway(&args.portcullis, workdir, &gateway_spec).await?;
    let endpoint = Endpoint { addr: gateway.addr, authorization: Some(gateway.authorization.clone()) };
    let window = args.duration.min(Duration::from_secs(5));
    let expected = args.catalog_upstreams * tools_per_upstream;
    let through = load::run(&endpoint, &Work::tools_list(Some(expected)), 1, args.warmup, window, || ())
        .await
        .context("tools/list through the gateway")?;
    clean(&through.stats, "tools/list through the gateway")?;
    let one = Endpoint { addr: fixtures.first().map_or(fixture.addr, |f| f.addr), authorization: None };
    let direct_one = load::run(&one, &Work::tools_list(Some(tools_per_upstream)), 1, args.warmup, window, || ())
        .await
        .context("tools/list direct to one upstream")?;
    clean(&direct_one.stats, "tools/list direct to one upstream")?;
    eprintln!(
        "catalog {}×{}: tools/list p50 {:.3} ms through the gateway, {:.3} ms direct to one upstream",
        args.catalog_upstreams,
        tools_per_upstream,
        through.stats.quantile_ms(0.5),
        direct_one.stats.quantile_ms(0.5)
    );
    let ready_after = gateway.ready_after;
    gateway.proc.stop(Duration::from_secs(3)).await;
    for fixture in fixtures {
        fixture.proc.stop(Duration::from_secs(3)).await;
    }
    Ok(CatalogResult {
        upstreams: args.catalog_upstreams,
        tools_per_upstream,
        gateway: through.stats,
        gateway_window: through.window,
        direct_one: direct_one.stats,
        direct_window: direct_one.window,
        gateway_ready_after: ready_after,
    })
}

/// A scale point's load must have completed requests and no errors: its p50 is reported bare.
fn clean(stats: &Stats, what: &str) -> anyhow::Result<()> {
    ensure!(
        stats.requests > 0 && stats.errors == 0,
        "{what}: {} requests completed, {} failed{}",
        stats.requests,
        stats.errors,
        stats.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
    Ok(())
}

/// The number of tools `endpoint` lists (one session, one request).
async fn tool_count(endpoint: &Endpoint) -> anyhow::Result<usize> {
    let mut conn = Conn::open(endpoint).await?;
    let mut session = conn.initialize().await?;
    let count = conn.count_tools(&mut session).await?;
    conn.close(session).await;
    Ok(count)
}
