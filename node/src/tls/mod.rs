//! TLS on the ports a member serves (client and peer), with etcd's flags:
//! the certificate and key, the CA that client certificates must chain to
//! when they are required, TLS versions, TLS 1.2 cipher suites and, on the
//! peer port, the one common name a peer's certificate must carry.
//!
//! The files are read again at every accepted connection and used when a
//! byte changed (a certificate rotated on disk is served without a
//! restart); a change that does not load keeps the previous files and logs
//! why, once. Handshakes run off the accept loop, with a deadline, so a
//! client that opens a socket and says nothing delays no one. A connection
//! that fails the handshake (no certificate, one from another CA, an
//! expired one, plain TCP) or shows the wrong common name is closed before
//! a byte of gRPC is read.
//!
//! The client side (the peer connections this member dials) is
//! `nod_client::tls`, which shares the file loading.

/// The small certificate authority of `nod dev --tls` and the tests.
pub use nod_client::pki;

mod gather_writes;
pub use gather_writes::{GatherWrites, GATHER_BELOW, GATHER_LIMIT};

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use nod_client::tls::{
    certs, key, provider, roots, ClientTls, Connector, Reloading, TlsError, TlsOptions,
};
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

/// How long a new connection may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS version, as etcd's `--tls-min-version` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    fn rustls(self) -> &'static SupportedProtocolVersion {
        match self {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        }
    }
}

/// One port's TLS settings.
#[derive(Clone, Debug)]
pub struct ServerTlsOptions {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA bundle client certificates must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate from `trusted_ca_file` (etcd's
    /// `--client-cert-auth`, `--peer-client-cert-auth`).
    pub client_cert_auth: bool,
    /// Only a client certificate with this common name is let in (etcd's
    /// `--peer-cert-allowed-cn`).
    pub allowed_cn: Option<String>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 cipher suites allowed (IANA or Go names); empty: rustls's
    /// defaults. TLS 1.3's suites are not configurable (as in Go).
    pub cipher_suites: Vec<String>,
    /// ALPN protocols offered: `h2` for gRPC, `http/1.1` for metrics.
    pub alpn: Vec<Vec<u8>>,
}

impl ServerTlsOptions {
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> ServerTlsOptions {
        ServerTlsOptions {
            cert_file,
            key_file,
            trusted_ca_file: None,
            client_cert_auth: false,
            allowed_cn: None,
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
            alpn: vec![b"h2".to_vec()],
        }
    }
}

/// A `--cipher-suites` name this build cannot use.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SuiteError {
    #[error("cipher suite {0} is a TLS 1.3 suite; those are always on and not configurable")]
    Tls13(String),
    #[error("unsupported cipher suite {name:?}; supported: {supported}")]
    Unsupported { name: String, supported: String },
}

/// Why an accepted connection was closed before any request was read.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("TLS handshake timed out")]
    Timeout,
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("peer certificate's common name {found:?} is not the allowed {allowed:?}")]
    CommonName {
        found: Option<String>,
        allowed: String,
    },
}

/// The TLS 1.2 suites named (IANA names, or Go's older names without the
/// hash), checked against what this build supports.
pub fn cipher_suites(names: &[String]) -> Result<Vec<SupportedCipherSuite>, SuiteError> {
    let all = rustls::crypto::ring::DEFAULT_CIPHER_SUITES;
    let mut out = Vec::new();
    for name in names {
        let name = name.trim();
        let found = all.iter().find(|s| {
            let iana = s.suite().as_str().unwrap_or_default();
            iana == name || iana.strip_suffix("_SHA256") == Some(name)
        });
        match found {
            Some(s) if s.version() == &rustls::version::TLS12 => out.push(*s),
            Some(_) => return Err(SuiteError::Tls13(name.to_string())),
            None => {
                let supported: Vec<&str> = all
                    .iter()
                    .filter(|s| s.version() == &rustls::version::TLS12)
                    .filter_map(|s| s.suite().as_str())
                    .collect();
                return Err(SuiteError::Unsupported {
                    name: name.to_string(),
                    supported: supported.join(", "),
                });
            }
        }
    }
    Ok(out)
}

