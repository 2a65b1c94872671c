//! A minimal MCP client over streamable HTTP (MCP 2025-11-25 basic/transports), written for
//! load generation: one HTTP/1.1 keep-alive connection ([`Conn`]) carries the requests of one
//! or more sessions ([`Session`]).
//!
//! Every request is a POST with `Accept: application/json, text/event-stream`, the session's
//! `Mcp-Session-Id` and `MCP-Protocol-Version`, and a bearer token when the target needs one.
//! The answer may be a JSON body or an SSE stream: the stream is parsed event by event until
//! the JSON-RPC response carrying the request's id arrives (priming events, notifications and
//! anything else on the stream are skipped), then drained so the connection can be reused.
//! Latency is taken when the exchange is over, i.e. when the connection is free again.
//!
//! Both framings cost the client the same: the response message is parsed once, and an SSE
//! event boundary is found with `memchr`'s substring search. (They did not: a byte-by-byte
//! boundary search and a second parse made an SSE answer of 64 KiB cost about 170 µs more
//! client CPU than a JSON one, which held back set-ups (a) and (d), whose upstream answers
//! with SSE, on the single load-generator thread.)

use std::{borrow::Cow, net::SocketAddr, time::Duration};

use anyhow::{Context as _, anyhow, bail, ensure};
use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;

/// The revision the harness asks for in `initialize`.
pub(crate) const PROTOCOL_VERSION: &str = "2025-11-25";

/// After the matching response, how long the rest of an SSE stream may take to end before
/// the connection is dropped (a server that keeps the stream open would otherwise stall).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Where requests go and how they authenticate.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// Loopback address of the server.
    pub(crate) addr: SocketAddr,
    /// `Authorization` value (`Bearer …`), sent to every target so request sizes are equal.
    pub(crate) authorization: Option<HeaderValue>,
}

/// One HTTP/1.1 connection with keep-alive.
pub(crate) struct Conn {
    endpoint: Endpoint,
    host: HeaderValue,
    sender: http1::SendRequest<Full<Bytes>>,
}

/// One MCP session: its id, negotiated revision and the next JSON-RPC id.
pub(crate) struct Session {
    id: HeaderValue,
    protocol: HeaderValue,
    next_id: u64,
}

/// What a request must have produced to count as a success.
#[derive(Clone, Debug)]
pub(crate) enum Expect {
    /// A `tools/call` result whose first content item is this text.
    Text(String),
    /// A `tools/call` result whose first content item is text of this many bytes.
    TextLen(usize),
    /// A `tools/list` result with this many tools (`None`: at least one).
    Tools(Option<usize>),
}

/// A JSON-RPC message as the harness needs to see it; `result` stays raw until checked.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CallResult<'a> {
    #[serde(default, rename = "isError")]
    is_error: bool,
    #[serde(default, borrow)]
    content: Vec<Content<'a>>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ListResult {
    tools: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct InitializeResult {
    #[serde(rename = "protocolVersion")]
    protocol_version: String,
}

// === impl Conn ===

