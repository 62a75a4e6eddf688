//! The reconciler against a mock Kubernetes API server that expects the
//! exact requests, in order (the tower-test pattern of kube-rs's
//! controller-rs), and a fake Nod cluster API.
//!
//! Every reconcile ends with a status write, also when something on the
//! way failed: most tests end with `expect_status`.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use nod_client::backup_agent::{AgentFailure, AgentStatus, FullBackup};
use nod_operator::controller::{reconcile, Context};
use nod_operator::crd::NodCluster;
use nod_operator::metrics::Metrics;
use nod_operator::nodapi::{ClusterApi, Health, MemberIndex, Target};
use nod_operator::plan::MemberView;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A Nod cluster that answers from a fixed member table and records calls.
#[derive(Clone, Default)]
struct FakeNod {
    members: Option<Vec<MemberView>>,
    calls: Arc<Mutex<Vec<String>>>,
    /// Whether authentication is on.
    auth: Arc<Mutex<bool>>,
    /// What the backup agent answers (`None`: it does not answer).
    agent: Option<AgentStatus>,
    /// Each member's own Raft index, by endpoint (the others do not answer).
    indexes: Vec<(String, u64)>,
}

impl ClusterApi for FakeNod {
    async fn health(&self, _: &Target) -> Result<Health, String> {
        self.calls.lock().unwrap().push("health".into());
        match &self.members {
            Some(m) => Ok(Health {
                cluster_id: 0xc1,
                members: m.clone(),
                client_urls: vec![],
            }),
            None => Err("connection refused".into()),
        }
    }
    async fn move_leader(&self, _: &Target, to: u64) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("move-leader {to}"));
        Ok(())
    }
    async fn remove_member(&self, _: &Target, id: u64) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("remove {id}"));
        Ok(())
    }
    async fn auth_enabled(&self, _: &Target) -> Result<bool, String> {
        self.calls.lock().unwrap().push("auth-status".into());
        Ok(*self.auth.lock().unwrap())
    }
    async fn enable_auth(&self, t: &Target, password: &str) -> Result<(), String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("enable-auth {password} tls={}", t.tls.is_some()));
        *self.auth.lock().unwrap() = true;
        Ok(())
    }
    async fn disable_auth(&self, _: &Target) -> Result<(), String> {
        self.calls.lock().unwrap().push("disable-auth".into());
        *self.auth.lock().unwrap() = false;
        Ok(())
    }
    async fn backup_status(&self, url: &str) -> Result<AgentStatus, String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("backup-status {url}"));
        self.agent
            .clone()
            .ok_or_else(|| "connection refused".into())
    }
    async fn member_status(&self, _: &Target, endpoint: &str) -> Result<MemberIndex, String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("member-status {endpoint}"));
        self.indexes
            .iter()
            .find(|(ep, _)| ep == endpoint)
            .map(|(_, i)| MemberIndex {
                cluster_id: 0xc1,
                member_id: 1,
                raft_index: *i,
            })
            .ok_or_else(|| "connection refused".into())
    }
    async fn request_backup(&self, url: &str) -> Result<u64, String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("request-backup {url}"));
        Ok(7)
    }
    async fn served_certificate(&self, _: &Target, url: &str) -> Result<Vec<u8>, String> {
        self.calls.lock().unwrap().push(format!("served {url}"));
        Err("not served".into())
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
            "resourceVersion": "5",
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

/// A ready member pod made from the template with hash `hash`.
fn ready_pod(i: i32, hash: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("demo-{i}"), "namespace": "default",
                        "annotations": {"nod.io/template-hash": hash}},
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

/// The observation of a running cluster of `n` members: its StatefulSet,
/// `n` ready pods made from the template with `hash`, and `n` claims.
async fn expect_running_members(h: &mut Handle, n: i32, hash: &str) {
    expect_observation(
        h,
        sts_with(n),
        (0..n).map(|i| ready_pod(i, hash)).collect(),
        (0..n).map(claim).collect(),
    )
    .await;
}

/// The observation: the StatefulSet, the pods and the claims, as given.
async fn expect_observation(h: &mut Handle, sts: Value, pods: Vec<Value>, claims: Vec<Value>) {
    expect(
        h,
        "GET",
        "/apis/apps/v1/namespaces/default/statefulsets/demo",
        |_| (200, sts),
    )
    .await;
    expect(h, "GET", "/api/v1/namespaces/default/pods", |_| {
        (200, list("PodList", pods))
    })
    .await;
    expect(
        h,
        "GET",
        "/api/v1/namespaces/default/persistentvolumeclaims",
        |_| (200, list("PersistentVolumeClaimList", claims)),
    )
    .await;
}

/// A merge patch (not an apply) to `path`; answers with `reply`, returns
/// the patch.
async fn expect_merge_patch(h: &mut Handle, path: &str, reply: Value) -> Value {
    let (req, send) = h.next_request().await.expect("a request");
    assert_eq!(
        (req.method().as_str(), req.uri().path()),
        ("PATCH", path),
        "unexpected request {}",
        req.uri()
    );
    assert_eq!(
        req.headers()["content-type"],
        "application/merge-patch+json",
        "{path}"
    );
    let bytes = req.into_body().collect_bytes().await.unwrap();
    send.send_response(respond(200, &reply));
    serde_json::from_slice(&bytes).unwrap()
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
        .clone()
}

fn args(sts: &Value) -> Vec<String> {
    sts["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The objects every reconcile applies, in order, for a StatefulSet of
/// `replicas` now (after the gossip key, which exists); returns the
/// StatefulSet applied.
async fn expect_objects(h: &mut Handle, replicas: i32) -> Value {
    expect_gossip_key(h).await;
    expect_applied(h, replicas).await
}

/// The objects applied after the Secrets, in order; returns the
/// StatefulSet.
async fn expect_applied(h: &mut Handle, replicas: i32) -> Value {
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
    // Never below a quorum of the members by a drain.
    assert_eq!(pdb["spec"]["minAvailable"], replicas / 2 + 1, "{pdb}");
    assert!(pdb["spec"].get("maxUnavailable").is_none(), "{pdb}");
    let sts = expect(
        h,
        "PATCH",
        "/apis/apps/v1/namespaces/default/statefulsets/demo",
        echo,
    )
    .await;
    assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "NodCluster");
    assert_eq!(sts["spec"]["replicas"], replicas);
    let np = expect(
        h,
        "PATCH",
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/demo",
        echo,
    )
    .await;
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]), "{np}");
    sts
}

/// The gossip key Secret, read and found.
async fn expect_gossip_key(h: &mut Handle) {
    expect(
        h,
        "GET",
        "/api/v1/namespaces/default/secrets/demo-gossip",
        |_| {
            (
                200,
                json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "demo-gossip", "namespace": "default"},
                       "data": {"key": "a2V5Cg=="}}),
            )
        },
    )
    .await;
}

