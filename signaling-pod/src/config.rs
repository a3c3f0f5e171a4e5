//! Configuration from the environment (the SignalingPool controller sets these on
//! the Deployment, the secrets through `secretKeyRef`).

use std::net::SocketAddr;
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
    /// `SIGNALING_JWT_KEY`: the HMAC key of user and session tokens (HS256).
    pub jwt_key: Vec<u8>,
    pub turn: Option<TurnSettings>,
    /// `POD_NAME`: this replica's name, for logs and the presence records.
    pub replica: String,
    /// `SIGNALING_POOL`: the SignalingPool this replica belongs to; its open connections
    /// are summed over the pool's replicas into the pool's `status.connections`.
    pub pool: Option<String>,
    /// `SIGNALING_RATE_PER_SECOND` / `SIGNALING_RATE_BURST`: messages per connection.
    pub rate_per_second: f64,
    pub rate_burst: f64,
    /// `SIGNALING_SESSION_TTL_SECONDS`: how long a session token lets a client resume (default 12 h).
    pub session_ttl: Duration,
    /// `SIGNALING_RECORDING_PVC`: the PVC recordings started here are stored on.
    pub recording_pvc: String,
}

#[derive(Clone, Debug)]
pub struct TurnSettings {
    /// `SIGNALING_TURN_URLS`, comma-separated.
    pub urls: Vec<String>,
    /// `SIGNALING_TURN_SECRET`: shared with coturn's `static-auth-secret`.
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
        let jwt_key = var("SIGNALING_JWT_KEY").context("SIGNALING_JWT_KEY is required")?.into_bytes();
        if jwt_key.len() < 16 {
            bail!("SIGNALING_JWT_KEY must be at least 16 bytes");
        }
        let turn = match (var("SIGNALING_TURN_URLS"), var("SIGNALING_TURN_SECRET")) {
            (Some(urls), Some(secret)) => Some(TurnSettings {
                urls: urls.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect(),
                secret: secret.into_bytes(),
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
            jwt_key,
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
            session_ttl: seconds("SIGNALING_SESSION_TTL_SECONDS", 12 * 3600)?,
            recording_pvc: var("SIGNALING_RECORDING_PVC").unwrap_or("recordings".into()),
        })
    }
}
