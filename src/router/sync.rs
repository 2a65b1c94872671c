//! Keeps the catalog in step with the upstreams: one catalog connection per upstream, an
//! initial listing at start, a re-listing when an upstream announces a list change, and
//! reconnection with backoff when an upstream is down. Changes are broadcast to client
//! sessions as [`ListChanged`].

use std::{collections::HashMap, sync::Arc, time::Duration};

use rmcp::{RoleClient, service::Peer};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    catalog::{CatalogStore, Collision, UpstreamListing},
    guard::{Guard, PinStore, PinVerdict, definition_hash},
    telemetry::{ComponentHandle, Metrics},
    upstream::{self, CatalogEvent, CatalogEvents, Connection, RelayTarget, Upstream},
};

/// A catalog change to announce to client sessions (`notifications/*/list_changed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListChanged {
    /// Tools changed.
    Tools,
    /// Prompts changed.
    Prompts,
    /// Resources or resource templates changed.
    Resources,
}

/// The state of one upstream after the initial listing.
#[derive(Debug)]
pub struct UpstreamStatus {
    /// Upstream name.
    pub upstream: Arc<str>,
    /// Tool count when listed, or the error that prevented it.
    pub result: Result<usize, upstream::Error>,
}

/// Maintains catalog connections and listings.
pub struct CatalogSync {
    upstreams: Vec<Arc<Upstream>>,
    store: Arc<CatalogStore>,
    changes: broadcast::Sender<ListChanged>,
    events_tx: mpsc::UnboundedSender<(Arc<str>, CatalogEvent)>,
    events_rx: mpsc::UnboundedReceiver<(Arc<str>, CatalogEvent)>,
    connections: HashMap<Arc<str>, Connection>,
    vetting: Arc<Vetting>,
    health: HashMap<Arc<str>, ComponentHandle>,
    metrics: Option<Metrics>,
}

/// What a listing passes before it reaches the catalog: the guard's scan of each tool and
/// prompt definition, and the pin store (rug-pull detection).
pub struct Vetting {
    /// The guard.
    pub guard: Arc<Guard>,
    /// Pinned tool definitions, `None` when no upstream pins.
    pub pins: Option<PinStore>,
}

/// Longest wait between reconnection attempts to a down upstream.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

// === impl CatalogSync ===

impl CatalogSync {
    /// A syncer for `upstreams` (configuration order) writing to `store`.
    pub fn new(
        upstreams: Vec<Arc<Upstream>>,
        store: Arc<CatalogStore>,
        changes: broadcast::Sender<ListChanged>,
        vetting: Vetting,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Self {
            upstreams,
            store,
            changes,
            events_tx,
            events_rx,
            connections: HashMap::new(),
            vetting: Arc::new(vetting),
            health: HashMap::new(),
            metrics: None,
        }
    }

    /// Reports each upstream's catalog connection as a health component and a metric.
    pub fn with_health(mut self, health: HashMap<Arc<str>, ComponentHandle>, metrics: Metrics) -> Self {
        self.health = health;
        self.metrics = Some(metrics);
        self
    }

    fn report(&self, name: &Arc<str>, up: bool, detail: &str) {
        if let Some(component) = self.health.get(name) {
            if up { component.up() } else { component.down(detail) }
        }
        if let Some(metrics) = &self.metrics {
            metrics.set_upstream_up(name, up);
        }
    }

    /// The sender client-session connections use to report list changes.
    pub fn events(&self) -> CatalogEvents {
        self.events_tx.clone()
    }