/// A scale step: the StatefulSet to `replicas`, then its disruption budget
/// to a quorum of that, in one reconcile. Returns both patches.
async fn expect_scale_step(h: &mut Handle, replicas: i32, min_available: i32) -> (Value, Value) {
    let sts = expect(
        h,
        "PATCH",
        "/apis/apps/v1/namespaces/default/statefulsets/demo",
        echo,
    )
    .await;
    assert_eq!(sts["spec"]["replicas"], replicas);
    let pdb = expect(
        h,
        "PATCH",
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo",
        echo,
    )
    .await;
    assert_eq!(pdb["spec"]["minAvailable"], min_available);
    (sts, pdb)
}

fn context(client: kube::Client, nod: FakeNod) -> Arc<Context<FakeNod>> {
    Arc::new(Context {
        client,
        api: nod,
        metrics: Metrics::new(),
        recorder: None,
        endpoints: Arc::new(|_, n| (0..n).map(|i| format!("http://demo-{i}:2379")).collect()),
        agent_url: Arc::new(|nc| {
            format!(
                "http://agent-of-{}",
                nc.metadata.name.as_deref().unwrap_or_default()
            )
        }),
        state_dir: tempfile::tempdir().unwrap().keep(),
        operator_namespace: Some("nod-system".into()),
        written: Default::default(),
    })
}

fn cluster_status(nc: &mut NodCluster, status: Value) {
    nc.status = Some(serde_json::from_value(status).unwrap());
}

#[tokio::test]
async fn a_new_cluster_gets_its_objects_with_founding_flags_and_a_status_saying_what_it_waits_for()
{
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
        let sts = expect_objects(&mut h, 3).await;
        let a = args(&sts);
        // Only the first three pods may found the cluster, and only together.
        assert!(a.contains(&"--bootstrap-expect=3".to_string()), "{a:?}");
        assert!(
            a.contains(&"--bootstrap-founders=demo-0,demo-1,demo-2".to_string()),
            "{a:?}"
        );
        let status = expect_status(&mut h, &original).await;
        status
    });
    reconcile(Arc::new(nc), context(client, nod.clone()))
        .await
        .unwrap();
    let status = server.await.unwrap()["status"].clone();
    assert_eq!(status["phase"], "Creating");
    assert_eq!(status["bootstrapExpect"], 3);
    assert!(status.get("clusterId").is_none(), "not founded yet");
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(
        status["selector"],
        "app.kubernetes.io/instance=demo,app.kubernetes.io/name=nod"
    );
    assert_eq!(condition(&status, "Available")["status"], "False");
    assert_eq!(condition(&status, "Progressing")["status"], "True");
    assert!(condition(&status, "Progressing")["message"]
        .as_str()
        .unwrap()
        .contains("no leader"));
    assert_eq!(condition(&status, "Degraded")["reason"], "NoLeader");
    assert_eq!(condition(&status, "SpecApplied")["status"], "True");
    assert_eq!(*nod.calls.lock().unwrap(), ["health"]);
}

#[tokio::test]
async fn the_first_leader_seen_founds_the_cluster_and_later_pods_only_join() {
    // Created with one member; the operator sees its leader, records the
    // cluster id; then `kubectl scale --replicas=3`: the template the new
    // pods get has no founding flags, so they cannot found a second cluster.
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let nod = FakeNod {
        members: Some(members(1)),
        ..Default::default()
    };
    let mut nc = cluster(json!({"replicas": 1}));
    cluster_status(&mut nc, json!({"bootstrapExpect": 1}));
    let hash = nod_operator::render::template_hash(&nc);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn({
        let hash = hash.clone();
        async move {
            expect_running_members(&mut h, 1, &hash).await;
            let sts = expect_objects(&mut h, 1).await;
            // The leader was seen before the apply: already no founding.
            assert!(
                !args(&sts).iter().any(|a| a.starts_with("--bootstrap")),
                "{:?}",
                args(&sts)
            );
            (expect_status(&mut h, &original).await, h)
        }
    });
    reconcile(Arc::new(nc.clone()), context(client.clone(), nod.clone()))
        .await
        .unwrap();
    let (written, mut h) = server.await.unwrap();
    let status = written["status"].clone();
    assert_eq!(status["clusterId"], "c1");
    assert_eq!(status["phase"], "Running");

    // Scaled to 3, with the status the first reconcile wrote.
    nc.spec.replicas = 3;
    nc.status = Some(serde_json::from_value(status).unwrap());
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_running_members(&mut h, 1, &hash).await;
        let sts = expect_objects(&mut h, 1).await;
        let no_founding = |sts: &Value| !args(sts).iter().any(|a| a.starts_with("--bootstrap"));
        assert!(no_founding(&sts), "{:?}", args(&sts));
        // The disruption budget follows the size in the same step.
        let (scaled, _) = expect_scale_step(&mut h, 3, 2).await;
        assert!(no_founding(&scaled), "{:?}", args(&scaled));
        expect_status(&mut h, &original).await
    });
    reconcile(Arc::new(nc), context(client, nod.clone()))
        .await
        .unwrap();
    let status = server.await.unwrap()["status"].clone();
    assert_eq!(status["clusterId"], "c1");
    assert_eq!(status["phase"], "Scaling");
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
    cluster_status(&mut nc, json!({"bootstrapExpect": 5, "clusterId": "c1"}));
    let hash = nod_operator::render::template_hash(&nc);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_running_members(&mut h, 5, &hash).await;
        // Applied at its current size: the member leaves Raft first.
        let sts = expect_objects(&mut h, 5).await;
        assert!(
            !args(&sts).iter().any(|a| a.starts_with("--bootstrap")),
            "a founded cluster's template only joins"
        );
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
async fn after_the_removal_the_statefulset_and_its_budget_shrink_by_one() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let nod = FakeNod {
        members: Some(members(4)),
        ..Default::default()
    };
    let mut nc = cluster(json!({"replicas": 3}));
    cluster_status(
        &mut nc,
        json!({"bootstrapExpect": 5, "clusterId": "c1", "removedMembers": ["demo-4"]}),
    );
    let hash = nod_operator::render::template_hash(&nc);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_running_members(&mut h, 5, &hash).await;
        expect_objects(&mut h, 5).await;
        expect_scale_step(&mut h, 4, 3).await;
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

