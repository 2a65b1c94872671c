//! The SQLite append connection: one plain (synchronous) connection owned by the writer's own
//! thread, so that a commit is a call on that thread rather than a round trip to a connection
//! worker thread.
//!
//! Why: through sqlx, every SQLite statement is sent to the connection's worker thread and its
//! result sent back, and the pool hands the connection out and takes it back around it. Under
//! load those hand-offs wait for a CPU that the request tasks are using: at 16 concurrent calls
//! an append of ~7 rows took 213 µs with `synchronous=NORMAL` (no fsync), of which the SQLite
//! work is a few tens (bench/RESULTS.md, sixth session). Here the writer's thread binds and steps
//! the statement itself, and rows that arrive while it commits form the next batch.
//!
//! Reads (`verify`, `export`) and migrations still go through sqlx ([`super::store::Store`]);
//! the statements, shapes, sealing and the fall-back to the locked transaction are the ones
//! [`super::store`] documents.

use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, types::Null};
use secrecy::ExposeSecret as _;

use super::{
    AuditSettings, Error, SqliteDurability,
    row::{GENESIS, Row},
    store::{Appended, COLUMN_COUNT, CheckpointRow, INSERT_CHUNK, SQLITE_INSERTS, SQLITE_SHAPES, Sign, seal_onto},
};

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The writer's connection to the SQLite audit file (see the module docs).
pub(crate) struct SqliteAppender {
    conn: Connection,
}

// === impl SqliteAppender ===

impl SqliteAppender {
    /// Opens the file named by `settings.url` (which [`super::store::Store::connect`] has
    /// created and migrated) read-write, in WAL mode, with the configured `synchronous` and a
    /// 10 s busy timeout.
    ///
    /// # Errors
    /// [`Error::Store`] when the URL does not parse; [`Error::Sqlite`] when the file cannot be
    /// opened. (An in-memory URL is refused by [`AuditSettings::from_config`]: the writer and
    /// the readers would each see their own database.)
    pub(crate) fn open(settings: &AuditSettings) -> Result<Self, Error> {
        use std::str::FromStr as _;
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(settings.url.expose_secret())?;
        let path = options.get_filename();
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match settings.sqlite_synchronous {
                SqliteDurability::Full => "FULL",
                SqliteDurability::Normal => "NORMAL",
            },
        )?;
        conn.set_prepared_statement_cache_capacity(SQLITE_SHAPES.len() + 4);
        Ok(Self { conn })
    }

    /// Runs `SELECT 1` (the writer's idle probe).
    ///
    /// # Errors
    /// [`Error::Sqlite`] when the connection fails.
    pub(crate) fn ping(&self) -> Result<(), Error> {
        self.conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    /// Appends `rows` (their `seq` and hashes are assigned here; PostgreSQL's counterpart is
    /// [`super::store::append_postgres`]): with a known head, no checkpoint due and at most
    /// [`INSERT_CHUNK`] rows, one INSERT in autocommit sealed onto the known head (the `seq`
    /// primary key refuses it if another process moved the head); otherwise, or when that
    /// INSERT is refused, one `BEGIN IMMEDIATE` transaction that reads the head, inserts, and
    /// writes a signed checkpoint when one is due.
    ///
    /// # Errors
    /// [`Error::Sqlite`] when the transaction fails (nothing is then written), or the signing
    /// error of a due checkpoint.
    pub(crate) fn append(
        &mut self,
        rows: &mut [Row],
        replica: &str,
        checkpoint: Option<Sign<'_>>,
        known_head: Option<&(i64, String)>,
    ) -> Result<Appended, Error> {
        if let (Some((head_seq, head_hash)), None) = (known_head, checkpoint)
            && !rows.is_empty()
            && rows.len() <= INSERT_CHUNK
        {
            let sealed = seal_onto(rows, (*head_seq, head_hash.clone()), false);
            match insert(&self.conn, rows) {
                Ok(()) => return Ok(Appended { seqs: sealed.seqs, head: sealed.head, checkpoint: None }),
                // Most likely the head moved (another process appended); the locked path
                // re-reads it. A store that fails fails there too, with its own error.
                Err(error) => tracing::debug!(%error, "audit append on the known head refused; re-reading the head"),
            }
        }
        self.append_locked(rows, replica, checkpoint)
    }

    /// The leader's append ([`super::writer::Lead`]): `rows` (1 to [`INSERT_CHUNK`]) in one
    /// INSERT in autocommit sealed onto `head`, without waiting for a lock held by another
    /// process and without the locked fall-back: a leader runs on a request's worker thread,
    /// and whatever it cannot do at once the writer thread does.
    ///
    /// # Errors
    /// [`Error::Sqlite`] when the INSERT is refused (the head moved: a constraint violation;
    /// the file is locked: busy) and nothing was written, or when it failed otherwise (then the
    /// rows may have been written). Rows appended again are sealed again.
    pub(crate) fn append_on_head(&mut self, rows: &mut [Row], head: &(i64, String)) -> Result<Appended, Error> {
        let sealed = seal_onto(rows, head.clone(), false);
        self.conn.busy_timeout(Duration::ZERO)?;
        let inserted = insert(&self.conn, rows);
        // After the INSERT's own result: a failed reset must not make a committed INSERT look
        // failed (the rows would be written twice).
        if let Err(error) = self.conn.busy_timeout(BUSY_TIMEOUT) {
            tracing::warn!(%error, "audit connection's busy timeout not restored");
        }
        inserted?;
        Ok(Appended { seqs: sealed.seqs, head: sealed.head, checkpoint: None })
    }

    fn append_locked(&mut self, rows: &mut [Row], replica: &str, checkpoint: Option<Sign<'_>>) -> Result<Appended, Error> {
        // Dropped without `commit`, the transaction rolls back.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let head = tx
            .prepare_cached("SELECT seq, row_hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .or_else(|error| match error {
                rusqlite::Error::QueryReturnedNoRows => Ok((0, GENESIS.to_owned())),
                error => Err(error),
            })?;
        let sealed = seal_onto(rows, head, false);
        for chunk in rows.chunks(INSERT_CHUNK) {
            insert(&tx, chunk)?;
        }
        let (seq, hash) = sealed.head;
        let mut written = None;
        if let Some(sign) = checkpoint {
            let latest: Option<i64> = tx.query_row("SELECT MAX(row_count) FROM audit_checkpoint", [], |r| r.get(0))?;
            if seq > latest.unwrap_or(0) {
                let ts_us = super::now_us();
                let token = sign(seq, &hash, ts_us)?;
                let id: i64 = tx.query_row(
                    "INSERT INTO audit_checkpoint (ts_us, row_count, head_hash, replica, token) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                    rusqlite::params![ts_us, seq, hash, replica, token],
                    |r| r.get(0),
                )?;
                written = Some(CheckpointRow { id, ts_us, row_count: seq, head_hash: hash.clone(), token });
            }
        }
        tx.commit()?;
        Ok(Appended { seqs: sealed.seqs, head: (seq, hash), checkpoint: written })
    }
}

