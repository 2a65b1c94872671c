use serde_json::json;

use super::*;

fn kinds(text: &str) -> Vec<String> {
    scrub(text).findings.iter().map(|f| f.kind.to_string()).collect()
}

#[test]
fn every_vendored_rule_compiles() {
    let scrubber = Scrubber::new().unwrap();
    assert!(scrubber.gitleaks_rule_count() > 200, "only {} gitleaks rules", scrubber.gitleaks_rule_count());
    // Rules compile lazily at their first run; every one must compile.
    let rules = scrubber.rules.as_ref().unwrap();
    rules.gitleaks.compile_all().unwrap();
    rules.detect_secrets.compile_all().unwrap();
}

#[test]
fn replacement_keeps_the_kind_and_offsets_point_into_the_input() {
    let text = "key AKIAIOSFODNN7QWERTY2 in config";
    let scrubbed = scrub(text);
    assert_eq!(scrubbed.text, "key [REDACTED:aws_access_token] in config");
    let f = &scrubbed.findings[0];
    assert_eq!(&text[f.start..f.end], "AKIAIOSFODNN7QWERTY2");
}

#[test]
fn headers_bearer_basic_and_jwt() {
    let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlX2J5dGVz";
    let s = scrub(&format!("Authorization: Bearer {jwt}"));
    assert_eq!(s.text, "Authorization: Bearer [REDACTED:authorization_header]");
    assert!(!scrub(&format!("token {jwt} here")).text.contains("eyJ"));
    assert_eq!(scrub("Cookie: sid=abc123; theme=dark").text, "Cookie: [REDACTED:cookie]");
    assert_eq!(scrub("proxy-authorization: Basic dXNlcjpwYXNzd29yZA==").text, "proxy-authorization: Basic [REDACTED:authorization_header]");
    assert!(scrub("curl -H 'x: y' then bearer abcdefgh12345678").text.ends_with("bearer [REDACTED:bearer_token]"));
}

#[test]
fn url_parameters_and_passwords_in_urls() {
    assert_eq!(
        scrub("GET /cb?code=SplxlOBeZQQYbYS6WxSbIA&state=xyz").text,
        "GET /cb?code=[REDACTED:secret_parameter]&state=xyz"
    );
    assert_eq!(scrub("https://h/x?access_token=abc.def").text, "https://h/x?access_token=[REDACTED:secret_parameter]");
    assert_eq!(scrub("postgres://gw:s3cr3t-pw@db:5432/gw").text, "postgres://gw:[REDACTED:password_in_url]@db:5432/gw");
}

#[test]
fn provider_keys() {
    let github = format!("ghp_{}", "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5");
    assert_eq!(kinds(&format!("token: {github}")).len(), 1);
    assert!(scrub("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\naFDrBz9vFqU4yPHzXcbuOvM0vKI8bOB1vhyWyENbJ4OtwKQ5ZIl3Ss9yZpo0Tq0\n-----END RSA PRIVATE KEY-----").text.starts_with("[REDACTED:private_key]"));
}

#[test]
fn quoted_keyword_values_are_redacted_whole() {
    // Closing brackets inside the quotes are part of the secret.
    assert_eq!(scrub("api_key = \"Zr8{q2Lm9xT4vK}\"").text, "api_key = \"[REDACTED:secret_assignment]\"");
    // Unquoted, they close the enclosing structure.
    assert_eq!(scrub("{api_key: Zr8q2Lm9xT4vK}").text, "{api_key: [REDACTED:secret_assignment]}");
}

#[test]
fn personal_data() {
    assert_eq!(scrub("mail alice.smith@example.org now").text, "mail [REDACTED:email] now");
    assert_eq!(scrub("call +44 20 7946 0958 today").text, "call [REDACTED:phone] today");
    assert_eq!(scrub("IBAN DE89 3704 0044 0532 0130 00.").text, "IBAN [REDACTED:iban].");
    assert_eq!(scrub("IBAN DE89 3704 0044 0532 0130 01.").findings, vec![]);
}

