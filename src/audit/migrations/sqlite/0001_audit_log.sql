-- Portcullis audit trail (SQLite). Append-only: triggers refuse UPDATE and DELETE (SQLite has no
-- TRUNCATE; a DELETE without WHERE is refused by the same trigger). See src/audit/mod.rs.
CREATE TABLE audit_log (
    seq              INTEGER PRIMARY KEY CHECK (seq > 0),
    ts_us            INTEGER NOT NULL,
    kind             TEXT    NOT NULL,
    request_id       TEXT    NOT NULL,
    replica          TEXT    NOT NULL,
    jsonrpc_id       TEXT,
    trace_id         TEXT,
    session_hash     TEXT,
    issuer           TEXT,
    subject          TEXT,
    client_id        TEXT,
    token_id         TEXT,
    upstream         TEXT,
    method           TEXT    NOT NULL,
    target           TEXT,
    arguments        TEXT,
    arguments_bytes  INTEGER,
    arguments_sha256 TEXT,
    decision         TEXT,
    rule             TEXT,
    status           TEXT,
    error_code       INTEGER,
    error_message    TEXT,
    findings         TEXT,
    latency_us       INTEGER,
    prev_hash        TEXT    NOT NULL,
    row_hash         TEXT    NOT NULL
);
CREATE INDEX audit_log_ts ON audit_log (ts_us);
CREATE INDEX audit_log_request ON audit_log (request_id);

CREATE TABLE audit_checkpoint (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_us     INTEGER NOT NULL,
    row_count INTEGER NOT NULL,
    head_hash TEXT    NOT NULL,
    replica   TEXT    NOT NULL,
    token     TEXT    NOT NULL
);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'portcullis audit tables are append-only: UPDATE refused'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'portcullis audit tables are append-only: DELETE refused'); END;
CREATE TRIGGER audit_checkpoint_no_update BEFORE UPDATE ON audit_checkpoint
BEGIN SELECT RAISE(ABORT, 'portcullis audit tables are append-only: UPDATE refused'); END;
CREATE TRIGGER audit_checkpoint_no_delete BEFORE DELETE ON audit_checkpoint
BEGIN SELECT RAISE(ABORT, 'portcullis audit tables are append-only: DELETE refused'); END;
