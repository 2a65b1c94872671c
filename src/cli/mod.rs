//! Command line: `portcullis serve`, `portcullis token`, `portcullis demo`, `portcullis audit`,
//! `portcullis redact`.
//!
//! `main` stays tiny: [`main`] parses arguments, runs one command and maps its error chain
//! to a message on stderr and a non-zero exit code.

use std::{
    collections::HashMap,
    io::IsTerminal,
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
    /// Verify, export or migrate the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Scrub secrets and personal data from stdin (one line at a time).
    Redact(RedactArgs),
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
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

/// Runs one parsed command.
///
/// # Errors
/// Configuration, start-up and I/O failures, with context saying what to fix.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let env = crate::process_env();
    match cli.command {
        Command::Serve(args) => serve(args, &env).await,
        Command::Token(args) => token(args, &env),
        Command::Demo(args) => demo(args, &env).await,
        Command::Audit(command) => audit(command, &env).await,
        Command::Redact(args) => redact(&args),
    }
}

async fn audit(command: AuditCommand, env: &HashMap<String, String>) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify(args) => {
            let settings = load_settings(&args.config, Overrides::default(), env)?;
            let key_file = settings.data_dir.join("issuer").join("signing-key.pem");
            if !key_file.exists() {
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
    crate::run(settings, listener, shutdown_signal()).await
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
    let issuer = crate::embedded_issuer(&settings)?;
    let token = issuer.mint(&TokenRequest {
        subject: "demo-user".into(),
        scopes: crate::policy::DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        ttl: settings.auth.max_token_ttl,
        client_id: Some("portcullis-demo".into()),
    })?;
    print_demo_banner(&settings.resource, &token, settings.auth.max_token_ttl, &settings.data_dir);
    let stop = cancel.clone();
    let result = crate::run(settings, listener, async move {
        shutdown_signal().await;
        stop.cancel();
    })
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
