//! The database behind the audit trail: SQLite or PostgreSQL through sqlx's runtime query API
//! (no compile-time database), embedded migrations, and the one append transaction.
//!
//! Every append runs in one transaction that first serializes writers (SQLite: `BEGIN
//! IMMEDIATE`, the database write lock; PostgreSQL: `pg_advisory_xact_lock`), then reads the
//! chain head from the table itself, seals the new rows onto it and inserts them, with a signed
//! checkpoint when one is due. Reading the head inside the lock is what keeps one gap-free chain
//! when several processes or replicas write to the same database. A writer that remembers the
//! head it last committed skips the read — on SQLite with one autocommit INSERT, on PostgreSQL
//! still under the lock — and the `seq` primary key refuses rows sealed onto a head that
//! moved, upon which the append is made again with the head read (see [`append_postgres`]).
//!
//! PostgreSQL appends go through the pool here ([`append_postgres`]); SQLite appends go through
//! the writer thread's own connection ([`super::sqlite`]), with the statements defined here.
//! Reads, migrations and probes use the pool on both.

use std::{borrow::Cow, str::FromStr as _, time::Duration};

use futures::future::BoxFuture;
use secrecy::ExposeSecret as _;
use sqlx::{
    PgPool, Row as _, SqlitePool,
    error::BoxDynError,
    migrate::{Migration, MigrationSource, MigrationType, Migrator},
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{
    AuditSettings, Error,
    config::Backend,
    row::{COLUMNS, GENESIS, Row},
};

/// Advisory lock key that serializes audit appends across PostgreSQL sessions ("PCAUDIT1").
const PG_APPEND_LOCK: i64 = 0x5043_4155_4449_5431;

/// Rows per INSERT statement (SQLite: 27 binds each, well under its bind limit; PostgreSQL:
/// one bound JSON array).
pub(super) const INSERT_CHUNK: usize = 256;

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[(1, "audit log", include_str!("migrations/sqlite/0001_audit_log.sql"))];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "audit log", include_str!("migrations/postgres/0001_audit_log.sql"))];

/// A connection pool to the audit database.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    /// SQLite file.
    Sqlite(SqlitePool),
    /// PostgreSQL server.
    Postgres(PgPool),
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone)]
pub(crate) struct CheckpointRow {
    pub(crate) id: i64,
    pub(crate) ts_us: i64,
    pub(crate) row_count: i64,
    pub(crate) head_hash: String,
    pub(crate) token: String,
}

/// What one append committed.
#[derive(Debug, Clone)]
pub(crate) struct Appended {
    /// `seq` of each appended row, in input order.
    pub(crate) seqs: Vec<i64>,
    /// Chain head after the append.
    pub(crate) head: (i64, String),
    /// The checkpoint written, if any.
    pub(crate) checkpoint: Option<CheckpointRow>,
}

/// Signs a checkpoint: `(row_count, head_hash, ts_us) -> token`.
pub(crate) type Sign<'a> = &'a (dyn Fn(i64, &str, i64) -> Result<String, Error> + Sync);

#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

/// Runs `$body` with `$pool` bound to whichever pool `$store` holds; the body is type-checked
/// once per backend.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

macro_rules! decode_row {
    ($r:expr) => {
        Row {
            seq: $r.try_get("seq")?,
            ts_us: $r.try_get("ts_us")?,
            kind: $r.try_get("kind")?,
            request_id: $r.try_get("request_id")?,
            replica: $r.try_get("replica")?,
            jsonrpc_id: $r.try_get("jsonrpc_id")?,
            trace_id: $r.try_get("trace_id")?,
            session_hash: $r.try_get("session_hash")?,
            issuer: $r.try_get("issuer")?,
            subject: $r.try_get("subject")?,
            client_id: $r.try_get("client_id")?,
            token_id: $r.try_get("token_id")?,
            upstream: $r.try_get("upstream")?,
            method: $r.try_get("method")?,
            target: $r.try_get("target")?,
            arguments: $r.try_get("arguments")?,
            arguments_bytes: $r.try_get("arguments_bytes")?,
            arguments_sha256: $r.try_get("arguments_sha256")?,
            decision: $r.try_get("decision")?,
            rule: $r.try_get("rule")?,
            status: $r.try_get("status")?,
            error_code: $r.try_get("error_code")?,
            error_message: $r.try_get("error_message")?,
            findings: $r.try_get("findings")?,
            latency_us: $r.try_get("latency_us")?,
            prev_hash: $r.try_get("prev_hash")?,
            row_hash: $r.try_get("row_hash")?,
        }
    };
}

