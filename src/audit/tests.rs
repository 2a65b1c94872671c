use std::path::Path;

use super::*;

#[test]
fn hash_covers_content_and_link() {
    let mut row = Row { ts_us: 1, kind: "intent".into(), request_id: "r".into(), method: "tools/call".into(), ..Row::default() };
    row.seal(1, row::GENESIS, None);
    assert_eq!(row.row_hash.len(), 64);
    assert_eq!(row.compute_hash().as_deref(), Some(row.row_hash.as_str()));
    let mut edited = row.clone();
    edited.target = Some("x".into());
    assert_ne!(edited.compute_hash(), Some(row.row_hash.clone()));
    let mut relinked = row.clone();
    relinked.prev_hash = row.row_hash.clone();
    assert_ne!(relinked.compute_hash(), Some(row.row_hash.clone()));
    relinked.prev_hash = "zz".into();
    assert_eq!(relinked.compute_hash(), None);
}

/// The JSON form PostgreSQL inserts is the row itself: every column, same names, same values,
/// and the same hash as sealing without it.
#[test]
fn sealed_json_is_the_row() {
    let mut row = Row {
        ts_us: i64::MAX,
        kind: "outcome".into(),
        request_id: "r \"quoted\" \\ \u{2028}".into(),
        jsonrpc_id: Some("7".into()),
        method: "tools/call".into(),
        target: Some("🦀".into()),
        error_code: Some(i64::MIN),
        ..Row::default()
    };
    let mut json = Vec::new();
    row.seal(3, row::GENESIS, Some(&mut json));
    let mut plain = row.clone();
    plain.seal(3, row::GENESIS, None);
    assert_eq!(plain.row_hash, row.row_hash);
    let parsed: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(parsed, serde_json::to_value(&row).unwrap());
    assert_eq!(parsed.as_object().unwrap().len(), row::COLUMNS.split(", ").count());
}

#[test]
fn intent_rows_redact_cap_and_digest_arguments() {
    let settings = AuditSettings::from_config(&AuditConfig { max_argument_bytes: 40, ..AuditConfig::default() }, Path::new("d")).unwrap();
    let arguments = serde_json::json!({"password": "hunter2", "note": "mail alice@example.com and more text to cut"});
    let row = intent_row(
        &IntentRecord { request_id: "r\0".into(), method: "tools/call".into(), session_id: Some("s".into()), arguments: Some(arguments.clone()), ..IntentRecord::default() },
        &settings,
    );
    let stored = row.arguments.unwrap();
    assert!(stored.len() <= 40 && !stored.contains("hunter2") && !stored.contains("alice@"), "{stored}");
    assert!(row.arguments_bytes.unwrap() > 40);
    assert_eq!(row.arguments_sha256.unwrap(), row::sha256_hex(&serde_json::to_vec(&arguments).unwrap()));
    assert_eq!(row.session_hash.unwrap(), row::sha256_hex(b"s"));
    assert_eq!(row.request_id, "r\u{FFFD}");
}

#[test]
fn settings_default_to_sqlite_in_the_data_dir_and_reject_bad_values() {
    let settings = AuditSettings::from_config(&AuditConfig::default(), Path::new("/var/lib/p")).unwrap();
    assert_eq!(settings.backend, Backend::Sqlite);
    assert_eq!(settings.display_url(), "sqlite:///var/lib/p/audit/audit.db");
    assert_eq!(settings.failure_mode, FailureMode::FailClosed);
    let pg = AuditConfig { url: Some("postgres://gw:s3cret-pw@db/gw".into()), ..AuditConfig::default() };
    let pg = AuditSettings::from_config(&pg, Path::new("d")).unwrap();
    assert_eq!(pg.backend, Backend::Postgres);
    assert!(!pg.display_url().contains("s3cret"), "{}", pg.display_url());
    let bad = AuditConfig { url: Some("mysql://x".into()), ..AuditConfig::default() };
    assert!(matches!(AuditSettings::from_config(&bad, Path::new("d")), Err(Error::Config { key, .. }) if key == "audit.url"));
    // The writer and the readers each open the file: an in-memory database would be two.
    for memory in ["sqlite::memory:", "sqlite://audit.db?mode=memory"] {
        let config = AuditConfig { url: Some(memory.into()), ..AuditConfig::default() };
        assert!(matches!(AuditSettings::from_config(&config, Path::new("d")), Err(Error::Config { key, .. }) if key == "audit.url"), "{memory}");
    }
    let zero = AuditConfig { batch_max_rows: 0, ..AuditConfig::default() };
    assert!(AuditSettings::from_config(&zero, Path::new("d")).is_err());
}

#[test]
fn failure_mode_is_a_named_enum_in_toml() {
    let config: AuditConfig = toml::from_str("failure_mode = \"fail_open\"\nbatch_linger = \"2ms\"").unwrap();
    assert_eq!(config.failure_mode, FailureMode::FailOpen);
    assert!(toml::from_str::<AuditConfig>("fail_open = true").is_err());
}

#[test]
fn since_accepts_rfc3339_and_durations() {
    assert_eq!(parse_since("1970-01-01T00:00:01Z").unwrap(), 1_000_000);
    let hour_ago = parse_since("1h").unwrap();
    assert!((now_us() - hour_ago - 3_600_000_000).abs() < 5_000_000);
    assert!(parse_since("yesterday").is_err());
}

#[test]
fn handles_and_futures_can_cross_tasks() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    fn send_future<F: std::future::Future + Send>(_: &F) {}
    send_sync::<AuditLog>();
    send::<IntentHandle>();
    let _check = |log: &'static AuditLog, handle: IntentHandle| {
        send_future(&log.intent(IntentRecord::default()));
        send_future(&handle.outcome(OutcomeRecord {
            status: OutcomeStatus::Ok,
            error_code: None,
            error_message: None,
            findings: None,
            latency: None,
        }));
    };
}

/// A leader hands its rows to the writer only when SQLite certainly wrote nothing (busy,
/// locked, the `seq` key taken); any other failure (an I/O error in the commit) may have
/// written them, so the intent is refused instead of committed a second time.
#[test]
fn leader_retries_only_what_was_certainly_not_written() {
    let sqlite = |code| Error::Sqlite(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None));
    for code in [rusqlite::ffi::SQLITE_BUSY, rusqlite::ffi::SQLITE_LOCKED, rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY] {
        assert!(writer::nothing_written(&sqlite(code)), "{code}");
    }
    for code in [rusqlite::ffi::SQLITE_IOERR_FSYNC, rusqlite::ffi::SQLITE_FULL, rusqlite::ffi::SQLITE_CORRUPT] {
        assert!(!writer::nothing_written(&sqlite(code)), "{code}");
    }
    assert!(!writer::nothing_written(&Error::Closed));
}
