//! The tamper-evident audit trail: one row per JSON-RPC request that reaches the router
//! (lists and calls, allowed and denied), written ahead of forwarding and never lost silently.
//!
//! # Shape
//! Each request gets two rows linked by `request_id`: an **intent** row written (durably)
//! before the request is forwarded — who, which client and session, which upstream, method and
//! target, the redacted and size-capped arguments with the SHA-256 of the original, the policy
//! decision and rule — and an **outcome** row after it — status, JSON-RPC error code, redacted
//! error message, guard findings, latency. Two rows rather than one updated row because the
//! table is append-only: nothing, the gateway included, may change a row once written.
//!
//! # Invariants
//! - **Write-ahead, fail closed.** [`AuditLog::intent`] resolves only after the intent row's
//!   transaction committed. If it cannot (store down, disk full, queue over `max_pending`) the
//!   call must be refused ([`Error::jsonrpc_code`]) and [`AuditLog::health`] reports unready —
//!   unless `failure_mode = "fail_open"`, which is logged at `warn` on every start.
//! - **No skipped outcome.** [`IntentHandle`] records an `abandoned` outcome when dropped without
//!   [`IntentHandle::outcome`]; failed outcome writes are retried.
//! - **Hash chain.** `row_hash = SHA-256(prev_hash || canonical JSON of the row)` (`row.rs`
//!   module docs); rows are numbered from 1 without gaps. One chain per database: appends are
//!   serialized by the database (SQLite write lock, PostgreSQL advisory lock) and read the head
//!   inside that lock, so several replicas sharing one PostgreSQL produce one verifiable chain.
//! - **Append-only.** Triggers refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL); the
//!   gateway's PostgreSQL role should hold only SELECT and INSERT.
//! - **Signed checkpoints.** Every `checkpoint_interval` the head (`row_count`, `head_hash`) is
//!   signed with the gateway key (ES256 JWT, `typ: audit-checkpoint+jwt`), stored and logged, so
//!   cutting rows off the tail is detectable.
//! - **No secrets.** Arguments and error messages go through [`crate::redact`]; the session id is
//!   stored only as its SHA-256.
//!
//! Group commit, and the request that commits its own intent when it is the only call in
//! flight (SQLite): see [`writer`](self).

mod config;
mod row;
mod sqlite;
mod store;
mod verify;
mod writer;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use serde_json::Value;
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};

pub use config::{AuditConfig, AuditSettings, Backend, FailureMode, SqliteDurability};
pub use row::Row;
pub use verify::{Broken, Problem, VerifyOutcome, VerifyReport, export, parse_since, verify};

use crate::auth::issuer::EmbeddedIssuer;
use store::Store;
use writer::{Command, Sink, Writer};

/// JSON-RPC error code for a call refused because the audit log could not record it
/// (implementation-defined server error range, JSON-RPC 2.0 §5.1).
pub const JSONRPC_AUDIT_UNAVAILABLE: i64 = -32052;

/// JWT `typ` of checkpoints.
pub const CHECKPOINT_TYP: &str = "audit-checkpoint+jwt";

