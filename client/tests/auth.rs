//! Logging in, against a mock etcd server in this process (tonic on
//! 127.0.0.1:0; no `nod` binary): the mock answers Auth.Authenticate with
//! numbered tokens (`token-1`, `token-2`, …), counts the logins, records
//! the `token` metadata of every Put and Watch, and refuses the tokens and
//! passwords a test tells it to, with etcd's messages.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use nod_client::{CallOptions, Client, ClientError, WatchOptions};
use nod_proto::etcd::etcdserverpb::auth_server::{Auth, AuthServer};
use nod_proto::etcd::etcdserverpb::kv_server::{Kv, KvServer};
use nod_proto::etcd::etcdserverpb::watch_server::{Watch, WatchServer};
use nod_proto::etcd::etcdserverpb::*;
use nod_proto::etcd::mvccpb::{Event, KeyValue};
use tonic::{Code, Request, Response, Status, Streaming};

const PASSWORD: &str = "s3cret";
const INVALID_TOKEN: &str = "etcdserver: invalid auth token";
const BAD_PASSWORD: &str = "etcdserver: authentication failed, invalid user ID or password";

#[derive(Default)]
struct Mock {
    /// When false, Authenticate answers "authentication is not enabled"
    /// and tokens are not checked.
    enabled: AtomicBool,
    logins: AtomicUsize,
    /// The token of the latest login: the only one accepted.
    valid: Mutex<Option<String>>,
    /// Refuse this many Puts (and watches) as if their token had expired.
    expire_next_puts: AtomicUsize,
    expire_next_watches: AtomicUsize,
    /// The `token` metadata each Put and Watch carried.
    put_tokens: Mutex<Vec<Option<String>>>,
    watch_tokens: Mutex<Vec<Option<String>>>,
}

impl Mock {
    fn enabled() -> Arc<Mock> {
        let m = Mock::default();
        m.enabled.store(true, Ordering::Relaxed);
        Arc::new(m)
    }

    fn logins(&self) -> usize {
        self.logins.load(Ordering::Relaxed)
    }

    fn put_tokens(&self) -> Vec<Option<String>> {
        self.put_tokens.lock().unwrap().clone()
    }

    fn watch_tokens(&self) -> Vec<Option<String>> {
        self.watch_tokens.lock().unwrap().clone()
    }

    /// Whether a call with `token` may go on (after a forced expiry).
    fn admits(&self, token: &Option<String>, expire_next: &AtomicUsize) -> bool {
        let forced = expire_next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if forced {
            return false;
        }
        !self.enabled.load(Ordering::Relaxed) || *token == *self.valid.lock().unwrap()
    }
}

fn token_of<T>(r: &Request<T>) -> Option<String> {
    r.metadata()
        .get("token")
        .map(|v| v.to_str().unwrap().to_string())
}

#[derive(Clone)]
struct Svc(Arc<Mock>);

/// `impl $trait for Svc` with the methods given and every other method of
/// the trait answering Unimplemented.
macro_rules! service {
    ($trait:ident { $($given:item)* } unimplemented { $($name:ident($req:ident) -> $resp:ident;)* }) => {
        #[tonic::async_trait]
        impl $trait for Svc {
            $($given)*
            $(
                async fn $name(&self, _: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(Status::unimplemented(stringify!($name)))
                }
            )*
        }
    };
}

service!(Auth {
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let n = 1 + self.0.logins.fetch_add(1, Ordering::Relaxed);
        if !self.0.enabled.load(Ordering::Relaxed) {
            return Err(Status::failed_precondition(
                "etcdserver: authentication is not enabled",
            ));
        }
        let r = request.into_inner();
        if r.name != "root" || r.password != PASSWORD {
            return Err(Status::invalid_argument(BAD_PASSWORD));
        }
        let token = format!("token-{n}");
        *self.0.valid.lock().unwrap() = Some(token.clone());
        Ok(Response::new(AuthenticateResponse { header: None, token }))
    }
} unimplemented {
    auth_enable(AuthEnableRequest) -> AuthEnableResponse;
    auth_disable(AuthDisableRequest) -> AuthDisableResponse;
    auth_status(AuthStatusRequest) -> AuthStatusResponse;
    user_add(AuthUserAddRequest) -> AuthUserAddResponse;
    user_get(AuthUserGetRequest) -> AuthUserGetResponse;
    user_list(AuthUserListRequest) -> AuthUserListResponse;
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
    role_list(AuthRoleListRequest) -> AuthRoleListResponse;
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
});

