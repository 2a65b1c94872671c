//! What the gateway sends upstream in place of the client's token: the upstream's own
//! credential and a gateway-signed identity assertion naming the caller.
//!
//! Credentials, per upstream (README "Upstream credentials"):
//! - none;
//! - a static header whose value came from the environment;
//! - an OAuth 2.0 client-credentials token (RFC 6749 §4.4, via the `oauth2` crate), cached
//!   until [`REFRESH_MARGIN`] before it expires;
//! - an RFC 8693 token-exchange token obtained on behalf of the caller, with a fresh identity
//!   assertion as `subject_token`, cached per caller and scope. (`oauth2` 5 has no
//!   token-exchange request type, so this one form POST is written out here.)
//!
//! The identity assertion is a short-lived JWT signed with the gateway's key (verifiable at
//! `/.well-known/jwks.json`): `iss` = gateway, `sub` = caller, `act.sub` = gateway (RFC 8693
//! §4.1), `aud` = the upstream's configured audience, `client_id`, `scope` narrowed to what
//! the call needed, `jti`, `sid` = SHA-256 of the client's MCP session id, `orig_iss` = the
//! caller's token issuer. Explicitly typed `portcullis-identity+jwt` (RFC 8725 §3.11) so it
//! can never pass for an access token. An assertion is reused for the same caller, scope and
//! target while more than half its lifetime remains (signing dominates a call's CPU), so
//! its `jti` identifies the assertion, not the call.
//!
//! Both are added per HTTP request by [`GatewayHttpClient`], rmcp's HTTP client for the
//! upstream. Invariant: it adds only these headers; nothing from the client's request is
//! copied, so the client's token cannot leak upstream. A credential that cannot be obtained
//! fails the request (no unauthenticated fallback).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::{
    model::{ClientJsonRpcMessage, GetExtensions, JsonRpcMessage},
    transport::streamable_http_client::{StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use rmcp::transport::streamable_http_client::SseError;
use sse_stream::Sse;
use tokio::sync::Mutex;

use crate::{
    auth::{Principal, issuer::EmbeddedIssuer},
    config::{OAuthGrant, UpstreamOAuth, UpstreamSettings},
};

/// Tokens are refreshed this long before they expire.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// `typ` of identity assertions.
pub const IDENTITY_TYP: &str = "portcullis-identity+jwt";

/// Per-request context the router attaches to a forwarded request (in its rmcp extensions,
/// never on the wire) so the assertion's `scope` and target are narrowed to this call.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// Scopes that justified the call (from the policy grant).
    pub scopes: Vec<String>,
    /// `kind:upstream/name` of the target.
    pub target: String,
}

/// The caller a client-session connection acts for.
#[derive(Debug, Clone)]
pub struct SessionIdentity {
    /// The authenticated caller.
    pub principal: Principal,
    /// Hex SHA-256 of the client's MCP session id, if known.
    pub session_hash: Option<String>,
}

/// Obtains and caches the upstream's credential.
pub struct CredentialSource {
    settings: UpstreamSettings,
    http: reqwest::Client,
    cached: Mutex<HashMap<String, (SecretString, Instant)>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

// === impl CredentialSource ===

impl CredentialSource {
    /// A source for `settings`' credential, fetching tokens with `http`.
    pub fn new(settings: UpstreamSettings, http: reqwest::Client) -> Self {
        Self { settings, http, cached: Mutex::new(HashMap::new()) }
    }

