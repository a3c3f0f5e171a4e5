//! Configuration from the environment the operator gives the `sfu` container
//! (`switchboard_heartbeat::pod_env`), plus a few settings for local runs.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SWITCHBOARD_API_ADDR` | `$SWITCHBOARD_POD_IP:$SWITCHBOARD_API_PORT` (7880); `127.0.0.1:…` without a pod IP | internal API, probes, metrics |
//! | `SWITCHBOARD_SFU_API_TOKEN` / `SWITCHBOARD_SFU_API_TOKEN_FILE` | none | the pool's credential every API call but the probes and metrics must present (`Authorization: Bearer …`); the operator sets it from Secret `switchboard-sfu-api` |
//! | `SWITCHBOARD_SFU_API_INSECURE` | `false` | `true` starts the SFU without a credential, serving everyone: local runs only. Without it, an SFU with no credential refuses to start |
//! | `SWITCHBOARD_RELAY_ALLOWED_CIDRS` | none | comma-separated address blocks a relay origin must be in (see `relay::RelayPolicy`); with `SWITCHBOARD_API_PORT` set, origins must also listen on that port |
//! | `SWITCHBOARD_MEDIA_ADDR` | `0.0.0.0:$SWITCHBOARD_UDP_PORT_MIN` (ephemeral if unset) | the one UDP port all peers share |
//! | `SWITCHBOARD_ANNOUNCED_IPS` / `SWITCHBOARD_ANNOUNCED_ADDRESS` | none | addresses put in candidates instead of local ones |
//! | `SWITCHBOARD_ENDPOINT` | `http://$SWITCHBOARD_POD_IP:<api port>` | the API URL advertised in the heartbeat |
//! | `SWITCHBOARD_POOL`, `SWITCHBOARD_NAMESPACE`, `SWITCHBOARD_POD_NAME` | none | when all set, the heartbeat Lease is renewed |
//! | `SWITCHBOARD_DRAIN_TIMEOUT_SECONDS` | 14400 | after SIGTERM, exit when drained or after this long |
//! | `SWITCHBOARD_NAME` | pod name or `sfu` | this SFU's name on origins it relays from |
//! | `SWITCHBOARD_LOUDEST_SPEAKERS` | 3 | in rooms of at least `SWITCHBOARD_LOUDEST_FROM` clients, each listener receives only this many of the loudest other voices (`switchboard_sfu_core::loudest`); `0` forwards every voice to everyone |
//! | `SWITCHBOARD_LOUDEST_FROM` | 10 | the room size (clients) from which loudest-speaker audio applies |
//! | `SWITCHBOARD_SEND_SIDE_BWE` | `true` | `false` offers subscribers no transport-cc: their REMB (receiver-side estimate) alone chooses their layers, without probing, pacing or pausing video (see docs/sfu.md); for clients whose transport-cc misbehaves, and for comparing the two (`adapt-bench`) |
//! | `SWITCHBOARD_WORKER_THREADS` | all available cores | tokio worker threads; `1` runs one single-threaded runtime (the cheapest per packet, see BENCHMARKS); `0` is the default. The operator sets it from the container's CPU request |

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use switchboard_heartbeat::pod_env;
use switchboard_sfu_client::ApiToken;
use switchboard_sfu_client::auth::{INSECURE_ENV, TOKEN_ENV, TOKEN_FILE_ENV};

use crate::relay::{Cidr, RelayPolicy};
use switchboard_sfu_core::AudioPolicy;

pub const LOUDEST_SPEAKERS_ENV: &str = "SWITCHBOARD_LOUDEST_SPEAKERS";
pub const LOUDEST_FROM_ENV: &str = "SWITCHBOARD_LOUDEST_FROM";

/// Bounds: a listener's client decodes every voice it receives, and a room smaller than
/// 2 has nobody to choose among.
const MAX_LOUDEST_SPEAKERS: usize = 16;

/// `SWITCHBOARD_LOUDEST_SPEAKERS` and `SWITCHBOARD_LOUDEST_FROM`, over the defaults.
pub fn audio_policy_from_env() -> anyhow::Result<AudioPolicy> {
    audio_policy(var(LOUDEST_SPEAKERS_ENV), var(LOUDEST_FROM_ENV))
}