    /// Connects to every upstream concurrently and builds the first catalog.
    ///
    /// # Errors
    /// A [`Collision`] between two upstreams' names: the gateway must not start.
    pub async fn initial(&mut self) -> Result<Vec<UpstreamStatus>, Collision> {
        let attempts = self.upstreams.iter().map(|upstream| {
            let events = self.events_tx.clone();
            let vetting = self.vetting.clone();
            async move {
                let connection = upstream.connect(None, RelayTarget::Catalog(events), None).await?;
                let listing = list(upstream, connection.peer(), &vetting).await?;
                Ok::<_, upstream::Error>((connection, listing))
            }
        });
        let results = futures::future::join_all(attempts).await;
        let mut listings = Vec::new();
        let mut statuses = Vec::new();
        for (upstream, result) in self.upstreams.iter().zip(results) {
            match result {
                Ok((connection, listing)) => {
                    statuses.push(UpstreamStatus { upstream: upstream.name().clone(), result: Ok(listing.tools.len()) });
                    listings.push(listing);
                    self.connections.insert(upstream.name().clone(), connection);
                }
                Err(error) => statuses.push(UpstreamStatus { upstream: upstream.name().clone(), result: Err(error) }),
            }
        }
        for status in &statuses {
            self.report(&status.upstream, status.result.is_ok(), "unreachable at start");
        }
        self.store.replace_all(listings, true)?;
        Ok(statuses)
    }

    /// Runs until `shutdown`: re-lists on change notifications, reconnects down upstreams.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff: HashMap<Arc<str>, (Duration, tokio::time::Instant)> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pins_seen = self.pins_modified();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some((name, event)) = self.events_rx.recv() => self.relist(&name, Some(event)).await,
                _ = tick.tick() => {
                    // An operator approved (or reset) a pin: re-vet every upstream's tools.
                    let pins_now = self.pins_modified();
                    if pins_now != pins_seen {
                        for upstream in self.upstreams.clone() {
                            self.relist(upstream.name(), Some(CatalogEvent::ToolsChanged)).await;
                        }
                        pins_seen = self.pins_modified();
                    }
                    let now = tokio::time::Instant::now();
                    let upstreams = self.upstreams.clone();
                    for upstream in &upstreams {
                        let name = upstream.name();
                        let alive = self.connections.get(name).is_some_and(|c| !c.is_closed());
                        if alive {
                            backoff.remove(name);
                            continue;
                        }
                        self.report(name, false, "catalog session lost; reconnecting");
                        if self.connections.remove(name).is_some() {
                            tracing::warn!(upstream = %name, "upstream session lost; its entries stay listed, calls fail until it is back");
                        }
                        let (delay, next) = backoff.get(name).copied().unwrap_or((Duration::from_secs(1), now));
                        if now < next {
                            continue;
                        }
                        match upstream.connect(None, RelayTarget::Catalog(self.events_tx.clone()), None).await {
                            Ok(connection) => {
                                tracing::info!(upstream = %name, "upstream reachable");
                                self.connections.insert(name.clone(), connection);
                                self.report(name, true, "");
                                backoff.remove(name);
                                self.relist(name, None).await;
                            }
                            Err(error) => {
                                tracing::debug!(upstream = %name, %error, "upstream still unavailable");
                                let delay = (delay * 2).min(MAX_BACKOFF);
                                backoff.insert(name.clone(), (delay, now + delay));
                            }
                        }
                    }
                }
            }
        }
        for (_, connection) in self.connections.drain() {
            connection.close().await;
        }
    }

    fn pins_modified(&self) -> Option<std::time::SystemTime> {
        let pins = self.vetting.pins.as_ref()?;
        std::fs::metadata(pins.path()).and_then(|m| m.modified()).ok()
    }

    async fn relist(&mut self, name: &Arc<str>, event: Option<CatalogEvent>) {
        let (Some(upstream), Some(connection)) =
            (self.upstreams.iter().find(|u| u.name() == name), self.connections.get(name))
        else {
            return;
        };
        match list(upstream, connection.peer(), &self.vetting).await {
            Ok(listing) => {
                self.store.update(name, Some(listing));
                let changes: &[ListChanged] = match event {
                    Some(CatalogEvent::ToolsChanged) => &[ListChanged::Tools],
                    Some(CatalogEvent::PromptsChanged) => &[ListChanged::Prompts],
                    Some(CatalogEvent::ResourcesChanged) => &[ListChanged::Resources],
                    None => &[ListChanged::Tools, ListChanged::Prompts, ListChanged::Resources],
                };
                for change in changes {
                    let _ = self.changes.send(*change);
                }
            }
            Err(error) => tracing::warn!(upstream = %name, %error, "re-listing upstream failed"),
        }
    }
}

