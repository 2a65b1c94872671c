//! Policy: decides, deny by default, whether a [`Principal`] may use a tool, resource or prompt.
//!
//! The same [`Policy::decide`] call filters lists and authorizes calls, so a caller never sees
//! what it cannot call and a hidden target answers exactly like an unknown one. An allowed
//! decision carries a [`Grant`], the proof type that [`crate::upstream`] requires before it
//! forwards anything.
//!
//! Until configurable rules land (the OAuth/policy issue), the policy is the default one of
//! the core gateway: scope `mcp:tools` grants every tool of every upstream, `mcp:resources`
//! every resource and resource template, `mcp:prompts` every prompt (and their completions).

use crate::auth::Principal;

/// The scopes of the default policy, in the order they are advertised.
pub const DEFAULT_SCOPES: [&str; 3] = ["mcp:tools", "mcp:resources", "mcp:prompts"];

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

/// A policy target: one upstream's tool, resource or prompt, by its upstream-side name (or URI).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Kind of entry.
    pub kind: TargetKind,
    /// Upstream name from configuration.
    pub upstream: &'a str,
    /// Name (tools, prompts) or URI (resources) as the upstream knows it.
    pub name: &'a str,
}

/// The outcome of [`Policy::decide`].
#[derive(Debug)]
pub enum Decision {
    /// Allowed: the grant authorizes exactly this target for this principal.
    Allow(Grant),
    /// Denied because scopes are missing: granting them would allow the target (step-up,
    /// RFC 6750 §3.1 `insufficient_scope`).
    DenyMissingScopes(Vec<&'static str>),
}

/// Proof that policy allowed one principal to use one target. Only [`Policy::decide`]
/// constructs it.
#[derive(Debug)]
pub struct Grant {
    kind: TargetKind,
    upstream: String,
    rule: &'static str,
    _proof: (),
}

/// The policy engine (today: the default scope policy).
#[derive(Debug, Default, Clone)]
pub struct Policy {}

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
    pub fn rule(&self) -> &'static str {
        self.rule
    }
}

// === impl Policy ===

impl Policy {
    /// Decides whether `principal` may use `target`.
    pub fn decide(&self, principal: &Principal, target: Target<'_>) -> Decision {
        let scope = target.kind.default_scope();
        if principal.has_scope(scope) {
            Decision::Allow(Grant { kind: target.kind, upstream: target.upstream.to_owned(), rule: scope, _proof: () })
        } else {
            Decision::DenyMissingScopes(vec![scope])
        }
    }

    /// Whether the target is visible (listed) to `principal`: exactly when a call is allowed.
    pub fn permits(&self, principal: &Principal, target: Target<'_>) -> bool {
        matches!(self.decide(principal, target), Decision::Allow(_))
    }

    /// Scopes `principal` lacks to use *some* target of `kind`, or `None` when it has them.
    /// Used by the transport to answer 403 `insufficient_scope` before any work is done.
    pub fn missing_scopes_for_kind(&self, principal: &Principal, kind: TargetKind) -> Option<Vec<&'static str>> {
        let scope = kind.default_scope();
        (!principal.has_scope(scope)).then(|| vec![scope])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scope_grants_only_its_kind() {
        let policy = Policy::default();
        let tools_only = Principal::for_tests("alice", &["mcp:tools"]);
        let target = |kind| Target { kind, upstream: "u", name: "x" };
        assert!(policy.permits(&tools_only, target(TargetKind::Tool)));
        assert!(!policy.permits(&tools_only, target(TargetKind::Resource)));
        assert!(!policy.permits(&tools_only, target(TargetKind::Prompt)));
        match policy.decide(&tools_only, target(TargetKind::Prompt)) {
            Decision::DenyMissingScopes(scopes) => assert_eq!(scopes, vec!["mcp:prompts"]),
            Decision::Allow(_) => panic!("prompt allowed without mcp:prompts"),
        }
    }

    #[test]
    fn no_scopes_means_nothing_is_allowed() {
        let policy = Policy::default();
        let nobody = Principal::for_tests("bob", &[]);
        for kind in [TargetKind::Tool, TargetKind::Resource, TargetKind::Prompt] {
            assert!(!policy.permits(&nobody, Target { kind, upstream: "u", name: "x" }));
            assert_eq!(policy.missing_scopes_for_kind(&nobody, kind), Some(vec![kind.default_scope()]));
        }
    }

    #[test]
    fn grant_names_upstream_and_rule() {
        let policy = Policy::default();
        let alice = Principal::for_tests("alice", &["mcp:tools"]);
        let Decision::Allow(grant) = policy.decide(&alice, Target { kind: TargetKind::Tool, upstream: "gh", name: "t" }) else {
            panic!("denied");
        };
        assert_eq!((grant.upstream(), grant.rule(), grant.kind()), ("gh", "mcp:tools", TargetKind::Tool));
    }
}
