//! Command line: `portcullis serve`, `token`, `demo`, `policy explain`, `guard check`,
//! `tools list|approve`, `scan`, `audit verify|export|migrate` and `redact`.
//!
//! `main` stays tiny: [`main`] parses arguments, runs one command and maps its error chain
//! to a message on stderr and a non-zero exit code.

pub mod policy;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::{
    auth::issuer::TokenRequest,
    config::{Config, Overrides, Settings},
};

/// Portcullis: an OAuth-secured remote MCP gateway.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Print one access token (JWT) signed by the embedded authorization server.
    Token(TokenArgs),
    /// Start the gateway on loopback in front of a built-in demo upstream, and print a
    /// ready token and commands to connect.
    Demo(DemoArgs),
    /// Inspect the access policy (`policy explain`).
    Policy(policy::PolicyArgs),
    /// Prompt-injection guard tools.
    #[command(subcommand)]
    Guard(GuardCommand),
    /// Pinned tool definitions: list them, approve changed ones.
    #[command(subcommand)]
    Tools(ToolsCommand),
    /// Connect to an MCP server as a client and report poisoned or suspicious tools, prompts
    /// and resources (exit status 1 when anything is flagged).
    Scan {
        /// The server's streamable-HTTP endpoint.
        #[arg(value_name = "URL")]
        url: Url,
        /// Extra request header (repeatable), e.g. "Authorization: Bearer …".
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
    },
    /// Verify, export or migrate the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Scrub secrets and personal data from stdin (one line at a time).
    Redact(RedactArgs),
}

/// `portcullis guard …`.
#[derive(Debug, Subcommand)]
pub enum GuardCommand {
    /// Scan text from stdin. With `--jsonl`, each line is `{"text": …, "surface": "result" |
    /// "description"}` and gets one line `{"flagged", "action", "findings"}`; without it,
    /// all of stdin is one text.
    Check {
        /// Read and write JSON lines.
        #[arg(long)]
        jsonl: bool,
    },
}

/// `portcullis tools …`.
#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    /// List pinned tools and their state.
    List {
        /// Where the data dir comes from.
        #[command(flatten)]
        config: ConfigArgs,
        /// Only tools whose definition changed and awaits approval.
        #[arg(long)]
        pending: bool,
    },
    /// Approve the changed definition of a tool, so it is listed and callable again.
    Approve {
        /// Where the data dir comes from.
        #[command(flatten)]
        config: ConfigArgs,
        /// The tool, as `UPSTREAM/TOOL` (the upstream's own tool name, without prefix).
        #[arg(value_name = "UPSTREAM/TOOL")]
        tool: String,
    },
}

/// `portcullis audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and signed checkpoints; exit 0 and print the row count when intact,
    /// else exit 1 naming the first bad row.
    Verify(AuditVerifyArgs),
    /// Stream rows recorded since a time, for a SIEM.
    Export(AuditExportArgs),
    /// Apply the audit schema migrations (run once with the database owner's URL).
    Migrate(AuditMigrateArgs),
}

/// `portcullis audit verify`.
#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// A checkpoint token kept outside the database (from the gateway log); repeatable.
    #[arg(long = "checkpoint", value_name = "JWT")]
    checkpoints: Vec<String>,
}

/// `portcullis audit export`.
#[derive(Debug, Args)]
pub struct AuditExportArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Rows recorded at or after this time: RFC 3339 (`2026-01-31T10:00:00Z`) or a duration ago (`1h`).
    #[arg(long, value_name = "TIME", value_parser = crate::audit::parse_since)]
    since: i64,
    /// Output format.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: ExportFormat,
}

/// `portcullis audit migrate`.
#[derive(Debug, Args)]
pub struct AuditMigrateArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

/// Export formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
}

/// `portcullis redact`.
#[derive(Debug, Args)]
pub struct RedactArgs {
    /// Read JSON lines with a `text` field; write `{"text", "findings": [{kind, start, end}]}`
    /// per line (byte offsets into the input text).
    #[arg(long)]
    jsonl: bool,
}

