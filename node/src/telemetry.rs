//! Distributed tracing with OpenTelemetry: when `--otlp-endpoint` is
//! given, a request's path through the cluster is exported over OTLP/gRPC
//! as one trace (docs/tracing.md).
//!
//! - Every gRPC request a member serves gets a server span (`trace_fn` on
//!   the tonic servers, [`server_span`]), a child of the W3C
//!   `traceparent` the caller sent in its metadata, or a new trace
//!   (sampled at `--trace-sampling-ratio`) on the client port. The peer
//!   port never starts a trace of its own: Raft's traffic is not a
//!   request.
//! - A write's command carries its request span's `traceparent`
//!   (`Command.trace`) into the log, so every member records its steps for
//!   that entry (`raft.append`, `raft.commit` on the leader, `raft.apply`)
//!   as spans of the same trace ([`OtelSpans`], the driver's
//!   [`Spans`](crate::driver::Spans) edge), and a follower forwarding the
//!   write to the leader sends the context in the call's metadata.
//! - `tracing`'s spans and events inside a request become OpenTelemetry
//!   spans and span events (`tracing-opentelemetry`).
//!
//! Nothing here runs when tracing is off: [`enabled`] is one atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::driver::{Spans, Step};

/// The metadata key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// The length of a version-00 W3C `traceparent`, the only one taken
/// (`00-` 32 hex `-` 16 hex `-` 2 hex).
pub const TRACEPARENT_LEN: usize = 55;
/// How often finished spans are sent to the collector.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// Finished spans held for export at most; beyond it new ones are dropped
/// (counted by the SDK), never blocking a request.
const MAX_QUEUED_SPANS: usize = 8192;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// The OTLP/gRPC collector, `http://host:4317`.
    pub endpoint: String,
    /// The share of requests that start a trace (0 to 1); a request whose
    /// caller sent a sampled `traceparent` is always traced.
    pub sampling_ratio: f64,
    /// `service.instance.id` of this process's spans (the member's name).
    pub instance: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TelemetryError {
    #[error("--trace-sampling-ratio {0}: a share of requests, from 0 to 1")]
    Ratio(f64),
    #[error("--otlp-endpoint {0:?}: expected http://host:port (OTLP over gRPC)")]
    Endpoint(String),
    #[error(
        "--otlp-endpoint {0:?}: https is not supported; send to a collector on the node or in the pod over http://"
    )]
    Https(String),
    #[error("--otlp-endpoint {endpoint:?}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// Checks `--otlp-endpoint` and `--trace-sampling-ratio`.
pub fn check(endpoint: &str, ratio: f64) -> Result<(), TelemetryError> {
    if !(0.0..=1.0).contains(&ratio) {
        return Err(TelemetryError::Ratio(ratio));
    }
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| TelemetryError::Endpoint(endpoint.to_string()))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(_)) => Ok(()),
        (Some("https"), _) => Err(TelemetryError::Https(endpoint.to_string())),
        _ => Err(TelemetryError::Endpoint(endpoint.to_string())),
    }
}

/// The exporter and its tracer; dropping it without [`Telemetry::shutdown`]
/// loses the spans not yet sent.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Starts exporting. Must run inside the tokio runtime the exporter's
    /// gRPC client will use.
    pub fn start(cfg: &TraceConfig) -> Result<Telemetry, TelemetryError> {
        check(&cfg.endpoint, cfg.sampling_ratio)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| TelemetryError::Exporter {
                endpoint: cfg.endpoint.clone(),
                reason: e.to_string(),
            })?;
        let batches = BatchConfigBuilder::default()
            .with_scheduled_delay(EXPORT_EVERY)
            .with_max_queue_size(MAX_QUEUED_SPANS)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batches)
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("nod")
            .with_attributes([
                KeyValue::new("service.instance.id", cfg.instance.clone()),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sampling_ratio,
            ))))
            .with_resource(resource)
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Telemetry { provider })
    }

    /// The tracer `tracing`'s spans are exported through.
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("nod")
    }

    /// Sends what is left and stops.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "traces not all exported at shutdown");
        }
    }
}

struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// Whether `tp` is a version-00 W3C `traceparent`: `00-` then 32, 16 and
/// 2 lowercase hex digits, dash-separated (the propagator alone takes
/// shorter ids and other versions).
fn well_formed(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    tp.len() == TRACEPARENT_LEN
        && parts.len() == 4
        && parts[0] == "00"
        && [32, 16, 2]
            .iter()
            .zip(&parts[1..])
            .all(|(n, p)| p.len() == *n && hex(p))
}

/// The remote span a `traceparent` names, or None when it is malformed
/// (the propagator then rejects all-zero ids).
pub fn remote(traceparent: &str) -> Option<Context> {
    if !well_formed(traceparent) {
        return None;
    }
    let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &One(traceparent));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Which port a request came in on: only a client's request starts a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Client,
    Peer,
}

/// The span a gRPC request runs in (tonic's `trace_fn`): a child of the
/// caller's `traceparent`, else a new trace on the client port, else none.
pub fn server_span(port: Port, req: &http::Request<()>) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let parent = req
        .headers()
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(remote);
    if parent.is_none() && port == Port::Peer {
        return tracing::Span::none();
    }
    let path = req.uri().path();
    let span = tracing::info_span!(
        target: "nod::rpc",
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %path,
    );
    if let Some(cx) = parent {
        let _ = span.set_parent(cx);
    }
    span
}

/// The W3C `traceparent` of the current span when it is traced and
/// sampled: what a proposed command carries.
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    (sc.is_valid() && sc.is_sampled()).then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The driver's spans for traced entries, recorded with the global tracer.
pub struct OtelSpans {
    member: String,
    tracer: opentelemetry::global::BoxedTracer,
}

impl OtelSpans {
    /// Spans of `member_id`, through the tracer [`Telemetry::start`] set
    /// (a no-op one when tracing is off).
    pub fn new(member_id: u64) -> OtelSpans {
        OtelSpans {
            member: format!("{member_id:x}"),
            tracer: opentelemetry::global::tracer("nod"),
        }
    }
}

impl Spans for OtelSpans {
    type Mark = SystemTime;
    fn enabled(&self) -> bool {
        enabled()
    }
    fn mark(&self) -> SystemTime {
        SystemTime::now()
    }
    fn record(&mut self, parent: &str, step: Step, index: u64, start: SystemTime, end: SystemTime) {
        let Some(cx) = remote(parent) else {
            return;
        };
        let mut span = self
            .tracer
            .span_builder(step.name())
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes([
                KeyValue::new("nod.member", self.member.clone()),
                KeyValue::new("raft.index", index as i64),
            ])
            .start_with_context(&self.tracer, &cx);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, end);
    }
}

/// Puts `traceparent` into a call's metadata (a forwarded write).
pub fn inject(metadata: &mut tonic::metadata::MetadataMap, traceparent: &str) {
    if let Ok(v) = traceparent.parse() {
        metadata.insert(TRACEPARENT, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked() {
        assert!(check("http://127.0.0.1:4317", 0.5).is_ok());
        assert!(check("http://collector.observability:4317", 1.0).is_ok());
        assert_eq!(
            check("http://127.0.0.1:4317", 1.5),
            Err(TelemetryError::Ratio(1.5))
        );
        assert!(check("http://127.0.0.1:4317", -0.1).is_err());
        assert!(check("https://collector:4317", 1.0)
            .unwrap_err()
            .to_string()
            .contains("https is not supported"));
        assert!(check("collector:4317", 1.0)
            .unwrap_err()
            .to_string()
            .contains("expected http://host:port"));
        assert!(check("not a url", 1.0).is_err());
    }

    #[test]
    fn traceparents_are_validated() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = remote(good).expect("a valid traceparent");
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        for bad in [
            "",
            "garbage",
            // All-zero trace id and span id are invalid.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff is forbidden; short ids; upper case; a fifth field.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-ab",
            "00-4bf92f3577b34da6a3ce929d0e0e4736x00f067aa0ba902b7-01",
        ] {
            assert!(remote(bad).is_none(), "{bad:?} accepted");
        }
    }
}
