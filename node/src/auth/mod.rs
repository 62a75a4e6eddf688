//! Authentication and role-based access, wire-compatible with etcd's Auth
//! service (read docs/research/etcd-auth.md for the behaviour matched).
//!
//! - `state.rs`: the auth store (enabled flag, auth revision, users, roles),
//!   changed only by applying committed `AuthCommand`s, identically on every
//!   member; it lives in the state machine (`KvStore`), so checkpoints and
//!   snapshots carry it. It also answers every permission question.
//! - `perms.rs`: whether a user's key permissions cover a key or a range.
//! - `tokens.rs`: simple tokens, `<16 letters>.<index of the login entry>`,
//!   known to every member (each applies the login), with a sliding TTL.
//! - `jwt.rs`: JWT tokens (`--auth-token jwt,...`), signed by the member
//!   that checked the password, verified by any member with the key.
//! - `password.rs`: bcrypt hashing and login rate limiting.
//!
//! Who asks is a [`Caller`]: the API layer finds it (a token, the client
//! certificate's common name, or the identity a member forwarded on the
//! peer port) and stamps it on each proposal; the entry is authorised when
//! applied, against the store as it is then, so every member decides alike.
//! No I/O and no clock here: time comes in as arguments.

pub mod jwt;
pub mod password;
pub mod perms;
pub mod state;
pub mod tokens;

pub use nod_proto::nodserverpb::{auth_command, AuthCommand, Caller, Login};
pub use state::{AuthApplied, AuthState};
pub use tokens::SimpleTokens;

/// The user name etcd gives full access to (with the role of the same name).
pub const ROOT: &str = "root";

/// etcd's auth errors, with its messages byte for byte (clients match
/// them); `api::status` gives each etcd's gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// Logins for this user are refused for a while after repeated failures.
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// A password bcrypt cannot hash (it reads at most 72 bytes).
    #[error("etcdserver: password is longer than 72 bytes")]
    PasswordTooLong,
    /// JWT tokens are verified here but this member has no private key.
    #[error("etcdserver: this member cannot issue tokens (no JWT private key)")]
    NoSigningKey,
    /// A name longer than the store accepts.
    #[error("etcdserver: {0} is longer than {max} bytes", max = MAX_NAME_BYTES)]
    NameTooLong(&'static str),
}

/// The longest user or role name (etcd has none; a bound keeps the store
/// and the logs small).
pub const MAX_NAME_BYTES: usize = 4096;

/// The identity a request carries when nobody authenticated it: refused
/// with "user name is empty" once auth is on (etcd's revision-0 rule).
pub fn anonymous() -> Caller {
    Caller {
        user: String::new(),
        auth_revision: 0,
    }
}
