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
    store::{Appended, Sign, append_postgres},
};
use crate::auth::issuer::EmbeddedIssuer;

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

/// Outcome rows queued without waking the writer (module docs), and the intent handles still
/// open, whose outcomes are yet to come. Shared by the log and every writer it starts, so a
/// restarted writer takes up what a stopped one left.
#[derive(Default)]
pub(crate) struct Quiet {
    // Boxed: a row moves on into the writer's batch (`Item`) as the pointer it arrived as.
    #[allow(clippy::vec_box)]
    rows: std::sync::Mutex<Vec<Box<Row>>>,
    open_handles: std::sync::atomic::AtomicUsize,
}

// === impl Quiet ===

impl Quiet {
    /// Queues an outcome row; wakes nobody.
    pub(crate) fn push(&self, row: Box<Row>) {
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(row);
    }

    /// An intent handle was handed out.
    pub(crate) fn opened(&self) {
        self.open_handles.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// An intent handle's outcome was queued or sent.
    pub(crate) fn closed(&self) {
        self.open_handles.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether outcomes are queued or may still come.
    fn expecting(&self) -> bool {
        self.open_handles.load(std::sync::atomic::Ordering::Relaxed) > 0 || !self.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty()
    }

    /// Moves at most `room` queued rows, oldest first, into `batch`.
    fn take_into(&self, batch: &mut Vec<Item>, room: usize) {
        let mut rows = self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let take = rows.len().min(room);
        batch.extend(rows.drain(..take).map(|row| Item { row, reply: None, retry: true }));
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

/// A message to the writer.
pub(crate) enum Command {
    /// Append a row; answer on `reply` once committed (or failed).
    Append { row: Box<Row>, reply: Option<oneshot::Sender<Result<i64, Error>>>, retry: bool },
    /// Write everything queued and a final checkpoint, then answer.
    Flush { reply: oneshot::Sender<()> },
}

/// Where the writer appends.
pub(crate) enum Sink {
    /// SQLite: the writer thread's own connection (the writer must run on a thread of its own:
    /// every append blocks it).
    Sqlite(SqliteAppender),
    /// PostgreSQL: the pool, used from a task on the gateway's runtime.
    Postgres(sqlx::PgPool),
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
    /// The chain head this writer last committed, `(seq, row_hash)`; `None` until the first
    /// commit and after a failed one.
    pub(crate) head: Option<(i64, String)>,
}

struct Item {
    row: Box<Row>,
    reply: Option<oneshot::Sender<Result<i64, Error>>>,
    retry: bool,
}

// === impl Sink ===

impl Sink {
    async fn append(
        &mut self,
        rows: &mut [Row],
        replica: &str,
        checkpoint: Option<Sign<'_>>,
        known_head: Option<&(i64, String)>,
    ) -> Result<Appended, Error> {
        match self {
            Self::Sqlite(appender) => appender.append(rows, replica, checkpoint, known_head),
            Self::Postgres(pool) => append_postgres(pool, rows, replica, checkpoint, known_head).await,
        }
    }

    async fn ping(&mut self) -> Result<(), Error> {
        match self {
            Self::Sqlite(appender) => appender.ping(),
            Self::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(&*pool).await?;
                Ok(())
            }
        }
    }

    async fn close(self) {
        match self {
            Self::Sqlite(appender) => drop(appender),
            Self::Postgres(pool) => pool.close().await,
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
            } else if self.quiet.expecting() {
                OUTCOME_LINGER
            } else {
                Duration::from_secs(1)
            };
            if !closed {
                tokio::select! {
                    command = self.rx.recv() => match command {
                        Some(command) => Self::take(command, &mut batch, &mut flushes),
                        None => closed = true,
                    },
                    () = tokio::time::sleep(wait) => {}
                }
            } else if !retry.is_empty() {
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            self.drain(&mut batch, &mut flushes);
            // Under load (the last commit carried several intents), let the runtime run the
            // tasks that are ready before committing: their rows join this transaction
            // instead of forming the next one. Costs nothing at low concurrency.
            if matches!(self.sink, Sink::Postgres(_)) && last_intents >= BUSY_INTENTS && batch.len() < self.batch_max_rows {
                for _ in 0..BUSY_YIELDS {
                    tokio::task::yield_now().await;
                    self.drain(&mut batch, &mut flushes);
                }
            }
            if !self.batch_linger.is_zero() && !batch.is_empty() && batch.len() < self.batch_max_rows {
                tokio::time::sleep(self.batch_linger).await;
                self.drain(&mut batch, &mut flushes);
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
            if !batch.is_empty() && !has_intent && !checkpoint_due && retry.is_empty() && batch.len() < self.batch_max_rows {
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
    /// queue's outcomes.
    fn drain(&mut self, batch: &mut Vec<Item>, flushes: &mut Vec<oneshot::Sender<()>>) {
        while batch.len() < self.batch_max_rows {
            match self.rx.try_recv() {
                Ok(command) => Self::take(command, batch, flushes),
                Err(_) => break,
            }
        }
        self.quiet.take_into(batch, self.batch_max_rows.saturating_sub(batch.len()));
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
        let result = self.sink.append(&mut rows, &self.replica, checkpoint_due.then_some(&sign as _), self.head.as_ref()).await;
        if let Some(metrics) = self.metrics.get() {
            metrics.record_audit_commit(started.elapsed());
        }
        match result {
            Ok(appended) => {
                tracing::debug!(rows = appended.seqs.len(), head = appended.head.0, "audit batch committed");
                self.head = Some(appended.head.clone());
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
                // Whether the commit landed is unknown: read the head again next time.
                self.head = None;
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