/// The watch cache can hand the next reconcile the resource as it was
/// before the last status write (seen on a real API server: the StatefulSet
/// shrank 87 ms after a member was removed, the reconcile read the old
/// status, and the removed member's claim was never deleted). What the
/// operator wrote last must win over the cache.
#[tokio::test]
async fn a_step_recorded_in_status_survives_a_reconcile_of_a_stale_copy() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let mut nc = cluster(json!({"replicas": 3}));
    cluster_status(&mut nc, json!({"bootstrapExpect": 5, "clusterId": "c1"}));
    let hash = nod_operator::render::template_hash(&nc);
    let original = serde_json::to_value(&nc).unwrap();
    let stale = Arc::new(nc);
    let server = tokio::spawn(async move {
        // First reconcile: five members, the top one leaves Raft.
        expect_running_members(&mut h, 5, &hash).await;
        expect_objects(&mut h, 5).await;
        let first = expect_status(&mut h, &original).await;
        // Second reconcile, of the copy from before that status write.
        expect_running_members(&mut h, 5, &hash).await;
        expect_objects(&mut h, 5).await;
        expect_scale_step(&mut h, 4, 3).await;
        (first, expect_status(&mut h, &original).await)
    });
    let five = FakeNod {
        members: Some(members(5)),
        ..Default::default()
    };
    let ctx = context(client, five.clone());
    reconcile(stale.clone(), ctx.clone()).await.unwrap();
    assert_eq!(*five.calls.lock().unwrap(), ["health", "remove 104"]);
    // The member is gone from Raft now; same operator, same memory.
    let four = FakeNod {
        members: Some(members(4)),
        ..Default::default()
    };
    let ctx = Arc::new(Context {
        api: four,
        ..Arc::into_inner(ctx).unwrap()
    });
    reconcile(stale, ctx).await.unwrap();
    let (first, second) = server.await.unwrap();
    assert_eq!(first["status"]["removedMembers"], json!(["demo-4"]));
    assert_eq!(
        second["status"]["removedMembers"],
        json!(["demo-4"]),
        "the second reconcile forgot the removed member"
    );
}

/// Endpoints that reach another cluster's leader (a split brain, or pods
/// of someone else) must never get this cluster's membership steps.
#[tokio::test]
async fn a_leader_of_another_cluster_gets_no_step() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let nod = FakeNod {
        members: Some(members(5)),
        ..Default::default()
    };
    let mut nc = cluster(json!({"replicas": 3}));
    // Founded as c2; the leader that answers belongs to c1.
    cluster_status(&mut nc, json!({"bootstrapExpect": 5, "clusterId": "c2"}));
    let hash = nod_operator::render::template_hash(&nc);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_running_members(&mut h, 5, &hash).await;
        expect_objects(&mut h, 5).await;
        expect_status(&mut h, &original).await
    });
    let _ = reconcile(Arc::new(nc), context(client, nod.clone())).await;
    let status = server.await.unwrap()["status"].clone();
    assert_eq!(*nod.calls.lock().unwrap(), ["health"], "a step was taken");
    assert_eq!(status["clusterId"], "c2");
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert!(
        degraded["message"].as_str().unwrap().contains("cluster c1"),
        "{degraded}"
    );
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
async fn a_pod_template_change_rolls_the_highest_follower_first() {
    // Not an image change: the Raft timings. Pods made from the old template
    // carry its hash; the highest follower goes first.
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let nod = FakeNod {
        members: Some(members(3)),
        ..Default::default()
    };
    let old = cluster(json!({"replicas": 3}));
    let old_hash = nod_operator::render::template_hash(&old);
    let mut nc = cluster(
        json!({"replicas": 3, "raft": {"heartbeatIntervalMs": 100, "electionTimeoutMs": 3000}}),
    );
    assert_ne!(nod_operator::render::template_hash(&nc), old_hash);
    cluster_status(&mut nc, json!({"bootstrapExpect": 3, "clusterId": "c1"}));
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_running_members(&mut h, 3, &old_hash).await;
        expect_objects(&mut h, 3).await;
        expect(
            &mut h,
            "DELETE",
            "/api/v1/namespaces/default/pods/demo-2",
            |_| (200, ready_pod(2, "x")),
        )
        .await;
        expect_status(&mut h, &original).await
    });
    reconcile(Arc::new(nc), context(client, nod.clone()))
        .await
        .unwrap();
    let status = server.await.unwrap()["status"].clone();
    assert_eq!(status["phase"], "Upgrading");
    assert_eq!(*nod.calls.lock().unwrap(), ["health"]);
}

/// The StatefulSet as created with a 10Gi claim template on class `fast`.
fn sts_with_claims(replicas: i32) -> Value {
    let mut sts = sts_with(replicas);
    sts["spec"]["volumeClaimTemplates"] = json!([{
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                 "resources": {"requests": {"storage": "10Gi"}}},
    }]);
    sts
}

fn sized_claim(i: i32, size: &str) -> Value {
    let mut c = claim(i);
    c["spec"] = json!({"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                       "resources": {"requests": {"storage": size}}});
    c
}

/// A storage size change against a class that does (`expandable`) or does
/// not allow expansion; returns the status written and the claims patched.
async fn resize(expandable: bool) -> (Value, Vec<Value>) {
    resize_claims_in(
        expandable,
        (0..3).map(|i| sized_claim(i, "10Gi")).collect(),
        &[0],
    )
    .await
}

/// As `resize`, with the claims as given, expecting patches of `patch`.
async fn resize_claims_in(
    expandable: bool,
    claims: Vec<Value>,
    patch: &[i32],
) -> (Value, Vec<Value>) {
    let patch = patch.to_vec();
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let nod = FakeNod {
        members: Some(members(3)),
        ..Default::default()
    };
    let mut nc =
        cluster(json!({"replicas": 3, "storage": {"size": "20Gi", "storageClassName": "fast"}}));
    cluster_status(&mut nc, json!({"bootstrapExpect": 3, "clusterId": "c1"}));
    let hash = nod_operator::render::template_hash(&nc);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_observation(
            &mut h,
            sts_with_claims(3),
            (0..3).map(|i| ready_pod(i, &hash)).collect(),
            claims,
        )
        .await;
        let sts = expect_objects(&mut h, 3).await;
        // The claim template is immutable: the StatefulSet keeps the one it
        // was created with.
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "10Gi"
        );
        expect(
            &mut h,
            "GET",
            "/apis/storage.k8s.io/v1/storageclasses/fast",
            |_| {
                (
                    200,
                    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                           "metadata": {"name": "fast"}, "provisioner": "x",
                           "allowVolumeExpansion": expandable}),
                )
            },
        )
        .await;
        let mut patched = Vec::new();
        if expandable {
            for i in patch {
                patched.push(
                    expect_merge_patch(
                        &mut h,
                        &format!("/api/v1/namespaces/default/persistentvolumeclaims/data-demo-{i}"),
                        sized_claim(i, "20Gi"),
                    )
                    .await,
                );
            }
        }
        (expect_status(&mut h, &original).await, patched)
    });
    reconcile(Arc::new(nc), context(client, nod))
        .await
        .expect("a size the class cannot expand is not an error");
    let (written, patched) = server.await.unwrap();
    (written["status"].clone(), patched)
}

#[tokio::test]
async fn a_storage_size_change_expands_the_claims_when_the_class_allows() {
    // One member's volume per reconcile, the lowest first.
    let (status, patched) = resize(true).await;
    assert_eq!(patched.len(), 1);
    assert_eq!(
        patched[0],
        json!({"spec": {"resources": {"requests": {"storage": "20Gi"}}}})
    );
    assert_eq!(condition(&status, "SpecApplied")["status"], "True");
    // demo-0 still expanding (asked 20Gi, has 10Gi): nothing else asked.
    let mut growing = sized_claim(0, "20Gi");
    growing["status"] = json!({"capacity": {"storage": "10Gi"}});
    let claims = vec![growing, sized_claim(1, "10Gi"), sized_claim(2, "10Gi")];
    let (_, patched) = resize_claims_in(true, claims, &[]).await;
    assert!(patched.is_empty(), "{patched:?}");
    // demo-0 done: demo-1 next.
    let mut grown = sized_claim(0, "20Gi");
    grown["status"] = json!({"capacity": {"storage": "20Gi"}});
    let claims = vec![grown, sized_claim(1, "10Gi"), sized_claim(2, "10Gi")];
    let (_, patched) = resize_claims_in(true, claims, &[1]).await;
    assert_eq!(patched.len(), 1);
}

