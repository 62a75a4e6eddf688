//! Authenticated, encrypted gossip (`--gossip-key-file`): every datagram
//! on the gossip port is sealed with ChaCha20-Poly1305 (ring) under a key
//! the cluster shares. A datagram that does not open (no key, another key,
//! a flipped bit, a replayed header on other bytes) is dropped and counted
//! in `nod_gossip_packets_dropped_total{reason}`; chitchat never sees it.
//!
//! This wraps chitchat's own transport instead of forking it: chitchat
//! encodes its envelopes itself (the encoding is private), so the sealed
//! socket runs chitchat's UDP socket on loopback and relays. Each remote
//! node gets a loopback relay socket: chitchat sends to the relay, which
//! seals and sends from the public socket; a datagram opened from the
//! public socket goes to chitchat from that node's relay, and `recv` puts
//! the node's real address back. Datagrams reaching chitchat's loopback
//! socket from anything but a relay are dropped.
//!
//! Wire format: `[1][key id: 4][nonce: 12][ciphertext + tag: 16]`, the first
//! five bytes also authenticated. The key id is the first four bytes of
//! SHA-256 of the key. The key file holds one or two keys (base64 of 32
//! bytes, one per line, `#` comments): the first seals, both open, so a key
//! is rotated without downtime (add the new one second everywhere, then
//! first everywhere, then remove the old one).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine as _;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::ChitchatEnvelope;
use prometheus::IntCounterVec;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use tokio::net::UdpSocket as TokioUdp;
use tokio::task::JoinHandle;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + NONCE_LEN;
const TAG: usize = 16;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;
/// Remote nodes with a relay at once; the least recently used goes first.
const MAX_RELAYS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum GossipKeyError {
    #[error("cannot read the gossip key file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("gossip key file {path}, line {line}: not base64 of 32 bytes (make one with: head -c 32 /dev/urandom | base64)")]
    Invalid { path: String, line: usize },
    #[error("gossip key file {path}: {count} keys; give one, or two while rotating")]
    Count { path: String, count: usize },
}

struct Key {
    id: [u8; 4],
    aead: LessSafeKey,
}

/// The cluster's gossip keys: the first seals, all open.
pub struct GossipKeys {
    keys: Vec<Key>,
    rng: SystemRandom,
}

/// Why a datagram was dropped (the metric's `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Too short, another version, or a key this node does not have.
    UnknownKey,
    /// The key id matched but the datagram does not authenticate.
    Unauthenticated,
}

impl Dropped {
    pub fn label(self) -> &'static str {
        match self {
            Dropped::UnknownKey => "unknown_key",
            Dropped::Unauthenticated => "unauthenticated",
        }
    }
}

impl GossipKeys {
    pub fn from_keys(raw: &[[u8; 32]]) -> GossipKeys {
        let keys = raw
            .iter()
            .map(|k| {
                let digest = Sha256::digest(k);
                Key {
                    id: [digest[0], digest[1], digest[2], digest[3]],
                    aead: LessSafeKey::new(
                        UnboundKey::new(&CHACHA20_POLY1305, k).expect("a 32-byte key"),
                    ),
                }
            })
            .collect();
        GossipKeys {
            keys,
            rng: SystemRandom::new(),
        }
    }

    /// Reads one or two base64 keys from `path`.
    pub fn load(path: &Path) -> Result<GossipKeys, GossipKeyError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| GossipKeyError::Read {
            path: p.clone(),
            error,
        })?;
        let mut raw = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(line)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or(GossipKeyError::Invalid {
                    path: p.clone(),
                    line: i + 1,
                })?;
            raw.push(bytes);
        }
        if raw.is_empty() || raw.len() > 2 {
            return Err(GossipKeyError::Count {
                path: p,
                count: raw.len(),
            });
        }
        Ok(GossipKeys::from_keys(&raw))
    }

    /// `plain` sealed with the first key; `None` if it would not fit in a datagram.
    pub fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        if plain.len() + HEADER + TAG > MAX_DATAGRAM {
            return None;
        }
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(HEADER + plain.len() + TAG);
        out.push(VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&out[..5]),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    /// The plaintext of a sealed datagram, or why it was dropped.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, Dropped> {
        if sealed.len() < HEADER + TAG || sealed[0] != VERSION {
            return Err(Dropped::UnknownKey);
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id == sealed[1..5])
            .ok_or(Dropped::UnknownKey)?;
        let nonce =
            <[u8; NONCE_LEN]>::try_from(&sealed[5..HEADER]).map_err(|_| Dropped::UnknownKey)?;
        let mut body = sealed[HEADER..].to_vec();
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&sealed[..5]),
                &mut body,
            )
            .map_err(|_| Dropped::Unauthenticated)?;
        let n = plain.len();
        body.truncate(n);
        Ok(body)
    }
}

