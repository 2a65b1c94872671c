//! Tool pinning: each tool definition's hash is pinned on first sight; a later change (a rug
//! pull) is held as *pending* until an operator approves it with `portcullis tools approve`.
//!
//! The store is one JSON file, `<data_dir>/guard/pins.json`, written atomically (temporary file
//! in the same directory, then rename). Every operation re-reads the file under a process-local
//! lock, so an approval made by the CLI is seen by a running gateway at its next check.
//!
//! Invariants:
//! - a tool whose hash differs from its pinned hash is never [`PinVerdict::Allowed`] until
//!   approved (or until it changes back to the pinned hash);
//! - a corrupt file is an error, never an empty store: treating it as empty would re-pin
//!   every changed definition silently.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use rmcp::model::Tool;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::Error;

/// The verdict of [`PinStore::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinVerdict {
    /// The definition matches its pin.
    Allowed,
    /// First sight: the definition is now pinned.
    FirstSeen,
    /// The definition differs from its pin: withhold it ("definition changed; awaiting
    /// approval") until `portcullis tools approve UPSTREAM/TOOL`.
    Changed,
}

/// The state of one pinned tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum PinState {
    /// Approved at `hash`.
    Pinned,
    /// Seen with `new_hash`, which is not approved.
    Pending {
        /// SHA-256 (hex) of the changed definition.
        new_hash: String,
        /// When the change was first seen (Unix seconds).
        changed_at: u64,
    },
}

/// One tool in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinEntry {
    /// Upstream name from configuration.
    pub upstream: String,
    /// Tool name as the upstream knows it (without prefix).
    pub tool: String,
    /// SHA-256 (hex) of the approved definition.
    pub hash: String,
    /// When the approved definition was pinned or approved (Unix seconds).
    pub pinned_at: u64,
    /// Pinned or pending.
    #[serde(flatten)]
    pub state: PinState,
}

/// The pin store (see the module docs).
#[derive(Debug)]
pub struct PinStore {
    path: PathBuf,
    lock: Mutex<()>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    /// Keyed by `UPSTREAM/TOOL`.
    tools: BTreeMap<String, PinEntry>,
}

