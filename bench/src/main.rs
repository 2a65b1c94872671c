//! Portcullis load harness: the cost of the fully secured path, side by side with a direct
//! connection and a plain reverse-proxy hop (issue 7). `bench/run.sh` builds everything in
//! release mode and runs this binary; README "Benchmarks" documents it.
//!
//! Set-ups, measured in the same run and interleaved per (payload, concurrency) cell:
//! - (a) direct to the upstream (the conformance fixture);
//! - (b) through the gateway with security on (`--gateway-config`);
//! - (c) through the gateway with guard and audit off (`--open-config`);
//! - (d) through nginx, one worker, upstream keep-alive;
//! - (e) as (b), plus tracing exported to a local OTLP sink (`--tracing-config`, `OTEL_*`).
//!
//! (b), (c) and (e) differ by configuration only: each is `portcullis serve` with its own TOML,
//! so guard, audit and telemetry are switched by editing `bench/config/*.toml`.
//!
//! # Layout
//! - [`mcp`]: a minimal streamable-HTTP MCP client (hyper, keep-alive, JSON or SSE answers).
//! - [`load`]: closed-loop load phases and HDR histograms.
//! - [`procs`]: the processes under test and `/proc` accounting.
//! - [`scale`]: scale points (start → ready, idle sessions, a large catalog).
//! - [`report`]: the tables, ratios against the targets, `bench/RESULTS.md`.
//! - [`sink`]: the local OTLP/HTTP sink of set-up (e).

mod load;
mod mcp;
mod procs;
mod report;
mod scale;
mod sink;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};

use crate::{
    load::Work,
    mcp::Endpoint,
    procs::{Fixture, Gateway, GatewaySpec, MachineCpu, Nginx},
};

/// Load harness for Portcullis (issue 7). Usually run through `bench/run.sh`.
#[derive(Debug, Parser)]
#[command(name = "portcullis-bench")]
struct Args {
    /// Measured time per cell (set-up × payload × concurrency), per round.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up before each measured window (sessions open, caches and pools fill).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Repeat the whole interleaved matrix this many times (results are merged).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Concurrency levels (sessions, each on its own connection).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Set-ups to run: a direct, b secured, c guard+audit off, d nginx, e secured+tracing.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e")]
    setups: Vec<SetupKey>,
    /// Payloads: `echo` (small tools/call) and `64k` (a 64 KiB tools/call result).
    #[arg(long, value_delimiter = ',', default_value = "echo,64k")]
    payloads: Vec<Payload>,
    /// TOML for set-ups (b) and (e): the secured gateway. `[[upstream]]` tables are appended.
    #[arg(long, value_name = "FILE", default_value = "bench/config/secured.toml")]
    gateway_config: PathBuf,
    /// TOML for set-up (c): the same gateway with guard and audit off.
    #[arg(long, value_name = "FILE", default_value = "bench/config/open.toml")]
    open_config: PathBuf,
    /// TOML appended to `--gateway-config` for set-up (e).
    #[arg(long, value_name = "FILE", default_value = "bench/config/tracing.toml")]
    tracing_config: PathBuf,
    /// Extra environment for every gateway, e.g. `PORTCULLIS_LOG=warn` (repeatable).
    #[arg(long = "gateway-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    gateway_env: Vec<(String, String)>,
    /// Extra environment for set-up (e) only (repeatable).
    #[arg(long = "tracing-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    tracing_env: Vec<(String, String)>,
    /// The gateway binary (release build).
    #[arg(long, value_name = "PATH", default_value = "target/release/portcullis")]
    portcullis: PathBuf,
    /// The conformance fixture binary (release build of the example).
    #[arg(long, value_name = "PATH", default_value = "target/release/examples/conformance_fixture")]
    fixture: PathBuf,
    /// nginx binary for set-up (d); without it, (d) is skipped with a warning.
    #[arg(long, value_name = "PATH", default_value = "nginx")]
    nginx: PathBuf,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    loadgen_threads: usize,
    /// Skip the scale points.
    #[arg(long, conflicts_with = "scale_only")]
    no_scale: bool,
    /// Only the scale points.
    #[arg(long)]
    scale_only: bool,
    /// Idle sessions held open for the memory scale point.
    #[arg(long, default_value_t = 1000)]
    idle_sessions: usize,
    /// Upstreams of the large-catalog scale point.
    #[arg(long, default_value_t = 10)]
    catalog_upstreams: usize,
    /// Tools per upstream of the large-catalog scale point.
    #[arg(long, default_value_t = 100)]
    catalog_tools: usize,
    /// Gateway starts measured for start → ready.
    #[arg(long, default_value_t = 5)]
    ready_runs: usize,
    /// Write the report into this Markdown file (between its `bench:begin`/`bench:end` markers).
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
    /// A note printed at the top of the report (e.g. "provisional: …").
    #[arg(long)]
    note: Option<String>,
    /// Keep the work directory (configs, logs) instead of deleting it.
    #[arg(long)]
    keep_workdir: bool,
    /// The command line to print in the report (bench/run.sh passes its own); default: this
    /// process's arguments.
    #[arg(long, hide = true)]
    recorded_command: Option<String>,
}

