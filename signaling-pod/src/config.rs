//! Configuration from the environment (the SignalingPool controller sets these on
//! the Deployment, the secrets through `secretKeyRef`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

#[derive(Clone, Debug)]
pub struct Config {
    /// `SIGNALING_ADDR` (default `0.0.0.0:8080`).
    pub listen: SocketAddr,
    /// `SIGNALING_PUBLIC_URL`: the base URL clients use. Default: `http://` + the bound address.
    pub public_url: Option<String>,
    /// `SIGNALING_NAMESPACE` (or `POD_NAMESPACE`): where Meetings are read and created.
    pub namespace: String,
    /// `SIGNALING_REDIS_URL`
    pub redis_url: String,
    pub auth: AuthSettings,
    pub turn: Option<TurnSettings>,
    /// `POD_NAME`: this replica's name, for logs and the presence records.
    pub replica: String,
    /// `SIGNALING_POOL`: the SignalingPool this replica belongs to; its open connections
    /// are summed over the pool's replicas into the pool's `status.connections`.
    pub pool: Option<String>,
    /// `SIGNALING_RATE_PER_SECOND` / `SIGNALING_RATE_BURST`: messages per connection.
    pub rate_per_second: f64,
    pub rate_burst: f64,
    /// Connection caps, accept rate, deadlines, pings, the meeting-creation quota and the
    /// drain (`SIGNALING_MAX_CONNECTIONS`, … `SIGNALING_DRAIN_SECONDS`; see `limits.rs`).
    pub limits: crate::limits::LimitSettings,
    /// `SIGNALING_SESSION_TTL_SECONDS`: how long a session token lets a client resume (default 12 h).
    pub session_ttl: Duration,
    /// `SIGNALING_RECORDING_PVC`: the PVC recordings started here are stored on.
    pub recording_pvc: String,
    /// `SIGNALING_REDIS_CA_FILE` (a PEM CA for a `rediss://` URL), `SIGNALING_REDIS_USERNAME`
    /// and `SIGNALING_REDIS_PASSWORD` (an ACL user or `requirepass`; they override the URL's).
    pub redis_access: crate::store::RedisAccess,
}

/// How tokens are checked and signed (see `auth.rs`). Every key is at least 32 bytes.
#[derive(Clone, Debug, Default)]
pub struct AuthSettings {
    /// `SIGNALING_JWT_KEY`, then `SIGNALING_JWT_KEY_PREVIOUS`: HMAC keys (HS256) of user
    /// tokens, shared with the identity provider. The first signs nothing; both verify.
    pub user_hmac_keys: Vec<Vec<u8>>,
    /// `SIGNALING_USER_JWKS_PATH`: a JWKS file of the identity provider's public keys
    /// (RS256, ES256), e.g. a mounted ConfigMap; read again when it changes.
    pub user_jwks: Option<PathBuf>,
    /// `SIGNALING_USER_JWKS_REFRESH_SECONDS` (default 60): how often the JWKS file is
    /// read again (also at once when a token names an unknown key, at most every 5 s).
    pub user_jwks_refresh: Duration,
    /// `SIGNALING_USER_ISSUER`: the `iss` user tokens must carry (required with a JWKS).
    pub user_issuer: Option<String>,
    /// `SIGNALING_USER_AUDIENCE`: a value user tokens' `aud` must hold (required with a JWKS).
    pub user_audience: Option<String>,
    /// `SIGNALING_SESSION_KEY`: signaling's own HMAC key for session tokens. Unset: the
    /// replicas share a random key kept in Redis (`sb:session-key`); see docs/security.md.
    pub session_key: Option<Vec<u8>>,
    /// `SIGNALING_SESSION_KEY_PREVIOUS`: still accepted on session tokens while rotating.
    pub session_key_previous: Option<Vec<u8>>,
}

/// A key from the environment: unset (or empty) is `None`; shorter than
/// [`MIN_KEY_BYTES`](crate::auth::MIN_KEY_BYTES) is an error naming the variable.
pub fn key(name: &str, value: Option<String>) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(v) = value.filter(|v| !v.is_empty()) else { return Ok(None) };
    let min = crate::auth::MIN_KEY_BYTES;
    if v.len() < min {
        bail!(
            "{name} is {} bytes; keys must be at least {min} bytes (make one with `openssl rand -base64 48`)",
            v.len()
        );
    }
    Ok(Some(v.into_bytes()))
}

