//! Configuration loading: precedence, unknown keys, validation.

use std::{collections::HashMap, io::Write};

use super::*;

fn write(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    file
}

fn settings(file: Option<&str>, env: &[(&str, &str)], overrides: Overrides) -> Result<Settings, Error> {
    let env: HashMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let file = file.map(write);
    let config = Config::load(file.as_ref().map(|f| f.path()), &env, &overrides)?;
    Settings::from_config(config, &env)
}

#[test]
fn defaults_are_loopback_with_derived_resource() {
    let s = settings(None, &[], Overrides::default()).unwrap();
    assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.resource, "http://127.0.0.1:8080/mcp");
    assert_eq!(s.auth.issuer, "http://127.0.0.1:8080");
    assert_eq!(s.max_body_bytes, 4 * 1024 * 1024);
    assert!(s.allowed_hosts.contains(&"localhost".to_owned()));
    assert!(s.upstreams.is_empty());
}

#[test]
fn connection_timeouts_default_and_refuse_under_a_second() {
    assert_eq!(settings(None, &[], Overrides::default()).unwrap().connection_idle_timeout, Duration::from_secs(120));
    let s = settings(None, &[("PORTCULLIS_CONNECTION_IDLE_TIMEOUT", "15s")], Overrides::default()).unwrap();
    assert_eq!(s.connection_idle_timeout, Duration::from_secs(15));
    let error = settings(Some("connection_idle_timeout = \"500ms\"\n"), &[], Overrides::default()).unwrap_err().to_string();
    assert!(error.contains("connection_idle_timeout"), "{error}");
    assert_eq!(settings(None, &[], Overrides::default()).unwrap().request_body_timeout, Duration::from_secs(60));
    let error = settings(Some("request_body_timeout = \"0s\"\n"), &[], Overrides::default()).unwrap_err().to_string();
    assert!(error.contains("request_body_timeout"), "{error}");
}

#[test]
fn unknown_key_names_key_and_file() {
    let file = write("listen = \"127.0.0.1:9000\"\nlisten_adress = \"x\"\n");
    let error = Config::load(Some(file.path()), &HashMap::new(), &Overrides::default()).unwrap_err().to_string();
    assert!(error.contains("listen_adress"), "{error}");
    // figment names the file relative to the working directory when it can.
    let name = file.path().file_name().unwrap().to_string_lossy().into_owned();
    assert!(error.contains(&name), "{error}");
    let nested = write("[[upstream]]\nname = \"a\"\nurl = \"http://a/mcp\"\ntimeout = \"5s\"\n");
    let error = Config::load(Some(nested.path()), &HashMap::new(), &Overrides::default()).unwrap_err().to_string();
    assert!(error.contains("timeout"), "{error}");
}

#[test]
fn precedence_is_defaults_file_env_flags() {
    let file = "listen = \"127.0.0.1:9000\"\nmax_body_bytes = 100\n[auth]\nleeway = \"10s\"\n";
    let s = settings(Some(file), &[], Overrides::default()).unwrap();
    assert_eq!(s.listen.port(), 9000);
    assert_eq!(s.max_body_bytes, 100);
    let env = [("PORTCULLIS_LISTEN", "127.0.0.1:9100"), ("PORTCULLIS_AUTH__LEEWAY", "20s"), ("UNRELATED", "x")];
    let s = settings(Some(file), &env, Overrides::default()).unwrap();
    assert_eq!(s.listen.port(), 9100);
    assert_eq!(s.auth.leeway, Duration::from_secs(20));
    let flags = Overrides { listen: Some("127.0.0.1:9200".parse().unwrap()), ..Overrides::default() };
    let s = settings(Some(file), &env, flags).unwrap();
    assert_eq!(s.listen.port(), 9200);
}

#[test]
fn flag_upstreams_add_to_file_upstreams_with_default_prefix() {
    let file = "[[upstream]]\nname = \"files\"\nurl = \"http://127.0.0.1:1/mcp\"\ntool_prefix = \"\"\n";
    let flags = Overrides { upstreams: vec![("gh".into(), Url::parse("http://127.0.0.1:2/mcp").unwrap())], ..Overrides::default() };
    let s = settings(Some(file), &[], flags).unwrap();
    let names: Vec<_> = s.upstreams.iter().map(|u| (u.name.as_str(), u.tool_prefix.as_str())).collect();
    assert_eq!(names, vec![("files", ""), ("gh", "gh__")]);
    assert_eq!(s.upstreams[0].request_timeout, Duration::from_secs(60));
}

