//! OAuth discovery documents: RFC 9728 protected-resource metadata, RFC 8414
//! authorization-server metadata, and the embedded issuer's JWKS (RFC 7517).

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::AppState;

/// RFC 9728 §2 protected-resource metadata for `/mcp`, served at both
/// `/.well-known/oauth-protected-resource/mcp` (§3.1 path-suffixed) and the root form.
pub(super) async fn protected_resource(State(state): State<AppState>) -> impl IntoResponse {
    let settings = &state.settings;
    Json(json!({
        "resource": settings.resource,
        "authorization_servers": state.resource_server.issuers().collect::<Vec<_>>(),
        "scopes_supported": settings.auth.scopes_supported,
        "bearer_methods_supported": ["header"],
        "resource_name": "Portcullis MCP gateway",
    }))
}

/// RFC 8414 §3 metadata of the embedded authorization server.
pub(super) async fn authorization_server(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.issuer.metadata())
}

/// The embedded issuer's JWKS.
pub(super) async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.issuer.jwks())
}

/// The embedded authorization server's token endpoint (`client_credentials`, RFC 6749 §4.4).
/// Responses are never cached (RFC 6749 §5.1 `Cache-Control: no-store`).
pub(super) async fn token(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let form = crate::auth::issuer::token::TokenForm::parse(&body);
    let no_store = [(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")];
    match state.issuer.client_credentials(&state.settings.auth.clients, authorization, &form) {
        Ok(response) => (no_store, Json(response)).into_response(),
        Err(error) => {
            tracing::info!(error = error.code, "token request refused");
            let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let body = Json(json!({"error": error.code, "error_description": error.description}));
            let mut response = (status, no_store, body).into_response();
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"portcullis\""));
            }
            response
        }
    }
}
