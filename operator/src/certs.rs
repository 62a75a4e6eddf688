//! `spec.tls.mode: auto`: the certificates the operator makes with its own
//! CA, and when it renews them. Pure: the CA comes in, Secret contents and
//! decisions come out; `security.rs` reads and writes the Secrets.
//!
//! Every member has a server certificate (the client port: its own name,
//! the client Service's names, loopback) and a peer certificate (the peer
//! port, served and shown when dialing: its own name), both in the one
//! Secret every member mounts, named by the pod (`<pod>-server.crt`, ...),
//! since a StatefulSet's pods share one template. A certificate is renewed
//! `renewBeforeHours` before it expires, or when the NodCluster's
//! `nod.io/renew-certificates` annotation asks, one member at a time: the
//! next only once the previous serves its new certificate.

use std::collections::BTreeMap;

use kube::ResourceExt;
use nod_client::pki::{inspect, Ca, Issued, PkiError, Usage};

use crate::crd::NodCluster;
use crate::render;

/// The annotation that asks for every member's certificates to be renewed
/// now (any new value asks again).
pub const RENEW_ANNOTATION: &str = "nod.io/renew-certificates";
/// Annotation prefix on the member Secret: `renewed.nod.io/<pod>` holds the
/// renewal request that member's certificates were last issued for.
pub const RENEWED_PREFIX: &str = "renewed.nod.io/";

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// The common name of the operator's own client certificate: with auth on
/// and `--client-cert-auth`, a certificate's common name is its user.
pub const OPERATOR_USER: &str = "root";

pub fn server_cert(pod: &str) -> String {
    format!("{pod}-server.crt")
}
pub fn server_key(pod: &str) -> String {
    format!("{pod}-server.key")
}
pub fn peer_cert(pod: &str) -> String {
    format!("{pod}-peer.crt")
}
pub fn peer_key(pod: &str) -> String {
    format!("{pod}-peer.key")
}

/// What the operator knows of one member's certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberCerts {
    pub pod: String,
    /// The earlier expiry of its two certificates (Unix seconds); `None`
    /// when either is missing or does not parse.
    pub not_after: Option<i64>,
    /// The renewal request they were issued for.
    pub renewed_for: Option<String>,
}

/// Why a member's certificates are issued now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    /// None yet (a new member) or unreadable: issued at once, no waiting.
    Missing(String),
    /// Expiring, or asked for by the annotation: one member at a time.
    Renew(String),
}

/// The members whose certificates are missing, and the one member to renew
/// next (if any, and if no renewal is in flight). `request` is the renewal
/// annotation's value.
pub fn due(
    members: &[MemberCerts],
    now: i64,
    renew_before_secs: i64,
    request: Option<&str>,
    renewing: Option<&str>,
) -> Vec<Due> {
    let mut out: Vec<Due> = members
        .iter()
        .filter(|m| m.not_after.is_none())
        .map(|m| Due::Missing(m.pod.clone()))
        .collect();
    if renewing.is_none() {
        let next = members.iter().find(|m| match m.not_after {
            None => false,
            Some(t) => {
                t - now <= renew_before_secs
                    || request.is_some_and(|r| m.renewed_for.as_deref() != Some(r))
            }
        });
        out.extend(next.map(|m| Due::Renew(m.pod.clone())));
    }
    out
}

/// The expiry of a client certificate (PEM) if it is valid for the CA and
/// not due; `None` when it must be issued (absent, unreadable, expiring).
pub fn still_good(cert_pem: Option<&str>, now: i64, renew_before_secs: i64) -> Option<i64> {
    let i = inspect(cert_pem?).ok()?;
    (i.not_after - now > renew_before_secs).then_some(i.not_after)
}

