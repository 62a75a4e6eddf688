//! The auth store: whether auth is on, its revision, users and roles.
//! Changed only by [`AuthState::apply`] on a committed command, the same on
//! every member, and read by the permission checks of both the API layer
//! (reads, watches, admin calls) and the apply path (every write, against
//! the store as it is when the entry applies). Each change returns the
//! records to write ([`AuthWrite`]) for the state machine to persist in the
//! entry's batch. No I/O.

use std::collections::BTreeMap;

use nod_proto::etcd::authpb::{Permission, Role, User, UserAddOptions};
use nod_proto::etcd::etcdserverpb::alarm_request::AlarmAction;
use nod_proto::etcd::etcdserverpb::{request_op, Compare, RequestOp, TxnRequest};

use super::perms::{covers, valid_range, Access};
use super::{auth_command::Op as AuthOp, AuthError, Caller, MAX_NAME_BYTES, ROOT};
use crate::command::Op;

/// A record the state machine writes (or deletes, `None`) for a change.
#[derive(Clone, Debug, PartialEq)]
pub enum AuthWrite {
    /// The enabled flag and the revision.
    Meta {
        enabled: bool,
        revision: u64,
    },
    User(String, Option<User>),
    Role(String, Option<Role>),
}

/// What an applied auth command did, besides its writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthApplied {
    Done,
    /// A login that may get its token (`name` is the user).
    LoggedIn {
        name: String,
    },
    /// Tokens of `name` (every token when `None`) must be forgotten:
    /// a deleted user, a changed password, auth turned off.
    Revoke(Option<String>),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthState {
    enabled: bool,
    /// 1 in a fresh store; +1 on every successful change but enabling.
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl AuthState {
    /// A fresh store: auth off, revision 1, nobody.
    pub fn new() -> AuthState {
        AuthState {
            revision: 1,
            ..AuthState::default()
        }
    }

    /// The store loaded from its records.
    pub fn from_records(
        enabled: bool,
        revision: u64,
        users: Vec<User>,
        roles: Vec<Role>,
    ) -> AuthState {
        AuthState {
            enabled,
            revision: revision.max(1),
            users: users.into_iter().map(|u| (text(&u.name), u)).collect(),
            roles: roles.into_iter().map(|r| (text(&r.name), r)).collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// User names, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    fn has_root_role(u: &User) -> bool {
        u.roles.iter().any(|r| r == ROOT)
    }

    /// etcd's `IsAdminPermitted`: with auth on, the caller must be a user
    /// holding the root role.
    pub fn check_admin(&self, caller: &Caller) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if caller.user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let u = self
            .users
            .get(&caller.user)
            .ok_or(AuthError::UserNotFound)?;
        if Self::has_root_role(u) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// The caller's user when auth is on and the caller is authenticated
    /// at the current revision (`None`: auth is off).
    fn authenticated(&self, caller: &Caller) -> Result<Option<&User>, AuthError> {
        if !self.enabled {
            return Ok(None);
        }
        if caller.user.is_empty() || caller.auth_revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if caller.auth_revision < self.revision {
            return Err(AuthError::AuthOldRevision);
        }
        self.users
            .get(&caller.user)
            .map(Some)
            .ok_or(AuthError::PermissionDenied)
    }

    /// Calls any authenticated user may make (lease grant, status, member list).
    pub fn check_authenticated(&self, caller: &Caller) -> Result<(), AuthError> {
        self.authenticated(caller).map(|_| ())
    }

    /// Whether the caller may `access` `[key, range_end)` (etcd's encoding).
    pub fn check_range(
        &self,
        caller: &Caller,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        let Some(user) = self.authenticated(caller)? else {
            return Ok(());
        };
        if Self::has_root_role(user) {
            return Ok(());
        }
        let perms = user
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.key_permission.iter());
        if covers(perms, access, key, range_end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Whether the caller holds the root role (auth on), for the checks
    /// admins skip.
    fn is_admin(&self, caller: &Caller) -> bool {
        self.enabled
            && self
                .users
                .get(&caller.user)
                .is_some_and(Self::has_root_role)
    }

    /// Authorises a committed command for `caller`, as etcd's apply does:
    /// keys read and written, leases' keys, admin-only operations.
    /// `lease_keys` gives the keys attached to a lease.
    pub fn check_op(
        &self,
        caller: &Caller,
        op: &Op,
        lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        match op {
            Op::Put(p) => self.check_put(caller, &p.key, p.prev_kv, p.lease, lease_keys),
            Op::DeleteRange(d) => self.check_delete(caller, &d.key, &d.range_end, d.prev_kv),
            Op::Txn(t) => self.check_txn(caller, t, lease_keys),
            Op::LeaseGrant(_) => self.check_authenticated(caller),
            Op::LeaseRevoke(r) => {
                self.check_authenticated(caller)?;
                if self.is_admin(caller) {
                    return Ok(());
                }
                for k in lease_keys(r.id) {
                    self.check_range(caller, Access::Write, &k, &[])?;
                }
                Ok(())
            }
            // Indexes are the cluster's schema: root's, as compaction is.
            Op::Compaction(_)
            | Op::MemberAttributes(_)
            | Op::MemberPeerUrls(_)
            | Op::Index(_)
            | Op::EnableFeature(_) => self.check_admin(caller),
            // Checked by `apply` itself (some need no admin).
            Op::Auth(_) => Ok(()),
            // Anyone may list alarms (as anyone may ask a member's
            // status); raising or clearing one takes root. etcd checks
            // neither.
            Op::Alarm(a) if a.action == AlarmAction::Get as i32 => Ok(()),
            Op::Alarm(_) => self.check_admin(caller),
        }
    }

    fn check_put(
        &self,
        caller: &Caller,
        key: &[u8],
        prev_kv: bool,
        lease: i64,
        lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
    ) -> Result<(), AuthError> {
        self.check_range(caller, Access::Write, key, &[])?;
        if prev_kv {
            self.check_range(caller, Access::Read, key, &[])?;
        }
        // Attaching a key to a lease lets its revoker delete it: the
        // writer must be allowed to write every key already on the lease.
        if lease != 0 && !self.is_admin(caller) {
            for k in lease_keys(lease) {
                self.check_range(caller, Access::Write, &k, &[])?;
            }
        }
        Ok(())
    }

    fn check_delete(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
        prev_kv: bool,
    ) -> Result<(), AuthError> {
        self.check_range(caller, Access::Write, key, range_end)?;
        if prev_kv {
            self.check_range(caller, Access::Read, key, range_end)?;
        }
        Ok(())
    }

    fn check_compare(&self, caller: &Caller, c: &Compare) -> Result<(), AuthError> {
        self.check_range(caller, Access::Read, &c.key, &c.range_end)
    }

    /// A transaction needs permission for every compare and for each
    /// operation of both branches, nested transactions included.
    pub fn check_txn(
        &self,
        caller: &Caller,
        t: &TxnRequest,
        lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
    ) -> Result<(), AuthError> {
        for c in &t.compare {
            self.check_compare(caller, c)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            self.check_request_op(caller, op, lease_keys)?;
        }
        Ok(())
    }

    fn check_request_op(
        &self,
        caller: &Caller,
        op: &RequestOp,
        lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
    ) -> Result<(), AuthError> {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                self.check_range(caller, Access::Read, &r.key, &r.range_end)
            }
            Some(request_op::Request::RequestPut(p)) => {
                self.check_put(caller, &p.key, p.prev_kv, p.lease, lease_keys)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                self.check_delete(caller, &d.key, &d.range_end, d.prev_kv)
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                self.check_txn(caller, inner, lease_keys)
            }
            None => Ok(()),
        }
    }

    /// The caller may read `name`'s record: an admin, or the user itself.
    pub fn check_user_get(&self, caller: &Caller, name: &str) -> Result<(), AuthError> {
        if self.enabled && !caller.user.is_empty() && caller.user == name {
            self.authenticated(caller)?;
            return Ok(());
        }
        self.check_admin(caller)
    }

    /// The caller may read role `name`: an admin, or a user holding it.
    pub fn check_role_get(&self, caller: &Caller, name: &str) -> Result<(), AuthError> {
        if self.enabled {
            if let Some(u) = self.users.get(&caller.user) {
                if caller.auth_revision != 0 && u.roles.iter().any(|r| r == name) {
                    return Ok(());
                }
            }
        }
        self.check_admin(caller)
    }

    fn bump(&mut self, writes: &mut Vec<AuthWrite>) {
        self.revision += 1;
        writes.push(AuthWrite::Meta {
            enabled: self.enabled,
            revision: self.revision,
        });
    }

    /// Applies a committed auth command for `caller` (`None`: a member's
    /// own proposal). Returns what it did and the records to write; an
    /// error changes nothing.
    pub fn apply(
        &mut self,
        op: &AuthOp,
        caller: Option<&Caller>,
    ) -> Result<(AuthApplied, Vec<AuthWrite>), AuthError> {
        let mut writes = Vec::new();
        let admin = |s: &AuthState| match caller {
            Some(c) => s.check_admin(c),
            None => Ok(()),
        };
        let applied = match op {
            AuthOp::Enable(_) => {
                if self.enabled {
                    admin(self)?;
                    return Ok((AuthApplied::Done, writes));
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !Self::has_root_role(root) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
                writes.push(AuthWrite::Meta {
                    enabled: true,
                    revision: self.revision,
                });
                AuthApplied::Done
            }
            AuthOp::Disable(_) => {
                admin(self)?;
                if !self.enabled {
                    return Ok((AuthApplied::Done, writes));
                }
                self.enabled = false;
                self.bump(&mut writes);
                AuthApplied::Revoke(None)
            }
            AuthOp::Login(l) => {
                if !self.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                if !self.users.contains_key(&l.name) {
                    return Err(AuthError::AuthFailed);
                }
                if l.auth_revision != self.revision {
                    return Err(AuthError::AuthOldRevision);
                }
                AuthApplied::LoggedIn {
                    name: l.name.clone(),
                }
            }
            AuthOp::UserAdd(r) => {
                admin(self)?;
                check_name(&r.name, AuthError::UserEmpty, "user name")?;
                if self.users.contains_key(&r.name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
                let user = User {
                    name: r.name.clone().into_bytes(),
                    password: if no_password {
                        Vec::new()
                    } else {
                        r.hashed_password.clone().into_bytes()
                    },
                    roles: Vec::new(),
                    options: Some(UserAddOptions { no_password }),
                };
                self.put_user(user, &mut writes);
                self.bump(&mut writes);
                AuthApplied::Done
            }
            AuthOp::UserDelete(r) => {
                admin(self)?;
                if self.enabled && r.name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if self.users.remove(&r.name).is_none() {
                    return Err(AuthError::UserNotFound);
                }
                writes.push(AuthWrite::User(r.name.clone(), None));
                self.bump(&mut writes);
                AuthApplied::Revoke(Some(r.name.clone()))
            }
            AuthOp::UserChangePassword(r) => {
                admin(self)?;
                let mut user = self
                    .users
                    .get(&r.name)
                    .cloned()
                    .ok_or(AuthError::UserNotFound)?;
                user.password = r.hashed_password.clone().into_bytes();
                self.put_user(user, &mut writes);
                self.bump(&mut writes);
                AuthApplied::Revoke(Some(r.name.clone()))
            }
            AuthOp::UserGrantRole(r) => {
                admin(self)?;
                let mut user = self
                    .users
                    .get(&r.user)
                    .cloned()
                    .ok_or(AuthError::UserNotFound)?;
                if r.role != ROOT && !self.roles.contains_key(&r.role) {
                    return Err(AuthError::RoleNotFound);
                }
                match user.roles.binary_search(&r.role) {
                    Ok(_) => return Ok((AuthApplied::Done, writes)),
                    Err(at) => user.roles.insert(at, r.role.clone()),
                }
                self.put_user(user, &mut writes);
                self.bump(&mut writes);
                AuthApplied::Done
            }
            AuthOp::UserRevokeRole(r) => {
                admin(self)?;
                if self.enabled && r.name == ROOT && r.role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let mut user = self
                    .users
                    .get(&r.name)
                    .cloned()
                    .ok_or(AuthError::UserNotFound)?;
                let at = user
                    .roles
                    .iter()
                    .position(|x| *x == r.role)
                    .ok_or(AuthError::RoleNotGranted)?;
                user.roles.remove(at);
                self.put_user(user, &mut writes);
                self.bump(&mut writes);
                AuthApplied::Done
            }
            AuthOp::RoleAdd(r) => {
                admin(self)?;
                check_name(&r.name, AuthError::RoleEmpty, "role name")?;
                if self.roles.contains_key(&r.name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.put_role(
                    Role {
                        name: r.name.clone().into_bytes(),
                        key_permission: Vec::new(),
                    },
                    &mut writes,
                );
                self.bump(&mut writes);
                AuthApplied::Done
            }
            AuthOp::RoleDelete(r) => {
                admin(self)?;
                if self.enabled && r.role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if self.roles.remove(&r.role).is_none() {
                    return Err(AuthError::RoleNotFound);
                }
                writes.push(AuthWrite::Role(r.role.clone(), None));
                let holders: Vec<User> = self
                    .users
                    .values()
                    .filter(|u| u.roles.contains(&r.role))
                    .cloned()
                    .collect();
                for mut u in holders {
                    u.roles.retain(|x| *x != r.role);
                    self.put_user(u, &mut writes);
                }
                self.bump(&mut writes);
                AuthApplied::Done
            }
            AuthOp::RoleGrantPermission(r) => {
                admin(self)?;
                let mut role = self
                    .roles
                    .get(&r.name)
                    .cloned()
                    .ok_or(AuthError::RoleNotFound)?;
                let perm = r.perm.clone().unwrap_or_default();
                if !valid_range(&perm.key, &perm.range_end) {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                match role
                    .key_permission
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => role.key_permission.push(perm),
                }
                sort_perms(&mut role.key_permission);
                self.put_role(role, &mut writes);
                self.bump(&mut writes);
                AuthApplied::Done
            }
            AuthOp::RoleRevokePermission(r) => {
                admin(self)?;
                let mut role = self
                    .roles
                    .get(&r.role)
                    .cloned()
                    .ok_or(AuthError::RoleNotFound)?;
                let at = role
                    .key_permission
                    .iter()
                    .position(|p| p.key == r.key && p.range_end == r.range_end)
                    .ok_or(AuthError::PermissionNotGranted)?;
                role.key_permission.remove(at);
                self.put_role(role, &mut writes);
                self.bump(&mut writes);
                AuthApplied::Done
            }
        };
        Ok((applied, writes))
    }

    fn put_user(&mut self, user: User, writes: &mut Vec<AuthWrite>) {
        let name = text(&user.name);
        writes.push(AuthWrite::User(name.clone(), Some(user.clone())));
        self.users.insert(name, user);
    }

    fn put_role(&mut self, role: Role, writes: &mut Vec<AuthWrite>) {
        let name = text(&role.name);
        writes.push(AuthWrite::Role(name.clone(), Some(role.clone())));
        self.roles.insert(name, role);
    }
}

fn check_name(name: &str, empty: AuthError, what: &'static str) -> Result<(), AuthError> {
    if name.is_empty() {
        return Err(empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(AuthError::NameTooLong(what));
    }
    Ok(())
}

/// etcd keeps a role's permissions sorted by key, then range end.
fn sort_perms(perms: &mut [Permission]) {
    perms.sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use nod_proto::etcd::authpb::permission::Type as PermType;
    use nod_proto::etcd::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
        AuthUserDeleteRequest, AuthUserGrantRoleRequest, PutRequest,
    };

    fn caller(user: &str, rev: u64) -> Caller {
        Caller {
            user: user.into(),
            auth_revision: rev,
        }
    }

    fn add_user(s: &mut AuthState, name: &str) {
        s.apply(
            &AuthOp::UserAdd(AuthUserAddRequest {
                name: name.into(),
                hashed_password: "hash".into(),
                ..Default::default()
            }),
            None,
        )
        .unwrap();
    }

    fn grant(s: &mut AuthState, user: &str, role: &str) {
        s.apply(
            &AuthOp::UserGrantRole(AuthUserGrantRoleRequest {
                user: user.into(),
                role: role.into(),
            }),
            None,
        )
        .unwrap();
    }

    fn no_leases(_: i64) -> Vec<Vec<u8>> {
        Vec::new()
    }

    fn put(key: &[u8]) -> Op {
        Op::Put(PutRequest {
            key: key.to_vec(),
            ..Default::default()
        })
    }

    #[test]
    fn enabling_needs_root_and_revisions_count_changes() {
        let mut s = AuthState::new();
        assert_eq!(s.revision(), 1);
        let enable = AuthOp::Enable(AuthEnableRequest {});
        assert_eq!(s.apply(&enable, None), Err(AuthError::RootUserNotExist));
        add_user(&mut s, ROOT);
        assert_eq!(s.revision(), 2);
        assert_eq!(s.apply(&enable, None), Err(AuthError::RootRoleNotExist));
        grant(&mut s, ROOT, ROOT);
        assert_eq!(s.revision(), 3);
        s.apply(&enable, None).unwrap();
        assert!(s.enabled());
        assert_eq!(s.revision(), 3, "enabling does not bump the revision");
        // Now admin only, and root cannot be deleted.
        let del = AuthOp::UserDelete(AuthUserDeleteRequest { name: ROOT.into() });
        assert_eq!(
            s.apply(&del, Some(&caller("", 0))),
            Err(AuthError::UserEmpty)
        );
        assert_eq!(
            s.apply(&del, Some(&caller(ROOT, 3))),
            Err(AuthError::InvalidAuthMgmt)
        );
        add_user(&mut s, "alice");
        assert_eq!(
            s.apply(
                &AuthOp::UserAdd(AuthUserAddRequest {
                    name: "bob".into(),
                    ..Default::default()
                }),
                Some(&caller("alice", 4)),
            ),
            Err(AuthError::PermissionDenied)
        );
    }

    #[test]
    fn writes_are_checked_against_roles_and_revisions() {
        let mut s = AuthState::new();
        add_user(&mut s, ROOT);
        grant(&mut s, ROOT, ROOT);
        add_user(&mut s, "alice");
        s.apply(
            &AuthOp::RoleAdd(AuthRoleAddRequest { name: "rw".into() }),
            None,
        )
        .unwrap();
        s.apply(
            &AuthOp::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                name: "rw".into(),
                perm: Some(Permission {
                    perm_type: PermType::Readwrite as i32,
                    key: b"/a/".to_vec(),
                    range_end: b"/a0".to_vec(),
                }),
            }),
            None,
        )
        .unwrap();
        grant(&mut s, "alice", "rw");
        s.apply(&AuthOp::Enable(AuthEnableRequest {}), None)
            .unwrap();
        let rev = s.revision();
        let alice = caller("alice", rev);
        assert_eq!(s.check_op(&alice, &put(b"/a/x"), &no_leases), Ok(()));
        assert_eq!(
            s.check_op(&alice, &put(b"/b/x"), &no_leases),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            s.check_op(&caller("alice", rev - 1), &put(b"/a/x"), &no_leases),
            Err(AuthError::AuthOldRevision)
        );
        assert_eq!(
            s.check_op(&caller("", 0), &put(b"/a/x"), &no_leases),
            Err(AuthError::UserEmpty)
        );
        assert_eq!(
            s.check_op(&caller(ROOT, rev), &put(b"/b/x"), &no_leases),
            Ok(())
        );
        // A key already on the lease that alice may not write.
        let on_lease = |_: i64| vec![b"/b/x".to_vec()];
        let leased = Op::Put(PutRequest {
            key: b"/a/x".to_vec(),
            lease: 7,
            ..Default::default()
        });
        assert_eq!(
            s.check_op(&alice, &leased, &on_lease),
            Err(AuthError::PermissionDenied)
        );
    }

    mod random_sequences {
        //! Random auth command sequences from random callers, against what
        //! must hold after each one: no panic; a refused command changes
        //! nothing; the records a change writes, replayed, rebuild the
        //! store exactly (what a restart or a snapshot load sees); the
        //! revision only moves up, by one per change, never on enabling;
        //! with auth on, root exists with the root role and only holders
        //! of the root role change anything; users' roles stay sorted,
        //! unique and existing, roles' permissions sorted and unique.

        use super::*;
        use crate::auth::Login;
        use nod_proto::etcd::etcdserverpb::{
            AuthDisableRequest, AuthRoleDeleteRequest, AuthRoleRevokePermissionRequest,
            AuthUserChangePasswordRequest, AuthUserRevokeRoleRequest,
        };
        use proptest::prelude::*;

        /// Names the sequences pick from: the special one, ordinary ones,
        /// the empty one and one over the length limit.
        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(ROOT.to_string()),
                Just("alice".to_string()),
                Just("bob".to_string()),
                Just(String::new()),
                Just("x".repeat(MAX_NAME_BYTES + 1)),
            ]
        }

        fn bytes() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(Vec::new()),
                Just(vec![0u8]),
                Just(b"a".to_vec()),
                Just(b"b".to_vec()),
                Just(b"/a/".to_vec()),
            ]
        }

        fn op() -> impl Strategy<Value = AuthOp> {
            prop_oneof![
                Just(AuthOp::Enable(AuthEnableRequest {})),
                Just(AuthOp::Disable(AuthDisableRequest {})),
                (name(), 0u64..6).prop_map(|(name, auth_revision)| AuthOp::Login(Login {
                    name,
                    auth_revision,
                    ..Default::default()
                })),
                (name(), any::<bool>()).prop_map(|(name, no_password)| AuthOp::UserAdd(
                    AuthUserAddRequest {
                        name,
                        hashed_password: "hash".into(),
                        options: Some(UserAddOptions { no_password }),
                        ..Default::default()
                    }
                )),
                name().prop_map(|name| AuthOp::UserDelete(AuthUserDeleteRequest { name })),
                name().prop_map(
                    |name| AuthOp::UserChangePassword(AuthUserChangePasswordRequest {
                        name,
                        hashed_password: "other".into(),
                        ..Default::default()
                    })
                ),
                (name(), name()).prop_map(|(user, role)| AuthOp::UserGrantRole(
                    AuthUserGrantRoleRequest { user, role }
                )),
                (name(), name()).prop_map(|(name, role)| AuthOp::UserRevokeRole(
                    AuthUserRevokeRoleRequest { name, role }
                )),
                name().prop_map(|name| AuthOp::RoleAdd(AuthRoleAddRequest { name })),
                name().prop_map(|role| AuthOp::RoleDelete(AuthRoleDeleteRequest { role })),
                (name(), 0i32..4, bytes(), bytes()).prop_map(|(name, t, key, range_end)| {
                    AuthOp::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                        name,
                        perm: Some(Permission {
                            perm_type: t,
                            key,
                            range_end,
                        }),
                    })
                }),
                (name(), bytes(), bytes()).prop_map(|(role, key, range_end)| {
                    AuthOp::RoleRevokePermission(AuthRoleRevokePermissionRequest {
                        role,
                        key,
                        range_end,
                    })
                }),
            ]
        }

        /// Who asks: a member itself (`None`), or a user at the store's
        /// current revision or an older one.
        #[derive(Clone, Debug)]
        enum Who {
            Member,
            User { name: String, stale: bool },
        }

        fn who() -> impl Strategy<Value = Who> {
            prop_oneof![
                Just(Who::Member),
                (name(), any::<bool>()).prop_map(|(name, stale)| Who::User { name, stale }),
            ]
        }

        /// The records as the state machine keeps them.
        #[derive(Default)]
        struct Disk {
            enabled: bool,
            revision: u64,
            users: BTreeMap<String, User>,
            roles: BTreeMap<String, Role>,
        }

        impl Disk {
            fn write(&mut self, w: &AuthWrite) {
                match w {
                    AuthWrite::Meta { enabled, revision } => {
                        self.enabled = *enabled;
                        self.revision = *revision;
                    }
                    AuthWrite::User(n, Some(u)) => {
                        self.users.insert(n.clone(), u.clone());
                    }
                    AuthWrite::User(n, None) => {
                        self.users.remove(n);
                    }
                    AuthWrite::Role(n, Some(r)) => {
                        self.roles.insert(n.clone(), r.clone());
                    }
                    AuthWrite::Role(n, None) => {
                        self.roles.remove(n);
                    }
                }
            }

            fn load(&self) -> AuthState {
                AuthState::from_records(
                    self.enabled,
                    self.revision,
                    self.users.values().cloned().collect(),
                    self.roles.values().cloned().collect(),
                )
            }
        }

        fn mutates(op: &AuthOp) -> bool {
            !matches!(op, AuthOp::Login(_))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn auth_commands_keep_the_store_consistent(
                steps in proptest::collection::vec((op(), who()), 1..60),
            ) {
                let mut s = AuthState::new();
                let mut disk = Disk::default();
                for (op, who) in &steps {
                    let before = s.clone();
                    let caller = match who {
                        Who::Member => None,
                        Who::User { name, stale } => Some(Caller {
                            user: name.clone(),
                            auth_revision: if *stale { s.revision() - 1 } else { s.revision() },
                        }),
                    };
                    let admin = caller.as_ref().is_none_or(|c| before.check_admin(c).is_ok());
                    match s.apply(op, caller.as_ref()) {
                        Err(_) => prop_assert_eq!(&s, &before, "a refused {:?} changed the store", op),
                        Ok((applied, writes)) => {
                            if !admin && mutates(op) {
                                prop_assert_eq!(&s, &before, "{:?} by {:?}, no admin, changed the store", op, who);
                            }
                            if !mutates(op) {
                                prop_assert!(writes.is_empty());
                                prop_assert_eq!(&s, &before);
                                let logged_in = matches!(applied, AuthApplied::LoggedIn { .. });
                                prop_assert!(logged_in);
                            }
                            for w in &writes {
                                disk.write(w);
                            }
                            if s != before {
                                prop_assert!(!writes.is_empty(), "{:?} changed the store but wrote nothing", op);
                            }
                        }
                    }
                    prop_assert_eq!(&disk.load(), &s, "the records after {:?} do not rebuild the store", op);
                    let enabling = matches!(op, AuthOp::Enable(_));
                    let step = s.revision() - before.revision();
                    prop_assert!(step <= 1 && (step == 0 || !enabling), "revision {} -> {} on {:?}", before.revision(), s.revision(), op);
                    // Every change of users, roles or turning auth off
                    // bumps it (etcd bumps a re-granted permission too).
                    let changed = s.users != before.users || s.roles != before.roles || (before.enabled && !s.enabled);
                    prop_assert!(!changed || step == 1, "{:?} changed the store at the same revision", op);
                    if s.enabled() {
                        let root = s.user(ROOT);
                        prop_assert!(root.is_some_and(|u| u.roles.iter().any(|r| r == ROOT)), "auth on without root holding the root role");
                    }
                    for (n, u) in &s.users {
                        prop_assert_eq!(n.as_bytes(), u.name.as_slice());
                        prop_assert!(!n.is_empty() && n.len() <= MAX_NAME_BYTES);
                        prop_assert!(u.roles.windows(2).all(|w| w[0] < w[1]), "{}'s roles unsorted: {:?}", n, u.roles);
                        for r in &u.roles {
                            prop_assert!(r == ROOT || s.roles.contains_key(r), "{} holds the missing role {}", n, r);
                        }
                    }
                    for (n, r) in &s.roles {
                        prop_assert_eq!(n.as_bytes(), r.name.as_slice());
                        let keys: Vec<_> = r.key_permission.iter().map(|p| (&p.key, &p.range_end)).collect();
                        prop_assert!(keys.windows(2).all(|w| w[0] < w[1]), "{}'s permissions unsorted or repeated", n);
                    }
                }
            }
        }
    }
}
