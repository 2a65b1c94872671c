//! Catalog: the merged, namespaced tools, prompts, resources and resource templates of the
//! allow-listed upstreams, and the routing of each entry back to its upstream.
//!
//! Naming and routing rules (README "Catalog"):
//! - tools and prompts are advertised as `<tool_prefix><name>`; two upstreams whose names
//!   collide after prefixing stop the gateway at start (the error names both). If a collision
//!   appears later (an upstream's list changes), the entry of the upstream configured first
//!   wins and the other is withheld, with an error in the log;
//! - resources keep their URI (URIs are opaque to the gateway) and are routed to the upstream
//!   that listed that exact URI. A URI listed by two upstreams is *ambiguous*: it is withheld
//!   from lists and reads of it fail as not found, so a collision can never route to the wrong
//!   upstream. A URI that no upstream listed is routed by resource templates: to the single
//!   upstream whose template matches it; no match or several matches → not found.
//!
//! The catalog is an immutable value; [`CatalogStore`] swaps in a new one when an upstream's
//! lists change, and reports the change so client sessions get `list_changed` notifications.

mod template;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

use rmcp::model::{Prompt, Resource, ResourceTemplate, Tool};

pub use template::UriTemplate;

/// What one upstream advertised, as listed by its catalog connection.
#[derive(Debug, Clone, Default)]
pub struct UpstreamListing {
    /// Upstream name.
    pub upstream: Arc<str>,
    /// Prefix for its tools and prompts.
    pub tool_prefix: String,
    /// `tools/list`.
    pub tools: Vec<Tool>,
    /// `prompts/list`.
    pub prompts: Vec<Prompt>,
    /// `resources/list`.
    pub resources: Vec<Resource>,
    /// `resources/templates/list`.
    pub templates: Vec<ResourceTemplate>,
    /// Tools held back by the guard, with the reason (flagged description, or a definition
    /// that changed since it was pinned and awaits approval).
    pub withheld_tools: Vec<(Tool, String)>,
}

/// One catalog entry: the advertised item and where it comes from.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    /// Upstream that advertised it.
    pub upstream: Arc<str>,
    /// Its name (tools, prompts) or URI (resources) at the upstream.
    pub original: String,
    /// The item as advertised to clients (prefixed name).
    pub item: T,
}

/// A resource template entry with its compiled matcher.
#[derive(Debug, Clone)]
pub struct TemplateEntry {
    /// Upstream that advertised it.
    pub upstream: Arc<str>,
    /// The template as advertised.
    pub item: ResourceTemplate,
    matcher: Option<UriTemplate>,
}

/// Two upstreams advertise the same name after prefixing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} name {name:?} is advertised by both upstream {first:?} and upstream {second:?}; set a distinct tool_prefix for one of them")]
pub struct Collision {
    /// `tool` or `prompt`.
    pub kind: &'static str,
    /// The colliding advertised name.
    pub name: String,
    /// Upstream configured first.
    pub first: Arc<str>,
    /// Upstream configured later.
    pub second: Arc<str>,
}

/// The merged catalog (immutable).
#[derive(Debug, Default)]
pub struct Catalog {
    tools: Vec<Entry<Tool>>,
    tool_index: HashMap<String, usize>,
    prompts: Vec<Entry<Prompt>>,
    prompt_index: HashMap<String, usize>,
    resources: Vec<Entry<Resource>>,
    resource_index: HashMap<String, usize>,
    templates: Vec<TemplateEntry>,
    withheld: HashMap<String, (Entry<Tool>, String)>,
}

/// Where a resource URI is routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceRoute {
    /// To this upstream.
    Upstream(Arc<str>),
    /// Listed or matched by several upstreams: refused.
    Ambiguous,
    /// Nobody listed or matches it.
    Unknown,
}

/// Holds the current [`Catalog`] and each upstream's last listing.
#[derive(Debug, Default)]
pub struct CatalogStore {
    order: Vec<Arc<str>>,
    listings: RwLock<HashMap<Arc<str>, UpstreamListing>>,
    current: RwLock<Arc<Catalog>>,
}

// === impl Catalog ===

