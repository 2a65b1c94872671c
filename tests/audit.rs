//! Audit trail against real databases: SQLite files, and a real PostgreSQL server
//! (`PORTCULLIS_TEST_POSTGRES_URL`, started by `scripts/start-services.sh`). Postgres tests fail
//! without that URL unless `PORTCULLIS_SKIP_POSTGRES=1` is set explicitly.
//!
//! For each backend: an intact record verifies; editing a row (triggers dropped), deleting a
//! row, swapping two rows and cutting the tail past a checkpoint each fail verification naming
//! the row; the triggers refuse changes; a store that cannot write refuses calls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use portcullis::{
    audit::{
        AuditConfig, AuditLog, AuditSettings, Broken, FailureMode, Health, IntentRecord, OutcomeRecord, OutcomeStatus,
        PolicyDecision, Problem, VerifyOutcome,
    },
    auth::issuer::{EmbeddedIssuer, SigningKey},
};
use serde_json::json;
use sqlx::{Connection as _, Executor as _};
use tempfile::TempDir;

/// A fresh, empty audit database of one backend.
struct Db {
    url: String,
    postgres: bool,
    _dir: TempDir,
}

fn postgres_base() -> Option<String> {
    match std::env::var("PORTCULLIS_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("PORTCULLIS_SKIP_POSTGRES").as_deref() == Ok("1") => None,
        Err(_) => panic!(
            "PORTCULLIS_TEST_POSTGRES_URL is not set: start PostgreSQL with `source <(bash scripts/start-services.sh env)` \
             (or set PORTCULLIS_SKIP_POSTGRES=1 to skip the PostgreSQL tests explicitly)"
        ),
    }
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    Db { url: format!("sqlite://{}", dir.path().join("audit.db").display()), postgres: false, _dir: dir }
}

async fn postgres() -> Option<Db> {
    let base = postgres_base()?;
    let name = format!("audit_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base).await.expect("connecting to PORTCULLIS_TEST_POSTGRES_URL");
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    Some(Db { url: format!("{prefix}/{name}"), postgres: true, _dir: tempfile::tempdir().unwrap() })
}

/// Drops a test database (tests that fail leave theirs behind for inspection).
async fn drop_postgres(url: &str) {
    let (_, name) = url.rsplit_once('/').unwrap();
    let base = postgres_base().unwrap();
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    // `WITH (FORCE)` cannot end another role's backend without superuser rights, and a
    // closed pool's backends may take a moment to exit: retry briefly. Clean-up only — a
    // database left behind is harmless, so it never fails the test.
    for _ in 0..20 {
        if admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("test database {name} left behind (still in use)");
}

fn issuer(dir: &TempDir) -> Arc<EmbeddedIssuer> {
    let key = SigningKey::load_or_generate(dir.path()).unwrap();
    Arc::new(EmbeddedIssuer::new(key, "http://gw".into(), "http://gw/mcp".into(), Duration::from_secs(3600)))
}

fn settings(db: &Db, failure_mode: FailureMode) -> AuditSettings {
    let config = AuditConfig {
        url: Some(db.url.clone()),
        failure_mode,
        checkpoint_interval: Duration::from_secs(3600),
        ..AuditConfig::default()
    };
    AuditSettings::from_config(&config, std::path::Path::new("unused")).unwrap()
}

fn intent(i: usize) -> IntentRecord {
    IntentRecord {
        request_id: format!("req-{i}"),
        jsonrpc_id: Some(i.to_string()),
        session_id: Some("session-1".into()),
        issuer: Some("http://gw".into()),
        subject: Some("alice".into()),
        client_id: Some("cli".into()),
        token_id: Some("jti-1".into()),
        upstream: Some("demo".into()),
        method: "tools/call".into(),
        target: Some("demo__get_forecast".into()),
        arguments: Some(json!({"city": "Paris", "api_key": "sk-live-123", "n": i})),
        decision: Some(PolicyDecision::Allow),
        rule: Some("default".into()),
        ..IntentRecord::default()
    }
}

fn ok() -> OutcomeRecord {
    OutcomeRecord { status: OutcomeStatus::Ok, error_code: None, error_message: None, findings: None, latency: None }
}

/// Writes `n` requests (2n rows) and a checkpoint.
async fn write(log: &AuditLog, n: usize) {
    for i in 0..n {
        let handle = log.intent(intent(i)).await.unwrap();
        handle.outcome(ok()).await.unwrap();
    }
    log.flush().await;
}

async fn verify(db: &Db, keys: &TempDir) -> VerifyOutcome {
    let issuer = issuer(keys);
    portcullis::audit::verify(&settings(db, FailureMode::FailClosed), issuer.key().decoding_key(), &[]).await.unwrap()
}

async fn raw(db: &Db, statements: &[&str]) -> Result<(), sqlx::Error> {
    if db.postgres {
        let mut conn = sqlx::PgConnection::connect(&db.url).await?;
        for s in statements {
            conn.execute(*s).await?;
        }
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&db.url).await?;
        for s in statements {
            conn.execute(*s).await?;
        }
    }
    Ok(())
}

fn drop_triggers(db: &Db) -> Vec<&'static str> {
    if db.postgres {
        vec!["ALTER TABLE audit_log DISABLE TRIGGER USER", "ALTER TABLE audit_checkpoint DISABLE TRIGGER USER"]
    } else {
        vec!["DROP TRIGGER audit_log_no_update", "DROP TRIGGER audit_log_no_delete"]
    }
}

