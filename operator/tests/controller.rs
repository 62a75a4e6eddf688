//! The reconciler against a mock Kubernetes API server that expects the
//! exact requests, in order (the tower-test pattern of kube-rs's
//! controller-rs), and a fake Nod cluster API.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use nod_operator::controller::{reconcile, Context};
use nod_operator::crd::NodCluster;
use nod_operator::metrics::Metrics;
use nod_operator::nodapi::{ClusterApi, Health};
use nod_operator::plan::MemberView;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A Nod cluster that answers from a fixed member table and records calls.
#[derive(Clone, Default)]
struct FakeNod {
    members: Option<Vec<MemberView>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl ClusterApi for FakeNod {
    async fn health(&self, _: Vec<String>) -> Result<Health, String> {
        self.calls.lock().unwrap().push("health".into());
        match &self.members {
            Some(m) => Ok(Health {
                members: m.clone(),
                client_urls: vec![],
            }),
            None => Err("connection refused".into()),
        }
    }
    async fn move_leader(&self, _: Vec<String>, to: u64) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("move-leader {to}"));
        Ok(())
    }
    async fn remove_member(&self, _: Vec<String>, id: u64) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("remove {id}"));
        Ok(())
    }
}

fn members(n: i32) -> Vec<MemberView> {
    (0..n)
        .map(|i| MemberView {
            id: 100 + i as u64,
            name: format!("demo-{i}"),
            learner: false,
            leader: i == 0,
            healthy: true,
            lag: 0,
            matched: 42,
        })
        .collect()
}

fn cluster(spec: Value) -> NodCluster {
    serde_json::from_value(json!({
        "apiVersion": "nod.io/v1alpha1",
        "kind": "NodCluster",
        "metadata": {
            "name": "demo", "namespace": "default", "uid": "u-1", "generation": 2,
            "finalizers": ["nod.io/finalizer"],
        },
        "spec": spec,
    }))
    .unwrap()
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "not found", "reason": "NotFound", "code": 404})
}

/// Takes the next request, checks its method and path (and for patches,
/// server-side apply as the operator's field manager), and answers.
async fn expect(
    h: &mut Handle,
    method: &str,
    path: &str,
    answer: impl FnOnce(Value) -> (u16, Value),
) -> Value {
    let (req, send) = h.next_request().await.expect("a request");
    assert_eq!(
        (req.method().as_str(), req.uri().path()),
        (method, path),
        "unexpected request {}",
        req.uri()
    );
    let query = req.uri().query().unwrap_or_default().to_string();
    if method == "PATCH" {
        assert!(
            query.contains("fieldManager=nod-operator") && query.contains("force=true"),
            "{path}: not a forced server-side apply: {query}"
        );
        assert_eq!(
            req.headers()["content-type"],
            "application/apply-patch+yaml",
            "{path}"
        );
    }
    if method == "GET" && path.ends_with("/pods") {
        assert!(
            query.contains("labelSelector=app.kubernetes.io%2Finstance%3Ddemo%2Capp.kubernetes.io%2Fname%3Dnod"),
            "{query}"
        );
    }
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let (code, reply) = answer(body.clone());
    send.send_response(respond(code, &reply));
    body
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

fn echo(v: Value) -> (u16, Value) {
    (200, v)
}

fn sts_with(replicas: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
           "metadata": {"name": "demo", "namespace": "default"},
           "spec": {"replicas": replicas, "serviceName": "demo-peers",
                    "selector": {"matchLabels": {"app.kubernetes.io/name": "nod"}},
                    "template": {"metadata": {}, "spec": {"containers": [{"name": "nod", "image": "nod:1"}]}}}})
}

fn ready_pod(i: i32) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("demo-{i}"), "namespace": "default"},
           "spec": {"containers": [{"name": "nod", "image": format!("ghcr.io/nod-io/nod:{}", env!("CARGO_PKG_VERSION"))}]},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

fn claim(i: i32) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": format!("data-demo-{i}"), "namespace": "default"}})
}

/// The status write that ends every reconcile; answers with the object and
/// that status, and returns what was sent.
async fn expect_status(h: &mut Handle, original: &Value) -> Value {
    expect(
        h,
        "PATCH",
        "/apis/nod.io/v1alpha1/namespaces/default/nodclusters/demo/status",
        |b| {
            let mut o = original.clone();
            o["status"] = b["status"].clone();
            (200, o)
        },
    )
    .await
}

