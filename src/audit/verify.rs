//! `portcullis audit verify` and `portcullis audit export`.
//!
//! Verification walks the chain in `seq` order and stops at the first bad row, saying what is
//! wrong with it:
//! - **missing**: a `seq` is absent (rows deleted), or a row links to a hash no row has;
//! - **reordered**: a row links to the hash of a row that is not its predecessor (rows swapped
//!   or moved);
//! - **edited**: a row's hash does not match its content, or its link column was changed;
//! - **truncated after checkpoint**: a signed checkpoint covers more rows than exist;
//! - **checkpoint mismatch** / **bad checkpoint**: the row a checkpoint names has another hash,
//!   or a checkpoint's signature does not verify with the gateway key.

use std::{collections::BTreeMap, fmt, io::Write, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{
    AuditSettings, CHECKPOINT_TYP, CheckpointClaims, Error,
    row::GENESIS,
    store::Store,
};

/// Rows read per query.
const PAGE: i64 = 2000;

/// The result of a verification that could read the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// Every row and checkpoint checks out.
    Intact(VerifyReport),
    /// The first problem found.
    Broken(Broken),
}

/// Summary of an intact record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Rows in the chain.
    pub rows: i64,
    /// Checkpoints verified (stored and given on the command line).
    pub checkpoints: usize,
    /// Rows covered by the latest checkpoint.
    pub checkpointed_rows: i64,
}

/// The first bad row and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// `seq` of the first bad row (for truncation: the first missing row).
    pub seq: i64,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The row's hash does not match its content or its link column was changed.
    Edited,
    /// Rows `seq..next` are absent (`next` is the next row present, if any).
    Missing {
        /// The next `seq` present.
        next: Option<i64>,
    },
    /// The row links to row `follows` instead of its predecessor.
    Reordered {
        /// The row whose hash this row's `prev_hash` names.
        follows: i64,
    },
    /// A signed checkpoint covers `checkpoint_rows` rows but only `rows` exist.
    TruncatedAfterCheckpoint {
        /// Rows the checkpoint covers.
        checkpoint_rows: i64,
        /// Rows present.
        rows: i64,
    },
    /// The checkpoint for this row names another head hash.
    CheckpointMismatch,
    /// A checkpoint's signature or claims do not verify.
    BadCheckpoint {
        /// Why.
        reason: String,
    },
}

// === impl Broken ===

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.seq;
        match &self.problem {
            Problem::Edited => write!(f, "row {seq}: edited (its hash does not match its content)"),
            Problem::Missing { next: Some(next) } => write!(f, "row {seq}: missing (rows {seq}..{} deleted)", next - 1),
            Problem::Missing { next: None } => write!(f, "row {seq}: missing (its predecessor's hash is nowhere in the table)"),
            Problem::Reordered { follows } => write!(f, "row {seq}: reordered (it links to row {follows}, not row {})", seq - 1),
            Problem::TruncatedAfterCheckpoint { checkpoint_rows, rows } => write!(
                f,
                "row {seq}: truncated after checkpoint (a signed checkpoint covers {checkpoint_rows} rows, only {rows} exist)"
            ),
            Problem::CheckpointMismatch => write!(f, "row {seq}: does not match the signed checkpoint for it"),
            Problem::BadCheckpoint { reason } => write!(f, "checkpoint at row {seq}: {reason}"),
        }
    }
}

/// Verifies the record in the store of `settings` against the gateway public `key`;
/// `external` adds checkpoints kept elsewhere (e.g. copied from the logs).
///
/// # Errors
/// [`Error::Store`] when the store cannot be read (a tampered record is a [`VerifyOutcome`]).
pub async fn verify(settings: &AuditSettings, key: &DecodingKey, external: &[String]) -> Result<VerifyOutcome, Error> {
    let store = Store::connect(settings).await?;
    let outcome = verify_store(&store, key, external).await;
    store.close().await;
    outcome
}

