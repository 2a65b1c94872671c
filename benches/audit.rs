//! Audit append: `cargo bench --bench audit`.
//!
//! - First a report: rows/s committed (intent + outcome per request; each writer awaits its
//!   intent, the outcome is queued as in the gateway, and every row is durable before the
//!   clock stops) with 1, 16 and 64 concurrent writers, with the CPU time per row of the whole
//!   bench process, on SQLite (a file in a temporary directory, WAL, `synchronous=FULL`) and
//!   on PostgreSQL when `PORTCULLIS_TEST_POSTGRES_URL` is set (scripts/start-services.sh
//!   starts one with `fsync=off`, so those numbers measure the gateway side, not disk flushes).
//! - Then criterion's `audit_append/sqlite_full` and `audit_append/sqlite_normal`: the time of
//!   one call's audit on SQLite — its intent appended and awaited (durable), its outcome
//!   queued — by one writer, with `synchronous=FULL` (the default: one flush per commit) and
//!   `NORMAL` (no flush: what the rows themselves cost).
//!
//! Without `--bench` (`cargo test --benches`) it runs one short SQLite pass and each criterion
//! bench once, as a smoke test.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::Criterion;
use portcullis::{
    audit::{
        AuditConfig, AuditLog, AuditSettings, FailureMode, IntentRecord, OutcomeRecord, OutcomeStatus, PolicyDecision,
        SqliteDurability,
    },
    auth::issuer::{EmbeddedIssuer, SigningKey},
};
use sqlx::{Connection as _, Executor as _};

/// CPU time this process has used (user + system), in seconds, from `/proc/self/stat`
/// (clock ticks of 10 ms); `0.0` where that file cannot be read.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    ticks as f64 / 100.0
}

/// One call's audit, as the gateway makes it: the intent appended and awaited (durable), then
/// the outcome queued.
async fn append(log: &AuditLog, request_id: String, i: usize) {
    let handle = log
        .intent(IntentRecord {
            request_id,
            method: "tools/call".into(),
            subject: Some("bench".into()),
            upstream: Some("demo".into()),
            target: Some("demo__get_forecast".into()),
            arguments: Some(serde_json::json!({"city": "Paris", "days": i % 7})),
            decision: Some(PolicyDecision::Allow),
            ..IntentRecord::default()
        })
        .await
        .unwrap();
    handle.record(OutcomeRecord { status: OutcomeStatus::Ok, error_code: None, error_message: None, findings: None, latency: None });
}

/// Criterion's `audit_append` group (see the module docs).
fn append_group(runtime: &tokio::runtime::Runtime, issuer: &Arc<EmbeddedIssuer>) {
    let mut criterion = Criterion::default().sample_size(20).configure_from_args();
    let mut group = criterion.benchmark_group("audit_append");
    for (name, durability) in [("sqlite_full", SqliteDurability::Full), ("sqlite_normal", SqliteDurability::Normal)] {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            url: Some(format!("sqlite://{}", dir.path().join("audit.db").display())),
            failure_mode: FailureMode::FailClosed,
            sqlite_synchronous: durability,
            ..AuditConfig::default()
        };
        let settings = AuditSettings::from_config(&config, std::path::Path::new("unused")).unwrap();
        let log = runtime.block_on(AuditLog::open(&settings, issuer.clone())).unwrap();
        let mut i = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                runtime.block_on(append(&log, format!("c-{i}"), i));
            });
        });
        runtime.block_on(async {
            log.flush().await;
            log.close(Duration::from_secs(10)).await;
        });
    }
    group.finish();
    criterion.final_summary();
}

/// Rows per second committed and rows written, and CPU microseconds per row.
async fn run(url: &str, writers: usize, duration: Duration, issuer: Arc<EmbeddedIssuer>) -> (f64, usize, f64) {
    let config = AuditConfig { url: Some(url.to_owned()), failure_mode: FailureMode::FailClosed, ..AuditConfig::default() };
    let settings = AuditSettings::from_config(&config, std::path::Path::new("unused")).unwrap();
    let log = Arc::new(AuditLog::open(&settings, issuer).await.unwrap());
    let start = Instant::now();
    let cpu_start = process_cpu_seconds();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut rows = 0usize;
            let mut i = 0usize;
            while start.elapsed() < duration {
                append(&log, format!("{w}-{i}"), i).await;
                rows += 2;
                i += 1;
            }
            rows
        }));
    }
    let mut rows = 0;
    for task in tasks {
        rows += task.await.unwrap();
    }
    // Every queued outcome committed before the clock stops.
    log.flush().await;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_us_per_row = (process_cpu_seconds() - cpu_start) * 1e6 / rows.max(1) as f64;
    Arc::into_inner(log).unwrap().close(Duration::from_secs(10)).await;
    (rows as f64 / elapsed, rows, cpu_us_per_row)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = SigningKey::load_or_generate(keys.path()).unwrap();
    let issuer = Arc::new(EmbeddedIssuer::new(key, "http://gw".into(), "http://gw/mcp".into(), Duration::from_secs(3600)));
    runtime.block_on(report(issuer.clone()));
    append_group(&runtime, &issuer);
}

/// The report (see the module docs).
async fn report(issuer: Arc<EmbeddedIssuer>) {
    let bench = std::env::args().any(|a| a == "--bench");
    let duration = if bench { Duration::from_secs(3) } else { Duration::from_millis(200) };
    let writer_counts: &[usize] = if bench { &[1, 16, 64] } else { &[4] };
    println!("backend     writers  rows/s committed  CPU µs/row  (rows in {:.1} s)", duration.as_secs_f64());
    for &writers in writer_counts {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let (rate, rows, cpu) = run(&url, writers, duration, issuer.clone()).await;
        println!("sqlite      {writers:>7}  {rate:>16.0}  {cpu:>10.1}  ({rows})");
    }
    if !bench {
        return;
    }
    let Ok(base) = std::env::var("PORTCULLIS_TEST_POSTGRES_URL") else {
        println!("postgres    skipped: PORTCULLIS_TEST_POSTGRES_URL not set (source <(bash scripts/start-services.sh env))");
        return;
    };
    for &writers in writer_counts {
        let name = format!("audit_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
        admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
        let (prefix, _) = base.rsplit_once('/').unwrap();
        let (rate, rows, cpu) = run(&format!("{prefix}/{name}"), writers, duration, issuer.clone()).await;
        println!("postgres    {writers:>7}  {rate:>16.0}  {cpu:>10.1}  ({rows})");
        let _ = admin.execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str()).await;
    }
}
