//! The processes under test — the fixture upstream, gateways, nginx — and what `/proc` says
//! about them: CPU time (`utime + stime` of `/proc/PID/stat`, all threads), resident and
//! peak resident memory (`VmRSS`, `VmHWM` of `/proc/PID/status`), and the whole machine's busy
//! time (`/proc/stat`) so that CPU used by anything outside the benchmark shows up as noise.
//!
//! Every process is killed when its handle drops, so an error or Ctrl-C leaves nothing behind.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    net::TcpStream,
    process::{Child, Command},
    time::Instant,
};

/// A child process, killed (SIGKILL) when dropped.
pub(crate) struct Proc {
    name: String,
    child: Child,
    pid: u32,
}

/// The conformance fixture: the upstream MCP server.
pub(crate) struct Fixture {
    pub(crate) proc: Proc,
    pub(crate) addr: SocketAddr,
}

/// What a gateway process is started with.
pub(crate) struct GatewaySpec<'a> {
    /// Short name: also the folder in the work dir.
    pub(crate) name: &'a str,
    /// TOML written before the generated `[[upstream]]` tables.
    pub(crate) config: String,
    /// Upstreams (name, address of its `/mcp`).
    pub(crate) upstreams: Vec<(String, SocketAddr)>,
    /// Extra environment (`PORTCULLIS_*`, `OTEL_*`).
    pub(crate) env: Vec<(String, String)>,
}

/// A running gateway (`portcullis serve`).
pub(crate) struct Gateway {
    pub(crate) proc: Proc,
    pub(crate) addr: SocketAddr,
    /// `Bearer <token>` minted by `portcullis token` for this gateway's key and audience.
    pub(crate) authorization: HeaderValue,
    /// From spawn to the first `200` on the readiness endpoint.
    pub(crate) ready_after: Duration,
}

/// A running nginx: a master and (with `worker_processes 1`) one worker.
pub(crate) struct Nginx {
    pub(crate) addr: SocketAddr,
    master: Proc,
    pub(crate) workers: Vec<u32>,
}

/// Machine-wide CPU counters from `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MachineCpu {
    pub(crate) busy: u64,
    pub(crate) total: u64,
}

/// The endpoint the harness waits on after starting a gateway (issue 7: start → `/readyz`).
pub(crate) const READY_PATH: &str = "/readyz";

// === impl Proc ===