    /// The credential header for a request, or `None` when the upstream needs none.
    /// `subject_token` is required for token exchange.
    ///
    /// # Errors
    /// A short reason when the token endpoint refuses or cannot be reached.
    pub async fn header(&self, subject: Option<(&str, String)>) -> Result<Option<(HeaderName, HeaderValue)>, String> {
        if let Some(credential) = &self.settings.credential {
            let mut value = HeaderValue::from_str(credential.value.expose_secret()).map_err(|_| "invalid credential value".to_owned())?;
            value.set_sensitive(true);
            return Ok(Some((credential.header.clone(), value)));
        }
        let Some(oauth) = &self.settings.oauth else { return Ok(None) };
        let key = match (&oauth.grant, &subject) {
            (OAuthGrant::ClientCredentials, _) => String::new(),
            (OAuthGrant::TokenExchange, Some((key, _))) => (*key).to_owned(),
            (OAuthGrant::TokenExchange, None) => return Err("token exchange needs a caller".into()),
        };
        let mut cached = self.cached.lock().await;
        let token = match cached.get(&key) {
            Some((token, expires)) if Instant::now() + REFRESH_MARGIN < *expires => token.clone(),
            _ => {
                let (token, lifetime) = match oauth.grant {
                    OAuthGrant::ClientCredentials => self.client_credentials(oauth).await?,
                    OAuthGrant::TokenExchange => {
                        let assertion = subject.map(|(_, assertion)| assertion).unwrap_or_default();
                        self.token_exchange(oauth, &assertion).await?
                    }
                };
                cached.insert(key, (token.clone(), Instant::now() + lifetime));
                token
            }
        };
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).map_err(|_| "token is not a valid header value".to_owned())?;
        value.set_sensitive(true);
        Ok(Some((http::header::AUTHORIZATION, value)))
    }

    async fn client_credentials(&self, oauth: &UpstreamOAuth) -> Result<(SecretString, Duration), String> {
        use oauth2::{ClientId, ClientSecret, Scope, TokenResponse as _, TokenUrl, basic::BasicClient};
        let client = BasicClient::new(ClientId::new(oauth.client_id.clone()))
            .set_client_secret(ClientSecret::new(oauth.client_secret.expose_secret().to_owned()))
            .set_token_uri(TokenUrl::from_url(oauth.token_url.clone()));
        let mut request = client.exchange_client_credentials().add_extra_param("resource", oauth.resource.clone());
        for scope in &oauth.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let http = self.http.clone();
        let send = move |request: oauth2::HttpRequest| {
            let http = http.clone();
            async move { send_oauth(&http, request).await }
        };
        let response = request.request_async(&send).await.map_err(|error| format!("client credentials grant failed: {error}"))?;
        let lifetime = response.expires_in().unwrap_or(Duration::from_secs(300));
        Ok((SecretString::from(response.access_token().secret().clone()), lifetime))
    }

    async fn token_exchange(&self, oauth: &UpstreamOAuth, subject_token: &str) -> Result<(SecretString, Duration), String> {
        let mut form = vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".to_owned()),
            ("subject_token", subject_token.to_owned()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt".to_owned()),
            ("requested_token_type", "urn:ietf:params:oauth:token-type:access_token".to_owned()),
            ("resource", oauth.resource.clone()),
        ];
        if let Some(audience) = &oauth.audience {
            form.push(("audience", audience.clone()));
        }
        if !oauth.scopes.is_empty() {
            form.push(("scope", oauth.scopes.join(" ")));
        }
        let response = self
            .http
            .post(oauth.token_url.clone())
            .basic_auth(&oauth.client_id, Some(oauth.client_secret.expose_secret()))
            .form(&form)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("token exchange request failed: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("token exchange refused: HTTP {status}"));
        }
        let token: TokenResponse = response.json().await.map_err(|e| format!("token exchange response: {e}"))?;
        Ok((SecretString::from(token.access_token), Duration::from_secs(token.expires_in.unwrap_or(300))))
    }
}

