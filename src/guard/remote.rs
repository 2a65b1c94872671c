//! `portcullis scan URL`: connects to an MCP server as a client (streamable HTTP) and scans
//! what it offers: tool and prompt definitions, resource names and descriptions, and the text
//! of up to [`MAX_RESOURCE_READS`] resources.
//!
//! Invariant: the scan only lists and reads; it never calls a tool.

use std::{collections::HashMap, time::Duration};

use http::{HeaderName, HeaderValue};
use rmcp::{
    model::{ClientCapabilities, ClientConfig, Implementation, ReadResourceRequestParams, ResourceContents},
    transport::{StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig},
};
use serde::Serialize;

use super::{Error, Finding, Guard, Surface};

/// At most this many resources are read (their text scanned as results).
pub const MAX_RESOURCE_READS: usize = 100;

/// Time allowed for the whole scan.
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);

/// One scanned item of a remote server.
#[derive(Debug, Clone, Serialize)]
pub struct ScannedItem {
    /// `tool`, `prompt` or `resource`.
    pub kind: &'static str,
    /// Tool or prompt name, or resource URI.
    pub name: String,
    /// What matched (empty: clean).
    pub findings: Vec<Finding>,
}

/// Connects to `url` with extra request `headers` (e.g. `Authorization`) and scans every
/// tool, prompt and resource it lists.
///
/// # Errors
/// [`Error::Remote`] when the server cannot be reached, the handshake fails, a list request
/// fails, or the scan takes longer than 60 seconds.
pub async fn scan_server(guard: &Guard, url: &str, headers: HashMap<HeaderName, HeaderValue>) -> Result<Vec<ScannedItem>, Error> {
    tokio::time::timeout(SCAN_TIMEOUT, scan(guard, url, headers))
        .await
        .map_err(|_| Error::Remote { url: url.to_owned(), reason: format!("no answer within {}s", SCAN_TIMEOUT.as_secs()) })?
}

async fn scan(guard: &Guard, url: &str, headers: HashMap<HeaderName, HeaderValue>) -> Result<Vec<ScannedItem>, Error> {
    let remote = |reason: String| Error::Remote { url: url.to_owned(), reason };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| remote(format!("building the HTTP client: {e}")))?;
    let config = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(headers);
    let transport = StreamableHttpClientTransport::with_client(http, config);
    let info = ClientConfig::new(ClientCapabilities::default(), Implementation::new("portcullis-scan", env!("CARGO_PKG_VERSION")));
    let service = rmcp::serve_client(info, transport).await.map_err(|e| remote(format!("MCP handshake failed: {e}")))?;
    let peer = service.peer().clone();
    let capabilities = peer.peer_info().map(|info| info.capabilities.clone()).unwrap_or_default();
    let mut items = Vec::new();

    if capabilities.tools.is_some() {
        for tool in peer.list_all_tools().await.map_err(|e| remote(format!("tools/list failed: {e}")))? {
            let scan = guard.scan_tool("scan", &tool);
            items.push(ScannedItem { kind: "tool", name: tool.name.to_string(), findings: scan.findings });
        }
    }
    if capabilities.prompts.is_some() {
        for prompt in peer.list_all_prompts().await.map_err(|e| remote(format!("prompts/list failed: {e}")))? {
            let scan = guard.scan_prompt("scan", &prompt);
            items.push(ScannedItem { kind: "prompt", name: prompt.name.clone(), findings: scan.findings });
        }
    }
    if capabilities.resources.is_some() {
        let resources = peer.list_all_resources().await.map_err(|e| remote(format!("resources/list failed: {e}")))?;
        for (index, resource) in resources.into_iter().enumerate() {
            let mut findings = Vec::new();
            let mut add = |found: Vec<Finding>| {
                for finding in found {
                    if !findings.contains(&finding) {
                        findings.push(finding);
                    }
                }
            };
            for text in [Some(resource.name.as_str()), resource.title.as_deref(), resource.description.as_deref()].into_iter().flatten() {
                add(guard.scan(text, Surface::Description, None));
            }
            if index < MAX_RESOURCE_READS {
                // A resource that cannot be read is reported by its metadata alone.
                if let Ok(read) = peer.read_resource(ReadResourceRequestParams::new(resource.uri.clone())).await {
                    for contents in &read.contents {
                        if let ResourceContents::TextResourceContents { text, .. } = contents {
                            add(guard.scan(text, Surface::Result, None));
                        }
                    }
                }
            }
            items.push(ScannedItem { kind: "resource", name: resource.uri.clone(), findings });
        }
    }
    let _ = service.cancel().await;
    Ok(items)
}