impl Conn {
    /// Opens a connection (TCP_NODELAY, HTTP/1.1).
    pub(crate) async fn open(endpoint: &Endpoint) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(endpoint.addr).await.with_context(|| format!("connecting to {}", endpoint.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let host = HeaderValue::from_str(&endpoint.addr.to_string())?;
        Ok(Self { endpoint: endpoint.clone(), host, sender })
    }

    /// Replaces a broken connection with a fresh one to the same endpoint.
    pub(crate) async fn reopen(&mut self) -> anyhow::Result<()> {
        *self = Self::open(&self.endpoint).await?;
        Ok(())
    }

    /// Whether the connection can no longer carry requests.
    pub(crate) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    fn post(&self, session: Option<&Session>, body: Bytes) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/mcp")
            .header(header::HOST, self.host.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream");
        if let Some(authorization) = &self.endpoint.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        if let Some(session) = session {
            request = request.header("mcp-session-id", session.id.clone()).header("mcp-protocol-version", session.protocol.clone());
        }
        Ok(request.body(Full::new(body))?)
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> anyhow::Result<http::Response<Incoming>> {
        self.sender.ready().await.context("connection not ready")?;
        Ok(self.sender.send_request(request).await?)
    }

    /// Sends one JSON-RPC request and returns what `accept` makes of its response message
    /// (parsed once, whichever the framing); the connection is left reusable even when
    /// `accept` fails.
    async fn exchange<R>(
        &mut self,
        session: Option<&Session>,
        id: u64,
        body: Bytes,
        accept: impl FnOnce(&Message<'_>) -> anyhow::Result<R>,
    ) -> anyhow::Result<(http::response::Parts, R)> {
        let response = self.send(self.post(session, body)?).await?;
        let (parts, mut body) = response.into_parts();
        if parts.status != StatusCode::OK {
            let text = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            bail!("HTTP {} {}", parts.status, String::from_utf8_lossy(&text[..text.len().min(300)]));
        }
        let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if content_type.starts_with("application/json") {
            let bytes = body.collect().await?.to_bytes();
            let message: Message<'_> = serde_json::from_slice(&bytes).context("response is not JSON")?;
            return Ok((parts, accept(&message)?));
        }
        ensure!(content_type.starts_with("text/event-stream"), "unexpected content type {content_type:?}");
        let mut events = SseParser::default();
        let mut accept = Some(accept);
        let mut found: Option<anyhow::Result<R>> = None;
        while found.is_none() {
            let Some(frame) = body.frame().await else { break };
            let Ok(data) = frame?.into_data() else { continue };
            events.push(&data);
            while let Some(event) = events.next_event() {
                if event.is_empty() {
                    continue;
                }
                let message: Message<'_> = serde_json::from_slice(&event).context("SSE event data is not JSON")?;
                if message.answers(id)
                    && let Some(accept) = accept.take()
                {
                    found = Some(accept(&message));
                    break;
                }
            }
        }
        let found = found.ok_or_else(|| anyhow!("SSE stream ended without the response to id {id}"))?;
        // The server closes a request's stream after its response (basic/transports §2.1.5);
        // drain it so the connection is reusable, but never wait forever.
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(frame) = body.frame().await {
                frame?;
            }
            Ok::<_, hyper::Error>(())
        })
        .await;
        match drained {
            Ok(result) => result?,
            Err(_) => {
                self.reopen().await?;
            }
        }
        Ok((parts, found?))
    }

    /// `initialize` then `notifications/initialized`: a new session on this connection.
    pub(crate) async fn initialize(&mut self) -> anyhow::Result<Session> {
        let body = serde_json::json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "portcullis-bench", "version": env!("CARGO_PKG_VERSION")},
            },
        });
        let (parts, protocol) = self
            .exchange(None, 0, Bytes::from(body.to_string()), |message| {
                if let Some(error) = message.error {
                    bail!("initialize refused: {}", error.get());
                }
                let result: InitializeResult = serde_json::from_str(message.result.ok_or_else(|| anyhow!("initialize: no result"))?.get())?;
                Ok(HeaderValue::from_str(&result.protocol_version)?)
            })
            .await
            .context("initialize")?;
        let id = parts.headers.get("mcp-session-id").cloned().ok_or_else(|| anyhow!("initialize: no Mcp-Session-Id header"))?;
        let session = Session { id, protocol, next_id: 1 };
        let note = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        let response = self.send(self.post(Some(&session), note)?).await?;
        let status = response.status();
        response.into_body().collect().await?;
        ensure!(status == StatusCode::ACCEPTED, "notifications/initialized: HTTP {status}");
        Ok(session)
    }

    /// One request of `session`; checks the answer against `expect`. `deep` also checks the
    /// result's content (costs a second parse of large results).
    pub(crate) async fn request(&mut self, session: &mut Session, method: &str, params: &str, expect: &Expect, deep: bool) -> anyhow::Result<()> {
        let id = session.next_id;
        session.next_id += 1;
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#);
        self.exchange(Some(session), id, Bytes::from(body), |message| check(message, expect, deep)).await?;
        Ok(())
    }

    /// `tools/list` on `session`: how many tools it returned.
    pub(crate) async fn count_tools(&mut self, session: &mut Session) -> anyhow::Result<usize> {
        let id = session.next_id;
        session.next_id += 1;
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list","params":{{}}}}"#);
        let (_, count) = self
            .exchange(Some(session), id, Bytes::from(body), |message| {
                if let Some(error) = message.error {
                    bail!("tools/list: JSON-RPC error {}", error.get());
                }
                let result = message.result.ok_or_else(|| anyhow!("tools/list: no result"))?;
                Ok(serde_json::from_str::<ListResult>(result.get())?.tools.len())
            })
            .await?;
        Ok(count)
    }

    /// Ends `session` (HTTP DELETE); errors are ignored, the server may not support it.
    pub(crate) async fn close(&mut self, session: Session) {
        let mut request = Request::builder()
            .method(Method::DELETE)
            .uri("/mcp")
            .header(header::HOST, self.host.clone())
            .header("mcp-session-id", session.id)
            .header("mcp-protocol-version", session.protocol);
        if let Some(authorization) = &self.endpoint.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        if let Ok(request) = request.body(Full::new(Bytes::new()))
            && let Ok(response) = self.send(request).await
        {
            let _ = response.into_body().collect().await;
        }
    }
}