/// Where the configuration comes from.
#[derive(Debug, Args, Clone, Default)]
pub struct ConfigArgs {
    /// Configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (embedded issuer key and other state).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// `portcullis serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to bind, e.g. `127.0.0.1:8080` or `0.0.0.0:8080`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Externally visible base URL (the token audience is `<URL>/mcp`).
    #[arg(long, value_name = "URL")]
    public_url: Option<Url>,
    /// Add an upstream MCP server (repeatable); added to the file's upstreams.
    #[arg(long = "upstream", value_name = "NAME=URL", value_parser = parse_upstream)]
    upstreams: Vec<(String, Url)>,
}

/// `portcullis token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Subject (`sub`) of the token.
    #[arg(long, value_name = "SUBJECT")]
    sub: String,
    /// Space-separated scopes, e.g. "mcp:tools mcp:resources".
    #[arg(long, value_name = "SCOPES", default_value = "")]
    scope: String,
    /// Lifetime in seconds (default `auth.default_token_ttl`; at most `auth.max_token_ttl`).
    #[arg(long, value_name = "SECONDS")]
    ttl: Option<u64>,
    /// `client_id` claim.
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
}

/// `portcullis demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address to bind the gateway (loopback only).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

fn parse_upstream(value: &str) -> Result<(String, Url), String> {
    let (name, url) = value.split_once('=').ok_or("expected NAME=URL")?;
    let url = Url::parse(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    Ok((name.to_owned(), url))
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one parsed command and returns the exit status (`policy explain`: 1 when denied).
///
/// # Errors
/// Configuration, start-up and I/O failures, with context saying what to fix.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let env = crate::process_env();
    match cli.command {
        Command::Serve(args) => serve(args, &env).await.map(|()| ExitCode::SUCCESS),
        Command::Token(args) => {
            let _telemetry = start_telemetry(&env, None)?;
            token(args, &env).map(|()| ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo(args, &env).await.map(|()| ExitCode::SUCCESS),
        Command::Policy(args) => {
            let _telemetry = start_telemetry(&env, None)?;
            policy::run(args, &env)
        }
        Command::Guard(GuardCommand::Check { jsonl }) => guard_check(jsonl).map(|()| ExitCode::SUCCESS),
        Command::Tools(command) => tools(command, &env).map(|()| ExitCode::SUCCESS),
        Command::Scan { url, headers } => {
            let _telemetry = start_telemetry(&env, None)?;
            scan(&url, &headers).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Audit(command) => audit(command, &env).await.map(|()| ExitCode::SUCCESS),
        Command::Redact(args) => redact(&args).map(|()| ExitCode::SUCCESS),
    }
}

/// Logging and, when configured, trace export, for the rest of the command. Runs inside
/// the runtime (the OTLP exporter needs it) and, for `serve`/`demo`, once the settings are
/// known (`telemetry.otlp_endpoint`); the returned guard flushes spans when dropped.
fn start_telemetry(
    env: &HashMap<String, String>,
    settings: Option<&crate::config::TelemetrySettings>,
) -> anyhow::Result<crate::telemetry::TelemetryGuard> {
    start_telemetry_with(env, settings, &crate::telemetry::Health::new())
}

/// As [`start_telemetry`], reporting the trace exporter into `health`. Log lines go through
/// the `redact` scrubber: no secret or personal data reaches stderr.
fn start_telemetry_with(
    env: &HashMap<String, String>,
    settings: Option<&crate::config::TelemetrySettings>,
    health: &crate::telemetry::Health,
) -> anyhow::Result<crate::telemetry::TelemetryGuard> {
    let endpoint = settings.and_then(|s| s.otlp_endpoint.clone());
    crate::telemetry::TelemetryBuilder::new(env)
        .otlp_endpoint(endpoint)
        .writer(crate::redact::ScrubbingMakeWriter::new(std::io::stderr))
        .health(health)
        .init()
        .context("starting telemetry (logs and traces)")
}

async fn audit(command: AuditCommand, env: &HashMap<String, String>) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify(args) => {
            let settings = load_settings(&args.config, Overrides::default(), env)?;
            let key_file = settings.data_dir.join("issuer").join("signing-key.pem");
            if matches!(settings.auth.signing_key, crate::config::SigningKeySource::DataDir) && !key_file.exists() {
                bail!("no gateway key at {} to check checkpoint signatures (pass the gateway's --data-dir or --config)", key_file.display());
            }
            let issuer = crate::embedded_issuer(&settings)?;
            match crate::audit::verify(&settings.audit, issuer.key().decoding_key(), &args.checkpoints).await? {
                crate::audit::VerifyOutcome::Intact(report) => {
                    println!(
                        "audit trail intact: {} rows, {} checkpoints verified (latest covers {} rows)",
                        report.rows, report.checkpoints, report.checkpointed_rows
                    );
                    Ok(())
                }
                crate::audit::VerifyOutcome::Broken(broken) => bail!("audit trail broken: {broken}"),
            }
        }
        AuditCommand::Export(args) => {
            let settings = load_settings(&args.config, Overrides::default(), env)?;
            let ExportFormat::Jsonl = args.format;
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let rows = crate::audit::export(&settings.audit, args.since, &mut out).await?;
            tracing::info!(rows, "audit export done");
            Ok(())
        }
        AuditCommand::Migrate(args) => {
            let settings = load_settings(&args.config, Overrides::default(), env)?;
            crate::audit::migrate(&settings.audit).await?;
            println!("audit schema up to date at {}", settings.audit.display_url());
            Ok(())
        }
    }
}

fn redact(args: &RedactArgs) -> anyhow::Result<()> {
    use std::io::{BufRead as _, Write as _};
    let scrubber = crate::redact::Scrubber::global();
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (index, line) in stdin.lines().enumerate() {
        let line = line.context("reading stdin")?;
        if args.jsonl {
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_str(&line).with_context(|| format!("line {}: not JSON", index + 1))?;
            let text = value.get("text").and_then(|t| t.as_str()).with_context(|| format!("line {}: no string field \"text\"", index + 1))?;
            serde_json::to_writer(&mut out, &scrubber.scrub(text))?;
            out.write_all(b"\n")?;
        } else {
            writeln!(out, "{}", scrubber.scrub(&line).text)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn load_settings(config: &ConfigArgs, overrides: Overrides, env: &HashMap<String, String>) -> anyhow::Result<Settings> {
    let overrides = Overrides { data_dir: config.data_dir.clone().or(overrides.data_dir), ..overrides };
    let raw = Config::load(config.config.as_deref(), env, &overrides)?;
    Ok(Settings::from_config(raw, env)?)
}

async fn serve(args: ServeArgs, env: &HashMap<String, String>) -> anyhow::Result<()> {
    let overrides = Overrides { listen: args.listen, public_url: args.public_url, data_dir: None, upstreams: args.upstreams };
    let (settings, listener) = bind(&args.config, overrides, env).await?;
    let observability = crate::Observability::default();
    let _telemetry = start_telemetry_with(env, Some(&settings.telemetry), &observability.health)?;
    crate::run_with(settings, listener, shutdown_signal(), observability).await
}

/// Loads settings and binds their listen address. With port 0 the settings are re-derived
/// from the port actually bound, so the public URL and token audience name a real port.
async fn bind(config: &ConfigArgs, overrides: Overrides, env: &HashMap<String, String>) -> anyhow::Result<(Settings, TcpListener)> {
    let settings = load_settings(config, overrides.clone(), env)?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is another process using it? set --listen)", settings.listen))?;
    if settings.listen.port() != 0 {
        return Ok((settings, listener));
    }
    let bound = listener.local_addr().context("reading the bound address")?;
    let settings = load_settings(config, Overrides { listen: Some(bound), ..overrides }, env)?;
    Ok((settings, listener))
}

fn token(args: TokenArgs, env: &HashMap<String, String>) -> anyhow::Result<()> {
    let settings = load_settings(&args.config, Overrides::default(), env)?;
    let issuer = crate::embedded_issuer(&settings)?;
    let ttl = args.ttl.map_or(settings.auth.default_token_ttl, Duration::from_secs);
    let request = TokenRequest {
        subject: args.sub,
        scopes: args.scope.split_ascii_whitespace().map(str::to_owned).collect(),
        ttl,
        client_id: args.client_id,
    };
    println!("{}", issuer.mint(&request)?);
    Ok(())
}

/// `portcullis guard check`: scans stdin with the default guard policy.
fn guard_check(jsonl: bool) -> anyhow::Result<()> {
    use std::io::{BufRead as _, Read as _, Write as _};

    use crate::guard::{Guard, Surface};

    #[derive(serde::Deserialize)]
    struct Line {
        text: String,
        #[serde(default = "result_surface")]
        surface: Surface,
    }
    fn result_surface() -> Surface {
        Surface::Result
    }
    let guard = Guard::default();
    let verdict = |text: &str, surface| {
        let outcome = guard.check(text, surface, None);
        let action = outcome.action.map_or(serde_json::json!("allow"), |a| serde_json::json!(a));
        serde_json::json!({ "flagged": outcome.flagged(), "action": action, "findings": outcome.findings })
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    if !jsonl {
        let mut text = String::new();
        stdin.lock().read_to_string(&mut text).context("reading stdin")?;
        writeln!(out, "{}", verdict(&text, Surface::Result))?;
        return Ok(());
    }
    for (number, line) in stdin.lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Line>(&line) {
            Ok(line) => verdict(&line.text, line.surface),
            Err(error) => serde_json::json!({ "error": format!("line {}: {error}", number + 1) }),
        };
        writeln!(out, "{answer}")?;
    }
    Ok(())
}

/// `portcullis tools list|approve`: the pin store in the data dir.
fn tools(command: ToolsCommand, env: &HashMap<String, String>) -> anyhow::Result<()> {
    use crate::guard::{PinState, PinStore};

    match command {
        ToolsCommand::List { config, pending } => {
            let settings = load_settings(&config, Overrides::default(), env)?;
            let entries = PinStore::new(&settings.data_dir).list(pending)?;
            for entry in entries {
                let state = match &entry.state {
                    PinState::Pinned => "pinned".to_owned(),
                    PinState::Pending { new_hash, .. } => format!("pending new={}", &new_hash[..new_hash.len().min(16)]),
                };
                println!("{}/{}\t{state}\thash={}", entry.upstream, entry.tool, &entry.hash[..entry.hash.len().min(16)]);
            }
            Ok(())
        }
        ToolsCommand::Approve { config, tool } => {
            let (upstream, name) = tool.split_once('/').context("expected UPSTREAM/TOOL, e.g. github/create_issue")?;
            let settings = load_settings(&config, Overrides::default(), env)?;
            let entry = PinStore::new(&settings.data_dir).approve(upstream, name)?;
            println!("approved {}/{} (hash {})", entry.upstream, entry.tool, entry.hash);
            Ok(())
        }
    }
}

/// `portcullis scan URL`: lists the server's tools, prompts and resources and scans them.
async fn scan(url: &Url, headers: &[String]) -> anyhow::Result<()> {
    let mut map = HashMap::new();
    for header in headers {
        let (name, value) = header.split_once(':').with_context(|| format!("expected \"NAME: VALUE\", got {header:?}"))?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes()).with_context(|| format!("invalid header name {name:?}"))?;
        let value = http::HeaderValue::from_str(value.trim()).context("invalid header value")?;
        map.insert(name, value);
    }
    let items = crate::guard::scan_server(&crate::guard::Guard::default(), url.as_str(), map).await?;
    let flagged: Vec<_> = items.iter().filter(|i| !i.findings.is_empty()).collect();
    for item in &flagged {
        let rules: Vec<String> = item.findings.iter().map(|f| format!("{} ({})", f.rule, f.family)).collect();
        println!("{} {}: {}", item.kind, item.name, rules.join(", "));
    }
    let count = |kind| items.iter().filter(|i| i.kind == kind).count();
    println!("scanned {} tools, {} prompts, {} resources: {} flagged", count("tool"), count("prompt"), count("resource"), flagged.len());
    if !flagged.is_empty() {
        bail!("{} of {} items flagged", flagged.len(), items.len());
    }
    Ok(())
}

async fn demo(args: DemoArgs, env: &HashMap<String, String>) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!("portcullis demo only binds loopback addresses (got {}); use `portcullis serve` for anything else", args.listen);
    }
    let cancel = CancellationToken::new();
    let upstream_listener = TcpListener::bind("127.0.0.1:0").await.context("binding the demo upstream")?;
    let upstream = crate::demo::spawn(upstream_listener, cancel.clone())?;
    let upstream_url = Url::parse(&format!("http://{upstream}/mcp"))?;
    let overrides = Overrides {
        listen: Some(args.listen),
        public_url: None,
        data_dir: args.data_dir,
        upstreams: vec![("demo".to_owned(), upstream_url)],
    };
    let (settings, listener) = bind(&ConfigArgs::default(), overrides, env)
        .await
        .context("starting the demo gateway (another port: `portcullis demo --listen 127.0.0.1:8181`)")?;
    let observability = crate::Observability::default();
    let _telemetry = start_telemetry_with(env, Some(&settings.telemetry), &observability.health)?;
    let issuer = crate::embedded_issuer(&settings)?;
    let token = issuer.mint(&TokenRequest {
        subject: "demo-user".into(),
        scopes: crate::policy::DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        ttl: settings.auth.max_token_ttl,
        client_id: Some("portcullis-demo".into()),
    })?;
    print_demo_banner(&settings.resource, &token, settings.auth.max_token_ttl, &settings.data_dir);
    let stop = cancel.clone();
    let result = crate::run_with(
        settings,
        listener,
        async move {
            shutdown_signal().await;
            stop.cancel();
        },
        observability,
    )
    .await;
    cancel.cancel();
    result
}

fn print_demo_banner(endpoint: &str, token: &str, ttl: Duration, data_dir: &std::path::Path) {
    let minutes = ttl.as_secs() / 60;
    let data_dir = data_dir.display();
    println!(
        r#"
Portcullis demo gateway: {endpoint}
Upstream "demo" (tools: demo__get_forecast [read-only], demo__delete_file [destructive],
demo__fetch_webpage [returns an injected instruction]), a resource and a prompt.

Access token (subject demo-user, scopes mcp:tools mcp:resources mcp:prompts, valid {minutes} min):

export PORTCULLIS_TOKEN={token}

List tools with curl:
  curl -s {endpoint} -H "Authorization: Bearer $PORTCULLIS_TOKEN" \
    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
    -d '{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"2025-11-25","capabilities":{{}},"clientInfo":{{"name":"curl","version":"0"}}}}}}' -i
  (then repeat with -H "Mcp-Session-Id: <id from the response>" and
   -d '{{"jsonrpc":"2.0","id":2,"method":"tools/list"}}')

MCP Inspector:
  npx @modelcontextprotocol/inspector --cli {endpoint} --transport http \
    --header "Authorization: Bearer $PORTCULLIS_TOKEN" --method tools/list

Claude Code:
  claude mcp add --transport http portcullis {endpoint} --header "Authorization: Bearer $PORTCULLIS_TOKEN"

A new token: cargo run -- token --data-dir {data_dir} --sub demo-user --scope "mcp:tools mcp:resources mcp:prompts"
Stop with Ctrl-C.
"#
    );
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