/// Audit errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is not acceptable.
    #[error("invalid configuration: {key}: {reason}")]
    Config {
        /// The offending key, e.g. `audit.url`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The database failed or could not be reached.
    #[error("audit store: {0}")]
    Store(#[from] sqlx::Error),
    /// The SQLite file failed (the writer's own connection).
    #[error("audit store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Applying the embedded migrations failed.
    #[error("audit migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The record could not be made durable; the call must be refused.
    #[error("audit log unavailable: {reason}")]
    Unavailable {
        /// Why (the store error).
        reason: String,
    },
    /// Too many intents are waiting to be written.
    #[error("audit log overloaded: {pending} intents pending")]
    Overloaded {
        /// Intents waiting.
        pending: usize,
    },
    /// The writer has stopped.
    #[error("audit writer stopped")]
    Closed,
    /// Signing a checkpoint failed.
    #[error("audit checkpoint signing failed: {0}")]
    Sign(String),
    /// Writing an export failed.
    #[error("audit export: {0}")]
    Io(#[from] std::io::Error),
}

/// Readiness of the audit log, for the gateway's readiness endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// The last write or probe succeeded.
    Ready,
    /// The store fails but `failure_mode = "fail_open"` keeps calls flowing.
    Degraded {
        /// Why.
        reason: String,
    },
    /// The store fails: calls are refused; report the gateway unready.
    Unready {
        /// Why.
        reason: String,
    },
}

/// The policy decision recorded with an intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyDecision {
    /// Allowed: the request is forwarded or answered.
    Allow,
    /// Denied: the request is refused.
    Deny,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeStatus {
    /// Answered with a result.
    Ok,
    /// Answered with a JSON-RPC error (upstream or gateway).
    Error,
    /// Refused by policy.
    Denied,
    /// The upstream did not answer in time.
    Timeout,
    /// The client cancelled or went away.
    Cancelled,
    /// No outcome was recorded: the handle was dropped (written by the drop guard).
    Abandoned,
}

/// What is known before the request is forwarded. Raw values: the audit log hashes the session
/// id, redacts and caps the arguments, and digests them.
#[derive(Debug, Clone, Default)]
pub struct IntentRecord {
    /// Gateway-assigned unique request id (links intent and outcome), e.g. the `x-request-id`.
    pub request_id: String,
    /// JSON-RPC `id` of the request (JSON text, e.g. `7` or `"abc"`).
    pub jsonrpc_id: Option<String>,
    /// W3C trace id (32 hex digits).
    pub trace_id: Option<String>,
    /// MCP session id, raw (stored as its SHA-256).
    pub session_id: Option<String>,
    /// Token issuer (`iss`).
    pub issuer: Option<String>,
    /// Token subject (`sub`).
    pub subject: Option<String>,
    /// OAuth client id (`client_id`/`azp`).
    pub client_id: Option<String>,
    /// Token id (`jti`).
    pub token_id: Option<String>,
    /// Upstream name, when the request resolves to one.
    pub upstream: Option<String>,
    /// JSON-RPC method, e.g. `tools/call`, `tools/list`.
    pub method: String,
    /// Tool name, resource URI or prompt name (as the client named it).
    pub target: Option<String>,
    /// Arguments (`params.arguments` of a call, or the params), raw.
    pub arguments: Option<Value>,
    /// The policy decision.
    pub decision: Option<PolicyDecision>,
    /// The policy rule that decided.
    pub rule: Option<String>,
}

/// What is known after the request ended.
#[derive(Debug, Clone)]
pub struct OutcomeRecord {
    /// How it ended.
    pub status: OutcomeStatus,
    /// JSON-RPC error code, for errors.
    pub error_code: Option<i64>,
    /// Error message, raw (redacted before storage).
    pub error_message: Option<String>,
    /// Guard findings (any JSON; redacted before storage).
    pub findings: Option<Value>,
    /// Latency; measured from [`AuditLog::intent`] when `None`.
    pub latency: Option<Duration>,
}

/// The audit log: open once at start, share behind an `Arc`.
pub struct AuditLog {
    inner: Arc<Inner>,
    writer: tokio::sync::Mutex<Option<WriterHandle>>,
}

/// A running writer: stops it ([`AuditLog::abort_writer_for_tests`]) or waits for its end.
struct WriterHandle {
    abort: futures::future::AbortHandle,
    /// Closed (sender dropped) when the writer has ended, panics included.
    ended: oneshot::Receiver<()>,
}

struct Inner {
    /// The writer's queue; replaced when a stopped writer is restarted ([`AuditLog::revive`]).
    tx: std::sync::RwLock<mpsc::UnboundedSender<Command>>,
    health: std::sync::RwLock<watch::Receiver<Health>>,
    pending: Arc<AtomicUsize>,
    /// Outcomes queued without waking the writer, shared with every writer started.
    quiet: Arc<writer::Quiet>,
    /// The running SQLite writer's connection, for group-commit leaders (`writer` module
    /// docs); `None` on PostgreSQL or when leaders are off. Replaced with the writer.
    lead: std::sync::RwLock<Option<Arc<writer::Lead>>>,
    settings: AuditSettings,
    signer: Arc<EmbeddedIssuer>,
    /// Where the writer reports commit durations, once attached ([`AuditLog::attach_metrics`]).
    metrics: Arc<std::sync::OnceLock<crate::telemetry::Metrics>>,
}

// === impl Inner ===

impl Inner {
    fn send(&self, command: Command) -> Result<(), mpsc::error::SendError<Command>> {
        self.tx.read().unwrap_or_else(std::sync::PoisonError::into_inner).send(command)
    }

    /// The connection a leader may commit on: none while the writer is stopped (calls are
    /// then refused, as without leaders).
    fn leader(&self) -> Option<Arc<writer::Lead>> {
        let lead = self.lead.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()?;
        (!self.writer_stopped()).then_some(lead)
    }

    fn writer_stopped(&self) -> bool {
        self.tx.read().unwrap_or_else(std::sync::PoisonError::into_inner).is_closed()
    }
}

/// Proof that an intent row was recorded; record the outcome with [`IntentHandle::outcome`].
/// Dropping it without an outcome records `abandoned`.
#[must_use = "record the outcome with IntentHandle::outcome (dropping it records `abandoned`)"]
pub struct IntentHandle {
    inner: Arc<Inner>,
    template: Row,
    started: Instant,
    seq: Option<i64>,
    done: bool,
}

// === impl AuditLog ===

impl AuditLog {
    /// Connects to the store, applies migrations and starts the writer (a task on the current
    /// runtime; on SQLite a thread of its own). Checkpoints are signed with `signer`'s key.
    ///
    /// # Errors
    /// [`Error::Store`] when the database cannot be reached, [`Error::Migrate`] when the schema
    /// cannot be brought up to date, [`Error::Sqlite`] when the SQLite file cannot be opened for
    /// writing, [`Error::Io`] when the writer's thread cannot be started.
    pub async fn open(settings: &AuditSettings, signer: Arc<EmbeddedIssuer>) -> Result<Self, Error> {
        let store = Store::connect(settings).await?;
        store.migrate().await?;
        let sink = sink(store, settings).await?;
        if settings.failure_mode == FailureMode::FailOpen {
            tracing::warn!(
                store = %settings.display_url(),
                "audit.failure_mode = fail_open: calls are forwarded even when the audit store cannot record them; the audit trail may have gaps"
            );
        }
        tracing::info!(store = %settings.display_url(), replica = %settings.replica_id, "audit log open");
        let pending = Arc::new(AtomicUsize::new(0));
        let quiet = Arc::new(writer::Quiet::default());
        let metrics = Arc::new(std::sync::OnceLock::new());
        let (tx, health, handle, lead) = spawn_writer(sink, settings, signer.clone(), pending.clone(), quiet.clone(), metrics.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                tx: std::sync::RwLock::new(tx),
                health: std::sync::RwLock::new(health),
                pending,
                quiet,
                lead: std::sync::RwLock::new(lead),
                settings: settings.clone(),
                signer,
                metrics,
            }),
            writer: tokio::sync::Mutex::new(Some(handle)),
        })
    }

    /// Restarts the writer if it stopped (it only stops on a bug: a panic). Meanwhile
    /// every call is refused and readiness reports the writer down. The new writer reads the
    /// chain head from the store, so the chain continues where it stopped.
    ///
    /// # Errors
    /// [`Error::Store`] when the store cannot be reached to restart it; [`Error::Sqlite`] and
    /// [`Error::Io`] as for [`AuditLog::open`].
    pub async fn revive(&self) -> Result<bool, Error> {
        if !self.inner.writer_stopped() {
            return Ok(false);
        }
        let sink = sink(Store::connect(&self.inner.settings).await?, &self.inner.settings).await?;
        let (tx, health, handle, lead) =
            spawn_writer(sink, &self.inner.settings, self.inner.signer.clone(), self.inner.pending.clone(), self.inner.quiet.clone(), self.inner.metrics.clone())?;
        *self.inner.health.write().unwrap_or_else(std::sync::PoisonError::into_inner) = health;
        *self.inner.lead.write().unwrap_or_else(std::sync::PoisonError::into_inner) = lead;
        *self.inner.tx.write().unwrap_or_else(std::sync::PoisonError::into_inner) = tx;
        *self.writer.lock().await = Some(handle);
        tracing::warn!("audit writer restarted");
        Ok(true)
    }

    /// Reports each group commit's duration to `metrics` from now on
    /// (`portcullis_audit_commit_duration_seconds`). Only the first call takes effect.
    pub fn attach_metrics(&self, metrics: crate::telemetry::Metrics) {
        let _ = self.inner.metrics.set(metrics);
    }

    /// Stops the writer as a crash would (tests of supervision only).
    #[doc(hidden)]
    pub async fn abort_writer_for_tests(&self) {
        if let Some(handle) = self.writer.lock().await.take() {
            handle.abort.abort();
            let _ = handle.ended.await;
        }
    }

    /// Records the intent row and resolves once it is durable.
    ///
    /// # Errors
    /// With `fail_closed` (default): [`Error::Unavailable`] when the row could not be committed,
    /// [`Error::Overloaded`] when `max_pending` intents are already waiting, [`Error::Closed`]
    /// when the writer stopped. The caller must refuse the request (JSON-RPC
    /// [`JSONRPC_AUDIT_UNAVAILABLE`]). With `fail_open` these are logged and a handle is returned.
    pub async fn intent(&self, record: IntentRecord) -> Result<IntentHandle, Error> {
        let started = Instant::now();
        let row = intent_row(&record, &self.inner.settings);
        let mut template = Row {
            kind: "outcome".into(),
            request_id: row.request_id.clone(),
            replica: row.replica.clone(),
            jsonrpc_id: row.jsonrpc_id.clone(),
            trace_id: row.trace_id.clone(),
            session_hash: row.session_hash.clone(),
            subject: row.subject.clone(),
            client_id: row.client_id.clone(),
            upstream: row.upstream.clone(),
            method: row.method.clone(),
            target: row.target.clone(),
            ..Row::default()
        };
        template.issuer = row.issuer.clone();
        // Counted open before the intent is sent: the writer, done with the commit, must
        // already expect this handle's outcome when it decides how long to sleep. Uncounted
        // again if no handle comes of it (refused, or this future dropped mid-way).
        let opening = writer::Opening::new(self.inner.quiet.clone());
        let result = self.write_intent(row).await;
        let fail_open = self.inner.settings.failure_mode == FailureMode::FailOpen;
        let seq = match result {
            Ok(seq) => Some(seq),
            Err(error) if fail_open => {
                tracing::error!(%error, request_id = %template.request_id, "audit intent not recorded (fail_open: forwarding anyway)");
                None
            }
            Err(error) => return Err(error),
        };
        opening.handed_out();
        Ok(IntentHandle { inner: self.inner.clone(), template, started, seq, done: false })
    }

    async fn write_intent(&self, row: Row) -> Result<i64, Error> {
        let pending = self.inner.pending.fetch_add(1, Ordering::Relaxed);
        if pending >= self.inner.settings.max_pending {
            self.inner.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::Overloaded { pending });
        }
        let mut row = Box::new(row);
        // No other intent pending: lead, i.e. commit it here, if this is the only call in
        // flight (`writer` module docs).
        if pending == 0 && let Some(lead) = self.inner.leader() {
            match lead.try_commit(row, &self.inner.quiet, &self.inner.metrics) {
                writer::Led::Committed(seq) => {
                    self.inner.pending.fetch_sub(1, Ordering::Relaxed);
                    return Ok(seq);
                }
                writer::Led::Failed(error) => {
                    self.inner.pending.fetch_sub(1, Ordering::Relaxed);
                    return Err(error);
                }
                writer::Led::Declined(back) => row = back,
            }
        }
        let (reply, answer) = oneshot::channel();
        if self.inner.send(Command::Append { row, reply: Some(reply), retry: false }).is_err() {
            self.inner.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::Closed);
        }
        answer.await.unwrap_or_else(|_| {
            // The writer stopped (a bug) with the row in hand: it will never count it off.
            self.inner.pending.fetch_sub(1, Ordering::Relaxed);
            Err(Error::Closed)
        })
    }

    /// Intents and outcomes queued for the writer (the audit queue depth metric).
    pub fn pending(&self) -> usize {
        self.inner.pending.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Current readiness: [`Health::Unready`] while the store fails under `fail_closed`.
    pub fn health(&self) -> Health {
        if self.inner.writer_stopped() {
            return Health::Unready { reason: WRITER_STOPPED.into() };
        }
        self.inner.health.read().unwrap_or_else(std::sync::PoisonError::into_inner).borrow().clone()
    }

    /// The settings the log was opened with.
    pub fn settings(&self) -> &AuditSettings {
        &self.inner.settings
    }

    /// Writes everything queued and a final checkpoint (at shutdown). Outcomes recorded later
    /// are still written while handles live.
    pub async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.send(Command::Flush { reply }).is_ok() {
            let _ = done.await;
        }
    }

    /// Flushes, then waits (at most `timeout`) for the writer to finish once every
    /// [`IntentHandle`] is gone.
    pub async fn close(self, timeout: Duration) {
        self.flush().await;
        let handle = self.writer.lock().await.take();
        drop(self.inner);
        if let Some(handle) = handle {
            let _ = tokio::time::timeout(timeout, handle.ended).await;
        }
    }
}

