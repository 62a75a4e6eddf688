//! The web console: `/ui` on the metrics port (docs/console.md). One page
//! of plain HTML, CSS and JavaScript compiled into the binary (no build
//! step, no framework, no third-party script), talking to this member
//! over two paths:
//! - `/ui/api/events`: Server-Sent Events, one `stats` event a second
//!   (this member's role, term, commit and applied indexes, its client
//!   requests per second and their latency, read from the gRPC metrics),
//!   so charts update without the page asking;
//! - `/ui/api/v3/<call>`: etcd's JSON gateway (`api/gateway.rs`), called
//!   in-process with the caller's token, so the same services run the same
//!   checks as for any client. Without a token only the calls in
//!   [`READ_ONLY`] pass: the console is read-only. With one (a login, when
//!   auth is on) the user's permissions decide. Does network I/O.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use prometheus::core::Collector;
use tonic::Status;
use tower::ServiceExt;

use crate::api::gateway::error_response;
use crate::driver::Shared;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// The gateway calls the console makes without a login: reads only (and
/// the login itself).
pub const READ_ONLY: &[&str] = &[
    "kv/range",
    "watch",
    "maintenance/status",
    "cluster/member/list",
    "auth/status",
    "auth/authenticate",
    "lease/leases",
    "nod/query",
    "nod/index/list",
    "nod/admin/memberhealth",
];

/// How often the page gets a `stats` event.
const TICK: Duration = Duration::from_secs(1);
/// The calls counted as writes and as reads in the charts.
const WRITES: &[&str] = &["Put", "Txn", "DeleteRange"];
const READS: &[&str] = &["Range"];

/// What the console needs of a serving member.
#[derive(Clone)]
pub struct Backend {
    pub shared: Arc<Shared>,
    /// The client port's router (gRPC and the JSON gateway), called in-process.
    pub gateway: axum::Router,
    pub name: String,
}

pub fn page() -> Response {
    static_file("text/html; charset=utf-8", INDEX_HTML)
}

pub fn script() -> Response {
    static_file("text/javascript; charset=utf-8", APP_JS)
}

pub fn style() -> Response {
    static_file("text/css; charset=utf-8", APP_CSS)
}

fn static_file(kind: &'static str, body: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // The page loads only its own files and talks only to this port.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The console's answer before the member serves clients.
fn starting() -> Response {
    error_response(&Status::unavailable(
        "the member is starting (finding its cluster)",
    ))
}

/// `POST /ui/api/v3/<call>`: the gateway's call, if the console may make it.
pub async fn call(backend: Option<Backend>, Path(call): Path<String>, req: Request) -> Response {
    let Some(backend) = backend else {
        return starting();
    };
    let logged_in = req.headers().contains_key(header::AUTHORIZATION);
    if !logged_in && !READ_ONLY.contains(&call.as_str()) {
        return error_response(&Status::permission_denied(
            "the console is read-only: log in (with authentication on) to change data",
        ));
    }
    let Ok(uri) = format!("/v3/{call}").parse::<axum::http::Uri>() else {
        return error_response(&Status::not_found("no such call"));
    };
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    // Only what the gateway reads: the token and the body's type.
    let mut kept = axum::http::HeaderMap::new();
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(v) = parts.headers.get(&name) {
            kept.insert(name, v.clone());
        }
    }
    parts.headers = kept;
    let mut r = match backend
        .gateway
        .oneshot(Request::from_parts(parts, body))
        .await
    {
        Ok(r) => r.into_response(),
        Err(e) => match e {},
    };
    // The gateway allows any origin, as etcd's does on the client port;
    // the console's answers are for its own page only.
    let cors: Vec<_> = r
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for k in cors {
        r.headers_mut().remove(k);
    }
    r
}

/// `GET /ui/api/events`: a `stats` event every second while the page is open.
pub fn events(backend: Option<Backend>) -> Response {
    let Some(backend) = backend else {
        return starting();
    };
    Sse::new(stats_stream(backend))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn stats_stream(
    backend: Backend,
) -> impl Stream<Item = Result<Event, std::convert::Infallible>> + Send {
    let first = Totals::read(&backend.shared.metrics);
    let state = (backend, first, tokio::time::interval(TICK));
    futures::stream::unfold(state, |(backend, before, mut tick)| async move {
        tick.tick().await;
        let now = Totals::read(&backend.shared.metrics);
        let data = stats(&backend, &before, &now, TICK.as_secs_f64());
        let event = Event::default().event("stats").data(data.to_string());
        Some((Ok(event), (backend, now, tick)))
    })
}

/// The counters and latency histograms of the writes and the reads, summed
/// over their gRPC methods.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub writes: u64,
    pub reads: u64,
    pub write_latency: Histogram,
    pub read_latency: Histogram,
}

/// Cumulative bucket counts (Prometheus's), by upper bound in seconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub cumulative: Vec<u64>,
    pub count: u64,
}

impl Histogram {
    fn add(&mut self, h: &prometheus::proto::Histogram) {
        let buckets = h.get_bucket();
        if self.bounds.is_empty() {
            self.bounds = buckets.iter().map(|b| b.upper_bound()).collect();
            self.cumulative = vec![0; buckets.len()];
        }
        for (sum, b) in self.cumulative.iter_mut().zip(buckets) {
            *sum += b.cumulative_count();
        }
        self.count += h.get_sample_count();
    }