#[test]
fn cards_only_when_luhn_valid() {
    assert_eq!(scrub("card 4111 1111 1111 1111 ok").text, "card [REDACTED:payment_card] ok");
    assert_eq!(scrub("card 4111-1111-1111-1111").text, "card [REDACTED:payment_card]");
    assert_eq!(scrub("card 4111111111111111").text, "card [REDACTED:payment_card]");
    for invalid in ["4111 1111 1111 1112", "4111-1111-1111-1112", "4111111111111112", "card=4440-2685-9952-4"] {
        assert_eq!(scrub(invalid).findings, vec![], "{invalid}");
    }
    assert!(pii::luhn(b"79927398713".iter().copied()));
    assert!(!pii::luhn(b"79927398710".iter().copied()));
}

#[test]
fn ordinary_text_is_left_alone() {
    for text in [
        "2024-01-31 10:42:00 INFO request handled in 35ms",
        "connect to 192.168.1.100:8080 version 1.2.3 via 10.0.0.1",
        "uuid 014df517-39d1-4453-b7b3-9930c563627c sha1 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
        "the tool max_tokens=512 returned 3 results",
        "",
    ] {
        assert_eq!(scrub(text).findings, vec![], "{text}");
    }
}

#[test]
fn overlapping_findings_merge() {
    let merged = merge(vec![
        Finding { kind: Arc::from("a"), start: 0, end: 5 },
        Finding { kind: Arc::from("b"), start: 3, end: 9 },
        Finding { kind: Arc::from("c"), start: 10, end: 12 },
    ]);
    assert_eq!(merged.len(), 2);
    assert_eq!((merged[0].start, merged[0].end, &*merged[0].kind), (0, 9, "a"));
}

#[test]
fn json_walker_scrubs_strings_numbers_keys_and_secret_fields() {
    let (value, findings) = scrub_json(&json!({
        "query": "mail bob@example.com",
        "password": "hunter2",
        "nested": {"card": 4111111111111111_u64, "list": ["ok", "AKIAIOSFODNN7QWERTY2"]},
        "max_tokens": 100,
    }));
    assert_eq!(value["query"], "mail [REDACTED:email]");
    assert_eq!(value["password"], "[REDACTED:secret_field]");
    assert_eq!(value["nested"]["card"], "[REDACTED:payment_card]");
    assert_eq!(value["nested"]["list"][1], "[REDACTED:aws_access_token]");
    assert_eq!(value["max_tokens"], 100);
    assert!(findings.iter().any(|f| f.pointer == "/nested/list/1"));
}

#[test]
fn writer_scrubs_each_line() {
    use std::io::Write as _;
    let mut out = Vec::new();
    {
        let mut writer = ScrubbingWriter::new(&mut out);
        writer.write_all(b"{\"msg\":\"login\",\"email\":\"carol@example.com\"}\nsecond ").unwrap();
        writer.write_all(b"line Authorization: Bearer abcdefghijkl\n").unwrap();
    }
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text, "{\"msg\":\"login\",\"email\":\"[REDACTED:email]\"}\nsecond line Authorization: Bearer [REDACTED:authorization_header]\n");
    serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap()).unwrap();
}

#[test]
fn go_classes_become_ascii() {
    assert_eq!(gitleaks::ascii_classes(r"[\w.-]{0,5}\s\d"), r"[0-9A-Za-z_.-]{0,5}[\t\n\x0C\r ][0-9]");
    assert_eq!(gitleaks::ascii_classes(r"[a--b&&c~~]"), r"[a\--b\&\&c\~\~]");
}

#[test]
fn literal_braces_are_escaped_like_re2() {
    assert_eq!(gitleaks::ascii_classes(r"^\$(?:\d+|{\d+})$"), r"^\$(?:[0-9]+|\{[0-9]+})$");
    assert_eq!(gitleaks::ascii_classes(r"a{2,5}b{3}c{1,}"), r"a{2,5}b{3}c{1,}");
}

#[test]
fn make_writer_scrubs_tracing_events() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer(Arc::new(Mutex::new(Vec::new())));
    let sink = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(ScrubbingMakeWriter::new(move || sink.clone()))
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(header = "Bearer abcdefghijklmnop", user = "dave@example.com", "upstream call failed");
    });
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains("abcdefghijklmnop") && !text.contains("dave@example.com"), "{text}");
    assert!(text.contains("[REDACTED:email]"), "{text}");
    serde_json::from_str::<serde_json::Value>(text.trim()).unwrap();
}