fn audio_policy(speakers: Option<String>, from_clients: Option<String>) -> anyhow::Result<AudioPolicy> {
    let default = AudioPolicy::default();
    let number = |name: &str, value: Option<String>, default: usize| -> anyhow::Result<usize> {
        match value {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| anyhow::anyhow!("{name} must be a whole number, not {v:?}")),
        }
    };
    let speakers = number(LOUDEST_SPEAKERS_ENV, speakers, default.speakers)?;
    anyhow::ensure!(
        speakers <= MAX_LOUDEST_SPEAKERS,
        "{LOUDEST_SPEAKERS_ENV} is at most {MAX_LOUDEST_SPEAKERS} (0 forwards every voice), not {speakers}"
    );
    let from_clients = number(LOUDEST_FROM_ENV, from_clients, default.from_clients)?;
    anyhow::ensure!(from_clients >= 2, "{LOUDEST_FROM_ENV} is at least 2 (a room size), not {from_clients}");
    Ok(AudioPolicy { speakers, from_clients, mixed: false })
}

pub const SEND_SIDE_BWE_ENV: &str = "SWITCHBOARD_SEND_SIDE_BWE";

/// `SWITCHBOARD_SEND_SIDE_BWE`: whether subscribers are offered transport-cc (default).
pub fn send_side_bwe_from_env() -> anyhow::Result<bool> {
    send_side_bwe(var(SEND_SIDE_BWE_ENV))
}

fn send_side_bwe(value: Option<String>) -> anyhow::Result<bool> {
    match value.as_deref() {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => anyhow::bail!("{SEND_SIDE_BWE_ENV} must be true or false, not {other:?}"),
    }
}

/// Address blocks a relay origin must be in.
pub const RELAY_ALLOWED_CIDRS_ENV: &str = "SWITCHBOARD_RELAY_ALLOWED_CIDRS";

pub struct Heartbeat {
    pub pool: String,
    pub namespace: String,
    pub pod: String,
    pub ttl: Duration,
}