/// Lists everything an upstream advertises (all pages), within its request timeout, and
/// vets it.
async fn list(upstream: &Upstream, peer: &Peer<RoleClient>, vetting: &Vetting) -> Result<UpstreamListing, upstream::Error> {
    let mut listing = fetch(upstream, peer).await?;
    vet(upstream.name(), &mut listing, vetting);
    Ok(listing)
}

/// Withholds flagged tool and prompt definitions, and tools whose pinned definition changed.
fn vet(upstream: &str, listing: &mut UpstreamListing, vetting: &Vetting) {
    let pin = vetting.pins.as_ref().filter(|_| vetting.guard.policy(upstream).pin_definitions());
    let mut tools = Vec::with_capacity(listing.tools.len());
    for tool in std::mem::take(&mut listing.tools) {
        let scan = vetting.guard.scan_tool(upstream, &tool);
        if scan.withhold {
            let rules: Vec<&str> = scan.findings.iter().map(|f| f.rule).collect();
            tracing::warn!(upstream, tool = %tool.name, ?rules, "tool definition flagged by the guard; withheld");
            listing.withheld_tools.push((tool, "definition flagged by the guard".to_owned()));
        } else {
            tools.push(tool);
        }
    }
    // One pass over the pin store for the whole listing; `None`: the store failed.
    let verdicts: Option<Vec<PinVerdict>> = match pin {
        Some(store) => {
            let hashes: Vec<String> = tools.iter().map(definition_hash).collect();
            let entries: Vec<(&str, &str)> = tools.iter().zip(&hashes).map(|(tool, hash)| (&*tool.name, hash.as_str())).collect();
            match store.check_all(upstream, &entries) {
                Ok(verdicts) => Some(verdicts),
                Err(error) => {
                    // Fail closed: an unreadable pin store cannot vouch for any definition.
                    tracing::error!(upstream, %error, tools = tools.len(), "pin store unavailable; every tool withheld");
                    None
                }
            }
        }
        None => Some(vec![PinVerdict::Allowed; tools.len()]),
    };
    for (i, tool) in tools.into_iter().enumerate() {
        match verdicts.as_ref().map(|verdicts| verdicts[i]) {
            Some(PinVerdict::Allowed | PinVerdict::FirstSeen) => listing.tools.push(tool),
            Some(PinVerdict::Changed) => {
                tracing::warn!(upstream, tool = %tool.name, "tool definition changed since it was pinned; withheld until `portcullis tools approve`");
                listing.withheld_tools.push((tool, "definition changed; awaiting approval".to_owned()));
            }
            None => listing.withheld_tools.push((tool, "definition could not be checked".to_owned())),
        }
    }
    listing.prompts.retain(|prompt| {
        let scan = vetting.guard.scan_prompt(upstream, prompt);
        if scan.withhold {
            tracing::warn!(upstream, prompt = %prompt.name, "prompt definition flagged by the guard; withheld");
        }
        !scan.withhold
    });
}

/// Fetches every page of the upstream's lists.
async fn fetch(upstream: &Upstream, peer: &Peer<RoleClient>) -> Result<UpstreamListing, upstream::Error> {
    let timeout = upstream.settings().request_timeout;
    let name = upstream.name().clone();
    let capabilities = peer.peer_info().map(|info| info.capabilities.clone()).unwrap_or_default();
    let work = async {
        let tools = if capabilities.tools.is_some() { peer.list_all_tools().await? } else { Vec::new() };
        let prompts = if capabilities.prompts.is_some() { peer.list_all_prompts().await? } else { Vec::new() };
        let (resources, templates) = if capabilities.resources.is_some() {
            (peer.list_all_resources().await?, peer.list_all_resource_templates().await?)
        } else {
            (Vec::new(), Vec::new())
        };
        Ok::<_, rmcp::service::ServiceError>(UpstreamListing {
            upstream: name.clone(),
            tool_prefix: upstream.settings().tool_prefix.clone(),
            tools,
            prompts,
            resources,
            templates,
            withheld_tools: Vec::new(),
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(listing)) => Ok(listing),
        Ok(Err(error)) => Err(upstream::Error::Unavailable { upstream: name, reason: format!("listing failed: {error}") }),
        Err(_) => Err(upstream::Error::Timeout { upstream: name, timeout }),
    }
}