impl Proc {
    fn spawn(name: &str, command: &mut Command) -> anyhow::Result<Self> {
        let child = command.kill_on_drop(true).spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id().ok_or_else(|| anyhow!("{name} exited at once"))?;
        Ok(Self { name: name.to_owned(), child, pid })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails when the process has already exited.
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("{} exited: {status}", self.name),
            None => Ok(()),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub(crate) async fn stop(mut self, grace: Duration) {
        signal(self.pid, "TERM");
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

// === impl Nginx ===

impl Nginx {
    /// The master's process id (its children are the workers).
    pub(crate) fn master_pid(&self) -> u32 {
        self.master.pid()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL on the master alone would orphan the worker; TERM makes the master stop it.
        signal(self.master.pid(), "TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.workers.iter().any(|pid| Path::new(&format!("/proc/{pid}")).exists()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in &self.workers {
            signal(*pid, "KILL");
        }
    }
}

/// A free loopback port (bound, then released; the race is harmless on a bench machine).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts the fixture on a free port, with `extra_tools` synthetic tools.
pub(crate) async fn start_fixture(binary: &Path, extra_tools: usize, log: &Path) -> anyhow::Result<Fixture> {
    let mut command = Command::new(binary);
    command
        .args(["--listen", "127.0.0.1:0", "--extra-tools", &extra_tools.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?);
    let mut proc = Proc::spawn("conformance fixture", &mut command)?;
    let stdout = proc.child.stdout.take().ok_or_else(|| anyhow!("fixture stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .context("the fixture did not print its address within 20 s")??
        .ok_or_else(|| anyhow!("the fixture exited before printing its address (see {})", log.display()))?;
    let addr = line
        .strip_prefix("listening on http://")
        .and_then(|rest| rest.strip_suffix("/mcp"))
        .ok_or_else(|| anyhow!("unexpected fixture banner {line:?}"))?
        .parse()?;
    // Keep reading stdout so the fixture never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Fixture { proc, addr })
}

/// Writes the gateway's configuration into `workdir/<name>/`, mints a token for it with
/// `portcullis token`, starts `portcullis serve` and waits until [`READY_PATH`] answers.
pub(crate) async fn start_gateway(binary: &Path, workdir: &Path, spec: &GatewaySpec<'_>) -> anyhow::Result<Gateway> {
    let dir = workdir.join(spec.name);
    std::fs::create_dir_all(&dir)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut config = spec.config.clone();
    config.push_str("\n# --- generated by portcullis-bench ---\n");
    for (name, upstream) in &spec.upstreams {
        let _ = write!(config, "\n[[upstream]]\nname = \"{name}\"\nurl = \"http://{upstream}/mcp\"\n");
    }
    let config_path = dir.join("portcullis.toml");
    std::fs::write(&config_path, config)?;
    // Listen address, data dir and token lifetime go through the environment, so the user's
    // TOML may contain any table without clashing with generated ones.
    let mut env: Vec<(String, String)> = vec![
        ("PORTCULLIS_LISTEN".into(), addr.to_string()),
        ("PORTCULLIS_DATA_DIR".into(), dir.join("data").display().to_string()),
        ("PORTCULLIS_AUTH__MAX_TOKEN_TTL".into(), "12h".into()),
    ];
    env.extend(spec.env.iter().cloned());

    // Minting first also creates the signing key, so start-up time excludes key generation.
    let token = Command::new(binary)
        .arg("token")
        .arg("--config")
        .arg(&config_path)
        .args(["--sub", "bench", "--scope", "mcp:tools mcp:resources mcp:prompts", "--ttl", "43200", "--client-id", "portcullis-bench"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .context("running portcullis token")?;
    if !token.status.success() {
        bail!("portcullis token failed for {}: {}", spec.name, String::from_utf8_lossy(&token.stderr));
    }
    let token = String::from_utf8(token.stdout)?.trim().to_owned();
    let authorization = HeaderValue::from_str(&format!("Bearer {token}"))?;

    let log = dir.join("gateway.log");
    let mut command = Command::new(binary);
    // Tracing is off unless the spec turns it on: no OTEL_* from the caller's shell leaks in.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    command
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let started = Instant::now();
    let mut proc = Proc::spawn(&format!("gateway {}", spec.name), &mut command)?;
    wait_ready(&mut proc, addr, READY_PATH, Duration::from_secs(30)).await.with_context(|| format!("gateway {} (log: {})", spec.name, log.display()))?;
    Ok(Gateway { proc, addr, authorization, ready_after: started.elapsed() })
}

/// Starts nginx as a one-worker reverse proxy to `upstream` (keep-alive to the upstream,
/// HTTP/1.1, no response buffering so SSE streams pass as they come).
pub(crate) async fn start_nginx(binary: &Path, workdir: &Path, upstream: SocketAddr) -> anyhow::Result<Nginx> {
    let dir = workdir.join("nginx");
    std::fs::create_dir_all(dir.join("logs"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let d = dir.display();
    let config = format!(
        r#"# generated by portcullis-bench: set-up (d), a plain reverse-proxy hop
worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream mcp_upstream {{
        server {upstream};
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {addr};
        location / {{
            proxy_pass http://mcp_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"#
    );
    let config_path = dir.join("nginx.conf");
    std::fs::write(&config_path, config)?;
    let mut command = Command::new(binary);
    command
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&config_path)
        .arg("-e")
        .arg(dir.join("logs/error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("logs/stderr.log"))?);
    let mut master = Proc::spawn("nginx", &mut command)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        master.ensure_running().with_context(|| format!("nginx (logs in {})", dir.join("logs").display()))?;
        if TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("nginx did not listen on {addr} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The master listens before it forks its worker: wait for the worker too, or (d)'s CPU,
    // switches and memory would be the master's alone.
    let workers = loop {
        let workers = children_of(master.pid());
        if !workers.is_empty() {
            break workers;
        }
        if Instant::now() > deadline {
            bail!("nginx started no worker within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    Ok(Nginx { addr, master, workers })
}

/// Polls `path` until it answers 200; fails if the process exits or `timeout` passes.
async fn wait_ready(proc: &mut Proc, addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        proc.ensure_running()?;
        let answer = tokio::time::timeout(Duration::from_secs(1), http_get(addr, path)).await;
        if matches!(answer, Ok(Ok(status)) if status == StatusCode::OK) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{path} did not answer 200 within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One GET on a fresh connection; the status code.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<StatusCode> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get(path).header(header::HOST, addr.to_string()).body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    Ok(status)
}

/// Process ids whose parent is `pid` (from `/proc/*/stat`).
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| stat_fields(&format!("/proc/{child}/stat")).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok())) == Some(pid))
        .collect()
}

/// The fields of a `stat` file of proc(5) (`/proc/PID/stat`, `/proc/PID/task/TID/stat`)
/// after the command name: index 0 is `state` (field 3).
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(after_name.split_ascii_whitespace().map(str::to_owned).collect())
}

/// User + system CPU time in clock ticks from a `stat` file ([`stat_fields`]); 0 if it is gone.
fn stat_cpu_ticks(path: &str) -> u64 {
    // utime and stime are fields 14 and 15 of proc(5), i.e. 11 and 12 after the name.
    stat_fields(path).map_or(0, |f| f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
}

/// CPU time of `pid` (user + system, all threads) in clock ticks; 0 if it is gone.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    stat_cpu_ticks(&format!("/proc/{pid}/stat"))
}

/// CPU time of thread `tid` of `pid` (user + system) in clock ticks; 0 if it is gone.
pub(crate) fn thread_cpu_ticks(pid: u32, tid: u32) -> u64 {
    stat_cpu_ticks(&format!("/proc/{pid}/task/{tid}/stat"))
}

/// The calling thread's id, from `/proc/thread-self` (a link to `PID/task/TID`).
pub(crate) fn current_thread_id() -> Option<u32> {
    std::fs::read_link("/proc/thread-self").ok()?.file_name()?.to_str()?.parse().ok()
}

/// Context switches of each live thread of `pids` so far, voluntary and not
/// (`/proc/PID/task/TID/status`), by thread id; a process that is gone adds nothing.
pub(crate) fn context_switches(pids: &[u32]) -> BTreeMap<u32, u64> {
    let mut threads = BTreeMap::new();
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.filter_map(Result::ok) {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
            let switches = status
                .lines()
                .filter(|line| line.starts_with("voluntary_ctxt_switches:") || line.starts_with("nonvoluntary_ctxt_switches:"))
                .filter_map(|line| line.split_ascii_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            threads.insert(tid, switches);
        }
    }
    threads
}

/// Context switches between two readings of [`context_switches`]: each thread's increase, a
/// thread born in between counted whole; and whether a thread died in between (its switches
/// in the window are then lost, so the count is a lower bound).
pub(crate) fn switches_between(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> (u64, bool) {
    let switches = after.iter().map(|(tid, count)| count.saturating_sub(before.get(tid).copied().unwrap_or(0))).sum();
    let died = before.keys().any(|tid| !after.contains_key(tid));
    (switches, died)
}

/// A `/proc/PID/status` memory line (`VmRSS`, `VmHWM`) in KiB.
pub(crate) fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// Busy and total time of all CPUs from the first line of `/proc/stat`.
pub(crate) fn machine_cpu() -> MachineCpu {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return MachineCpu::default() };
    let Some(line) = stat.lines().next() else { return MachineCpu::default() };
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let values: Vec<u64> = line.split_ascii_whitespace().skip(1).take(8).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    MachineCpu { busy: total.saturating_sub(idle), total }
}

/// `sysconf(_SC_CLK_TCK)` via `getconf` (no libc binding needed); 100 when unavailable.
pub(crate) fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

/// Resolves a program name through `PATH` (plus the sbin folders, where Debian puts nginx).
pub(crate) fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
