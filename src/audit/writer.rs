//! The single writer: group commit.
//!
//! Callers send rows on an unbounded channel and (for intents) await a oneshot. The writer takes
//! everything queued (up to `batch_max_rows`), commits it in one transaction and answers every
//! waiter; while a commit is in flight the next batch forms, so the number of transactions per
//! second, not rows, is what the database has to sustain.
//!
//! Outcome rows are not worth a transaction of their own: a batch holding only outcomes waits
//! up to [`OUTCOME_LINGER`] for the next intent (or flush, checkpoint or shutdown) and is
//! committed with it. At low concurrency that halves the commits (one fsync per call instead
//! of two), and the next call's intent no longer queues behind the last call's outcome.
//!
//! Nor are they worth waking the writer for. Queued outcomes ([`super::IntentHandle::record`],
//! and the `abandoned` one of a dropped handle) go to the [`Quiet`] queue, which the writer
//! takes from whenever it wakes; a push wakes nobody. While intent handles are open the
//! writer never sleeps longer than [`OUTCOME_LINGER`], so an outcome with no intent after it
//! is committed within twice that. At one call at a time this saves the writer thread a wake
//! and a sleep per call: on these VMs a context switch costs tens of microseconds of CPU, and
//! the audit's share of a call's CPU is mostly switches (bench/RESULTS.md, seventh session).
//!
//! On SQLite a request may commit its own intent: the **group-commit leader**. When it is the
//! only call in flight and the connection is free ([`Lead::try_commit`]), the request's own
//! thread appends the intent, after the queued outcomes, in one autocommit INSERT. That saves
//! the trip to the writer thread and back: a wake of the writer, a park and wake of the
//! request's worker, and the writer's sleep (bench/RESULTS.md, eighth session: at one call at
//! a time 11.7 → 8.7 context switches per call). With more calls in flight the writer thread
//! batches intents as before. A leader never waits: a busy connection, an unknown head or an
//! INSERT refused before writing anything hands the rows to the writer; any other failure
//! refuses the call, as a failed commit of the writer's does. While the writer retries failed
//! outcomes leaders stand aside (those go first). Since a leader's call sends the writer
//! nothing, an outcome queued while the writer sleeps idle wakes it. The cost is a runtime
//! worker blocked for one commit; `audit.sqlite_leader_commit = false` turns leaders off, and
//! they are off while `batch_linger` is set.
//!
//! On PostgreSQL the writer is a task on the gateway's runtime: under load (the last commit
//! carried [`BUSY_INTENTS`] intents or more) it yields to the runtime [`BUSY_YIELDS`] times
//! before committing, so that rows of requests already running join this transaction rather
//! than the next: fewer, larger commits when the CPU is the bound, no added wait when the
//! gateway is idle. On SQLite the writer runs on a thread of its own with its own connection
//! ([`super::sqlite`]): a commit blocks only that thread, and the rows that arrive meanwhile
//! form the next batch without any yielding.
//!
//! Invariants: a waiter is answered `Ok` only after its row's transaction committed. A failed
//! intent is answered with the error and dropped (its call is refused, so nothing happened that
//! the trail misses). A failed outcome is answered with the error and kept for retry, ahead of
//! newer rows, until it commits or the retry buffer is full (then it is logged at `error` with
//! its request id: loud, never silent).

use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};

use super::{
    Error, Health,
    row::Row,
    sqlite::SqliteAppender,
    store::{Appended, INSERT_CHUNK, Sign, append_postgres},
};
use crate::{auth::issuer::EmbeddedIssuer, telemetry::AuditCommitter};