#[tokio::test]
async fn a_storage_size_change_the_class_cannot_expand_is_a_condition_and_the_cluster_runs_on() {
    let (status, patched) = resize(false).await;
    assert!(patched.is_empty());
    let c = condition(&status, "SpecApplied");
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "StorageNotExpandable");
    assert!(c["message"].as_str().unwrap().contains("fast"), "{c}");
    assert_eq!(status["phase"], "Running");
    assert_eq!(condition(&status, "Available")["status"], "True");
}

#[tokio::test]
async fn a_service_monitor_without_its_crd_is_a_condition_not_a_failure() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let nod = FakeNod {
        members: Some(members(3)),
        ..Default::default()
    };
    let mut nc = cluster(json!({"replicas": 3, "metrics": {"serviceMonitor": true,
        "serviceMonitorLabels": {"release": "prometheus"}}}));
    cluster_status(&mut nc, json!({"bootstrapExpect": 3, "clusterId": "c1"}));
    let hash = nod_operator::render::template_hash(&nc);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_running_members(&mut h, 3, &hash).await;
        expect_objects(&mut h, 3).await;
        let sm = expect(
            &mut h,
            "PATCH",
            "/apis/monitoring.coreos.com/v1/namespaces/default/servicemonitors/demo",
            |_| (404, not_found()),
        )
        .await;
        assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
        expect_status(&mut h, &original).await
    });
    reconcile(Arc::new(nc), context(client, nod.clone()))
        .await
        .unwrap();
    let status = server.await.unwrap()["status"].clone();
    let c = condition(&status, "SpecApplied");
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "ServiceMonitorCRDMissing");
    assert_eq!(status["phase"], "Running");
    assert_eq!(condition(&status, "Degraded")["status"], "False");
}

#[tokio::test]
async fn an_object_kubernetes_refuses_still_gets_status_written() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let nod = FakeNod {
        members: Some(members(3)),
        ..Default::default()
    };
    let mut nc = cluster(json!({"replicas": 3}));
    cluster_status(&mut nc, json!({"bootstrapExpect": 3, "clusterId": "c1"}));
    let hash = nod_operator::render::template_hash(&nc);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_running_members(&mut h, 3, &hash).await;
        expect_gossip_key(&mut h).await;
        expect(
            &mut h,
            "PATCH",
            "/api/v1/namespaces/default/serviceaccounts/demo",
            echo,
        )
        .await;
        expect(
            &mut h,
            "PATCH",
            "/api/v1/namespaces/default/services/demo-peers",
            echo,
        )
        .await;
        expect(
            &mut h,
            "PATCH",
            "/api/v1/namespaces/default/services/demo",
            echo,
        )
        .await;
        expect(
            &mut h,
            "PATCH",
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo",
            echo,
        )
        .await;
        expect(
            &mut h,
            "PATCH",
            "/apis/apps/v1/namespaces/default/statefulsets/demo",
            |_| {
                (
                    422,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": "StatefulSet.apps \"demo\" is invalid: spec: Forbidden",
                           "reason": "Invalid", "code": 422}),
                )
            },
        )
        .await;
        // The objects after the refused one are still applied.
        expect(
            &mut h,
            "PATCH",
            "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/demo",
            echo,
        )
        .await;
        expect_status(&mut h, &original).await
    });
    let err = reconcile(Arc::new(nc), context(client, nod.clone()))
        .await
        .expect_err("the refusal is retried");
    assert!(err.to_string().contains("StatefulSet"), "{err}");
    let status = server.await.unwrap()["status"].clone();
    assert!(
        status["lastError"]
            .as_str()
            .unwrap()
            .contains("StatefulSet"),
        "{status}"
    );
    assert_eq!(condition(&status, "Degraded")["reason"], "ReconcileError");
    // The cluster was still observed.
    assert_eq!(status["leader"], "demo-0");
    assert_eq!(*nod.calls.lock().unwrap(), ["health"]);
}

#[tokio::test]
async fn a_founded_cluster_without_a_leader_has_lost_its_quorum() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let nod = FakeNod::default();
    let mut nc = cluster(json!({"replicas": 3}));
    cluster_status(&mut nc, json!({"bootstrapExpect": 3, "clusterId": "c1"}));
    let hash = nod_operator::render::template_hash(&nc);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_running_members(&mut h, 3, &hash).await;
        expect_objects(&mut h, 3).await;
        expect_status(&mut h, &original).await
    });
    reconcile(Arc::new(nc), context(client, nod.clone()))
        .await
        .unwrap();
    let status = server.await.unwrap()["status"].clone();
    assert_eq!(status["phase"], "QuorumLost");
    let available = condition(&status, "Available");
    assert_eq!(
        (available["status"].as_str(), available["reason"].as_str()),
        (Some("False"), Some("NoQuorum"))
    );
    assert_eq!(condition(&status, "Degraded")["reason"], "QuorumLost");
    assert_eq!(status["clusterId"], "c1", "still founded");
}

#[tokio::test]
async fn a_learner_nameless_for_too_long_is_removed() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let mut m = members(3);
    m.push(MemberView {
        id: 0x3e7,
        name: String::new(),
        learner: true,
        leader: false,
        healthy: false,
        lag: 0,
        matched: 0,
    });
    let nod = FakeNod {
        members: Some(m),
        ..Default::default()
    };
    let mut nc = cluster(json!({"replicas": 3}));
    let long_ago = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(600))
        .unwrap();
    cluster_status(
        &mut nc,
        json!({"bootstrapExpect": 3, "clusterId": "c1",
               "namelessLearners": [{"id": "3e7", "firstSeen": long_ago.to_string()}]}),
    );
    let hash = nod_operator::render::template_hash(&nc);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_running_members(&mut h, 3, &hash).await;
        expect_objects(&mut h, 3).await;
        expect_status(&mut h, &original).await
    });
    reconcile(Arc::new(nc), context(client, nod.clone()))
        .await
        .unwrap();
    let status = server.await.unwrap()["status"].clone();
    assert_eq!(*nod.calls.lock().unwrap(), ["health", "remove 999"]);
    assert!(status.get("namelessLearners").is_none(), "{status}");
}

