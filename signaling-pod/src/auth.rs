//! Tokens and TURN credentials.
//!
//! Users arrive with a JWT from the platform's identity provider, signed HS256 with
//! the key signaling shares with it (`sub` = user id, optional `name` and `role`).
//! A REST join hands back a *session token* (also HS256, `typ: session`) naming the
//! meeting, participant id and role; the WebSocket accepts only session tokens, and
//! the REST facade only user tokens, so neither can stand in for the other.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use switchboard_signaling_proto::Role;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UserClaims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The role the identity provider grants in meetings this user does not host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SessionClaims {
    /// Participant id.
    pub sub: String,
    /// Meeting name.
    pub mtg: String,
    pub usr: String,
    pub name: String,
    pub role: Role,
    pub exp: u64,
    pub typ: String,
}

const SESSION: &str = "session";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token invalid: {0}")]
    Invalid(String),
}

#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Self {
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret) }
    }

    fn check<T: for<'de> Deserialize<'de>>(&self, token: &str) -> Result<T, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_aud = false;
        decode::<T>(token, &self.decoding, &validation).map(|d| d.claims).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })
    }

    pub fn user(&self, token: &str) -> Result<UserClaims, AuthError> {
        let claims: UserClaims = self.check(token)?;
        if claims.typ.as_deref() == Some(SESSION) {
            return Err(AuthError::Invalid("a session token is not a user token".into()));
        }
        if claims.sub.is_empty() {
            return Err(AuthError::Invalid("empty `sub`".into()));
        }
        Ok(claims)
    }

    pub fn session(&self, token: &str) -> Result<SessionClaims, AuthError> {
        let claims: SessionClaims = self.check(token).map_err(|e| {
            if let AuthError::Invalid(m) = e { AuthError::Invalid(format!("not a session token ({m})")) } else { e }
        })?;
        if claims.typ != SESSION {
            return Err(AuthError::Invalid("not a session token".into()));
        }
        Ok(claims)
    }

    pub fn sign<T: Serialize>(&self, claims: &T) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding).expect("HS256 signing cannot fail")
    }

    pub fn issue_session(
        &self,
        participant: &str,
        meeting: &str,
        user: &str,
        name: &str,
        role: Role,
        exp: u64,
    ) -> String {
        self.sign(&SessionClaims {
            sub: participant.into(),
            mtg: meeting.into(),
            usr: user.into(),
            name: name.into(),
            role,
            exp,
            typ: SESSION.into(),
        })
    }
}

/// TURN credentials in the coturn REST-API style (`use-auth-secret`): the username is
/// `expiry:user` (expiry in Unix seconds) and the password is
/// base64(HMAC-SHA1(shared secret, username)). coturn recomputes the password and
/// refuses usernames whose expiry has passed.
pub fn turn_credentials(secret: &[u8], user: &str, expires_unix: u64) -> (String, String) {
    let username = format!("{expires_unix}:{user}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_password_matches_the_coturn_reference() {
        // Computed independently with openssl:
        // printf '1433895918:alice' | openssl dgst -sha1 -hmac north -binary | base64
        let (u, p) = turn_credentials(b"north", "alice", 1433895918);
        assert_eq!(u, "1433895918:alice");
        assert_eq!(p, "RqMvcGPYTJMGThVLSi4amT4zFtI=");
    }

    #[test]
    fn user_and_session_tokens_do_not_stand_in_for_each_other() {
        let keys = Keys::new(b"0123456789abcdef0123");
        let exp = now_unix() + 60;
        let user = keys.sign(&UserClaims { sub: "u1".into(), name: None, role: None, exp, typ: None });
        assert_eq!(keys.user(&user).unwrap().sub, "u1");
        assert!(matches!(keys.session(&user), Err(AuthError::Invalid(_))));
        let session = keys.issue_session("p1", "m", "u1", "Ann", Role::Viewer, exp);
        assert_eq!(keys.session(&session).unwrap().role, Role::Viewer);
        assert!(matches!(keys.user(&session), Err(AuthError::Invalid(_))));
        let old = keys.sign(&UserClaims { sub: "u1".into(), name: None, role: None, exp: now_unix() - 600, typ: None });
        assert_eq!(keys.user(&old), Err(AuthError::Expired));
        let forged = Keys::new(b"another-key-another-key").sign(&UserClaims {
            sub: "u1".into(),
            name: None,
            role: None,
            exp,
            typ: None,
        });
        assert!(matches!(keys.user(&forged), Err(AuthError::Invalid(_))));
    }
}