async fn fresh_log(db: &Db, keys: &TempDir, n: usize) -> AuditLog {
    let log = AuditLog::open(&settings(db, FailureMode::FailClosed), issuer(keys)).await.unwrap();
    write(&log, n).await;
    log
}

async fn expect_broken(db: &Db, keys: &TempDir, seq: i64, problem: Problem) {
    match verify(db, keys).await {
        VerifyOutcome::Broken(broken) => {
            assert_eq!(broken, Broken { seq, problem }, "{broken}");
            println!("verify: {broken}");
        }
        VerifyOutcome::Intact(report) => panic!("tampering not detected: {report:?}"),
    }
}

async fn intact_record_verifies(db: Db) {
    let keys = tempfile::tempdir().unwrap();
    let log = fresh_log(&db, &keys, 10).await;
    assert_eq!(log.health(), Health::Ready);
    log.close(Duration::from_secs(5)).await;
    match verify(&db, &keys).await {
        VerifyOutcome::Intact(report) => {
            assert_eq!(report.rows, 20);
            assert!(report.checkpoints >= 1);
            assert_eq!(report.checkpointed_rows, 20);
        }
        VerifyOutcome::Broken(broken) => panic!("{broken}"),
    }
    // A checkpoint signed by another key is refused.
    let other = tempfile::tempdir().unwrap();
    assert!(matches!(verify(&db, &other).await, VerifyOutcome::Broken(Broken { problem: Problem::BadCheckpoint { .. }, .. })));
}

async fn triggers_refuse_changes(db: Db) {
    let keys = tempfile::tempdir().unwrap();
    fresh_log(&db, &keys, 2).await.close(Duration::from_secs(5)).await;
    let update = raw(&db, &["UPDATE audit_log SET target = 'x' WHERE seq = 1"]).await.unwrap_err();
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = raw(&db, &["DELETE FROM audit_log"]).await.unwrap_err();
    assert!(delete.to_string().contains("append-only"), "{delete}");
    let checkpoint = raw(&db, &["DELETE FROM audit_checkpoint"]).await.unwrap_err();
    assert!(checkpoint.to_string().contains("append-only"), "{checkpoint}");
    if db.postgres {
        let truncate = raw(&db, &["TRUNCATE audit_log"]).await.unwrap_err();
        assert!(truncate.to_string().contains("append-only"), "{truncate}");
    }
    assert!(matches!(verify(&db, &keys).await, VerifyOutcome::Intact(r) if r.rows == 4));
}

