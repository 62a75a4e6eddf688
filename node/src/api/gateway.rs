//! etcd's gRPC-JSON gateway on the client port: `POST /v3/<service>/<call>`
//! with a JSON body (etcd 3.4+ serves it with grpc-gateway; Patroni,
//! APISIX and curl users call it), plus `GET /version`, `/health` and
//! `/metrics` (etcd serves its metrics on the client port too).
//! Does network I/O (serves HTTP/1.1 and HTTP/2 next to gRPC).
//!
//! A call is turned into the gRPC call it names and served by the same
//! services as gRPC clients (one code path, one set of checks): the JSON
//! body is read into the request message by reflection over the etcd
//! protos' descriptors, framed, and sent through the client port's own
//! gRPC router in-process, with the caller's connection (for client
//! certificates) and token. The answer comes back as etcd's gateway
//! writes it (docs/research/etcd-gateway.md, observed on etcd 3.4.23):
//! - JSON as golang/protobuf's jsonpb: field names as in the .proto
//!   (`cluster_id`, `ID`, `TTL`), 64-bit integers as strings, bytes as
//!   base64, enums by name, zero values left out; requests take either
//!   field name, numbers or strings for integers, and ignore unknown fields;
//! - errors as `{"error","message","code"}` with grpc-gateway's HTTP status
//!   for the gRPC code;
//! - streams (watch, lease keep-alive, snapshot, election observe) as one
//!   `{"result":...}\n` chunk per message, answered once the first message
//!   is there; the request body is the sequence of JSON requests;
//! - CORS headers on every HTTP answer, 200 to any `OPTIONS`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MethodDescriptor, SerializeOptions,
};
use tonic::codec::{DecodeBuf, Decoder};
use tonic::{Code, Status, Streaming};
use tower::ServiceExt;

use super::maintenance::ETCD_VERSION;
use crate::server::node::Node;
use crate::tls::ConnInfo;

/// The cluster version `/version` reports beside the server's (etcd
/// reports the minor version every member speaks).
const CLUSTER_VERSION: &str = "3.5.0";

