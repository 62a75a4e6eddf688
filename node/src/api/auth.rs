//! The etcd Auth service: enabling auth, logins, users and roles. Changes
//! and logins go through the log (the auth store is replicated state, see
//! `crate::auth`); reads are answered here after a ReadIndex round, so
//! they are linearizable. Passwords are hashed here, before proposing, so
//! neither the log nor snapshots ever hold one.

use std::sync::Arc;
use std::time::Instant;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::etcd::etcdserverpb::auth_client::AuthClient;
use super::etcd::etcdserverpb::auth_server::Auth;
use super::etcd::etcdserverpb::*;
use super::status::auth_status;
use crate::auth::password;
use crate::auth::tokens::MAX_TOKENS;
use crate::auth::{auth_command::Op as AuthOp, AuthCommand, AuthError, Login};
use crate::command::Op;
use crate::server::driver::Outcome;
use crate::server::node::{unix_now, Ctx, Node, Route};

pub struct AuthService {
    pub node: Arc<Node>,
}

/// Logins retried when the auth store changed between the password check
/// and the login's entry.
const LOGIN_ATTEMPTS: usize = 3;

fn deny(e: AuthError) -> Status {
    auth_status(e)
}

/// 16 random letters: the part of a simple token the member picks.
fn token_prefix() -> Result<String, Status> {
    use ring::rand::SecureRandom as _;
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Status::internal("etcdserver: no randomness for a token"))?;
    // 256 = 4×52 + 48: the small bias toward the first letters costs
    // under a bit of the token's 91.
    Ok(bytes
        .iter()
        .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
        .collect())
}

