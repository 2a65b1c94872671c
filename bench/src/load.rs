//! Closed-loop load: `concurrency` sessions, each on its own keep-alive connection, each
//! sending its next request as soon as the previous answer is in; first a warm-up, then the
//! measured window.
//!
//! A request counts (throughput and latency histogram) when it *completes* inside the window,
//! as wrk counts. Latency is service time as the client sees it; being closed-loop, the
//! harness does not correct for coordinated omission, which is fine for comparing set-ups
//! that are driven identically.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::{task::JoinSet, time::Instant};

use crate::mcp::{Conn, Endpoint, Expect, Session};

/// Deep checks (a second parse of the result) on large results happen on every n-th call.
const DEEP_CHECK_EVERY: u64 = 16;

/// One kind of request the load generator repeats.
#[derive(Clone, Debug)]
pub(crate) struct Work {
    /// JSON-RPC method.
    pub(crate) method: &'static str,
    /// `params`, serialized once.
    pub(crate) params: String,
    /// What each answer must contain.
    pub(crate) expect: Expect,
}

/// Latency histogram (nanoseconds) and counts of one or more workers.
pub(crate) struct Stats {
    pub(crate) histogram: Histogram<u64>,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

/// The outcome of one measured window, with the probe's readings at its start and end.
pub(crate) struct Cell<T> {
    pub(crate) stats: Stats,
    pub(crate) window: Duration,
    pub(crate) before: T,
    pub(crate) after: T,
}

// === impl Work ===

impl Work {
    /// `tools/call` of `{prefix}echo` with a short text.
    pub(crate) fn echo(prefix: &str) -> Self {
        let text = "portcullis-bench: a small echo payload";
        Self {
            method: "tools/call",
            params: serde_json::json!({"name": format!("{prefix}echo"), "arguments": {"text": text}}).to_string(),
            expect: Expect::Text(text.to_owned()),
        }
    }

    /// `tools/call` of `{prefix}large_result` returning `bytes` of text.
    pub(crate) fn large(prefix: &str, bytes: usize) -> Self {
        Self {
            method: "tools/call",
            params: serde_json::json!({"name": format!("{prefix}large_result"), "arguments": {"bytes": bytes}}).to_string(),
            expect: Expect::TextLen(bytes),
        }
    }

    /// `tools/list`, expecting `count` tools when given.
    pub(crate) fn tools_list(count: Option<usize>) -> Self {
        Self { method: "tools/list", params: "{}".to_owned(), expect: Expect::Tools(count) }
    }

    fn deep_check(&self, call: u64) -> bool {
        match self.expect {
            Expect::TextLen(_) => call.is_multiple_of(DEEP_CHECK_EVERY),
            Expect::Text(_) | Expect::Tools(_) => true,
        }
    }
}

// === impl Stats ===

impl Stats {
    // Invariant: the bounds are constants that hdrhistogram accepts (low ≥ 1, high ≥ 2 × low,
    // 0..=5 significant digits), so creation cannot fail.
    #[allow(clippy::expect_used)]
    pub(crate) fn new() -> Self {
        // 1 µs to 60 s in nanoseconds at 3 significant digits; values outside are clamped.
        let histogram = Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("constant histogram bounds are valid");
        Self { histogram, requests: 0, errors: 0, first_error: None }
    }

    pub(crate) fn record(&mut self, latency: Duration) {
        self.histogram.saturating_record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        self.requests += 1;
    }

    pub(crate) fn merge(&mut self, other: Self) {
        let _ = self.histogram.add(&other.histogram);
        self.requests += other.requests;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Latency at quantile `q` (0..=1), in milliseconds.
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1e6
    }
}

/// Opens `count` sessions, each on its own connection.
pub(crate) async fn open_sessions(endpoint: &Endpoint, count: usize) -> anyhow::Result<Vec<(Conn, Session)>> {
    let mut opening = JoinSet::new();
    for _ in 0..count {
        let endpoint = endpoint.clone();
        opening.spawn(async move {
            let mut conn = Conn::open(&endpoint).await?;
            let session = conn.initialize().await?;
            anyhow::Ok((conn, session))
        });
    }
    let mut sessions = Vec::with_capacity(count);
    while let Some(opened) = opening.join_next().await {
        sessions.push(opened.context("session task")?.with_context(|| format!("opening a session at {}", endpoint.addr))?);
    }
    Ok(sessions)
}

/// Drives `work` at `concurrency` for `warmup`, then measures for `duration`. `probe` is read
/// at the start and at the end of the measured window (CPU counters and the like).
pub(crate) async fn run<T>(
    endpoint: &Endpoint,
    work: &Work,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    probe: impl Fn() -> T,
) -> anyhow::Result<Cell<T>> {
    let sessions = open_sessions(endpoint, concurrency).await?;
    let start = Instant::now() + warmup;
    let end = start + duration;
    let work = Arc::new(work.clone());
    let mut workers = JoinSet::new();
    for (conn, session) in sessions {
        workers.spawn(worker(conn, session, work.clone(), start, end));
    }
    tokio::time::sleep_until(start).await;
    let before = probe();
    tokio::time::sleep_until(end).await;
    let after = probe();
    let mut stats = Stats::new();
    while let Some(done) = workers.join_next().await {
        stats.merge(done.context("worker task")?);
    }
    Ok(Cell { stats, window: duration, before, after })
}

async fn worker(mut conn: Conn, mut session: Session, work: Arc<Work>, start: Instant, end: Instant) -> Stats {
    let mut stats = Stats::new();
    let mut call = 0_u64;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let deep = work.deep_check(call);
        call += 1;
        let result = conn.request(&mut session, work.method, &work.params, &work.expect, deep).await;
        let done = Instant::now();
        let counted = done >= start && done <= end;
        match result {
            Ok(()) if counted => stats.record(done - sent),
            Ok(()) => {}
            Err(error) => {
                // Warm-up errors are not the cell's: neither counted nor reported.
                if counted {
                    stats.errors += 1;
                    stats.first_error.get_or_insert_with(|| format!("{error:#}"));
                }
                if conn.is_closed() && conn.reopen().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    conn.close(session).await;
    stats
}
