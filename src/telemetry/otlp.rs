//! The OTLP/HTTP (protobuf) trace exporter and the standard `OTEL_*` variables it honours.
//!
//! Everything is read from the env map the caller passes, never from the process
//! environment, and the exporter gets explicit values for endpoint, headers, timeout,
//! sampler and resource. (opentelemetry-otlp and the SDK also consult a few `OTEL_*`
//! variables of the real environment themselves: `OTEL_EXPORTER_OTLP_HEADERS` and
//! `OTEL_BSP_*`; in production those are the same values.)
//!
//! The exporter's HTTP requests go through [`ExportClient`]: our reqwest 0.13 client (no
//! second reqwest in the build), run on the tokio runtime. The SDK's batch processor exports
//! from its own thread, outside any runtime, so each request is spawned onto the runtime
//! captured at start and awaited through its `JoinHandle`.
//!
//! References: OpenTelemetry specification, "Environment Variable Specification" (general
//! SDK and batch span processor variables) and "OTLP Exporter Configuration" (endpoint URLs
//! for OTLP/HTTP: the per-signal variable is used as is, the generic one gets `/v1/traces`).

use std::{collections::HashMap, time::Duration};

use opentelemetry::KeyValue;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{
    Resource,
    resource::{ResourceDetector as _, TelemetryResourceDetector},
    trace::{BatchSpanProcessor, Sampler, SdkTracerProvider},
};
use url::Url;

use super::{ComponentHandle, Error};

