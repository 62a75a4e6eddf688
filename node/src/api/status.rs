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
        KvError::LeaseTtlTooLarge | KvError::Compacted | KvError::FutureRevision => {
            Status::out_of_range(msg)
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

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