#[derive(Debug, thiserror::Error)]
enum OAuthHttpError {
    #[error("{0}")]
    Transport(#[from] reqwest::Error),
    #[error("{0}")]
    Response(#[from] http::Error),
}

async fn send_oauth(http: &reqwest::Client, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, OAuthHttpError> {
    let (parts, body) = request.into_parts();
    let response = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let mut builder = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let bytes = response.bytes().await?;
    Ok(builder.body(bytes.to_vec())?)
}

#[derive(Serialize)]
struct IdentityClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    nbf: u64,
    jti: String,
    act: Actor<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    scope: String,
    orig_iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_target: Option<&'a str>,
}

#[derive(Serialize)]
struct Actor<'a> {
    sub: &'a str,
}

/// rmcp's HTTP client toward one upstream: reqwest plus the credential and identity headers.
#[derive(Clone)]
pub struct GatewayHttpClient {
    http: reqwest::Client,
    credentials: Arc<CredentialSource>,
    signer: Arc<EmbeddedIssuer>,
    identity: Option<Arc<SessionIdentity>>,
    identity_header: Option<HeaderName>,
    audience: Arc<str>,
    ttl: Duration,
    /// Assertions already minted on this connection, by narrowed scope and target, reused
    /// while more than half their lifetime remains (signing is a large share of a call's
    /// CPU). Per connection, so per caller.
    minted: Arc<std::sync::Mutex<MintedAssertions>>,
}

/// (scope, target) → (assertion header, reuse-until).
type MintedAssertions = HashMap<(String, String), (HeaderValue, Instant)>;

// === impl GatewayHttpClient ===

impl GatewayHttpClient {
    /// A client for one connection; `identity` is `None` for catalog connections.
    pub fn new(
        http: reqwest::Client,
        credentials: Arc<CredentialSource>,
        signer: Arc<EmbeddedIssuer>,
        settings: &UpstreamSettings,
        identity: Option<SessionIdentity>,
    ) -> Self {
        Self {
            http,
            credentials,
            signer,
            identity: identity.map(Arc::new),
            identity_header: settings.identity_header.clone(),
            audience: Arc::from(settings.identity_audience.as_str()),
            ttl: settings.identity_ttl,
            minted: Arc::default(),
        }
    }

    /// Mints an identity assertion for `audience`, narrowed by `call` when given.
    fn assertion(&self, identity: &SessionIdentity, audience: &str, call: Option<&CallContext>) -> Option<String> {
        let principal = &identity.principal;
        let now = crate::auth::issuer::unix_now();
        let scope = match call {
            Some(call) => call.scopes.join(" "),
            None => String::new(),
        };
        let claims = IdentityClaims {
            iss: self.signer.issuer(),
            sub: &principal.subject,
            aud: audience,
            exp: now + self.ttl.as_secs(),
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            act: Actor { sub: self.signer.issuer() },
            client_id: principal.client_id.as_deref(),
            scope,
            orig_iss: &principal.issuer,
            sid: identity.session_hash.as_deref(),
            mcp_target: call.map(|c| c.target.as_str()),
        };
        match self.signer.sign(IDENTITY_TYP, &claims) {
            Ok(token) => Some(token),
            Err(error) => {
                tracing::error!(%error, "cannot sign identity assertion");
                None
            }
        }
    }

    /// The identity assertion header for `call`, reused from this connection's cache while
    /// more than half its lifetime remains, else freshly minted.
    fn cached_assertion(&self, identity: &SessionIdentity, call: Option<&CallContext>) -> Option<HeaderValue> {
        let key = call.map(|c| (c.scopes.join(" "), c.target.clone())).unwrap_or_default();
        let now = Instant::now();
        let mut minted = self.minted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((value, fresh_until)) = minted.get(&key)
            && now < *fresh_until
        {
            return Some(value.clone());
        }
        let token = self.assertion(identity, &self.audience, call)?;
        let mut value = HeaderValue::from_str(&token).ok()?;
        value.set_sensitive(true);
        if minted.len() > 256 {
            minted.clear();
        }
        minted.insert(key, (value.clone(), now + self.ttl / 2));
        Some(value)
    }

    /// An assertion naming the gateway itself (no caller), for the catalog connection.
    fn self_assertion(&self, audience: &str) -> Option<String> {
        let issuer = self.signer.issuer();
        let now = crate::auth::issuer::unix_now();
        let claims = IdentityClaims {
            iss: issuer,
            sub: issuer,
            aud: audience,
            exp: now + self.ttl.as_secs(),
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            act: Actor { sub: issuer },
            client_id: None,
            scope: String::new(),
            orig_iss: issuer,
            sid: None,
            mcp_target: None,
        };
        self.signer.sign(IDENTITY_TYP, &claims).ok()
    }