// === impl Store ===

impl Store {
    /// Connects to the database named by `settings.url` (creating a SQLite file and its
    /// directory if needed).
    ///
    /// # Errors
    /// [`Error::Store`] when the database cannot be reached.
    pub(crate) async fn connect(settings: &AuditSettings) -> Result<Self, Error> {
        let url = settings.url.expose_secret();
        match settings.backend {
            Backend::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL (default): a commit is on disk when it returns (the intent must be
                    // durable); NORMAL only when the operator chose it (audit.sqlite_synchronous).
                    .synchronous(match settings.sqlite_synchronous {
                        super::config::SqliteDurability::Full => SqliteSynchronous::Full,
                        super::config::SqliteDurability::Normal => {
                            tracing::warn!("audit.sqlite_synchronous = \"normal\": audit commits survive a gateway crash but not an OS crash or power loss");
                            SqliteSynchronous::Normal
                        }
                    })
                    .busy_timeout(Duration::from_secs(10));
                if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| Error::Store(sqlx::Error::Io(e)))?;
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(settings.max_connections)
                    // A local file: a ping per acquire would only add a round trip to the
                    // connection's worker thread; a failing connection errors on use instead.
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?;
                Ok(Self::Sqlite(pool))
            }
            Backend::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(settings.max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?;
                Ok(Self::Postgres(pool))
            }
        }
    }

    /// Applies the embedded migrations that are not applied yet. When all are, nothing is
    /// created or locked, so a role with only SELECT and INSERT can start the gateway.
    ///
    /// # Errors
    /// [`Error::Migrate`] when a migration fails or the applied ones differ from the embedded.
    pub(crate) async fn migrate(&self) -> Result<(), Error> {
        let embedded = match self {
            Self::Sqlite(_) => SQLITE_MIGRATIONS,
            Self::Postgres(_) => POSTGRES_MIGRATIONS,
        };
        let applied: Vec<i64> = with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(pool)
                .await
                .unwrap_or_default()
        });
        if embedded.iter().all(|(version, _, _)| applied.contains(version)) {
            return Ok(());
        }
        let migrator = Migrator::new(Embedded(embedded)).await?;
        with_pool!(self, pool => migrator.run(pool).await?);
        Ok(())
    }

    /// Up to `limit` rows with `seq > after`, in order.
    ///
    /// # Errors
    /// [`Error::Store`] on a query failure.
    pub(crate) async fn rows_after(&self, after: i64, limit: i64) -> Result<Vec<Row>, Error> {
        let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
        with_pool!(self, pool => {
            let rows = sqlx::query(&sql).bind(after).bind(limit).fetch_all(pool).await?;
            rows.iter().map(|r| Ok(decode_row!(r))).collect::<Result<Vec<_>, sqlx::Error>>().map_err(Error::from)
        })
    }

    /// Up to `limit` rows with `seq > after` and `ts_us >= since_us`, in order.
    ///
    /// # Errors
    /// [`Error::Store`] on a query failure.
    pub(crate) async fn rows_since(&self, since_us: i64, after: i64, limit: i64) -> Result<Vec<Row>, Error> {
        let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 AND ts_us >= $2 ORDER BY seq LIMIT $3");
        with_pool!(self, pool => {
            let rows = sqlx::query(&sql).bind(after).bind(since_us).bind(limit).fetch_all(pool).await?;
            rows.iter().map(|r| Ok(decode_row!(r))).collect::<Result<Vec<_>, sqlx::Error>>().map_err(Error::from)
        })
    }

    /// The `seq` of a row whose `row_hash` is `hash`, if any.
    ///
    /// # Errors
    /// [`Error::Store`] on a query failure.
    pub(crate) async fn seq_of_hash(&self, hash: &str) -> Result<Option<i64>, Error> {
        with_pool!(self, pool => Ok(sqlx::query_scalar("SELECT seq FROM audit_log WHERE row_hash = $1 LIMIT 1")
            .bind(hash.to_owned())
            .fetch_optional(pool)
            .await?))
    }

    /// Every stored checkpoint, oldest first.
    ///
    /// # Errors
    /// [`Error::Store`] on a query failure.
    pub(crate) async fn checkpoints(&self) -> Result<Vec<CheckpointRow>, Error> {
        with_pool!(self, pool => {
            let rows = sqlx::query("SELECT id, ts_us, row_count, head_hash, token FROM audit_checkpoint ORDER BY id")
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| Ok(CheckpointRow {
                    id: r.try_get("id")?,
                    ts_us: r.try_get("ts_us")?,
                    row_count: r.try_get("row_count")?,
                    head_hash: r.try_get("head_hash")?,
                    token: r.try_get("token")?,
                }))
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(Error::from)
        })
    }

    /// Closes the pool.
    pub(crate) async fn close(&self) {
        with_pool!(self, pool => pool.close().await);
    }
}