/// Whether any rule, gitleaks and detect-secrets ports included, flags `text`.
fn flagged(text: &str) -> bool {
    !Scrubber::global().find_unmerged(text).is_empty()
}

#[test]
fn keyword_values_that_are_templates_are_not_secrets() {
    for text in ["api_key: \"{deploy_api_key}\"", "api_key = <api-key-of-the-deploy-bot>", "private_key = ${PRIVATE_KEY_PEM}"] {
        assert!(!flagged(text), "{text}: {:?}", Scrubber::global().find_unmerged(text));
    }
    assert!(heuristic::is_templated("{{ .Values.apiKey }}") && heuristic::is_templated("x"));
    // Braces inside a value do not make it a template.
    assert!(flagged("api_key: \"q8{Zr2Lm9xT4vK7w\""));
    assert!(!heuristic::is_templated("m{{h}o)p${e]nob(ody[finds>-_$#thisone}}"));
}

#[test]
fn keyword_values_that_are_variables_are_not_secrets() {
    for text in ["api_key = $DEPLOY_API_KEY", "api_key=$(vault read -field=key secret/deploy)", "db_pass = $1", "$db_password = $_POST['pw'];"] {
        assert!(!flagged(text), "{text}: {:?}", Scrubber::global().find_unmerged(text));
    }
    // A crypt hash starts with `$` but is no variable: it is still redacted.
    let bcrypt = "db_pass = $2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
    assert_eq!(scrub(bcrypt).text, "db_pass = [REDACTED:secret_assignment]");
    for hash in ["$6$rounds=5000$saltsalt$abc", "$apr1$x8Kq$Zz", "$argon2id$v=19$m=65536"] {
        assert!(!heuristic::is_variable_reference(hash), "{hash}");
    }
}

#[test]
fn keyword_values_that_are_calls_or_subscripts_are_not_secrets() {
    for text in ["api_key = os.getenv(\"DEPLOY_API_KEY\")", "api_key = request.headers['x-api-key']", "private_key = load_pem(path)"] {
        assert!(!flagged(text), "{text}: {:?}", Scrubber::global().find_unmerged(text));
    }
    // Quoted, the same characters are a literal; unclosed, no call.
    assert!(flagged("api_key = \"fn(Q8mZ2kLp7Tw)\""));
    assert!(flagged("api_key = Zx9(Qm2kLp7Tw4v"));
    assert!(heuristic::is_indirect_reference("cfg['k'] # comment"));
    assert!(!heuristic::is_indirect_reference("Zx9(Qm2kLp7Tw4v\n)"));
}

#[test]
fn keyword_values_that_are_sequences_are_not_secrets() {
    for text in ["api_key = \"ABCDEFGHIJKLMNOP\"", "secret_key=0123456789abcdef", "api_key: xyzabcdefgh"] {
        assert!(!flagged(text), "{text}: {:?}", Scrubber::global().find_unmerged(text));
    }
    assert!(heuristic::is_sequential("7890123456") && heuristic::is_sequential("UVWXYZ0123"));
    assert!(flagged("api_key = \"Q7mZ2kLp9Tw4Xr8v\""));
    assert!(!heuristic::is_sequential("1234567890abcdef1234567890abcdef1234567890abcdef"));
}

#[test]
fn keyword_values_that_are_derived_uuids_are_not_secrets() {
    // Version 1 (clock and MAC address) and version 5 (hash of a name).
    for text in ["_authToken=743b294a-cd03-11ec-9d64-0242ac120002", "auth_token: 886313e1-3b8a-5372-9b90-0c9aee199e5d", "GET /x?token=743b294a-cd03-11ec-9d64-0242ac120002"] {
        assert!(!flagged(text), "{text}: {:?}", Scrubber::global().find_unmerged(text));
    }
    // A random (version 4) UUID is how some providers issue keys: still a secret.
    for text in ["auth_token: dafa7817-e246-48f3-91a7-e87653d587b8", "GET /x?token=dafa7817-e246-48f3-91a7-e87653d587b8"] {
        assert!(flagged(text), "{text}");
    }
    // The npm registry rule is a provider format: it redacts any UUID.
    assert!(flagged("//registry.npmjs.org/:_authToken=743b294a-cd03-11ec-9d64-0242ac120002"));
    // Not RFC 9562 (variant nibble `c`): not judged by version.
    assert!(!heuristic::is_derived_uuid("743b294a-cd03-11ec-cd64-0242ac120002"));
}