/// The readiness reason while the writer is not running.
pub const WRITER_STOPPED: &str = "audit writer stopped";

/// The writer's sink for the connected and migrated `store`: PostgreSQL keeps the pool; SQLite
/// closes it and opens the writer's own connection.
async fn sink(store: Store, settings: &AuditSettings) -> Result<Sink, Error> {
    match store {
        Store::Postgres(pool) => Ok(Sink::Postgres { pool, head: None }),
        store @ Store::Sqlite(_) => {
            store.close().await;
            Ok(Sink::Sqlite(Arc::new(writer::Lead::new(sqlite::SqliteAppender::open(settings)?))))
        }
    }
}

/// Starts a writer over `sink` — on PostgreSQL a task on the current runtime, on SQLite a
/// thread of its own (`portcullis-audit`, with a current-thread runtime for its timers: each
/// append blocks it); returns its queue, health and handle, and on SQLite with
/// `sqlite_leader_commit` on and no `batch_linger` the connection leaders may commit on.
///
/// # Errors
/// [`Error::Io`] when the thread cannot be started.
#[allow(clippy::type_complexity)]
fn spawn_writer(
    sink: Sink,
    settings: &AuditSettings,
    signer: Arc<EmbeddedIssuer>,
    pending: Arc<AtomicUsize>,
    quiet: Arc<writer::Quiet>,
    metrics: Arc<std::sync::OnceLock<crate::telemetry::Metrics>>,
) -> Result<(mpsc::UnboundedSender<Command>, watch::Receiver<Health>, WriterHandle, Option<Arc<writer::Lead>>), Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (health_tx, health) = watch::channel(Health::Ready);
    let lead = match &sink {
        Sink::Sqlite(lead) if settings.sqlite_leader_commit && settings.batch_linger.is_zero() => Some(lead.clone()),
        _ => None,
    };
    let own_thread = matches!(sink, Sink::Sqlite(_));
    let writer = Writer {
        sink,
        rx,
        quiet,
        health: health_tx,
        signer,
        batch_max_rows: settings.batch_max_rows,
        batch_linger: settings.batch_linger,
        checkpoint_interval: settings.checkpoint_interval,
        fail_open: settings.failure_mode == FailureMode::FailOpen,
        replica: settings.replica_id.clone(),
        pending,
        metrics,
    };
    let (run, abort) = futures::future::abortable(writer.run());
    // Dropped when the writer ends, however it ends.
    let (ended_tx, ended) = oneshot::channel::<()>();
    if own_thread {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        std::thread::Builder::new().name("portcullis-audit".into()).spawn(move || {
            let _ended = ended_tx;
            let _ = runtime.block_on(run);
        })?;
    } else {
        tokio::spawn(async move {
            let _ended = ended_tx;
            let _ = run.await;
        });
    }
    Ok((tx, health, WriterHandle { abort, ended }, lead))
}