impl AuthSettings {
    /// Reads the `SIGNALING_*` auth variables through `get`, and checks them.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let user_key = key("SIGNALING_JWT_KEY", get("SIGNALING_JWT_KEY"))?;
        let user_previous = key("SIGNALING_JWT_KEY_PREVIOUS", get("SIGNALING_JWT_KEY_PREVIOUS"))?;
        if user_key.is_none() && user_previous.is_some() {
            bail!("SIGNALING_JWT_KEY_PREVIOUS is set without SIGNALING_JWT_KEY");
        }
        let user_jwks = get("SIGNALING_USER_JWKS_PATH").filter(|p| !p.is_empty()).map(PathBuf::from);
        if user_key.is_none() && user_jwks.is_none() {
            bail!(
                "SIGNALING_JWT_KEY (the HMAC key shared with the identity provider) or SIGNALING_USER_JWKS_PATH \
                 (its public keys) is required"
            );
        }
        let user_issuer = get("SIGNALING_USER_ISSUER").filter(|v| !v.is_empty());
        let user_audience = get("SIGNALING_USER_AUDIENCE").filter(|v| !v.is_empty());
        if user_jwks.is_some() {
            // Public keys of a provider that signs for other applications too: only
            // `iss` and `aud` tell our tokens from theirs.
            if user_issuer.is_none() {
                bail!("SIGNALING_USER_ISSUER is required with SIGNALING_USER_JWKS_PATH");
            }
            if user_audience.is_none() {
                bail!("SIGNALING_USER_AUDIENCE is required with SIGNALING_USER_JWKS_PATH");
            }
        }
        let session_key = key("SIGNALING_SESSION_KEY", get("SIGNALING_SESSION_KEY"))?;
        let session_key_previous = key("SIGNALING_SESSION_KEY_PREVIOUS", get("SIGNALING_SESSION_KEY_PREVIOUS"))?;
        if session_key.is_none() && session_key_previous.is_some() {
            bail!("SIGNALING_SESSION_KEY_PREVIOUS is set without SIGNALING_SESSION_KEY");
        }
        let user_keys: Vec<&Vec<u8>> = user_key.iter().chain(user_previous.iter()).collect();
        for (name, k) in
            [("SIGNALING_SESSION_KEY", &session_key), ("SIGNALING_SESSION_KEY_PREVIOUS", &session_key_previous)]
        {
            if k.as_ref().is_some_and(|k| user_keys.contains(&k)) {
                bail!("{name} must differ from the user-token keys (SIGNALING_JWT_KEY, SIGNALING_JWT_KEY_PREVIOUS)");
            }
        }
        let refresh = match get("SIGNALING_USER_JWKS_REFRESH_SECONDS").filter(|v| !v.is_empty()) {
            Some(v) => v.parse().ok().filter(|s| *s > 0).with_context(|| {
                format!("SIGNALING_USER_JWKS_REFRESH_SECONDS must be a positive number of seconds, not {v:?}")
            })?,
            None => 60,
        };
        Ok(Self {
            user_hmac_keys: user_key.into_iter().chain(user_previous).collect(),
            user_jwks,
            user_jwks_refresh: Duration::from_secs(refresh),
            user_issuer,
            user_audience,
            session_key,
            session_key_previous,
        })
    }
}

