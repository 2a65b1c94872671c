//! Policy: decides, deny by default, whether a [`Principal`] may use a tool, resource or prompt.
//!
//! The rules come from `[[policy]]` tables ([`rules`]; README "Policy"). With none configured,
//! the default rules apply ([`default_rules`]: `mcp:tools` → every tool, `mcp:resources` →
//! every resource and template, `mcp:prompts` → every prompt), through the same engine.
//!
//! One evaluation ([`Policy::evaluate`]) decides every question, in this order:
//! 1. a **deny** rule that covers the target and matches the caller (identity and scopes)
//!    wins: denied;
//! 2. else the first **allow** rule (configuration order) that covers the target and matches
//!    the caller allows it; the [`Grant`] names that rule and the scopes that justified it;
//! 3. else, if allow rules cover the target and match the caller's identity but need scopes
//!    the token lacks, it is a **step-up** ([`Decision::DenyMissingScopes`]): the rule needing
//!    the fewest extra scopes (ties: configuration order) is chosen, provided that no deny rule
//!    would apply once those scopes are held, and *all* its scopes are named, so that one
//!    re-authorization with them succeeds (RFC 6750 §3.1 `scope`: the scopes necessary);
//! 4. else denied by default: nothing allows it.
//!
//! Invariants: the same evaluation filters lists ([`Policy::permits`]) and authorizes calls
//! ([`Policy::decide`]), so a caller never sees what it cannot call and a hidden target can
//! answer exactly like an unknown one. Only [`Policy::decide`] makes a [`Grant`], the proof
//! type [`crate::upstream`] requires before it forwards anything, and only from an
//! authenticated [`Principal`]; [`Policy::evaluate`] on bare [`Attributes`] (for
//! `portcullis policy explain`) yields no grant. Tool annotations count only when the target
//! says its upstream is trusted ([`Target::trusted`]).

pub mod rules;

use std::{collections::BTreeSet, sync::Arc};

use rmcp::model::ToolAnnotations;
use serde_json::Value;

use crate::auth::Principal;

pub use rules::{Effect, Hint, PolicyRuleConfig, Rule, WhenConfig, compile_rules, default_rules};

/// The scopes of the default policy, in the order they are advertised.
pub const DEFAULT_SCOPES: [&str; 3] = ["mcp:tools", "mcp:resources", "mcp:prompts"];

/// JSON-RPC error code of an `insufficient_scope` refusal ([`insufficient_scope_error`]); the
/// transport answers it with HTTP 403 and a `WWW-Authenticate` challenge.
pub const INSUFFICIENT_SCOPE: i32 = -32003;

/// Policy errors: a `[[policy]]` rule that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A rule's key holds an unacceptable value.
    #[error("{key}: {reason}")]
    InvalidRule {
        /// The offending key, e.g. `policy[1].tools[0]`.
        key: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

/// What kind of catalog entry a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetKind {
    /// A tool (`tools/list`, `tools/call`).
    Tool,
    /// A resource or resource template (`resources/*`).
    Resource,
    /// A prompt (`prompts/list`, `prompts/get`).
    Prompt,
}

// === impl TargetKind ===

impl TargetKind {
    /// `tool`, `resource` or `prompt` (audit rows, identity assertions, `policy explain`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Resource => "resource",
            Self::Prompt => "prompt",
        }
    }
}

/// A policy target: one upstream's tool, resource or prompt, by its upstream-side name (or URI).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Kind of entry.
    pub kind: TargetKind,
    /// Upstream name from configuration.
    pub upstream: &'a str,
    /// Name (tools, prompts) or URI (resources; a template's URI template) as the upstream
    /// knows it.
    pub name: &'a str,
    /// The tool's annotations as its upstream declared them (`None` for prompts, resources and
    /// tools without annotations).
    pub annotations: Option<&'a ToolAnnotations>,
    /// Whether the upstream is configured with `trusted_annotations = true`; without it, rules
    /// with annotation conditions never apply to its tools.
    pub trusted: bool,
}