// === impl Message ===

impl Message<'_> {
    /// Whether this is the JSON-RPC response to `id` (not a request or a notification).
    fn answers(&self, id: u64) -> bool {
        self.method.is_none() && self.id.as_ref().and_then(serde_json::Value::as_u64) == Some(id)
    }
}

/// Checks a response against `expect`: never a JSON-RPC error, always a result; a large
/// result at least as long as the text it must carry (so a short answer, such as a tool error
/// or a blocked result, fails on every call); `deep` also parses the result and compares it.
fn check(message: &Message<'_>, expect: &Expect, deep: bool) -> anyhow::Result<()> {
    if let Some(error) = message.error {
        bail!("JSON-RPC error {}", error.get());
    }
    let result = message.result.ok_or_else(|| anyhow!("response without result"))?;
    if let Expect::TextLen(len) = expect {
        ensure!(result.get().len() >= *len, "large_result returned {} bytes of result, expected over {len}", result.get().len());
    }
    if !deep {
        return Ok(());
    }
    match expect {
        Expect::Text(text) => {
            let result: CallResult<'_> = serde_json::from_str(result.get())?;
            ensure!(!result.is_error, "tool error: {}", result.content.first().and_then(|c| c.text.as_deref()).unwrap_or(""));
            let got = result.content.first().and_then(|c| c.text.as_deref());
            ensure!(got == Some(text.as_str()), "echo returned {got:?}");
        }
        Expect::TextLen(len) => {
            let result: CallResult<'_> = serde_json::from_str(result.get())?;
            ensure!(!result.is_error, "tool error");
            let got = result.content.first().and_then(|c| c.text.as_ref()).map(|t| t.len());
            ensure!(got == Some(*len), "large_result returned {got:?} bytes, expected {len}");
        }
        Expect::Tools(count) => {
            let result: ListResult = serde_json::from_str(result.get())?;
            match count {
                Some(count) => ensure!(result.tools.len() == *count, "tools/list returned {} tools, expected {count}", result.tools.len()),
                None => ensure!(!result.tools.is_empty(), "tools/list returned no tools"),
            }
        }
    }
    Ok(())
}

/// Incremental `text/event-stream` parser (HTML Living Standard §9.2.6, the subset MCP uses):
/// yields the joined `data:` lines of each event; `id:`, `retry:`, `event:` and comments are
/// skipped.
#[derive(Default)]
struct SseParser {
    buffer: BytesMut,
    /// Bytes of `buffer` already searched for an event boundary.
    scanned: usize,
}

// === impl SseParser ===