async fn edited_row_is_named(db: Db) {
    let keys = tempfile::tempdir().unwrap();
    fresh_log(&db, &keys, 5).await.close(Duration::from_secs(5)).await;
    let mut statements = drop_triggers(&db);
    statements.push("UPDATE audit_log SET subject = 'mallory' WHERE seq = 5");
    raw(&db, &statements).await.unwrap();
    expect_broken(&db, &keys, 5, Problem::Edited).await;
}

async fn deleted_row_is_named(db: Db) {
    let keys = tempfile::tempdir().unwrap();
    fresh_log(&db, &keys, 5).await.close(Duration::from_secs(5)).await;
    let mut statements = drop_triggers(&db);
    statements.push("DELETE FROM audit_log WHERE seq = 7");
    raw(&db, &statements).await.unwrap();
    expect_broken(&db, &keys, 7, Problem::Missing { next: Some(8) }).await;
}

async fn swapped_rows_are_named(db: Db) {
    let keys = tempfile::tempdir().unwrap();
    fresh_log(&db, &keys, 5).await.close(Duration::from_secs(5)).await;
    let mut statements = drop_triggers(&db);
    statements.extend([
        "UPDATE audit_log SET seq = 1000003 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = 4",
        "UPDATE audit_log SET seq = 4 WHERE seq = 1000003",
    ]);
    raw(&db, &statements).await.unwrap();
    expect_broken(&db, &keys, 3, Problem::Reordered { follows: 4 }).await;
}

async fn truncation_past_checkpoint_is_named(db: Db) {
    let keys = tempfile::tempdir().unwrap();
    fresh_log(&db, &keys, 5).await.close(Duration::from_secs(5)).await;
    let mut statements = drop_triggers(&db);
    statements.push("DELETE FROM audit_log WHERE seq > 6");
    raw(&db, &statements).await.unwrap();
    expect_broken(&db, &keys, 7, Problem::TruncatedAfterCheckpoint { checkpoint_rows: 10, rows: 6 }).await;
}

/// The store stops accepting writes: calls are refused (nothing forwarded) and the log reports
/// itself unready; once the store is back, calls flow and the record is intact.
async fn store_down_refuses_calls(db: Db) {
    let keys = tempfile::tempdir().unwrap();
    let log = fresh_log(&db, &keys, 1).await;
    raw(&db, &["ALTER TABLE audit_log RENAME TO audit_log_away"]).await.unwrap();
    let mut forwarded = 0;
    for i in 0..3 {
        match log.intent(intent(100 + i)).await {
            Ok(handle) => {
                forwarded += 1;
                handle.outcome(ok()).await.unwrap();
            }
            Err(error) => {
                assert_eq!(error.jsonrpc_code(), -32052);
                assert!(error.to_string().starts_with("audit log unavailable"), "{error}");
            }
        }
    }
    assert_eq!(forwarded, 0, "a call was forwarded without a durable intent");
    assert!(matches!(log.health(), Health::Unready { .. }), "{:?}", log.health());
    raw(&db, &["ALTER TABLE audit_log_away RENAME TO audit_log"]).await.unwrap();
    write(&log, 1).await;
    assert_eq!(log.health(), Health::Ready);
    log.close(Duration::from_secs(5)).await;
    assert!(matches!(verify(&db, &keys).await, VerifyOutcome::Intact(r) if r.rows == 4));
}

/// `fail_open` forwards anyway and reports degraded, not unready.
async fn fail_open_forwards_and_degrades(db: Db) {
    let keys = tempfile::tempdir().unwrap();
    let log = AuditLog::open(&settings(&db, FailureMode::FailOpen), issuer(&keys)).await.unwrap();
    raw(&db, &["ALTER TABLE audit_log RENAME TO audit_log_away"]).await.unwrap();
    let handle = log.intent(intent(1)).await.unwrap();
    assert_eq!(handle.seq(), None);
    assert!(matches!(log.health(), Health::Degraded { .. }));
    drop(handle);
    raw(&db, &["ALTER TABLE audit_log_away RENAME TO audit_log"]).await.unwrap();
}

