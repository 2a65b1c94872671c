//! Guard configuration: what to do per detection family, globally (`[guard]`) and per upstream
//! (`[upstream.guard]`), and how flagged definitions are handled.
//!
//! Invariant: a [`Policy`] is only built by [`GuardConfig::policy`], which has checked that
//! `strip` is set only on the families whose findings can be removed character by character
//! ([`Family::strippable`]); anything else is an [`Error::StripNotApplicable`].

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Error, Family};

/// What the guard does with a tool result, resource or prompt in which a family was found.
///
/// When several families are found, the strongest action wins (`block` > `annotate` >
/// `strip`); families set to `strip` are stripped in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Remove the offending characters (invisible Unicode, terminal escapes and controls) and
    /// pass the rest on. Only valid for [`Family::strippable`] families.
    Strip,
    /// Pass the content on, marked with `_meta["io.portcullis/guard"]` (and, for tool results,
    /// a leading text block telling the model to treat the content as data).
    Annotate,
    /// Replace the content with a neutral message (`isError: true` for tool results) that does
    /// not repeat the payload.
    Block,
}

/// What happens to a tool or prompt whose definition (description, schema strings,
/// annotation titles) is flagged when the catalog is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefinitionAction {
    /// Hide it from lists and refuse calls (the default).
    Withhold,
    /// List it anyway; findings are only logged and audited.
    Allow,
}

/// Per-family actions for content a model will read (tool results, resources, prompts).
///
/// Defaults follow issue 5: invisible Unicode and terminal escapes are stripped; instruction,
/// hidden-instruction, tool-shadowing, exfiltration and encoded-payload findings block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FamilyActions {
    /// `instruction`: "ignore previous instructions", fake `system:`/`assistant:` turns,
    /// chat-template tokens. Default `block`.
    pub instruction: Action,
    /// `hidden_instruction`: `<IMPORTANT>`/`<system>` tags, "do not tell the user",
    /// "before using this tool, read …". Default `block`.
    pub hidden_instruction: Action,
    /// `tool_shadowing`: text that gives instructions about other tools. Default `block`.
    pub tool_shadowing: Action,
    /// `invisible_unicode`: tag characters, zero-width and bidi controls, variation-selector
    /// smuggling, mixed-script confusables. Default `strip`.
    pub invisible_unicode: Action,
    /// `terminal_escape`: ANSI CSI/OSC sequences (OSC 8 hyperlinks too) and C0/C1 controls.
    /// Default `strip`.
    pub terminal_escape: Action,
    /// `exfiltration`: markdown images/links whose URL carries data to a host not on the
    /// allow-list, and instructions to build such URLs. Default `block`.
    pub exfiltration: Action,
    /// `encoded_payload`: base64, tag-character or split-string payloads that decode to any
    /// of the above. Default `block`.
    pub encoded_payload: Action,
}

/// `[guard]`: the guard's global configuration.
///
/// ```toml
/// [guard]
/// allow_hosts = ["github.com", "githubusercontent.com"]
/// definitions = "withhold"
/// pin_definitions = true
/// [guard.actions]
/// instruction = "annotate"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Scan tool results, resources and prompts at all. Default `true`.
    pub enabled: bool,
    /// Per-family actions for results (see [`FamilyActions`]).
    pub actions: FamilyActions,
    /// Hosts that links and images may point at with data in their URL (exact host or any
    /// subdomain of it; case-insensitive). Default empty: every host is foreign.
    pub allow_hosts: Vec<String>,
    /// What to do with a tool or prompt whose definition is flagged. Default `withhold`.
    pub definitions: DefinitionAction,
    /// Pin each tool definition's hash on first sight and withhold changed definitions until
    /// `portcullis tools approve`. Default `true`.
    pub pin_definitions: bool,
}

/// `[upstream.guard]`: per-upstream overrides; every key is optional and falls back to
/// `[guard]`. `allow_hosts` here is added to the global list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardOverride {
    /// Overrides [`GuardConfig::enabled`].
    pub enabled: Option<bool>,
    /// Per-family overrides of [`GuardConfig::actions`].
    pub actions: FamilyOverrides,
    /// Added to [`GuardConfig::allow_hosts`] for this upstream.
    pub allow_hosts: Vec<String>,
    /// Overrides [`GuardConfig::definitions`].
    pub definitions: Option<DefinitionAction>,
    /// Overrides [`GuardConfig::pin_definitions`].
    pub pin_definitions: Option<bool>,
}

/// Optional per-family actions, for [`GuardOverride`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // One field per family, documented on [`FamilyActions`].
pub struct FamilyOverrides {
    pub instruction: Option<Action>,
    pub hidden_instruction: Option<Action>,
    pub tool_shadowing: Option<Action>,
    pub invisible_unicode: Option<Action>,
    pub terminal_escape: Option<Action>,
    pub exfiltration: Option<Action>,
    pub encoded_payload: Option<Action>,
}

