//! The Secrets and Certificates behind a cluster's security, and the
//! operator's own way in: the gossip key (made once per cluster), the
//! certificates of `spec.tls` (made and renewed here in `auto`, asked of
//! cert-manager in `certManager`, read in `secrets`), the operator's client
//! certificate as files its client loads, and turning `spec.auth` on or off.
//!
//! The operator reads and writes only the Secrets it names itself, by
//! name (get, create, patch): no list, no watch, nothing else.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::ByteString;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use nod_client::auth::Credentials;
use nod_client::pki::{inspect, Ca, Usage};
use nod_client::tls::TlsOptions;
use serde_json::json;

use crate::certs::{self, Due};
use crate::controller::{Context, Findings};
use crate::crd::{NodCluster, NodClusterStatus, TlsMode, TlsStatus};
use crate::nodapi::{ClusterApi, Health, Target};
use crate::render;

/// Makes the cluster's gossip key Secret if it does not exist. A key is
/// never replaced: members sealing with another key could not gossip.
pub(crate) async fn ensure_gossip_key<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    findings: &mut Findings,
) {
    let name = render::gossip_secret_name(nc);
    let result = create_if_missing(nc, ctx, &name, "Opaque", || {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| "no randomness for the gossip key".to_string())?;
        let text = format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        Ok(BTreeMap::from([("key".to_string(), text)]))
    })
    .await;
    if let Err(e) = result {
        findings
            .errors
            .push(format!("the gossip key Secret {name}: {e}"));
    }
}

/// What `prepare` found, for `members_certificates`.
pub(crate) struct Prepared {
    /// How the operator reaches the cluster.
    pub(crate) target: Target,
    /// `auto`: the cluster's CA, loaded.
    ca: Option<Ca>,
    /// `auto`: the earliest expiry among the client certificates.
    earliest: Option<i64>,
}

/// The first half, before the cluster is asked anything: the certificates
/// of `spec.tls` that are not the members' (the CA, the operator's and the
/// users' client certificates in `auto`; the Certificates in
/// `certManager`), and how the operator reaches the cluster: its
/// endpoints, its client certificate, `root`'s password when auth is on
/// without TLS.
pub(crate) async fn prepare<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    members: i32,
    status: &mut NodClusterStatus,
    findings: &mut Findings,
) -> Prepared {
    let mut out = Prepared {
        target: Target::plain((ctx.endpoints)(nc, members)),
        ca: None,
        earliest: None,
    };
    if let Some(auth) = nc.spec.auth.as_ref().filter(|a| a.enabled) {
        if nc.spec.tls.is_none() {
            let secret = &auth.root_password_secret;
            match read_key(nc, ctx, &secret.name, &secret.key).await {
                Ok(pw) => out.target.credentials = Some(Credentials::new("root", pw)),
                Err(e) => findings.not_applied.push(("RootPasswordMissing", e)),
            }
        }
    }
    let Some(tls) = &nc.spec.tls else {
        status.tls = None;
        return out;
    };
    status.tls = Some(TlsStatus {
        mode: tls.mode.name().into(),
        ..status.tls.clone().unwrap_or_default()
    });
    let operator_pems = match tls.mode {
        TlsMode::Auto => auto_clients(nc, ctx, &mut out, findings).await,
        TlsMode::CertManager => {
            apply_certificates(nc, ctx, findings).await;
            read_tls_secret(nc, ctx, &render::operator_tls_secret_name(nc), findings).await
        }
        TlsMode::Secrets => {
            read_tls_secret(nc, ctx, &render::operator_tls_secret_name(nc), findings).await
        }
    };
    if let Some(pems) = operator_pems {
        match write_operator_files(ctx, nc, &pems) {
            Ok(opts) => out.target.tls = Some(opts),
            Err(e) => findings
                .errors
                .push(format!("writing the operator's certificate files: {e}")),
        }
    }
    out
}

/// A certificate, its key and the CA, PEM.
struct Pems {
    ca: String,
    cert: String,
    key: String,
}