/// Concurrent writers, outcomes awaited and queued, a dropped handle (abandoned outcome), and
/// export.
async fn concurrent_writers_abandoned_and_export(db: Db, logs: usize) {
    let keys = tempfile::tempdir().unwrap();
    let mut opened = Vec::new();
    for _ in 0..logs {
        opened.push(Arc::new(AuditLog::open(&settings(&db, FailureMode::FailClosed), issuer(&keys)).await.unwrap()));
    }
    let mut tasks = Vec::new();
    for t in 0..32 {
        let log = opened[t % logs].clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let handle = log.intent(intent(t * 100 + i)).await.unwrap();
                match i {
                    9 => drop(handle),
                    // Queued, not awaited: written by the close below.
                    8 => handle.record(ok()),
                    _ => handle.outcome(ok()).await.unwrap(),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for log in opened {
        let log = Arc::into_inner(log).unwrap();
        log.close(Duration::from_secs(5)).await;
    }
    match verify(&db, &keys).await {
        VerifyOutcome::Intact(report) => assert_eq!(report.rows, 640),
        VerifyOutcome::Broken(broken) => panic!("{broken}"),
    }
    let mut out = Vec::new();
    let written = portcullis::audit::export(&settings(&db, FailureMode::FailClosed), 0, &mut out).await.unwrap();
    assert_eq!(written, 640);
    let text = String::from_utf8(out).unwrap();
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.iter().filter(|r| r["status"] == "abandoned").count(), 32);
    assert_eq!(rows.iter().filter(|r| r["status"] == "ok").count(), 32 * 9);
    assert!(rows[0]["time"].as_str().unwrap().ends_with('Z'));
    assert!(!text.contains("sk-live-123") && !text.contains("session-1"), "secret or raw session id exported");
}

/// Values that stress the insert's encoding (quotes, backslashes, control characters, line and
/// paragraph separators, characters outside the BMP, NUL (stored as U+FFFD on both stores:
/// PostgreSQL `TEXT` cannot hold it), long text, `i64` extremes, NULLs), written
/// by 600 concurrent callers so that batches take many sizes (on SQLite, every statement shape;
/// a flush over 256 rows takes several INSERTs): every row reads back as written and the chain
/// verifies.
async fn awkward_values_round_trip(db: Db) {
    const AWKWARD: &[&str] = &[
        "quote \" and 'apostrophe'",
        "back\\slash \\u0041 not an escape",
        "line\nfeed\r\ttab \u{1} \u{1f}",
        "separators \u{2028}\u{2029}",
        "astral 🦀𝄞 and é composed e\u{301}",
        "",
        "{\"looks\": [\"like\", \"json\"]}",
        "nul \u{0} inside",
    ];
    let keys = tempfile::tempdir().unwrap();
    let log = Arc::new(AuditLog::open(&settings(&db, FailureMode::FailClosed), issuer(&keys)).await.unwrap());
    let long = "x".repeat(10_000);
    let mut tasks = Vec::new();
    for i in 0..600usize {
        let log = log.clone();
        let target = if i % 50 == 0 { long.clone() } else { AWKWARD[i % AWKWARD.len()].to_owned() };
        tasks.push(tokio::spawn(async move {
            let record = IntentRecord {
                jsonrpc_id: awkward_jsonrpc_id(i),
                client_id: None,
                target: Some(target.clone()),
                subject: Some(format!("{target}#{i}")),
                ..intent(i)
            };
            let handle = log.intent(record).await.unwrap();
            handle
                .outcome(OutcomeRecord {
                    status: OutcomeStatus::Error,
                    error_code: Some(i64::MIN),
                    error_message: None,
                    findings: None,
                    latency: Some(Duration::from_micros(u32::MAX as u64)),
                })
                .await
                .unwrap();
            (i, target)
        }));
    }
    let mut written = std::collections::HashMap::new();
    for task in tasks {
        let (i, target) = task.await.unwrap();
        written.insert(format!("req-{i}"), target);
    }
    Arc::into_inner(log).unwrap().close(Duration::from_secs(5)).await;
    match verify(&db, &keys).await {
        VerifyOutcome::Intact(report) => assert_eq!(report.rows, 1200),
        VerifyOutcome::Broken(broken) => panic!("{broken}"),
    }
    let mut out = Vec::new();
    portcullis::audit::export(&settings(&db, FailureMode::FailClosed), 0, &mut out).await.unwrap();
    let rows: Vec<serde_json::Value> = String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1200);
    for row in rows.iter().filter(|r| r["kind"] == "intent") {
        let request = row["request_id"].as_str().unwrap();
        let target = &written[request].replace('\0', "\u{FFFD}");
        assert_eq!(row["target"].as_str(), Some(target.as_str()), "{request}");
        let i: usize = request.trim_start_matches("req-").parse().unwrap();
        assert_eq!(row["subject"].as_str(), Some(format!("{target}#{i}").as_str()), "{request}");
        assert!(row["client_id"].is_null(), "{request}: {row}");
        assert_eq!(row["jsonrpc_id"].as_str(), awkward_jsonrpc_id(i).as_deref(), "{request}");
    }
    for row in rows.iter().filter(|r| r["kind"] == "outcome") {
        assert_eq!(row["error_code"].as_i64(), Some(i64::MIN), "{row}");
        assert_eq!(row["latency_us"].as_i64(), Some(u32::MAX as i64), "{row}");
    }
}