/// Appends `rows` to the PostgreSQL store (their `seq` and hashes are assigned here) and, when
/// `checkpoint` is given and the head moved past the latest stored checkpoint, a signed
/// checkpoint — all in one transaction under the append lock.
///
/// `known_head` is the chain head this writer last committed, `(seq, row_hash)`. The append
/// always takes the transaction and the advisory lock (in one round trip with `BEGIN`):
/// without the lock, another replica's locked append could collide with this insert and fail.
/// Under the lock it skips the head read when it has a remembered head: `BEGIN`+lock, INSERT,
/// COMMIT, three round trips instead of five. Under the lock no other replica can be
/// mid-append, so a remembered head is only wrong if another replica committed since; then the
/// first new `seq` exists, the INSERT is refused, and the append is made again with the head
/// re-read.
///
/// # Errors
/// [`Error::Store`] when the transaction fails; nothing is then written.
pub(crate) async fn append_postgres(
    pool: &PgPool,
    rows: &mut [Row],
    replica: &str,
    checkpoint: Option<Sign<'_>>,
    known_head: Option<&(i64, String)>,
) -> Result<Appended, Error> {
    let mut trusted = known_head.cloned();
    loop {
        match append_locked(pool, rows, replica, checkpoint, trusted.take()).await {
            Err(AppendError::StaleHead(error)) => tracing::debug!(%error, "audit append on the known head refused; re-reading the head"),
            Err(AppendError::Store(error)) => return Err(error),
            Ok(appended) => return Ok(appended),
        }
    }
}

/// One append transaction under the advisory lock (taken in the same round trip as `BEGIN`),
/// sealing onto `head` when given, else onto the head read inside the lock.
async fn append_locked(
    pool: &PgPool,
    rows: &mut [Row],
    replica: &str,
    checkpoint: Option<Sign<'_>>,
    head: Option<(i64, String)>,
) -> Result<Appended, AppendError> {
    let trusted = head.is_some();
    let mut tx = pool.begin_with(PG_BEGIN_LOCKED.as_str()).await.map_err(Error::from)?;
    let head = match head {
        Some(head) => head,
        None => sqlx::query_as::<_, (i64, String)>("SELECT seq, row_hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::from)?
            .unwrap_or((0, GENESIS.to_owned())),
    };
    let Sealed { seqs, head: (seq, hash), json } = seal_onto(rows, head, true);
    for json in &json {
        if let Err(error) = sqlx::query(POSTGRES_INSERT.as_str()).bind(json.as_str()).execute(&mut *tx).await {
            return Err(if trusted { AppendError::StaleHead(error) } else { AppendError::Store(error.into()) });
        }
    }
    let mut written = None;
    if let Some(sign) = checkpoint {
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(row_count) FROM audit_checkpoint").fetch_one(&mut *tx).await.map_err(Error::from)?;
        if seq > latest.unwrap_or(0) {
            let ts_us = super::now_us();
            let token = sign(seq, &hash, ts_us)?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO audit_checkpoint (ts_us, row_count, head_hash, replica, token) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(ts_us)
            .bind(seq)
            .bind(hash.clone())
            .bind(replica.to_owned())
            .bind(token.clone())
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::from)?;
            written = Some(CheckpointRow { id, ts_us, row_count: seq, head_hash: hash.clone(), token });
        }
    }
    tx.commit().await.map_err(Error::from)?;
    Ok(Appended { seqs, head: (seq, hash), checkpoint: written })
}

