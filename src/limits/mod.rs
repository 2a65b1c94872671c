//! Per-principal request rate limits (`[limits]`).
//!
//! Each authenticated principal (issuer and subject, the key sessions are bound by) gets a
//! budget of JSON-RPC requests: `requests_per_second` sustained, `burst` at once. The
//! algorithm is GCRA (the `governor` crate): a request is allowed when the principal's
//! theoretical arrival time is within the burst of now, so there is no window edge to game
//! and one key costs a few bytes. A refused request is answered HTTP 429 with `Retry-After`
//! (RFC 9110 §10.2.3, whole seconds, at least 1) and the JSON-RPC error [`RATE_LIMITED`],
//! before policy, audit or any upstream sees it.
//!
//! What counts: JSON-RPC requests (a `method` and an `id`). Notifications and the client's
//! answers to server requests are not limited — refusing an answer would break the call that
//! asked for it — and neither are stream opens (GET) or session ends (DELETE).
//!
//! Invariant: with the limits off (`requests_per_second = 0`, the default) nothing is kept
//! and [`RateLimits::check`] always allows. The state is per process: with several replicas
//! behind a load balancer, each replica enforces the budget on its own.

use std::{num::NonZeroU32, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota,
    clock::{Clock as _, DefaultClock},
};
use serde::{Deserialize, Serialize};

/// JSON-RPC error code of a request refused by a rate limit (in the gateway's -3205x series,
/// next to `-32050` upstream unavailable, `-32051` upstream timeout, `-32052` audit down).
pub const RATE_LIMITED: i64 = -32053;

/// `[limits]` as written in the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sustained JSON-RPC requests per second per principal; `0` (the default) turns the
    /// limits off.
    pub requests_per_second: u32,
    /// Requests a principal may send at once after being idle (default: one second's worth,
    /// `requests_per_second`). Must be at least 1 when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// Why `[limits]` is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `burst` is 0, or set while the limits are off.
    #[error("{0}")]
    Burst(&'static str),
}

/// The per-principal limiter built from [`LimitsConfig`] (see the module docs).
#[derive(Debug)]
pub struct RateLimits {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

// === impl LimitsConfig ===

impl LimitsConfig {
    /// Checks the values: `burst` must be at least 1, and only set together with a rate.
    ///
    /// # Errors
    /// [`Error::Burst`] naming the problem.
    pub fn validate(&self) -> Result<(), Error> {
        match (self.requests_per_second, self.burst) {
            (_, Some(0)) => Err(Error::Burst("must be at least 1")),
            (0, Some(_)) => Err(Error::Burst("has no effect without requests_per_second")),
            _ => Ok(()),
        }
    }
}

// === impl RateLimits ===

impl RateLimits {
    /// The limiter for `config` (validated by [`LimitsConfig::validate`]; an invalid burst
    /// falls back to the rate). Off when `requests_per_second` is 0.
    pub fn new(config: &LimitsConfig) -> Self {
        let limiter = NonZeroU32::new(config.requests_per_second).map(|rate| {
            let burst = config.burst.and_then(NonZeroU32::new).unwrap_or(rate);
            DefaultKeyedRateLimiter::hashmap(Quota::per_second(rate).allow_burst(burst))
        });
        Self { limiter, clock: DefaultClock::default() }
    }

    /// Whether limits are enforced.
    pub fn enabled(&self) -> bool {
        self.limiter.is_some()
    }

    /// Takes one request from `principal_key`'s budget (`Principal::binding_key`; owned,
    /// because a new principal's key is stored).
    ///
    /// # Errors
    /// The time until the next request would be allowed, when the budget is spent.
    pub fn check(&self, principal_key: String) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check_key(&principal_key).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets principals whose budget is full again (called by the transport's sweeper), so
    /// the state holds only principals that sent requests within the last burst period.
    pub fn retain_recent(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Principals currently tracked.
    pub fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, governor::RateLimiter::len)
    }

    /// Whether no principal is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `Retry-After` value for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

#[cfg(test)]
mod tests;