/// How long `/health`'s linearizable read may take (etcd's is the request
/// timeout; a health check wants an answer sooner).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The gateway's paths below `/v3/` (and `/v3beta/`), as etcd's protos
/// annotate them, with the gRPC service and method each calls. The
/// `kv/lease/*` aliases are etcd 3.4's too.
const ROUTES: &[(&str, &str, &str)] = &[
    ("kv/range", "etcdserverpb.KV", "Range"),
    ("kv/put", "etcdserverpb.KV", "Put"),
    ("kv/deleterange", "etcdserverpb.KV", "DeleteRange"),
    ("kv/txn", "etcdserverpb.KV", "Txn"),
    ("kv/compaction", "etcdserverpb.KV", "Compact"),
    ("watch", "etcdserverpb.Watch", "Watch"),
    ("lease/grant", "etcdserverpb.Lease", "LeaseGrant"),
    ("lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("kv/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("lease/keepalive", "etcdserverpb.Lease", "LeaseKeepAlive"),
    ("lease/timetolive", "etcdserverpb.Lease", "LeaseTimeToLive"),
    (
        "kv/lease/timetolive",
        "etcdserverpb.Lease",
        "LeaseTimeToLive",
    ),
    ("lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("kv/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("cluster/member/add", "etcdserverpb.Cluster", "MemberAdd"),
    (
        "cluster/member/remove",
        "etcdserverpb.Cluster",
        "MemberRemove",
    ),
    (
        "cluster/member/update",
        "etcdserverpb.Cluster",
        "MemberUpdate",
    ),
    ("cluster/member/list", "etcdserverpb.Cluster", "MemberList"),
    (
        "cluster/member/promote",
        "etcdserverpb.Cluster",
        "MemberPromote",
    ),
    ("maintenance/alarm", "etcdserverpb.Maintenance", "Alarm"),
    ("maintenance/status", "etcdserverpb.Maintenance", "Status"),
    (
        "maintenance/defragment",
        "etcdserverpb.Maintenance",
        "Defragment",
    ),
    ("maintenance/hash", "etcdserverpb.Maintenance", "Hash"),
    (
        "maintenance/snapshot",
        "etcdserverpb.Maintenance",
        "Snapshot",
    ),
    (
        "maintenance/transfer-leadership",
        "etcdserverpb.Maintenance",
        "MoveLeader",
    ),
    ("auth/enable", "etcdserverpb.Auth", "AuthEnable"),
    ("auth/disable", "etcdserverpb.Auth", "AuthDisable"),
    ("auth/status", "etcdserverpb.Auth", "AuthStatus"),
    ("auth/authenticate", "etcdserverpb.Auth", "Authenticate"),
    ("auth/user/add", "etcdserverpb.Auth", "UserAdd"),
    ("auth/user/get", "etcdserverpb.Auth", "UserGet"),
    ("auth/user/list", "etcdserverpb.Auth", "UserList"),
    ("auth/user/delete", "etcdserverpb.Auth", "UserDelete"),
    (
        "auth/user/changepw",
        "etcdserverpb.Auth",
        "UserChangePassword",
    ),
    ("auth/user/grant", "etcdserverpb.Auth", "UserGrantRole"),
    ("auth/user/revoke", "etcdserverpb.Auth", "UserRevokeRole"),
    ("auth/role/add", "etcdserverpb.Auth", "RoleAdd"),
    ("auth/role/get", "etcdserverpb.Auth", "RoleGet"),
    ("auth/role/list", "etcdserverpb.Auth", "RoleList"),
    ("auth/role/delete", "etcdserverpb.Auth", "RoleDelete"),
    (
        "auth/role/grant",
        "etcdserverpb.Auth",
        "RoleGrantPermission",
    ),
    (
        "auth/role/revoke",
        "etcdserverpb.Auth",
        "RoleRevokePermission",
    ),
    ("lock/lock", "v3lockpb.Lock", "Lock"),
    ("lock/unlock", "v3lockpb.Lock", "Unlock"),
    ("election/campaign", "v3electionpb.Election", "Campaign"),
    ("election/proclaim", "v3electionpb.Election", "Proclaim"),
    ("election/leader", "v3electionpb.Election", "Leader"),
    ("election/observe", "v3electionpb.Election", "Observe"),
    ("election/resign", "v3electionpb.Election", "Resign"),
];

/// Nod's own calls on the gateway (no etcd counterpart; the web console
/// makes them), below `/v3/nod/`.
const NOD_ROUTES: &[(&str, &str, &str)] = &[
    ("nod/query", "nodquerypb.Query", "Query"),
    ("nod/index/create", "nodquerypb.Index", "Create"),
    ("nod/index/drop", "nodquerypb.Index", "Drop"),
    ("nod/index/list", "nodquerypb.Index", "List"),
    ("nod/index/describe", "nodquerypb.Index", "Describe"),
    (
        "nod/admin/memberhealth",
        "nodserverpb.Admin",
        "MemberHealth",
    ),
];

/// The route table, resolved against the descriptors once.
fn methods() -> &'static HashMap<&'static str, MethodDescriptor> {
    static METHODS: OnceLock<HashMap<&'static str, MethodDescriptor>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let etcd = DescriptorPool::decode(nod_proto::etcd::FILE_DESCRIPTOR_SET)
            .expect("the descriptors compiled into nod-proto decode");
        let nod = DescriptorPool::decode(nod_proto::NOD_FILE_DESCRIPTOR_SET)
            .expect("the descriptors compiled into nod-proto decode");
        let resolve = |pool: &DescriptorPool,
                       (path, service, method): &(&'static str, &str, &str)| {
            let m = pool
                .get_service_by_name(service)
                .and_then(|s| s.methods().find(|m| m.name() == *method))
                .unwrap_or_else(|| panic!("{service}/{method} is in the protos"));
            (*path, m)
        };
        ROUTES
            .iter()
            .map(|r| resolve(&etcd, r))
            .chain(NOD_ROUTES.iter().map(|r| resolve(&nod, r)))
            .collect()
    })
}