/// The caller attributes rules look at: a view of a [`Principal`], or hypothetical values
/// for `portcullis policy explain`.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// `iss`.
    pub issuer: &'a str,
    /// `sub`.
    pub subject: &'a str,
    /// `client_id` (or `azp`).
    pub client_id: Option<&'a str>,
    /// Granted scopes.
    pub scopes: &'a BTreeSet<String>,
    /// The token's other claims (`groups`, …).
    pub claims: &'a serde_json::Map<String, Value>,
}

/// The outcome of [`Policy::decide`].
#[derive(Debug)]
pub enum Decision {
    /// Allowed: the grant authorizes exactly this target for this principal.
    Allow(Grant),
    /// Denied because scopes are missing: a token holding all of these scopes (the allowing
    /// rule's, already-held ones included) would be allowed (step-up, RFC 6750 §3.1
    /// `insufficient_scope`). Answer with [`insufficient_scope_error`].
    DenyMissingScopes(Vec<String>),
    /// Denied: answer exactly as for an unknown target.
    Deny {
        /// The deny rule that refused it, or `None` when no rule allows it (deny by default).
        rule: Option<Arc<str>>,
    },
}

/// The full outcome of [`Policy::evaluate`], borrowing the rule that made it.
#[derive(Debug, Clone)]
pub enum Verdict<'p> {
    /// Allowed by this rule.
    Allow(&'p Rule),
    /// Step-up: this allow rule would allow it with its scopes; `missing` are those the
    /// caller lacks.
    DenyMissingScopes {
        /// The allow rule the caller could satisfy.
        rule: &'p Rule,
        /// Scopes of `rule` the caller lacks, in configuration order.
        missing: Vec<&'p str>,
    },
    /// Refused by this deny rule.
    DenyByRule(&'p Rule),
    /// No rule allows it.
    DenyByDefault,
}

/// Proof that policy allowed one principal to use one target. Only [`Policy::decide`]
/// constructs it.
#[derive(Debug)]
pub struct Grant {
    kind: TargetKind,
    upstream: String,
    rule: Arc<str>,
    scopes: Arc<[String]>,
    _proof: (),
}

/// The policy engine: compiled rules, evaluated in configuration order.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Arc<[Rule]>,
    defaults: bool,
}

/// A JSON-RPC error refusing a call for missing scopes: code [`INSUFFICIENT_SCOPE`], message
/// naming the scopes, `data: {"required_scopes": [...]}`. The transport turns it into HTTP
/// 403 with `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"`.
pub fn insufficient_scope_error<S: AsRef<str>>(scopes: &[S]) -> rmcp::ErrorData {
    let scopes: Vec<&str> = scopes.iter().map(AsRef::as_ref).collect();
    rmcp::ErrorData::new(
        rmcp::model::ErrorCode(INSUFFICIENT_SCOPE),
        format!("insufficient_scope: this call needs scope {}", scopes.join(" ")),
        Some(serde_json::json!({ "required_scopes": scopes })),
    )
}

// === impl TargetKind ===

impl TargetKind {
    /// The scope that grants this kind under the default policy.
    pub fn default_scope(self) -> &'static str {
        match self {
            Self::Tool => DEFAULT_SCOPES[0],
            Self::Resource => DEFAULT_SCOPES[1],
            Self::Prompt => DEFAULT_SCOPES[2],
        }
    }
}

// === impl Target ===

impl<'a> Target<'a> {
    /// A target without annotations (prompts, resources, or a tool of an untrusted upstream).
    pub fn new(kind: TargetKind, upstream: &'a str, name: &'a str) -> Self {
        Self { kind, upstream, name, annotations: None, trusted: false }
    }

    /// The same target with a tool's annotations and whether its upstream is trusted.
    pub fn with_annotations(self, annotations: Option<&'a ToolAnnotations>, trusted: bool) -> Self {
        Self { annotations, trusted, ..self }
    }
}

// === impl Attributes ===

impl<'a> From<&'a Principal> for Attributes<'a> {
    fn from(principal: &'a Principal) -> Self {
        Self {
            issuer: &principal.issuer,
            subject: &principal.subject,
            client_id: principal.client_id.as_deref(),
            scopes: &principal.scopes,
            claims: &principal.claims,
        }
    }
}