/// The observation of a running 5-member cluster: its StatefulSet, 5 ready
/// pods and 5 claims.
async fn expect_five_running_members(h: &mut Handle) {
    expect(
        h,
        "GET",
        "/apis/apps/v1/namespaces/default/statefulsets/demo",
        |_| (200, sts_with(5)),
    )
    .await;
    expect(h, "GET", "/api/v1/namespaces/default/pods", |_| {
        (200, list("PodList", (0..5).map(ready_pod).collect()))
    })
    .await;
    expect(
        h,
        "GET",
        "/api/v1/namespaces/default/persistentvolumeclaims",
        |_| {
            (
                200,
                list("PersistentVolumeClaimList", (0..5).map(claim).collect()),
            )
        },
    )
    .await;
}

/// The objects every reconcile applies, in order; returns the StatefulSet applied.
async fn expect_objects(h: &mut Handle) -> Value {
    expect(
        h,
        "PATCH",
        "/api/v1/namespaces/default/serviceaccounts/demo",
        echo,
    )
    .await;
    let peers = expect(
        h,
        "PATCH",
        "/api/v1/namespaces/default/services/demo-peers",
        echo,
    )
    .await;
    assert_eq!(peers["spec"]["clusterIP"], "None");
    assert_eq!(peers["spec"]["publishNotReadyAddresses"], true);
    expect(h, "PATCH", "/api/v1/namespaces/default/services/demo", echo).await;
    let pdb = expect(
        h,
        "PATCH",
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo",
        echo,
    )
    .await;
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let sts = expect(
        h,
        "PATCH",
        "/apis/apps/v1/namespaces/default/statefulsets/demo",
        echo,
    )
    .await;
    assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "NodCluster");
    sts
}

fn context(client: kube::Client, nod: FakeNod) -> Arc<Context<FakeNod>> {
    Arc::new(Context {
        client,
        api: nod,
        metrics: Metrics::new(),
        recorder: None,
        endpoints: Arc::new(|_, n| (0..n).map(|i| format!("http://demo-{i}:2379")).collect()),
    })
}

#[tokio::test]
async fn a_new_cluster_gets_its_objects_and_a_status_saying_what_it_waits_for() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let nod = FakeNod::default();
    let nc = cluster(json!({"replicas": 3}));
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect(
            &mut h,
            "GET",
            "/apis/apps/v1/namespaces/default/statefulsets/demo",
            |_| (404, not_found()),
        )
        .await;
        expect(&mut h, "GET", "/api/v1/namespaces/default/pods", |_| {
            (200, list("PodList", vec![]))
        })
        .await;
        expect(
            &mut h,
            "GET",
            "/api/v1/namespaces/default/persistentvolumeclaims",
            |_| (200, list("PersistentVolumeClaimList", vec![])),
        )
        .await;
        let sts = expect_objects(&mut h).await;
        assert_eq!(sts["spec"]["replicas"], 3);
        let status = expect_status(&mut h, &original).await;
        status
    });
    reconcile(Arc::new(nc), context(client, nod.clone()))
        .await
        .unwrap();
    let status = server.await.unwrap()["status"].clone();
    assert_eq!(status["phase"], "Creating");
    assert_eq!(status["bootstrapExpect"], 3);
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(
        status["selector"],
        "app.kubernetes.io/instance=demo,app.kubernetes.io/name=nod"
    );
    let cond = |t: &str| {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap()
            .clone()
    };
    assert_eq!(cond("Available")["status"], "False");
    assert_eq!(cond("Progressing")["status"], "True");
    assert!(cond("Progressing")["message"]
        .as_str()
        .unwrap()
        .contains("no leader"));
    assert_eq!(cond("Degraded")["reason"], "NoLeader");
    assert_eq!(*nod.calls.lock().unwrap(), ["health"]);
}