/// The gateway in front of the client port's gRPC services: `grpc` is
/// their router (which the gateway calls in-process); the result serves
/// gRPC, the JSON gateway, `/version` and `/health`. `limit` is the
/// largest gRPC message the services take (`--max-request-bytes` plus
/// gRPC's allowance).
pub fn router(grpc: axum::Router, node: Arc<Node>, limit: usize) -> axum::Router {
    let gateway = Arc::new(Gateway {
        grpc: grpc.clone(),
        node,
        limit,
    });
    // Resolve the table now: a missing method is a build defect, found at
    // start rather than on a user's first call.
    let _ = methods();
    grpc.fallback(move |req: Request| {
        let gateway = gateway.clone();
        async move { gateway.serve(req).await }
    })
}

struct Gateway {
    grpc: axum::Router,
    node: Arc<Node>,
    limit: usize,
}

impl Gateway {
    /// Everything the gRPC services do not take: the gateway's paths and
    /// the HTTP endpoints, each answer with etcd's CORS headers.
    async fn serve(&self, req: Request) -> Response {
        if is_grpc(req.headers()) {
            // A gRPC call to a service or method the port does not have.
            return grpc_unimplemented();
        }
        let mut resp = if req.method() == Method::OPTIONS {
            plain(StatusCode::OK, None, "")
        } else {
            let path = req.uri().path();
            if let Some(call) = path
                .strip_prefix("/v3/")
                .or_else(|| path.strip_prefix("/v3beta/"))
            {
                match methods().get(call) {
                    None => not_found("Not Found\n"),
                    Some(_) if req.method() != Method::POST => method_not_allowed(None),
                    Some(m) => self.call(m.clone(), req).await,
                }
            } else {
                match path {
                    "/version" => self.version(req.method()),
                    "/health" => self.health(req.method()).await,
                    "/metrics" if req.method() == Method::GET => plain(
                        StatusCode::OK,
                        Some("text/plain; version=0.0.4; charset=utf-8"),
                        crate::server::http::metrics_text(&self.node.shared),
                    ),
                    _ => not_found("404 page not found\n"),
                }
            }
        };
        let h = resp.headers_mut();
        h.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("accept, content-type, authorization"),
        );
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
        );
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        resp
    }

    fn version(&self, method: &Method) -> Response {
        if method != Method::GET {
            return method_not_allowed(Some("GET"));
        }
        let body =
            format!(r#"{{"etcdserver":"{ETCD_VERSION}","etcdcluster":"{CLUSTER_VERSION}"}}"#);
        plain(StatusCode::OK, Some(JSON), body)
    }

    /// etcd's `/health`: healthy when no alarm is raised and a
    /// linearizable read (which needs a leader) succeeds in time.
    async fn health(&self, method: &Method) -> Response {
        if method != Method::GET {
            return method_not_allowed(Some("GET"));
        }
        let alarmed = !self.node.shared.store().alarms().is_empty();
        let healthy = !alarmed
            && matches!(
                tokio::time::timeout(HEALTH_TIMEOUT, self.node.linearize()).await,
                Ok(Ok(()))
            );
        if healthy {
            plain(StatusCode::OK, Some(TEXT), r#"{"health":"true"}"#)
        } else {
            let mut r = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(TEXT),
                "{\"health\":\"false\"}\n",
            );
            r.headers_mut().insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
            r
        }
    }

    /// One gateway call: JSON in, the gRPC call, JSON out.
    async fn call(&self, method: MethodDescriptor, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        // Read no more than a message the service could take, base64 and
        // JSON's own overhead included; the exact limit is checked on
        // the encoded message below.
        let cap = self.limit.saturating_mul(2).saturating_add(64 * 1024);
        let body = match axum::body::to_bytes(body, cap).await {
            Ok(b) => b,
            Err(_) => {
                return error_response(&Status::resource_exhausted(format!(
                    "grpc: received message larger than max (over {cap} vs. {})",
                    self.limit
                )))
            }
        };
        let streaming_in = method.is_client_streaming();
        let requests = match decode_requests(&method, &body, streaming_in) {
            Ok(r) => r,
            Err(status) => return error_response(&status),
        };
        let mut frames = Vec::new();
        for m in &requests {
            let bytes = m.encode_to_vec();
            if bytes.len() > self.limit {
                return error_response(&Status::resource_exhausted(format!(
                    "grpc: received message larger than max ({} vs. {})",
                    bytes.len(),
                    self.limit
                )));
            }
            frames.push(0u8);
            frames.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            frames.extend_from_slice(&bytes);
        }

        let mut inner = axum::http::Request::builder()
            .method(Method::POST)
            .uri(format!(
                "/{}/{}",
                method.parent_service().full_name(),
                method.name()
            ))
            .version(axum::http::Version::HTTP_2)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers");
        for (name, value) in metadata(&parts.headers) {
            inner = inner.header(name, value);
        }
        let Ok(mut inner) = inner.body(Body::from(frames)) else {
            return error_response(&Status::invalid_argument("invalid request headers"));
        };
        if let Some(conn) = parts.extensions.get::<ConnInfo>() {
            inner.extensions_mut().insert(conn.clone());
        }
        let Ok(resp) = self.grpc.clone().oneshot(inner).await;
        let (head, body) = resp.into_parts();
        if let Some(status) = Status::from_header_map(&head.headers) {
            if status.code() != Code::Ok {
                return error_response(&status);
            }
        }
        let mut stream =
            Streaming::new_response(RawDecoder, body, head.status, None, Some(usize::MAX));
        let output = method.output();
        if !method.is_server_streaming() {
            return match stream.message().await {
                Ok(Some(bytes)) => match to_json(&output, &bytes) {
                    Ok(json) => answered(plain(StatusCode::OK, Some(JSON), json)),
                    Err(status) => error_response(&status),
                },
                Ok(None) => error_response(&Status::internal("no response message")),
                Err(status) => error_response(&status),
            };
        }
        // A stream answers once its first message is there (as etcd's:
        // a watch that never answers sends no status line either).
        let first = match stream.message().await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return plain(StatusCode::OK, Some(JSON), ""),
            Err(status) => return error_response(&status),
        };
        // One chunk per message; an error is the last chunk.
        let chunks = futures::stream::once(async move { Ok(first) })
            .chain(stream)
            .scan(false, move |ended, message| {
                if *ended {
                    return futures::future::ready(None);
                }
                let chunk = match message.and_then(|bytes| to_json(&output, &bytes)) {
                    Ok(json) => format!("{{\"result\":{json}}}\n"),
                    Err(status) => {
                        *ended = true;
                        stream_error(&status)
                    }
                };
                futures::future::ready(Some(Ok::<_, std::convert::Infallible>(Bytes::from(chunk))))
            });
        answered(plain(StatusCode::OK, Some(JSON), Body::from_stream(chunks)))
    }
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// A gRPC call's successful answer carries the metadata header
/// grpc-gateway adds (errors do not).
fn answered(mut r: Response) -> Response {
    r.headers_mut().insert(
        "grpc-metadata-content-type",
        HeaderValue::from_static("application/grpc"),
    );
    r
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// gRPC's answer to a method the server does not have (what tonic's
/// router would have sent).
fn grpc_unimplemented() -> Response {
    let mut r = Response::new(Body::empty());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static("12"));
    r
}