/// Default `service.name`.
pub(crate) const DEFAULT_SERVICE_NAME: &str = "portcullis";
/// Default export timeout (OTLP spec: 10 seconds).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolved export configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExportSettings {
    /// Full traces URL, e.g. `http://collector:4318/v1/traces`.
    pub(crate) endpoint: Url,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`); may hold collector
    /// credentials, so never logged.
    pub(crate) headers: HashMap<String, String>,
    /// Per-export timeout.
    pub(crate) timeout: Duration,
    /// Sampler from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
    pub(crate) sampler: SamplerSpec,
    /// `service.name` and `OTEL_RESOURCE_ATTRIBUTES`.
    pub(crate) resource: Vec<(String, String)>,
}

/// The sampler named by `OTEL_TRACES_SAMPLER` (SDK environment variables specification).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SamplerSpec {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

/// [`HttpClient`] for the OTLP exporter over our reqwest 0.13 client. Reports each export's
/// result to the `trace_exporter` health component, when there is one.
#[derive(Debug)]
pub(crate) struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    health: Option<ComponentHandle>,
}

// === impl ExportSettings ===

impl ExportSettings {
    /// The export configuration, or `None` when trace export is off: no endpoint in `env`
    /// or `config_endpoint`, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
    ///
    /// # Errors
    /// [`Error::InvalidEnv`] naming the variable: an endpoint that is not an http(s) URL, a
    /// protocol other than `http/protobuf`, an exporter other than `otlp`/`none`, an
    /// unknown sampler or a ratio outside 0..=1, a timeout that is not whole milliseconds.
    pub(crate) fn from_env(env: &HashMap<String, String>, config_endpoint: Option<&Url>) -> Result<Option<Self>, Error> {
        let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match get("OTEL_TRACES_EXPORTER") {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(invalid("OTEL_TRACES_EXPORTER", format!("{other:?} is not supported (use otlp or none)")));
            }
        }
        let endpoint = if let Some(url) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            parse_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)?
        } else if let Some(base) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            traces_url("OTEL_EXPORTER_OTLP_ENDPOINT", base)?
        } else if let Some(base) = config_endpoint {
            traces_url("telemetry.otlp_endpoint", base.as_str())?
        } else {
            return Ok(None);
        };
        for variable in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(protocol) = get(variable) {
                if protocol != "http/protobuf" {
                    return Err(invalid(
                        variable,
                        format!("{protocol:?} is not supported: Portcullis exports OTLP over HTTP with protobuf (http/protobuf, port 4318)"),
                    ));
                }
                break;
            }
        }
        let headers = match get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") {
            Some(value) => parse_pairs("OTEL_EXPORTER_OTLP_TRACES_HEADERS", value)?,
            None => match get("OTEL_EXPORTER_OTLP_HEADERS") {
                Some(value) => parse_pairs("OTEL_EXPORTER_OTLP_HEADERS", value)?,
                None => Vec::new(),
            },
        }
        .into_iter()
        .collect();
        let timeout = match (get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"), get("OTEL_EXPORTER_OTLP_TIMEOUT")) {
            (Some(ms), _) => parse_millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", ms)?,
            (None, Some(ms)) => parse_millis("OTEL_EXPORTER_OTLP_TIMEOUT", ms)?,
            (None, None) => DEFAULT_TIMEOUT,
        };
        Ok(Some(Self { endpoint, headers, timeout, sampler: SamplerSpec::from_env(env)?, resource: resource_attributes(env)? }))
    }
}

/// `service.name` (from `OTEL_SERVICE_NAME`, else `OTEL_RESOURCE_ATTRIBUTES`, else
/// `portcullis`), `service.version`, then the other `OTEL_RESOURCE_ATTRIBUTES` entries.
///
/// # Errors
/// [`Error::InvalidEnv`] for a malformed `OTEL_RESOURCE_ATTRIBUTES` entry.
pub(crate) fn resource_attributes(env: &HashMap<String, String>) -> Result<Vec<(String, String)>, Error> {
    let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let mut attributes = match get("OTEL_RESOURCE_ATTRIBUTES") {
        Some(value) => parse_pairs("OTEL_RESOURCE_ATTRIBUTES", value)?,
        None => Vec::new(),
    };
    let from_attributes = attributes.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone());
    let service = get("OTEL_SERVICE_NAME").map(str::to_owned).or(from_attributes).unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    attributes.retain(|(k, _)| k != "service.name");
    if !attributes.iter().any(|(k, _)| k == "service.version") {
        attributes.insert(0, ("service.version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()));
    }
    attributes.insert(0, ("service.name".to_owned(), service));
    Ok(attributes)
}

// === impl SamplerSpec ===

impl SamplerSpec {
    /// `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`) with `OTEL_TRACES_SAMPLER_ARG`
    /// (ratio, default 1.0).
    ///
    /// # Errors
    /// [`Error::InvalidEnv`] for an unsupported sampler or a ratio outside 0..=1.
    pub(crate) fn from_env(env: &HashMap<String, String>) -> Result<Self, Error> {
        let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let ratio = || -> Result<f64, Error> {
            match get("OTEL_TRACES_SAMPLER_ARG") {
                None => Ok(1.0),
                Some(arg) => match arg.parse::<f64>() {
                    Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
                    _ => Err(invalid("OTEL_TRACES_SAMPLER_ARG", format!("{arg:?} is not a ratio between 0 and 1"))),
                },
            }
        };
        Ok(match get("OTEL_TRACES_SAMPLER") {
            None | Some("parentbased_always_on") => Self::ParentBasedAlwaysOn,
            Some("always_on") => Self::AlwaysOn,
            Some("always_off") => Self::AlwaysOff,
            Some("traceidratio") => Self::TraceIdRatio(ratio()?),
            Some("parentbased_always_off") => Self::ParentBasedAlwaysOff,
            Some("parentbased_traceidratio") => Self::ParentBasedTraceIdRatio(ratio()?),
            Some(other) => {
                return Err(invalid(
                    "OTEL_TRACES_SAMPLER",
                    format!(
                        "{other:?} is not supported (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
                    ),
                ));
            }
        })
    }

    fn sampler(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(ratio) => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))),
        }
    }
}

/// The tracer provider: batch span processor → OTLP/HTTP exporter over [`ExportClient`].
///
/// # Errors
/// [`Error::Exporter`] when the exporter or its HTTP client cannot be built.
pub(crate) fn tracer_provider(
    settings: &ExportSettings,
    runtime: tokio::runtime::Handle,
    health: Option<ComponentHandle>,
) -> Result<SdkTracerProvider, Error> {
    // Redirects are not followed: the collector URL is configuration, not a suggestion.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .build()
        .map_err(|e| Error::Exporter(format!("HTTP client: {e}")))?;
    let client = ExportClient { http, runtime, timeout: settings.timeout, health };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(settings.endpoint.as_str())
        .with_timeout(settings.timeout)
        .with_headers(settings.headers.clone())
        .build()
        .map_err(|e| Error::Exporter(e.to_string()))?;
    let resource = Resource::builder_empty()
        .with_attributes(TelemetryResourceDetector.detect().iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
        .with_attributes(settings.resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_sampler(settings.sampler.sampler())
        .with_resource(resource)
        .build())
}

// === impl ExportClient ===

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let timeout = self.timeout;
        // Spawned onto the gateway's runtime: the SDK calls this from its own thread.
        let task = self.runtime.spawn(async move {
            let exchange = async {
                let response = http.execute(request).await?;
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            };
            tokio::time::timeout(timeout, exchange).await
        });
        let outcome = task.await?;
        // Causes are generic on purpose: reqwest errors name the URL, and a health detail
        // is public.
        let (status, headers, body) = match outcome {
            Ok(Ok(exchange)) => exchange,
            Ok(Err(error)) => {
                self.report(Err("collector unreachable"));
                return Err(Box::new(error));
            }
            Err(elapsed) => {
                self.report(Err("export timed out"));
                return Err(Box::new(elapsed));
            }
        };
        if status.is_success() {
            self.report(Ok(()));
        } else {
            self.report(Err(&format!("collector answered {}", status.as_u16())));
        }
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

impl ExportClient {
    /// Export failures degrade the component (traces are lost, requests are not): the
    /// gateway stays ready.
    fn report(&self, result: Result<(), &str>) {
        match (&self.health, result) {
            (Some(health), Ok(())) => health.up(),
            (Some(health), Err(cause)) => health.degraded(cause),
            (None, _) => {}
        }
    }
}

fn invalid(variable: &'static str, reason: String) -> Error {
    Error::InvalidEnv { variable, reason }
}

fn parse_endpoint(variable: &'static str, value: &str) -> Result<Url, Error> {
    let url = Url::parse(value).map_err(|e| invalid(variable, format!("{value:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(variable, format!("{value:?} must be an http(s) URL (OTLP/HTTP, e.g. http://collector:4318)")));
    }
    Ok(url)
}

/// `base` + `/v1/traces` (OTLP exporter spec, "Endpoint URLs for OTLP/HTTP").
fn traces_url(variable: &'static str, base: &str) -> Result<Url, Error> {
    parse_endpoint(variable, base)?;
    parse_endpoint(variable, &format!("{}/v1/traces", base.trim_end_matches('/')))
}

fn parse_millis(variable: &'static str, value: &str) -> Result<Duration, Error> {
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| invalid(variable, format!("{value:?} is not a whole number of milliseconds")))
}

/// `key1=value1,key2=value2` with percent-encoded values (W3C Baggage format, used by
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS`). The error never echoes the
/// value: headers may hold credentials.
fn parse_pairs(variable: &'static str, value: &str) -> Result<Vec<(String, String)>, Error> {
    let mut pairs = Vec::new();
    for (index, item) in value.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let parsed = item.split_once('=').and_then(|(key, value)| {
            let key = key.trim();
            (!key.is_empty()).then_some(())?;
            Some((percent_decode(key)?, percent_decode(value.trim())?))
        });
        match parsed {
            Some(pair) => pairs.push(pair),
            None => return Err(invalid(variable, format!("entry {} is not key=value (percent-encoded)", index + 1))),
        }
    }
    Ok(pairs)
}

fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn off_without_endpoint() {
        assert_eq!(ExportSettings::from_env(&env(&[]), None).unwrap(), None);
        let config = Url::parse("http://collector:4318").unwrap();
        let disabled = env(&[("OTEL_SDK_DISABLED", "true"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
        assert_eq!(ExportSettings::from_env(&disabled, Some(&config)).unwrap(), None);
        let none = env(&[("OTEL_TRACES_EXPORTER", "none")]);
        assert_eq!(ExportSettings::from_env(&none, Some(&config)).unwrap(), None);
    }

    #[test]
    fn endpoint_precedence() {
        let config = Url::parse("http://from-config:4318/").unwrap();
        let only_config = ExportSettings::from_env(&env(&[]), Some(&config)).unwrap().unwrap();
        assert_eq!(only_config.endpoint.as_str(), "http://from-config:4318/v1/traces");
        let generic = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318/prefix/")]);
        let settings = ExportSettings::from_env(&generic, Some(&config)).unwrap().unwrap();
        assert_eq!(settings.endpoint.as_str(), "http://generic:4318/prefix/v1/traces");
        let signal = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://signal:4318/custom"),
        ]);
        let settings = ExportSettings::from_env(&signal, Some(&config)).unwrap().unwrap();
        assert_eq!(settings.endpoint.as_str(), "https://signal:4318/custom");
        assert_eq!(settings.timeout, DEFAULT_TIMEOUT);
        assert_eq!(settings.sampler, SamplerSpec::ParentBasedAlwaysOn);
    }

    #[test]
    fn rejects_unusable_values_naming_the_variable() {
        let cases = [
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c"), ], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")], "OTEL_EXPORTER_OTLP_PROTOCOL"),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_TRACES_SAMPLER", "jaeger_remote")], "OTEL_TRACES_SAMPLER"),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "5s")], "OTEL_EXPORTER_OTLP_TIMEOUT"),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_HEADERS", "secret-without-key")], "OTEL_EXPORTER_OTLP_HEADERS"),
            (vec![("OTEL_TRACES_EXPORTER", "zipkin")], "OTEL_TRACES_EXPORTER"),
        ];
        for (pairs, expected) in cases {
            match ExportSettings::from_env(&env(&pairs), None) {
                Err(Error::InvalidEnv { variable, .. }) => assert_eq!(variable, expected, "{pairs:?}"),
                other => panic!("{pairs:?}: expected an error naming {expected}, got {other:?}"),
            }
        }
        // The message never echoes a header value (it may be a credential).
        let error = ExportSettings::from_env(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_HEADERS", "a=%zz-s3cret")]), None)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn sampler_headers_timeout_and_protocol() {
        let settings = ExportSettings::from_env(
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-generic=1"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "authorization=Bearer%20abc, x-tenant = acme "),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ]),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(settings.sampler, SamplerSpec::ParentBasedTraceIdRatio(0.25));
        assert_eq!(settings.timeout, Duration::from_millis(2500));
        assert_eq!(settings.headers.get("authorization").map(String::as_str), Some("Bearer abc"));
        assert_eq!(settings.headers.get("x-tenant").map(String::as_str), Some("acme"));
        assert!(!settings.headers.contains_key("x-generic"), "the per-signal variable replaces the generic one");
        assert_eq!(SamplerSpec::from_env(&env(&[("OTEL_TRACES_SAMPLER", "always_off")])).unwrap(), SamplerSpec::AlwaysOff);
        assert_eq!(SamplerSpec::from_env(&env(&[("OTEL_TRACES_SAMPLER", "traceidratio")])).unwrap(), SamplerSpec::TraceIdRatio(1.0));
    }

    #[test]
    fn resource_service_name_and_attributes() {
        let attributes = resource_attributes(&env(&[])).unwrap();
        assert_eq!(attributes[0], ("service.name".to_owned(), "portcullis".to_owned()));
        let attributes = resource_attributes(&env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=from-attrs,deployment.environment.name=prod,team=a%2Cb",
        )]))
        .unwrap();
        assert_eq!(attributes[0].1, "from-attrs");
        assert!(attributes.contains(&("deployment.environment.name".to_owned(), "prod".to_owned())));
        assert!(attributes.contains(&("team".to_owned(), "a,b".to_owned())));
        let attributes = resource_attributes(&env(&[("OTEL_SERVICE_NAME", "gw-eu"), ("OTEL_RESOURCE_ATTRIBUTES", "service.name=x")])).unwrap();
        assert_eq!(attributes[0].1, "gw-eu");
        assert_eq!(attributes.iter().filter(|(k, _)| k == "service.name").count(), 1);
    }
}
