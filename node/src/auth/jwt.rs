//! JWT tokens (`--auth-token jwt,pub-key=…,priv-key=…,sign-method=…,ttl=…`,
//! as etcd spells the flag): a login, once applied, is signed by the
//! member that checked the password, with etcd's claims `username`,
//! `revision` (the auth revision of the login) and `exp`. Any member
//! holding the public key verifies one without asking the others; it is
//! revoked only by expiry or by the auth revision moving on (the apply
//! check refuses an old revision). A member given only the public key
//! verifies tokens but cannot issue them. No clock here: `now` comes in.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::AuthError;

/// etcd's default JWT lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// What `--auth-token jwt,...` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtOptions {
    pub public_key: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub sign_method: String,
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtConfigError {
    #[error("--auth-token: unknown token type {0:?} (simple or jwt)")]
    UnknownType(String),
    #[error("--auth-token jwt: unknown option {0:?} (pub-key, priv-key, sign-method, ttl)")]
    UnknownOption(String),
    #[error("--auth-token jwt: sign-method is required")]
    NoSignMethod,
    #[error("--auth-token jwt: unsupported sign-method {0:?} (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA, HS256/384/512)")]
    SignMethod(String),
    #[error("--auth-token jwt: ttl {0:?} is not a duration such as 300s, 5m or 1h")]
    Ttl(String),
    #[error("--auth-token jwt: {0} needs pub-key")]
    NoPublicKey(String),
    #[error("--auth-token jwt: cannot read {path}: {cause}")]
    Read { path: String, cause: String },
    #[error("--auth-token jwt: {path} is not a {method} key: {cause} (keys are PEM: PKCS#8 private keys, as `openssl pkcs8 -topk8 -nocrypt` writes them, and SPKI public keys)")]
    Key {
        path: String,
        method: String,
        cause: String,
    },
}

/// Parses `--auth-token`: `None` for simple tokens.
pub fn parse_flag(spec: &str) -> Result<Option<JwtOptions>, JwtConfigError> {
    let mut parts = spec.split(',');
    match parts.next().unwrap_or("") {
        "simple" | "" => return Ok(None),
        "jwt" => {}
        other => return Err(JwtConfigError::UnknownType(other.to_string())),
    }
    let mut o = JwtOptions {
        public_key: None,
        private_key: None,
        sign_method: String::new(),
        ttl: DEFAULT_TTL,
    };
    for part in parts.filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| JwtConfigError::UnknownOption(part.to_string()))?;
        match k {
            "pub-key" => o.public_key = Some(PathBuf::from(v)),
            "priv-key" => o.private_key = Some(PathBuf::from(v)),
            "sign-method" => o.sign_method = v.to_string(),
            "ttl" => {
                o.ttl = go_duration(v)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| JwtConfigError::Ttl(v.into()))?
            }
            _ => return Err(JwtConfigError::UnknownOption(k.to_string())),
        }
    }
    if o.sign_method.is_empty() {
        return Err(JwtConfigError::NoSignMethod);
    }
    Ok(Some(o))
}