// === impl Grant ===

impl Grant {
    /// The upstream this grant is for.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Kind of target granted.
    pub fn kind(&self) -> TargetKind {
        self.kind
    }

    /// Name of the rule that allowed it (for audit and `policy explain`).
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The scopes that justified the grant (the allowing rule's `when.scopes`; may be empty),
    /// for narrowing the identity assertion's `scope` to this call.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }
}

// === impl Policy ===

impl Default for Policy {
    fn default() -> Self {
        Self::from_rules(Vec::new())
    }
}

impl Policy {
    /// A policy evaluating `rules` in order; with no rules, the [`default_rules`].
    pub fn from_rules(rules: Vec<Rule>) -> Self {
        let defaults = rules.is_empty();
        let rules = if defaults { default_rules() } else { rules };
        Self { rules: rules.into(), defaults }
    }

    /// The rules in force, in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether the built-in default rules are in force (no `[[policy]]` configured).
    pub fn uses_defaults(&self) -> bool {
        self.defaults
    }

    /// Scopes that allow rules ask for, first appearance first: what the gateway advertises
    /// as `scopes_supported` (RFC 9728 §2) and in `WWW-Authenticate` challenges.
    pub fn scopes_supported(&self) -> Vec<String> {
        let mut scopes: Vec<String> = Vec::new();
        for rule in self.rules.iter().filter(|r| r.effect() == Effect::Allow) {
            for scope in rule.scopes() {
                if !scopes.contains(scope) {
                    scopes.push(scope.clone());
                }
            }
        }
        scopes
    }

    /// Decides whether `principal` may use `target` (module docs for the order).
    pub fn decide(&self, principal: &Principal, target: Target<'_>) -> Decision {
        match self.evaluate(&Attributes::from(principal), target) {
            Verdict::Allow(rule) => Decision::Allow(Grant {
                kind: target.kind,
                upstream: target.upstream.to_owned(),
                rule: rule.name_arc(),
                scopes: rule.scopes_arc(),
                _proof: (),
            }),
            Verdict::DenyMissingScopes { rule, .. } => Decision::DenyMissingScopes(rule.scopes().to_vec()),
            Verdict::DenyByRule(rule) => Decision::Deny { rule: Some(rule.name_arc()) },
            Verdict::DenyByDefault => Decision::Deny { rule: None },
        }
    }

    /// Whether the target is visible (listed) to `principal`: exactly when [`Policy::decide`]
    /// allows it.
    pub fn permits(&self, principal: &Principal, target: Target<'_>) -> bool {
        matches!(self.evaluate(&Attributes::from(principal), target), Verdict::Allow(_))
    }

    /// Evaluates the rules for `caller` and `target` and says which rule decided.
    pub fn evaluate(&self, caller: &Attributes<'_>, target: Target<'_>) -> Verdict<'_> {
        let held = |scope: &str| caller.scopes.contains(scope);
        // Rules that cover the target and match the caller's identity; scopes decide the rest.
        let relevant = || self.rules.iter().filter(|r| r.covers(&target) && r.identifies(caller));
        let denies = || relevant().filter(|r| r.effect() == Effect::Deny);
        if let Some(rule) = denies().find(|r| r.scopes().iter().all(|s| held(s))) {
            return Verdict::DenyByRule(rule);
        }
        let mut step_up: Option<(&Rule, Vec<&str>)> = None;
        for rule in relevant().filter(|r| r.effect() == Effect::Allow) {
            let missing = rule.missing_scopes(held);
            if missing.is_empty() {
                return Verdict::Allow(rule);
            }
            if step_up.as_ref().is_some_and(|(_, best)| best.len() <= missing.len()) {
                continue;
            }
            // Never ask for scopes that would only trigger a deny rule.
            let denied_after = denies().any(|d| d.scopes().iter().all(|s| held(s) || missing.contains(&s.as_str())));
            if !denied_after {
                step_up = Some((rule, missing));
            }
        }
        match step_up {
            Some((rule, missing)) => Verdict::DenyMissingScopes { rule, missing },
            None => Verdict::DenyByDefault,
        }
    }
}

#[cfg(test)]
mod tests;
