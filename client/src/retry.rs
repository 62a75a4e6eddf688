//! Which failed calls may be sent again: the one place that reads a
//! `tonic::Status` and decides. Pure; table-tested.
//!
//! An idempotent call (a read, Status, MemberList, LeaseTimeToLive, …) may
//! be repeated whenever the failure was transient (`Unavailable`, or our
//! own per-call timeout). A call that changes state (Put, DeleteRange, a
//! Txn with writes, LeaseGrant, …) is repeated only when it provably was
//! not applied, because applying it twice would be visible (a second
//! revision, a second lease):
//!
//! | failure | meaning | source |
//! | --- | --- | --- |
//! | `Unavailable` "tcp connect error" | no connection, nothing sent | tonic |
//! | `FailedPrecondition` "etcdserver: not leader" | refused before proposing | `node/src/api/status.rs` |
//! | `Unavailable` "etcdserver: no leader" | refused before proposing | same |
//! | `Unavailable` "etcdserver: leader changed" | its entry lost to a new leader's: in no log | `driver/waiters.rs` |
//! | `Unavailable` "etcdserver: leader unreachable" | the forward to the leader never left | `driver/forwarding.rs` |
//! | `Unavailable` "etcdserver: request timed out" | outcome unknown | never retried for writes |
//! | `Unavailable` "etcdserver: server stopped" | outcome unknown | never retried for writes |
//! | other transport errors (reset, h2) | the request may have left | never retried for writes |
//!
//! Apart from that table, and whatever the call: when the server refuses
//! the token a call carried (`needs_new_token`), the client logs in again
//! and sends the call once more, a write included: etcd checks the token,
//! and the auth store revision it was issued at, before the request takes
//! effect (`auth/store.go`, `isOpPermitted`), so nothing was applied.
//! etcd's Go client does the same (`retry_interceptor.go`,
//! `shouldRefreshToken`). A login refused ("authentication failed", "too
//! many requests") is the call's error: a wrong password is never retried,
//! and only a resuming watch tries a rate-limited login again, later.

use tonic::{Code, Status};

/// Whether sending a request twice can be told apart from sending it once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotence {
    Idempotent,
    NonIdempotent,
}

/// What a failure says about the request's effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It was not applied and will not be: sending it again is safe.
    NotApplied,
    /// It may have been applied, or may still be (timeout, lost connection).
    Unknown,
    /// The server decided (bad argument, compacted, not found, …): sending
    /// it again gets the same answer.
    Final,
}

/// The message of our own per-call timeout.
pub const CALL_TIMED_OUT: &str = "nod-client: call timed out";

/// Whether a request surely never reached a server (no connection could be
/// made), so sending it again cannot apply it twice.
pub fn not_sent(s: &Status) -> bool {
    s.code() == Code::Unavailable
        && (s.message().contains("tcp connect error")
            || s.message().contains("error trying to connect"))
}

/// Whether the failure is the endpoint's transport (connection refused or
/// broken, our timeout) rather than an answer of the server: such an
/// endpoint is marked unhealthy.
pub fn is_transport_failure(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable => !s.message().starts_with("etcdserver:"),
        Code::DeadlineExceeded => s.message() == CALL_TIMED_OUT,
        Code::Unknown | Code::Internal => {
            let m = s.message();
            m.contains("transport error") || m.contains("h2 protocol error")
        }
        _ => false,
    }
}

/// Whether the member that answered has no usable leader (or is not it):
/// the caller should relearn the leader.
pub fn is_leader_failure(s: &Status) -> bool {
    matches!(
        s.message(),
        "etcdserver: not leader"
            | "etcdserver: no leader"
            | "etcdserver: leader changed"
            | "etcdserver: leader unreachable"
    )
}

