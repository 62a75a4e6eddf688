//! The one place errors become gRPC statuses, with etcd's codes and messages
//! (its `rpctypes`), because clients match on them: clientv3 retries on
//! `Unavailable`, and etcdctl prints the message.

use tonic::Status;

use crate::auth::AuthError;
use crate::server::driver::DriverError;
use crate::storage::{KvError, ReadError};

pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
pub const MEMBER_NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
pub const LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";
pub const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";
pub const BAD_TRANSFEREE: &str = "etcdserver: bad leader transferee";

/// A store error as a status: the request's own error with etcd's code and
/// message; a failed store as `Internal` (the node is stopping).
pub fn kv_status(e: impl Into<ReadError>) -> Status {
    let e = match e.into() {
        ReadError::Request(e) => e,
        ReadError::Store(e) => return Status::internal(e.to_string()),
    };
    let msg = e.to_string();
    match e {
        KvError::EmptyKey
        | KvError::KeyNotFound
        | KvError::DuplicateKey
        | KvError::TooManyOps
        | KvError::ValueProvided
        | KvError::LeaseProvided
        | KvError::Invalid(_) => Status::invalid_argument(msg),
        KvError::LeaseNotFound => Status::not_found(msg),
        KvError::LeaseExists => Status::failed_precondition(msg),
        KvError::IndexExists(_) => Status::already_exists(msg),
        KvError::IndexNotFound(_) => Status::not_found(msg),
        KvError::TooManyIndexes => Status::resource_exhausted(msg),
        KvError::FeatureMissing(_) | KvError::UniqueViolation { .. } => {
            Status::failed_precondition(msg)
        }
        KvError::LeaseTtlTooLarge | KvError::Compacted | KvError::FutureRevision => {
            Status::out_of_range(msg)
        }
        KvError::NoSpace => Status::resource_exhausted(msg),
        KvError::Corrupt => Status::data_loss(msg),
    }
}

pub fn to_status(e: DriverError) -> Status {
    let msg = e.to_string();
    match e {
        DriverError::NotLeader { .. } => Status::failed_precondition(msg),
        DriverError::NoLeader
        | DriverError::LeaderChanged
        | DriverError::LeaderUnreachable
        | DriverError::Stopped
        | DriverError::Timeout => Status::unavailable(msg),
        DriverError::Rejected(_) => Status::failed_precondition(msg),
        DriverError::Kv(k) => kv_status(k),
        DriverError::Auth(a) => auth_status(a),
    }
}

/// etcd's gRPC code for each auth error (`api/v3rpc/rpctypes/error.go`).
pub fn auth_status(e: AuthError) -> Status {
    let msg = e.to_string();
    match e {
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::AuthNotEnabled => Status::failed_precondition(msg),
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::AuthFailed
        | AuthError::InvalidAuthMgmt
        | AuthError::AuthOldRevision
        | AuthError::PasswordTooLong
        | AuthError::NameTooLong(_) => Status::invalid_argument(msg),
        AuthError::PermissionDenied => Status::permission_denied(msg),
        AuthError::InvalidAuthToken => Status::unauthenticated(msg),
        AuthError::NoPasswordUser => Status::unknown(msg),
        AuthError::NoSigningKey => Status::failed_precondition(msg),
        AuthError::TooManyRequests => Status::resource_exhausted(msg),
    }
}

/// What the Lock and Election services answer for an error of one of
/// their inner KV, Lease or Watch calls. etcd runs those through its
/// in-process client, whose `toErr` turns every known `etcdserver: ...`
/// status into a plain Go error that grpc-go then sends as `Unknown`, with
/// the message kept. It looks like a bug, but clients see it (a missing
/// lease is `Unknown: etcdserver: requested lease not found` from Lock),
/// so Nod answers the same. Any other status keeps its code.
pub fn in_process_status(s: Status) -> Status {
    if s.message().starts_with("etcdserver: ") {
        Status::unknown(s.message())
    } else {
        s
    }
}

/// The Lock and Election recipes' own errors: plain Go errors in etcd,
/// so `Unknown` with etcd's message.
pub fn recipe_status(e: RecipeError) -> Status {
    Status::unknown(e.to_string())
}

/// The errors of etcd's concurrency recipes (`clientv3/concurrency`), with
/// their messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    #[error("election: no leader")]
    NoLeader,
    #[error("election: not leader")]
    NotLeader,
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// The waiter's own key went away (its lease ended) while it waited
    /// (etcd 3.5; see `lock.rs`).
    #[error("mutex: session is expired")]
    SessionExpired,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn inner_errors_become_unknown_as_in_etcd() {
        let s = in_process_status(kv_status(KvError::LeaseNotFound));
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unknown, "etcdserver: requested lease not found")
        );
        let s = in_process_status(auth_status(AuthError::PermissionDenied));
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unknown, "etcdserver: permission denied")
        );
        let s = in_process_status(Status::cancelled("request canceled"));
        assert_eq!(s.code(), Code::Cancelled, "others keep their code");
        let s = recipe_status(RecipeError::MissingLeaderKey);
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unknown, "\"leader\" field must be provided")
        );
    }

    #[test]
    fn errors_carry_etcd_codes_and_messages() {
        let cases = [
            (
                auth_status(AuthError::PermissionDenied),
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                auth_status(AuthError::InvalidAuthToken),
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                auth_status(AuthError::UserEmpty),
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                auth_status(AuthError::AuthFailed),
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                auth_status(AuthError::AuthNotEnabled),
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            (
                kv_status(KvError::Compacted),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                kv_status(KvError::FutureRevision),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                kv_status(KvError::LeaseNotFound),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                kv_status(KvError::EmptyKey),
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                to_status(DriverError::NoLeader),
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                to_status(DriverError::LeaderChanged),
                Code::Unavailable,
                "etcdserver: leader changed",
            ),
        ];
        for (status, code, message) in cases {
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
        }
    }
}
