//! Health: `/healthz` says the process is alive; `/readyz` says every component works.
//!
//! Components register with [`Health`] and get a [`ComponentHandle`] to report their state.
//! A new component is `starting` (not ready) until it reports [`ComponentHandle::up`].
//! Readiness ([`Health::readiness`]) holds when every *required* component is up or
//! degraded and every *group* (e.g. `upstreams`) has at least one member up or degraded (an
//! empty group imposes nothing). The body names each component's state, so an operator sees
//! what is wrong without reading logs.
//!
//! [`supervise`] runs a background task (audit writer, JWKS refresher, catalog sync…),
//! marks its component down when the task returns or panics, and restarts it after a capped
//! exponential backoff; the component is ready again when the new run reports up. Callers
//! that must fail closed while a component is down (calls while the audit writer is down)
//! check [`Health::is_up`] or [`ComponentHandle::is_up`] on the request path: a read lock and
//! a map lookup.
//!
//! Details are shown to anyone who can reach `/readyz`: report short causes ("connection
//! refused"), never secrets or connection strings.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The registry of components and their states. Cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub struct Health {
    components: Arc<RwLock<BTreeMap<Arc<str>, Component>>>,
}

/// Reports one component's state.
#[derive(Clone)]
pub struct ComponentHandle {
    health: Health,
    name: Arc<str>,
}

/// A component's state as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentState {
    /// Registered or restarting, not yet confirmed working.
    Starting(Option<String>),
    /// Working.
    Up,
    /// Working with reduced function (counts as ready), with the cause.
    Degraded(String),
    /// Not working, with the cause.
    Down(String),
}

/// Restart delays of [`supervise`]: `initial`, doubling up to `max`; back to `initial` once
/// a run has lasted `stable_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay (default 1 s).
    pub initial: Duration,
    /// Largest delay (default 60 s).
    pub max: Duration,
    /// A run at least this long resets the delay (default 60 s).
    pub stable_after: Duration,
}

/// The readiness verdict and its JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    /// Whether every required component and group is working.
    pub ready: bool,
    /// `{"status": "ready"|"unready", "components": {name: {"state", "detail"?}}, "groups": {…}}`.
    pub body: Value,
}

#[derive(Debug, Clone)]
struct Component {
    group: Option<Arc<str>>,
    state: ComponentState,
}

/// `GET /healthz` (always 200 `ok` while the process serves) and `GET /readyz` (200 when
/// ready, else 503, with the JSON body of [`Health::readiness`]).
pub fn health_router(health: Health) -> Router {
    Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(readyz)).with_state(health)
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let readiness = health.readiness();
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(readiness.body))
}

/// Runs `make_task` as the background task of `component` until `stop`, restarting it with
/// `backoff` whenever it returns or panics.
///
/// Each run gets the component handle (report [`ComponentHandle::up`] once working, and
/// `degraded`/`down` as things change) and a child of `stop` (return when it fires). When a
/// run ends before `stop`, the component is marked down with the cause, an `error` line is
/// logged, and after the delay the component is `starting` again and a new run begins. On
/// `stop` the supervisor waits for the run to return and marks the component down
/// ("stopped"), so readiness fails during shutdown.
pub fn supervise<F, Fut, E>(component: ComponentHandle, backoff: Backoff, stop: CancellationToken, mut make_task: F) -> JoinHandle<()>
where
    F: FnMut(ComponentHandle, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    tokio::spawn(async move {
        let mut delay = backoff.initial;
        let mut restarts: u64 = 0;
        loop {
            let started = tokio::time::Instant::now();
            let mut run = tokio::spawn(make_task(component.clone(), stop.child_token()));
            let result = tokio::select! {
                result = &mut run => result,
                () = stop.cancelled() => {
                    // The run got a child token: let it finish what it is doing.
                    let _ = run.await;
                    component.down("stopped");
                    return;
                }
            };
            if stop.is_cancelled() {
                component.down("stopped");
                return;
            }
            let cause = match result {
                Ok(Ok(())) => "exited".to_owned(),
                Ok(Err(error)) => format!("failed: {error}"),
                Err(error) if error.is_panic() => "panicked".to_owned(),
                Err(_) => "cancelled".to_owned(),
            };
            if started.elapsed() >= backoff.stable_after {
                delay = backoff.initial;
            }
            restarts += 1;
            tracing::error!(component = %component.name, cause, restarts, retry_in_ms = delay.as_millis() as u64, "background task stopped; restarting");
            component.down(&cause);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => {
                    component.down("stopped");
                    return;
                }
            }
            delay = (delay * 2).min(backoff.max);
            component.set(ComponentState::Starting(Some(format!("restart {restarts} after: {cause}"))));
        }
    })
}

// === impl Health ===

impl Health {
    /// An empty registry (ready: nothing is required yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a required component (`starting` until it reports up). Registering a name
    /// again returns a handle to the same component and keeps its state.
    pub fn register(&self, name: &str) -> ComponentHandle {
        self.insert(name, None)
    }

