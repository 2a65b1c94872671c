//! Sessions: binds each MCP session id to the principal that created it.
//!
//! rmcp creates sessions (ids from a CSPRNG — UUID v4 from the OS RNG) and answers DELETE.
//! This module adds the security rule on top — a session id may only be used by the same
//! principal (issuer and subject) that initialized it; a request presenting a session bound
//! to someone else is answered as if the session did not exist (404), so session ids cannot
//! be probed — and owns idle expiry: every request through the transport refreshes its
//! binding, and the transport's sweeper ends sessions whose binding lapsed
//! ([`SessionBindings::sweep`]). rmcp's own idle timer is off, because calls on the direct
//! path never reach rmcp's session.
//!
//! rmcp's per-session state (a worker task, channels, the router's session handler: about
//! 75 KiB a session) is built only when a session first needs it. The transport answers a
//! plain `initialize` itself and keeps its parameters in [`InitializeStates`], which rmcp
//! reads as its `SessionStore`: the first request rmcp must serve (a GET stream, a list, a
//! prompt) makes rmcp restore the session under the same id, replaying the handshake from
//! these parameters. A session that only calls tools (the direct path) never builds it.
//!
//! Today the store is in memory (one process); the Redis-backed store for several replicas
//! implements the same [`SessionBindings`] API.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rmcp::{
    model::InitializeRequestParams,
    transport::streamable_http_server::session::store::{SessionState, SessionStore, SessionStoreError},
};

/// The form a session id takes wherever it is stored or sent on (audit rows, span
/// attributes, identity assertions): lowercase hex SHA-256. A session id is a capability, so
/// it is never written raw; one definition keeps the three joinable.
pub fn hash_id(session_id: &str) -> String {
    use sha2::{Digest as _, Sha256};
    hex::encode(Sha256::digest(session_id.as_bytes()))
}

/// Result of checking a session id against the presenting principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The session is bound to this principal.
    Owned,
    /// The session is bound to another principal.
    Foreign,
    /// No binding (unknown, lapsed, or not yet initialized): answered 404.
    Unbound,
}

/// In-memory session → principal bindings with idle expiry.
#[derive(Debug)]
pub struct SessionBindings {
    idle_timeout: Duration,
    entries: Mutex<HashMap<String, (String, Instant)>>,
}

// === impl SessionBindings ===

impl SessionBindings {
    /// Bindings that lapse after `idle_timeout` without use (match the session idle timeout).
    pub fn new(idle_timeout: Duration) -> Self {
        Self { idle_timeout, entries: Mutex::new(HashMap::new()) }
    }

    /// Binds `session_id` to the principal `key` ([`crate::auth::Principal::binding_key`]).
    pub fn bind(&self, session_id: &str, key: String) {
        self.lock().insert(session_id.to_owned(), (key, Instant::now()));
    }

    /// Checks `session_id` for principal `key`, refreshing its idle timer when owned. A
    /// lapsed binding answers [`Binding::Unbound`] and stays until [`SessionBindings::sweep`]
    /// collects it (so the session's resources are released exactly once).
    pub fn check(&self, session_id: &str, key: &str) -> Binding {
        let mut entries = self.lock();
        let now = Instant::now();
        match entries.get_mut(session_id) {
            Some((_, seen)) if now.duration_since(*seen) >= self.idle_timeout => Binding::Unbound,
            Some((owner, seen)) if owner == key => {
                *seen = now;
                Binding::Owned
            }
            Some(_) => Binding::Foreign,
            None => Binding::Unbound,
        }
    }

    /// Removes every binding idle for `idle_timeout` or longer and returns their session ids,
    /// for the caller to end those sessions.
    pub fn sweep(&self) -> Vec<String> {
        let now = Instant::now();
        let mut lapsed = Vec::new();
        self.lock().retain(|id, (_, seen)| {
            let keep = now.duration_since(*seen) < self.idle_timeout;
            if !keep {
                lapsed.push(id.clone());
            }
            keep
        });
        lapsed
    }