/// Connects to the store of `settings` and applies the embedded migrations (for
/// `portcullis audit migrate`, run with the database owner's URL).
///
/// # Errors
/// [`Error::Store`] or [`Error::Migrate`].
pub async fn migrate(settings: &AuditSettings) -> Result<(), Error> {
    let store = Store::connect(settings).await?;
    let result = store.migrate().await;
    store.close().await;
    result
}

// === impl IntentHandle ===

impl IntentHandle {
    /// `seq` of the intent row; `None` when it was not recorded (`fail_open`).
    pub fn seq(&self) -> Option<i64> {
        self.seq
    }

    /// Records the outcome row and resolves once it is durable.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the row could not be committed (it is retried in the
    /// background; `fail_open` returns `Ok`), [`Error::Closed`] when the writer stopped.
    pub async fn outcome(mut self, outcome: OutcomeRecord) -> Result<(), Error> {
        self.done = true;
        self.inner.quiet.closed();
        let row = self.outcome_row(&outcome);
        let (reply, answer) = oneshot::channel();
        self.inner
            .send(Command::Append { row: Box::new(row), reply: Some(reply), retry: true })
            .map_err(|_| Error::Closed)?;
        let result = answer.await.map_err(|_| Error::Closed).and_then(|r| r.map(|_| ()));
        match result {
            Err(error) if self.inner.settings.failure_mode == FailureMode::FailOpen => {
                tracing::error!(%error, request_id = %self.template.request_id, "audit outcome not yet recorded (retrying)");
                Ok(())
            }
            other => other,
        }
    }