/// Why one locked append failed.
enum AppendError {
    /// The INSERT onto a remembered head was refused (another replica moved the head).
    StaleHead(sqlx::Error),
    /// Anything else: the append failed and nothing was written.
    Store(Error),
}

impl From<Error> for AppendError {
    fn from(error: Error) -> Self {
        Self::Store(error)
    }
}

/// `BEGIN` and the append lock in one round trip (a simple query of two statements). READ
/// COMMITTED whatever the server's default: each later statement (the head read) takes its
/// snapshot after the lock is held, where REPEATABLE READ would keep the one taken before.
static PG_BEGIN_LOCKED: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({PG_APPEND_LOCK})"));

/// Rows sealed onto a chain head, ready to insert.
pub(super) struct Sealed {
    /// `seq` of each row, in order.
    pub(super) seqs: Vec<i64>,
    /// The new head, `(seq, row_hash)`.
    pub(super) head: (i64, String),
    /// When sealed with the JSON form: the rows as JSON arrays of objects, one per INSERT of
    /// at most [`INSERT_CHUNK`] rows. Empty otherwise.
    pub(super) json: Vec<String>,
}

/// Seals `rows` in order onto the chain head `(seq, row_hash)`, rendering them as JSON arrays
/// when `json` (PostgreSQL inserts JSON; the content each hash covers is serialized once for
/// both).
pub(super) fn seal_onto(rows: &mut [Row], head: (i64, String), json_form: bool) -> Sealed {
    let (mut seq, mut hash) = head;
    let mut seqs = Vec::with_capacity(rows.len());
    let mut json = Vec::new();
    for chunk in rows.chunks_mut(INSERT_CHUNK) {
        let mut array = Vec::with_capacity(if json_form { chunk.len() * 768 } else { 0 });
        for row in chunk.iter_mut() {
            seq += 1;
            if json_form {
                array.push(if array.is_empty() { b'[' } else { b',' });
            }
            row.seal(seq, &hash, json_form.then_some(&mut array));
            hash.clone_from(&row.row_hash);
            seqs.push(seq);
        }
        if json_form {
            array.push(b']');
            // serde_json wrote it and the hashes are hex: always UTF-8.
            json.push(String::from_utf8(array).unwrap_or_default());
        }
    }
    Sealed { seqs, head: (seq, hash), json }
}

/// Columns of `audit_log`.
pub(super) const COLUMN_COUNT: usize = 27;

/// Row counts of the SQLite INSERT statements: exact up to 8, then at most 25 % spare. The
/// statement is one of these fixed row counts, the spare rows bound as NULL and filtered out,
/// so that the connection keeps at most that many prepared statements: one per batch size
/// would re-prepare whenever a size fell out of the statement cache, and cache a program for
/// each (a few KiB per row of the statement). Unpacking one bound JSON array with `json_each`,
/// as on PostgreSQL, was measured slower on SQLite (it parses each object once per column).
pub(super) const SQLITE_SHAPES: [usize; 28] = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, INSERT_CHUNK];

/// The SQLite INSERT for each of [`SQLITE_SHAPES`]: rows whose `seq` is NULL are the spare ones.
pub(super) static SQLITE_INSERTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    let row = format!("({})", vec!["?"; COLUMN_COUNT].join(", "));
    SQLITE_SHAPES
        .iter()
        .map(|&rows| {
            format!("INSERT INTO audit_log ({COLUMNS}) SELECT * FROM (VALUES {}) WHERE column1 IS NOT NULL", vec![row.as_str(); rows].join(", "))
        })
        .collect()
});

/// The PostgreSQL INSERT: one bound JSON array typed by the table's own row type, so that every
/// batch size shares one prepared statement and one bind, rather than a statement per row
/// count with 27 binds per row. JSON strings, numbers and `null` come back as exactly the TEXT,
/// BIGINT and NULL values that were hashed.
static POSTGRES_INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("INSERT INTO audit_log ({COLUMNS}) SELECT {COLUMNS} FROM json_populate_recordset(NULL::audit_log, $1::json)")
});

// === impl Embedded ===

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(*version, Cow::Borrowed(*description), MigrationType::Simple, Cow::Borrowed(*sql), false)
                })
                .collect())
        })
    }
}