#[derive(Clone, Debug)]
pub struct TurnSettings {
    /// `SIGNALING_TURN_URLS`, comma-separated.
    pub urls: Vec<String>,
    /// `SIGNALING_TURN_SECRET`: shared with coturn's `static-auth-secret` (at least 32 bytes).
    pub secret: Vec<u8>,
    /// `SIGNALING_TURN_TTL_SECONDS` (default 600).
    pub ttl: Duration,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn seconds(name: &str, default: u64) -> anyhow::Result<Duration> {
    Ok(Duration::from_secs(match var(name) {
        Some(v) => v.parse().with_context(|| format!("{name} must be a number of seconds, not {v:?}"))?,
        None => default,
    }))
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let auth = AuthSettings::from_vars(var)?;
        let turn = match (var("SIGNALING_TURN_URLS"), key("SIGNALING_TURN_SECRET", var("SIGNALING_TURN_SECRET"))?) {
            (Some(urls), Some(secret)) => Some(TurnSettings {
                urls: urls.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect(),
                secret,
                ttl: seconds("SIGNALING_TURN_TTL_SECONDS", 600)?,
            }),
            (None, None) => None,
            _ => bail!("SIGNALING_TURN_URLS and SIGNALING_TURN_SECRET go together"),
        };
        Ok(Self {
            listen: var("SIGNALING_ADDR").unwrap_or("0.0.0.0:8080".into()).parse().context("SIGNALING_ADDR")?,
            public_url: var("SIGNALING_PUBLIC_URL").map(|u| u.trim_end_matches('/').to_owned()),
            namespace: var("SIGNALING_NAMESPACE").or(var("POD_NAMESPACE")).unwrap_or("default".into()),
            redis_url: var("SIGNALING_REDIS_URL").context("SIGNALING_REDIS_URL is required")?,
            auth,
            turn,
            replica: var("POD_NAME").unwrap_or_else(|| format!("signaling-{}", std::process::id())),
            pool: var("SIGNALING_POOL"),
            rate_per_second: var("SIGNALING_RATE_PER_SECOND")
                .map(|v| v.parse())
                .transpose()
                .context("SIGNALING_RATE_PER_SECOND")?
                .unwrap_or(20.0),
            rate_burst: var("SIGNALING_RATE_BURST")
                .map(|v| v.parse())
                .transpose()
                .context("SIGNALING_RATE_BURST")?
                .unwrap_or(60.0),
            limits: crate::limits::LimitSettings::from_vars(var)?,
            session_ttl: seconds("SIGNALING_SESSION_TTL_SECONDS", 12 * 3600)?,
            recording_pvc: var("SIGNALING_RECORDING_PVC").unwrap_or("recordings".into()),
            redis_access: crate::store::RedisAccess {
                ca_file: var("SIGNALING_REDIS_CA_FILE").map(PathBuf::from),
                username: var("SIGNALING_REDIS_USERNAME"),
                password: var("SIGNALING_REDIS_PASSWORD"),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<AuthSettings> {
        let vars: std::collections::HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        AuthSettings::from_vars(|k| vars.get(k).cloned())
    }

    const K1: &str = "0123456789abcdef0123456789abcdef";
    const K2: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn short_keys_are_refused_naming_the_variable() {
        for name in ["SIGNALING_JWT_KEY", "SIGNALING_SESSION_KEY", "SIGNALING_SESSION_KEY_PREVIOUS"] {
            let mut vars = vec![("SIGNALING_JWT_KEY", K1), ("SIGNALING_SESSION_KEY", K2)];
            vars.retain(|(k, _)| *k != name);
            vars.push((name, "only-31-bytes-long-0123456789ab"));
            let e = settings(&vars).unwrap_err().to_string();
            assert!(e.starts_with(name) && e.contains("31 bytes") && e.contains("at least 32"), "{e}");
        }
        assert!(
            key("SIGNALING_TURN_SECRET", Some("short".into()))
                .unwrap_err()
                .to_string()
                .contains("SIGNALING_TURN_SECRET")
        );
        assert_eq!(key("X", Some(K1.into())).unwrap(), Some(K1.as_bytes().to_vec()));
        assert_eq!(key("X", Some(String::new())).unwrap(), None);
    }

    #[test]
    fn keys_are_separate_and_a_jwks_needs_issuer_and_audience() {
        let s = settings(&[("SIGNALING_JWT_KEY", K1), ("SIGNALING_SESSION_KEY", K2)]).unwrap();
        assert_eq!(s.user_hmac_keys, vec![K1.as_bytes().to_vec()]);
        assert_eq!(s.session_key.as_deref(), Some(K2.as_bytes()));
        let e = settings(&[("SIGNALING_JWT_KEY", K1), ("SIGNALING_SESSION_KEY", K1)]).unwrap_err().to_string();
        assert!(e.contains("SIGNALING_SESSION_KEY must differ"), "{e}");
        assert!(settings(&[]).unwrap_err().to_string().contains("SIGNALING_JWT_KEY"));
        let e = settings(&[("SIGNALING_USER_JWKS_PATH", "/keys/jwks.json")]).unwrap_err().to_string();
        assert!(e.contains("SIGNALING_USER_ISSUER"), "{e}");
        let e = settings(&[("SIGNALING_USER_JWKS_PATH", "/k"), ("SIGNALING_USER_ISSUER", "https://idp")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SIGNALING_USER_AUDIENCE"), "{e}");
        let s = settings(&[
            ("SIGNALING_USER_JWKS_PATH", "/k"),
            ("SIGNALING_USER_ISSUER", "https://idp"),
            ("SIGNALING_USER_AUDIENCE", "switchboard"),
            ("SIGNALING_USER_JWKS_REFRESH_SECONDS", "5"),
        ])
        .unwrap();
        assert!(s.user_hmac_keys.is_empty() && s.session_key.is_none());
        assert_eq!(s.user_jwks_refresh, Duration::from_secs(5));
        let e = settings(&[("SIGNALING_JWT_KEY_PREVIOUS", K1), ("SIGNALING_USER_JWKS_PATH", "/k")]).unwrap_err();
        assert!(e.to_string().contains("without SIGNALING_JWT_KEY"));
    }
}