/// One set-up of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub(crate) enum SetupKey {
    /// Direct to the upstream.
    A,
    /// Through the gateway, security on.
    B,
    /// Through the gateway, guard and audit off.
    C,
    /// Through nginx.
    D,
    /// As (b), plus tracing to a local sink.
    E,
}

/// What each `tools/call` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub(crate) enum Payload {
    /// `echo` with a short text.
    Echo,
    /// `large_result` of 64 KiB.
    #[value(name = "64k")]
    Large,
}

/// CPU counters read at the edges of a measured window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Probe {
    pub(crate) hop: u64,
    /// Context switches of the hop's threads, by thread ([`procs::context_switches`]).
    pub(crate) hop_switches: BTreeMap<u32, u64>,
    pub(crate) upstream: u64,
    /// This process, without the OTLP sink's thread.
    pub(crate) loadgen: u64,
    /// The OTLP sink's thread (set-up (e)'s exports).
    pub(crate) sink: u64,
    pub(crate) machine: MachineCpu,
}

/// The merged result of one cell over all rounds.
pub(crate) struct Row {
    pub(crate) stats: load::Stats,
    pub(crate) window: Duration,
    pub(crate) hop_ticks: u64,
    pub(crate) hop_switches: u64,
    /// A hop thread died during a window: `hop_switches` is a lower bound.
    pub(crate) hop_thread_died: bool,
    pub(crate) upstream_ticks: u64,
    pub(crate) loadgen_ticks: u64,
    pub(crate) sink_ticks: u64,
    pub(crate) machine_busy: u64,
    pub(crate) machine_total: u64,
}

/// A set-up ready to be driven.
struct Target {
    endpoint: Endpoint,
    prefix: &'static str,
    hop: Hop,
}

/// The processes a set-up's hop runs in.
enum Hop {
    /// None (direct to the upstream).
    None,
    /// One process (a gateway).
    Process(u32),
    /// A master and its children, listed afresh at each reading (nginx respawns a worker
    /// that dies).
    Master(u32),
}

// === impl Hop ===

impl Hop {
    fn pids(&self) -> Vec<u32> {
        match *self {
            Self::None => Vec::new(),
            Self::Process(pid) => vec![pid],
            Self::Master(pid) => std::iter::once(pid).chain(procs::children_of(pid)).collect(),
        }
    }
}

/// Everything the report needs.
pub(crate) struct Results {
    pub(crate) rows: BTreeMap<(Payload, usize, SetupKey), Row>,
    pub(crate) peak_rss_kib: BTreeMap<SetupKey, u64>,
    pub(crate) ready_after: BTreeMap<SetupKey, Duration>,
    pub(crate) sink_requests: Option<(u64, u64)>,
    pub(crate) scale: Option<scale::ScaleResults>,
    pub(crate) skipped: Vec<String>,
}

// === impl SetupKey ===

impl SetupKey {
    pub(crate) fn letter(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
            Self::C => "c",
            Self::D => "d",
            Self::E => "e",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::A => "(a) direct",
            Self::B => "(b) gateway, secured",
            Self::C => "(c) gateway, guard+audit off",
            Self::D => "(d) nginx hop",
            Self::E => "(e) gateway, secured + tracing",
        }
    }
}

// === impl Payload ===

impl Payload {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Large => "64 KiB",
        }
    }

    fn work(self, prefix: &str) -> Work {
        match self {
            Self::Echo => Work::echo(prefix),
            Self::Large => Work::large(prefix, 64 * 1024),
        }
    }
}

// === impl Row ===

impl Row {
    fn new() -> Self {
        Self { stats: load::Stats::new(), window: Duration::ZERO, hop_ticks: 0, hop_switches: 0, hop_thread_died: false, upstream_ticks: 0, loadgen_ticks: 0, sink_ticks: 0, machine_busy: 0, machine_total: 0 }
    }