    /// The idle timeout bindings lapse after.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Removes a binding (session deleted); whether it was bound.
    pub fn unbind(&self, session_id: &str) -> bool {
        self.lock().remove(session_id).is_some()
    }

    /// Whether `session_id` is bound (to anyone).
    pub fn is_bound(&self, session_id: &str) -> bool {
        self.lock().contains_key(session_id)
    }

    /// Number of bound sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is bound.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The `initialize` parameters of each live session the transport initialized, by session
/// id: rmcp's `SessionStore` (rmcp 3.9 `streamable_http_server::session::store`), from which
/// rmcp restores such a session at its first request rmcp must serve (module docs). In
/// memory; entries go when the session ends (DELETE, idle sweep).
///
/// Only the transport records parameters ([`InitializeStates::insert`]); rmcp's own
/// `store` calls (after an `initialize` rmcp answered, which may have been refused) are
/// ignored: such a session lives in rmcp already, and a refused one must stay unknown.
#[derive(Debug, Default)]
pub struct InitializeStates {
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    state: SessionState,
    /// Held across the first request rmcp serves for the session (its restore): rmcp's
    /// session worker must see the replayed `initialize` before any other message, so
    /// concurrent requests wait here until it has. `true` once restored.
    restore: Arc<tokio::sync::Mutex<bool>>,
}

// === impl InitializeStates ===

impl InitializeStates {
    /// Records the `initialize` parameters of session `session_id`.
    pub fn insert(&self, session_id: &str, params: InitializeRequestParams) {
        let entry = Entry { state: SessionState::new(params), restore: Arc::default() };
        self.lock().insert(session_id.to_owned(), entry);
    }

    /// Whether session `session_id` was initialized by the transport (and is live).
    pub fn contains(&self, session_id: &str) -> bool {
        self.lock().contains_key(session_id)
    }

    /// The restore gate of session `session_id` (see [`InitializeStates`]), if the transport
    /// initialized it: lock it around a request for rmcp while it reads `false`, and set it
    /// once rmcp answered without a server error.
    pub fn restore_gate(&self, session_id: &str) -> Option<Arc<tokio::sync::Mutex<bool>>> {
        self.lock().get(session_id).map(|entry| entry.restore.clone())
    }

    /// Forgets session `session_id`.
    pub fn remove(&self, session_id: &str) {
        self.lock().remove(session_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl SessionStore for InitializeStates {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        Ok(self.lock().get(session_id).map(|entry| entry.state.clone()))
    }

    async fn store(&self, _session_id: &str, _state: &SessionState) -> Result<(), SessionStoreError> {
        Ok(())
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        self.remove(session_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_binding_principal_owns_the_session() {
        let bindings = SessionBindings::new(Duration::from_secs(60));
        bindings.bind("s1", "iss\u{1f}alice".into());
        assert_eq!(bindings.check("s1", "iss\u{1f}alice"), Binding::Owned);
        assert_eq!(bindings.check("s1", "iss\u{1f}mallory"), Binding::Foreign);
        assert_eq!(bindings.check("s2", "iss\u{1f}alice"), Binding::Unbound);
        bindings.unbind("s1");
        assert_eq!(bindings.check("s1", "iss\u{1f}mallory"), Binding::Unbound);
    }

    #[test]
    fn lapsed_bindings_answer_unbound_until_swept_once() {
        let bindings = SessionBindings::new(Duration::ZERO);
        bindings.bind("s1", "a".into());
        assert_eq!(bindings.check("s1", "a"), Binding::Unbound);
        assert_eq!(bindings.sweep(), vec!["s1".to_owned()]);
        assert!(bindings.is_empty());
        assert!(bindings.sweep().is_empty());
    }

    #[test]
    fn sweep_keeps_live_bindings() {
        let bindings = SessionBindings::new(Duration::from_secs(60));
        bindings.bind("s1", "a".into());
        assert!(bindings.sweep().is_empty());
        assert_eq!(bindings.check("s1", "a"), Binding::Owned);
    }
}