#[test]
fn keyword_values_without_letters_or_digits_are_not_secrets() {
    assert!(heuristic::not_secret_by_form("*****") && heuristic::not_secret_by_form("',.:-¨@*¿?!'"));
    assert!(!flagged("password: ',.:-¨@*¿?!'"));
    // Digits alone are a PIN or a numeric password, unlike in detect-secrets.
    assert!(!heuristic::not_secret_by_form("48213907"));
    assert!(flagged("db_pass = 48213907"));
}

#[test]
fn gitleaks_keyword_rules_exist_and_are_checked() {
    for (id, _) in gitleaks::KEYWORD_RULES {
        assert!(gitleaks::GITLEAKS_TOML.contains(&format!("id = \"{id}\"")), "{id} is not a vendored gitleaks rule");
    }
    let kinds_unmerged = |text: &str| -> Vec<String> { Scrubber::global().find_unmerged(text).iter().map(|f| f.kind.to_string()).collect() };
    // hashicorp-tf-password outside a `.tf` file: held to the keyword-assignment test.
    for text in ["password: \"real_key\"", "password := \"somefakekey\""] {
        assert!(!flagged(text), "{text}: {:?}", kinds_unmerged(text));
    }
    assert!(kinds_unmerged("administrator_login_password = \"thisIsDog11\"").contains(&"hashicorp_tf_password".to_owned()));
    // generic-api-key: a derived UUID is dropped, a random one is not.
    assert!(!kinds_unmerged("auth_token = \"743b294a-cd03-11ec-9d64-0242ac120002\"").contains(&"generic_api_key".to_owned()));
    assert!(kinds_unmerged("auth_token = \"dafa7817-e246-48f3-91a7-e87653d587b8\"").contains(&"generic_api_key".to_owned()));
    // Provider rules are not second-guessed: a GitHub token whose body is a hex sequence.
    let token = "ghp_0123456789ABCDEFABCDEF0123456789ABCD";
    assert!(heuristic::is_sequential(&token[4..]));
    assert!(kinds_unmerged(token).contains(&"github_pat".to_owned()));
}

#[test]
fn a_single_letter_among_symbols_is_not_filler() {
    // detect-secrets' keyword tests: a password of symbols and one letter is a secret.
    assert_eq!(scrub("secrete = A,.:-¨@*¿?!").text, "secrete = [REDACTED:secret_assignment]");
    assert!(heuristic::not_filler("A,.:-@*?!"));
    for filler in ["XXXX", "xxxx-xxxx", "0000", "****", "x.x"] {
        assert!(!heuristic::not_filler(filler), "{filler}");
    }
}

#[test]
fn keyword_operators_are_not_part_of_the_value() {
    for op in ["=>", "==", "===", "!=", "!==", ":=", "::", "=", ":"] {
        let text = format!("db_pass {op} hZ8q2Lm9xT4v");
        assert_eq!(scrub(&text).text, format!("db_pass {op} [REDACTED:secret_assignment]"), "{op}");
    }
}

#[test]
fn a_rule_that_cannot_compile_redacts_the_text_it_would_scan() {
    // Valid syntax (load accepts it), but far over the compiled-size cap: compiling at the
    // rule's first run fails, and the scrubber must fail closed rather than skip the rule.
    let source = r#"
        [[rules]]
        id = "huge-rule"
        regex = '''(?:a{1000}){10000}'''
        keywords = ["hugekey"]
    "#;
    let rules = gitleaks::Rules::load(source).unwrap();
    assert!(rules.compile_all().is_err());
    let mut findings = Vec::new();
    rules.scan("nothing to see", &mut findings);
    assert!(findings.is_empty(), "the rule must not run without its keyword");
    let text = "hugekey = s3cr3t-value";
    rules.scan(text, &mut findings);
    assert_eq!(findings.len(), 1);
    assert_eq!((findings[0].start, findings[0].end), (0, text.len()));
    assert_eq!(&*findings[0].kind, "huge_rule");
}