impl SseParser {
    fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The data of the next complete event (empty for events without data).
    fn next_event(&mut self) -> Option<Bytes> {
        let from = self.scanned.saturating_sub(3);
        let window = &self.buffer[from..];
        let lf = memchr::memmem::find(window, b"\n\n").map(|at| (from + at, 2));
        // Only a CRLF boundary before the LF one can come first.
        let crlf_window = lf.map_or(window, |(at, _)| &window[..(at - from + 2).min(window.len())]);
        let crlf = memchr::memmem::find(crlf_window, b"\r\n\r\n").map(|at| (from + at, 4));
        let boundary = match (lf, crlf) {
            (Some(lf), Some(crlf)) => Some(if crlf.0 < lf.0 { crlf } else { lf }),
            (lf, crlf) => lf.or(crlf),
        };
        let Some((end, separator)) = boundary else {
            self.scanned = self.buffer.len();
            return None;
        };
        let event = self.buffer.split_to(end).freeze();
        self.buffer.advance(separator);
        self.scanned = 0;
        let mut data: Vec<&[u8]> = Vec::new();
        for line in event.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(value) = line.strip_prefix(b"data:") {
                data.push(value.strip_prefix(b" ").unwrap_or(value));
            }
        }
        Some(match data.as_slice() {
            [] => Bytes::new(),
            [one] => event.slice_ref(one),
            many => Bytes::from(many.join(&b'\n')),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sse_events_split_across_chunks() {
        let mut parser = SseParser::default();
        parser.push(b"id: 0/1\nretry: 5000\ndata: \n\nid: 1/1\ndata: {\"id\":");
        assert_eq!(parser.next_event().unwrap(), Bytes::new());
        assert!(parser.next_event().is_none());
        parser.push(b"3}\n");
        assert!(parser.next_event().is_none());
        parser.push(b"\n: comment\r\ndata: a\r\ndata: b\r\n\r\n");
        assert_eq!(parser.next_event().unwrap(), Bytes::from_static(b"{\"id\":3}"));
        assert_eq!(parser.next_event().unwrap(), Bytes::from_static(b"a\nb"));
        assert!(parser.next_event().is_none());
    }

    fn is_response_to(data: &[u8], id: u64) -> bool {
        serde_json::from_slice::<Message<'_>>(data).unwrap().answers(id)
    }

    fn check(data: &[u8], expect: &Expect, deep: bool) -> anyhow::Result<()> {
        super::check(&serde_json::from_slice(data)?, expect, deep)
    }

    #[test]
    fn responses_are_told_from_requests_and_other_ids() {
        assert!(is_response_to(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#, 7));
        assert!(!is_response_to(br#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#, 7));
        assert!(!is_response_to(br#"{"jsonrpc":"2.0","id":8,"result":{}}"#, 7));
        assert!(!is_response_to(br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#, 7));
    }

    #[test]
    fn short_large_results_fail_without_a_deep_check() {
        let full = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"content":[{{"type":"text","text":"{}"}}]}}}}"#, "x".repeat(100));
        assert!(check(full.as_bytes(), &Expect::TextLen(100), false).is_ok());
        let blocked = br#"{"jsonrpc":"2.0","id":1,"result":{"isError":true,"content":[{"type":"text","text":"blocked"}]}}"#;
        assert!(check(blocked, &Expect::TextLen(100), false).is_err());
    }

    #[test]
    fn results_are_checked() {
        let ok = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}"#;
        assert!(check(ok, &Expect::Text("hi".into()), true).is_ok());
        assert!(check(ok, &Expect::Text("ho".into()), true).is_err());
        assert!(check(ok, &Expect::TextLen(2), true).is_ok());
        let tool_error = br#"{"jsonrpc":"2.0","id":1,"result":{"isError":true,"content":[{"type":"text","text":"hi"}]}}"#;
        assert!(check(tool_error, &Expect::Text("hi".into()), true).is_err());
        let rpc_error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"no"}}"#;
        assert!(check(rpc_error, &Expect::Text("hi".into()), false).is_err());
        let list = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{},{}]}}"#;
        assert!(check(list, &Expect::Tools(Some(2)), true).is_ok());
        assert!(check(list, &Expect::Tools(Some(3)), true).is_err());
    }
}
