//! Leader election on a Lease, against a mock API server: two operator
//! replicas must never both believe they lead.

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use nod_operator::lease::LeaseLock;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/nod-system/leases/nod-operator";
const LIST: &str = "/apis/coordination.k8s.io/v1/namespaces/nod-system/leases";

fn respond(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

fn lease(holder: &str, renewed_secs_ago: i64) -> Value {
    let renew = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(
            renewed_secs_ago,
        ))
        .unwrap();
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "nod-operator", "namespace": "nod-system", "resourceVersion": "7"},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                    "renewTime": renew.to_string(),
                    "leaseTransitions": 2}})
}

async fn next(h: &mut Handle, method: &str, path: &str, code: u16, reply: Value) -> Value {
    let (req, send) = h.next_request().await.expect("a request");
    assert_eq!((req.method().as_str(), req.uri().path()), (method, path));
    let bytes = req.into_body().collect_bytes().await.unwrap();
    send.send_response(respond(code, &reply));
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    }
}

fn lock() -> (LeaseLock, Handle) {
    let (svc, h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    (
        LeaseLock::new(
            client,
            "nod-system",
            "nod-operator",
            "me",
            Duration::from_secs(15),
        ),
        h,
    )
}

#[tokio::test]
async fn no_lease_yet_creates_it() {
    let (lock, mut h) = lock();
    let server = tokio::spawn(async move {
        next(&mut h, "GET", PATH, 404, status(404, "NotFound")).await;
        let created = next(&mut h, "POST", LIST, 201, lease("me", 0)).await;
        created
    });
    assert!(lock.try_acquire().await.unwrap());
    let created = server.await.unwrap();
    assert_eq!(created["spec"]["holderIdentity"], "me");
    assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
}

#[tokio::test]
async fn a_race_to_create_is_lost_quietly() {
    let (lock, mut h) = lock();
    tokio::spawn(async move {
        next(&mut h, "GET", PATH, 404, status(404, "NotFound")).await;
        next(&mut h, "POST", LIST, 409, status(409, "AlreadyExists")).await;
    });
    assert!(!lock.try_acquire().await.unwrap());
}

#[tokio::test]
async fn a_fresh_lease_of_another_replica_is_respected() {
    let (lock, mut h) = lock();
    let server = tokio::spawn(async move {
        next(&mut h, "GET", PATH, 200, lease("other", 2)).await;
        // Nothing else may be asked: the lock must not write.
        h
    });
    assert!(!lock.try_acquire().await.unwrap());
    let mut h = server.await.unwrap();
    drop(lock);
    assert!(
        h.next_request().await.is_none(),
        "no write to a lease another replica holds"
    );
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_its_resource_version() {
    let (lock, mut h) = lock();
    let server = tokio::spawn(async move {
        next(&mut h, "GET", PATH, 200, lease("other", 60)).await;
        next(&mut h, "PUT", PATH, 200, lease("me", 0)).await
    });
    assert!(lock.try_acquire().await.unwrap());
    let put = server.await.unwrap();
    assert_eq!(put["spec"]["holderIdentity"], "me");
    assert_eq!(put["spec"]["leaseTransitions"], 3);
    assert_eq!(
        put["metadata"]["resourceVersion"], "7",
        "optimistic concurrency"
    );
}

#[tokio::test]
async fn renewing_our_own_lease_keeps_the_transitions_and_a_conflict_means_lost() {
    let (lock, mut h) = lock();
    let server = tokio::spawn(async move {
        next(&mut h, "GET", PATH, 200, lease("me", 5)).await;
        let put = next(&mut h, "PUT", PATH, 200, lease("me", 0)).await;
        next(&mut h, "GET", PATH, 200, lease("me", 5)).await;
        next(&mut h, "PUT", PATH, 409, status(409, "Conflict")).await;
        put
    });
    assert!(lock.try_acquire().await.unwrap());
    assert!(
        !lock.try_acquire().await.unwrap(),
        "someone else wrote in between"
    );
    let put = server.await.unwrap();
    assert_eq!(put["spec"]["leaseTransitions"], 2);
}
