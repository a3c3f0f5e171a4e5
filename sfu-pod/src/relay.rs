//! Cascading: this SFU joins an origin SFU as an edge of one room.
//!
//! On the origin the edge is one participant of kind Relay, publishing the tracks of
//! the edge's own participants and subscribing to everything else. On the edge the
//! origin is a pseudo-participant, `relay-origin`, whose published tracks are the
//! origin's (shown as their original publishers) and whose subscriptions are the
//! edge's local tracks. The core never sends a relay its own tracks back, so trees of
//! any depth carry each track once per link.
//!
//! The origin is checked first ([`RelayPolicy`]): the relay call must not make the SFU
//! fetch whatever URL its caller names (a cloud metadata service, something on the
//! node's loopback).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use switchboard_sfu_api::{self as api, Event, EventsResponse, SdpBody, TrackDescription, paths};
use switchboard_sfu_client::{ApiToken, SfuApi};
use switchboard_sfu_core::ParticipantKind;
use tracing::{info, warn};
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

use crate::sfu::{ApiResult, Negotiator, Peer, RoomEntry, Sfu, error};

/// The edge-side pseudo-participant standing for the origin.
pub const ORIGIN_PARTICIPANT: &str = "relay-origin";

/// An address block, `10.0.0.0/8` or `fd00::/8` (a bare address is a block of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (ip, prefix) = s.split_once('/').unwrap_or((s, ""));
        let network: IpAddr = ip.parse().map_err(|_| format!("{s:?} is not an address block like 10.0.0.0/8"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            "" => bits,
            p => p.parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(|| format!("{s:?}: bad prefix length"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:169.254.169.254`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Cloud metadata services outside the link-local ranges: Alibaba, Azure's wire
/// server, AWS's IPv6 endpoint.
const METADATA: [IpAddr; 3] = [
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Why no SFU can ever be at `ip`, if so.
fn never_an_sfu(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if METADATA.contains(&ip) => Some("a cloud metadata address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local (cloud metadata lives at 169.254.169.254)"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("link-local"),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.octets()[0] == 0 => Some("an unspecified address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("an unspecified address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        _ => None,
    }
}

/// Which origins this SFU relays from. An origin is an SFU of the pool: its API at
/// `http://<pod IP>:<API port>`, the endpoint its heartbeat advertises.
#[derive(Clone, Debug, Default)]
pub struct RelayPolicy {
    /// When not empty, the origin's address must be in one of these blocks
    /// (`SWITCHBOARD_RELAY_ALLOWED_CIDRS`: the pod network, or the nodes' with hostNetwork).
    pub allowed: Vec<Cidr>,
    /// The pool's API port when known (`SWITCHBOARD_API_PORT`, set by the operator on
    /// every SFU of the pool): the origin must listen on it.
    pub port: Option<u16>,
    /// This SFU's own API address: it never relays from itself.
    pub own: Option<SocketAddr>,
}

impl RelayPolicy {
    /// An SFU on loopback (the local runs of tests): origins on loopback too, any port.
    pub fn loopback() -> Self {
        Self { allowed: vec!["127.0.0.0/8".parse().expect("valid"), "::1".parse().expect("valid")], ..Self::default() }
    }

    /// The origin's API address, or why `origin` is refused. It must be exactly
    /// `http://<IP address>:<port>` (a trailing `/` allowed): no host names (whose
    /// answer could change between this check and the connection), user info, path,
    /// query or fragment. No SFU lives at a link-local, metadata, unspecified, broadcast
    /// or multicast address; loopback is refused unless an allowed block names it.
    pub fn check(&self, origin: &str) -> Result<SocketAddr, String> {
        let url = reqwest::Url::parse(origin).map_err(|e| format!("not a URL ({e})"))?;
        if url.scheme() != "http" {
            return Err(format!("the scheme must be http, not {}", url.scheme()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("user info is not allowed".into());
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err("only http://<address>:<port>, without a path, query or fragment".into());
        }
        // The URL parser has already written every IPv4 form (`2130706433`, `0x7f.1`) out.
        let host = url.host_str().unwrap_or_default();
        let ip: IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| "the host must be an IP address (an SFU's endpoint is its pod's address)".to_owned())?;
        let ip = canonical(ip);
        let port = url.port_or_known_default().unwrap_or(80);
        if let Some(why) = never_an_sfu(ip) {
            return Err(format!("{ip} is {why}"));
        }
        let allowed = self.allowed.iter().any(|c| c.contains(ip));
        if ip.is_loopback() && !allowed {
            return Err(format!("{ip} is loopback"));
        }
        if !self.allowed.is_empty() && !allowed {
            return Err(format!("{ip} is outside the allowed address blocks (SWITCHBOARD_RELAY_ALLOWED_CIDRS)"));
        }
        if let Some(expected) = self.port.filter(|p| *p != port) {
            return Err(format!("port {port} is not the pool's API port {expected}"));
        }
        let addr = SocketAddr::new(ip, port);
        if self
            .own
            .is_some_and(|own| own == addr || (own.ip().is_unspecified() && own.port() == port && ip.is_loopback()))
        {
            return Err("that is this SFU".into());
        }
        Ok(addr)
    }
}

/// What the edge may tell its caller about a failed call to the origin: the status
/// and code, never the body (which could be anything the address served).
fn summary(e: &switchboard_sfu_client::Error) -> String {
    use switchboard_sfu_client::Error;
    match e {
        Error::Refused { status, error, .. } => format!("HTTP {status} ({:?})", error.code),
        Error::Transport { .. } => "unreachable".into(),
        Error::Decode { .. } => "its reply is not an SFU's".into(),
        _ => "failed".into(),
    }
}

/// Joins the origin at `origin_url` as an edge of the room, presenting the process's
/// credential, without [`RelayPolicy`]: for callers inside the process (tests). The
/// relay endpoint calls [`start_checked`].
pub async fn start(sfu: Arc<Sfu>, room_name: &str, origin_url: &str, edge_name: &str) -> ApiResult<()> {
    join_origin(sfu, room_name, SfuApi::new(origin_url), edge_name).await
}

/// Joins the origin at `origin` (an address [`RelayPolicy::check`] accepted) as an
/// edge of the room, presenting `token` (the pool's credential).
pub async fn start_checked(
    sfu: Arc<Sfu>,
    room_name: &str,
    origin: SocketAddr,
    edge_name: &str,
    token: Option<&ApiToken>,
) -> ApiResult<()> {
    join_origin(sfu, room_name, SfuApi::new(format!("http://{origin}")).with_token(token), edge_name).await
}

async fn join_origin(sfu: Arc<Sfu>, room_name: &str, origin: SfuApi, edge_name: &str) -> ApiResult<()> {
    let room = sfu.open_room(room_name)?;
    let starting = room.relay_start.lock().await;
    if room.peer(ORIGIN_PARTICIPANT).is_ok() {
        return Ok(()); // already relaying
    }
    let origin_url = origin.base.clone();
    let relay_id = format!("relay-{edge_name}");
    let join = api::JoinRequest {
        participant_id: relay_id.clone(),
        kind: api::ParticipantKind::Relay,
        auto_subscribe: true,
        publish: true,
        offer: None,
        tracks: vec![],
    };
    let _: api::AnswerResponse =
        origin.post(&origin.url(paths::PARTICIPANTS, room_name, "", ""), &join).await.map_err(|e| {
            warn!(room = room_name, origin = %origin_url, error = %e, "the origin refused the relay");
            error(api::ErrorCode::BadRequest, format!("the origin {origin_url} refused the relay: {}", summary(&e)))
        })?;
    let negotiator =
        Negotiator::Origin { api: origin.clone(), room: room_name.to_owned(), participant: relay_id.clone() };
    let peer = sfu.new_peer(&room, ORIGIN_PARTICIPANT, ParticipantKind::Relay, negotiator).await?;
    sfu.attach_peer(&room, peer.clone())?;
    info!(room = room_name, origin = %origin_url, "relaying from origin");
    drop(starting);
    tokio::spawn(follow_origin(sfu, room, peer, origin, relay_id));
    Ok(())
}

/// Long-polls the origin for our relay participant: answers its offers, learns who
/// published what, and ends the relay when the origin closes it.
async fn follow_origin(sfu: Arc<Sfu>, room: Arc<RoomEntry>, peer: Arc<Peer>, origin: SfuApi, relay_id: String) {
    let mut after = 0;
    let mut failures = 0;
    loop {
        let url = format!("{}?after={after}&waitMs=10000", origin.url(paths::EVENTS, &room.name, &relay_id, ""));
        let batch: EventsResponse = match origin.get(&url).await {
            Ok(b) => {
                failures = 0;
                b
            }
            Err(e) => {
                failures += 1;
                if e.code().is_some() || failures > 10 {
                    warn!(room = %room.name, error = %e, "the origin ended the relay");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for e in batch.events {
            after = after.max(e.seq);
            match e.event {
                Event::SubscriberOffer { sdp } => {
                    if let Err(err) = answer(&sfu, &room, &peer, &origin, &relay_id, sdp).await {
                        warn!(room = %room.name, error = %err, "could not answer the origin");
                    }
                }
                Event::TrackPublished { participant, track, source, .. } => {
                    peer.describe(&[TrackDescription {
                        origin: Some(participant),
                        ..TrackDescription::new(track, source)
                    }]);
                }
                Event::Closed { .. } => {
                    sfu.drop_peer(&room, &peer.id, "the origin closed the relay").await;
                    return;
                }
                _ => {}
            }
        }
    }
    sfu.drop_peer(&room, &peer.id, "the origin is unreachable").await;
}

async fn answer(
    sfu: &Arc<Sfu>,
    room: &Arc<RoomEntry>,
    peer: &Arc<Peer>,
    origin: &SfuApi,
    relay_id: &str,
    sdp: String,
) -> anyhow::Result<()> {
    let offer = RTCSessionDescription::offer(sdp)?;
    let answer = sfu.answer_inbound(room, peer, offer).await?;
    let _: serde_json::Value =
        origin.post(&origin.url(paths::SUBSCRIBER_ANSWER, &room.name, relay_id, ""), &SdpBody { sdp: answer }).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_policy() -> RelayPolicy {
        RelayPolicy { port: Some(7880), own: Some("10.0.3.17:7880".parse().unwrap()), ..Default::default() }
    }

    #[test]
    fn an_sfu_endpoint_passes() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(pod_policy().check("http://10.0.3.18:7880"), Ok(addr("10.0.3.18:7880")));
        assert_eq!(pod_policy().check("http://10.0.3.18:7880/"), Ok(addr("10.0.3.18:7880")));
        assert_eq!(pod_policy().check("http://[fd12::7]:7880"), Ok(addr("[fd12::7]:7880")));
    }

    #[test]
    fn metadata_loopback_and_odd_urls_are_refused() {
        let p = pod_policy();
        let refused = |origin: &str, why: &str| {
            let e = p.check(origin).expect_err(origin);
            assert!(e.contains(why), "{origin}: {e}");
        };
        refused("http://169.254.169.254:7880", "link-local");
        refused("http://169.254.169.254", "link-local");
        refused("http://[::ffff:169.254.169.254]:7880", "link-local");
        refused("http://[fe80::1]:7880", "link-local");
        refused("http://[fd00:ec2::254]:7880", "metadata");
        refused("http://100.100.100.200:7880", "metadata");
        refused("http://127.0.0.1:7880", "loopback");
        refused("http://2130706433:7880", "loopback");
        refused("http://0x7f.1:7880", "loopback");
        refused("http://[::1]:7880", "loopback");
        refused("http://0.0.0.0:7880", "unspecified");
        refused("http://224.0.0.1:7880", "multicast");
        refused("http://255.255.255.255:7880", "broadcast");
        refused("http://metadata.google.internal:7880", "IP address");
        refused("http://localhost:7880", "IP address");
        refused("https://10.0.3.18:7880", "scheme");
        refused("file:///etc/passwd", "scheme");
        refused("gopher://10.0.3.18:7880", "scheme");
        refused("http://user:pw@10.0.3.18:7880", "user info");
        refused("http://10.0.3.18:7880/latest/meta-data", "path");
        refused("http://10.0.3.18:7880/?x=1", "query");
        refused("http://10.0.3.18:7880#frag", "fragment");
        refused("http://10.0.3.18:22", "port 22");
        refused("http://10.0.3.18", "port 80");
        refused("http://10.0.3.17:7880", "this SFU");
        refused("not a url", "not a URL");
    }

    #[test]
    fn allowed_blocks_narrow_origins_and_may_admit_loopback() {
        let p = RelayPolicy { allowed: vec!["10.0.0.0/16".parse().unwrap()], ..pod_policy() };
        assert!(p.check("http://10.0.200.1:7880").is_ok());
        assert!(p.check("http://10.1.0.1:7880").unwrap_err().contains("outside"));
        assert!(p.check("http://8.8.8.8:7880").unwrap_err().contains("outside"));
        let local = RelayPolicy::loopback();
        assert!(local.check("http://127.0.0.1:40123").is_ok(), "local runs: any port on loopback");
        assert!(local.check("http://[::1]:40123").is_ok());
        assert!(local.check("http://10.0.0.1:40123").unwrap_err().contains("outside"));
        assert!(local.check("http://169.254.169.254:80").unwrap_err().contains("link-local"), "never, even allowed");
    }

    #[test]
    fn blocks_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()), "IPv4 written as IPv6");
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let one: Cidr = "192.0.2.1".parse().unwrap();
        assert!(one.contains("192.0.2.1".parse().unwrap()) && !one.contains("192.0.2.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("ten/8".parse::<Cidr>().is_err());
    }
}