/// A Go-style duration of one unit: `300s`, `5m`, `1h`, `500ms` (or `0`).
pub(crate) fn go_duration(v: &str) -> Option<Duration> {
    if v == "0" {
        return Some(Duration::ZERO);
    }
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = v[..split].parse().ok()?;
    let d = match &v[split..] {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    Some(d)
}

#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// Signs and verifies this cluster's JWTs.
pub struct JwtTokens {
    alg: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    ttl: Duration,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, JwtConfigError> {
    std::fs::read(path).map_err(|e| JwtConfigError::Read {
        path: path.display().to_string(),
        cause: e.to_string(),
    })
}

impl JwtTokens {
    pub fn load(o: &JwtOptions) -> Result<JwtTokens, JwtConfigError> {
        let alg: Algorithm = o
            .sign_method
            .parse()
            .map_err(|_| JwtConfigError::SignMethod(o.sign_method.clone()))?;
        let method = o.sign_method.clone();
        let bad = |path: &PathBuf, e: jsonwebtoken::errors::Error| JwtConfigError::Key {
            path: path.display().to_string(),
            method: method.clone(),
            cause: e.to_string(),
        };
        let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        let (encoding, decoding) = if hmac {
            // A shared secret: the one file both signs and verifies.
            let path = o
                .private_key
                .as_ref()
                .or(o.public_key.as_ref())
                .ok_or_else(|| JwtConfigError::NoPublicKey(method.clone()))?;
            let secret = read(path)?;
            (
                Some(EncodingKey::from_secret(&secret).map_err(|e| bad(path, e))?),
                DecodingKey::from_secret(&secret).map_err(|e| bad(path, e))?,
            )
        } else {
            let public = o
                .public_key
                .as_ref()
                .ok_or_else(|| JwtConfigError::NoPublicKey(method.clone()))?;
            let pem = read(public)?;
            let decoding = match alg {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            }
            .map_err(|e| bad(public, e))?;
            let encoding = match &o.private_key {
                None => None,
                Some(path) => {
                    let pem = read(path)?;
                    Some(
                        match alg {
                            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
                            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                            _ => EncodingKey::from_rsa_pem(&pem),
                        }
                        .map_err(|e| bad(path, e))?,
                    )
                }
            };
            (encoding, decoding)
        };
        let tokens = JwtTokens {
            alg,
            encoding,
            decoding,
            ttl: o.ttl,
        };
        // A key pair that does not match would issue tokens nobody accepts.
        if tokens.encoding.is_some() {
            let t = tokens
                .sign("check", 1, 0)
                .map_err(|_| JwtConfigError::SignMethod(method.clone()))?;
            let mut v = Validation::new(alg);
            v.validate_exp = false;
            jsonwebtoken::decode::<Claims>(&t, &tokens.decoding, &v).map_err(|e| {
                JwtConfigError::Key {
                    path: o
                        .public_key
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    method,
                    cause: format!("does not verify what priv-key signs: {e}"),
                }
            })?;
        }
        Ok(tokens)
    }

    /// A token for `user` at auth revision `revision`, issued at `now`
    /// (seconds since the Unix epoch).
    pub fn sign(&self, user: &str, revision: u64, now: u64) -> Result<String, AuthError> {
        let key = self.encoding.as_ref().ok_or(AuthError::NoSigningKey)?;
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: now + self.ttl.as_secs().max(1),
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, key)
            .map_err(|_| AuthError::NoSigningKey)
    }

    /// The user and auth revision a valid token carries: signed by this
    /// cluster's key with its algorithm, not expired at `now`.
    pub fn verify(&self, token: &str, now: u64) -> Result<(String, u64), AuthError> {
        let mut v = Validation::new(self.alg);
        v.leeway = 0;
        v.validate_exp = false;
        v.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map_err(|_| AuthError::InvalidAuthToken)?;
        if data.claims.exp <= now || data.claims.username.is_empty() {
            return Err(AuthError::InvalidAuthToken);
        }
        Ok((data.claims.username, data.claims.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_keys(dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let (public, private) = (dir.join("pub.pem"), dir.join("priv.pem"));
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        std::fs::write(&private, pair.serialize_pem()).unwrap();
        (public, private)
    }

    #[test]
    fn flags_parse_as_etcd_spells_them() {
        assert_eq!(parse_flag("simple"), Ok(None));
        let o = parse_flag("jwt,pub-key=/p,priv-key=/k,sign-method=RS256,ttl=5m")
            .unwrap()
            .unwrap();
        assert_eq!(o.ttl, Duration::from_secs(300));
        assert_eq!(o.public_key, Some(PathBuf::from("/p")));
        assert_eq!(o.sign_method, "RS256");
        assert_eq!(
            parse_flag("jwt,pub-key=/p"),
            Err(JwtConfigError::NoSignMethod)
        );
        assert!(matches!(
            parse_flag("jwt,sign-method=RS256,ttl=5 minutes"),
            Err(JwtConfigError::Ttl(_))
        ));
        assert!(matches!(
            parse_flag("jwt,colour=red"),
            Err(JwtConfigError::UnknownOption(_))
        ));
        assert!(matches!(
            parse_flag("paseto"),
            Err(JwtConfigError::UnknownType(_))
        ));
    }

    #[test]
    fn tokens_verify_expire_and_refuse_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (public, private) = write_keys(dir.path());
        let opts = JwtOptions {
            public_key: Some(public),
            private_key: Some(private),
            sign_method: "ES256".into(),
            ttl: Duration::from_secs(10),
        };
        let jwt = JwtTokens::load(&opts).unwrap();
        let t = jwt.sign("alice", 7, 1_000).unwrap();
        assert_eq!(jwt.verify(&t, 1_005), Ok(("alice".to_string(), 7)));
        assert_eq!(jwt.verify(&t, 1_010), Err(AuthError::InvalidAuthToken));
        assert_eq!(
            jwt.verify("not.a.token", 1_000),
            Err(AuthError::InvalidAuthToken)
        );
        // Another cluster's key.
        let other_dir = tempfile::tempdir().unwrap();
        let (op, ok) = write_keys(other_dir.path());
        let other = JwtTokens::load(&JwtOptions {
            public_key: Some(op),
            private_key: Some(ok),
            ..opts.clone()
        })
        .unwrap();
        let forged = other.sign("root", 7, 1_000).unwrap();
        assert_eq!(jwt.verify(&forged, 1_001), Err(AuthError::InvalidAuthToken));
        // Verify-only: no private key, no tokens.
        let verifier = JwtTokens::load(&JwtOptions {
            private_key: None,
            ..opts.clone()
        })
        .unwrap();
        assert_eq!(verifier.verify(&t, 1_001), Ok(("alice".to_string(), 7)));
        assert_eq!(verifier.sign("alice", 7, 0), Err(AuthError::NoSigningKey));
        // A mismatched pair is refused at startup.
        let mismatched = JwtOptions {
            private_key: opts.private_key.clone(),
            public_key: Some(other_dir.path().join("pub.pem")),
            ..opts
        };
        assert!(matches!(
            JwtTokens::load(&mismatched),
            Err(JwtConfigError::Key { .. })
        ));
    }
}