#[tokio::test]
async fn scale_down_removes_the_top_member_before_touching_the_statefulset() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let nod = FakeNod {
        members: Some(members(5)),
        ..Default::default()
    };
    let mut nc = cluster(json!({"replicas": 3}));
    nc.status = Some(serde_json::from_value(json!({"bootstrapExpect": 5})).unwrap());
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_five_running_members(&mut h).await;
        let sts = expect_objects(&mut h).await;
        // Applied at its current size: the member leaves Raft first.
        assert_eq!(sts["spec"]["replicas"], 5);
        assert!(sts["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--bootstrap-expect=5")));
        // Every membership step is an Event on the NodCluster.
        let ev = expect(
            &mut h,
            "POST",
            "/apis/events.k8s.io/v1/namespaces/default/events",
            echo,
        )
        .await;
        assert_eq!(ev["reason"], "MemberRemoved");
        assert_eq!(ev["regarding"]["kind"], "NodCluster");
        assert!(ev["note"].as_str().unwrap().contains("demo-4"), "{ev}");
        expect_status(&mut h, &original).await
    });
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "nod-operator".into(),
            instance: Some("test".into()),
        },
    );
    let ctx = Arc::new(Context {
        recorder: Some(recorder),
        ..Arc::into_inner(context(client, nod.clone())).unwrap()
    });
    reconcile(Arc::new(nc), ctx.clone()).await.unwrap();
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains("nod_operator_reconciles_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nod_operator_reconcile_duration_seconds_count 1"),
        "{metrics}"
    );
    let status = server.await.unwrap()["status"].clone();
    assert_eq!(*nod.calls.lock().unwrap(), ["health", "remove 104"]);
    assert_eq!(status["removedMembers"], json!(["demo-4"]));
    assert_eq!(status["phase"], "Scaling");
    assert_eq!(status["leader"], "demo-0");
    assert_eq!(status["ready"], "5/3");
    assert_eq!(status["members"].as_array().unwrap().len(), 5);
    assert_eq!(
        status["members"][4],
        json!({"name": "demo-4", "id": "68", "role": "voter", "healthy": true, "appliedIndex": 42})
    );
}

#[tokio::test]
async fn after_the_removal_the_statefulset_shrinks_by_one() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let nod = FakeNod {
        members: Some(members(4)),
        ..Default::default()
    };
    let mut nc = cluster(json!({"replicas": 3}));
    nc.status = Some(
        serde_json::from_value(json!({"bootstrapExpect": 5, "removedMembers": ["demo-4"]}))
            .unwrap(),
    );
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_five_running_members(&mut h).await;
        expect_objects(&mut h).await;
        let sts = expect(
            &mut h,
            "PATCH",
            "/apis/apps/v1/namespaces/default/statefulsets/demo",
            echo,
        )
        .await;
        assert_eq!(sts["spec"]["replicas"], 4);
        expect_status(&mut h, &original).await
    });
    reconcile(Arc::new(nc), context(client, nod.clone()))
        .await
        .unwrap();
    let status = server.await.unwrap()["status"].clone();
    // The claim waits until the pod is gone (next reconcile).
    assert_eq!(status["removedMembers"], json!(["demo-4"]));
    assert_eq!(*nod.calls.lock().unwrap(), ["health"]);
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_nothing_is_applied() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let nod = FakeNod::default();
    let nc = cluster(
        json!({"replicas": 3, "raft": {"heartbeatIntervalMs": 100, "electionTimeoutMs": 200}}),
    );
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move { expect_status(&mut h, &original).await });
    reconcile(Arc::new(nc), context(client, nod.clone()))
        .await
        .unwrap();
    let status = server.await.unwrap()["status"].clone();
    assert_eq!(status["phase"], "Failed");
    assert!(status["lastError"]
        .as_str()
        .unwrap()
        .contains("electionTimeoutMs"));
    assert!(nod.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_new_resource_gets_the_finalizer_first() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let mut nc = cluster(json!({}));
    nc.metadata.finalizers = None;
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(req.method(), "PATCH");
        assert_eq!(
            req.uri().path(),
            "/apis/nod.io/v1alpha1/namespaces/default/nodclusters/demo"
        );
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let patch: Value = serde_json::from_slice(&bytes).unwrap();
        let mut o = original.clone();
        o["metadata"]["finalizers"] = json!(["nod.io/finalizer"]);
        send.send_response(respond(200, &o));
        patch
    });
    reconcile(Arc::new(nc), context(client, FakeNod::default()))
        .await
        .unwrap();
    let patch = server.await.unwrap();
    assert!(patch.to_string().contains("nod.io/finalizer"), "{patch}");
}
