//! A tower layer on the client gRPC server that counts every request and
//! times it, by method and gRPC status code (`grpc_server_handled_total`,
//! `grpc_server_handling_seconds`, as etcd's go-grpc-prometheus names them).
//! Streams are timed until their response headers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{HistogramVec, IntCounterVec};
use tower::{Layer, Service};

use crate::metrics::Metrics;

/// The two metric families the layer writes: a request clones these two
/// handles, not every metric handle `Metrics` holds.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    requests: IntCounterVec,
    seconds: HistogramVec,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: &Metrics) -> GrpcMetricsLayer {
        GrpcMetricsLayer {
            requests: metrics.grpc_requests.clone(),
            seconds: metrics.grpc_seconds.clone(),
        }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            families: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    families: GrpcMetricsLayer,
}

/// The label of calls to methods a service does not implement.
const UNKNOWN_METHOD: &str = "unknown";

/// The method name of a gRPC path (`/etcdserverpb.KV/Range` → `Range`).
fn method(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// A status code's label (its variant name, as before: `Ok`, `NotFound`, …).
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

impl<S, B, R> Service<http::Request<B>> for GrpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let mut name = method(req.uri().path());
        let families = self.families.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            let code = match &r {
                // An error status of a unary call is in the headers (trailers-only).
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from)
                    .unwrap_or(tonic::Code::Ok),
                Err(_) => tonic::Code::Internal,
            };
            // A method the service does not have: one label for all of
            // them, so callers cannot add series by inventing names.
            if code == tonic::Code::Unimplemented {
                name = UNKNOWN_METHOD.to_string();
            }
            families
                .requests
                .with_label_values(&[name.as_str(), code_label(code)])
                .inc();
            families
                .seconds
                .with_label_values(&[name.as_str()])
                .observe(started.elapsed().as_secs_f64());
            r
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn method_names_come_from_the_path() {
        assert_eq!(super::method("/etcdserverpb.KV/Range"), "Range");
        assert_eq!(super::method("/etcdserverpb.Watch/Watch"), "Watch");
    }

    #[test]
    fn code_labels_are_the_variant_names() {
        for n in 0..=16 {
            let code = tonic::Code::from(n);
            assert_eq!(super::code_label(code), format!("{code:?}"));
        }
    }
}
