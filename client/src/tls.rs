//! TLS on the client's connections (rustls with ring; no OpenSSL): the
//! options etcdctl spells `--cacert`, `--cert`, `--key` and
//! `--insecure-skip-tls-verify`, and the connector every channel dials
//! through. The files are read again for each new connection and used when
//! they changed, so a rotated client certificate (a member's peer
//! certificate, the operator's) is picked up without a restart; a new file
//! that does not load keeps the last good one, with a log line.
//!
//! `http://` endpoints dial plain TCP, `https://` ones TLS; a bare
//! `host:port` is `https://` when TLS options are set.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// Where a client's TLS material is, as etcdctl's flags name it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// CA bundle (PEM) the server's certificate must chain to; `None`: the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM, chain allowed) presented to the server.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (the connection is still encrypted,
    /// but not authenticated: for tests and first contact only).
    pub insecure_skip_verify: bool,
}

impl TlsOptions {
    /// True when any option is set: bare `host:port` endpoints then dial TLS.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.insecure_skip_verify
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("a client certificate needs its key: give both --cert and --key, or neither")]
    HalfPair,
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every Nod TLS configuration uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    })
}

/// Every certificate in a PEM file; at least one.
pub fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            what: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            path: path.to_path_buf(),
            what: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Invalid {
        path: path.to_path_buf(),
        what: format!("no private key in the file: {e}"),
    })
}

/// A root store of every certificate in a PEM CA bundle.
pub fn roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path, pem)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Builds a configuration from the files' contents, in the files' order.
type Builder<T> = Box<dyn Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync>;

/// Files whose contents decide a configuration, and the configuration
/// last built from them: `current` reads them again and rebuilds only when
/// a byte changed; a change that does not build keeps the last good one.
pub struct Reloading<T> {
    files: Vec<PathBuf>,
    build: Builder<T>,
    state: Mutex<Loaded<T>>,
}

struct Loaded<T> {
    contents: Vec<Vec<u8>>,
    value: Arc<T>,
    /// Contents that failed to build, so the failure is logged once.
    rejected: Option<Vec<Vec<u8>>>,
}