fn plain(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: impl Into<Body>,
) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    if let Some(ct) = content_type {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    r
}

fn not_found(body: &'static str) -> Response {
    let mut r = plain(StatusCode::NOT_FOUND, Some(TEXT), body);
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn method_not_allowed(allow: Option<&'static str>) -> Response {
    let mut r = plain(
        StatusCode::METHOD_NOT_ALLOWED,
        Some(TEXT),
        "Method Not Allowed\n",
    );
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if let Some(allow) = allow {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    r
}

/// The gRPC metadata a gateway call carries: the token (etcd takes it raw
/// in `Authorization`, as grpc-gateway passes that header on) and every
/// `Grpc-Metadata-<name>` header as `<name>`.
fn metadata(headers: &HeaderMap) -> Vec<(String, HeaderValue)> {
    let mut md = Vec::new();
    for (name, value) in headers {
        let name = name.as_str();
        if name == "authorization" {
            md.push(("authorization".to_string(), value.clone()));
        } else if let Some(rest) = name.strip_prefix("grpc-metadata-") {
            // Never let a caller pose as a member forwarding a request.
            if !rest.starts_with("nod-") && !rest.is_empty() {
                md.push((rest.to_string(), value.clone()));
            }
        }
    }
    md
}

/// grpc-gateway's HTTP status for a gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
    }
}