/// The JSON-RPC id of request `i` in [`awkward_values_round_trip`]: none, or an `i64` extreme.
fn awkward_jsonrpc_id(i: usize) -> Option<String> {
    match i % 3 {
        0 => None,
        1 => Some(i64::MAX.to_string()),
        _ => Some(i64::MIN.to_string()),
    }
}

/// Two writers on one database, alternating: each writer's remembered chain head is stale at
/// every append after its first, so each append must notice and chain onto the real head.
async fn stale_head_is_noticed(db: Db) {
    let keys = tempfile::tempdir().unwrap();
    let first = AuditLog::open(&settings(&db, FailureMode::FailClosed), issuer(&keys)).await.unwrap();
    let second = AuditLog::open(&settings(&db, FailureMode::FailClosed), issuer(&keys)).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..6 {
        let log = if i % 2 == 0 { &first } else { &second };
        let handle = log.intent(intent(i)).await.unwrap();
        assert_eq!(handle.seq(), Some(i as i64 + 1), "intent {i} chained onto the real head");
        handles.push(handle);
    }
    for handle in handles {
        handle.outcome(ok()).await.unwrap();
    }
    first.close(Duration::from_secs(5)).await;
    second.close(Duration::from_secs(5)).await;
    match verify(&db, &keys).await {
        VerifyOutcome::Intact(report) => assert_eq!(report.rows, 12),
        VerifyOutcome::Broken(broken) => panic!("{broken}"),
    }
}

macro_rules! both {
    ($($name:ident => $body:expr;)*) => {
        mod sqlite_backend {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let db = sqlite().await;
                let f: fn(Db) -> _ = $body;
                f(db).await;
            })*
        }
        mod postgres_backend {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(db) = postgres().await else { return };
                let url = db.url.clone();
                let f: fn(Db) -> _ = $body;
                f(db).await;
                drop_postgres(&url).await;
            })*
        }
    };
}

both! {
    intact => intact_record_verifies;
    triggers => triggers_refuse_changes;
    edited => edited_row_is_named;
    deleted => deleted_row_is_named;
    swapped => swapped_rows_are_named;
    truncated => truncation_past_checkpoint_is_named;
    store_down => store_down_refuses_calls;
    fail_open => fail_open_forwards_and_degrades;
    concurrent_one_log => |db| concurrent_writers_abandoned_and_export(db, 1);
    concurrent_two_replicas => |db| concurrent_writers_abandoned_and_export(db, 2);
    stale_head => stale_head_is_noticed;
    awkward_values => awkward_values_round_trip;
}