pub struct Config {
    pub api_addr: SocketAddr,
    pub media_addr: SocketAddr,
    pub announced_ips: Vec<String>,
    /// Local addresses ICE gathers candidates from (empty: all).
    pub local_ips: Vec<std::net::IpAddr>,
    pub endpoint: Option<String>,
    pub heartbeat: Option<Heartbeat>,
    pub drain_timeout: Duration,
    pub name: String,
    /// None: one worker per available core.
    pub worker_threads: Option<usize>,
    /// Which audio listeners receive (loudest speakers only from a room size on).
    pub audio_policy: AudioPolicy,
    /// The credential callers must present; `None` only with `SWITCHBOARD_SFU_API_INSECURE=true`.
    pub api_token: Option<ApiToken>,
    /// Which relay origins this SFU accepts (`own` is filled in once the API listens).
    pub relay: RelayPolicy,
    /// Subscribers are offered transport-cc (the send-side estimate); else REMB only.
    pub send_side_bwe: bool,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let pool_api_port: Option<u16> =
            var(pod_env::API_PORT).map(|p| p.parse()).transpose().context("SWITCHBOARD_API_PORT")?;
        let api_port = pool_api_port.unwrap_or(7880);
        let udp_port: u16 =
            var(pod_env::UDP_PORT_MIN).map(|p| p.parse()).transpose().context("SWITCHBOARD_UDP_PORT_MIN")?.unwrap_or(0);
        let pod_ip: Option<std::net::IpAddr> = match var(pod_env::POD_IP) {
            Some(ip) => Some(ip.parse().with_context(|| format!("{}={ip}", pod_env::POD_IP))?),
            None => None,
        };
        // In a pod, the API listens on the pod's address only (with hostNetwork, the
        // node's address the kubelet reports, not every interface of the node); the
        // kubelet's probes come to that address. Outside a pod, on loopback.
        let api_addr = match var("SWITCHBOARD_API_ADDR") {
            Some(addr) => addr.parse().context("SWITCHBOARD_API_ADDR")?,
            None => SocketAddr::new(pod_ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()), api_port),
        };
        let media_addr = var("SWITCHBOARD_MEDIA_ADDR")
            .unwrap_or(format!("0.0.0.0:{udp_port}"))
            .parse()
            .context("SWITCHBOARD_MEDIA_ADDR")?;
        let announced_ips = match var(pod_env::ANNOUNCED_IPS) {
            Some(ips) => ips.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
            // The downward API knows the node's (internal) IP and the pod IP.
            None => match var(pod_env::ANNOUNCED_ADDRESS).as_deref() {
                Some("NodeExternalIP" | "NodeInternalIP") => var(pod_env::HOST_IP).into_iter().collect(),
                Some("PodIP") => var(pod_env::POD_IP).into_iter().collect(),
                _ => vec![],
            },
        };
        // Candidates come from the pod's own address only (with hostNetwork, the node's
        // address the kubelet reports), not from every interface of the node.
        let local_ips = pod_ip.into_iter().collect();
        let endpoint = var("SWITCHBOARD_ENDPOINT")
            .or_else(|| pod_ip.map(|ip| format!("http://{}", SocketAddr::new(ip, api_port))));
        let heartbeat = match (var(pod_env::POOL), var(pod_env::NAMESPACE), var(pod_env::POD_NAME)) {
            (Some(pool), Some(namespace), Some(pod)) => Some(Heartbeat {
                pool,
                namespace,
                pod,
                ttl: Duration::from_secs(
                    var(pod_env::HEARTBEAT_TTL_SECONDS).and_then(|s| s.parse().ok()).unwrap_or(10),
                ),
            }),
            _ => None,
        };
        let drain_timeout = Duration::from_secs(
            var("SWITCHBOARD_DRAIN_TIMEOUT_SECONDS").and_then(|s| s.parse().ok()).unwrap_or(4 * 3600),
        );
        let name = var("SWITCHBOARD_NAME").or_else(|| var(pod_env::POD_NAME)).unwrap_or_else(|| "sfu".into());
        let worker_threads = match var("SWITCHBOARD_WORKER_THREADS") {
            // 0: what the downward API gives for a zero CPU request.
            Some(n) => match n.parse::<usize>() {
                Ok(0) => None,
                Ok(n) => Some(n),
                _ => anyhow::bail!("SWITCHBOARD_WORKER_THREADS must be a whole number, not {n:?}"),
            },
            None => None,
        };
        let audio_policy = audio_policy_from_env()?;
        let relay = RelayPolicy {
            allowed: var(RELAY_ALLOWED_CIDRS_ENV)
                .unwrap_or_default()
                .split(',')
                .filter(|c| !c.trim().is_empty())
                .map(|c| c.parse::<Cidr>().map_err(|e| anyhow::anyhow!("{RELAY_ALLOWED_CIDRS_ENV}: {e}")))
                .collect::<anyhow::Result<_>>()?,
            port: pool_api_port,
            own: None,
        };
        let api_token = ApiToken::from_env()?;
        let insecure = match var(INSECURE_ENV).as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => anyhow::bail!("{INSECURE_ENV} must be true or false, not {other:?}"),
        };
        if api_token.is_none() && !insecure {
            anyhow::bail!(
                "the internal API needs the pool's credential: set {TOKEN_ENV} or {TOKEN_FILE_ENV} (the operator \
                 sets it from Secret switchboard-sfu-api), or {INSECURE_ENV}=true to serve without one (local runs only)"
            );
        }
        Ok(Self {
            api_addr,
            media_addr,
            announced_ips,
            local_ips,
            endpoint,
            heartbeat,
            drain_timeout,
            name,
            worker_threads,
            audio_policy,
            api_token,
            relay,
            send_side_bwe: send_side_bwe_from_env()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_side_estimate_is_on_unless_switched_off_by_name() {
        assert!(send_side_bwe(None).unwrap());
        assert!(send_side_bwe(Some("true".into())).unwrap());
        assert!(!send_side_bwe(Some("false".into())).unwrap());
        let e = send_side_bwe(Some("off".into())).unwrap_err().to_string();
        assert!(e.contains(SEND_SIDE_BWE_ENV) && e.contains("off"), "{e}");
    }

    #[test]
    fn the_audio_policy_is_bounded_with_named_errors() {
        let some = |v: &str| Some(v.to_owned());
        assert_eq!(audio_policy(None, None).unwrap(), AudioPolicy::default());
        assert_eq!(audio_policy(some("0"), None).unwrap(), AudioPolicy { speakers: 0, from_clients: 10, mixed: false });
        assert_eq!(
            audio_policy(some("5"), some("2")).unwrap(),
            AudioPolicy { speakers: 5, from_clients: 2, mixed: false }
        );
        for (speakers, from, named) in [
            (some("17"), None, "SWITCHBOARD_LOUDEST_SPEAKERS is at most 16"),
            (some("-1"), None, "SWITCHBOARD_LOUDEST_SPEAKERS must be a whole number"),
            (some("three"), None, "SWITCHBOARD_LOUDEST_SPEAKERS must be a whole number"),
            (None, some("1"), "SWITCHBOARD_LOUDEST_FROM is at least 2"),
            (None, some("1e3"), "SWITCHBOARD_LOUDEST_FROM must be a whole number"),
        ] {
            let e = audio_policy(speakers, from).unwrap_err().to_string();
            assert!(e.contains(named), "{e}");
        }
    }
}