/// etcd's error body: `{"error":m,"message":m,"code":n}`, in that order.
fn error_body(status: &Status) -> String {
    let m = serde_json::Value::String(status.message().to_string());
    format!(
        r#"{{"error":{m},"message":{m},"code":{}}}"#,
        status.code() as i32
    )
}

/// An error as etcd's gateway answers it (the web console's too).
pub(crate) fn error_response(status: &Status) -> Response {
    plain(http_status(status.code()), Some(JSON), error_body(status))
}

/// How a stream that already answered reports its error: one last chunk.
fn stream_error(status: &Status) -> String {
    let http = http_status(status.code());
    let message = serde_json::Value::String(status.message().to_string());
    let reason = serde_json::Value::String(http.canonical_reason().unwrap_or("").to_string());
    format!(
        r#"{{"error":{{"grpc_code":{},"http_code":{},"message":{message},"http_status":{reason}}}}}"#,
        status.code() as i32,
        http.as_u16()
    )
}

/// One request as jsonpb reads it: unknown fields are ignored, but an
/// enum name that does not exist is an error (a lenient read alone would
/// drop it silently, and `"descend"` would sort ascending).
fn decode_value(
    input: &prost_reflect::MessageDescriptor,
    value: serde_json::Value,
) -> Result<DynamicMessage, serde_json::Error> {
    let strict = DeserializeOptions::new().deny_unknown_fields(true);
    match DynamicMessage::deserialize_with_options(input.clone(), &value, &strict) {
        Ok(m) => Ok(m),
        Err(e) if e.to_string().contains("unrecognized enum value") => Err(e),
        Err(_) => {
            let lenient = DeserializeOptions::new().deny_unknown_fields(false);
            DynamicMessage::deserialize_with_options(input.clone(), value, &lenient)
        }
    }
}

/// The request messages of a call's body: one for a unary or
/// server-streaming call (an empty body or `null` is the empty message;
/// what follows the first JSON value is ignored, as jsonpb does), the
/// sequence of JSON values for a client stream (a bad first one fails
/// the call, a later bad one ends the sequence: etcd's gateway).
fn decode_requests(
    method: &MethodDescriptor,
    body: &[u8],
    stream: bool,
) -> Result<Vec<DynamicMessage>, Status> {
    let input = method.input();
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<serde_json::Value>();
    let mut out = Vec::new();
    loop {
        let first = out.is_empty();
        let value = match values.next() {
            None if first && !stream => serde_json::Value::Null,
            None => break,
            Some(Ok(v)) => v,
            Some(Err(e)) if first && stream => return Err(Status::unknown(e.to_string())),
            Some(Err(e)) if first => return Err(Status::invalid_argument(e.to_string())),
            Some(Err(_)) => break,
        };
        let message = if value.is_null() {
            Ok(DynamicMessage::new(input.clone()))
        } else {
            decode_value(&input, value)
        };
        match message {
            Ok(m) => out.push(m),
            Err(e) if first => {
                let status = if stream {
                    Status::unknown(e.to_string())
                } else {
                    Status::invalid_argument(e.to_string())
                };
                return Err(status);
            }
            Err(_) => break,
        }
        if !stream {
            break;
        }
    }
    Ok(out)
}

/// A response message as etcd's gateway writes it (jsonpb with the
/// .proto's field names, 64-bit integers as strings, zero values left out).
fn to_json(output: &prost_reflect::MessageDescriptor, bytes: &[u8]) -> Result<String, Status> {
    let message = DynamicMessage::decode(output.clone(), bytes)
        .map_err(|e| Status::internal(format!("decoding the response: {e}")))?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(true)
        .skip_default_fields(true);
    let mut out = Vec::new();
    message
        .serialize_with_options(&mut serde_json::Serializer::new(&mut out), &options)
        .map_err(|e| Status::internal(format!("encoding the response: {e}")))?;
    String::from_utf8(out).map_err(|e| Status::internal(e.to_string()))
}