#[test]
fn credential_comes_from_env_and_missing_env_is_an_error() {
    use secrecy::ExposeSecret;
    let file = "[[upstream]]\nname = \"gh\"\nurl = \"https://gh.example/mcp\"\n[upstream.credential]\nenv = \"GH_TOKEN\"\nprefix = \"Bearer \"\n";
    let s = settings(Some(file), &[("GH_TOKEN", "s3cret")], Overrides::default()).unwrap();
    let credential = s.upstreams[0].credential.as_ref().unwrap();
    assert_eq!(credential.header.as_str(), "authorization");
    assert_eq!(credential.value.expose_secret(), "Bearer s3cret");
    assert!(!format!("{s:?}").contains("s3cret"), "secret leaked into Debug output");
    let error = settings(Some(file), &[], Overrides::default()).unwrap_err().to_string();
    assert!(error.contains("GH_TOKEN") && error.contains("upstream[0].credential.env"), "{error}");
}

#[test]
fn invalid_values_are_named() {
    let dup = "[[upstream]]\nname = \"a\"\nurl = \"http://x/mcp\"\n[[upstream]]\nname = \"a\"\nurl = \"http://y/mcp\"\n";
    assert!(settings(Some(dup), &[], Overrides::default()).unwrap_err().to_string().contains("duplicate upstream name"));
    let bad_name = "[[upstream]]\nname = \"a b\"\nurl = \"http://x/mcp\"\n";
    assert!(settings(Some(bad_name), &[], Overrides::default()).unwrap_err().to_string().contains("upstream[0].name"));
    let bad_scheme = "[[upstream]]\nname = \"a\"\nurl = \"ftp://x/mcp\"\n";
    assert!(settings(Some(bad_scheme), &[], Overrides::default()).unwrap_err().to_string().contains("upstream[0].url"));
    let leeway = "[auth]\nleeway = \"5m\"\n";
    assert!(settings(Some(leeway), &[], Overrides::default()).unwrap_err().to_string().contains("auth.leeway"));
    let burst = "[limits]\nrequests_per_second = 5\nburst = 0\n";
    assert!(settings(Some(burst), &[], Overrides::default()).unwrap_err().to_string().contains("limits.burst"));
}

#[test]
fn limits_are_off_by_default_and_read_from_file_and_env() {
    assert_eq!(settings(None, &[], Overrides::default()).unwrap().limits, crate::limits::LimitsConfig::default());
    let file = "[limits]\nrequests_per_second = 20\nburst = 40\n";
    let s = settings(Some(file), &[], Overrides::default()).unwrap();
    assert_eq!((s.limits.requests_per_second, s.limits.burst), (20, Some(40)));
    let env = [("PORTCULLIS_LIMITS__REQUESTS_PER_SECOND", "7")];
    assert_eq!(settings(None, &env, Overrides::default()).unwrap().limits.requests_per_second, 7);
}

#[test]
fn public_url_sets_resource_and_allow_lists() {
    let flags = Overrides { public_url: Some(Url::parse("https://mcp.example.com/").unwrap()), ..Overrides::default() };
    let s = settings(None, &[], flags).unwrap();
    assert_eq!(s.resource, "https://mcp.example.com/mcp");
    assert_eq!(s.resource_metadata_url(), "https://mcp.example.com/.well-known/oauth-protected-resource/mcp");
    assert!(s.allowed_hosts.contains(&"mcp.example.com".to_owned()));
    assert!(s.allowed_origins.contains(&"https://mcp.example.com:443".to_owned()));
}

#[test]
fn missing_config_file_is_an_error() {
    let error = Config::load(Some(std::path::Path::new("/nonexistent/portcullis.toml")), &HashMap::new(), &Overrides::default());
    assert!(error.unwrap_err().to_string().contains("does not exist"));
}

