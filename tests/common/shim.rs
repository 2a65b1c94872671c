//! A header-injecting reverse proxy for the conformance suite, which cannot send a bearer
//! token. It forwards every request verbatim — method, path, Host, Origin and all other
//! headers, body — to the gateway and adds `Authorization: Bearer <token>`; responses
//! (including SSE streams) flow back unbuffered. It is test-only: the gateway itself has no
//! way to skip authentication.

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    response::Response,
};
use http_body_util::BodyExt;
use tokio::net::TcpListener;

#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    gateway: std::net::SocketAddr,
    token: String,
}

/// Starts the shim on a loopback port; returns its address.
pub async fn start(gateway: std::net::SocketAddr, token: String) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let app = Router::new().fallback(forward).with_state(Target { client, gateway, token });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn forward(State(target): State<Target>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut outbound = target.client.request(parts.method, format!("http://{}{path}", target.gateway));
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_LENGTH && name != http::header::TRANSFER_ENCODING {
            outbound = outbound.header(name, value);
        }
    }
    let response = match outbound.bearer_auth(&target.token).body(body).send().await {
        Ok(response) => response,
        Err(error) => return Response::builder().status(502).body(Body::from(error.to_string())).unwrap(),
    };
    let mut builder = Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    builder.body(Body::from_stream(response.bytes_stream())).unwrap()
}