/// The gateway's PostgreSQL role needs only SELECT and INSERT: with migrations applied by the
/// owner, it opens the log, writes, and is refused UPDATE by privilege.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_least_privilege_role() {
    let Some(db) = postgres().await else { return };
    let keys = tempfile::tempdir().unwrap();
    fresh_log(&db, &keys, 1).await.close(Duration::from_secs(5)).await;
    let role = format!("gw_{}", uuid::Uuid::new_v4().simple());
    raw(&db, &[
        &format!("CREATE ROLE {role} LOGIN PASSWORD 'gw'"),
        &format!("GRANT SELECT, INSERT ON audit_log, audit_checkpoint TO {role}"),
        &format!("GRANT USAGE ON SEQUENCE audit_checkpoint_id_seq TO {role}"),
        &format!("GRANT SELECT ON _sqlx_migrations TO {role}"),
    ])
    .await
    .unwrap();
    let (scheme_and_user, host_and_db) = db.url.split_once('@').unwrap();
    let scheme = scheme_and_user.split("//").next().unwrap();
    let limited = Db { url: format!("{scheme}//{role}:gw@{host_and_db}"), postgres: true, _dir: tempfile::tempdir().unwrap() };
    let log = AuditLog::open(&settings(&limited, FailureMode::FailClosed), issuer(&keys)).await.unwrap();
    write(&log, 2).await;
    log.close(Duration::from_secs(5)).await;
    let denied = raw(&limited, &["UPDATE audit_log SET target = 'x' WHERE seq = 1"]).await.unwrap_err();
    assert!(denied.to_string().contains("permission denied"), "{denied}");
    assert!(matches!(verify(&db, &keys).await, VerifyOutcome::Intact(r) if r.rows == 6));
    drop_postgres(&db.url).await;
    let mut admin = sqlx::PgConnection::connect(&postgres_base().unwrap()).await.unwrap();
    // The role goes once its database is gone; clean-up only, as above.
    let _ = admin.execute(format!("DROP ROLE IF EXISTS {role}").as_str()).await;
}

/// `portcullis audit verify` and `export` on the default SQLite store of a data dir, and
/// `portcullis redact --jsonl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_verify_export_and_redact() {
    let data_dir = tempfile::tempdir().unwrap();
    let settings = AuditSettings::from_config(&AuditConfig::default(), data_dir.path()).unwrap();
    let log = AuditLog::open(&settings, issuer(&data_dir)).await.unwrap();
    write(&log, 5).await;
    log.close(Duration::from_secs(5)).await;
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let dir = data_dir.path().to_str().unwrap();

    let ok = run(&["audit", "verify", "--data-dir", dir]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success() && stdout.contains("10 rows"), "{stdout} {}", String::from_utf8_lossy(&ok.stderr));

    let export = run(&["audit", "export", "--data-dir", dir, "--since", "1h", "--format", "jsonl"]);
    assert!(export.status.success());
    assert_eq!(String::from_utf8_lossy(&export.stdout).lines().count(), 10);

    let db = Db { url: settings_url(&settings), postgres: false, _dir: tempfile::tempdir().unwrap() };
    raw(&db, &["DROP TRIGGER audit_log_no_update", "UPDATE audit_log SET method = 'x' WHERE seq = 4"]).await.unwrap();
    let bad = run(&["audit", "verify", "--data-dir", dir]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.contains("row 4: edited"), "{stderr}");

    let mut child = std::process::Command::new(bin)
        .args(["redact", "--jsonl"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"{\"text\":\"mail bob@example.com\"}\n").unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line, json!({"text": "mail [REDACTED:email]", "findings": [{"kind": "email", "start": 5, "end": 20}]}));
}

fn settings_url(settings: &AuditSettings) -> String {
    use secrecy::ExposeSecret as _;
    settings.url.expose_secret().to_owned()
}

