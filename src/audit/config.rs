//! `[audit]` configuration: the raw TOML table ([`AuditConfig`]) and the validated
//! [`AuditSettings`] it becomes (parse, don't validate).

use std::{path::Path, time::Duration};

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

use super::Error;

/// What the gateway does when the audit store cannot make a record durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Refuse the call with a JSON-RPC error and report the gateway unready (default).
    #[default]
    FailClosed,
    /// Forward the call anyway, log every lost record at `error`, and report the gateway
    /// degraded but ready. Logged loudly at start: the audit trail may then have gaps.
    FailOpen,
}

/// `[audit]`: where and how audit records are written. Unknown keys are rejected.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Store URL: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB` (default
    /// `sqlite://<data_dir>/audit/audit.db`). A password in the URL is kept secret in logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// What to do when a record cannot be made durable (default `fail_closed`).
    pub failure_mode: FailureMode,
    /// Cap, in bytes, on the redacted arguments stored per row (default 16384); the SHA-256
    /// always covers the full, unredacted arguments.
    pub max_argument_bytes: usize,
    /// How often a signed checkpoint of the chain head is written (default `60s`).
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Most rows committed in one transaction (default 512).
    pub batch_max_rows: usize,
    /// Extra time the writer waits for more rows before committing a batch that is not full
    /// (default `0s`: batches form while the previous commit is in flight).
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// Most intents waiting to be written; beyond it calls are refused (default 10000).
    pub max_pending: usize,
    /// Name of this replica in every row (default: a random id per process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// Connections in the store's pool (default 4).
    pub max_connections: u32,
    /// SQLite only: when a commit counts as durable (default `full`). See [`SqliteDurability`].
    pub sqlite_synchronous: SqliteDurability,
    /// SQLite only: a request whose call is the only one in flight commits its own intent on
    /// its own thread instead of handing it to the writer thread (default `true`): three
    /// context switches fewer per call at one call at a time, at the price of blocking a
    /// runtime worker for one commit (one fsync with `sqlite_synchronous = "full"`). Ignored
    /// while `batch_linger` is set.
    pub sqlite_leader_commit: bool,
}

/// SQLite's `synchronous` setting for the audit file (WAL mode), i.e. what "the intent row is
/// durable" means before a call is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqliteDurability {
    /// `synchronous=FULL`: every commit is fsynced before it returns; survives power loss.
    #[default]
    Full,
    /// `synchronous=NORMAL`: a commit survives a crash of the gateway process, but the last
    /// commits before an operating-system crash or power loss may be lost (WAL is fsynced at
    /// checkpoints only). Saves one fsync per commit; logged as a warning at start.
    Normal,
}

/// Which database holds the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Validated audit settings, built once by [`AuditSettings::from_config`].
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Store URL (may carry a password).
    pub url: SecretString,
    /// Backend named by the URL scheme.
    pub backend: Backend,
    /// What to do when a record cannot be made durable.
    pub failure_mode: FailureMode,
    /// Cap on stored redacted arguments, in bytes.
    pub max_argument_bytes: usize,
    /// Interval between signed checkpoints.
    pub checkpoint_interval: Duration,
    /// Most rows per transaction.
    pub batch_max_rows: usize,
    /// Extra wait for a fuller batch.
    pub batch_linger: Duration,
    /// Most intents waiting to be written.
    pub max_pending: usize,
    /// This replica's name in rows and checkpoints.
    pub replica_id: String,
    /// Pool size.
    pub max_connections: u32,
    /// SQLite commit durability.
    pub sqlite_synchronous: SqliteDurability,
    /// Whether a request whose call is the only one in flight commits its own intent (SQLite).
    pub sqlite_leader_commit: bool,
}

// === impl AuditConfig ===

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            url: None,
            failure_mode: FailureMode::FailClosed,
            max_argument_bytes: 16 * 1024,
            checkpoint_interval: Duration::from_secs(60),
            batch_max_rows: 512,
            batch_linger: Duration::ZERO,
            max_pending: 10_000,
            replica_id: None,
            max_connections: 4,
            sqlite_synchronous: SqliteDurability::Full,
            sqlite_leader_commit: true,
        }
    }
}

// === impl AuditSettings ===

impl AuditSettings {
    /// Validates `config`; the default store is `<data_dir>/audit/audit.db`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key: an unsupported URL scheme, an in-memory SQLite URL, or a
    /// zero batch size, argument cap, pending limit, pool size or checkpoint interval.
    pub fn from_config(config: &AuditConfig, data_dir: &Path) -> Result<Self, Error> {
        let url = match &config.url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", data_dir.join("audit").join("audit.db").display()),
        };
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(invalid("audit.url", "must start with sqlite:// or postgres://"));
        };
        // The writer holds its own connection and readers open theirs: each would get its own
        // in-memory database.
        if backend == Backend::Sqlite && (url.contains(":memory:") || url.contains("mode=memory")) {
            return Err(invalid("audit.url", "an in-memory SQLite database cannot hold an audit trail; name a file"));
        }
        for (key, value) in [
            ("audit.max_argument_bytes", config.max_argument_bytes),
            ("audit.batch_max_rows", config.batch_max_rows),
            ("audit.max_pending", config.max_pending),
            ("audit.max_connections", config.max_connections as usize),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if config.checkpoint_interval.is_zero() {
            return Err(invalid("audit.checkpoint_interval", "must be greater than 0"));
        }
        let replica_id = match &config.replica_id {
            Some(id) if !id.is_empty() && id.len() <= 64 => id.clone(),
            Some(_) => return Err(invalid("audit.replica_id", "must be 1-64 characters")),
            None => uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
        };
        Ok(Self {
            url: SecretString::from(url),
            backend,
            failure_mode: config.failure_mode,
            max_argument_bytes: config.max_argument_bytes,
            checkpoint_interval: config.checkpoint_interval,
            batch_max_rows: config.batch_max_rows,
            batch_linger: config.batch_linger,
            max_pending: config.max_pending,
            replica_id,
            max_connections: config.max_connections,
            sqlite_synchronous: config.sqlite_synchronous,
            sqlite_leader_commit: config.sqlite_leader_commit,
        })
    }

    /// The store URL with any password replaced, for logs and errors.
    pub fn display_url(&self) -> String {
        crate::redact::scrub_str(self.url.expose_secret())
    }
}

fn invalid(key: &str, reason: &str) -> Error {
    Error::Config { key: key.to_owned(), reason: reason.to_owned() }
}