    /// Queues the outcome row without waiting for its commit: for a request path whose answer
    /// need not wait for the outcome, without a task per request to await it. The row goes to
    /// the writer's quiet queue (committed with the next intent, or within twice
    /// `OUTCOME_LINGER`, 20 ms, of arriving; `writer` module docs). A failed write is retried
    /// and logged by the writer, as for [`IntentHandle::outcome`]; if the writer has stopped,
    /// this logs at `error` with the request id, and a restarted writer still writes it.
    pub fn record(mut self, outcome: OutcomeRecord) {
        self.done = true;
        let row = self.outcome_row(&outcome);
        self.queue(row);
    }

    /// Queues `row` for the writer without a reply and without waking it.
    fn queue(&self, row: Row) {
        self.inner.quiet.push(Box::new(row));
        self.inner.quiet.closed();
        if self.inner.writer_stopped() {
            tracing::error!(request_id = %self.template.request_id, "audit writer stopped: outcome queued until it is restarted");
        }
    }

    fn outcome_row(&self, outcome: &OutcomeRecord) -> Row {
        let latency = outcome.latency.unwrap_or_else(|| self.started.elapsed());
        Row {
            ts_us: now_us(),
            status: Some(status_name(outcome.status).to_owned()),
            error_code: outcome.error_code,
            error_message: outcome.error_message.as_deref().map(|m| clean(&crate::redact::scrub_str(m))),
            findings: outcome.findings.as_ref().map(|f| clean(&crate::redact::scrub_json(f).0.to_string())),
            latency_us: Some(i64::try_from(latency.as_micros()).unwrap_or(i64::MAX)),
            ..self.template.clone()
        }
    }
}

