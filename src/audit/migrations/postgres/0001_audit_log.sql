-- Portcullis audit trail (PostgreSQL). Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE
-- (even for the owner), and PUBLIC holds none of those privileges. The gateway's own role should
-- be granted only SELECT and INSERT (README "Audit and redaction"). See src/audit/mod.rs.
CREATE TABLE audit_log (
    seq              BIGINT  PRIMARY KEY CHECK (seq > 0),
    ts_us            BIGINT  NOT NULL,
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
    arguments_bytes  BIGINT,
    arguments_sha256 TEXT,
    decision         TEXT,
    rule             TEXT,
    status           TEXT,
    error_code       BIGINT,
    error_message    TEXT,
    findings         TEXT,
    latency_us       BIGINT,
    prev_hash        TEXT    NOT NULL,
    row_hash         TEXT    NOT NULL
);
CREATE INDEX audit_log_ts ON audit_log (ts_us);
CREATE INDEX audit_log_request ON audit_log (request_id);

CREATE TABLE audit_checkpoint (
    id        BIGSERIAL PRIMARY KEY,
    ts_us     BIGINT NOT NULL,
    row_count BIGINT NOT NULL,
    head_hash TEXT   NOT NULL,
    replica   TEXT   NOT NULL,
    token     TEXT   NOT NULL
);

CREATE FUNCTION portcullis_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'portcullis audit tables are append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION portcullis_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis_audit_append_only();
CREATE TRIGGER audit_checkpoint_append_only BEFORE UPDATE OR DELETE ON audit_checkpoint
    FOR EACH ROW EXECUTE FUNCTION portcullis_audit_append_only();
CREATE TRIGGER audit_checkpoint_no_truncate BEFORE TRUNCATE ON audit_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis_audit_append_only();

REVOKE UPDATE, DELETE, TRUNCATE ON audit_log, audit_checkpoint FROM PUBLIC;