/// Inserts sealed `chunk` (at most [`INSERT_CHUNK`] rows) with the statement of the smallest
/// shape that holds it, the spare rows bound as NULL.
fn insert(conn: &Connection, chunk: &[Row]) -> rusqlite::Result<()> {
    let shape = SQLITE_SHAPES.iter().position(|&rows| rows >= chunk.len()).unwrap_or(SQLITE_SHAPES.len() - 1);
    let mut statement = conn.prepare_cached(&SQLITE_INSERTS[shape])?;
    let mut index = 0usize;
    let mut bind = |value: &dyn rusqlite::ToSql| {
        index += 1;
        statement.raw_bind_parameter(index, value)
    };
    for r in chunk {
        bind(&r.seq)?;
        bind(&r.ts_us)?;
        bind(&r.kind)?;
        bind(&r.request_id)?;
        bind(&r.replica)?;
        bind(&r.jsonrpc_id)?;
        bind(&r.trace_id)?;
        bind(&r.session_hash)?;
        bind(&r.issuer)?;
        bind(&r.subject)?;
        bind(&r.client_id)?;
        bind(&r.token_id)?;
        bind(&r.upstream)?;
        bind(&r.method)?;
        bind(&r.target)?;
        bind(&r.arguments)?;
        bind(&r.arguments_bytes)?;
        bind(&r.arguments_sha256)?;
        bind(&r.decision)?;
        bind(&r.rule)?;
        bind(&r.status)?;
        bind(&r.error_code)?;
        bind(&r.error_message)?;
        bind(&r.findings)?;
        bind(&r.latency_us)?;
        bind(&r.prev_hash)?;
        bind(&r.row_hash)?;
    }
    for _ in chunk.len() * COLUMN_COUNT..SQLITE_SHAPES[shape] * COLUMN_COUNT {
        bind(&Null)?;
    }
    statement.raw_execute()?;
    Ok(())
}