    /// The HTTP client requests go through.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Adds the credential and identity headers for one request.
    pub(crate) async fn decorate(
        &self,
        headers: &mut HashMap<HeaderName, HeaderValue>,
        call: Option<&CallContext>,
    ) -> Result<(), StreamableHttpError<reqwest::Error>> {
        let fail = |reason: String| {
            tracing::error!(%reason, "upstream credential unavailable; request not sent");
            StreamableHttpError::UnexpectedServerResponse("upstream credential unavailable".into())
        };
        let subject = match self.credentials.settings.oauth.as_ref() {
            Some(oauth) if oauth.grant == OAuthGrant::TokenExchange => {
                let audience = oauth.token_url.to_string();
                let scope_key = call.map(|c| c.scopes.join(" ")).unwrap_or_default();
                // A client session exchanges for its caller; the catalog connection, which
                // acts for nobody, exchanges for the gateway itself.
                let (key, assertion) = match &self.identity {
                    Some(identity) => (
                        format!("{}\u{1f}{}\u{1f}{scope_key}", identity.principal.issuer, identity.principal.subject),
                        self.assertion(identity, &audience, call),
                    ),
                    None => ("\u{1f}gateway".to_owned(), self.self_assertion(&audience)),
                };
                Some((key, assertion.ok_or_else(|| fail("cannot sign subject token".into()))?))
            }
            _ => None,
        };
        let credential = self.credentials.header(subject.as_ref().map(|(k, a)| (k.as_str(), a.clone()))).await.map_err(fail)?;
        if let Some((name, value)) = credential {
            headers.insert(name, value);
        }
        if let (Some(name), Some(identity)) = (&self.identity_header, &self.identity)
            && let Some(value) = self.cached_assertion(identity, call)
        {
            headers.insert(name.clone(), value);
        }
        Ok(())
    }
}

/// W3C trace context of the message (`params._meta.traceparent`/`tracestate`, set from the
/// client span by the router), copied into the HTTP headers so the upstream sees it both ways.
fn trace_headers(message: &ClientJsonRpcMessage, headers: &mut HashMap<HeaderName, HeaderValue>) {
    use rmcp::model::GetMeta as _;
    let JsonRpcMessage::Request(request) = message else { return };
    let meta = request.request.get_meta();
    for (name, value) in [("traceparent", meta.get_traceparent()), ("tracestate", meta.get_tracestate())] {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

fn call_context(message: &ClientJsonRpcMessage) -> Option<CallContext> {
    match message {
        JsonRpcMessage::Request(request) => request.request.extensions().get::<CallContext>().cloned(),
        _ => None,
    }
}

impl StreamableHttpClient for GatewayHttpClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        mut custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        self.decorate(&mut custom_headers, call_context(&message).as_ref()).await?;
        trace_headers(&message, &mut custom_headers);
        self.http.post_message(uri, message, session_id, auth_header, custom_headers).await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        mut custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        self.decorate(&mut custom_headers, call_context(&message).as_ref()).await?;
        trace_headers(&message, &mut custom_headers);
        self.http
            .post_message_with_max_sse_event_size(uri, message, session_id, auth_header, custom_headers, max_sse_event_size)
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        mut custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.decorate(&mut custom_headers, None).await?;
        self.http.delete_session(uri, session_id, auth_header, custom_headers).await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        mut custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.decorate(&mut custom_headers, None).await?;
        self.http.get_stream(uri, session_id, last_event_id, auth_header, custom_headers).await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        mut custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.decorate(&mut custom_headers, None).await?;
        self.http
            .get_stream_with_max_sse_event_size(uri, session_id, last_event_id, auth_header, custom_headers, max_sse_event_size)
            .await
    }
}