impl Drop for IntentHandle {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let row = self.outcome_row(&OutcomeRecord {
            status: OutcomeStatus::Abandoned,
            error_code: None,
            error_message: None,
            findings: None,
            latency: None,
        });
        self.queue(row);
    }
}

// === impl Health ===

impl Health {
    /// Whether the gateway may report itself ready: [`Health::Ready`] or [`Health::Degraded`].
    pub fn is_ready(&self) -> bool {
        !matches!(self, Self::Unready { .. })
    }
}

// === impl Error ===

impl Error {
    /// The JSON-RPC error code a refused call gets: [`JSONRPC_AUDIT_UNAVAILABLE`].
    pub fn jsonrpc_code(&self) -> i64 {
        JSONRPC_AUDIT_UNAVAILABLE
    }
}

fn intent_row(record: &IntentRecord, settings: &AuditSettings) -> Row {
    let (arguments, arguments_bytes, arguments_sha256) = match &record.arguments {
        Some(value) => {
            let raw = serde_json::to_vec(value).unwrap_or_default();
            let (redacted, _) = crate::redact::scrub_json(value);
            let text = clean(&redacted.to_string());
            let size = i64::try_from(text.len()).unwrap_or(i64::MAX);
            (Some(truncate(&text, settings.max_argument_bytes)), Some(size), Some(row::sha256_hex(&raw)))
        }
        None => (None, None, None),
    };
    let text = |v: &Option<String>| v.as_deref().map(clean);
    Row {
        ts_us: now_us(),
        kind: "intent".into(),
        request_id: clean(&record.request_id),
        replica: settings.replica_id.clone(),
        jsonrpc_id: text(&record.jsonrpc_id),
        trace_id: text(&record.trace_id),
        session_hash: record.session_id.as_deref().map(crate::session::hash_id),
        issuer: text(&record.issuer),
        subject: text(&record.subject),
        client_id: text(&record.client_id),
        token_id: text(&record.token_id),
        upstream: text(&record.upstream),
        method: clean(&record.method),
        target: record.target.as_deref().map(|t| clean(&crate::redact::scrub_str(t))),
        arguments,
        arguments_bytes,
        arguments_sha256,
        decision: record.decision.map(|d| match d {
            PolicyDecision::Allow => "allow".to_owned(),
            PolicyDecision::Deny => "deny".to_owned(),
        }),
        rule: text(&record.rule),
        ..Row::default()
    }
}