async fn verify_store(store: &Store, key: &DecodingKey, external: &[String]) -> Result<VerifyOutcome, Error> {
    let mut tokens: Vec<(i64, String)> = store.checkpoints().await?.into_iter().map(|c| (c.row_count, c.token)).collect();
    tokens.extend(external.iter().map(|t| (0, t.clone())));
    // row_count -> head hash, from verified tokens only (the stored columns are not trusted).
    let mut checkpoints: BTreeMap<i64, String> = BTreeMap::new();
    for (stored_count, token) in &tokens {
        match decode_checkpoint(token, key) {
            Ok(claims) => {
                checkpoints.insert(claims.row_count, claims.head_hash);
            }
            Err(reason) => return Ok(VerifyOutcome::Broken(Broken { seq: *stored_count, problem: Problem::BadCheckpoint { reason } })),
        }
    }

    let mut expected = 1i64;
    let mut prev = GENESIS.to_owned();
    loop {
        let rows = store.rows_after(expected - 1, PAGE).await?;
        let Some(last) = rows.last().map(|r| r.seq) else { break };
        for row in rows {
            if row.seq != expected {
                return Ok(broken(expected, Problem::Missing { next: Some(row.seq) }));
            }
            let self_consistent = row.compute_hash().as_deref() == Some(row.row_hash.as_str());
            if row.prev_hash != prev {
                let follows = store.seq_of_hash(&row.prev_hash).await?;
                return Ok(match follows {
                    Some(follows) if follows != row.seq - 1 => broken(row.seq, Problem::Reordered { follows }),
                    _ if self_consistent => broken(row.seq, Problem::Missing { next: None }),
                    _ => broken(row.seq, Problem::Edited),
                });
            }
            if !self_consistent {
                return Ok(broken(row.seq, Problem::Edited));
            }
            if checkpoints.get(&row.seq).is_some_and(|head| *head != row.row_hash) {
                return Ok(broken(row.seq, Problem::CheckpointMismatch));
            }
            prev = row.row_hash;
            expected += 1;
        }
        if last < expected - 1 {
            break;
        }
    }
    let rows = expected - 1;
    let checkpointed_rows = checkpoints.keys().next_back().copied().unwrap_or(0);
    if checkpointed_rows > rows {
        return Ok(broken(rows + 1, Problem::TruncatedAfterCheckpoint { checkpoint_rows: checkpointed_rows, rows }));
    }
    Ok(VerifyOutcome::Intact(VerifyReport { rows, checkpoints: tokens.len(), checkpointed_rows }))
}

fn broken(seq: i64, problem: Problem) -> VerifyOutcome {
    VerifyOutcome::Broken(Broken { seq, problem })
}

fn decode_checkpoint(token: &str, key: &DecodingKey) -> Result<CheckpointClaims, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("unreadable checkpoint: {e}"))?;
    if header.typ.as_deref() != Some(CHECKPOINT_TYP) {
        return Err(format!("not a checkpoint (typ {:?})", header.typ));
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<CheckpointClaims>(token, key, &validation)
        .map(|data| data.claims)
        .map_err(|e| format!("signature does not verify with the gateway key ({e})"))
}

/// Writes every row with `ts_us >= since_us` to `out` as JSON lines (each row's columns plus
/// `time`, RFC 3339 UTC with microseconds), in `seq` order; returns the number written.
///
/// # Errors
/// [`Error::Store`] when the store cannot be read, [`Error::Io`] when `out` fails.
pub async fn export(settings: &AuditSettings, since_us: i64, out: &mut (dyn Write + Send)) -> Result<u64, Error> {
    let store = Store::connect(settings).await?;
    let mut after = 0;
    let mut written = 0u64;
    loop {
        let rows = store.rows_since(since_us, after, PAGE).await?;
        let Some(last) = rows.last().map(|r| r.seq) else { break };
        for row in rows {
            let mut value = serde_json::to_value(&row).map_err(|e| Error::Io(e.into()))?;
            if let Some(object) = value.as_object_mut() {
                object.insert("time".into(), serde_json::Value::String(rfc3339_micros(row.ts_us)));
            }
            serde_json::to_writer(&mut *out, &value).map_err(|e| Error::Io(e.into()))?;
            out.write_all(b"\n")?;
            written += 1;
        }
        after = last;
    }
    out.flush()?;
    store.close().await;
    Ok(written)
}

/// Parses `--since`: an RFC 3339 time (`2026-01-31T10:00:00Z`) or a duration before now (`1h`,
/// `30m`); returns microseconds since the Unix epoch.
///
/// # Errors
/// A message naming the value when it is neither.
pub fn parse_since(text: &str) -> Result<i64, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        let since = time.duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
        return Ok(i64::try_from(since.as_micros()).unwrap_or(i64::MAX));
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(super::now_us() - i64::try_from(ago.as_micros()).unwrap_or(i64::MAX).min(super::now_us()));
    }
    Err(format!("--since {text:?}: expected an RFC 3339 time (2026-01-31T10:00:00Z) or a duration (1h)"))
}

fn rfc3339_micros(ts_us: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_micros(u64::try_from(ts_us).unwrap_or(0));
    humantime::format_rfc3339_micros(time).to_string()
}