/// A writer task that dies (a bug) refuses calls and reports unready; `revive` (which the
/// gateway's supervisor calls with backoff) restarts it and the chain continues intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_writer_refuses_calls_until_revived() {
    let data_dir = tempfile::tempdir().unwrap();
    let settings = AuditSettings::from_config(&AuditConfig::default(), data_dir.path()).unwrap();
    let log = AuditLog::open(&settings, issuer(&data_dir)).await.unwrap();
    write(&log, 2).await;
    let in_flight = log.intent(intent(40)).await.unwrap();
    log.abort_writer_for_tests().await;
    // The call in flight ends while the writer is down: its outcome waits for the next writer.
    in_flight.record(ok());
    let Err(error) = log.intent(intent(50)).await else { panic!("an intent was accepted with the writer dead") };
    assert_eq!(error.jsonrpc_code(), -32052);
    assert!(matches!(log.health(), Health::Unready { ref reason } if reason == portcullis::audit::WRITER_STOPPED), "{:?}", log.health());
    assert!(log.revive().await.unwrap(), "writer not restarted");
    write(&log, 1).await;
    assert_eq!(log.health(), Health::Ready);
    log.close(Duration::from_secs(5)).await;
    let db = Db { url: settings_url(&settings), postgres: false, _dir: tempfile::tempdir().unwrap() };
    // 4 + the in-flight call's intent and outcome + 2.
    assert!(matches!(verify(&db, &data_dir).await, VerifyOutcome::Intact(r) if r.rows == 8), "chain broken or outcome lost across the restart");
}

/// Polls the SQLite file of `settings` (every 5 ms, for at most 2 s) until it holds `count`
/// outcome rows; returns how long that took. Panics if they are not there within 2 s.
async fn outcomes_committed(settings: &AuditSettings, count: i64) -> Duration {
    let reader = sqlx::SqlitePool::connect(&settings_url(settings)).await.unwrap();
    let started = std::time::Instant::now();
    let mut outcomes = 0i64;
    while started.elapsed() < Duration::from_secs(2) {
        outcomes = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE kind = 'outcome'").fetch_one(&reader).await.unwrap();
        if outcomes == count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    reader.close().await;
    assert_eq!(outcomes, count, "outcome not committed within 2 s");
    took
}

/// An outcome queued with `record` (which wakes nobody) is committed on its own, without a
/// flush or a later intent to carry it, within a bounded time (twice the 20 ms linger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_outcome_is_committed_without_a_later_intent() {
    let data_dir = tempfile::tempdir().unwrap();
    let settings = AuditSettings::from_config(&AuditConfig::default(), data_dir.path()).unwrap();
    let log = AuditLog::open(&settings, issuer(&data_dir)).await.unwrap();
    let handle = log.intent(intent(1)).await.unwrap();
    handle.record(ok());
    let took = outcomes_committed(&settings, 1).await;
    assert!(took < Duration::from_millis(500), "outcome took {took:?}");
    log.close(Duration::from_secs(5)).await;
}

/// The count of `portcullis_audit_commit_duration_seconds{committer}` in `metrics`.
fn commits_by(metrics: &portcullis::telemetry::Metrics, committer: &str) -> f64 {
    let series = format!("portcullis_audit_commit_duration_seconds_count{{committer=\"{committer}\"}} ");
    metrics.render().lines().find_map(|l| l.strip_prefix(series.as_str())?.parse().ok()).unwrap_or(0.0)
}