/// Reads one member's certificates from the member Secret's data.
pub fn member_certs(
    data: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    pod: &str,
) -> MemberCerts {
    let expiry = |name: String| -> Option<i64> {
        let pem = data.get(&name)?;
        inspect(pem).ok().map(|i| i.not_after)
    };
    let keys_there = data.contains_key(&server_key(pod)) && data.contains_key(&peer_key(pod));
    let not_after = match (expiry(server_cert(pod)), expiry(peer_cert(pod))) {
        (Some(a), Some(b)) if keys_there => Some(a.min(b)),
        _ => None,
    };
    MemberCerts {
        pod: pod.to_string(),
        not_after,
        renewed_for: annotations.get(&format!("{RENEWED_PREFIX}{pod}")).cloned(),
    }
}

/// Issues a member's server and peer certificates into `data`.
pub fn issue_member(
    ca: &Ca,
    nc: &NodCluster,
    pod: &str,
    validity_secs: i64,
    data: &mut BTreeMap<String, String>,
) -> Result<(), PkiError> {
    let server = issue(
        ca,
        pod,
        &render::member_sans(nc, pod, true),
        Usage::Server,
        validity_secs,
    )?;
    let peer = issue(
        ca,
        pod,
        &render::member_sans(nc, pod, false),
        Usage::Peer,
        validity_secs,
    )?;
    data.insert(server_cert(pod), server.cert_pem);
    data.insert(server_key(pod), server.key_pem);
    data.insert(peer_cert(pod), peer.cert_pem);
    data.insert(peer_key(pod), peer.key_pem);
    Ok(())
}

/// A certificate valid from an hour ago (clock skew) for `validity_secs`.
pub fn issue(
    ca: &Ca,
    cn: &str,
    sans: &[String],
    usage: Usage,
    validity_secs: i64,
) -> Result<Issued, PkiError> {
    let now = time::OffsetDateTime::now_utc();
    Ok(ca.issue_between(
        cn,
        sans,
        usage,
        now - time::Duration::hours(1),
        now + time::Duration::seconds(validity_secs),
    )?)
}

/// Removes the certificates of members at or above `members` (scaled
/// away), so a later pod of that name gets fresh ones.
pub fn forget_members_from(
    data: &mut BTreeMap<String, String>,
    annotations: &mut BTreeMap<String, String>,
    nc: &NodCluster,
    members: i32,
) {
    // What member pod names start with.
    let name = format!("{}-", nc.name_any());
    data.retain(|k, _| match member_ordinal(k, &name) {
        Some(i) => i < members,
        None => true,
    });
    annotations.retain(|k, _| match k.strip_prefix(RENEWED_PREFIX) {
        Some(pod) => {
            member_ordinal(&format!("{pod}-server.crt"), &name).is_none_or(|i| i < members)
        }
        None => true,
    });
}

