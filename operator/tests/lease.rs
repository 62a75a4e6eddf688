//! Leader election on a Lease, against a mock API server: two operator
//! replicas must never both believe they lead. Some tests run on real time
//! with leases of a second or three (Lease durations are whole seconds).

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use nod_operator::lease::{LeaseLock, LeaseLost};
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
    lease_v(holder, renewed_secs_ago, 15, "7")
}

/// A Lease held by `holder` for `duration` seconds, at `version`.
fn lease_v(holder: &str, renewed_secs_ago: i64, duration: i32, version: &str) -> Value {
    let renew = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(
            renewed_secs_ago,
        ))
        .unwrap();
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "nod-operator", "namespace": "nod-system", "resourceVersion": version},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
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
    lock_for(Duration::from_secs(15))
}

fn lock_for(duration: Duration) -> (LeaseLock, Handle) {
    let (svc, h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    (
        LeaseLock::new(client, "nod-system", "nod-operator", "me", duration),
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
async fn a_lease_is_judged_by_this_replicas_clock_not_by_the_holders_renew_time() {
    // The holder's renewTime says 60 s ago, but the clocks may disagree:
    // only a record unchanged for a whole lease duration of our own time
    // is expired.
    let (lock, mut h) = lock();
    let record = lease_v("other", 60, 1, "7");
    let server = tokio::spawn(async move {
        next(&mut h, "GET", PATH, 200, record.clone()).await;
        next(&mut h, "GET", PATH, 200, record).await;
        next(&mut h, "PUT", PATH, 200, lease("me", 0)).await
    });
    assert!(
        !lock.try_acquire().await.unwrap(),
        "first sight of a record is not its expiry"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(lock.try_acquire().await.unwrap(), "unchanged for its 1 s");
    let put = server.await.unwrap();
    assert_eq!(put["spec"]["holderIdentity"], "me");
    assert_eq!(put["spec"]["leaseTransitions"], 3);
    assert_eq!(
        put["metadata"]["resourceVersion"], "7",
        "optimistic concurrency"
    );
}

#[tokio::test]
async fn a_lease_renewed_in_between_is_not_taken() {
    let (lock, mut h) = lock();
    let server = tokio::spawn(async move {
        next(&mut h, "GET", PATH, 200, lease_v("other", 60, 1, "7")).await;
        // Renewed (a new version) while we waited: it starts over.
        next(&mut h, "GET", PATH, 200, lease_v("other", 60, 1, "8")).await;
        h
    });
    assert!(!lock.try_acquire().await.unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!lock.try_acquire().await.unwrap());
    let mut h = server.await.unwrap();
    drop(lock);
    assert!(h.next_request().await.is_none(), "no write");
}

#[tokio::test]
async fn a_hung_renewal_stops_the_holder_before_its_lease_can_lapse() {
    // A 3 s lease: renewed every ~0.43 s, given up 2 s after the last
    // successful renewal began. The second renewal never gets an answer.
    let (lock, mut h) = lock_for(Duration::from_secs(3));
    let server = tokio::spawn(async move {
        next(&mut h, "GET", PATH, 200, lease_v("me", 0, 3, "7")).await;
        next(&mut h, "PUT", PATH, 200, lease_v("me", 0, 3, "8")).await;
        let (_req, send) = h.next_request().await.expect("a second renewal");
        // Hold the answer back until the holder has given up.
        (send, h)
    });
    let acquired = tokio::time::Instant::now();
    let lost = lock.keep_renewing(acquired).await;
    let stopped_after = acquired.elapsed();
    assert_eq!(lost, LeaseLost::RenewDeadlinePassed(Duration::from_secs(2)));
    // Another replica may take over 3 s after the last renewal it saw (at
    // the earliest ~0.43 s in): the holder must have stopped well before.
    assert!(
        stopped_after < Duration::from_millis(3000),
        "acted until {stopped_after:?}"
    );
    assert!(
        stopped_after >= Duration::from_secs(2),
        "gave up early, at {stopped_after:?}"
    );
    drop(server);
}

#[tokio::test]
async fn a_holder_that_finds_another_holder_stops() {
    let (lock, mut h) = lock_for(Duration::from_secs(3));
    tokio::spawn(async move {
        next(&mut h, "GET", PATH, 200, lease_v("other", 0, 3, "9")).await;
        h
    });
    let lost = lock.keep_renewing(tokio::time::Instant::now()).await;
    assert_eq!(lost, LeaseLost::TakenOver);
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
