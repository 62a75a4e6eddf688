//! Distributed tracing end to end: three `nod server` processes export
//! their spans to a real OTLP receiver this test serves (the collector's
//! gRPC trace service, from opentelemetry-proto). Sampling is 0, so only
//! a caller's sampled `traceparent` starts a trace: one put sent to a
//! follower with one must yield one connected trace across the three
//! members (the follower's request span, the leader's span for the
//! forwarded call, and every member's append and apply of the entry),
//! and puts without a context, or with an unsampled one, none at all.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nod_proto::etcd::etcdserverpb::kv_client::KvClient;
use nod_proto::etcd::etcdserverpb::PutRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use support::{eventually, leader, Cluster};
use tokio_stream::wrappers::TcpListenerStream;

/// What the receiver got: each span with its `service.instance.id`.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let instance = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.instance.id")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    got.push((instance.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let v = span.attributes.iter().find(|kv| kv.key == key)?;
    Some(match v.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

async fn put(endpoint: &str, key: &str, traceparent: Option<&str>) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut request = tonic::Request::new(PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    if let Some(t) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", t.parse().unwrap());
    }
    KvClient::new(channel)
        .put(request)
        .await
        .unwrap_or_else(|e| panic!("put {key} on {endpoint}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_put_is_one_trace_across_three_members() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    let received = Received::default();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let c = Cluster::start_with(
        3,
        &["--otlp-endpoint", &collector, "--trace-sampling-ratio", "0"],
    );
    let endpoints = c.endpoints();
    let leader_id = leader(&endpoints).await;
    // The members' ids and names, and one follower to send the put to.
    let mut names = BTreeMap::new();
    let mut follower = None;
    for (m, ep) in c.members.iter().zip(&endpoints) {
        let mut client = m.client();
        let status = client.status().await.expect("status");
        let id = status.header.expect("a header").member_id;
        names.insert(format!("{id:x}"), m.name.clone());
        if id != leader_id {
            follower = Some((m.name.clone(), ep.clone()));
        }
    }
    let (follower_name, follower_ep) = follower.expect("a follower");
    let leader_name = names[&format!("{leader_id:x}")].clone();

    // Untraced writes first: no context, an unsampled context.
    put(&endpoints[0], "/untraced/0", None).await;
    put(
        &follower_ep,
        "/untraced/1",
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let root = "00f067aa0ba902b7";
    put(
        &follower_ep,
        "/traced",
        Some(&format!("00-{trace_id}-{root}-01")),
    )
    .await;

    // Every member exports its apply of the entry.
    eventually(
        "each member's raft.apply span",
        Duration::from_secs(30),
        || {
            let received = received.clone();
            async move {
                let got = received.0.lock().unwrap().clone();
                let applied: BTreeSet<&str> = got
                    .iter()
                    .filter(|(_, s)| s.name == "raft.apply")
                    .map(|(i, _)| i.as_str())
                    .collect();
                (applied.len() == 3).then_some(())
            }
        },
    )
    .await;
    // The export interval is a second: let any straggler arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spans = received.0.lock().unwrap().clone();

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    // Only the sampled request was traced: nothing of the other writes,
    // nothing of Raft's own traffic, nothing the peers started.
    for (instance, s) in &spans {
        assert_eq!(
            hex(&s.trace_id),
            trace_id,
            "{instance}: span {} of another trace",
            s.name
        );
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano, "{s:?}");
    }
    let ids: BTreeSet<String> = spans.iter().map(|(_, s)| hex(&s.span_id)).collect();
    assert_eq!(ids.len(), spans.len(), "span ids repeat");
    // Connected: every span's parent is the caller's span or another span
    // of the trace.
    for (instance, s) in &spans {
        let parent = hex(&s.parent_span_id);
        assert!(
            parent == root || ids.contains(&parent),
            "{instance}: {} has parent {parent}, not in the trace",
            s.name
        );
    }
    let find = |instance: &str, name: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|(i, s)| i == instance && s.name == name)
            .map(|(_, s)| s)
            .collect()
    };
    // The follower served the put, as a child of the caller's span.
    let put_spans = find(&follower_name, "etcdserverpb.KV/Put");
    assert_eq!(put_spans.len(), 1, "{spans:#?}");
    let put_span = put_spans[0];
    assert_eq!(hex(&put_span.parent_span_id), root);
    let put_id = hex(&put_span.span_id);
    // ... and forwarded it: the leader's span for the call is its child.
    let propose = find(&leader_name, "nodserverpb.Peer/Propose");
    assert_eq!(propose.len(), 1, "{spans:#?}");
    assert_eq!(hex(&propose[0].parent_span_id), put_id);
    // Every member appended and applied the entry, under the put's span,
    // and names itself; the leader waited for its commit.
    let mut index = None;
    for (id, name) in &names {
        for step in ["raft.append", "raft.apply"] {
            let s = find(name, step);
            assert_eq!(s.len(), 1, "{name}: {step}: {spans:#?}");
            assert_eq!(hex(&s[0].parent_span_id), put_id, "{name}: {step}");
            assert_eq!(attribute(s[0], "nod.member").as_deref(), Some(id.as_str()));
            let i = attribute(s[0], "raft.index").expect("raft.index");
            assert_eq!(*index.get_or_insert(i.clone()), i, "one entry");
        }
    }
    let commit = find(&leader_name, "raft.commit");
    assert_eq!(commit.len(), 1, "{spans:#?}");
    assert_eq!(hex(&commit[0].parent_span_id), put_id);
    for name in names.values().filter(|n| **n != leader_name) {
        assert!(find(name, "raft.commit").is_empty(), "{name} is no leader");
    }
    server.abort();
}
