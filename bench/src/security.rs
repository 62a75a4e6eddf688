//! The "TLS + auth" configuration both systems run in: client TLS with
//! client certificates required, peer mutual TLS, and authentication on
//! with etcd's simple tokens. This module makes the certificates (a CA of
//! its own, `nod_client::pki`), gives the server flags (etcd's names,
//! which Nod shares), and turns authentication on through the Auth API:
//! a `root` user with the root role, and a `bench` user whose role grants
//! readwrite on the benchmark's keys and nothing else. The load client
//! logs in as `bench` (`workload::Access::login`) and sends the token with
//! every call.
//!
//! The client certificate's common name is no user, so a call without the
//! token is refused on both systems (with `--client-cert-auth` a
//! certificate's common name is the user when no token is given): what is
//! measured is the token path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nod_client::pki::{Ca, Usage, Written};
use nod_client::tls::{ClientTls, TlsOptions};
use nod_proto::etcd::authpb::{permission, Permission};
use nod_proto::etcd::etcdserverpb::auth_client::AuthClient;
use nod_proto::etcd::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest,
};

use crate::workload::{self, Access};

/// The user with every permission (etcd needs it, with the root role,
/// before authentication can be enabled).
pub const ROOT: &str = "root";
pub const ROOT_PASSWORD: &str = "bench-root-password";
/// The user the load runs as, and its role's name.
pub const USER: &str = "bench";
pub const PASSWORD: &str = "bench-password";
/// The client certificate's common name: no user of the cluster.
pub const CLIENT_CN: &str = "nod-bench-client";

/// The key ranges the `bench` role may read and write: every key the
/// workloads touch (`workload::key`: 8 hex digits, all in `["0", "g")`)
/// and the watch fan-out's key.
pub fn bench_permissions() -> Vec<Permission> {
    let readwrite = permission::Type::Readwrite as i32;
    vec![
        Permission {
            perm_type: readwrite,
            key: b"0".to_vec(),
            range_end: b"g".to_vec(),
        },
        Permission {
            perm_type: readwrite,
            key: workload::WATCH_KEY.to_vec(),
            range_end: vec![],
        },
    ]
}

/// The certificates of one TLS + auth run, under one folder.
#[derive(Clone, Debug)]
pub struct Security {
    pub ca: PathBuf,
    /// The client port's certificate (127.0.0.1 and localhost).
    pub server: Written,
    /// Every member's peer certificate (server and client use).
    pub peer: Written,
    /// The load client's certificate.
    pub client: Written,
}

impl Security {
    /// A new CA and the certificates it signs (`nod_client::pki`, as
    /// `nod dev --tls` makes them), written into `dir`.
    pub fn create(dir: &Path) -> Result<Security, String> {
        let ca = Ca::new("nod-bench CA").map_err(|e| format!("certificates: {e}"))?;
        let loopback = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let issue = |file: &str, cn: &str, sans: &[String], usage: Usage| {
            let issued = ca
                .issue(cn, sans, usage)
                .map_err(|e| format!("certificates: {e}"))?;
            issued
                .write(dir, file)
                .map_err(|e| format!("{}: {e}", dir.display()))
        };
        Ok(Security {
            server: issue("server", "nod-bench-server", &loopback, Usage::Server)?,
            // A member shows its peer certificate when it dials other
            // members too: Usage::Peer has both uses.
            peer: issue("peer", "nod-bench-member", &loopback, Usage::Peer)?,
            client: issue("client", CLIENT_CN, &[], Usage::Client)?,
            ca: ca
                .write(dir, "ca")
                .map_err(|e| format!("{}: {e}", dir.display()))?,
        })
    }

    /// The server flags (etcd's, which Nod shares): client TLS with client
    /// certificates required, peer mutual TLS. The URLs must be `https://`.
    pub fn server_flags(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec![
            "--cert-file".into(),
            path(&self.server.cert),
            "--key-file".into(),
            path(&self.server.key),
            "--trusted-ca-file".into(),
            path(&self.ca),
            "--client-cert-auth".into(),
            "--peer-cert-file".into(),
            path(&self.peer.cert),
            "--peer-key-file".into(),
            path(&self.peer.key),
            "--peer-trusted-ca-file".into(),
            path(&self.ca),
            "--peer-client-cert-auth".into(),
        ]
    }

    /// The load client's TLS: this CA, and the client certificate.
    pub fn client_tls(&self) -> Result<Arc<ClientTls>, String> {
        let opts = TlsOptions {
            ca_file: Some(self.ca.clone()),
            cert_file: Some(self.client.cert.clone()),
            key_file: Some(self.client.key.clone()),
            insecure_skip_verify: false,
        };
        ClientTls::new(&opts)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    }
}

/// Adds `root` (with the root role) and `bench` (with a role granting
/// readwrite on the benchmark's keys), then enables authentication, through
/// `endpoint` with `access` (no token: authentication is still off).
pub async fn enable_auth(endpoint: &str, access: &Access) -> Result<(), String> {
    let conn = workload::dial(endpoint, access).await?;
    let mut auth = AuthClient::new(conn);
    let step = |what: &'static str| move |e: tonic::Status| format!("{what}: {}", e.message());
    for (user, password) in [(ROOT, ROOT_PASSWORD), (USER, PASSWORD)] {
        auth.user_add(AuthUserAddRequest {
            name: user.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .map_err(step("user add"))?;
    }
    auth.user_grant_role(AuthUserGrantRoleRequest {
        user: ROOT.into(),
        role: ROOT.into(),
    })
    .await
    .map_err(step("grant root the root role"))?;
    auth.role_add(AuthRoleAddRequest { name: USER.into() })
        .await
        .map_err(step("role add"))?;
    for perm in bench_permissions() {
        auth.role_grant_permission(AuthRoleGrantPermissionRequest {
            name: USER.into(),
            perm: Some(perm),
        })
        .await
        .map_err(step("role grant-permission"))?;
    }
    auth.user_grant_role(AuthUserGrantRoleRequest {
        user: USER.into(),
        role: USER.into(),
    })
    .await
    .map_err(step("grant bench its role"))?;
    auth.auth_enable(AuthEnableRequest {})
        .await
        .map_err(step("auth enable"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_role_covers_every_benchmark_key_and_nothing_else() {
        let perms = bench_permissions();
        let covered = |k: &[u8]| {
            perms.iter().any(|p| {
                if p.range_end.is_empty() {
                    p.key == k
                } else {
                    p.key.as_slice() <= k && k < p.range_end.as_slice()
                }
            })
        };
        for i in [0, 1, 0xabcdef, 0xffff_ffff, u64::MAX] {
            assert!(covered(&workload::key(i)), "{i:x}");
        }
        assert!(covered(workload::WATCH_KEY));
        assert!(!covered(b"ready"));
        assert!(!covered(b"/other"));
    }

    #[test]
    fn the_certificates_are_written_as_pem() {
        let dir = tempfile::tempdir().unwrap();
        let s = Security::create(dir.path()).unwrap();
        for p in [&s.ca, &s.server.cert, &s.peer.cert, &s.client.cert] {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{p:?}");
        }
        for p in [&s.server.key, &s.peer.key, &s.client.key] {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.contains("PRIVATE KEY-----"), "{p:?}");
        }
        s.client_tls()
            .expect("the client's TLS configuration loads");
    }
}