/// etcd's answers that ask for a new token, with their codes
/// (`rpctypes`): the token expired or is unknown to the member; users or
/// roles changed since it was issued; no token reached the server (sent
/// before authentication was turned on).
const STALE_TOKEN: [(Code, &str); 3] = [
    (Code::Unauthenticated, "etcdserver: invalid auth token"),
    (
        Code::InvalidArgument,
        "etcdserver: revision of auth store is old",
    ),
    (Code::InvalidArgument, "etcdserver: user name is empty"),
];

/// Whether the server refused the call's token as stale or missing: log in
/// again and send the call once more (if the client has credentials).
pub fn needs_new_token(s: &Status) -> bool {
    STALE_TOKEN
        .iter()
        .any(|&(code, message)| s.code() == code && s.message() == message)
}

/// Whether a watch the server cancelled with this reason asks for a new
/// token (etcd cancels rather than failing the stream; its Go client:
/// `shouldRetryWatch`).
pub fn cancel_needs_new_token(reason: &str) -> bool {
    STALE_TOKEN.iter().any(|&(_, message)| reason == message)
}

/// Whether a login was answered "authentication is not enabled": go on
/// without a token, as etcdctl does.
pub fn auth_not_enabled(s: &Status) -> bool {
    s.code() == Code::FailedPrecondition
        && s.message() == "etcdserver: authentication is not enabled"
}

/// Whether the server refused a login because too many came at once:
/// worth trying again later (a resuming watch does), not at once.
pub fn is_rate_limited(s: &Status) -> bool {
    s.code() == Code::ResourceExhausted && s.message() == "etcdserver: too many requests"
}

pub fn outcome(s: &Status) -> Outcome {
    if not_sent(s) || is_leader_failure(s) {
        return Outcome::NotApplied;
    }
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            Outcome::Unknown
        }
        _ if is_transport_failure(s) => Outcome::Unknown,
        _ => Outcome::Final,
    }
}