/// `auto`: the CA, the operator's and the users' client certificates.
/// Returns the operator's.
async fn auto_clients<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    out: &mut Prepared,
    findings: &mut Findings,
) -> Option<Pems> {
    let tls = nc.spec.tls.as_ref()?;
    let validity = i64::from(tls.validity_hours) * 3600;
    let renew_before = i64::from(tls.renew_before_hours) * 3600;
    let ca_name = render::ca_secret_name(nc);
    let ca_secret = create_if_missing(nc, ctx, &ca_name, "Opaque", || {
        let ns = nc.namespace().unwrap_or_default();
        let ca = Ca::new(&format!("{}.{ns} nod CA", nc.name_any())).map_err(|e| e.to_string())?;
        Ok(BTreeMap::from([
            (certs::CA_CERT.to_string(), ca.cert_pem.clone()),
            (certs::CA_KEY.to_string(), ca.key_pem()),
        ]))
    })
    .await;
    let ca = match ca_secret.and_then(|data| {
        let cert = data.get(certs::CA_CERT).ok_or("no ca.crt")?;
        let key = data.get(certs::CA_KEY).ok_or("no ca.key")?;
        Ca::from_pem(cert, key).map_err(|e| e.to_string())
    }) {
        Ok(ca) => ca,
        Err(e) => {
            // Nothing is issued from a CA that does not load: replacing it
            // would cut every member off from the others.
            findings
                .errors
                .push(format!("the CA Secret {ca_name}: {e}"));
            return None;
        }
    };
    let op_name = render::operator_tls_secret_name(nc);
    let operator = client_certificate(
        nc,
        ctx,
        &ca,
        &op_name,
        certs::OPERATOR_USER,
        (validity, renew_before),
        findings,
    )
    .await;
    let mut earliest = operator
        .as_ref()
        .and_then(|p| inspect(&p.cert).ok())
        .map(|i| i.not_after);
    for user in &tls.client_users {
        let name = render::client_tls_secret_name(nc, user);
        let issued = client_certificate(
            nc,
            ctx,
            &ca,
            &name,
            user,
            (validity, renew_before),
            findings,
        )
        .await;
        if let Some(t) = issued
            .and_then(|p| inspect(&p.cert).ok())
            .map(|i| i.not_after)
        {
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        }
    }
    out.ca = Some(ca);
    out.earliest = earliest;
    operator
}

