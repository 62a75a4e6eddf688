//! A secured cluster for end-to-end tests, as README's "Securing a
//! cluster" sets one up: a CA of the test's own (`nod::tls::pki`), client
//! TLS with client certificates required, peer mutual TLS with a required
//! common name, sealed gossip, and authentication on with a `root` user and
//! one user whose role grants readwrite on the ranges the test names. The
//! clients it makes log in as that user (or root) and send the token with
//! every call (`nod_client::ClientBuilder::user`).
//!
//! The client certificate's common name is no user, so every call the
//! user's clients make passes on its token alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nod::tls::pki::{Ca, Usage, Written};
use nod_client::tls::{ClientTls, Connector, TlsOptions};
use nod_client::{CallOptions, Client};
use nod_proto::etcd::authpb::{permission, Permission};
use nod_proto::etcd::etcdserverpb::auth_client::AuthClient;
use nod_proto::etcd::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest,
};

pub const ROOT_PASSWORD: &str = "root-password";
/// The test's user, and its role's name.
pub const USER: &str = "tester";
pub const PASSWORD: &str = "tester-password";
/// The peer certificates' common name, required by `--peer-cert-allowed-cn`.
pub const MEMBER_CN: &str = "nod-member";

pub struct Secure {
    pub ca: PathBuf,
    pub server: Written,
    pub peer: Written,
    pub client: Written,
    pub gossip_key: PathBuf,
}

impl Secure {
    /// Certificates valid for `hosts` (the addresses clients and peers
    /// dial: loopback, namespace addresses, a proxy's) and a gossip key,
    /// written into `dir`.
    pub fn create(dir: &Path, hosts: &[String]) -> Secure {
        use base64::Engine as _;
        std::fs::create_dir_all(dir).expect("certificate folder");
        let ca = Ca::new("nod test CA").expect("CA");
        let mut sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        sans.extend(hosts.iter().cloned());
        let issue = |cn: &str, sans: &[String], usage: Usage, name: &str| {
            ca.issue(cn, sans, usage)
                .expect("certificate")
                .write(dir, name)
                .expect("write certificate")
        };
        let gossip_key = dir.join("gossip.key");
        let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
        std::fs::write(
            &gossip_key,
            format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode(key)
            ),
        )
        .expect("write gossip key");
        Secure {
            ca: ca.write(dir, "ca").expect("write CA"),
            server: issue("nod-server", &sans, Usage::Server, "server"),
            peer: issue(MEMBER_CN, &sans, Usage::Peer, "peer"),
            client: issue("nod-test-client", &[], Usage::Client, "client"),
            gossip_key,
        }
    }

    /// The server flags: client and peer mutual TLS, sealed gossip. The
    /// member's client and peer schemes must be `https`.
    pub fn server_flags(&self) -> Vec<String> {
        vec![
            format!("--cert-file={}", self.server.cert.display()),
            format!("--key-file={}", self.server.key.display()),
            format!("--trusted-ca-file={}", self.ca.display()),
            "--client-cert-auth".into(),
            format!("--peer-cert-file={}", self.peer.cert.display()),
            format!("--peer-key-file={}", self.peer.key.display()),
            format!("--peer-trusted-ca-file={}", self.ca.display()),
            "--peer-client-cert-auth".into(),
            format!("--peer-cert-allowed-cn={MEMBER_CN}"),
            format!("--gossip-key-file={}", self.gossip_key.display()),
        ]
    }

    /// The clients' TLS: this CA and the client certificate.
    pub fn tls(&self) -> TlsOptions {
        TlsOptions {
            ca_file: Some(self.ca.clone()),
            cert_file: Some(self.client.cert.clone()),
            key_file: Some(self.client.key.clone()),
            insecure_skip_verify: false,
        }
    }

    /// A client over TLS as `user` (`None`: no login, for the calls any
    /// caller may make: status, member list), each call and attempt
    /// limited to `timeout`, as `Client::connect`.
    pub fn client(
        &self,
        endpoints: &[String],
        timeout: Duration,
        user: Option<(&str, &str)>,
    ) -> Client {
        let mut b = Client::builder(endpoints.iter().cloned())
            .call_options(
                CallOptions::default()
                    .attempt_timeout(timeout)
                    .deadline(Some(timeout)),
            )
            .tls(self.tls());
        if let Some((name, password)) = user {
            b = b.user(name, password);
        }
        b.build().expect("client")
    }

    /// Adds `root` (with the root role) and `USER` (with a role granting
    /// readwrite on each `[key, range_end)` of `ranges`, etcd's encoding),
    /// then enables authentication, through `endpoint` (`host:port`).
    pub async fn enable_auth(&self, endpoint: &str, ranges: &[(&[u8], &[u8])]) {
        let tls = ClientTls::new(&self.tls()).expect("client TLS");
        let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{endpoint}"))
            .expect("endpoint")
            .timeout(Duration::from_secs(10));
        let channel = Connector::new(Some(std::sync::Arc::new(tls))).channel(endpoint);
        let mut auth = AuthClient::new(channel);
        for (user, password) in [("root", ROOT_PASSWORD), (USER, PASSWORD)] {
            auth.user_add(AuthUserAddRequest {
                name: user.into(),
                password: password.into(),
                ..Default::default()
            })
            .await
            .expect("user add");
        }
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        })
        .await
        .expect("grant root the root role");
        auth.role_add(AuthRoleAddRequest { name: USER.into() })
            .await
            .expect("role add");
        for (key, range_end) in ranges {
            auth.role_grant_permission(AuthRoleGrantPermissionRequest {
                name: USER.into(),
                perm: Some(Permission {
                    perm_type: permission::Type::Readwrite as i32,
                    key: key.to_vec(),
                    range_end: range_end.to_vec(),
                }),
            })
            .await
            .expect("role grant-permission");
        }
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: USER.into(),
            role: USER.into(),
        })
        .await
        .expect("grant the user its role");
        auth.auth_enable(AuthEnableRequest {})
            .await
            .expect("auth enable");
    }
}
