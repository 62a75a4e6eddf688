//! The auth store's records (`crate::auth::AuthState` is the logic):
//! loaded on open, written in the batch of the entry that changed them, so
//! checkpoints and snapshots carry users, roles and the auth revision with
//! the data. Every record is checksummed and checked when read.

use prost::Message as _;

use super::super::backend::{Batch, Keyspace};
use super::super::codec;
use super::encoding::{decode_pair, encode_pair};
use super::{backend, Backend, KvStore, RecordError, StoreError};
use crate::auth::state::AuthWrite;
use crate::auth::{auth_command, AuthApplied, AuthError, AuthState, Caller};
use nod_proto::etcd::authpb::{Role, User};

const KEY_META: &[u8] = b"meta";
const TAG_USER: u8 = 6;
const TAG_ROLE: u8 = 7;

fn corrupt(cause: impl Into<RecordError>) -> StoreError {
    StoreError::Corrupt {
        what: "auth record",
        cause: cause.into(),
    }
}

fn record_key(prefix: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(prefix);
    k.extend_from_slice(name.as_bytes());
    k
}

pub(super) fn write_auth(batch: &mut Batch, w: AuthWrite) {
    match w {
        AuthWrite::Meta { enabled, revision } => batch.put(
            Keyspace::Auth,
            KEY_META,
            encode_pair(enabled as u64, revision),
        ),
        AuthWrite::User(name, Some(u)) => batch.put(
            Keyspace::Auth,
            &record_key(b'u', &name),
            codec::encode_tagged(TAG_USER, &u.encode_to_vec()),
        ),
        AuthWrite::User(name, None) => batch.delete(Keyspace::Auth, &record_key(b'u', &name)),
        AuthWrite::Role(name, Some(r)) => batch.put(
            Keyspace::Auth,
            &record_key(b'r', &name),
            codec::encode_tagged(TAG_ROLE, &r.encode_to_vec()),
        ),
        AuthWrite::Role(name, None) => batch.delete(Keyspace::Auth, &record_key(b'r', &name)),
    }
}

/// How an auth command ended: applied (with what it did), or refused with
/// the caller's error (only the applied index moved).
#[derive(Debug)]
pub enum AuthOutcome {
    Applied(AuthApplied),
    Refused(AuthError),
}

impl<B: Backend> KvStore<B> {
    pub fn auth(&self) -> &AuthState {
        &self.auth
    }

    pub(super) fn load_auth(&self) -> Result<AuthState, StoreError> {
        let (enabled, revision) = match self
            .backend
            .get(Keyspace::Auth, KEY_META)
            .map_err(backend("reading the auth store"))?
        {
            Some(v) => {
                let (e, r) = decode_pair(&v)?;
                (e != 0, r)
            }
            None => (false, 1),
        };
        let (mut users, mut roles) = (Vec::new(), Vec::new());
        for item in self.backend.scan_from(Keyspace::Auth, &[]) {
            let (k, v) = item.map_err(backend("scanning the auth store"))?;
            if k.as_ref() == KEY_META {
                continue;
            }
            let (tag, body) = codec::decode_tagged(&v).map_err(corrupt)?;
            match (k.first(), tag) {
                (Some(b'u'), TAG_USER) => users.push(User::decode(body).map_err(corrupt)?),
                (Some(b'r'), TAG_ROLE) => roles.push(Role::decode(body).map_err(corrupt)?),
                _ => {
                    return Err(StoreError::CorruptKey {
                        keyspace: Keyspace::Auth.name(),
                        key: k.to_vec(),
                    })
                }
            }
        }
        Ok(AuthState::from_records(enabled, revision, users, roles))
    }

    /// Applies a committed auth command for `caller` (`None`: a member's
    /// own). The key space and its revision never change.
    pub fn apply_auth(
        &mut self,
        op: &auth_command::Op,
        caller: Option<&Caller>,
        applied: (u64, u64),
    ) -> Result<AuthOutcome, StoreError> {
        let mut next = self.auth.clone();
        match next.apply(op, caller) {
            Ok((done, writes)) => {
                let st = self.stage();
                self.commit(st, applied, |b| {
                    for w in writes {
                        write_auth(b, w);
                    }
                })?;
                self.auth = next;
                Ok(AuthOutcome::Applied(done))
            }
            Err(e) => {
                self.apply_noop(applied)?;
                Ok(AuthOutcome::Refused(e))
            }
        }
    }
}