/// Outcomes kept for retry at most.
const RETRY_CAPACITY: usize = 100_000;
/// Wait between retries while the store fails.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// Longest time an outcome row waits to share a transaction with an intent.
pub(crate) const OUTCOME_LINGER: Duration = Duration::from_millis(20);
/// Intents in the last commit from which the writer counts as busy.
const BUSY_INTENTS: usize = 4;
/// Times a busy writer yields to ready tasks before committing.
const BUSY_YIELDS: usize = 2;
/// Idle time after which the store is probed with `SELECT 1`.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Outcome rows queued without waking the writer (module docs), each with the time it was
/// queued, and the intent handles still open, whose outcomes are yet to come. Shared by the log
/// and every writer it starts, so a restarted writer takes up what a stopped one left.
#[derive(Default)]
pub(crate) struct Quiet {
    // Boxed: a row moves on into the writer's batch (`Item`) as the pointer it arrived as.
    rows: std::sync::Mutex<Vec<(Instant, Box<Row>)>>,
    open_handles: std::sync::atomic::AtomicUsize,
    /// Set while the writer sleeps its long idle sleep, with nothing queued or expected: the
    /// next push then wakes it through `wake` (a leader's call sends the writer nothing).
    idle: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

// === impl Quiet ===

impl Quiet {
    /// Queues an outcome row; wakes nobody, unless the writer is in its long idle sleep.
    pub(crate) fn push(&self, row: Box<Row>) {
        self.lock().push((Instant::now(), row));
        if self.idle.swap(false, std::sync::atomic::Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// An intent handle was handed out.
    pub(crate) fn opened(&self) {
        self.open_handles.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// An intent handle's outcome was queued or sent.
    pub(crate) fn closed(&self) {
        self.open_handles.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, Box<Row>)>> {
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether outcomes are queued or may still come.
    fn expecting(&self) -> bool {
        self.open_handles.load(std::sync::atomic::Ordering::Relaxed) > 0 || !self.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// When the oldest queued row was queued.
    fn oldest(&self) -> Option<Instant> {
        self.lock().first().map(|(queued, _)| *queued)
    }

    /// Whether the oldest queued row has waited [`OUTCOME_LINGER`] for an intent to share a
    /// commit with.
    fn overdue(&self) -> bool {
        self.oldest().is_some_and(|queued| queued.elapsed() >= OUTCOME_LINGER)
    }

    /// Takes at most `room` queued rows, oldest first, as the pointers they were queued as.
    #[allow(clippy::vec_box)]
    fn take(&self, room: usize) -> Vec<Box<Row>> {
        let mut rows = self.lock();
        let take = rows.len().min(room);
        rows.drain(..take).map(|(_, row)| row).collect()
    }

    /// Puts rows a leader could not commit back at the head of the queue, overdue: the writer
    /// takes them at its next wake.
    fn put_back(&self, taken: Vec<Row>) {
        let overdue = Instant::now().checked_sub(OUTCOME_LINGER).unwrap_or_else(Instant::now);
        let mut rows = self.lock();
        let later = std::mem::take(&mut *rows);
        rows.extend(taken.into_iter().map(|row| (overdue, Box::new(row))));
        rows.extend(later);
    }
}

/// An intent handle being made: counted open ([`Quiet::opened`]) from creation, and closed
/// again on drop unless [`Opening::handed_out`] (the handle then closes it with its outcome).
pub(crate) struct Opening(Option<Arc<Quiet>>);

// === impl Opening ===

impl Opening {
    pub(crate) fn new(quiet: Arc<Quiet>) -> Self {
        quiet.opened();
        Self(Some(quiet))
    }

    /// The handle exists: its outcome closes the count.
    pub(crate) fn handed_out(mut self) {
        self.0 = None;
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(quiet) = self.0.take() {
            quiet.closed();
        }
    }
}

/// The SQLite connection and the chain head, shared by the writer thread and group-commit
/// leaders (module docs): whoever holds the lock appends, and the head it leaves is where the
/// next append seals onto.
pub(crate) struct Lead {
    shared: std::sync::Mutex<Appender>,
    /// The writer holds failed outcomes for retry: they go first, so leaders stand aside.
    backlog: std::sync::atomic::AtomicBool,
}

/// What [`Lead`]'s lock guards.
struct Appender {
    sqlite: SqliteAppender,
    /// The chain head last committed through this connection, `(seq, row_hash)`; `None` until
    /// the first commit and after a failed one (then the writer re-reads it).
    head: Option<(i64, String)>,
}

// === impl Lead ===

impl Lead {
    pub(crate) fn new(sqlite: SqliteAppender) -> Self {
        Self { shared: std::sync::Mutex::new(Appender { sqlite, head: None }), backlog: std::sync::atomic::AtomicBool::new(false) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Appender> {
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits `intent`, after the outcomes queued in `quiet`, on the calling thread, if it is
    /// the only call in flight (the only intent handle open or being made; the caller checks
    /// that no other intent is pending), the connection is free at once and the head is
    /// known. Otherwise, or when the INSERT is refused before writing anything (busy, locked,
    /// or the head moved), gives the intent back for the writer ([`Led::Declined`]). Any other
    /// failure may or may not have written the rows, so the intent fails as a failed commit
    /// of the writer's does ([`Led::Failed`]: the call is refused, never retried). Outcomes
    /// taken and not committed go back to `quiet` (retried, as the writer retries them).
    /// Blocks the caller for one commit (an fsync with `synchronous=FULL`).
    ///
    /// Why only one call: with more in flight the writer's batches share a commit among
    /// several calls, and a leader (one call per commit, a runtime worker blocked meanwhile)
    /// costs more than it saves (bench/RESULTS.md, eighth session).
    pub(crate) fn try_commit(
        &self,
        intent: Box<Row>,
        quiet: &Quiet,
        metrics: &std::sync::OnceLock<crate::telemetry::Metrics>,
    ) -> Led {
        if quiet.open_handles.load(std::sync::atomic::Ordering::Relaxed) > 1 || self.backlog.load(std::sync::atomic::Ordering::Relaxed) {
            return Led::Declined(intent);
        }
        let mut guard = match self.shared.try_lock() {
            Ok(guard) => guard,
            Err(_) => return Led::Declined(intent),
        };
        let appender = &mut *guard;
        let Some(head) = &appender.head else { return Led::Declined(intent) };
        let mut rows: Vec<Row> = quiet.take(INSERT_CHUNK - 1).into_iter().map(|row| *row).collect();
        rows.push(*intent);
        let started = std::time::Instant::now();
        let result = appender.sqlite.append_on_head(&mut rows, head);
        if let Some(metrics) = metrics.get() {
            metrics.record_audit_commit(AuditCommitter::Leader, started.elapsed());
        }
        match result {
            Ok(appended) => {
                let seq = appended.head.0;
                appender.head = Some(appended.head);
                Led::Committed(seq)
            }
            Err(error) => {
                // The writer re-reads the head before it appends again.
                appender.head = None;
                // The intent is the last row: pushed above.
                let intent = rows.pop().unwrap_or_default();
                quiet.put_back(rows);
                if nothing_written(&error) {
                    tracing::debug!(%error, "audit append by a leader refused; handing the rows to the writer");
                    Led::Declined(Box::new(intent))
                } else {
                    tracing::error!(%error, request_id = %intent.request_id, "audit store write failed (leader)");
                    Led::Failed(Error::Unavailable { reason: error.to_string() })
                }
            }
        }
    }
}

/// What became of an intent offered to [`Lead::try_commit`].
pub(crate) enum Led {
    /// Committed: the intent's `seq`.
    Committed(i64),
    /// Not led, nothing written: the writer's to commit.
    Declined(Box<Row>),
    /// The commit failed and may have written the row: refuse the call.
    Failed(Error),
}

/// Whether a failed leader's INSERT certainly wrote nothing: SQLite refused it for the write
/// lock (busy, locked) or for the `seq` primary key (the head moved).
pub(super) fn nothing_written(error: &Error) -> bool {
    use rusqlite::ErrorCode::{ConstraintViolation, DatabaseBusy, DatabaseLocked};
    matches!(error, Error::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) if matches!(failure.code, DatabaseBusy | DatabaseLocked | ConstraintViolation))
}

/// A message to the writer.
pub(crate) enum Command {
    /// Append a row; answer on `reply` once committed (or failed).
    Append { row: Box<Row>, reply: Option<oneshot::Sender<Result<i64, Error>>>, retry: bool },
    /// Write everything queued and a final checkpoint, then answer.
    Flush { reply: oneshot::Sender<()> },
}

/// Where the writer appends.
pub(crate) enum Sink {
    /// SQLite: the connection shared with leaders (the writer must run on a thread of its own:
    /// every append blocks it).
    Sqlite(Arc<Lead>),
    /// PostgreSQL: the pool, used from a task on the gateway's runtime, and the chain head
    /// this writer last committed (`None` until the first commit and after a failed one).
    Postgres { pool: sqlx::PgPool, head: Option<(i64, String)> },
}

pub(crate) struct Writer {
    pub(crate) sink: Sink,
    pub(crate) rx: mpsc::UnboundedReceiver<Command>,
    /// Outcomes queued without a wake-up.
    pub(crate) quiet: Arc<Quiet>,
    pub(crate) health: watch::Sender<Health>,
    pub(crate) signer: Arc<EmbeddedIssuer>,
    pub(crate) batch_max_rows: usize,
    pub(crate) batch_linger: Duration,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) fail_open: bool,
    pub(crate) replica: String,
    pub(crate) pending: Arc<std::sync::atomic::AtomicUsize>,
    /// Receives each append's duration once the gateway attached its metrics.
    pub(crate) metrics: Arc<std::sync::OnceLock<crate::telemetry::Metrics>>,
}

struct Item {
    row: Box<Row>,
    reply: Option<oneshot::Sender<Result<i64, Error>>>,
    retry: bool,
}

// === impl Sink ===

impl Sink {
    /// Appends `rows` onto the chain head this sink last committed (read from the store when
    /// unknown), and remembers the new head; forgets it on failure.
    async fn append(&mut self, rows: &mut [Row], replica: &str, checkpoint: Option<Sign<'_>>) -> Result<Appended, Error> {
        match self {
            Self::Sqlite(lead) => {
                let mut guard = lead.lock();
                let appender = &mut *guard;
                let result = appender.sqlite.append(rows, replica, checkpoint, appender.head.as_ref());
                appender.head = result.as_ref().ok().map(|appended| appended.head.clone());
                result
            }
            Self::Postgres { pool, head } => {
                let result = append_postgres(pool, rows, replica, checkpoint, head.as_ref()).await;
                *head = result.as_ref().ok().map(|appended| appended.head.clone());
                result
            }
        }
    }

    async fn ping(&mut self) -> Result<(), Error> {
        match self {
            Self::Sqlite(lead) => lead.lock().sqlite.ping(),
            Self::Postgres { pool, .. } => {
                sqlx::query("SELECT 1").execute(&*pool).await?;
                Ok(())
            }
        }
    }

    async fn close(self) {
        match self {
            Self::Sqlite(lead) => drop(lead),
            Self::Postgres { pool, .. } => pool.close().await,
        }
    }
}

// === impl Writer ===

impl Writer {
    pub(crate) async fn run(mut self) {
        let mut retry: VecDeque<Item> = VecDeque::new();
        let mut last_checkpoint = Instant::now();
        let mut last_activity = Instant::now();
        let mut closed = false;
        // Outcome rows held back for the next intent's transaction, and since when.
        let mut held: Vec<Item> = Vec::new();
        let mut held_since = Instant::now();
        let mut last_intents = 0usize;
        while !closed || !retry.is_empty() || !held.is_empty() || !self.quiet.is_empty() {
            let holding = !held.is_empty();
            let mut batch: Vec<Item> = std::mem::take(&mut held);
            let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
            let wait = if !batch.is_empty() {
                OUTCOME_LINGER.saturating_sub(held_since.elapsed())
            } else if !retry.is_empty() {
                RETRY_BACKOFF
            } else if let Some(queued) = self.quiet.oldest() {
                OUTCOME_LINGER.saturating_sub(queued.elapsed())
            } else if self.quiet.expecting() {
                OUTCOME_LINGER
            } else {
                // Idle: a push wakes it. Set before checking again, so a row queued in between
                // is seen here or wakes it.
                self.quiet.idle.store(true, std::sync::atomic::Ordering::Release);
                if self.quiet.expecting() { OUTCOME_LINGER } else { Duration::from_secs(1) }
            };
            if !closed {
                tokio::select! {
                    command = self.rx.recv() => match command {
                        Some(command) => Self::take(command, &mut batch, &mut flushes),
                        None => closed = true,
                    },
                    () = tokio::time::sleep(wait) => {}
                    () = self.quiet.wake.notified() => {}
                }
                self.quiet.idle.store(false, std::sync::atomic::Ordering::Release);
            } else if !retry.is_empty() {
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            // Whether queued outcomes were taken: never held for a later intent (they came
            // with one, or have waited the linger already).
            let mut took_quiet = self.drain(&mut batch, &mut flushes, closed);
            // Under load (the last commit carried several intents), let the runtime run the
            // tasks that are ready before committing: their rows join this transaction
            // instead of forming the next one. Costs nothing at low concurrency.
            if matches!(self.sink, Sink::Postgres { .. }) && last_intents >= BUSY_INTENTS && batch.len() < self.batch_max_rows {
                for _ in 0..BUSY_YIELDS {
                    tokio::task::yield_now().await;
                    took_quiet |= self.drain(&mut batch, &mut flushes, closed);
                }
            }
            if !self.batch_linger.is_zero() && !batch.is_empty() && batch.len() < self.batch_max_rows {
                tokio::time::sleep(self.batch_linger).await;
                took_quiet |= self.drain(&mut batch, &mut flushes, closed);
            }
            // Retried outcomes are older than anything just received: they go first (at most a
            // batch of them per transaction).
            if !retry.is_empty() {
                let take = retry.len().min(self.batch_max_rows);
                let mut merged: Vec<Item> = retry.drain(..take).collect();
                merged.append(&mut batch);
                batch = merged;
            }
            let checkpoint_due = last_checkpoint.elapsed() >= self.checkpoint_interval || !flushes.is_empty() || closed;
            let has_intent = batch.iter().any(|item| !item.retry);
            if !batch.is_empty() && !has_intent && !took_quiet && !checkpoint_due && retry.is_empty() && batch.len() < self.batch_max_rows {
                if !holding {
                    held_since = Instant::now();
                }
                if held_since.elapsed() < OUTCOME_LINGER {
                    held = batch;
                    continue;
                }
            }
            if batch.is_empty() && !checkpoint_due {
                if last_activity.elapsed() >= PROBE_INTERVAL {
                    last_activity = Instant::now();
                    match self.sink.ping().await {
                        Ok(()) => self.set_health(Health::Ready),
                        Err(error) => self.set_failed(&error),
                    }
                }
                continue;
            }
            last_activity = Instant::now();
            last_intents = self.commit(batch, checkpoint_due, &mut retry, &mut last_checkpoint).await;
            for flush in flushes {
                let _ = flush.send(());
            }
        }
        self.sink.close().await;
    }

    fn take(command: Command, batch: &mut Vec<Item>, flushes: &mut Vec<oneshot::Sender<()>>) {
        match command {
            Command::Append { row, reply, retry } => batch.push(Item { row, reply, retry }),
            Command::Flush { reply } => flushes.push(reply),
        }
    }

    /// Takes what is queued, up to `batch_max_rows`: the channel's commands, then the quiet
    /// queue's outcomes if they are due: when the batch carries an intent or a flush is asked
    /// for (they share its commit), when the writer is closing, or when the oldest has waited
    /// [`OUTCOME_LINGER`]. Fresh outcomes are left for a leader's commit (module docs). Returns
    /// whether it took queued outcomes.
    fn drain(&mut self, batch: &mut Vec<Item>, flushes: &mut Vec<oneshot::Sender<()>>, closing: bool) -> bool {
        while batch.len() < self.batch_max_rows {
            match self.rx.try_recv() {
                Ok(command) => Self::take(command, batch, flushes),
                Err(_) => break,
            }
        }
        let due = closing || !flushes.is_empty() || batch.iter().any(|item| !item.retry) || self.quiet.overdue();
        if !due {
            return false;
        }
        let taken = self.quiet.take(self.batch_max_rows.saturating_sub(batch.len()));
        let took = !taken.is_empty();
        batch.extend(taken.into_iter().map(|row| Item { row, reply: None, retry: true }));
        took
    }

    /// Commits `batch`, answers its waiters, and returns how many intents it carried.
    async fn commit(&mut self, batch: Vec<Item>, checkpoint_due: bool, retry: &mut VecDeque<Item>, last_checkpoint: &mut Instant) -> usize {
        let intents = batch.iter().filter(|i| !i.retry).count();
        // Move the rows out (no copy); a failed batch gets them back for its retry queue.
        let (mut rows, waiters): (Vec<Row>, Vec<_>) = batch.into_iter().map(|item| (*item.row, (item.reply, item.retry))).unzip();
        let signer = self.signer.clone();
        let sign = move |count: i64, head: &str, ts_us: i64| -> Result<String, Error> {
            super::sign_checkpoint(&signer, count, head, ts_us)
        };
        let started = std::time::Instant::now();
        let result = self.sink.append(&mut rows, &self.replica, checkpoint_due.then_some(&sign as _)).await;
        if let Some(metrics) = self.metrics.get() {
            metrics.record_audit_commit(AuditCommitter::Writer, started.elapsed());
        }
        match result {
            Ok(appended) => {
                tracing::debug!(rows = appended.seqs.len(), head = appended.head.0, "audit batch committed");
                self.set_health(Health::Ready);
                if checkpoint_due {
                    *last_checkpoint = Instant::now();
                }
                if let Some(checkpoint) = &appended.checkpoint {
                    // Also in the log, so a copy of each checkpoint lives outside the database.
                    tracing::info!(
                        id = checkpoint.id,
                        ts_us = checkpoint.ts_us,
                        rows = checkpoint.row_count,
                        head = %checkpoint.head_hash,
                        checkpoint = %checkpoint.token,
                        "audit checkpoint"
                    );
                }
                for ((reply, _), seq) in waiters.into_iter().zip(appended.seqs) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(seq));
                    }
                }
            }
            Err(error) => {
                // Whether the commit landed is unknown: the sink reads the head again next time.
                tracing::error!(%error, rows = rows.len(), "audit store write failed");
                self.set_failed(&error);
                for (row, (reply, is_retry)) in rows.into_iter().zip(waiters) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(Error::Unavailable { reason: error.to_string() }));
                    }
                    if is_retry {
                        if retry.len() < RETRY_CAPACITY {
                            retry.push_back(Item { row: Box::new(row), reply: None, retry: true });
                        } else {
                            tracing::error!(request_id = %row.request_id, kind = %row.kind, "audit retry buffer full: outcome record lost");
                        }
                    }
                }
            }
        }
        if let Sink::Sqlite(lead) = &self.sink {
            lead.backlog.store(!retry.is_empty(), std::sync::atomic::Ordering::Relaxed);
        }
        self.pending.fetch_sub(intents, std::sync::atomic::Ordering::Relaxed);
        intents
    }

    fn set_failed(&self, error: &Error) {
        let reason = format!("audit store unavailable: {error}");
        self.set_health(if self.fail_open { Health::Degraded { reason } } else { Health::Unready { reason } });
    }

    fn set_health(&self, health: Health) {
        self.health.send_if_modified(|current| {
            if *current == health {
                false
            } else {
                *current = health;
                true
            }
        });
    }
}