/// Chitchat's transport, sealed.
pub struct SealedTransport {
    pub keys: Arc<GossipKeys>,
    /// `nod_gossip_packets_dropped_total`, by reason.
    pub dropped: IntCounterVec,
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let public = Arc::new(TokioUdp::bind(listen_addr).await?);
        let loopback: SocketAddr = if listen_addr.is_ipv6() {
            (Ipv6Addr::LOCALHOST, 0).into()
        } else {
            (Ipv4Addr::LOCALHOST, 0).into()
        };
        let inner = UdpSocket::open(loopback).await?;
        let inner_addr = inner.local_addr()?;
        let relays = Arc::new(Mutex::new(Relays::default()));
        let receiver = tokio::spawn(receive_public(
            public.clone(),
            self.keys.clone(),
            self.dropped.clone(),
            relays.clone(),
            inner_addr,
        ));
        Ok(Box::new(SealedSocket {
            inner: Box::new(inner),
            inner_addr,
            public,
            keys: self.keys.clone(),
            relays,
            receiver,
        }))
    }
}

struct Relay {
    local: SocketAddr,
    socket: Arc<TokioUdp>,
    task: JoinHandle<()>,
    last_used: u64,
}

#[derive(Default)]
struct Relays {
    by_peer: HashMap<SocketAddr, Relay>,
    by_local: HashMap<SocketAddr, SocketAddr>,
    clock: u64,
}

impl Drop for Relays {
    fn drop(&mut self) {
        for r in self.by_peer.values() {
            r.task.abort();
        }
    }
}

/// The relay for `peer`, made on first use: its loopback socket forwards
/// what chitchat sends to it, sealed, to `peer`.
fn relay_for(
    relays: &Mutex<Relays>,
    peer: SocketAddr,
    inner_addr: SocketAddr,
    public: &Arc<TokioUdp>,
    keys: &Arc<GossipKeys>,
) -> std::io::Result<(SocketAddr, Arc<TokioUdp>)> {
    let mut r = relays.lock().unwrap_or_else(|p| p.into_inner());
    r.clock += 1;
    let now = r.clock;
    if let Some(relay) = r.by_peer.get_mut(&peer) {
        relay.last_used = now;
        return Ok((relay.local, relay.socket.clone()));
    }
    if r.by_peer.len() >= MAX_RELAYS {
        if let Some(oldest) = r
            .by_peer
            .iter()
            .min_by_key(|(_, v)| v.last_used)
            .map(|(k, _)| *k)
        {
            if let Some(old) = r.by_peer.remove(&oldest) {
                old.task.abort();
                r.by_local.remove(&old.local);
            }
        }
    }
    let std_socket = std::net::UdpSocket::bind(SocketAddr::new(inner_addr.ip(), 0))?;
    std_socket.set_nonblocking(true)?;
    let socket = Arc::new(TokioUdp::from_std(std_socket)?);
    let local = socket.local_addr()?;
    let task = tokio::spawn(forward_out(
        socket.clone(),
        inner_addr,
        peer,
        public.clone(),
        keys.clone(),
    ));
    r.by_local.insert(local, peer);
    r.by_peer.insert(
        peer,
        Relay {
            local,
            socket: socket.clone(),
            task,
            last_used: now,
        },
    );
    Ok((local, socket))
}

/// A relay's loop: what chitchat sends to it goes to `peer`, sealed.
async fn forward_out(
    relay: Arc<TokioUdp>,
    inner_addr: SocketAddr,
    peer: SocketAddr,
    public: Arc<TokioUdp>,
    keys: Arc<GossipKeys>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, from)) = relay.recv_from(&mut buf).await else {
            continue;
        };
        if from != inner_addr {
            continue;
        }
        match keys.seal(&buf[..n]) {
            Some(sealed) => {
                if let Err(e) = public.send_to(&sealed, peer).await {
                    tracing::debug!(%peer, error = %e, "gossip send failed");
                }
            }
            None => {
                tracing::warn!(%peer, bytes = n, "a gossip message too large to seal was dropped")
            }
        }
    }
}