impl<T> Reloading<T> {
    /// Loads the files and builds once: a failure here is the caller's
    /// (a server refuses to start with it).
    pub fn new(
        files: Vec<PathBuf>,
        build: impl Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, TlsError> {
        let contents = files
            .iter()
            .map(|p| read(p))
            .collect::<Result<Vec<_>, _>>()?;
        let value = Arc::new(build(&contents)?);
        Ok(Reloading {
            files,
            build: Box::new(build),
            state: Mutex::new(Loaded {
                contents,
                value,
                rejected: None,
            }),
        })
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<T> {
        let contents: Result<Vec<Vec<u8>>, TlsError> = self.files.iter().map(|p| read(p)).collect();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let contents = match contents {
            Ok(c) => c,
            Err(e) => {
                // A file half-way through a rotation (removed before it is
                // replaced): keep serving what was loaded.
                tracing::debug!(error = %e, "TLS files unreadable; keeping the loaded ones");
                return st.value.clone();
            }
        };
        if contents == st.contents || st.rejected.as_ref() == Some(&contents) {
            return st.value.clone();
        }
        match (self.build)(&contents) {
            Ok(v) => {
                tracing::info!(files = ?self.files, "TLS files changed; loaded them");
                st.value = Arc::new(v);
                st.contents = contents;
                st.rejected = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, files = ?self.files, "TLS files changed but do not load; keeping the previous ones");
                st.rejected = Some(contents);
            }
        }
        st.value.clone()
    }
}

/// The client side's configuration, reloaded from its files.
pub struct ClientTls {
    config: Reloading<ClientConfig>,
}

impl ClientTls {
    pub fn new(opts: &TlsOptions) -> Result<ClientTls, TlsError> {
        if opts.cert_file.is_some() != opts.key_file.is_some() {
            return Err(TlsError::HalfPair);
        }
        let mut files = Vec::new();
        files.extend(opts.ca_file.clone());
        files.extend(opts.cert_file.clone());
        files.extend(opts.key_file.clone());
        let o = opts.clone();
        let config = Reloading::new(files, move |contents| client_config(&o, contents))?;
        Ok(ClientTls { config })
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.current()
    }
}

/// Builds a rustls client configuration from the contents of the files
/// `opts` names, in the order CA, certificate, key.
fn client_config(opts: &TlsOptions, contents: &[Vec<u8>]) -> Result<ClientConfig, TlsError> {
    let mut contents = contents.iter();
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)?;
    let builder = if opts.insecure_skip_verify {
        // Still reads the CA file (so a wrong path is an error), but trusts any server.
        if opts.ca_file.is_some() {
            contents.next();
        }
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
    } else if let Some(ca) = &opts.ca_file {
        let pem = contents.next().map(Vec::as_slice).unwrap_or_default();
        builder.with_root_certificates(roots(ca, pem)?)
    } else {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        builder.with_root_certificates(roots)
    };
    let mut config = match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key_path)) => {
            let cert_pem = contents.next().map(Vec::as_slice).unwrap_or_default();
            let key_pem = contents.next().map(Vec::as_slice).unwrap_or_default();
            builder.with_client_auth_cert(certs(cert, cert_pem)?, key(key_path, key_pem)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// `--insecure-skip-tls-verify`: any certificate, any name; signatures are
/// still checked, so the handshake proves the server has the key it shows.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection: plain TCP, or TLS over it.
pub type Stream = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The configuration for `https://` endpoints dialed without TLS options:
/// the system's roots, no client certificate; loaded once per process.
fn system_roots() -> Result<Arc<ClientTls>, TlsError> {
    static ROOTS: std::sync::OnceLock<Arc<ClientTls>> = std::sync::OnceLock::new();
    if let Some(t) = ROOTS.get() {
        return Ok(t.clone());
    }
    let t = Arc::new(ClientTls::new(&TlsOptions::default())?);
    Ok(ROOTS.get_or_init(|| t).clone())
}

/// Dials an endpoint's URI: TCP (no Nagle), then TLS when the scheme is
/// `https`, verifying the server's certificate against the URI's host.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<Arc<ClientTls>>,
}

impl Connector {
    /// `tls`: the client's TLS configuration; `None` dials `https://` with
    /// the system's roots and no client certificate.
    pub fn new(tls: Option<Arc<ClientTls>>) -> Connector {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        Connector { http, tls }
    }

    /// A lazily connected channel to `url` through this connector.
    pub fn channel(&self, endpoint: tonic::transport::Endpoint) -> tonic::transport::Channel {
        endpoint.connect_with_connector_lazy(self.clone())
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or_default().to_string();
        let tls = self.tls.clone();
        let connect = self.http.call(uri);
        Box::pin(async move {
            let tcp = connect.await?.into_inner();
            if !https {
                return Ok(TokioIo::new(Either::Left(tcp)));
            }
            let config = match tls {
                Some(t) => t.config(),
                None => system_roots()?.config(),
            };
            // `[::1]` in a URI is the address ::1.
            let name = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(name.to_string())
                .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(Either::Right(Box::new(tls))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn a_half_pair_is_refused() {
        let opts = TlsOptions {
            cert_file: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(matches!(ClientTls::new(&opts), Err(TlsError::HalfPair)));
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let opts = TlsOptions {
            ca_file: Some(missing.clone()),
            ..Default::default()
        };
        let e = ClientTls::new(&opts).err().unwrap().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let empty = write(dir.path(), "empty.pem", b"not pem at all");
        let opts = TlsOptions {
            ca_file: Some(empty),
            ..Default::default()
        };
        let e = ClientTls::new(&opts).err().unwrap().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no certificate"),
            "{e}"
        );
    }

    #[test]
    fn reloading_keeps_the_last_good_value_and_takes_a_good_change() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "n", b"1");
        let r = Reloading::new(vec![f.clone()], |c| {
            std::str::from_utf8(&c[0])
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or_else(|| TlsError::Invalid {
                    path: "n".into(),
                    what: "not a number".into(),
                })
        })
        .unwrap();
        assert_eq!(*r.current(), 1);
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(*r.current(), 1, "a bad change keeps the old value");
        std::fs::remove_file(&f).unwrap();
        assert_eq!(*r.current(), 1, "a missing file keeps the old value");
        std::fs::write(&f, b"2").unwrap();
        assert_eq!(*r.current(), 2, "a good change is taken");
    }
}