service!(Kv {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let token = token_of(&request);
        self.0.put_tokens.lock().unwrap().push(token.clone());
        if !self.0.admits(&token, &self.0.expire_next_puts) {
            return Err(Status::unauthenticated(INVALID_TOKEN));
        }
        Ok(Response::new(PutResponse::default()))
    }
} unimplemented {
    range(RangeRequest) -> RangeResponse;
    delete_range(DeleteRangeRequest) -> DeleteRangeResponse;
    txn(TxnRequest) -> TxnResponse;
    compact(CompactionRequest) -> CompactionResponse;
});

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for Svc {
    type WatchStream = WatchStream;

    /// As etcd does: a refused token cancels the watch with the error as
    /// its reason; otherwise the watch is created and one event follows.
    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        use futures::StreamExt;
        let token = token_of(&request);
        self.0.watch_tokens.lock().unwrap().push(token.clone());
        let created = WatchResponse {
            header: Some(ResponseHeader {
                revision: 1,
                ..Default::default()
            }),
            created: true,
            ..Default::default()
        };
        let replies = if self.0.admits(&token, &self.0.expire_next_watches) {
            let event = WatchResponse {
                header: Some(ResponseHeader {
                    revision: 2,
                    ..Default::default()
                }),
                events: vec![Event {
                    kv: Some(KeyValue {
                        key: b"k".to_vec(),
                        value: b"v".to_vec(),
                        mod_revision: 2,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            };
            vec![Ok(created), Ok(event)]
        } else {
            vec![Ok(WatchResponse {
                canceled: true,
                cancel_reason: INVALID_TOKEN.into(),
                watch_id: -1,
                ..created
            })]
        };
        let stream = futures::stream::iter(replies).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves the mock on 127.0.0.1:0; returns its endpoint.
async fn serve(mock: &Arc<Mock>) -> String {
    serve_services(mock, true).await
}

async fn serve_services(mock: &Arc<Mock>, with_auth: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = Svc(mock.clone());
    let router = tonic::transport::Server::builder()
        .add_optional_service(with_auth.then(|| AuthServer::new(svc.clone())))
        .add_service(KvServer::new(svc.clone()))
        .add_service(WatchServer::new(svc));
    tokio::spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    format!("http://{addr}")
}

fn client(endpoint: String, password: &str) -> Client {
    Client::builder([endpoint])
        .user("root", password)
        .call_options(CallOptions::default().deadline(Some(Duration::from_secs(5))))
        .build()
        .unwrap()
}

fn put() -> PutRequest {
    PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    }
}

fn some(t: &str) -> Option<String> {
    Some(t.to_string())
}

#[tokio::test]
async fn the_first_call_logs_in_and_every_call_carries_the_token() {
    let mock = Mock::enabled();
    let mut c = client(serve(&mock).await, PASSWORD);
    assert_eq!(mock.logins(), 0, "no login before the first call");
    c.put(put()).await.unwrap();
    c.put(put()).await.unwrap();
    assert_eq!(mock.logins(), 1);
    assert_eq!(mock.put_tokens(), [some("token-1"), some("token-1")]);
}

#[tokio::test]
async fn an_expired_token_is_replaced_and_the_write_sent_again() {
    let mock = Mock::enabled();
    let mut c = client(serve(&mock).await, PASSWORD);
    mock.expire_next_puts.store(1, Ordering::Relaxed);
    c.put(put()).await.unwrap();
    assert_eq!(mock.logins(), 2, "logged in again after the refusal");
    assert_eq!(
        mock.put_tokens(),
        [some("token-1"), some("token-2")],
        "the retried Put carries the new token"
    );
}

#[tokio::test]
async fn a_token_refused_twice_is_an_error_not_a_loop() {
    let mock = Mock::enabled();
    let mut c = client(serve(&mock).await, PASSWORD);
    mock.expire_next_puts.store(usize::MAX, Ordering::Relaxed);
    let err = c.put(put()).await.unwrap_err();
    let s = err.status().expect("the server's answer");
    assert_eq!(
        (s.code(), s.message()),
        (Code::Unauthenticated, INVALID_TOKEN)
    );
    assert_eq!(mock.logins(), 2, "one login, then once more");
    assert_eq!(mock.put_tokens().len(), 2);
}

#[tokio::test]
async fn a_wrong_password_is_the_first_calls_error() {
    let mock = Mock::enabled();
    let mut c = client(serve(&mock).await, "wrong");
    let err = c.put(put()).await.unwrap_err();
    let s = err.status().expect("the server's answer");
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, BAD_PASSWORD)
    );
    assert_eq!(err.to_string(), BAD_PASSWORD, "printed as etcdctl does");
    assert_eq!(mock.logins(), 1, "not retried");
    assert!(mock.put_tokens().is_empty(), "the Put was never sent");
    // Eagerly, too; each attempt is one login.
    assert!(c.authenticate().await.is_err());
    assert_eq!(mock.logins(), 2);
}

#[tokio::test]
async fn without_authentication_on_the_server_calls_go_without_a_token() {
    let mock = Arc::new(Mock::default());
    let mut c = client(serve(&mock).await, PASSWORD);
    c.authenticate().await.unwrap();
    c.put(put()).await.unwrap();
    c.put(put()).await.unwrap();
    assert_eq!(mock.logins(), 1, "asked once");
    assert_eq!(mock.put_tokens(), [None, None]);
}

#[tokio::test]
async fn a_server_without_the_auth_service_is_a_readable_error() {
    let mock = Mock::enabled();
    let mut c = client(serve_services(&mock, false).await, PASSWORD);
    let err = c.put(put()).await.unwrap_err();
    let s = err.status().expect("a status");
    assert_eq!(s.code(), Code::Unimplemented);
    assert!(s.message().contains("no Auth service"), "{err}");
    assert!(mock.put_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_share_one_login() {
    let mock = Mock::enabled();
    let c = client(serve(&mock).await, PASSWORD);
    let calls = (0..8).map(|_| {
        let mut c = c.clone();
        async move { c.put(put()).await }
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(
        mock.logins(),
        1,
        "concurrent first calls wait for one login"
    );
    assert!(mock.put_tokens().iter().all(|t| *t == some("token-1")));
    // A clone with other options shares the token too.
    let mut other = c.with_options(CallOptions::default().max_attempts(1));
    other.put(put()).await.unwrap();
    assert_eq!(mock.logins(), 1);
}

#[tokio::test]
async fn a_watch_cancelled_for_its_token_is_reopened_with_a_new_one() {
    let mock = Mock::enabled();
    let c = client(serve(&mock).await, PASSWORD);
    mock.expire_next_watches.store(1, Ordering::Relaxed);
    let mut w = c.watcher("k", WatchOptions::default()).await.unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("an event")
        .expect("the watch goes on")
        .unwrap();
    assert_eq!(batch.events.len(), 1);
    assert_eq!(mock.logins(), 2);
    assert_eq!(mock.watch_tokens(), [some("token-1"), some("token-2")]);
}

#[tokio::test]
async fn a_watch_with_a_wrong_password_fails_at_once() {
    let mock = Mock::enabled();
    let c = client(serve(&mock).await, "wrong");
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        c.watcher("k", WatchOptions::default()),
    )
    .await
    .expect("no endless retry")
    .err()
    .expect("the login's error");
    assert!(
        matches!(&err, ClientError::Status(s) if s.message() == BAD_PASSWORD),
        "{err}"
    );
    assert!(mock.watch_tokens().is_empty());
}