/// The checked, effective guard policy for one upstream (or the global one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub(super) enabled: bool,
    pub(super) actions: FamilyActions,
    pub(super) allow_hosts: Vec<String>,
    pub(super) definitions: DefinitionAction,
    pub(super) pin_definitions: bool,
}

// === impl FamilyActions ===

impl Default for FamilyActions {
    fn default() -> Self {
        Self {
            instruction: Action::Block,
            hidden_instruction: Action::Block,
            tool_shadowing: Action::Block,
            invisible_unicode: Action::Strip,
            terminal_escape: Action::Strip,
            exfiltration: Action::Block,
            encoded_payload: Action::Block,
        }
    }
}

impl FamilyActions {
    /// The action configured for `family`.
    pub fn action(&self, family: Family) -> Action {
        match family {
            Family::Instruction => self.instruction,
            Family::HiddenInstruction => self.hidden_instruction,
            Family::ToolShadowing => self.tool_shadowing,
            Family::InvisibleUnicode => self.invisible_unicode,
            Family::TerminalEscape => self.terminal_escape,
            Family::Exfiltration => self.exfiltration,
            Family::EncodedPayload => self.encoded_payload,
        }
    }

    fn overridden(mut self, with: &FamilyOverrides) -> Self {
        let pairs = [
            (&mut self.instruction, with.instruction),
            (&mut self.hidden_instruction, with.hidden_instruction),
            (&mut self.tool_shadowing, with.tool_shadowing),
            (&mut self.invisible_unicode, with.invisible_unicode),
            (&mut self.terminal_escape, with.terminal_escape),
            (&mut self.exfiltration, with.exfiltration),
            (&mut self.encoded_payload, with.encoded_payload),
        ];
        for (slot, value) in pairs {
            if let Some(value) = value {
                *slot = value;
            }
        }
        self
    }

    fn check(&self) -> Result<(), Error> {
        for family in Family::ALL {
            if self.action(family) == Action::Strip && !family.strippable() {
                return Err(Error::StripNotApplicable { family });
            }
        }
        Ok(())
    }
}

// === impl GuardConfig ===

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            actions: FamilyActions::default(),
            allow_hosts: Vec::new(),
            definitions: DefinitionAction::Withhold,
            pin_definitions: true,
        }
    }
}

impl GuardConfig {
    /// The effective policy for an upstream with optional `[upstream.guard]` overrides
    /// (`None`: the global policy).
    ///
    /// # Errors
    /// [`Error::StripNotApplicable`] when `strip` is set on a family whose findings are
    /// phrases rather than removable characters; [`Error::InvalidHost`] for an allow-list
    /// entry that is not a bare host name.
    pub fn policy(&self, upstream: Option<&GuardOverride>) -> Result<Policy, Error> {
        let default = GuardOverride::default();
        let over = upstream.unwrap_or(&default);
        let actions = self.actions.overridden(&over.actions);
        actions.check()?;
        let mut hosts = BTreeSet::new();
        for host in self.allow_hosts.iter().chain(&over.allow_hosts) {
            let host = host.trim().trim_start_matches("*.").trim_end_matches('.').to_ascii_lowercase();
            if host.is_empty() || host.contains(['/', ':', ' ', '@', '?', '#']) {
                return Err(Error::InvalidHost { host });
            }
            hosts.insert(host);
        }
        Ok(Policy {
            enabled: over.enabled.unwrap_or(self.enabled),
            actions,
            allow_hosts: hosts.into_iter().collect(),
            definitions: over.definitions.unwrap_or(self.definitions),
            pin_definitions: over.pin_definitions.unwrap_or(self.pin_definitions),
        })
    }
}

// === impl Policy ===

impl Default for Policy {
    fn default() -> Self {
        Self {
            enabled: true,
            actions: FamilyActions::default(),
            allow_hosts: Vec::new(),
            definitions: DefinitionAction::Withhold,
            pin_definitions: true,
        }
    }
}

impl Policy {
    /// Whether results are scanned at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The per-family actions.
    pub fn actions(&self) -> &FamilyActions {
        &self.actions
    }

    /// Normalized allow-listed hosts (lowercase, no leading `*.`).
    pub fn allow_hosts(&self) -> &[String] {
        &self.allow_hosts
    }

    /// What happens to flagged definitions.
    pub fn definitions(&self) -> DefinitionAction {
        self.definitions
    }

    /// Whether tool definitions are pinned.
    pub fn pin_definitions(&self) -> bool {
        self.pin_definitions
    }

    /// Whether `host` (from a URL) is on the allow-list: equal to an entry or a subdomain of it.
    pub fn host_allowed(&self, host: &str) -> bool {
        // ASCII case-insensitive without a lowercase copy: the entries are lowercase already.
        let host = host.trim_end_matches('.').as_bytes();
        self.allow_hosts.iter().any(|allowed| {
            let allowed = allowed.as_bytes();
            match host.len().checked_sub(allowed.len()) {
                Some(0) => host.eq_ignore_ascii_case(allowed),
                Some(dot) => host[dot..].eq_ignore_ascii_case(allowed) && host[dot - 1] == b'.',
                None => false,
            }
        })
    }
}
