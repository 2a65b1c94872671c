//! `portcullis policy explain`: evaluates the configured policy for a hypothetical caller and
//! one target, and prints the decision and the rule that made it.
//!
//! It reads the same configuration (file and `PORTCULLIS_*` environment) as `serve`, so it
//! explains exactly the rules the gateway would run. It never builds a
//! [`crate::auth::Principal`] or a [`crate::policy::Grant`]: it evaluates bare
//! [`Attributes`].

use std::{collections::BTreeSet, fmt::Write as _, process::ExitCode};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use rmcp::model::ToolAnnotations;
use serde_json::Value;

use super::ConfigArgs;
use crate::policy::{Attributes, Hint, Policy, Target, TargetKind, Verdict};

/// `portcullis policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The policy command.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// `portcullis policy` commands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the decision for one caller and one target, and the rule that made it. Exit
    /// status 0 when allowed, 1 when denied.
    Explain(ExplainArgs),
}

/// `portcullis policy explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Subject (`sub`) of the caller.
    #[arg(long, value_name = "SUBJECT")]
    sub: String,
    /// Space-separated scopes the caller's token holds.
    #[arg(long, value_name = "SCOPES", default_value = "")]
    scope: String,
    /// Issuer (`iss`) of the caller's token (default: the embedded authorization server).
    #[arg(long, value_name = "ISSUER")]
    iss: Option<String>,
    /// `client_id` of the caller's token.
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// A claim, `NAME=VALUE` (repeatable; a repeated name makes an array; a JSON object or
    /// array value is taken as JSON).
    #[arg(long = "claim", value_name = "NAME=VALUE", value_parser = parse_claim)]
    claims: Vec<(String, String)>,
    /// The tool's annotations, comma-separated: `readOnly`, `destructive=false`, … (the
    /// `Hint` suffix is optional; unnamed hints keep their MCP defaults).
    #[arg(long, value_name = "HINTS")]
    annotations: Option<String>,
    /// `tool:UPSTREAM/NAME`, `prompt:UPSTREAM/NAME` or `resource:UPSTREAM/URI`.
    #[arg(value_name = "TARGET")]
    target: String,
}