impl Catalog {
    /// Merges listings given in configuration order.
    ///
    /// # Errors
    /// With `strict`, the first [`Collision`]; without, collisions are logged and the later
    /// entry is withheld.
    pub fn build(listings: &[&UpstreamListing], strict: bool) -> Result<Self, Collision> {
        let mut catalog = Self::default();
        let mut uri_owners: HashMap<&str, Vec<(&Arc<str>, &Resource)>> = HashMap::new();
        for listing in listings {
            for tool in &listing.tools {
                let name = format!("{}{}", listing.tool_prefix, tool.name);
                if let Some(&existing) = catalog.tool_index.get(&name) {
                    let collision = Collision { kind: "tool", name, first: catalog.tools[existing].upstream.clone(), second: listing.upstream.clone() };
                    if strict {
                        return Err(collision);
                    }
                    tracing::error!(%collision, "tool withheld");
                    continue;
                }
                let mut item = tool.clone();
                item.name = name.clone().into();
                catalog.tool_index.insert(name, catalog.tools.len());
                catalog.tools.push(Entry { upstream: listing.upstream.clone(), original: tool.name.to_string(), item });
            }
            for (tool, reason) in &listing.withheld_tools {
                let name = format!("{}{}", listing.tool_prefix, tool.name);
                let entry = Entry { upstream: listing.upstream.clone(), original: tool.name.to_string(), item: tool.clone() };
                catalog.withheld.insert(name, (entry, reason.clone()));
            }
            for prompt in &listing.prompts {
                let name = format!("{}{}", listing.tool_prefix, prompt.name);
                if let Some(&existing) = catalog.prompt_index.get(&name) {
                    let collision = Collision { kind: "prompt", name, first: catalog.prompts[existing].upstream.clone(), second: listing.upstream.clone() };
                    if strict {
                        return Err(collision);
                    }
                    tracing::error!(%collision, "prompt withheld");
                    continue;
                }
                let mut item = prompt.clone();
                item.name = name.clone();
                catalog.prompt_index.insert(name, catalog.prompts.len());
                catalog.prompts.push(Entry { upstream: listing.upstream.clone(), original: prompt.name.clone(), item });
            }
            for resource in &listing.resources {
                let owners = uri_owners.entry(resource.uri.as_str()).or_default();
                if !owners.iter().any(|(upstream, _)| *upstream == &listing.upstream) {
                    owners.push((&listing.upstream, resource));
                }
            }
            for template in &listing.templates {
                let matcher = UriTemplate::parse(&template.uri_template);
                if matcher.is_none() {
                    tracing::warn!(upstream = %listing.upstream, template = %template.uri_template, "resource template not understood; it is listed but routes nothing");
                }
                catalog.templates.push(TemplateEntry { upstream: listing.upstream.clone(), item: template.clone(), matcher });
            }
        }
        // Keep listing order stable: walk listings again rather than the hash map.
        let mut seen = HashSet::new();
        for listing in listings {
            for resource in &listing.resources {
                let uri = resource.uri.as_str();
                if !seen.insert(uri.to_owned()) {
                    continue;
                }
                let owners = &uri_owners[uri];
                if owners.len() > 1 {
                    let names: Vec<&str> = owners.iter().map(|(u, _)| &***u).collect();
                    tracing::warn!(uri, upstreams = ?names, "resource URI listed by several upstreams; withheld as ambiguous");
                    catalog.resource_index.insert(uri.to_owned(), usize::MAX);
                    continue;
                }
                catalog.resource_index.insert(uri.to_owned(), catalog.resources.len());
                catalog.resources.push(Entry { upstream: listing.upstream.clone(), original: uri.to_owned(), item: resource.clone() });
            }
        }
        Ok(catalog)
    }

    /// All tools, in configuration then upstream order.
    pub fn tools(&self) -> &[Entry<Tool>] {
        &self.tools
    }

    /// The tool advertised as `name`.
    pub fn tool(&self, name: &str) -> Option<&Entry<Tool>> {
        self.tool_index.get(name).map(|&i| &self.tools[i])
    }

    /// A tool the guard withholds under the advertised `name`, with the reason.
    pub fn withheld_tool(&self, name: &str) -> Option<&(Entry<Tool>, String)> {
        self.withheld.get(name)
    }

    /// All prompts.
    pub fn prompts(&self) -> &[Entry<Prompt>] {
        &self.prompts
    }

    /// The prompt advertised as `name`.
    pub fn prompt(&self, name: &str) -> Option<&Entry<Prompt>> {
        self.prompt_index.get(name).map(|&i| &self.prompts[i])
    }

    /// All unambiguous resources.
    pub fn resources(&self) -> &[Entry<Resource>] {
        &self.resources
    }

    /// All resource templates.
    pub fn templates(&self) -> &[TemplateEntry] {
        &self.templates
    }

    /// Routes a resource URI by the rule in the module docs.
    pub fn route_resource(&self, uri: &str) -> ResourceRoute {
        match self.resource_index.get(uri) {
            Some(&usize::MAX) => return ResourceRoute::Ambiguous,
            Some(&index) => return ResourceRoute::Upstream(self.resources[index].upstream.clone()),
            None => {}
        }
        let mut matched: Option<&Arc<str>> = None;
        for template in &self.templates {
            if template.matcher.as_ref().is_some_and(|m| m.matches(uri)) {
                match matched {
                    Some(upstream) if upstream != &template.upstream => return ResourceRoute::Ambiguous,
                    _ => matched = Some(&template.upstream),
                }
            }
        }
        matched.map_or(ResourceRoute::Unknown, |u| ResourceRoute::Upstream(u.clone()))
    }
}

// === impl CatalogStore ===

impl CatalogStore {
    /// An empty store for upstreams in configuration `order`.
    pub fn new(order: Vec<Arc<str>>) -> Self {
        Self { order, ..Self::default() }
    }

    /// The current catalog.
    pub fn current(&self) -> Arc<Catalog> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replaces the listings of several upstreams at once (start-up) and rebuilds.
    ///
    /// # Errors
    /// With `strict`, a [`Collision`]; the store is unchanged then.
    pub fn replace_all(&self, listings: Vec<UpstreamListing>, strict: bool) -> Result<(), Collision> {
        let mut map = self.listings.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = map.clone();
        for listing in listings {
            next.insert(listing.upstream.clone(), listing);
        }
        let catalog = self.build(&next, strict)?;
        *map = next;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(catalog);
        Ok(())
    }

    /// Replaces (or, with `None`, removes) one upstream's listing and rebuilds leniently.
    pub fn update(&self, upstream: &Arc<str>, listing: Option<UpstreamListing>) {
        let mut map = self.listings.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match listing {
            Some(listing) => map.insert(upstream.clone(), listing),
            None => map.remove(upstream),
        };
        // Lenient builds never fail.
        let catalog = self.build(&map, false).unwrap_or_default();
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(catalog);
    }

    fn build(&self, map: &HashMap<Arc<str>, UpstreamListing>, strict: bool) -> Result<Catalog, Collision> {
        let ordered: Vec<&UpstreamListing> = self.order.iter().filter_map(|name| map.get(name)).collect();
        Catalog::build(&ordered, strict)
    }
}

#[cfg(test)]
mod tests;