#[test]
fn signing_key_and_issuer_settings_are_validated() {
    let env_key = "[auth]\nsigning_key_env = \"PC_KEY\"\n";
    assert!(settings(Some(env_key), &[], Overrides::default()).unwrap_err().to_string().contains("PC_KEY"));
    let s = settings(Some(env_key), &[("PC_KEY", "-----BEGIN PRIVATE KEY-----")], Overrides::default()).unwrap();
    assert!(matches!(s.auth.signing_key, SigningKeySource::Pem(_)));
    assert!(!format!("{s:?}").contains("BEGIN PRIVATE KEY"), "key leaked into Debug output");
    let hmac = "[[auth.issuer]]\nissuer = \"https://idp.example.com\"\nalgorithms = [\"HS256\"]\n";
    assert!(settings(Some(hmac), &[], Overrides::default()).unwrap_err().to_string().contains("auth.issuer[0].algorithms"));
    let plain_http = "[[auth.issuer]]\nissuer = \"http://idp.example.com\"\n";
    assert!(settings(Some(plain_http), &[], Overrides::default()).unwrap_err().to_string().contains("https"));
    let nobody = "[auth]\nembedded_issuer = false\n";
    assert!(settings(Some(nobody), &[], Overrides::default()).unwrap_err().to_string().contains("auth.embedded_issuer"));
    let ok = "[[auth.issuer]]\nissuer = \"https://idp.example.com/realms/x\"\n";
    let s = settings(Some(ok), &[], Overrides::default()).unwrap();
    assert_eq!(s.auth.issuers[0].audience, s.resource);
    assert_eq!(s.auth.issuers[0].algorithms.len(), 4);
}

#[test]
fn telemetry_section_defaults_file_and_env() {
    let s = settings(None, &[], Overrides::default()).unwrap();
    assert!(s.telemetry.otlp_endpoint.is_none() && s.telemetry.metrics_listen.is_none());
    let file = "[telemetry]\notlp_endpoint = \"http://collector:4318\"\nmetrics_listen = \"127.0.0.1:9090\"\n";
    let s = settings(Some(file), &[], Overrides::default()).unwrap();
    assert_eq!(s.telemetry.otlp_endpoint.unwrap().as_str(), "http://collector:4318/");
    assert_eq!(s.telemetry.metrics_listen.unwrap().to_string(), "127.0.0.1:9090");
    let s = settings(None, &[("PORTCULLIS_TELEMETRY__METRICS_LISTEN", "0.0.0.0:9100")], Overrides::default()).unwrap();
    assert_eq!(s.telemetry.metrics_listen.unwrap().to_string(), "0.0.0.0:9100");
}

#[test]
fn telemetry_section_rejects_bad_values_naming_the_key() {
    let error = settings(Some("[telemetry]\notlp_endpoint = \"grpc://collector:4317\"\n"), &[], Overrides::default()).unwrap_err();
    assert!(error.to_string().contains("telemetry.otlp_endpoint"), "{error}");
    let same = "listen = \"127.0.0.1:9000\"\n[telemetry]\nmetrics_listen = \"127.0.0.1:9000\"\n";
    let error = settings(Some(same), &[], Overrides::default()).unwrap_err();
    assert!(error.to_string().contains("telemetry.metrics_listen"), "{error}");
    let error = Config::load(Some(write("[telemetry]\nmetrics_port = 9\n").path()), &HashMap::new(), &Overrides::default()).unwrap_err();
    assert!(error.to_string().contains("metrics_port"), "{error}");
}

#[test]
fn log_filter_and_test_harness_variables_are_not_config_keys() {
    let env = [("PORTCULLIS_LOG", "debug"), ("PORTCULLIS_TEST_POSTGRES_URL", "postgres://x"), ("PORTCULLIS_SKIP_POSTGRES", "1")];
    settings(None, &env, Overrides::default()).unwrap();
    assert!(settings(None, &[("PORTCULLIS_LISTN", "x")], Overrides::default()).is_err());
}

#[test]
fn audit_table_is_read_and_validated() {
    let s = settings(Some("[audit]\nfailure_mode = \"fail_open\"\nmax_argument_bytes = 100\n"), &[], Overrides::default()).unwrap();
    assert_eq!(s.audit.failure_mode, crate::audit::FailureMode::FailOpen);
    assert_eq!(s.audit.max_argument_bytes, 100);
    assert!(s.audit.sqlite_leader_commit, "leaders are on by default");
    let s = settings(Some("[audit]\nsqlite_leader_commit = false\n"), &[], Overrides::default()).unwrap();
    assert!(!s.audit.sqlite_leader_commit);
    assert!(settings(Some("[audit]\nurl = \"mysql://x\"\n"), &[], Overrides::default()).is_err());
    assert!(settings(Some("[audit]\nbogus = 1\n"), &[], Overrides::default()).is_err());
}