fn parse_claim(value: &str) -> Result<(String, String), String> {
    let (name, value) = value.split_once('=').ok_or("expected NAME=VALUE")?;
    if name.is_empty() {
        return Err("empty claim name".into());
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// Runs `portcullis policy …`.
///
/// # Errors
/// A configuration that does not load, or a malformed target, claim or annotation list.
pub fn run(args: PolicyArgs, env: &std::collections::HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Explain(args) = args.command;
    let settings = super::load_settings(&args.config, crate::config::Overrides::default(), env)?;
    let (kind, upstream, name) = parse_target(&args.target)?;
    let annotations = args.annotations.as_deref().map(parse_annotations).transpose()?;
    if annotations.is_some() && kind != TargetKind::Tool {
        bail!("--annotations only applies to tool targets");
    }
    let trusted = settings.upstreams.iter().any(|u| u.name == upstream && u.trusted_annotations);
    let scopes: BTreeSet<String> = args.scope.split_ascii_whitespace().map(str::to_owned).collect();
    let claims = claims_map(args.claims);
    let caller = Attributes {
        issuer: args.iss.as_deref().unwrap_or(&settings.auth.issuer),
        subject: &args.sub,
        client_id: args.client_id.as_deref(),
        scopes: &scopes,
        claims: &claims,
    };
    let policy = Policy::from_rules(settings.policy.clone());
    let target = Target::new(kind, upstream, name).with_annotations(annotations.as_ref(), trusted);
    let verdict = policy.evaluate(&caller, target);

    let mut out = String::new();
    if !settings.upstreams.iter().any(|u| u.name == upstream) {
        let _ = writeln!(out, "note: upstream {upstream:?} is not configured");
    }
    if annotations.is_some() && !trusted {
        let _ = writeln!(out, "note: upstream {upstream:?} is not trusted_annotations: annotation conditions do not apply");
    }
    if policy.uses_defaults() {
        let _ = writeln!(out, "rules: built-in defaults (no [[policy]] configured)");
    }
    let allowed = matches!(verdict, Verdict::Allow(_));
    match verdict {
        Verdict::Allow(rule) => {
            let scopes = if rule.scopes().is_empty() { "(none)".to_owned() } else { rule.scopes().join(" ") };
            let _ = writeln!(out, "decision: allow\nrule: {}\nscopes used: {scopes}", rule.name());
        }
        Verdict::DenyMissingScopes { rule, missing } => {
            let _ = writeln!(
                out,
                "decision: deny (403 insufficient_scope: a token with the required scopes would be allowed)\n\
                 rule: {}\nrequired scopes: {}\nmissing scopes: {}",
                rule.name(),
                rule.scopes().join(" "),
                missing.join(" ")
            );
        }
        Verdict::DenyByRule(rule) => {
            let _ = writeln!(out, "decision: deny (hidden: answers as unknown)\nrule: {} (deny rule)", rule.name());
        }
        Verdict::DenyByDefault => {
            let _ = writeln!(out, "decision: deny (hidden: answers as unknown)\nrule: none (no rule allows this target: denied by default)");
        }
    }
    print!("{out}");
    Ok(if allowed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `tool:gh/create_issue` → (Tool, "gh", "create_issue"); the URI of a resource may hold `/`.
fn parse_target(target: &str) -> anyhow::Result<(TargetKind, &str, &str)> {
    let (kind, rest) = target.split_once(':').context("TARGET must start with tool:, prompt: or resource:")?;
    let kind = match kind {
        "tool" => TargetKind::Tool,
        "prompt" => TargetKind::Prompt,
        "resource" => TargetKind::Resource,
        other => bail!("unknown target kind {other:?}: use tool:, prompt: or resource:"),
    };
    match rest.split_once('/') {
        Some((upstream, name)) if !upstream.is_empty() && !name.is_empty() => Ok((kind, upstream, name)),
        _ => bail!("TARGET must look like {}:UPSTREAM/NAME", target.split(':').next().unwrap_or("tool")),
    }
}

fn parse_annotations(list: &str) -> anyhow::Result<ToolAnnotations> {
    let mut annotations = ToolAnnotations::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = match item.split_once('=') {
            Some((name, value)) => (name, value.parse::<bool>().with_context(|| format!("{item:?}: value must be true or false"))?),
            None => (item, true),
        };
        annotations = match Hint::parse(name) {
            Some(Hint::ReadOnly) => annotations.read_only(value),
            Some(Hint::Destructive) => annotations.destructive(value),
            Some(Hint::Idempotent) => annotations.idempotent(value),
            Some(Hint::OpenWorld) => annotations.open_world(value),
            None => bail!("unknown hint {name:?}: use readOnly, destructive, idempotent or openWorld"),
        };
    }
    Ok(annotations)
}

/// Claims from `--claim`: a repeated name becomes an array; `{…}`/`[…]` values are JSON.
fn claims_map(claims: Vec<(String, String)>) -> serde_json::Map<String, Value> {
    let mut map = serde_json::Map::new();
    for (name, raw) in claims {
        let value = match raw.trim_start().chars().next() {
            Some('{' | '[') => serde_json::from_str(&raw).unwrap_or(Value::String(raw)),
            _ => Value::String(raw),
        };
        match map.get_mut(&name) {
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => *existing = Value::Array(vec![existing.take(), value]),
            None => {
                map.insert(name, value);
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_annotations_and_claims_parse() {
        assert_eq!(parse_target("tool:gh/create_issue").unwrap(), (TargetKind::Tool, "gh", "create_issue"));
        assert_eq!(parse_target("resource:docs/file:///a/b").unwrap(), (TargetKind::Resource, "docs", "file:///a/b"));
        assert!(parse_target("gh/x").is_err() && parse_target("tool:gh").is_err() && parse_target("widget:gh/x").is_err());
        let annotations = parse_annotations("readOnly, destructiveHint=false").unwrap();
        assert_eq!((annotations.read_only_hint, annotations.destructive_hint, annotations.open_world_hint), (Some(true), Some(false), None));
        assert!(parse_annotations("sneaky").is_err() && parse_annotations("readOnly=yes").is_err());
        let claims = claims_map(vec![
            ("groups".into(), "sre".into()),
            ("groups".into(), "dev".into()),
            ("team".into(), "a".into()),
            ("realm_access".into(), r#"{"roles":["x"]}"#.into()),
        ]);
        assert_eq!(Value::Object(claims), serde_json::json!({"groups": ["sre", "dev"], "team": "a", "realm_access": {"roles": ["x"]}}));
    }
}