#[tokio::test]
async fn an_old_operators_finalizer_is_removed_and_deletion_never_waits() {
    // Being deleted, with the finalizer an earlier operator added: the only
    // request is the patch that drops it; nothing is applied.
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let mut nc = cluster(json!({}));
    nc.metadata.finalizers = Some(vec!["nod.io/finalizer".into(), "other/keep".into()]);
    nc.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let reply = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        let patch = expect_merge_patch(
            &mut h,
            "/apis/nod.io/v1alpha1/namespaces/default/nodclusters/demo",
            reply,
        )
        .await;
        (patch, h)
    });
    reconcile(
        Arc::new(nc.clone()),
        context(client.clone(), FakeNod::default()),
    )
    .await
    .unwrap();
    let (patch, mut h) = server.await.unwrap();
    assert_eq!(
        patch,
        json!({"metadata": {"resourceVersion": "5", "finalizers": ["other/keep"]}})
    );
    // Without our finalizer, a deleted cluster asks nothing of anyone.
    nc.metadata.finalizers = Some(vec!["other/keep".into()]);
    let done = tokio::spawn(async move { h.next_request().await.is_none() });
    let ctx = context(client, FakeNod::default());
    reconcile(Arc::new(nc), ctx.clone()).await.unwrap();
    drop(ctx);
    assert!(
        done.await.unwrap(),
        "no request for a cluster being deleted"
    );
}

/// A Secret read that finds nothing, then its creation (POST) or its
/// server-side apply (PATCH); returns what was written.
async fn expect_secret_made(h: &mut Handle, name: &str, method: &str) -> Value {
    let path = format!("/api/v1/namespaces/default/secrets/{name}");
    expect(h, "GET", &path, |_| (404, not_found())).await;
    let written = match method {
        "POST" => {
            expect(h, "POST", "/api/v1/namespaces/default/secrets", |b| {
                (201, b)
            })
            .await
        }
        _ => expect(h, "PATCH", &path, echo).await,
    };
    assert_eq!(written["metadata"]["name"], name);
    assert_eq!(
        written["metadata"]["ownerReferences"][0]["kind"], "NodCluster",
        "{name} goes with its cluster"
    );
    written
}

/// A Secret's data, decoded.
fn secret_data(s: &Value) -> std::collections::BTreeMap<String, String> {
    use base64::Engine as _;
    s["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            (k.clone(), String::from_utf8(bytes).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn tls_auto_makes_a_ca_and_certificates_and_auth_is_turned_on_as_root() {
    use nod_client::pki::inspect;
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let nod = FakeNod {
        members: Some(members(3)),
        ..Default::default()
    };
    let mut nc = cluster(json!({"replicas": 3,
        "tls": {"mode": "auto", "clientUsers": ["app"]},
        "auth": {"rootPasswordSecret": {"name": "demo-root"}}}));
    cluster_status(
        &mut nc,
        json!({"bootstrapExpect": 3, "clusterId": "c1", "tls": {"mode": "auto"}}),
    );
    let hash = nod_operator::render::template_hash(&nc);
    let original = serde_json::to_value(&nc).unwrap();
    let ctx = context(client, nod.clone());
    let state_dir = ctx.state_dir.clone();
    let server = tokio::spawn(async move {
        expect_running_members(&mut h, 3, &hash).await;
        let gossip = expect_secret_made(&mut h, "demo-gossip", "POST").await;
        let ca = expect_secret_made(&mut h, "demo-ca", "POST").await;
        let operator = expect_secret_made(&mut h, "demo-operator-tls", "PATCH").await;
        let app = expect_secret_made(&mut h, "demo-client-app", "PATCH").await;
        let member = expect_secret_made(&mut h, "demo-member-tls", "PATCH").await;
        let sts = expect_applied(&mut h, 3).await;
        let password = expect(
            &mut h,
            "GET",
            "/api/v1/namespaces/default/secrets/demo-root",
            |_| {
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "demo-root", "namespace": "default"},
                    "data": {"password": "czNjcmV0Cg=="}}),
                )
            },
        );
        password.await;
        let status = expect_status(&mut h, &original).await["status"].clone();
        (gossip, ca, operator, app, member, sts, status)
    });
    reconcile(Arc::new(nc), ctx).await.unwrap();
    let (gossip, ca, operator, app, member, sts, status) = server.await.unwrap();

    // The gossip key: base64 of 32 random bytes, as --gossip-key-file reads it.
    use base64::Engine as _;
    let key = secret_data(&gossip)["key"].clone();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key.trim_end())
        .unwrap();
    assert_eq!(raw.len(), 32);

    // One CA; every certificate comes from it.
    let ca = secret_data(&ca);
    assert!(ca["ca.key"].contains("PRIVATE KEY"));
    let operator = secret_data(&operator);
    assert_eq!(operator["ca.crt"], ca["ca.crt"]);
    assert_eq!(
        inspect(&operator["tls.crt"])
            .unwrap()
            .common_name
            .as_deref(),
        Some("root"),
        "the operator acts as root by its certificate"
    );
    let app = secret_data(&app);
    assert_eq!(
        inspect(&app["tls.crt"]).unwrap().common_name.as_deref(),
        Some("app")
    );
    let member = secret_data(&member);
    let mut keys: Vec<&str> = member.keys().map(String::as_str).collect();
    keys.sort();
    let mut want = vec!["ca.crt".to_string()];
    for i in 0..3 {
        for f in ["server.crt", "server.key", "peer.crt", "peer.key"] {
            want.push(format!("demo-{i}-{f}"));
        }
    }
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(
        inspect(&member["demo-2-peer.crt"])
            .unwrap()
            .common_name
            .as_deref(),
        Some("demo-2")
    );

    // The members serve TLS with their own files, and check each other.
    let a = args(&sts);
    for flag in [
        "--listen-client-urls=https://[::]:2379",
        "--initial-advertise-peer-urls=https://$(POD_NAME).demo-peers.default.svc:2380",
        "--cert-file=/etc/nod/tls/$(POD_NAME)-server.crt",
        "--peer-key-file=/etc/nod/tls/$(POD_NAME)-peer.key",
        "--trusted-ca-file=/etc/nod/tls/ca.crt",
        "--client-cert-auth",
        "--peer-client-cert-auth",
        "--gossip-key-file=/etc/nod/gossip/key",
    ] {
        assert!(a.contains(&flag.to_string()), "{flag} missing from {a:?}");
    }
    let volumes = &sts["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "demo-member-tls"),
        "{volumes}"
    );

    // The operator's files for its client: key readable by it only.
    use std::os::unix::fs::PermissionsExt;
    let key_file = state_dir.join("default/demo/tls.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    assert_eq!(status["tls"]["mode"], "auto");
    assert!(status["tls"]["notAfter"].is_string(), "{status}");
    assert_eq!(status["authEnabled"], true);
    assert_eq!(condition(&status, "SpecApplied")["status"], "True");
    assert_eq!(
        *nod.calls.lock().unwrap(),
        ["health", "auth-status", "enable-auth s3cret tls=true"]
    );
}