    fn add(&mut self, cell: load::Cell<Probe>) {
        self.window += cell.window;
        self.hop_ticks += cell.after.hop.saturating_sub(cell.before.hop);
        let (switches, died) = procs::switches_between(&cell.before.hop_switches, &cell.after.hop_switches);
        self.hop_switches += switches;
        self.hop_thread_died |= died;
        self.upstream_ticks += cell.after.upstream.saturating_sub(cell.before.upstream);
        self.loadgen_ticks += cell.after.loadgen.saturating_sub(cell.before.loadgen);
        self.sink_ticks += cell.after.sink.saturating_sub(cell.before.sink);
        self.machine_busy += cell.after.machine.busy.saturating_sub(cell.before.machine.busy);
        self.machine_total += cell.after.machine.total.saturating_sub(cell.before.machine.total);
        self.stats.merge(cell.stats);
    }

    pub(crate) fn throughput(&self) -> f64 {
        self.stats.requests as f64 / self.window.as_secs_f64().max(f64::EPSILON)
    }
}

fn parse_env(value: &str) -> Result<(String, String), String> {
    let (key, value) = value.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok((key.to_owned(), value.to_owned()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(args.loadgen_threads.max(1)).enable_all().build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(&args) => outcome,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    for (path, what) in [(&args.portcullis, "gateway"), (&args.fixture, "fixture")] {
        if !path.is_file() {
            bail!("{what} binary {} not found\nhint: run bench/run.sh, which builds it in release mode", path.display());
        }
    }
    let workdir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let machine = report::Machine::collect(&args.portcullis, procs::which(&args.nginx).as_deref(), args.recorded_command.clone());
    let result = measure(args, &workdir).await;
    if args.keep_workdir {
        eprintln!("work directory kept: {}", workdir.display());
    } else {
        let _ = std::fs::remove_dir_all(&workdir);
    }
    let results = result?;
    let machine = machine.finish();
    let markdown = report::render(args, &machine, &results);
    println!("{markdown}");
    if let Some(path) = &args.write {
        report::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

async fn measure(args: &Args, workdir: &Path) -> anyhow::Result<Results> {
    let read = |path: &Path| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
    let secured = read(&args.gateway_config)?;
    let open = read(&args.open_config)?;
    let tracing = read(&args.tracing_config)?;
    let fixture = procs::start_fixture(&args.fixture, 0, &workdir.join("fixture.log")).await?;
    let mut results = Results {
        rows: BTreeMap::new(),
        peak_rss_kib: BTreeMap::new(),
        ready_after: BTreeMap::new(),
        sink_requests: None,
        scale: None,
        skipped: Vec::new(),
    };
    if !args.scale_only {
        matrix(args, workdir, &fixture, [&secured, &open, &tracing], &mut results).await?;
    }
    if !args.no_scale {
        eprintln!("== scale points");
        let spec = |name: &'static str| GatewaySpec { name, config: secured.clone(), upstreams: vec![("fx".into(), fixture.addr)], env: args.gateway_env.clone() };
        results.scale = Some(scale::run(args, workdir, &fixture, &spec).await?);
    }
    fixture.proc.stop(Duration::from_secs(3)).await;
    Ok(results)
}

/// Starts every selected set-up, then runs the interleaved matrix.
async fn matrix(args: &Args, workdir: &Path, fixture: &Fixture, [secured, open, tracing]: [&String; 3], results: &mut Results) -> anyhow::Result<()> {
    let upstreams = vec![("fx".to_owned(), fixture.addr)];
    let wants = |key| args.setups.contains(&key);
    let gateway = |name: &'static str, config: String, extra_env: &[(String, String)]| {
        let mut env = args.gateway_env.clone();
        env.extend(extra_env.iter().cloned());
        let spec = GatewaySpec { name, config, upstreams: upstreams.clone(), env };
        async move { procs::start_gateway(&args.portcullis, workdir, &spec).await }
    };
    let mut gateways: BTreeMap<SetupKey, Gateway> = BTreeMap::new();
    if wants(SetupKey::B) {
        gateways.insert(SetupKey::B, gateway("b-secured", secured.clone(), &[]).await?);
    }
    if wants(SetupKey::C) {
        gateways.insert(SetupKey::C, gateway("c-open", open.clone(), &[]).await?);
    }
    let sink = if wants(SetupKey::E) { Some(sink::start()?) } else { None };
    if let Some(sink) = &sink {
        let mut env = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), format!("http://{}", sink.addr)),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(), "http/protobuf".to_owned()),
        ];
        env.extend(args.tracing_env.iter().cloned());
        gateways.insert(SetupKey::E, gateway("e-tracing", format!("{secured}\n{tracing}"), &env).await?);
    }
    let nginx: Option<Nginx> = match (wants(SetupKey::D), procs::which(&args.nginx)) {
        (true, Some(binary)) => Some(procs::start_nginx(&binary, workdir, fixture.addr).await?),
        (true, None) => {
            let message = format!("set-up (d) skipped: {} not found (apt-get install -y nginx)", args.nginx.display());
            eprintln!("warning: {message}");
            results.skipped.push(message);
            None
        }
        (false, _) => None,
    };
    for (key, gateway) in &gateways {
        results.ready_after.insert(*key, gateway.ready_after);
    }

    // Every set-up sends the same bearer token so request sizes match; only gateways check it.
    let authorization = gateways.values().next().map(|g| g.authorization.clone());
    let mut targets: BTreeMap<SetupKey, Target> = BTreeMap::new();
    if wants(SetupKey::A) {
        targets.insert(SetupKey::A, Target { endpoint: Endpoint { addr: fixture.addr, authorization: authorization.clone() }, prefix: "", hop: Hop::None });
    }
    for (key, gateway) in &gateways {
        let endpoint = Endpoint { addr: gateway.addr, authorization: Some(gateway.authorization.clone()) };
        targets.insert(*key, Target { endpoint, prefix: "fx__", hop: Hop::Process(gateway.proc.pid()) });
    }
    if let Some(nginx) = &nginx {
        targets.insert(SetupKey::D, Target { endpoint: Endpoint { addr: nginx.addr, authorization }, prefix: "", hop: Hop::Master(nginx.master_pid()) });
    }

    let upstream_pid = fixture.proc.pid();
    let own_pid = std::process::id();
    let sink_ticks = || sink.as_ref().map_or(0, |sink| procs::thread_cpu_ticks(own_pid, sink.tid));
    let order: Vec<SetupKey> = targets.keys().copied().collect();
    for round in 0..args.rounds {
        for payload in &args.payloads {
            for &concurrency in &args.concurrency {
                // Rotate the order each round so no set-up always runs first.
                for index in 0..order.len() {
                    let key = order[(index + round as usize) % order.len()];
                    let target = &targets[&key];
                    let probe = || {
                        let hop = target.hop.pids();
                        let sink = sink_ticks();
                        Probe {
                            hop: hop.iter().map(|pid| procs::cpu_ticks(*pid)).sum(),
                            hop_switches: procs::context_switches(&hop),
                            upstream: procs::cpu_ticks(upstream_pid),
                            loadgen: procs::cpu_ticks(own_pid).saturating_sub(sink),
                            sink,
                            machine: procs::machine_cpu(),
                        }
                    };
                    let work = payload.work(target.prefix);
                    let cell = load::run(&target.endpoint, &work, concurrency, args.warmup, args.duration, probe)
                        .await
                        .with_context(|| format!("{} {} c={concurrency}", key.label(), payload.label()))?;
                    eprintln!(
                        "round {} {:<6} c={:<3} {:<32} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  errors {}{}",
                        round + 1,
                        payload.label(),
                        concurrency,
                        key.label(),
                        cell.stats.requests as f64 / cell.window.as_secs_f64(),
                        cell.stats.quantile_ms(0.5),
                        cell.stats.quantile_ms(0.99),
                        cell.stats.errors,
                        cell.stats.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
                    );
                    results.rows.entry((*payload, concurrency, key)).or_insert_with(Row::new).add(cell);
                }
            }
        }
    }
    for (key, target) in &targets {
        let peak: u64 = target.hop.pids().iter().filter_map(|pid| procs::status_kib(*pid, "VmHWM")).sum();
        if peak > 0 {
            results.peak_rss_kib.insert(*key, peak);
        }
    }
    results.sink_requests = sink.as_ref().map(|s| {
        use std::sync::atomic::Ordering::Relaxed;
        (s.counters.requests.load(Relaxed), s.counters.bytes.load(Relaxed))
    });
    drop(nginx);
    for (_, gateway) in gateways {
        gateway.proc.stop(Duration::from_secs(3)).await;
    }
    Ok(())
}