/// SQLite group-commit leaders (`audit::writer` module docs): at one call at a time each
/// request commits its own intent (the first waits for the writer, which learns the chain head),
/// taking the previous call's queued outcome with it; the chain is intact. With
/// `sqlite_leader_commit = false` the writer commits everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_calls_commit_their_own_intents() {
    for leaders in [true, false] {
        let data_dir = tempfile::tempdir().unwrap();
        let config = AuditConfig { sqlite_leader_commit: leaders, checkpoint_interval: Duration::from_secs(3600), ..AuditConfig::default() };
        let settings = AuditSettings::from_config(&config, data_dir.path()).unwrap();
        let log = AuditLog::open(&settings, issuer(&data_dir)).await.unwrap();
        let metrics = portcullis::telemetry::Metrics::new();
        log.attach_metrics(metrics.clone());
        for i in 0..20 {
            let handle = log.intent(intent(i)).await.unwrap();
            assert!(handle.seq().is_some());
            handle.record(ok());
        }
        let (led, written) = (commits_by(&metrics, "leader"), commits_by(&metrics, "writer"));
        if leaders {
            // 19 unless the writer woke for an overdue outcome at the moment a call tried to lead.
            assert!(led >= 15.0 && written >= 1.0, "leader {led}, writer {written}");
        } else {
            assert!(led == 0.0 && written >= 1.0, "leader {led}, writer {written}");
        }
        log.close(Duration::from_secs(5)).await;
        let db = Db { url: settings_url(&settings), postgres: false, _dir: tempfile::tempdir().unwrap() };
        assert!(matches!(verify(&db, &data_dir).await, VerifyOutcome::Intact(r) if r.rows == 40), "leaders {leaders}: chain broken or rows lost");
    }
}

/// A leader whose INSERT is refused (here: another writer on the same file moved the chain
/// head) hands its intent to the writer and puts the outcomes it took back: the call succeeds
/// on the real head and no row is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_leader_hands_its_rows_to_the_writer() {
    let db = sqlite().await;
    let keys = tempfile::tempdir().unwrap();
    let first = AuditLog::open(&settings(&db, FailureMode::FailClosed), issuer(&keys)).await.unwrap();
    let second = AuditLog::open(&settings(&db, FailureMode::FailClosed), issuer(&keys)).await.unwrap();
    // `first` learns the head (seq 1) and queues an outcome; `second` appends past it.
    let handle = first.intent(intent(0)).await.unwrap();
    assert_eq!(handle.seq(), Some(1));
    handle.record(ok());
    let other = second.intent(intent(1)).await.unwrap();
    // `first` leads on a stale head: refused, and the writer commits on the real one.
    let handle = first.intent(intent(2)).await.unwrap();
    assert!(handle.seq().is_some_and(|seq| seq >= 3), "{:?}", handle.seq());
    handle.record(ok());
    other.record(ok());
    first.close(Duration::from_secs(5)).await;
    second.close(Duration::from_secs(5)).await;
    match verify(&db, &keys).await {
        VerifyOutcome::Intact(report) => assert_eq!(report.rows, 6, "rows lost or duplicated"),
        VerifyOutcome::Broken(broken) => panic!("{broken}"),
    }
    let reader = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT request_id FROM audit_log WHERE kind = 'outcome' ORDER BY request_id").fetch_all(&reader).await.unwrap();
    assert_eq!(outcomes, ["req-0", "req-1", "req-2"]);
    reader.close().await;
}

/// A leader's call sends the writer nothing, so an outcome queued while the writer sleeps idle
/// (its long sleep, nothing queued or expected) must wake it: committed within the linger
/// bound, not at the end of that sleep (about a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_of_a_led_call_wakes_an_idle_writer() {
    let data_dir = tempfile::tempdir().unwrap();
    let settings = AuditSettings::from_config(&AuditConfig::default(), data_dir.path()).unwrap();
    let log = AuditLog::open(&settings, issuer(&data_dir)).await.unwrap();
    let metrics = portcullis::telemetry::Metrics::new();
    log.attach_metrics(metrics.clone());
    // The first intent goes to the writer (the head is not known yet); its outcome is
    // committed within 40 ms, after which the writer has nothing to expect and sleeps idle.
    log.intent(intent(1)).await.unwrap().record(ok());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let handle = log.intent(intent(2)).await.unwrap();
    assert_eq!(commits_by(&metrics, "leader"), 1.0, "the second intent was not led");
    handle.record(ok());
    let took = outcomes_committed(&settings, 2).await;
    assert!(took < Duration::from_millis(400), "outcome took {took:?}");
    log.close(Duration::from_secs(5)).await;
}