#[tokio::test]
async fn cert_manager_without_its_crd_is_a_condition() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let nod = FakeNod {
        members: Some(members(3)),
        ..Default::default()
    };
    let mut nc = cluster(json!({"replicas": 3,
        "tls": {"mode": "certManager", "certManager": {"issuerRef": {"name": "ca"}}}}));
    cluster_status(
        &mut nc,
        json!({"bootstrapExpect": 3, "clusterId": "c1", "tls": {"mode": "certManager"}}),
    );
    let hash = nod_operator::render::template_hash(&nc);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_running_members(&mut h, 3, &hash).await;
        expect_gossip_key(&mut h).await;
        let cert = expect(
            &mut h,
            "PATCH",
            "/apis/cert-manager.io/v1/namespaces/default/certificates/demo-server",
            |_| (404, not_found()),
        )
        .await;
        assert_eq!(cert["spec"]["issuerRef"]["name"], "ca");
        assert_eq!(cert["spec"]["secretName"], "demo-server-tls");
        expect(
            &mut h,
            "GET",
            "/api/v1/namespaces/default/secrets/demo-operator-tls",
            |_| (404, not_found()),
        )
        .await;
        let sts = expect_applied(&mut h, 3).await;
        let status = expect_status(&mut h, &original).await["status"].clone();
        (sts, status)
    });
    reconcile(Arc::new(nc), context(client, nod.clone()))
        .await
        .unwrap();
    let (sts, status) = server.await.unwrap();
    let c = condition(&status, "SpecApplied");
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "CertManagerMissing", "{c}");
    assert!(args(&sts).contains(&"--cert-file=/etc/nod/tls/server/tls.crt".to_string()));
}

#[tokio::test]
async fn tls_cannot_be_turned_on_under_a_running_cluster() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let mut nc = cluster(json!({"replicas": 3, "tls": {"mode": "auto"}}));
    cluster_status(&mut nc, json!({"bootstrapExpect": 3, "clusterId": "c1"}));
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move { expect_status(&mut h, &original).await });
    reconcile(Arc::new(nc), context(client, FakeNod::default()))
        .await
        .unwrap();
    let status = server.await.unwrap()["status"].clone();
    assert_eq!(status["phase"], "Failed");
    assert!(
        status["lastError"]
            .as_str()
            .unwrap()
            .contains("created with no TLS"),
        "{status}"
    );
}

/// The backup agent's objects, applied after the cluster's when
/// `spec.backup` is set.
const AGENT_OBJECTS: [&str; 3] = [
    "/apis/apps/v1/namespaces/default/deployments/demo-backup",
    "/api/v1/namespaces/default/services/demo-backup",
    "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/demo-backup",
];

/// The agent's objects applied; returns its Deployment and NetworkPolicy.
async fn expect_agent_applied(h: &mut Handle) -> (Value, Value) {
    let agent = expect(h, "PATCH", AGENT_OBJECTS[0], echo).await;
    expect(h, "PATCH", AGENT_OBJECTS[1], echo).await;
    let np = expect(h, "PATCH", AGENT_OBJECTS[2], echo).await;
    (agent, np)
}

/// `spec.backup`: the agent's Deployment, Service and NetworkPolicy are
/// applied after the cluster's objects, its status becomes `status.backup`
/// and the `BackupSucceeded` / `BackupStale` conditions; a later failure
/// turns `BackupSucceeded` false; removing `spec.backup` deletes the agent.
#[tokio::test]
async fn backups_run_an_agent_whose_status_becomes_the_clusters() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    // A minute ago, in whole seconds (status times have no fraction).
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let full_at = (now - 60) * 1000;
    let next_full = full_at + 6 * 3_600_000;
    let mut nod = FakeNod {
        members: Some(members(1)),
        agent: Some(AgentStatus {
            destination: "s3://backups/prod".into(),
            schedule: "0 */6 * * *".into(),
            incremental: true,
            last_full: Some(FullBackup {
                chain: "c1/chain-77".into(),
                revision: 77,
                size_bytes: 4096,
                stored_bytes: 512,
                time_unix_ms: full_at,
            }),
            reached_revision: 90,
            reached_unix_ms: full_at + 60_000,
            next_full_unix_ms: Some(next_full),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut nc = cluster(json!({
        "replicas": 1,
        "backup": {
            "schedule": "0 */6 * * *",
            "staleAfterHours": 1,
            "destination": {"s3": {"bucket": "backups", "prefix": "prod",
                                    "endpoint": "http://10.0.0.9:9000",
                                    "credentialsSecret": {"name": "s3-keys"}}},
            "retention": {"count": 3},
        },
    }));
    cluster_status(&mut nc, json!({"bootstrapExpect": 1, "clusterId": "c1"}));
    let hash = nod_operator::render::template_hash(&nc);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn({
        let hash = hash.clone();
        async move {
            expect_running_members(&mut h, 1, &hash).await;
            expect_objects(&mut h, 1).await;
            let (agent, np) = expect_agent_applied(&mut h).await;
            (agent, np, expect_status(&mut h, &original).await, h)
        }
    });
    reconcile(Arc::new(nc.clone()), context(client.clone(), nod.clone()))
        .await
        .unwrap();
    let (agent, np, written, mut h) = server.await.unwrap();
    assert!(nod
        .calls
        .lock()
        .unwrap()
        .contains(&"backup-status http://agent-of-demo".to_string()));
    let pod = &agent["spec"]["template"]["spec"];
    let args = pod["containers"][0]["args"].as_array().unwrap();
    for want in [
        "--dest=s3://backups/prod",
        "--schedule=0 */6 * * *",
        "--keep=3",
        "--incremental",
        "--endpoints=http://demo.default.svc:2379",
    ] {
        assert!(args.contains(&json!(want)), "{want} not in {args:?}");
    }
    assert_eq!(agent["spec"]["replicas"], 1);
    assert_eq!(agent["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let env = pod["containers"][0]["env"].to_string();
    assert!(
        env.contains("s3-keys") && env.contains("AWS_ALLOW_HTTP"),
        "{env}"
    );
    assert_eq!(
        np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
            ["kubernetes.io/metadata.name"],
        "nod-system"
    );
    let status = written["status"].clone();
    let backup = &status["backup"];
    assert_eq!(backup["lastSuccessful"]["chain"], "c1/chain-77");
    assert_eq!(backup["lastSuccessful"]["revision"], 77);
    assert_eq!(backup["lastSuccessful"]["sizeBytes"], 4096);
    assert_eq!(backup["reachedRevision"], 90);
    let next: k8s_openapi::jiff::Timestamp =
        backup["nextScheduled"].as_str().unwrap().parse().unwrap();
    assert_eq!(next.as_millisecond(), next_full);
    assert_eq!(condition(&status, "BackupSucceeded")["status"], "True");
    assert_eq!(condition(&status, "BackupStale")["status"], "False");

    // The agent reports a failure after the full: BackupSucceeded false.
    if let Some(a) = nod.agent.as_mut() {
        a.last_failure = Some(AgentFailure {
            time_unix_ms: full_at + 120_000,
            message: "full backup: access denied".into(),
        });
    }
    cluster_status(&mut nc, status);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn({
        let hash = hash.clone();
        async move {
            expect_running_members(&mut h, 1, &hash).await;
            expect_objects(&mut h, 1).await;
            expect_agent_applied(&mut h).await;
            (expect_status(&mut h, &original).await, h)
        }
    });
    let ctx = context(client.clone(), nod.clone());
    reconcile(Arc::new(nc.clone()), ctx.clone()).await.unwrap();
    let (written, mut h) = server.await.unwrap();
    let status = written["status"].clone();
    // Failing but not stale (a full a minute ago, staleAfterHours 1): the
    // alert's series says 0, and the time of that full is kept.
    let metrics = ctx.metrics.render();
    let series = r#"{cluster="demo",cluster_namespace="default"}"#;
    assert!(
        metrics.contains(&format!("nod_operator_backup_stale{series} 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "nod_operator_backup_last_success_timestamp_seconds{series} {}",
            full_at / 1000
        )),
        "{metrics}"
    );
    assert!(status["backup"]["enabledSince"].is_string(), "{status}");
    let failed = condition(&status, "BackupSucceeded");
    assert_eq!(failed["status"], "False");
    assert_eq!(failed["reason"], "BackupFailed");
    assert_eq!(failed["message"], "full backup: access denied");
    assert_eq!(
        status["backup"]["lastFailure"]["message"],
        "full backup: access denied"
    );

    // spec.backup removed: the agent's objects are deleted, status forgets.
    nc.spec.backup = None;
    cluster_status(&mut nc, status);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_running_members(&mut h, 1, &hash).await;
        expect_objects(&mut h, 1).await;
        for path in AGENT_OBJECTS {
            expect(&mut h, "DELETE", path, |_| (200, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}))).await;
        }
        expect_status(&mut h, &original).await
    });
    reconcile(Arc::new(nc), ctx.clone()).await.unwrap();
    let status = server.await.unwrap()["status"].clone();
    assert!(status.get("backup").is_none(), "{status}");
    // No backups, no alert series.
    let metrics = ctx.metrics.render();
    assert!(!metrics.contains("nod_operator_backup_"), "{metrics}");
    assert!(status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["type"] != "BackupSucceeded"));
}