/// The second half, once the cluster has been asked for its health
/// (`auto` only): the member Secret. A new member's certificates are
/// issued at once; renewals go one member at a time, each only while every
/// member is healthy, the next once the last serves its new certificate.
pub(crate) async fn members_certificates<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    prepared: &Prepared,
    members: i32,
    health: Option<&Health>,
    status: &mut NodClusterStatus,
    findings: &mut Findings,
) {
    let (Some(tls), Some(ca)) = (&nc.spec.tls, &prepared.ca) else {
        return;
    };
    let Some(tls_status) = status.tls.as_mut() else {
        return;
    };
    let validity = i64::from(tls.validity_hours) * 3600;
    let renew_before = i64::from(tls.renew_before_hours) * 3600;
    let now = unix_now();
    let member_name = render::member_tls_secret_name(nc);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &nc.namespace().unwrap_or_default());
    let existing = match api.get_opt(&member_name).await {
        Ok(s) => s,
        Err(e) => {
            findings.kube(&format!("reading the Secret {member_name}"), &e);
            return;
        }
    };
    let mut data = existing.as_ref().map(secret_strings).unwrap_or_default();
    let mut annotations = existing
        .as_ref()
        .map(|s| s.annotations().clone())
        .unwrap_or_default();
    annotations.retain(|k, _| k.starts_with(certs::RENEWED_PREFIX));
    let before = (data.clone(), annotations.clone());
    data.insert(certs::CA_CERT.into(), ca.cert_pem.clone());
    certs::forget_members_from(&mut data, &mut annotations, nc, members);
    let pods: Vec<String> = (0..members).map(|i| render::pod_name(nc, i)).collect();
    let request = nc.annotations().get(certs::RENEW_ANNOTATION).cloned();

    // A renewal in flight ends once the member serves its new certificate
    // (or is gone).
    if let Some(pod) = tls_status.renewing.clone() {
        if !pods.contains(&pod) {
            tls_status.renewing = None;
        } else if let Some(expected) = data
            .get(&certs::server_cert(&pod))
            .and_then(|p| inspect(p).ok())
        {
            let url = format!(
                "https://{}:{}",
                render::pod_host(nc, &pod),
                render::CLIENT_PORT
            );
            match ctx.api.served_certificate(&prepared.target, &url).await {
                Ok(der) if der == expected.der => {
                    tls_status.renewing = None;
                    ctx.event_about(
                        nc,
                        EventType::Normal,
                        "CertificateRenewed",
                        format!("{pod} serves its new certificate"),
                        Some(&pod),
                    )
                    .await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(cluster = %nc.name_any(), pod, error = %e, "renewal: not served yet")
                }
            }
        }
    }
    let seen: Vec<certs::MemberCerts> = pods
        .iter()
        .map(|p| certs::member_certs(&data, &annotations, p))
        .collect();
    let healthy = health
        .is_some_and(|h| h.members.iter().any(|m| m.leader) && h.members.iter().all(|m| m.healthy));
    let due = certs::due(
        &seen,
        now,
        renew_before,
        request.as_deref(),
        tls_status.renewing.as_deref(),
    );
    for due in due {
        let (pod, renewal) = match due {
            Due::Missing(p) => (p, false),
            // Renewals wait for a healthy cluster: the member whose
            // certificates change must not be the one that costs quorum.
            Due::Renew(p) if healthy => (p, true),
            Due::Renew(_) => continue,
        };
        if let Err(e) = certs::issue_member(ca, nc, &pod, validity, &mut data) {
            findings
                .errors
                .push(format!("issuing {pod}'s certificates: {e}"));
            continue;
        }
        let mark = format!("{}{pod}", certs::RENEWED_PREFIX);
        match &request {
            Some(r) => annotations.insert(mark, r.clone()),
            None => annotations.remove(&mark),
        };
        if renewal {
            tls_status.renewing = Some(pod.clone());
            ctx.event_about(
                nc,
                EventType::Normal,
                "RenewingCertificate",
                format!(
                    "issued new certificates for {pod}; the next member waits until it serves them"
                ),
                Some(&pod),
            )
            .await;
        }
    }
    if (data.clone(), annotations.clone()) != before {
        if let Err(e) = apply_secret(nc, ctx, &member_name, "Opaque", &data, &annotations).await {
            findings.kube(&format!("writing the Secret {member_name}"), &e);
        }
    }
    let earliest = pods
        .iter()
        .filter_map(|p| certs::member_certs(&data, &annotations, p).not_after)
        .chain(prepared.earliest)
        .min();
    tls_status.not_after =
        earliest.and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t).ok().map(Time));
    if let Some(r) = &request {
        let all = pods
            .iter()
            .all(|p| annotations.get(&format!("{}{p}", certs::RENEWED_PREFIX)) == Some(r));
        if all && tls_status.renewing.is_none() {
            tls_status.renewed_for = Some(r.clone());
        }
    }
}

/// A client certificate for `user` in Secret `name` (kubernetes.io/tls with
/// `ca.crt`), issued when missing, due, or from another CA.
async fn client_certificate<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    ca: &Ca,
    name: &str,
    user: &str,
    (validity, renew_before): (i64, i64),
    findings: &mut Findings,
) -> Option<Pems> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &nc.namespace().unwrap_or_default());
    let existing = match api.get_opt(name).await {
        Ok(s) => s.as_ref().map(secret_strings).unwrap_or_default(),
        Err(e) => {
            findings.kube(&format!("reading the Secret {name}"), &e);
            return None;
        }
    };
    let same_ca = existing.get(certs::CA_CERT) == Some(&ca.cert_pem);
    if same_ca
        && certs::still_good(
            existing.get(certs::TLS_CERT).map(String::as_str),
            unix_now(),
            renew_before,
        )
        .is_some()
    {
        if let (Some(cert), Some(key)) =
            (existing.get(certs::TLS_CERT), existing.get(certs::TLS_KEY))
        {
            return Some(Pems {
                ca: ca.cert_pem.clone(),
                cert: cert.clone(),
                key: key.clone(),
            });
        }
    }
    let issued = match certs::issue(ca, user, &[], Usage::Client, validity) {
        Ok(i) => i,
        Err(e) => {
            findings
                .errors
                .push(format!("issuing the client certificate of {user}: {e}"));
            return None;
        }
    };
    let data = BTreeMap::from([
        (certs::CA_CERT.to_string(), ca.cert_pem.clone()),
        (certs::TLS_CERT.to_string(), issued.cert_pem.clone()),
        (certs::TLS_KEY.to_string(), issued.key_pem.clone()),
    ]);
    if let Err(e) = apply_secret(nc, ctx, name, "kubernetes.io/tls", &data, &BTreeMap::new()).await
    {
        findings.kube(&format!("writing the Secret {name}"), &e);
        return None;
    }
    Some(Pems {
        ca: ca.cert_pem.clone(),
        cert: issued.cert_pem,
        key: issued.key_pem,
    })
}