/// The ordinal of a member file name (`<name>-<i>-server.crt`, ...).
fn member_ordinal(file: &str, prefix: &str) -> Option<i32> {
    let rest = file.strip_prefix(prefix)?;
    let (ordinal, kind) = rest.split_once('-')?;
    if !["server.crt", "server.key", "peer.crt", "peer.key"].contains(&kind) {
        return None;
    }
    ordinal.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pod: &str, not_after: Option<i64>, renewed_for: Option<&str>) -> MemberCerts {
        MemberCerts {
            pod: pod.into(),
            not_after,
            renewed_for: renewed_for.map(str::to_string),
        }
    }

    const DAY: i64 = 86_400;

    #[test]
    fn which_members_are_issued_and_renewed() {
        let now = 1_000 * DAY;
        let before = 30 * DAY;
        let fresh = Some(now + 80 * DAY);
        let expiring = Some(now + 10 * DAY);
        type Case<'a> = (
            &'a str,
            Vec<MemberCerts>,
            Option<&'a str>,
            Option<&'a str>,
            Vec<Due>,
        );
        let cases: Vec<Case> = vec![
            (
                "all fresh",
                vec![m("a-0", fresh, None), m("a-1", fresh, None)],
                None,
                None,
                vec![],
            ),
            (
                "a new member is issued at once, even while another renews",
                vec![m("a-0", fresh, None), m("a-1", None, None)],
                None,
                Some("a-0"),
                vec![Due::Missing("a-1".into())],
            ),
            (
                "expiring: the first one only",
                vec![
                    m("a-0", fresh, None),
                    m("a-1", expiring, None),
                    m("a-2", expiring, None),
                ],
                None,
                None,
                vec![Due::Renew("a-1".into())],
            ),
            (
                "expiring, but a renewal is in flight",
                vec![m("a-0", fresh, None), m("a-1", expiring, None)],
                None,
                Some("a-0"),
                vec![],
            ),
            (
                "exactly at the renewal point",
                vec![m("a-0", Some(now + before), None)],
                None,
                None,
                vec![Due::Renew("a-0".into())],
            ),
            (
                "asked for: the members not renewed for this request, one by one",
                vec![
                    m("a-0", fresh, Some("r1")),
                    m("a-1", fresh, Some("r0")),
                    m("a-2", fresh, None),
                ],
                Some("r1"),
                None,
                vec![Due::Renew("a-1".into())],
            ),
            (
                "asked for and done",
                vec![m("a-0", fresh, Some("r1")), m("a-1", fresh, Some("r1"))],
                Some("r1"),
                None,
                vec![],
            ),
        ];
        for (what, members, request, renewing, want) in cases {
            assert_eq!(
                due(&members, now, before, request, renewing),
                want,
                "{what}"
            );
        }
    }

    fn demo() -> NodCluster {
        let mut nc = NodCluster::new("demo", serde_yaml::from_str("{tls: {mode: auto}}").unwrap());
        nc.metadata.namespace = Some("prod".into());
        nc
    }

    #[test]
    fn member_certificates_carry_the_pod_names_and_are_read_back() {
        let ca = Ca::new("demo CA").unwrap();
        let nc = demo();
        let mut data = BTreeMap::new();
        issue_member(&ca, &nc, "demo-1", 2 * DAY, &mut data).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let seen = member_certs(&data, &BTreeMap::new(), "demo-1");
        let t = seen.not_after.expect("both certificates read");
        assert!((t - (now + 2 * DAY)).abs() < 60, "{t} vs {now}");
        assert_eq!(
            member_certs(&data, &BTreeMap::new(), "demo-0").not_after,
            None
        );
        let server = inspect(&data[&server_cert("demo-1")]).unwrap();
        assert_eq!(server.common_name.as_deref(), Some("demo-1"));
        // A key missing: the pair is incomplete, so it is issued again.
        data.remove(&peer_key("demo-1"));
        assert_eq!(
            member_certs(&data, &BTreeMap::new(), "demo-1").not_after,
            None
        );
    }

    #[test]
    fn scaled_away_members_lose_their_certificates() {
        let nc = demo();
        let mut data: BTreeMap<String, String> = [
            "ca.crt",
            "demo-0-server.crt",
            "demo-1-peer.key",
            "demo-2-server.crt",
            "demo-10-peer.crt",
            "demo-x-server.crt",
        ]
        .map(|k| (k.to_string(), String::new()))
        .into();
        let mut ann: BTreeMap<String, String> =
            ["renewed.nod.io/demo-0", "renewed.nod.io/demo-2", "other"]
                .map(|k| (k.to_string(), "r".to_string()))
                .into();
        forget_members_from(&mut data, &mut ann, &nc, 2);
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "ca.crt",
                "demo-0-server.crt",
                "demo-1-peer.key",
                "demo-x-server.crt"
            ]
        );
        let ann: Vec<&str> = ann.keys().map(String::as_str).collect();
        assert_eq!(ann, ["other", "renewed.nod.io/demo-0"]);
    }

    #[test]
    fn a_client_certificate_is_kept_until_its_renewal_point() {
        let ca = Ca::new("demo CA").unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let c = issue(&ca, "root", &[], Usage::Client, 10 * DAY).unwrap();
        assert!(still_good(Some(&c.cert_pem), now, 5 * DAY).is_some());
        assert!(still_good(Some(&c.cert_pem), now, 11 * DAY).is_none());
        assert!(still_good(None, now, DAY).is_none());
        assert!(still_good(Some("junk"), now, DAY).is_none());
    }
}