/// `replicas: 0` with backups: a backup is asked for and waited on, then
/// every member stops at once (none leaves Raft), the budget drops to 0,
/// the agent stops, and status says Hibernated, not QuorumLost.
#[tokio::test]
async fn replicas_zero_backs_up_then_hibernates_without_touching_raft() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let mut nod = FakeNod {
        members: Some(members(3)),
        agent: Some(AgentStatus {
            completed_request: 0,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut nc = cluster(json!({
        "replicas": 0,
        "backup": {"schedule": "@daily", "destination": {"claim": {"name": "b"}}},
    }));
    cluster_status(&mut nc, json!({"bootstrapExpect": 3, "clusterId": "c1"}));
    let hash = nod_operator::render::template_hash(&nc);
    // 1: the backup is asked for; nothing stops yet.
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn({
        let hash = hash.clone();
        async move {
            expect_running_members(&mut h, 3, &hash).await;
            expect_objects(&mut h, 3).await;
            let (agent, _) = expect_agent_applied(&mut h).await;
            assert_eq!(
                agent["spec"]["replicas"], 1,
                "the agent runs to take the backup"
            );
            (expect_status(&mut h, &original).await, h)
        }
    });
    reconcile(Arc::new(nc.clone()), context(client.clone(), nod.clone()))
        .await
        .unwrap();
    let (written, mut h) = server.await.unwrap();
    let status = written["status"].clone();
    assert_eq!(status["hibernationBackup"]["request"], 7, "{status}");
    assert_eq!(status["phase"], "Hibernating");
    assert!(nod
        .calls
        .lock()
        .unwrap()
        .contains(&"request-backup http://agent-of-demo".to_string()));

    // 2: the agent finished request 7: every pod stops at once.
    nod.agent = Some(AgentStatus {
        completed_request: 7,
        ..Default::default()
    });
    cluster_status(&mut nc, status);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn({
        let hash = hash.clone();
        async move {
            expect_running_members(&mut h, 3, &hash).await;
            expect_objects(&mut h, 3).await;
            expect_agent_applied(&mut h).await;
            let sts = expect(
                &mut h,
                "PATCH",
                "/apis/apps/v1/namespaces/default/statefulsets/demo",
                echo,
            )
            .await;
            assert_eq!(sts["spec"]["replicas"], 0);
            let pdb = expect(
                &mut h,
                "PATCH",
                "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo",
                echo,
            )
            .await;
            assert_eq!(pdb["spec"]["minAvailable"], 0);
            (expect_status(&mut h, &original).await, h)
        }
    });
    reconcile(Arc::new(nc.clone()), context(client.clone(), nod.clone()))
        .await
        .unwrap();
    let (written, mut h) = server.await.unwrap();
    let status = written["status"].clone();
    assert_eq!(status["hibernatedReplicas"], 3, "{status}");
    let calls = nod.calls.lock().unwrap().clone();
    assert!(
        !calls.iter().any(|c| c.starts_with("remove")),
        "no member leaves Raft: {calls:?}"
    );

    // 3: hibernated: no pods, no member asked, the agent scaled to 0.
    nod.calls.lock().unwrap().clear();
    cluster_status(&mut nc, status);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_observation(&mut h, sts_with(0), vec![], (0..3).map(claim).collect()).await;
        expect_gossip_key(&mut h).await;
        for p in [
            "/api/v1/namespaces/default/serviceaccounts/demo",
            "/api/v1/namespaces/default/services/demo-peers",
            "/api/v1/namespaces/default/services/demo",
        ] {
            expect(&mut h, "PATCH", p, echo).await;
        }
        let pdb = expect(
            &mut h,
            "PATCH",
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo",
            echo,
        )
        .await;
        assert_eq!(pdb["spec"]["minAvailable"], 0);
        let sts = expect(
            &mut h,
            "PATCH",
            "/apis/apps/v1/namespaces/default/statefulsets/demo",
            echo,
        )
        .await;
        assert_eq!(sts["spec"]["replicas"], 0);
        expect(
            &mut h,
            "PATCH",
            "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/demo",
            echo,
        )
        .await;
        let (agent, _) = expect_agent_applied(&mut h).await;
        assert_eq!(agent["spec"]["replicas"], 0, "nothing to back up");
        expect_status(&mut h, &original).await
    });
    reconcile(Arc::new(nc), context(client, nod.clone()))
        .await
        .unwrap();
    let status = server.await.unwrap()["status"].clone();
    assert_eq!(status["phase"], "Hibernated", "{status}");
    assert_eq!(status["hibernatedReplicas"], 3);
    assert_eq!(
        condition(&status, "Degraded")["status"],
        "False",
        "{status}"
    );
    let calls = nod.calls.lock().unwrap().clone();
    assert!(!calls.contains(&"health".to_string()), "{calls:?}");
}

