//! Policy tests: the default rules, a table of allow/deny/step-up decisions over one
//! configuration, compile errors naming their key, and properties over random rules.

use std::collections::{BTreeSet, HashMap};

use figment::{
    Figment,
    providers::{Format, Toml},
};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

const UPSTREAMS: [&str; 4] = ["gh", "docs", "fs", "ops"];

fn compile(toml: &str) -> Result<Vec<Rule>, Error> {
    #[derive(serde::Deserialize)]
    struct File {
        policy: Vec<PolicyRuleConfig>,
    }
    let file: File = Figment::from(Toml::string(toml)).extract().unwrap_or_else(|e| panic!("{e}\n{toml}"));
    compile_rules(&file.policy, &UPSTREAMS)
}

fn principal(subject: &str, scopes: &[&str], claims: Value) -> Principal {
    Principal::for_tests_full("https://idp.example.com", subject, None, scopes, claims)
}

fn tool(upstream: &'static str, name: &'static str) -> Target<'static> {
    Target::new(TargetKind::Tool, upstream, name)
}

/// What a case expects: allowed by a rule, a step-up naming scopes, or denied (by a rule or
/// by default).
#[derive(Debug, PartialEq)]
enum Expect {
    Allow(&'static str),
    StepUp(Vec<&'static str>),
    Deny(Option<&'static str>),
}

fn outcome(policy: &Policy, who: &Principal, target: Target<'_>) -> Expect {
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let decision = policy.decide(who, target);
    assert_eq!(policy.permits(who, target), matches!(decision, Decision::Allow(_)), "permits disagrees with decide");
    match decision {
        Decision::Allow(grant) => Expect::Allow(leak(grant.rule())),
        Decision::DenyMissingScopes(scopes) => Expect::StepUp(scopes.iter().map(|s| leak(s)).collect()),
        Decision::Deny { rule } => Expect::Deny(rule.as_deref().map(leak)),
    }
}

// --- default rules --------------------------------------------------------------------------

#[test]
fn default_rules_grant_each_kind_to_its_scope() {
    let policy = Policy::default();
    assert!(policy.uses_defaults());
    assert_eq!(policy.scopes_supported(), DEFAULT_SCOPES);
    let tools_only = Principal::for_tests("alice", &["mcp:tools"]);
    let target = |kind| Target::new(kind, "u", "x");
    assert_eq!(outcome(&policy, &tools_only, target(TargetKind::Tool)), Expect::Allow("default:mcp:tools"));
    assert_eq!(outcome(&policy, &tools_only, target(TargetKind::Resource)), Expect::StepUp(vec!["mcp:resources"]));
    assert_eq!(outcome(&policy, &tools_only, target(TargetKind::Prompt)), Expect::StepUp(vec!["mcp:prompts"]));
    let nobody = Principal::for_tests("bob", &[]);
    for kind in [TargetKind::Tool, TargetKind::Resource, TargetKind::Prompt] {
        assert!(!policy.permits(&nobody, target(kind)));
    }
}

#[test]
fn grant_names_upstream_rule_and_scopes() {
    let policy = Policy::default();
    let alice = Principal::for_tests("alice", &["mcp:tools", "other"]);
    let Decision::Allow(grant) = policy.decide(&alice, tool("gh", "t")) else { panic!("denied") };
    assert_eq!((grant.upstream(), grant.rule(), grant.kind()), ("gh", "default:mcp:tools", TargetKind::Tool));
    assert_eq!(grant.scopes(), ["mcp:tools"]);
}

#[test]
fn configured_rules_replace_the_defaults() {
    let policy = Policy::from_rules(compile("[[policy]]\nname = \"docs\"\neffect = \"allow\"\ntools = [\"docs/*\"]\n").unwrap());
    assert!(!policy.uses_defaults());
    let everything = Principal::for_tests("alice", &DEFAULT_SCOPES);
    assert_eq!(outcome(&policy, &everything, tool("docs", "search")), Expect::Allow("docs"));
    // Nothing configured for the target: denied and hidden, even with every default scope.
    assert_eq!(outcome(&policy, &everything, tool("gh", "search")), Expect::Deny(None));
    assert_eq!(outcome(&policy, &everything, Target::new(TargetKind::Prompt, "docs", "p")), Expect::Deny(None));
    assert!(policy.scopes_supported().is_empty());
}

// --- the table ------------------------------------------------------------------------------

const RULES: &str = r#"
[[policy]]
name = "read-only"
effect = "allow"
tools = ["*/*"]
when.scopes = ["mcp:read"]
when.annotations = { readOnlyHint = true }

[[policy]]
name = "writers"
effect = "allow"
tools = ["gh/*"]
when.scopes = ["mcp:read", "mcp:write"]
when.claims.groups = ["dev", "sre"]

[[policy]]
name = "docs"
effect = "allow"
tools = ["docs/search"]
prompts = ["docs/*"]
resources = ["docs/file:///public/*"]

[[policy]]
name = "no-delete"
effect = "deny"
tools = ["*/delete_*"]

[[policy]]
name = "contractors"
effect = "deny"
tools = ["gh/*"]
when.claims.groups = ["contractors"]

[[policy]]
name = "ops"
effect = "allow"
tools = ["ops/*"]
when.scopes = ["ops:run"]
when.issuers = ["https://idp.example.com"]
when.subjects = ["svc-*"]
when.client_ids = ["deployer"]

[[policy]]
name = "admin"
effect = "allow"
tools = ["gh/admin_*"]
when.scopes = ["mcp:admin"]

[[policy]]
name = "keycloak-prompts"
effect = "allow"
prompts = ["gh/*"]
when.claims."realm_access.roles" = ["gh-prompts"]

[[policy]]
name = "guests"
effect = "deny"
tools = ["docs/*"]
when.scopes = ["guest"]

[[policy]]
name = "docs-edit"
effect = "allow"
tools = ["docs/edit"]
when.scopes = ["docs:write", "guest"]

[[policy]]
name = "no-destructive-fs"
effect = "deny"
tools = ["fs/*"]
when.annotations = { destructiveHint = true }

[[policy]]
name = "fs"
effect = "allow"
tools = ["fs/*"]
"#;

#[test]
fn table_of_allow_deny_and_step_up() {
    use Expect::*;
    let policy = Policy::from_rules(compile(RULES).unwrap());
    let read_only = ToolAnnotations::new().read_only(true);
    let no_annotations = ToolAnnotations::default();
    let dev = json!({"groups": ["dev"]});
    let svc = |client: Option<&str>, scopes: &[&str]| {
        Principal::for_tests_full("https://idp.example.com", "svc-ci", client, scopes, json!({}))
    };
    let cases: Vec<(&str, Principal, Target<'_>, Expect)> = vec![
        ("read-only tool of a trusted upstream", principal("alice", &["mcp:read"], dev.clone()),
            tool("gh", "list_issues").with_annotations(Some(&read_only), true), Allow("read-only")),
        ("annotations of an untrusted upstream are ignored: step-up to writers", principal("alice", &["mcp:read"], dev.clone()),
            tool("gh", "list_issues").with_annotations(Some(&read_only), false), StepUp(vec!["mcp:read", "mcp:write"])),
        ("writer in group dev", principal("alice", &["mcp:read", "mcp:write"], dev.clone()), tool("gh", "create_issue"), Allow("writers")),
        ("claim as a string", principal("sam", &["mcp:read", "mcp:write"], json!({"groups": "sre"})), tool("gh", "create_issue"), Allow("writers")),
        ("deny wins over an allow", principal("alice", &["mcp:read", "mcp:write"], dev.clone()), tool("gh", "delete_repo"), Deny(Some("no-delete"))),
        ("deny by claim wins", principal("carol", &["mcp:read", "mcp:write"], json!({"groups": ["dev", "contractors"]})),
            tool("gh", "create_issue"), Deny(Some("contractors"))),
        ("step-up names every scope at once", principal("alice", &[], dev.clone()), tool("gh", "create_issue"), StepUp(vec!["mcp:read", "mcp:write"])),
        ("no step-up for a caller no rule could admit", principal("bob", &["mcp:read"], json!({})), tool("gh", "create_issue"), Deny(None)),
        ("claim of another type never matches", principal("bob", &["mcp:read", "mcp:write"], json!({"groups": 7})), tool("gh", "x"), Deny(None)),
        ("tie between step-ups: configuration order", principal("alice", &["mcp:read"], dev.clone()), tool("gh", "admin_users"),
            StepUp(vec!["mcp:read", "mcp:write"])),
        ("fewest missing scopes wins", principal("alice", &[], dev.clone()), tool("gh", "admin_users"), StepUp(vec!["mcp:admin"])),
        ("a later rule allows when an earlier one lacks scopes", principal("alice", &["mcp:read", "mcp:admin"], dev.clone()),
            tool("gh", "admin_users"), Allow("admin")),
        ("anyone: docs search", principal("bob", &[], json!({})), tool("docs", "search"), Allow("docs")),
        ("anyone: docs prompt", principal("bob", &[], json!({})), Target::new(TargetKind::Prompt, "docs", "summarize"), Allow("docs")),
        ("resource by URI glob", principal("bob", &[], json!({})), Target::new(TargetKind::Resource, "docs", "file:///public/a/b.md"), Allow("docs")),
        ("resource outside the glob", principal("bob", &[], json!({})), Target::new(TargetKind::Resource, "docs", "file:///private/k"), Deny(None)),
        ("same name, other kind", principal("bob", &[], json!({})), Target::new(TargetKind::Prompt, "docs", "search"), Allow("docs")),
        ("tool of an upstream no rule names", principal("bob", &[], json!({})), tool("ops", "restart"), Deny(None)),
        ("service with issuer, subject, client id and scope", svc(Some("deployer"), &["ops:run"]), tool("ops", "deploy"), Allow("ops")),
        ("service without the scope: step-up", svc(Some("deployer"), &[]), tool("ops", "deploy"), StepUp(vec!["ops:run"])),
        ("service with another client id", svc(Some("laptop"), &["ops:run"]), tool("ops", "deploy"), Deny(None)),
        ("service without a client id", svc(None, &["ops:run"]), tool("ops", "deploy"), Deny(None)),
        ("nested claim by dotted path", principal("kc", &[], json!({"realm_access": {"roles": ["gh-prompts"]}})),
            Target::new(TargetKind::Prompt, "gh", "triage"), Allow("keycloak-prompts")),
        ("deny rule conditioned on a scope", principal("g", &["guest"], json!({})), tool("docs", "search"), Deny(Some("guests"))),
        ("no step-up into a deny rule", principal("g", &[], json!({})), tool("docs", "edit"), Deny(None)),
        ("destructive by default on a trusted upstream", principal("f", &[], json!({})),
            tool("fs", "write").with_annotations(Some(&no_annotations), true), Deny(Some("no-destructive-fs"))),
        ("no annotations at all: defaults too", principal("f", &[], json!({})),
            tool("fs", "write").with_annotations(None, true), Deny(Some("no-destructive-fs"))),
        ("read-only is not destructive", principal("f", &[], json!({})),
            tool("fs", "read").with_annotations(Some(&read_only), true), Allow("fs")),
        ("deny on annotations ignored for untrusted", principal("f", &[], json!({})),
            tool("fs", "write").with_annotations(Some(&no_annotations), false), Allow("fs")),
    ];
    for (name, who, target, expected) in cases {
        assert_eq!(outcome(&policy, &who, target), expected, "case: {name}");
    }
}

#[test]
fn explain_view_matches_decisions() {
    let policy = Policy::from_rules(compile(RULES).unwrap());
    let scopes: BTreeSet<String> = ["mcp:read".to_owned()].into();
    let claims = json!({"groups": ["dev"]}).as_object().cloned().unwrap_or_default();
    let caller = Attributes { issuer: "i", subject: "alice", client_id: None, scopes: &scopes, claims: &claims };
    match policy.evaluate(&caller, tool("gh", "create_issue")) {
        Verdict::DenyMissingScopes { rule, missing } => assert_eq!((rule.name(), missing), ("writers", vec!["mcp:write"])),
        other => panic!("{other:?}"),
    }
    assert!(matches!(policy.evaluate(&caller, tool("gh", "delete_x")), Verdict::DenyByRule(r) if r.name() == "no-delete"));
    assert!(matches!(policy.evaluate(&caller, tool("ops", "x")), Verdict::DenyByDefault));
}

#[test]
fn insufficient_scope_error_is_stable() {
    let error = insufficient_scope_error(&["mcp:read", "mcp:write"]);
    assert_eq!(error.code.0, -32003);
    assert_eq!(error.message, "insufficient_scope: this call needs scope mcp:read mcp:write");
    assert_eq!(error.data, Some(json!({"required_scopes": ["mcp:read", "mcp:write"]})));
}

// --- compile errors -------------------------------------------------------------------------

#[test]
fn invalid_rules_name_their_key() {
    let rule = |body: &str| format!("[[policy]]\nname = \"r\"\neffect = \"allow\"\n{body}\n");
    let cases = [
        (rule("tools = [\"gh/*\"]").replace("\"allow\"", "\"permit\""), "policy[0].effect", "\"permit\""),
        (rule(""), "policy[0]", "at least one target"),
        (rule("tools = []"), "policy[0].tools", "empty list"),
        (rule("tools = [\"gh\"]"), "policy[0].tools[0]", "upstream/name"),
        (rule("resources = [\"/x\"]"), "policy[0].resources[0]", "upstream/name"),
        (rule("tools = [\"gh/a\", \"gihtub/*\"]"), "policy[0].tools[1]", "\"gihtub\" is not configured"),
        (rule("tools = [\"g h/*\"]"), "policy[0].tools[0]", "may only use"),
        (rule("tools = [\"gh/*\"]\nprompts = [\"gh/*\"]\nwhen.annotations = { readOnlyHint = true }"), "policy[0].when.annotations", "tools only"),
        (rule("tools = [\"gh/*\"]\nwhen.annotations = { readonly = true }"), "policy[0].when.annotations.readonly", "unknown hint"),
        (rule("tools = [\"gh/*\"]\nwhen.claims.sub = [\"alice\"]"), "policy[0].when.claims.sub", "when.subjects"),
        (rule("tools = [\"gh/*\"]\nwhen.claims.groups = []"), "policy[0].when.claims.groups", "empty list"),
        (rule("tools = [\"gh/*\"]\nwhen.subjects = []"), "policy[0].when.subjects", "empty list"),
        (rule("tools = [\"gh/*\"]\nwhen.client_ids = [\"\"]"), "policy[0].when.client_ids[0]", "empty value"),
        (rule("tools = [\"gh/*\"]\nwhen.scopes = [\"a b\"]"), "policy[0].when.scopes[0]", "scope token"),
        (rule("tools = [\"gh/*\"]").replace("\"r\"", "\" \""), "policy[0].name", "printable"),
        (format!("{}{}", rule("tools = [\"gh/*\"]"), rule("prompts = [\"gh/*\"]")), "policy[1].name", "duplicate rule name \"r\""),
    ];
    for (toml, key, reason) in cases {
        let Err(Error::InvalidRule { key: got_key, reason: got_reason }) = compile(&toml) else { panic!("accepted:\n{toml}") };
        assert_eq!(got_key, key, "{toml}");
        assert!(got_reason.contains(reason), "{got_reason:?} lacks {reason:?}\n{toml}");
    }
    // Hint names may omit the suffix, and a rule with only tools may carry annotations.
    assert!(compile(&rule("tools = [\"gh/*\"]\nwhen.annotations = { readOnly = true, openWorldHint = false }")).is_ok());
}

#[test]
fn policy_loads_through_configuration() {
    use std::io::Write as _;
    let upstreams = "[[upstream]]\nname = \"gh\"\nurl = \"http://127.0.0.1:1/mcp\"\ntrusted_annotations = true\n\
                     [[upstream]]\nname = \"docs\"\nurl = \"http://127.0.0.1:2/mcp\"\n";
    let toml = format!("{upstreams}{RULES}").replace("\"ops/*\"", "\"gh/ops_*\"").replace("\"fs/*\"", "\"docs/fs_*\"");
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(toml.as_bytes()).unwrap();
    let load = |path: &std::path::Path| {
        let config = crate::config::Config::load(Some(path), &HashMap::new(), &crate::config::Overrides::default())?;
        crate::config::Settings::from_config(config, &HashMap::new())
    };
    let settings = load(file.path()).unwrap();
    assert_eq!(settings.policy.len(), 12);
    assert_eq!((settings.upstreams[0].trusted_annotations, settings.upstreams[1].trusted_annotations), (true, false));
    assert_eq!(settings.auth.scopes_supported, ["mcp:read", "mcp:write", "ops:run", "mcp:admin", "docs:write", "guest"]);

    let mut bad = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    bad.write_all(b"[[policy]]\nname = \"r\"\neffect = \"allow\"\ntools = [\"nope/*\"]\n").unwrap();
    let error = load(bad.path()).unwrap_err().to_string();
    assert!(error.contains("policy[0].tools[0]") && error.contains("\"nope\""), "{error}");
    let mut unknown = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    unknown.write_all(b"[[policy]]\nname = \"r\"\neffect = \"allow\"\ntools = [\"*/*\"]\nwhen.group = [\"x\"]\n").unwrap();
    let error = load(unknown.path()).unwrap_err().to_string();
    assert!(error.contains("group"), "{error}");
}

// --- properties -----------------------------------------------------------------------------

const PATTERNS: [&str; 7] = ["a/*", "b/*", "*/x", "a/x", "b/y", "*/del_*", "*/*"];
const SCOPES: [&str; 3] = ["s1", "s2", "s3"];
const GROUPS: [&str; 2] = ["sre", "dev"];
const HINTS: [&str; 4] = ["readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"];

fn list(items: &[&'static str], max: usize) -> impl Strategy<Value = Option<Vec<String>>> {
    proptest::option::of(proptest::sample::subsequence(items.to_vec(), 1..=max))
        .prop_map(|list| list.map(|l| l.into_iter().map(str::to_owned).collect()))
}

fn rule_config() -> impl Strategy<Value = PolicyRuleConfig> {
    (
        any::<bool>(),
        (list(&PATTERNS, 3), list(&PATTERNS, 2), list(&PATTERNS, 1)),
        list(&SCOPES, 3),
        list(&["alice", "svc-*"], 2),
        list(&GROUPS, 2),
        proptest::option::of((proptest::sample::select(HINTS.to_vec()), any::<bool>())),
    )
        .prop_map(|(deny, (tools, prompts, resources), scopes, subjects, groups, hint)| {
            let mut rule = PolicyRuleConfig {
                name: String::new(),
                effect: if deny { "deny" } else { "allow" }.to_owned(),
                tools,
                prompts,
                resources,
                when: WhenConfig { scopes, subjects, ..WhenConfig::default() },
            };
            if let Some(groups) = groups {
                rule.when.claims.insert("groups".to_owned(), groups);
            }
            if let Some((hint, value)) = hint {
                // Annotation conditions need a tools-only rule.
                rule.when.annotations.insert(hint.to_owned(), value);
                rule.prompts = None;
                rule.resources = None;
            }
            if rule.tools.is_none() && rule.prompts.is_none() && rule.resources.is_none() {
                rule.tools = Some(vec!["*/*".to_owned()]);
            }
            rule
        })
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    proptest::collection::vec(rule_config(), 0..6).prop_map(|mut configs| {
        for (i, config) in configs.iter_mut().enumerate() {
            config.name = format!("r{i}");
        }
        Policy::from_rules(compile_rules(&configs, &["a", "b"]).unwrap_or_else(|e| panic!("{e}")))
    })
}

#[derive(Debug, Clone)]
struct Caller {
    subject: &'static str,
    scopes: Vec<&'static str>,
    groups: Value,
}

fn caller_strategy() -> impl Strategy<Value = Caller> {
    let groups = prop_oneof![
        Just(Value::Null),
        proptest::sample::select(GROUPS.to_vec()).prop_map(|g| json!(g)),
        proptest::sample::subsequence(GROUPS.to_vec(), 0..=2).prop_map(|g| json!(g)),
    ];
    let scopes = proptest::sample::subsequence(SCOPES.to_vec(), 0..=3);
    (proptest::sample::select(vec!["alice", "bob", "svc-ci"]), scopes, groups)
        .prop_map(|(subject, scopes, groups)| Caller { subject, scopes, groups })
}

#[derive(Debug, Clone)]
struct Case {
    kind: TargetKind,
    upstream: &'static str,
    name: &'static str,
    annotations: Option<ToolAnnotations>,
    trusted: bool,
}

fn target_strategy() -> impl Strategy<Value = Case> {
    let hint = || proptest::option::of(any::<bool>());
    let annotations = proptest::option::of((hint(), hint(), hint(), hint()).prop_map(|(r, d, i, o)| ToolAnnotations::from_raw(None, r, d, i, o)));
    (
        proptest::sample::select(vec![TargetKind::Tool, TargetKind::Prompt, TargetKind::Resource]),
        proptest::sample::select(vec!["a", "b"]),
        proptest::sample::select(vec!["x", "y", "del_x"]),
        annotations,
        any::<bool>(),
    )
        .prop_map(|(kind, upstream, name, annotations, trusted)| Case { kind, upstream, name, annotations, trusted })
}

fn as_principal(caller: &Caller, extra: &[String]) -> Principal {
    let mut scopes: Vec<&str> = caller.scopes.clone();
    scopes.extend(extra.iter().map(String::as_str));
    let claims = if caller.groups.is_null() { json!({}) } else { json!({"groups": caller.groups}) };
    principal(caller.subject, &scopes, claims)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

    /// A target is listed iff a call would be allowed; a step-up's scopes are enough; an
    /// allowed call is never refused up front by the transport; a matching deny rule wins.
    #[test]
    fn list_and_call_agree(policy in policy_strategy(), caller in caller_strategy(), case in target_strategy()) {
        let who = as_principal(&caller, &[]);
        let target = Target::new(case.kind, case.upstream, case.name).with_annotations(case.annotations.as_ref(), case.trusted);
        let decision = policy.decide(&who, target);
        prop_assert_eq!(policy.permits(&who, target), matches!(decision, Decision::Allow(_)));

        let attributes = Attributes::from(&who);
        let applies = |effect| policy.rules().iter().any(|r| {
            r.effect() == effect && r.covers(&target) && r.identifies(&attributes) && r.scopes().iter().all(|s| who.has_scope(s))
        });
        prop_assert_eq!(matches!(decision, Decision::Allow(_)), applies(Effect::Allow) && !applies(Effect::Deny));

        match decision {
            Decision::Allow(grant) => {
                prop_assert!(grant.scopes().iter().all(|s| who.has_scope(s)));
            }
            Decision::DenyMissingScopes(scopes) => {
                prop_assert!(scopes.iter().any(|s| !who.has_scope(s)));
                let stepped_up = as_principal(&caller, &scopes);
                prop_assert!(policy.permits(&stepped_up, target), "still denied with {:?}", scopes);
            }
            Decision::Deny { rule: Some(name) } => {
                let rule = policy.rules().iter().find(|r| *r.name() == *name);
                prop_assert!(rule.is_some_and(|r| r.effect() == Effect::Deny));
            }
            Decision::Deny { rule: None } => {}
        }
    }
}
