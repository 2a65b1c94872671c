//! The stored row, its canonical content and the hash chain.
//!
//! `row_hash = SHA-256(prev_hash || canonical_content)`, where `prev_hash` is the previous row's
//! 32-byte hash (all zero for row 1) and `canonical_content` is the compact JSON serialization of
//! every column except the two hashes, in the fixed order of [`Content`]. The content includes
//! `seq`, so renumbering rows breaks their hashes; it is computed from exactly the values stored,
//! so `verify` recomputes it from the columns alone.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// Hex of the all-zero hash that row 1 links to.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Column list, in table and [`Content`] order, for SELECT and INSERT.
pub(crate) const COLUMNS: &str = "seq, ts_us, kind, request_id, replica, jsonrpc_id, trace_id, session_hash, issuer, subject, \
     client_id, token_id, upstream, method, target, arguments, arguments_bytes, arguments_sha256, decision, rule, status, \
     error_code, error_message, findings, latency_us, prev_hash, row_hash";

/// One audit row as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When the record was made: microseconds since the Unix epoch, UTC.
    pub ts_us: i64,
    /// `intent` (before forwarding) or `outcome` (after).
    pub kind: String,
    /// Gateway-assigned request id linking an intent to its outcome.
    pub request_id: String,
    /// The replica that wrote the row.
    pub replica: String,
    /// JSON-RPC `id` of the request, as JSON text.
    pub jsonrpc_id: Option<String>,
    /// W3C trace id.
    pub trace_id: Option<String>,
    /// SHA-256 (hex) of the MCP session id.
    pub session_hash: Option<String>,
    /// Token issuer (`iss`).
    pub issuer: Option<String>,
    /// Token subject (`sub`).
    pub subject: Option<String>,
    /// OAuth client id.
    pub client_id: Option<String>,
    /// Token id (`jti`).
    pub token_id: Option<String>,
    /// Upstream name.
    pub upstream: Option<String>,
    /// JSON-RPC method.
    pub method: String,
    /// Tool, resource URI or prompt name.
    pub target: Option<String>,
    /// Redacted arguments as JSON text, cut at `audit.max_argument_bytes`.
    pub arguments: Option<String>,
    /// Size in bytes of the redacted arguments before the cut.
    pub arguments_bytes: Option<i64>,
    /// SHA-256 (hex) of the arguments as received (compact JSON), before redaction.
    pub arguments_sha256: Option<String>,
    /// Policy decision: `allow` or `deny`.
    pub decision: Option<String>,
    /// Policy rule that decided.
    pub rule: Option<String>,
    /// Outcome status (`ok`, `error`, `denied`, `timeout`, `cancelled`, `abandoned`).
    pub status: Option<String>,
    /// JSON-RPC error code of the outcome.
    pub error_code: Option<i64>,
    /// Redacted error message of the outcome.
    pub error_message: Option<String>,
    /// Guard findings as JSON text.
    pub findings: Option<String>,
    /// Latency from intent to outcome, microseconds.
    pub latency_us: Option<i64>,
    /// Hash (hex) of the previous row.
    pub prev_hash: String,
    /// Hash (hex) of this row.
    pub row_hash: String,
}

/// The hashed part of a [`Row`]: every column but the hashes, in a fixed order.
#[derive(Serialize)]
struct Content<'a> {
    seq: i64,
    ts_us: i64,
    kind: &'a str,
    request_id: &'a str,
    replica: &'a str,
    jsonrpc_id: Option<&'a str>,
    trace_id: Option<&'a str>,
    session_hash: Option<&'a str>,
    issuer: Option<&'a str>,
    subject: Option<&'a str>,
    client_id: Option<&'a str>,
    token_id: Option<&'a str>,
    upstream: Option<&'a str>,
    method: &'a str,
    target: Option<&'a str>,
    arguments: Option<&'a str>,
    arguments_bytes: Option<i64>,
    arguments_sha256: Option<&'a str>,
    decision: Option<&'a str>,
    rule: Option<&'a str>,
    status: Option<&'a str>,
    error_code: Option<i64>,
    error_message: Option<&'a str>,
    findings: Option<&'a str>,
    latency_us: Option<i64>,
}

// === impl Row ===

impl Row {
    /// The canonical content bytes (compact JSON of [`Content`]).
    pub(crate) fn canonical_content(&self) -> Vec<u8> {
        let content = Content {
            seq: self.seq,
            ts_us: self.ts_us,
            kind: &self.kind,
            request_id: &self.request_id,
            replica: &self.replica,
            jsonrpc_id: self.jsonrpc_id.as_deref(),
            trace_id: self.trace_id.as_deref(),
            session_hash: self.session_hash.as_deref(),
            issuer: self.issuer.as_deref(),
            subject: self.subject.as_deref(),
            client_id: self.client_id.as_deref(),
            token_id: self.token_id.as_deref(),
            upstream: self.upstream.as_deref(),
            method: &self.method,
            target: self.target.as_deref(),
            arguments: self.arguments.as_deref(),
            arguments_bytes: self.arguments_bytes,
            arguments_sha256: self.arguments_sha256.as_deref(),
            decision: self.decision.as_deref(),
            rule: self.rule.as_deref(),
            status: self.status.as_deref(),
            error_code: self.error_code,
            error_message: self.error_message.as_deref(),
            findings: self.findings.as_deref(),
            latency_us: self.latency_us,
        };
        // Serializing plain strings and integers cannot fail; an empty vector would only make
        // the hash (and so verification) fail, never pass.
        serde_json::to_vec(&content).unwrap_or_default()
    }

    /// `SHA-256(prev_hash || canonical content)` as hex, or `None` when `prev_hash` is not
    /// 64 hex digits.
    pub(crate) fn compute_hash(&self) -> Option<String> {
        hash_content(&self.prev_hash, &self.canonical_content())
    }

    /// Sets `seq` and `prev_hash`, then `row_hash`; when `json` is given, also appends the
    /// sealed row to it as one JSON object of every column, named as in [`COLUMNS`] (the
    /// canonical content with `prev_hash` and `row_hash` added), the form PostgreSQL inserts
    /// in bulk: the content is serialized once for both.
    pub(crate) fn seal(&mut self, seq: i64, prev_hash: &str, json: Option<&mut Vec<u8>>) {
        self.seq = seq;
        self.prev_hash = prev_hash.to_owned();
        let content = self.canonical_content();
        self.row_hash = hash_content(&self.prev_hash, &content).unwrap_or_default();
        let Some(json) = json else { return };
        // `content` is a JSON object: drop its closing brace and add the two hashes (hex
        // digits only, so nothing to escape).
        json.extend_from_slice(content.strip_suffix(b"}").unwrap_or(&content));
        for (name, value) in [("prev_hash", &self.prev_hash), ("row_hash", &self.row_hash)] {
            json.extend_from_slice(b",\"");
            json.extend_from_slice(name.as_bytes());
            json.extend_from_slice(b"\":\"");
            json.extend_from_slice(value.as_bytes());
            json.push(b'"');
        }
        json.push(b'}');
    }
}

/// `SHA-256(prev_hash || content)` as hex, or `None` when `prev_hash` is not 64 hex digits.
fn hash_content(prev_hash: &str, content: &[u8]) -> Option<String> {
    let prev = decode_hex(prev_hash)?;
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(content);
    Some(hex::encode(hasher.finalize()))
}

/// SHA-256 of `bytes` as hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}