    /// The observations since `before`.
    pub fn since(&self, before: &Histogram) -> Histogram {
        let earlier = |i: usize| before.cumulative.get(i).copied().unwrap_or(0);
        Histogram {
            bounds: self.bounds.clone(),
            cumulative: self
                .cumulative
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(earlier(i)))
                .collect(),
            count: self.count.saturating_sub(before.count),
        }
    }

    /// The `q` quantile in seconds, interpolated inside its bucket (as
    /// Prometheus's `histogram_quantile`); the last bound when it lies
    /// beyond; None without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut lower = (0.0, 0u64);
        for (bound, c) in self.bounds.iter().zip(&self.cumulative) {
            if *c as f64 >= rank {
                let (lo, below) = lower;
                let within = (*c - below) as f64;
                if within == 0.0 {
                    return Some(*bound);
                }
                return Some(lo + (bound - lo) * (rank - below as f64) / within);
            }
            lower = (*bound, *c);
        }
        self.bounds.last().copied()
    }
}

impl Totals {
    pub fn read(metrics: &crate::metrics::Metrics) -> Totals {
        let mut t = Totals::default();
        for family in metrics.grpc_requests.collect() {
            for m in family.get_metric() {
                let Some(method) = method_of(m) else { continue };
                let n = m.get_counter().get_value() as u64;
                if WRITES.contains(&method) {
                    t.writes += n;
                } else if READS.contains(&method) {
                    t.reads += n;
                }
            }
        }
        for family in metrics.grpc_seconds.collect() {
            for m in family.get_metric() {
                let Some(method) = method_of(m) else { continue };
                if WRITES.contains(&method) {
                    t.write_latency.add(m.get_histogram());
                } else if READS.contains(&method) {
                    t.read_latency.add(m.get_histogram());
                }
            }
        }
        t
    }
}

fn method_of(m: &prometheus::proto::Metric) -> Option<&str> {
    m.get_label()
        .iter()
        .find(|l| l.name() == "grpc_method")
        .map(|l| l.value())
}

/// One `stats` event: this member now, and the requests of the last
/// `seconds`.
fn stats(backend: &Backend, before: &Totals, now: &Totals, seconds: f64) -> serde_json::Value {
    let st = backend.shared.status();
    let ms = |h: &Histogram, q: f64| h.quantile(q).map(|s| s * 1000.0);
    let writes = now.write_latency.since(&before.write_latency);
    let reads = now.read_latency.since(&before.read_latency);
    let role = match st.role {
        Some(r) => format!("{r:?}").to_lowercase(),
        None => "starting".into(),
    };
    serde_json::json!({
        "member": backend.name,
        "id": format!("{:x}", backend.shared.member_id),
        "role": role,
        "leader": format!("{:x}", st.leader),
        "term": st.term,
        "commit": st.commit,
        "applied": st.applied,
        "writes": now.writes.saturating_sub(before.writes) as f64 / seconds,
        "reads": now.reads.saturating_sub(before.reads) as f64 / seconds,
        "write_p50_ms": ms(&writes, 0.5),
        "write_p99_ms": ms(&writes, 0.99),
        "read_p50_ms": ms(&reads, 0.5),
        "read_p99_ms": ms(&reads, 0.99),
        "time_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(bounds: &[f64], per_bucket: &[u64]) -> Histogram {
        let mut cumulative = Vec::new();
        let mut sum = 0;
        for n in per_bucket {
            sum += n;
            cumulative.push(sum);
        }
        Histogram {
            bounds: bounds.to_vec(),
            cumulative,
            count: sum,
        }
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let bounds = [0.001, 0.002, 0.004, 0.008];
        // 100 observations: 50 under 1 ms, 40 in (1, 2], 10 in (2, 4].
        let h = hist(&bounds, &[50, 40, 10, 0]);
        assert_eq!(h.quantile(0.5), Some(0.001));
        // Rank 70 is 20 of the 40 in (1, 2]: halfway.
        assert!((h.quantile(0.7).unwrap() - 0.0015).abs() < 1e-12);
        // Rank 99 is 9 of the 10 in (2, 4].
        assert!((h.quantile(0.99).unwrap() - 0.0038).abs() < 1e-12);
        assert_eq!(Histogram::default().quantile(0.5), None);
        // Beyond the last finite bound: the bound.
        let over = Histogram {
            bounds: bounds.to_vec(),
            cumulative: vec![0, 0, 0, 0],
            count: 3,
        };
        assert_eq!(over.quantile(0.5), Some(0.008));
    }

    #[test]
    fn rates_are_differences() {
        let bounds = [0.001, 0.01];
        let before = hist(&bounds, &[10, 5]);
        let now = hist(&bounds, &[30, 5]);
        let d = now.since(&before);
        assert_eq!(d.count, 20);
        assert_eq!(d.cumulative, vec![20, 20]);
        assert!(d.quantile(0.99).unwrap() <= 0.001);
        // A histogram that shrank (a restart) gives nothing, not a wrap.
        assert_eq!(before.since(&now).count, 0);
    }

    #[test]
    fn the_totals_count_writes_and_reads_apart() {
        let m = crate::metrics::Metrics::new();
        m.grpc_requests.with_label_values(&["Put", "OK"]).inc_by(3);
        m.grpc_requests
            .with_label_values(&["Txn", "FailedPrecondition"])
            .inc();
        m.grpc_requests
            .with_label_values(&["Range", "OK"])
            .inc_by(7);
        m.grpc_requests.with_label_values(&["Watch", "OK"]).inc();
        m.grpc_seconds.with_label_values(&["Put"]).observe(0.0004);
        m.grpc_seconds.with_label_values(&["Range"]).observe(0.02);
        m.grpc_seconds.with_label_values(&["Range"]).observe(0.03);
        let t = Totals::read(&m);
        assert_eq!((t.writes, t.reads), (4, 7));
        assert_eq!((t.write_latency.count, t.read_latency.count), (1, 2));
        assert!(t.write_latency.quantile(0.5).unwrap() <= 0.001);
        assert!(t.read_latency.quantile(0.5).unwrap() >= 0.01);
    }
}