/// The public socket's loop: opens each datagram and hands it to chitchat
/// from its sender's relay.
async fn receive_public(
    public: Arc<TokioUdp>,
    keys: Arc<GossipKeys>,
    dropped: IntCounterVec,
    relays: Arc<Mutex<Relays>>,
    inner_addr: SocketAddr,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match public.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "gossip receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let plain = match keys.open(&buf[..n]) {
            Ok(p) => p,
            Err(why) => {
                dropped.with_label_values(&[why.label()]).inc();
                tracing::debug!(%from, reason = why.label(), "dropped a gossip datagram");
                continue;
            }
        };
        match relay_for(&relays, from, inner_addr, &public, &keys) {
            Ok((_, relay)) => {
                let _ = relay.send_to(&plain, inner_addr).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot open a gossip relay socket"),
        }
    }
}

struct SealedSocket {
    inner: Box<dyn Socket>,
    inner_addr: SocketAddr,
    public: Arc<TokioUdp>,
    keys: Arc<GossipKeys>,
    relays: Arc<Mutex<Relays>>,
    receiver: JoinHandle<()>,
}

impl Drop for SealedSocket {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.public.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let (relay, _) = relay_for(&self.relays, to, self.inner_addr, &self.public, &self.keys)?;
        self.inner.send(relay, envelope).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let mut out = self.inner.recv().await?;
            let peer = {
                let r = self.relays.lock().unwrap_or_else(|p| p.into_inner());
                r.by_local.get(&out.from_addr).copied()
            };
            // Anything else on loopback did not come through the seal.
            if let Some(peer) = peer {
                out.from_addr = peer;
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_datagram_opens_only_with_its_key_and_untouched() {
        let a = GossipKeys::from_keys(&[[1; 32]]);
        let b = GossipKeys::from_keys(&[[2; 32]]);
        let sealed = a.seal(b"hello gossip").unwrap();
        assert_eq!(a.open(&sealed).unwrap(), b"hello gossip");
        assert_eq!(b.open(&sealed), Err(Dropped::UnknownKey));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(a.open(&bad).is_err(), "a flipped bit at {i} must not open");
        }
        assert_eq!(a.open(&sealed[..10]), Err(Dropped::UnknownKey));
        assert_eq!(
            a.open(b"plain chitchat bytes, never sealed at all"),
            Err(Dropped::UnknownKey)
        );
        // Two seals of the same bytes differ (fresh nonces).
        assert_ne!(a.seal(b"x").unwrap(), a.seal(b"x").unwrap());
    }

    #[test]
    fn during_a_rotation_both_keys_open_and_the_first_seals() {
        let old = GossipKeys::from_keys(&[[1; 32]]);
        let both = GossipKeys::from_keys(&[[2; 32], [1; 32]]);
        let new = GossipKeys::from_keys(&[[2; 32]]);
        assert_eq!(both.open(&old.seal(b"o").unwrap()).unwrap(), b"o");
        let sealed = both.seal(b"n").unwrap();
        assert_eq!(new.open(&sealed).unwrap(), b"n");
        assert!(old.open(&sealed).is_err());
    }

    #[test]
    fn key_files_take_one_or_two_base64_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        std::fs::write(&p, format!("# gossip\n{key}\n")).unwrap();
        assert_eq!(GossipKeys::load(&p).unwrap().keys.len(), 1);
        std::fs::write(&p, format!("{key}\n{key}\n{key}\n")).unwrap();
        assert!(matches!(
            GossipKeys::load(&p),
            Err(GossipKeyError::Count { count: 3, .. })
        ));
        std::fs::write(&p, "c2hvcnQ=\n").unwrap();
        let e = GossipKeys::load(&p).err().unwrap().to_string();
        assert!(e.contains("line 1") && e.contains("32 bytes"), "{e}");
        assert!(GossipKeys::load(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn too_large_a_message_is_not_sealed() {
        let k = GossipKeys::from_keys(&[[1; 32]]);
        assert!(k.seal(&vec![0; MAX_DATAGRAM]).is_none());
        assert!(k.seal(&vec![0; MAX_DATAGRAM - HEADER - TAG]).is_some());
    }
}
