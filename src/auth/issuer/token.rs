//! The embedded authorization server's token endpoint: the `client_credentials` grant
//! (RFC 6749 §4.4) for confidential machine clients declared in `[[auth.client]]`.
//!
//! Client authentication is `client_secret_basic` or `client_secret_post` (RFC 6749 §2.3.1);
//! secrets are configured as SHA-256 digests and compared in constant time. A `resource`
//! parameter (RFC 8707 §2) must name this gateway's canonical resource URI, which is the
//! token's audience either way. Requested scopes must be a subset of the client's; no
//! `scope` means all of them. Errors follow RFC 6749 §5.2 (plus `invalid_target`, RFC 8707).

use base64::{Engine, engine::general_purpose::STANDARD};
use serde::Serialize;

use super::{EmbeddedIssuer, TokenRequest};
use crate::config::MachineClient;

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// The access token (JWT, RFC 9068).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Lifetime in seconds.
    pub expires_in: u64,
    /// Granted scopes, space-separated.
    pub scope: String,
}

/// A token endpoint error (RFC 6749 §5.2, RFC 8707 §2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct TokenError {
    /// The `error` code.
    pub code: &'static str,
    /// `error_description`, safe to show (names no secret).
    pub description: String,
}

/// The parsed form of a token request.
#[derive(Debug, Default)]
pub struct TokenForm {
    grant_type: Option<String>,
    scope: Option<String>,
    resource: Vec<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn error(code: &'static str, description: impl Into<String>) -> TokenError {
    TokenError { code, description: description.into() }
}

// === impl TokenForm ===

impl TokenForm {
    /// Parses an `application/x-www-form-urlencoded` body.
    pub fn parse(body: &[u8]) -> Self {
        let mut form = Self::default();
        for (key, value) in url::form_urlencoded::parse(body) {
            let value = value.into_owned();
            match &*key {
                "grant_type" => form.grant_type = Some(value),
                "scope" => form.scope = Some(value),
                "resource" => form.resource.push(value),
                "client_id" => form.client_id = Some(value),
                "client_secret" => form.client_secret = Some(value),
                _ => {}
            }
        }
        form
    }
}

// === impl TokenError ===

impl TokenError {
    /// HTTP status for this error: 401 for `invalid_client`, else 400.
    pub fn status(&self) -> u16 {
        if self.code == "invalid_client" { 401 } else { 400 }
    }
}

impl EmbeddedIssuer {
    /// Runs the `client_credentials` grant for `form`, authenticating the client from the
    /// `Authorization` header (Basic) or the form (post).
    ///
    /// # Errors
    /// A [`TokenError`] with the RFC 6749 §5.2 code.
    pub fn client_credentials(
        &self,
        clients: &[MachineClient],
        authorization: Option<&str>,
        form: &TokenForm,
    ) -> Result<TokenResponse, TokenError> {
        let (client_id, secret) = client_authentication(authorization, form)?;
        // Look up and compare in constant time; an unknown id and a wrong secret fail alike.
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
        let client = clients.iter().find(|c| c.client_id == client_id);
        let authenticated = client.is_some_and(|c| {
            #[allow(deprecated)]
            aws_lc_rs::constant_time::verify_slices_are_equal(digest.as_ref(), &c.secret_sha256).is_ok()
        });
        let Some(client) = client.filter(|_| authenticated) else {
            return Err(error("invalid_client", "client authentication failed"));
        };
        match form.grant_type.as_deref() {
            Some("client_credentials") => {}
            Some(other) => return Err(error("unsupported_grant_type", format!("grant_type {other:?} is not supported"))),
            None => return Err(error("invalid_request", "grant_type is required")),
        }
        for resource in &form.resource {
            if resource != &self.resource {
                return Err(error("invalid_target", format!("this server only issues tokens for {}", self.resource)));
            }
        }
        let scopes: Vec<String> = match form.scope.as_deref().map(str::split_ascii_whitespace) {
            None => client.scopes.clone(),
            Some(requested) => {
                let requested: Vec<String> = requested.map(str::to_owned).collect();
                if let Some(bad) = requested.iter().find(|s| !client.scopes.contains(s)) {
                    return Err(error("invalid_scope", format!("scope {bad:?} is not allowed for this client")));
                }
                requested
            }
        };
        let ttl = client.max_ttl.min(self.max_ttl);
        let request = TokenRequest { subject: client.client_id.clone(), scopes: scopes.clone(), ttl, client_id: Some(client.client_id.clone()) };
        let access_token = self.mint(&request).map_err(|e| error("server_error", e.to_string()))?;
        Ok(TokenResponse { access_token, token_type: "Bearer", expires_in: ttl.as_secs(), scope: scopes.join(" ") })
    }
}

fn client_authentication(authorization: Option<&str>, form: &TokenForm) -> Result<(String, String), TokenError> {
    let basic = authorization.and_then(|value| {
        let (scheme, encoded) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("basic").then_some(encoded.trim())
    });
    match (basic, &form.client_id, &form.client_secret) {
        (Some(_), Some(_), Some(_)) => Err(error("invalid_request", "use one client authentication method")),
        (Some(encoded), _, _) => {
            let decoded = STANDARD.decode(encoded).map_err(|_| error("invalid_client", "malformed Basic credentials"))?;
            let decoded = String::from_utf8(decoded).map_err(|_| error("invalid_client", "malformed Basic credentials"))?;
            let (id, secret) = decoded.split_once(':').ok_or_else(|| error("invalid_client", "malformed Basic credentials"))?;
            // RFC 6749 §2.3.1: both parts are form-urlencoded inside Basic.
            let unescape = |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
            Ok((unescape(id).unwrap_or_default(), unescape(secret).unwrap_or_default()))
        }
        (None, Some(id), Some(secret)) => Ok((id.clone(), secret.clone())),
        _ => Err(error("invalid_client", "client authentication required")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::issuer::SigningKey;

    fn issuer() -> (EmbeddedIssuer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_generate(dir.path()).unwrap();
        (EmbeddedIssuer::new(key, "http://gw".into(), "http://gw/mcp".into(), Duration::from_secs(3600)), dir)
    }

    fn clients() -> Vec<MachineClient> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"s3cret-s3cret");
        vec![MachineClient {
            client_id: "ci-bot".into(),
            secret_sha256: digest.as_ref().try_into().unwrap(),
            scopes: vec!["mcp:tools".into(), "mcp:prompts".into()],
            max_ttl: Duration::from_secs(600),
        }]
    }

    fn basic(id: &str, secret: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
    }

    #[test]
    fn issues_scoped_tokens_to_authenticated_clients() {
        let (issuer, _dir) = issuer();
        let form = TokenForm::parse(b"grant_type=client_credentials&scope=mcp%3Atools&resource=http%3A%2F%2Fgw%2Fmcp");
        let response = issuer.client_credentials(&clients(), Some(&basic("ci-bot", "s3cret-s3cret")), &form).unwrap();
        assert_eq!((response.scope.as_str(), response.expires_in, response.token_type), ("mcp:tools", 600, "Bearer"));
        let post = TokenForm::parse(b"grant_type=client_credentials&client_id=ci-bot&client_secret=s3cret-s3cret");
        assert_eq!(issuer.client_credentials(&clients(), None, &post).unwrap().scope, "mcp:tools mcp:prompts");
    }

    #[test]
    fn refuses_bad_clients_grants_scopes_and_resources() {
        let (issuer, _dir) = issuer();
        let ok = TokenForm::parse(b"grant_type=client_credentials");
        let code = |auth: &str, form: &TokenForm| issuer.client_credentials(&clients(), Some(auth), form).unwrap_err().code;
        assert_eq!(code(&basic("ci-bot", "wrong"), &ok), "invalid_client");
        assert_eq!(code(&basic("nobody", "s3cret-s3cret"), &ok), "invalid_client");
        assert_eq!(issuer.client_credentials(&clients(), None, &ok).unwrap_err().code, "invalid_client");
        let good = basic("ci-bot", "s3cret-s3cret");
        assert_eq!(code(&good, &TokenForm::parse(b"grant_type=password")), "unsupported_grant_type");
        assert_eq!(code(&good, &TokenForm::parse(b"scope=mcp%3Atools")), "invalid_request");
        assert_eq!(code(&good, &TokenForm::parse(b"grant_type=client_credentials&scope=mcp%3Aresources")), "invalid_scope");
        assert_eq!(code(&good, &TokenForm::parse(b"grant_type=client_credentials&resource=http%3A%2F%2Fother%2Fmcp")), "invalid_target");
    }
}