    /// Registers a member of `group` (e.g. `upstreams`): the group is ready when at least one
    /// member is up or degraded. The component is shown as `{group}/{name}`.
    pub fn register_member(&self, group: &str, name: &str) -> ComponentHandle {
        self.insert(&format!("{group}/{name}"), Some(Arc::from(group)))
    }

    fn insert(&self, name: &str, group: Option<Arc<str>>) -> ComponentHandle {
        let name: Arc<str> = Arc::from(name);
        let mut components = self.components.write().unwrap_or_else(PoisonError::into_inner);
        components.entry(name.clone()).or_insert(Component { group, state: ComponentState::Starting(None) });
        ComponentHandle { health: self.clone(), name }
    }

    /// The state of `name` (`{group}/{member}` for group members), if registered.
    pub fn state(&self, name: &str) -> Option<ComponentState> {
        self.components.read().unwrap_or_else(PoisonError::into_inner).get(name).map(|c| c.state.clone())
    }

    /// Whether `name` is registered and up or degraded.
    pub fn is_up(&self, name: &str) -> bool {
        self.state(name).is_some_and(|s| s.is_working())
    }

    /// The readiness verdict and the `/readyz` body.
    pub fn readiness(&self) -> Readiness {
        let components = self.components.read().unwrap_or_else(PoisonError::into_inner);
        let mut ready = true;
        let mut groups: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        let mut shown = serde_json::Map::new();
        for (name, component) in components.iter() {
            let working = component.state.is_working();
            match &component.group {
                None => ready &= working,
                Some(group) => {
                    let entry = groups.entry(group.as_ref()).or_default();
                    entry.0 += usize::from(working);
                    entry.1 += 1;
                }
            }
            let mut item = json!({"state": component.state.as_str()});
            if let Some(detail) = component.state.detail() {
                item["detail"] = Value::from(detail);
            }
            shown.insert(name.to_string(), item);
        }
        let mut shown_groups = serde_json::Map::new();
        for (group, (working, total)) in groups {
            let group_ready = working > 0;
            ready &= group_ready;
            shown_groups.insert(group.to_owned(), json!({"ready": group_ready, "working": working, "total": total}));
        }
        let status = if ready { "ready" } else { "unready" };
        Readiness { ready, body: json!({"status": status, "components": shown, "groups": shown_groups}) }
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("readiness", &self.readiness().body).finish()
    }
}

// === impl ComponentHandle ===

impl ComponentHandle {
    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reports the component working. Logged at `info` when it changes.
    pub fn up(&self) {
        self.set(ComponentState::Up);
    }

    /// Reports reduced function (still ready), with a short cause. Logged at `warn` when it
    /// changes.
    pub fn degraded(&self, detail: &str) {
        self.set(ComponentState::Degraded(detail.to_owned()));
    }

    /// Reports the component not working, with a short cause. Logged at `warn` when it
    /// changes.
    pub fn down(&self, detail: &str) {
        self.set(ComponentState::Down(detail.to_owned()));
    }

    /// The current state.
    pub fn state(&self) -> ComponentState {
        self.health.state(&self.name).unwrap_or(ComponentState::Starting(None))
    }

    /// Whether the component is up or degraded.
    pub fn is_up(&self) -> bool {
        self.state().is_working()
    }

    fn set(&self, state: ComponentState) {
        let previous = {
            let mut components = self.health.components.write().unwrap_or_else(PoisonError::into_inner);
            let component = components
                .entry(self.name.clone())
                .or_insert(Component { group: None, state: ComponentState::Starting(None) });
            std::mem::replace(&mut component.state, state.clone())
        };
        if previous == state {
            return;
        }
        let component = &*self.name;
        match &state {
            ComponentState::Up => tracing::info!(component, "component up"),
            ComponentState::Degraded(detail) => tracing::warn!(component, detail, "component degraded"),
            ComponentState::Down(detail) => tracing::warn!(component, detail, "component down"),
            ComponentState::Starting(_) => tracing::debug!(component, "component starting"),
        }
    }
}

impl std::fmt::Debug for ComponentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentHandle").field("name", &self.name).finish()
    }
}

// === impl ComponentState ===

impl ComponentState {
    /// `starting`, `up`, `degraded` or `down`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Starting(_) => "starting",
            Self::Up => "up",
            Self::Degraded(_) => "degraded",
            Self::Down(_) => "down",
        }
    }

    /// The cause, when there is one.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::Starting(detail) => detail.as_deref(),
            Self::Up => None,
            Self::Degraded(detail) | Self::Down(detail) => Some(detail),
        }
    }

    /// Up or degraded.
    pub fn is_working(&self) -> bool {
        matches!(self, Self::Up | Self::Degraded(_))
    }
}

// === impl Backoff ===

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_secs(1), max: Duration::from_secs(60), stable_after: Duration::from_secs(60) }
    }
}