/// Hands each gRPC message on as its bytes (read by reflection after).
struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        use bytes::Buf;
        let n = buf.remaining();
        Ok(Some(buf.copy_to_bytes(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nod_proto::etcd::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
    use nod_proto::etcd::mvccpb::KeyValue;

    fn method(path: &str) -> MethodDescriptor {
        methods()[path].clone()
    }

    fn range(body: &str) -> Result<RangeRequest, u16> {
        match decode_requests(&method("kv/range"), body.as_bytes(), false) {
            Ok(mut m) => Ok(m.remove(0).transcode_to().unwrap()),
            Err(status) => Err(http_status(status.code()).as_u16()),
        }
    }

    #[test]
    fn every_route_resolves_to_a_method() {
        assert_eq!(methods().len(), ROUTES.len() + NOD_ROUTES.len());
        assert_eq!(method("nod/query").full_name(), "nodquerypb.Query.Query");
        assert_eq!(
            method("nod/admin/memberhealth")
                .parent_service()
                .full_name(),
            "nodserverpb.Admin"
        );
        assert!(method("watch").is_client_streaming());
        assert!(method("election/observe").is_server_streaming());
        assert!(!method("kv/put").is_server_streaming());
    }

    #[test]
    fn requests_take_both_field_names_and_integers_as_strings() {
        let r = range(r#"{"key":"Zm9v","range_end":"Zm9w","limit":"3","keysOnly":true}"#).unwrap();
        assert_eq!(r.key, b"foo");
        assert_eq!(r.range_end, b"fop");
        assert_eq!(r.limit, 3);
        assert!(r.keys_only);
        let r = range(r#"{"key":"YQ==","revision":7,"sort_order":"DESCEND","bogus":1}"#).unwrap();
        assert_eq!((r.revision, r.sort_order), (7, 2));
        // Empty bodies and null are the empty message; what follows the
        // first value is ignored.
        assert_eq!(range("").unwrap(), RangeRequest::default());
        assert_eq!(range("null").unwrap(), RangeRequest::default());
        assert_eq!(range(r#"{"key":"YQ=="} garbage"#).unwrap().key, b"a");
    }

    #[test]
    fn malformed_requests_are_400s() {
        for bad in [
            r#"{"key":"!!!"}"#,
            r#"{"key":"YQ==""#,
            r#"[1,2]"#,
            r#"{"limit":"abc"}"#,
            r#"{"keys_only":"true"}"#,
            r#"{"sort_order":"descend"}"#,
        ] {
            assert_eq!(range(bad), Err(400), "{bad}");
        }
    }

    #[test]
    fn a_bad_first_stream_message_fails_and_a_later_one_ends_the_stream() {
        let watch = method("watch");
        let r = decode_requests(&watch, br#"{"create_request":"#, true);
        assert_eq!(r.err().map(|s| s.code()), Some(Code::Unknown));
        let ok = decode_requests(
            &watch,
            br#"{"create_request":{"key":"YQ=="}} {"progress_request":{}}{"cancel_request":"x"}{}"#,
            true,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
    }

    #[test]
    fn responses_are_jsonpb_with_proto_names() {
        let resp = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 14841639068965178418,
                member_id: 10276657743932975437,
                revision: 5,
                raft_term: 2,
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                create_revision: 5,
                mod_revision: 5,
                version: 1,
                value: Vec::new(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        let json = to_json(&method("kv/range").output(), &resp.encode_to_vec()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","#,
                r#""revision":"5","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"5","#,
                r#""mod_revision":"5","version":"1"}],"count":"1"}"#
            )
        );
    }

    #[test]
    fn errors_are_etcds_bodies_and_codes() {
        let s = Status::failed_precondition("etcdserver: lease already exists");
        assert_eq!(
            error_body(&s),
            r#"{"error":"etcdserver: lease already exists","message":"etcdserver: lease already exists","code":9}"#
        );
        assert_eq!(http_status(Code::FailedPrecondition), 412);
        assert_eq!(http_status(Code::ResourceExhausted), 429);
        assert_eq!(http_status(Code::OutOfRange), 400);
        assert_eq!(
            stream_error(&Status::unavailable("transport is closing")),
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"transport is closing","http_status":"Service Unavailable"}}"#
        );
    }
}