/// SHA-256 (lowercase hex) of a tool's canonical definition: the JSON object of its `name`,
/// `title`, `description`, `inputSchema`, `outputSchema` and `annotations` (absent fields
/// omitted), with object keys sorted at every level and no whitespace.
pub fn definition_hash(tool: &Tool) -> String {
    const FIELDS: [&str; 6] = ["name", "title", "description", "inputSchema", "outputSchema", "annotations"];
    let value = serde_json::to_value(tool).unwrap_or(Value::Null);
    let mut picked = serde_json::Map::new();
    if let Value::Object(map) = value {
        for (key, value) in map {
            if FIELDS.contains(&key.as_str()) && !value.is_null() {
                picked.insert(key, value);
            }
        }
    }
    let mut canonical = String::new();
    write_canonical(&Value::Object(picked), &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    hex::encode(digest)
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(value) = map.get(key) {
                    write_canonical(value, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

// === impl PinStore ===

impl PinStore {
    /// The store at `<data_dir>/guard/pins.json`. Nothing is read or created until first use.
    pub fn new(data_dir: &Path) -> Self {
        Self { path: data_dir.join("guard").join("pins.json"), lock: Mutex::new(()) }
    }

    /// Path of the JSON file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks `hash` for `upstream`/`tool`: pins it on first sight, records a pending change
    /// when it differs, and clears a pending change when the definition is back to its pin.
    ///
    /// # Errors
    /// The file cannot be read, parsed or written.
    pub fn check(&self, upstream: &str, tool: &str, hash: &str) -> Result<PinVerdict, Error> {
        let verdicts = self.check_all(upstream, &[(tool, hash)])?;
        Ok(verdicts[0])
    }

    /// [`PinStore::check`] for every `(tool, hash)` of one upstream's listing, in order, with
    /// one read of the file and at most one write (a listing of 1,000 tools no longer reads,
    /// rewrites and fsyncs the whole file 1,000 times).
    ///
    /// # Errors
    /// The file cannot be read, parsed or written; then no verdict holds.
    pub fn check_all(&self, upstream: &str, tools: &[(&str, &str)]) -> Result<Vec<PinVerdict>, Error> {
        self.update(|file| {
            let now = now();
            let mut changed = false;
            let verdicts = tools
                .iter()
                .map(|&(tool, hash)| {
                    let (verdict, modified) = check_one(file, upstream, tool, hash, now);
                    changed |= modified;
                    verdict
                })
                .collect();
            Ok((verdicts, changed))
        })
    }

    /// Approves the pending definition of `upstream`/`tool`: its new hash becomes the pin.
    /// Returns the approved entry.
    ///
    /// # Errors
    /// [`Error::UnknownTool`], [`Error::NothingPending`], or the file cannot be read,
    /// parsed or written.
    pub fn approve(&self, upstream: &str, tool: &str) -> Result<PinEntry, Error> {
        self.update(|file| {
            let key = key(upstream, tool);
            let entry = file.tools.get_mut(&key).ok_or_else(|| Error::UnknownTool { key: key.clone() })?;
            let PinState::Pending { new_hash, .. } = &entry.state else {
                return Err(Error::NothingPending { key });
            };
            entry.hash = new_hash.clone();
            entry.pinned_at = now();
            entry.state = PinState::Pinned;
            Ok((entry.clone(), true))
        })
    }

    /// Every pinned tool (only those with a pending change when `pending_only`), sorted by
    /// `UPSTREAM/TOOL`.
    ///
    /// # Errors
    /// The file cannot be read or parsed.
    pub fn list(&self, pending_only: bool) -> Result<Vec<PinEntry>, Error> {
        let _guard = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let file = self.read()?;
        Ok(file.tools.into_values().filter(|e| !pending_only || matches!(e.state, PinState::Pending { .. })).collect())
    }

    /// Read-modify-write under the lock; writes only when `f` reports a change.
    fn update<T>(&self, f: impl FnOnce(&mut File) -> Result<(T, bool), Error>) -> Result<T, Error> {
        let _guard = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut file = self.read()?;
        let (value, changed) = f(&mut file)?;
        if changed {
            self.write(&file)?;
        }
        Ok(value)
    }

    fn read(&self) -> Result<File, Error> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::PinParse { path: self.path.clone(), source }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(File { version: 1, tools: BTreeMap::new() }),
            Err(source) => Err(Error::PinRead { path: self.path.clone(), source }),
        }
    }

    fn write(&self, file: &File) -> Result<(), Error> {
        let write_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::PinWrite { path, source }
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(write_error(dir))?;
        let tmp = dir.join(format!(".pins.json.{}.tmp", std::process::id()));
        let mut bytes = serde_json::to_vec_pretty(file).map_err(|e| Error::PinWrite { path: tmp.clone(), source: e.into() })?;
        bytes.push(b'\n');
        let mut out = std::fs::File::create(&tmp).map_err(write_error(&tmp))?;
        out.write_all(&bytes).and_then(|()| out.sync_all()).map_err(write_error(&tmp))?;
        drop(out);
        std::fs::rename(&tmp, &self.path).map_err(write_error(&self.path))
    }
}

/// One pin check on the loaded file: the verdict and whether the file changed.
fn check_one(file: &mut File, upstream: &str, tool: &str, hash: &str, now: u64) -> (PinVerdict, bool) {
    let key = key(upstream, tool);
    let Some(entry) = file.tools.get_mut(&key) else {
        file.tools.insert(
            key,
            PinEntry {
                upstream: upstream.to_owned(),
                tool: tool.to_owned(),
                hash: hash.to_owned(),
                pinned_at: now,
                state: PinState::Pinned,
            },
        );
        return (PinVerdict::FirstSeen, true);
    };
    if entry.hash == hash {
        let changed = entry.state != PinState::Pinned;
        entry.state = PinState::Pinned;
        return (PinVerdict::Allowed, changed);
    }
    let changed = match &entry.state {
        PinState::Pending { new_hash, .. } if new_hash == hash => false,
        _ => {
            entry.state = PinState::Pending { new_hash: hash.to_owned(), changed_at: now };
            true
        }
    };
    (PinVerdict::Changed, changed)
}

fn key(upstream: &str, tool: &str) -> String {
    format!("{upstream}/{tool}")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
