//! OAuth discovery documents: RFC 9728 protected-resource metadata, RFC 8414
//! authorization-server metadata, and the embedded issuer's JWKS (RFC 7517).

use axum::{Json, extract::State, response::IntoResponse};
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