impl AuthService {
    /// Proposes an auth change for the caller of `ctx` and answers with
    /// `make`'s response; a request that must go to the leader instead is
    /// sent there by `forward`, and the leader's answer returned.
    async fn change<Req, Resp, F, Fut>(
        &self,
        ctx: &Ctx,
        op: AuthOp,
        req: Req,
        forward: F,
        make: impl FnOnce(ResponseHeader) -> Resp,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(AuthClient<Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let cmd = Op::Auth(AuthCommand { op: Some(op) });
        match self.node.propose(cmd, ctx).await {
            Route::Done(Ok(a)) => Ok(Response::new(make(self.node.header(a.revision)))),
            Route::Done(Err(s)) => Err(s),
            Route::Forward(ch) => {
                forward(AuthClient::new(ch), Node::forward_request(req, ctx)).await
            }
        }
    }

    /// Waits until this member may answer a read of the auth store.
    async fn read(&self) -> Result<(), Status> {
        self.node.linearize().await
    }

    /// A bcrypt hash of `pw`, made off the async threads (a hash costs
    /// tens of milliseconds at the default cost).
    async fn hash(&self, pw: String) -> Result<String, Status> {
        let cost = self.node.auth.bcrypt_cost;
        let _slot = self.node.auth.bcrypt_slots.acquire().await;
        tokio::task::spawn_blocking(move || password::hash(&pw, cost))
            .await
            .map_err(|e| Status::internal(format!("etcdserver: hashing failed: {e}")))?
            .map_err(deny)
    }

    async fn verify(&self, pw: String, hashed: Vec<u8>) -> Result<bool, Status> {
        let _slot = self.node.auth.bcrypt_slots.acquire().await;
        tokio::task::spawn_blocking(move || password::verify(&pw, &hashed))
            .await
            .map_err(|e| Status::internal(format!("etcdserver: password check failed: {e}")))
    }
}

macro_rules! change {
    ($self:ident, $request:ident, $variant:ident, $method:ident, $resp:ident) => {{
        let ctx = $self.node.ctx(&$request).await?;
        let req = $request.into_inner();
        $self.node.check_size(prost::Message::encoded_len(&req))?;
        $self
            .change(
                &ctx,
                AuthOp::$variant(req.clone()),
                req,
                |mut c, r| async move { c.$method(r).await },
                |header| $resp {
                    header: Some(header),
                },
            )
            .await
    }};
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        change!(self, request, Enable, auth_enable, AuthEnableResponse)
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        change!(self, request, Disable, auth_disable, AuthDisableResponse)
    }

    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.read().await?;
        self.node.authorize(|a| a.check_admin(&ctx.caller))?;
        let (enabled, auth_revision) = {
            let store = self.node.shared.store();
            (store.auth().enabled(), store.auth().revision())
        };
        Ok(Response::new(AuthStatusResponse {
            header: Some(self.node.current_header()),
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        let req = request.into_inner();
        self.node.check_size(prost::Message::encoded_len(&req))?;
        let limiter = &self.node.auth.limiter;
        // Check the password against the store as of now: a password just
        // changed at another member must not still work here.
        self.read().await?;
        for _ in 0..LOGIN_ATTEMPTS {
            let (enabled, user, revision) = {
                let store = self.node.shared.store();
                let a = store.auth();
                (a.enabled(), a.user(&req.name).cloned(), a.revision())
            };
            if !enabled {
                return Err(deny(AuthError::AuthNotEnabled));
            }
            limiter.admit(&req.name, Instant::now()).map_err(deny)?;
            let Some(user) = user else {
                limiter.failed(&req.name, Instant::now());
                return Err(deny(AuthError::AuthFailed));
            };
            if user.options.as_ref().is_some_and(|o| o.no_password) {
                return Err(deny(AuthError::NoPasswordUser));
            }
            if !self.verify(req.password.clone(), user.password).await? {
                limiter.failed(&req.name, Instant::now());
                tracing::info!(user = %req.name, "a login failed: wrong password");
                return Err(deny(AuthError::AuthFailed));
            }
            limiter.succeeded(&req.name);
            if self.node.shared.tokens.len() >= MAX_TOKENS {
                return Err(deny(AuthError::TooManyRequests));
            }
            let jwt = self.node.auth.jwt.clone();
            let login = Login {
                name: req.name.clone(),
                // A JWT is signed here once the login applied; a simple
                // token is named by every member as it applies the login.
                token_prefix: if jwt.is_some() {
                    String::new()
                } else {
                    token_prefix()?
                },
                auth_revision: revision,
            };
            let cmd = Op::Auth(AuthCommand {
                op: Some(AuthOp::Login(login)),
            });
            match self.node.propose_as(cmd, None, ctx.forwarded).await {
                Route::Forward(ch) => {
                    return AuthClient::new(ch)
                        .authenticate(Node::forward_request(req, &ctx))
                        .await
                }
                Route::Done(Err(s)) if s.message() == AuthError::AuthOldRevision.to_string() => {
                    continue
                }
                Route::Done(Err(s)) => return Err(s),
                Route::Done(Ok(a)) => {
                    let token = match (a.outcome, jwt) {
                        (_, Some(jwt)) => {
                            jwt.sign(&req.name, revision, unix_now()).map_err(deny)?
                        }
                        (
                            Outcome::Auth {
                                token: Some(token), ..
                            },
                            None,
                        ) => token,
                        _ => {
                            return Err(Status::internal(
                                "etcdserver: login applied without a token",
                            ))
                        }
                    };
                    return Ok(Response::new(AuthenticateResponse {
                        header: Some(self.node.header(a.revision)),
                        token,
                    }));
                }
            }
        }
        Err(deny(AuthError::AuthOldRevision))
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        let mut req = request.into_inner();
        self.node.check_size(prost::Message::encoded_len(&req))?;
        let original = req.clone();
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        req.hashed_password = if no_password {
            String::new()
        } else {
            self.hash(std::mem::take(&mut req.password)).await?
        };
        req.password.clear();
        self.change(
            &ctx,
            AuthOp::UserAdd(req),
            original,
            |mut c, r| async move { c.user_add(r).await },
            |header| AuthUserAddResponse {
                header: Some(header),
            },
        )
        .await
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.read().await?;
        let name = request.into_inner().name;
        self.node
            .authorize(|a| a.check_user_get(&ctx.caller, &name))?;
        let roles = self
            .node
            .shared
            .store()
            .auth()
            .user(&name)
            .map(|u| u.roles.clone())
            .ok_or_else(|| deny(AuthError::UserNotFound))?;
        Ok(Response::new(AuthUserGetResponse {
            header: Some(self.node.current_header()),
            roles,
        }))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.read().await?;
        self.node.authorize(|a| a.check_admin(&ctx.caller))?;
        let users = self.node.shared.store().auth().user_names();
        Ok(Response::new(AuthUserListResponse {
            header: Some(self.node.current_header()),
            users,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        change!(
            self,
            request,
            UserDelete,
            user_delete,
            AuthUserDeleteResponse
        )
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        let mut req = request.into_inner();
        self.node.check_size(prost::Message::encoded_len(&req))?;
        let original = req.clone();
        req.hashed_password = self.hash(std::mem::take(&mut req.password)).await?;
        self.change(
            &ctx,
            AuthOp::UserChangePassword(req),
            original,
            |mut c, r| async move { c.user_change_password(r).await },
            |header| AuthUserChangePasswordResponse {
                header: Some(header),
            },
        )
        .await
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        change!(
            self,
            request,
            UserGrantRole,
            user_grant_role,
            AuthUserGrantRoleResponse
        )
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        change!(
            self,
            request,
            UserRevokeRole,
            user_revoke_role,
            AuthUserRevokeRoleResponse
        )
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        change!(self, request, RoleAdd, role_add, AuthRoleAddResponse)
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.read().await?;
        let name = request.into_inner().role;
        self.node
            .authorize(|a| a.check_role_get(&ctx.caller, &name))?;
        let perm = self
            .node
            .shared
            .store()
            .auth()
            .role(&name)
            .map(|r| r.key_permission.clone())
            .ok_or_else(|| deny(AuthError::RoleNotFound))?;
        Ok(Response::new(AuthRoleGetResponse {
            header: Some(self.node.current_header()),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.read().await?;
        self.node.authorize(|a| a.check_admin(&ctx.caller))?;
        let roles = self.node.shared.store().auth().role_names();
        Ok(Response::new(AuthRoleListResponse {
            header: Some(self.node.current_header()),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        change!(
            self,
            request,
            RoleDelete,
            role_delete,
            AuthRoleDeleteResponse
        )
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        change!(
            self,
            request,
            RoleGrantPermission,
            role_grant_permission,
            AuthRoleGrantPermissionResponse
        )
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        change!(
            self,
            request,
            RoleRevokePermission,
            role_revoke_permission,
            AuthRoleRevokePermissionResponse
        )
    }
}