/// `certManager`: applies the Certificates; a missing cert-manager is a
/// condition, not an error.
async fn apply_certificates<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    findings: &mut Findings,
) {
    let ar = ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    };
    let ns = nc.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
    for cert in render::certificates(nc) {
        let name = cert["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match api
            .patch(
                &name,
                &PatchParams::apply(render::MANAGER).force(),
                &Patch::Apply(&cert),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                findings.not_applied.push((
                    "CertManagerMissing",
                    "tls.mode certManager: cert-manager's Certificate CRD (cert-manager.io/v1) is not installed".into(),
                ));
                return;
            }
            Err(e) => findings.kube(&format!("applying the Certificate {name}"), &e),
        }
    }
}

/// A kubernetes.io/tls Secret with `ca.crt`, as cert-manager writes them.
async fn read_tls_secret<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    name: &str,
    findings: &mut Findings,
) -> Option<Pems> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &nc.namespace().unwrap_or_default());
    match api.get_opt(name).await {
        Ok(Some(s)) => {
            let d = secret_strings(&s);
            match (
                d.get(certs::CA_CERT),
                d.get(certs::TLS_CERT),
                d.get(certs::TLS_KEY),
            ) {
                (Some(ca), Some(cert), Some(key)) => Some(Pems {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => {
                    findings.not_applied.push((
                        "CertificatesPending",
                        format!("Secret {name} lacks ca.crt, tls.crt or tls.key"),
                    ));
                    None
                }
            }
        }
        Ok(None) => {
            findings
                .not_applied
                .push(("CertificatesPending", format!("waiting for Secret {name}")));
            None
        }
        Err(e) => {
            findings.kube(&format!("reading the Secret {name}"), &e);
            None
        }
    }
}

/// Writes the operator's certificate, key and CA for this cluster as files
/// (mode 0600) that its client loads, and reloads when they change.
fn write_operator_files<A: ClusterApi>(
    ctx: &Context<A>,
    nc: &NodCluster,
    p: &Pems,
) -> std::io::Result<TlsOptions> {
    let dir: PathBuf = ctx
        .state_dir
        .join(nc.namespace().unwrap_or_default())
        .join(nc.name_any());
    std::fs::create_dir_all(&dir)?;
    let mut paths = Vec::new();
    for (file, content) in [("ca.crt", &p.ca), ("tls.crt", &p.cert), ("tls.key", &p.key)] {
        let path = dir.join(file);
        if std::fs::read(&path).ok().as_deref() != Some(content.as_bytes()) {
            nod_client::pki::write_file(&path, content.as_bytes(), 0o600)?;
        }
        paths.push(path);
    }
    let [ca, cert, key]: [PathBuf; 3] = paths.try_into().unwrap_or_default();
    Ok(TlsOptions {
        ca_file: Some(ca),
        cert_file: Some(cert),
        key_file: Some(key),
        insecure_skip_verify: false,
    })
}

/// Turns authentication on or off as `spec.auth` says, once the cluster
/// has a leader. Asked of the cluster every time (cheap), so auth disabled
/// by hand is turned on again.
pub(crate) async fn reconcile_auth<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    target: &Target,
    health: Option<&Health>,
    status: &mut NodClusterStatus,
    findings: &mut Findings,
) {
    if !health.is_some_and(|h| h.members.iter().any(|m| m.leader)) {
        return;
    }
    let wanted = nc.spec.auth.as_ref().filter(|a| a.enabled);
    if wanted.is_none() && !status.auth_enabled {
        return;
    }
    let on = match ctx.api.auth_enabled(target).await {
        Ok(on) => on,
        Err(e) => {
            findings.errors.push(format!("auth status: {e}"));
            return;
        }
    };
    match wanted {
        Some(auth) if !on => {
            let secret = &auth.root_password_secret;
            let password = match read_key(nc, ctx, &secret.name, &secret.key).await {
                Ok(p) => p,
                Err(e) => {
                    findings.not_applied.push(("RootPasswordMissing", e));
                    return;
                }
            };
            match ctx.api.enable_auth(target, &password).await {
                Ok(()) => {
                    status.auth_enabled = true;
                    ctx.event(
                        nc,
                        EventType::Normal,
                        "AuthEnabled",
                        "authentication is on; root's password is in the Secret named by spec.auth"
                            .into(),
                    )
                    .await;
                }
                Err(e) => findings
                    .errors
                    .push(format!("enabling authentication: {e}")),
            }
        }
        Some(_) => status.auth_enabled = true,
        None if on => match ctx.api.disable_auth(target).await {
            Ok(()) => {
                status.auth_enabled = false;
                ctx.event(
                    nc,
                    EventType::Normal,
                    "AuthDisabled",
                    "authentication is off".into(),
                )
                .await;
            }
            Err(e) => findings
                .errors
                .push(format!("disabling authentication: {e}")),
        },
        None => status.auth_enabled = false,
    }
}