/// Whether a call of this kind that failed with `s` may be sent again.
pub fn may_retry(s: &Status, idempotence: Idempotence) -> bool {
    match (outcome(s), idempotence) {
        (Outcome::NotApplied, _) => true,
        (Outcome::Unknown, Idempotence::Idempotent) => {
            matches!(s.code(), Code::Unavailable) || is_transport_failure(s)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Idempotence::*;

    #[test]
    fn retry_classification_table() {
        // (status, outcome, retried if idempotent, retried if not)
        let table = [
            (
                Status::unavailable("tcp connect error"),
                Outcome::NotApplied,
                true,
                true,
            ),
            (
                Status::unavailable("error trying to connect: Connection refused"),
                Outcome::NotApplied,
                true,
                true,
            ),
            (
                Status::failed_precondition("etcdserver: not leader"),
                Outcome::NotApplied,
                true,
                true,
            ),
            (
                Status::unavailable("etcdserver: no leader"),
                Outcome::NotApplied,
                true,
                true,
            ),
            (
                Status::unavailable("etcdserver: leader changed"),
                Outcome::NotApplied,
                true,
                true,
            ),
            (
                Status::unavailable("etcdserver: leader unreachable"),
                Outcome::NotApplied,
                true,
                true,
            ),
            (
                Status::unavailable("etcdserver: request timed out"),
                Outcome::Unknown,
                true,
                false,
            ),
            (
                Status::unavailable("etcdserver: server stopped"),
                Outcome::Unknown,
                true,
                false,
            ),
            (
                Status::unavailable("transport error"),
                Outcome::Unknown,
                true,
                false,
            ),
            (
                Status::unknown("h2 protocol error: broken pipe"),
                Outcome::Unknown,
                true,
                false,
            ),
            (
                Status::deadline_exceeded(CALL_TIMED_OUT),
                Outcome::Unknown,
                true,
                false,
            ),
            (
                Status::deadline_exceeded("server deadline"),
                Outcome::Unknown,
                false,
                false,
            ),
            (
                Status::cancelled("cancelled"),
                Outcome::Unknown,
                false,
                false,
            ),
            (
                Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
                Outcome::Final,
                false,
                false,
            ),
            (
                Status::invalid_argument("etcdserver: key is not provided"),
                Outcome::Final,
                false,
                false,
            ),
            (
                Status::not_found("etcdserver: requested lease not found"),
                Outcome::Final,
                false,
                false,
            ),
            (
                // A unique index's refusal: applied (as a refusal), never sent again.
                Status::failed_precondition(
                    r#"nod: unique index "users_email": value "a@x" is already used by key "/u/a""#,
                ),
                Outcome::Final,
                false,
                false,
            ),
            (
                Status::failed_precondition("etcdserver: Peer URLs already exists"),
                Outcome::Final,
                false,
                false,
            ),
            (
                Status::internal("etcdserver: storage"),
                Outcome::Final,
                false,
                false,
            ),
        ];
        for (s, want_outcome, idem, non_idem) in table {
            assert_eq!(outcome(&s), want_outcome, "{s:?}");
            assert_eq!(may_retry(&s, Idempotent), idem, "idempotent {s:?}");
            assert_eq!(
                may_retry(&s, NonIdempotent),
                non_idem,
                "non-idempotent {s:?}"
            );
        }
    }

    #[test]
    fn stale_token_answers_ask_for_a_login_and_nothing_else_does() {
        // (status, a new token helps)
        let table = [
            (
                Status::unauthenticated("etcdserver: invalid auth token"),
                true,
            ),
            (
                Status::invalid_argument("etcdserver: revision of auth store is old"),
                true,
            ),
            (
                Status::invalid_argument("etcdserver: user name is empty"),
                true,
            ),
            // A wrong password is final: logging in again gets it again.
            (
                Status::invalid_argument(
                    "etcdserver: authentication failed, invalid user ID or password",
                ),
                false,
            ),
            (
                Status::permission_denied("etcdserver: permission denied"),
                false,
            ),
            (
                Status::resource_exhausted("etcdserver: too many requests"),
                false,
            ),
            (
                Status::failed_precondition("etcdserver: authentication is not enabled"),
                false,
            ),
            // The right message with another code is someone else's answer.
            (Status::unavailable("etcdserver: invalid auth token"), false),
        ];
        for (s, want) in table {
            assert_eq!(needs_new_token(&s), want, "{s:?}");
            // Apart from the login path, these are final answers.
            assert!(!may_retry(&s, NonIdempotent), "{s:?}");
        }
        assert!(cancel_needs_new_token("etcdserver: invalid auth token"));
        assert!(cancel_needs_new_token(
            "etcdserver: revision of auth store is old"
        ));
        assert!(!cancel_needs_new_token("etcdserver: permission denied"));
        assert!(!cancel_needs_new_token(""));
    }

    #[test]
    fn only_auth_not_enabled_lets_a_login_go_on_without_a_token() {
        assert!(auth_not_enabled(&Status::failed_precondition(
            "etcdserver: authentication is not enabled"
        )));
        assert!(!auth_not_enabled(&Status::invalid_argument(
            "etcdserver: authentication failed, invalid user ID or password"
        )));
        assert!(!auth_not_enabled(&Status::resource_exhausted(
            "etcdserver: too many requests"
        )));
        assert!(is_rate_limited(&Status::resource_exhausted(
            "etcdserver: too many requests"
        )));
        assert!(!is_rate_limited(&Status::resource_exhausted(
            "grpc: received message larger than max"
        )));
    }

    #[test]
    fn transport_failures_are_told_from_server_answers() {
        assert!(is_transport_failure(&Status::unavailable(
            "tcp connect error"
        )));
        assert!(is_transport_failure(&Status::deadline_exceeded(
            CALL_TIMED_OUT
        )));
        assert!(!is_transport_failure(&Status::unavailable(
            "etcdserver: no leader"
        )));
        assert!(!is_transport_failure(&Status::invalid_argument("x")));
    }
}