fn status_name(status: OutcomeStatus) -> &'static str {
    match status {
        OutcomeStatus::Ok => "ok",
        OutcomeStatus::Error => "error",
        OutcomeStatus::Denied => "denied",
        OutcomeStatus::Timeout => "timeout",
        OutcomeStatus::Cancelled => "cancelled",
        OutcomeStatus::Abandoned => "abandoned",
    }
}

/// PostgreSQL `TEXT` cannot hold NUL: replace it, so a hostile value cannot fail the write.
fn clean(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Microseconds since the Unix epoch, UTC.
pub(crate) fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[derive(Serialize, serde::Deserialize)]
struct CheckpointClaims {
    iss: String,
    iat: u64,
    row_count: i64,
    head_hash: String,
    ts_us: i64,
}

fn sign_checkpoint(signer: &EmbeddedIssuer, row_count: i64, head_hash: &str, ts_us: i64) -> Result<String, Error> {
    let claims = CheckpointClaims {
        iss: signer.issuer().to_owned(),
        iat: u64::try_from(ts_us / 1_000_000).unwrap_or(0),
        row_count,
        head_hash: head_hash.to_owned(),
        ts_us,
    };
    signer.sign(CHECKPOINT_TYP, &claims).map_err(|e| Error::Sign(e.to_string()))
}

#[cfg(test)]
mod tests;