/// One key of a Secret, as text.
async fn read_key<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    name: &str,
    key: &str,
) -> Result<String, String> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &nc.namespace().unwrap_or_default());
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading the Secret {name}: {e}"))?
        .ok_or_else(|| format!("the Secret {name} does not exist"))?;
    let value = secret_strings(&secret)
        .remove(key)
        .ok_or_else(|| format!("the Secret {name} has no key {key:?}"))?;
    let value = value.trim_end_matches(['\r', '\n']).to_string();
    if value.is_empty() {
        return Err(format!("the Secret {name}'s key {key:?} is empty"));
    }
    Ok(value)
}

/// The Secret `name`'s data; made with `make` first if it does not exist
/// (created, never overwritten: a concurrent creation wins and is read).
async fn create_if_missing<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    name: &str,
    type_: &str,
    make: impl FnOnce() -> Result<BTreeMap<String, String>, String>,
) -> Result<BTreeMap<String, String>, String> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &nc.namespace().unwrap_or_default());
    if let Some(s) = api.get_opt(name).await.map_err(|e| e.to_string())? {
        return Ok(secret_strings(&s));
    }
    let data = make()?;
    let secret = secret(nc, name, type_, &data, &BTreeMap::new());
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(data),
        Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(name).await {
            Ok(Some(s)) => Ok(secret_strings(&s)),
            Ok(None) => Err("created and deleted at once".into()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    }
}

async fn apply_secret<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    name: &str,
    type_: &str,
    data: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &nc.namespace().unwrap_or_default());
    api.patch(
        name,
        &PatchParams::apply(render::MANAGER).force(),
        &Patch::Apply(&secret(nc, name, type_, data, annotations)),
    )
    .await?;
    Ok(())
}

fn secret(
    nc: &NodCluster,
    name: &str,
    type_: &str,
    data: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Secret {
    let mut s: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": nc.namespace(),
            "labels": render::labels(nc),
            "ownerReferences": [nc.controller_owner_ref(&())],
        },
        "type": type_,
    }))
    .unwrap_or_default();
    if !annotations.is_empty() {
        s.metadata.annotations = Some(annotations.clone());
    }
    s.data = Some(
        data.iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
            .collect(),
    );
    s
}

/// A Secret's data as text (certificates and keys are PEM; anything that
/// is not UTF-8 is left out and so counts as missing).
fn secret_strings(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