fn server_config(o: &ServerTlsOptions, contents: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
    let mut provider = (*provider()).clone();
    let tls12 = cipher_suites(&o.cipher_suites).map_err(|e| TlsError::Invalid {
        path: PathBuf::from("--cipher-suites"),
        what: e.to_string(),
    })?;
    if !tls12.is_empty() {
        provider
            .cipher_suites
            .retain(|s| s.version() == &rustls::version::TLS13 || tls12.contains(s));
    }
    let provider = Arc::new(provider);
    let versions: Vec<&'static SupportedProtocolVersion> = [TlsVersion::Tls12, TlsVersion::Tls13]
        .into_iter()
        .filter(|v| *v >= o.min_version && *v <= o.max_version)
        .map(TlsVersion::rustls)
        .collect();
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    let builder = match (&o.trusted_ca_file, o.client_cert_auth) {
        (Some(ca), true) => {
            let roots = roots(ca, &contents[2])?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Invalid {
                    path: ca.clone(),
                    what: format!("cannot verify clients with it: {e}"),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(
        certs(&o.cert_file, &contents[0])?,
        key(&o.key_file, &contents[1])?,
    )?;
    config.alpn_protocols = o.alpn.clone();
    Ok(config)
}

/// A port's TLS, reloaded from its files.
pub struct ServerTls {
    config: Reloading<ServerConfig>,
    allowed_cn: Option<String>,
}

impl ServerTls {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn new(o: &ServerTlsOptions) -> Result<ServerTls, TlsError> {
        let mut files = vec![o.cert_file.clone(), o.key_file.clone()];
        if o.client_cert_auth {
            files.extend(o.trusted_ca_file.clone());
        }
        let opts = o.clone();
        Ok(ServerTls {
            config: Reloading::new(files, move |c| server_config(&opts, c))?,
            allowed_cn: o.allowed_cn.clone(),
        })
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<Stream, Refused> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.current());
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| Refused::Timeout)?
            .map_err(Refused::Handshake)?;
        if let Some(allowed) = &self.allowed_cn {
            let cn = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(common_name);
            if cn.as_deref() != Some(allowed.as_str()) {
                return Err(Refused::CommonName {
                    found: cn,
                    allowed: allowed.clone(),
                });
            }
        }
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// The subject common name of a DER certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// What a request's handler can learn about its connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The client's certificate chain, end entity first (TLS with client
    /// certificates only).
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The port it came in on: `"client"`, `"peer"` or `"metrics"`.
    pub port: &'static str,
}

impl ConnInfo {
    /// The client certificate's common name: etcd's user under
    /// `--client-cert-auth`.
    pub fn common_name(&self) -> Option<String> {
        self.certs.as_ref()?.first().and_then(common_name)
    }
}

/// An accepted connection's bytes: plain TCP, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection and the port (`"client"`, `"peer"`,
/// `"metrics"`) it came in on.
pub struct Conn {
    /// Its writes of one scheduler turn leave together (`GatherWrites`).
    stream: GatherWrites<Stream>,
    port: &'static str,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        let port = self.port;
        match self.stream.get_ref() {
            Stream::Plain(s) => ConnInfo {
                remote: s.peer_addr().ok(),
                certs: None,
                port,
            },
            Stream::Tls(s) => {
                let (tcp, session) = s.get_ref();
                ConnInfo {
                    port,
                    remote: tcp.peer_addr().ok(),
                    certs: session
                        .peer_certificates()
                        .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect())),
                }
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The connections a listener accepts, TLS-terminated when `tls` is set.
/// The accept loop ends when the stream is dropped (the server stopped),
/// which closes the listening socket if this held its last reference.
pub fn incoming(
    listener: Arc<TcpListener>,
    tls: Option<Arc<ServerTls>>,
    port: &'static str,
) -> impl futures::Stream<Item = io::Result<Conn>> {
    let (tx, rx) = mpsc::channel::<io::Result<Conn>>(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pass it on
                    // (hyper's server logs and goes on accepting).
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            // Small request/response frames: without TCP_NODELAY, Nagle and
            // delayed ACKs add ~40 ms to a lone request.
            let _ = tcp.set_nodelay(true);
            match &tls {
                None => {
                    if tx
                        .send(Ok(Conn {
                            stream: GatherWrites::new(Stream::Plain(tcp)),
                            port,
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(tls) => {
                    let (tls, tx) = (tls.clone(), tx.clone());
                    tokio::spawn(async move {
                        match tls.handshake(tcp).await {
                            Ok(stream) => {
                                let stream = GatherWrites::new(stream);
                                let _ = tx.send(Ok(Conn { stream, port })).await;
                            }
                            Err(e) => {
                                tracing::warn!(port, %remote, "refused a connection: {e}");
                            }
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Dials other members: their peer ports, with this member's peer
/// certificate (as a client certificate) and the peer CA, when peer TLS is
/// on; plain TCP otherwise. One per member, shared by the Raft transport,
/// snapshot streams, the bootstrap agreement, joining and forwarding.
#[derive(Clone)]
pub struct Dialer {
    connector: Connector,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dialer")
    }
}

impl Dialer {
    /// With `tls`, dials `https://` peer URLs with it.
    pub fn new(tls: Option<&TlsOptions>) -> Result<Dialer, TlsError> {
        let tls = match tls {
            Some(t) => Some(Arc::new(ClientTls::new(t)?)),
            None => None,
        };
        Ok(Dialer {
            connector: Connector::new(tls),
        })
    }

    /// The client options a member dials its peers with: its peer
    /// certificate and the peer CA.
    pub fn peer_options(peer: &ServerTlsOptions) -> TlsOptions {
        TlsOptions {
            ca_file: peer.trusted_ca_file.clone(),
            cert_file: Some(peer.cert_file.clone()),
            key_file: Some(peer.key_file.clone()),
            insecure_skip_verify: false,
        }
    }

    /// A channel that connects on first use (and again after a failure).
    pub fn lazy(&self, endpoint: Endpoint) -> Channel {
        peer_http2(endpoint).connect_with_connector_lazy(self.connector.clone())
    }

    /// A channel connected now.
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        peer_http2(endpoint)
            .connect_with_connector(self.connector.clone())
            .await
    }

    /// Connects to `url` with a one-second connect timeout.
    pub async fn connect_url(&self, url: &str) -> Result<Channel, tonic::transport::Error> {
        let endpoint =
            Endpoint::from_shared(url.to_string())?.connect_timeout(Duration::from_secs(1));
        self.connect(endpoint).await
    }
}

/// HTTP/2 as a member uses it to its peers. h2 closes a connection
/// (GOAWAY, ENHANCE_YOUR_CALM) once it has reset 1024 streams in its
/// lifetime for frames that came after it forgot them, a guard against a
/// hostile peer. A follower's one connection to the leader carries every
/// call it forwards, and calls it forwards end early all the time (etcd's
/// `KeepAliveOnce` reads one answer and cancels): under load a healthy
/// connection reached the cap and failed every forwarded call on it
/// (etcd's benchmark tool saw ResourceExhausted). Peers are members that
/// showed a peer certificate when TLS is on; the cap is off for them.
fn peer_http2(endpoint: Endpoint) -> Endpoint {
    endpoint.http2_max_local_error_reset_streams(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_suites_take_iana_and_go_names_and_refuse_others() {
        let s = cipher_suites(&[
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into(),
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305".into(),
        ])
        .unwrap();
        assert_eq!(s.len(), 2);
        let e = cipher_suites(&["TLS_RSA_WITH_RC4_128_SHA".into()]).unwrap_err();
        assert!(
            matches!(&e, SuiteError::Unsupported { supported, .. } if supported.contains("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384")),
            "{e}"
        );
        let e = cipher_suites(&["TLS13_AES_128_GCM_SHA256".into()]).unwrap_err();
        assert_eq!(e, SuiteError::Tls13("TLS13_AES_128_GCM_SHA256".into()));
    }
}