/// `kubectl annotate nodcluster/demo nod.io/backup-now=one`: the agent is
/// asked once for a full, and status shows the full that answered.
#[tokio::test]
async fn a_backup_now_annotation_asks_once_and_reports_the_backup() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let full = |chain: &str, at: i64| FullBackup {
        chain: chain.into(),
        revision: 10,
        size_bytes: 100,
        stored_bytes: 10,
        time_unix_ms: at,
    };
    let now = k8s_openapi::jiff::Timestamp::now().as_second() * 1000;
    let mut nod = FakeNod {
        members: Some(members(1)),
        agent: Some(AgentStatus {
            last_full: Some(full("c1/chain-scheduled", now - 60_000)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut nc = cluster(json!({
        "replicas": 1,
        "backup": {"schedule": "@daily", "destination": {"claim": {"name": "b"}}},
    }));
    nc.metadata.annotations = Some([("nod.io/backup-now".to_string(), "one".to_string())].into());
    cluster_status(&mut nc, json!({"bootstrapExpect": 1, "clusterId": "c1"}));
    let hash = nod_operator::render::template_hash(&nc);
    for round in 0..3 {
        let original = serde_json::to_value(&nc).unwrap();
        let server = tokio::spawn({
            let hash = hash.clone();
            async move {
                expect_running_members(&mut h, 1, &hash).await;
                expect_objects(&mut h, 1).await;
                expect_agent_applied(&mut h).await;
                (expect_status(&mut h, &original).await, h)
            }
        });
        reconcile(Arc::new(nc.clone()), context(client.clone(), nod.clone()))
            .await
            .unwrap();
        let (written, back) = server.await.unwrap();
        h = back;
        let status = written["status"].clone();
        let asked = nod
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("request-backup"))
            .count();
        assert_eq!(asked, 1, "asked once, in round {round}");
        let od = &status["backup"]["onDemand"];
        assert_eq!(od["forValue"], "one");
        assert_eq!(od["request"], 7);
        match round {
            0 => {
                assert!(od.get("taken").is_none(), "{od}");
                // The agent writes the full that answers request 7.
                nod.agent = Some(AgentStatus {
                    last_full: Some(full("c1/chain-asked", now)),
                    completed_request: 7,
                    ..Default::default()
                });
            }
            _ => assert_eq!(od["taken"]["chain"], "c1/chain-asked", "{od}"),
        }
        cluster_status(&mut nc, status);
    }
}

/// `nod.io/recover-quorum: c1` on a cluster that lost its quorum: the
/// member with the highest Raft index is chosen, restarted with the force
/// flag (rendered for every pod, acted on by it alone), and once it leads
/// alone the others are wiped and rejoin one at a time.
#[tokio::test]
async fn recover_quorum_forces_the_most_advanced_member_then_rejoins_the_rest() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let mut nod = FakeNod {
        members: None,
        indexes: vec![
            ("http://demo-0:2379".into(), 40),
            ("http://demo-1:2379".into(), 42),
        ],
        ..Default::default()
    };
    let mut nc = cluster(json!({"replicas": 3}));
    nc.metadata.annotations =
        Some([("nod.io/recover-quorum".to_string(), "c1".to_string())].into());
    cluster_status(&mut nc, json!({"bootstrapExpect": 3, "clusterId": "c1"}));
    let hash = nod_operator::render::template_hash(&nc);
    let force_args = |sts: &Value| {
        args(sts)
            .into_iter()
            .filter(|a| a.starts_with("--force-new-cluster"))
            .collect::<Vec<_>>()
    };

    // 1: survey; demo-1 holds the most of the log; nothing restarts yet.
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn({
        let hash = hash.clone();
        async move {
            expect_running_members(&mut h, 3, &hash).await;
            let sts = expect_objects(&mut h, 3).await;
            (sts, expect_status(&mut h, &original).await, h)
        }
    });
    reconcile(Arc::new(nc.clone()), context(client.clone(), nod.clone()))
        .await
        .unwrap();
    let (sts, written, mut h) = server.await.unwrap();
    assert!(force_args(&sts).is_empty());
    let status = written["status"].clone();
    let rec = status["recovery"].clone();
    assert_eq!(rec["survivor"], "demo-1", "{status}");
    assert_eq!(rec["raftIndex"], 42);
    assert_eq!(rec["stage"], "Forcing");
    assert_eq!(status["phase"], "Recovering");
    let id = rec["id"].as_str().unwrap().to_string();

    // 2: the template carries the flag; the survivor's pod restarts.
    cluster_status(&mut nc, status);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn({
        let hash = hash.clone();
        async move {
            expect_running_members(&mut h, 3, &hash).await;
            let sts = expect_objects(&mut h, 3).await;
            expect(
                &mut h,
                "DELETE",
                "/api/v1/namespaces/default/pods/demo-1",
                |_| (200, ready_pod(1, "x")),
            )
            .await;
            (sts, expect_status(&mut h, &original).await, h)
        }
    });
    reconcile(Arc::new(nc.clone()), context(client.clone(), nod.clone()))
        .await
        .unwrap();
    let (sts, written, mut h) = server.await.unwrap();
    assert_eq!(
        force_args(&sts),
        [format!("--force-new-cluster-once=demo-1:{id}")]
    );
    assert_eq!(
        nod_operator::render::template_hash(&nc),
        hash,
        "no roll for the flag"
    );
    let status = written["status"].clone();
    assert_eq!(status["recovery"]["restarted"], true);

    // 3: demo-1 leads alone: the flag goes, the others rejoin.
    nod.members = Some(vec![MemberView {
        id: 101,
        name: "demo-1".into(),
        learner: false,
        leader: true,
        healthy: true,
        lag: 0,
        matched: 42,
    }]);
    cluster_status(&mut nc, status);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn({
        let hash = hash.clone();
        async move {
            expect_running_members(&mut h, 3, &hash).await;
            expect_objects(&mut h, 3).await;
            (expect_status(&mut h, &original).await, h)
        }
    });
    reconcile(Arc::new(nc.clone()), context(client.clone(), nod.clone()))
        .await
        .unwrap();
    let (written, mut h) = server.await.unwrap();
    let status = written["status"].clone();
    assert_eq!(status["recovery"]["stage"], "Rejoining", "{status}");

    // 4: demo-0 first: marked removed, and the planner wipes and restarts it.
    cluster_status(&mut nc, status);
    let original = serde_json::to_value(&nc).unwrap();
    let server = tokio::spawn(async move {
        expect_running_members(&mut h, 3, &hash).await;
        let sts = expect_objects(&mut h, 3).await;
        assert!(force_args(&sts).is_empty(), "{:?}", force_args(&sts));
        expect(
            &mut h,
            "DELETE",
            "/api/v1/namespaces/default/persistentvolumeclaims/data-demo-0",
            |_| (200, claim(0)),
        )
        .await;
        expect(
            &mut h,
            "DELETE",
            "/api/v1/namespaces/default/pods/demo-0",
            |_| (200, ready_pod(0, "x")),
        )
        .await;
        expect_status(&mut h, &original).await
    });
    reconcile(Arc::new(nc), context(client, nod.clone()))
        .await
        .unwrap();
    let status = server.await.unwrap()["status"].clone();
    assert_eq!(status["recovery"]["stage"], "Rejoining");
    assert!(
        status.get("removedMembers").is_none(),
        "replaced, so no longer pending: {status}"
    );
    let calls = nod.calls.lock().unwrap().clone();
    assert!(
        calls.contains(&"member-status http://demo-1:2379".to_string()),
        "{calls:?}"
    );
}
