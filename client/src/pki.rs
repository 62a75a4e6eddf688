//! A small certificate authority (feature `pki`): a CA and the certificates
//! it signs (ECDSA P-256), as PEM, written as files with the keys readable
//! by their owner only. `nod dev --tls`, the tests and the operator's
//! `spec.tls.mode: auto` use it; the operator keeps its CA in a Secret and
//! loads it back with `Ca::from_pem`. No I/O but `write`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// What a certificate is for (its extended key usage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A client port's certificate.
    Server,
    /// A client's certificate (its common name is the user).
    Client,
    /// A member's peer certificate: served on the peer port and shown when
    /// dialing other members, so both.
    Peer,
}

/// A certificate and its private key, in PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where `Issued::write` put the files.
#[derive(Clone, Debug)]
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Issued {
    /// Writes `<name>.pem` and `<name>-key.pem` (mode 0600) into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<Written> {
        std::fs::create_dir_all(dir)?;
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        write_file(&cert, self.cert_pem.as_bytes(), 0o644)?;
        write_file(&key, self.key_pem.as_bytes(), 0o600)?;
        Ok(Written { cert, key })
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so a
/// server re-reading it never sees half a file.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("not a PEM certificate")]
    NotPem,
    #[error("certificate does not parse: {0}")]
    Parse(String),
}

/// What `inspect` reads from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    pub common_name: Option<String>,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The DER encoding (to compare with what a server presents).
    pub der: Vec<u8>,
}

/// Reads the first certificate of `pem` (validated by the parser: a
/// malformed one is an error, never a panic).
pub fn inspect(pem: &str) -> Result<Inspected, PkiError> {
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| PkiError::NotPem)?;
    if block.label != "CERTIFICATE" {
        return Err(PkiError::NotPem);
    }
    let cert = block
        .parse_x509()
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(Inspected {
        common_name,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        der: block.contents.clone(),
    })
}

/// How long certificates from `Ca::issue` are valid by default.
pub const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "nod");
    dn
}

impl Ca {
    /// A new self-signed CA named `cn`, valid for ten years.
    pub fn new(cn: &str) -> Result<Ca, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA made earlier, from its certificate and key (PEM, as
    /// `cert_pem` and `key_pem` gave them).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// The CA's private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for `cn` with the subject alternative names `sans`
    /// (IP addresses or DNS names), valid from an hour ago for `VALIDITY`.
    pub fn issue(&self, cn: &str, sans: &[String], usage: Usage) -> Result<Issued, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        self.issue_between(
            cn,
            sans,
            usage,
            now - time::Duration::hours(1),
            now + time::Duration::seconds(VALIDITY.as_secs() as i64),
        )
    }

    /// As `issue`, valid between the two times (an expired certificate for
    /// a test, a short-lived one for rotation).
    pub fn issue_between(
        &self,
        cn: &str,
        sans: &[String],
        usage: Usage,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(sans.to_vec())?;
        params.distinguished_name = name(cn);
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Peer => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA certificate as `<name>.pem` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.pem"));
        write_file(&path, self.cert_pem.as_bytes(), 0o644)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    #[test]
    fn an_issued_certificate_carries_its_name_and_chains_to_its_ca() {
        let ca = Ca::new("test-ca").unwrap();
        let issued = ca.issue("alice", &[], Usage::Client).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            inspect(&issued.cert_pem).unwrap().common_name.as_deref(),
            Some("alice")
        );
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        let (_, ca_parsed) = x509_parser::parse_x509_certificate(ca_der.as_ref()).unwrap();
        assert_eq!(parsed.issuer(), ca_parsed.subject());
        assert!(parsed
            .verify_signature(Some(ca_parsed.public_key()))
            .is_ok());
        let other = Ca::new("other-ca").unwrap();
        let other_der = CertificateDer::from_pem_slice(other.cert_pem.as_bytes()).unwrap();
        let (_, other_parsed) = x509_parser::parse_x509_certificate(other_der.as_ref()).unwrap();
        assert!(parsed
            .verify_signature(Some(other_parsed.public_key()))
            .is_err());
    }

    #[test]
    fn a_ca_loaded_from_its_pem_signs_for_the_same_name() {
        let ca = Ca::new("cluster-ca").unwrap();
        let loaded = Ca::from_pem(&ca.cert_pem, &ca.key_pem()).unwrap();
        let issued = loaded.issue("m-0", &["m-0.x".into()], Usage::Peer).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        let (_, ca_parsed) = x509_parser::parse_x509_certificate(ca_der.as_ref()).unwrap();
        assert_eq!(parsed.issuer(), ca_parsed.subject());
        assert!(parsed
            .verify_signature(Some(ca_parsed.public_key()))
            .is_ok());
        let seen = inspect(&issued.cert_pem).unwrap();
        assert_eq!(seen.common_name.as_deref(), Some("m-0"));
        assert_eq!(seen.der, der.as_ref());
        let year = VALIDITY.as_secs() as i64;
        assert!((seen.not_after - seen.not_before - year - 3600).abs() < 5);
    }

    #[test]
    fn bad_pem_is_an_error() {
        assert!(inspect("").is_err());
        assert!(inspect("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
        let key = Ca::new("x").unwrap().key_pem();
        assert!(inspect(&key).is_err());
        assert!(Ca::from_pem("garbage", &key).is_err());
        assert!(Ca::from_pem(&Ca::new("y").unwrap().cert_pem, "garbage").is_err());
    }

    #[test]
    fn keys_are_written_for_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("ca").unwrap();
        let w = ca
            .issue("m", &["127.0.0.1".into()], Usage::Peer)
            .unwrap()
            .write(dir.path(), "m")
            .unwrap();
        let mode = std::fs::metadata(&w.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(std::fs::read_to_string(&w.cert)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
