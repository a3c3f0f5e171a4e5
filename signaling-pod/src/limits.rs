//! Abuse and load limits, and the drain on SIGTERM.
//!
//! * **Connection caps**: at most `SIGNALING_MAX_CONNECTIONS` WebSockets per replica
//!   (503) and `SIGNALING_MAX_CONNECTIONS_PER_IP` per client address (429; IPv6 counted
//!   per /64). The address is the TCP peer's, or — only when the peer is one of
//!   `SIGNALING_TRUSTED_PROXIES` — the nearest untrusted hop of `X-Forwarded-For`.
//! * **Accept rate**: a token bucket over new WebSocket upgrades per replica
//!   (`SIGNALING_ACCEPT_PER_SECOND`, `SIGNALING_ACCEPT_BURST`; 503), so a reconnect storm
//!   is shed, not served all at once.
//! * **Meeting creation**: a token bucket per user (`sub`) kept in Redis so it holds
//!   across replicas (`SIGNALING_CREATE_PER_MINUTE`, `SIGNALING_CREATE_BURST`; 429).
//! * **Connections** (applied in `session.rs`): a join deadline, a write deadline per
//!   frame, server pings and an idle timeout.
//! * **Drain** ([`drain`]): on SIGTERM readiness fails, upgrades are refused, every client
//!   is told to `reconnect` (spread over a window), stragglers are closed with 1001, and
//!   the process ends within `SIGNALING_DRAIN_SECONDS`.
//!
//! Every refusal answers `{code, message}` with a `Retry-After` (seconds) and counts in
//! `switchboard_signaling_connections_refused_total{reason}` or
//! `switchboard_signaling_meeting_creations_throttled_total`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{OnceCell, watch};

/// The limits' settings (environment variables in brackets; defaults in [`Default`]).
#[derive(Clone, Debug)]
pub struct LimitSettings {
    /// `SIGNALING_MAX_CONNECTIONS` (5000): WebSockets per replica; beyond, 503.
    pub max_connections: usize,
    /// `SIGNALING_MAX_CONNECTIONS_PER_IP` (50): WebSockets per client address (IPv6: per
    /// /64) on one replica; beyond, 429.
    pub max_connections_per_ip: usize,
    /// `SIGNALING_TRUSTED_PROXIES` (none): comma-separated CIDRs of proxies whose
    /// `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// `SIGNALING_ACCEPT_PER_SECOND` (100) and `SIGNALING_ACCEPT_BURST` (200): new
    /// WebSocket upgrades per replica; beyond, 503.
    pub accept_per_second: f64,
    pub accept_burst: f64,
    /// `SIGNALING_JOIN_DEADLINE_SECONDS` (10): a connection without `join` by then is closed.
    pub join_deadline: Duration,
    /// `SIGNALING_WRITE_TIMEOUT_SECONDS` (10): a frame the client has not taken within
    /// this long closes the connection.
    pub write_timeout: Duration,
    /// `SIGNALING_PING_SECONDS` (20): a WebSocket Ping this often.
    pub ping_interval: Duration,
    /// `SIGNALING_IDLE_TIMEOUT_SECONDS` (60): no frame at all from the client (a Pong
    /// counts) for this long closes the connection.
    pub idle_timeout: Duration,
    /// `SIGNALING_CREATE_PER_MINUTE` (20) and `SIGNALING_CREATE_BURST` (40): meetings a
    /// user may create over REST, over all replicas. 0 per minute: no limit.
    pub create_per_minute: f64,
    pub create_burst: u32,
    /// `SIGNALING_DRAIN_SECONDS` (20): how long the drain after SIGTERM may take; keep it
    /// under the pod's `terminationGracePeriodSeconds` (30, set by the operator).
    pub drain: Duration,
    /// `SIGNALING_JOINS_PER_SECOND` (50) and `SIGNALING_JOIN_BURST` (100): the join queue
    /// of one meeting, over all replicas. Joins beyond the burst wait their turn, in the
    /// order they came, and are let in at this rate (`queued {position, waitMs}` tells
    /// each where it is); nobody is turned away. A resumed session does not queue.
    pub joins_per_second: f64,
    pub join_burst: f64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_connections: 5000,
            max_connections_per_ip: 50,
            trusted_proxies: Vec::new(),
            accept_per_second: 100.0,
            accept_burst: 200.0,
            join_deadline: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            create_per_minute: 20.0,
            create_burst: 40,
            drain: Duration::from_secs(20),
            joins_per_second: 50.0,
            join_burst: 100.0,
        }
    }
}

impl LimitSettings {
    /// Reads the variables through `get` (unset or empty: the default) and checks them.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let d = Self::default();
        let number = |name: &str, default: f64, min: f64| -> anyhow::Result<f64> {
            match get(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n >= min)
                    .with_context(|| format!("{name} must be a number of at least {min}, not {v:?}")),
            }
        };
        let secs = |name: &str, default: Duration| -> anyhow::Result<Duration> {
            let v = number(name, default.as_secs_f64(), 0.0)?;
            if v <= 0.0 {
                bail!("{name} must be a positive number of seconds");
            }
            Ok(Duration::from_secs_f64(v))
        };
        let trusted_proxies = match get("SIGNALING_TRUSTED_PROXIES") {
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| c.parse::<Cidr>().with_context(|| format!("SIGNALING_TRUSTED_PROXIES: {c:?}")))
                .collect::<anyhow::Result<_>>()?,
            None => Vec::new(),
        };
        let s = Self {
            max_connections: number("SIGNALING_MAX_CONNECTIONS", d.max_connections as f64, 1.0)? as usize,
            max_connections_per_ip: number("SIGNALING_MAX_CONNECTIONS_PER_IP", d.max_connections_per_ip as f64, 1.0)?
                as usize,
            trusted_proxies,
            accept_per_second: number("SIGNALING_ACCEPT_PER_SECOND", d.accept_per_second, 0.001)?,
            accept_burst: number("SIGNALING_ACCEPT_BURST", d.accept_burst, 1.0)?,
            join_deadline: secs("SIGNALING_JOIN_DEADLINE_SECONDS", d.join_deadline)?,
            write_timeout: secs("SIGNALING_WRITE_TIMEOUT_SECONDS", d.write_timeout)?,
            ping_interval: secs("SIGNALING_PING_SECONDS", d.ping_interval)?,
            idle_timeout: secs("SIGNALING_IDLE_TIMEOUT_SECONDS", d.idle_timeout)?,
            create_per_minute: number("SIGNALING_CREATE_PER_MINUTE", d.create_per_minute, 0.0)?,
            create_burst: number("SIGNALING_CREATE_BURST", d.create_burst as f64, 1.0)? as u32,
            drain: secs("SIGNALING_DRAIN_SECONDS", d.drain)?,
            joins_per_second: number("SIGNALING_JOINS_PER_SECOND", d.joins_per_second, 0.01)?,
            join_burst: number("SIGNALING_JOIN_BURST", d.join_burst, 1.0)?,
        };
        if s.idle_timeout <= s.ping_interval {
            bail!(
                "SIGNALING_IDLE_TIMEOUT_SECONDS ({:?}) must be longer than SIGNALING_PING_SECONDS ({:?})",
                s.idle_timeout,
                s.ping_interval
            );
        }
        Ok(s)
    }
}

/// An address range (`10.0.0.0/8`, `fd00::/8`; a bare address is the one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (ip, bits) = match s.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s, None),
        };
        let net: IpAddr = ip.trim().parse().with_context(|| format!("{ip:?} is not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .with_context(|| format!("{b:?} is not a prefix length of 0 to {max}"))?,
            None => max,
        };
        Ok(Self { net, bits })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix(u32::from(net).into(), 32, self.bits) == prefix(u32::from(ip).into(), 32, self.bits)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix(u128::from(net), 128, self.bits) == prefix(u128::from(ip), 128, self.bits)
            }
            _ => false,
        }
    }
}

fn prefix(v: u128, width: u8, bits: u8) -> u128 {
    if bits == 0 { 0 } else { v >> (width - bits) }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the
/// nearest hop of `X-Forwarded-For` (read from the right) that is not a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else { break };
        client = ip.to_canonical();
        if !is_trusted(client) {
            break;
        }
    }
    client
}

/// What connections are counted by: the address, IPv6 by its /64 (one host's share).
fn counting_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` held.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self { tokens: burst, rate, burst, at: now }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.take_n(1.0, now)
    }

    /// Takes `n` tokens at once, or none and says how long until they are there (`n`
    /// over `burst` never fits: the wait is then what `n` would take from empty).
    pub fn take_n(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.tokens = (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / self.rate))
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// The limits' metrics (`switchboard_signaling_…`).
#[derive(Default, Clone)]
pub struct LimitMetrics {
    pub refused: Family<ReasonLabel, Counter>,
    pub write_timeouts: Counter,
    pub idle_timeouts: Counter,
    pub join_timeouts: Counter,
    pub creations_throttled: Counter,
    pub drained: Counter,
    pub draining: Gauge,
}

impl LimitMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "connections_refused",
            "WebSocket upgrades refused, by reason (draining, maxConnections, maxConnectionsPerIp, acceptRate)",
            self.refused.clone(),
        );
        r.register(
            "write_timeouts",
            "Connections closed because a frame was not taken within the write timeout",
            self.write_timeouts.clone(),
        );
        r.register("idle_timeouts", "Connections closed after the idle timeout", self.idle_timeouts.clone());
        r.register("join_timeouts", "Connections closed for not joining in time", self.join_timeouts.clone());
        r.register(
            "meeting_creations_throttled",
            "REST meeting creations refused by the per-user quota",
            self.creations_throttled.clone(),
        );
        r.register("connections_drained", "Connections told to reconnect elsewhere on a drain", self.drained.clone());
        r.register("draining", "1 while the replica drains (after SIGTERM)", self.draining.clone());
    }
}

/// Where the replica is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    Serving,
    /// Told to reconnect: each connection's client is given a moment within `window`.
    Notify {
        window: Duration,
    },
    /// Close what is left (1001 going away).
    Close,
}

#[derive(Default, Debug)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// The replica's counts, accept bucket, quota connection and drain state.
pub struct Limits {
    pub settings: LimitSettings,
    pub metrics: LimitMetrics,
    open: Arc<Mutex<Open>>,
    accept: Mutex<TokenBucket>,
    drain: watch::Sender<Drain>,
    redis: OnceCell<redis::aio::ConnectionManager>,
}

/// One admitted connection: counted until dropped.
#[derive(Debug)]
pub struct Permit {
    open: Arc<Mutex<Open>>,
    key: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap();
        open.total -= 1;
        if let Some(n) = open.per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.key);
            }
        }
    }
}

/// A refusal with `Retry-After`: `{code, message}`.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Duration,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let secs = self.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let mut r =
            (self.status, Json(crate::rest::ApiError { code: self.code, message: self.message })).into_response();
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        r
    }
}

/// A little random spread on top of a `Retry-After`, so refused clients do not come back together.
fn spread(max: Duration) -> Duration {
    use rand::Rng as _;
    max.mul_f64(rand::rng().random_range(0.0..1.0))
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Self {
        let accept = TokenBucket::new(settings.accept_per_second, settings.accept_burst, Instant::now());
        Self {
            settings,
            metrics: LimitMetrics::default(),
            open: Arc::default(),
            accept: Mutex::new(accept),
            drain: watch::channel(Drain::Serving).0,
            redis: OnceCell::new(),
        }
    }

    fn refuse(&self, status: StatusCode, code: &'static str, message: String, retry_after: Duration) -> Refused {
        self.metrics.refused.get_or_create(&ReasonLabel { reason: code.into() }).inc();
        tracing::debug!(code, %message, "upgrade refused");
        Refused { status, code, message, retry_after }
    }

    /// Admits a new WebSocket from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Permit, Refused> {
        let s = &self.settings;
        if self.draining() {
            return Err(self.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "this replica is shutting down; connect again (another replica will answer)".into(),
                Duration::from_secs(1),
            ));
        }
        let key = counting_key(ip);
        let mut open = self.open.lock().unwrap();
        if open.total >= s.max_connections {
            return Err(self.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "maxConnections",
                format!("this replica holds its maximum of {} connections; try again shortly", s.max_connections),
                Duration::from_secs(2) + spread(Duration::from_secs(5)),
            ));
        }
        if open.per_ip.get(&key).copied().unwrap_or(0) >= s.max_connections_per_ip {
            return Err(self.refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "maxConnectionsPerIp",
                format!("{ip} has {} connections open, the most allowed from one address", s.max_connections_per_ip),
                Duration::from_secs(10) + spread(Duration::from_secs(10)),
            ));
        }
        if let Err(wait) = self.accept.lock().unwrap().take(Instant::now()) {
            return Err(self.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "acceptRate",
                format!("over {} new connections per second; try again shortly", s.accept_per_second),
                wait + spread(Duration::from_secs(2)),
            ));
        }
        open.total += 1;
        *open.per_ip.entry(key).or_default() += 1;
        Ok(Permit { open: self.open.clone(), key })
    }

    /// Connections admitted and not closed yet.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap().total
    }

    pub fn draining(&self) -> bool {
        *self.drain.borrow() != Drain::Serving
    }

    /// The drain state, for a connection to follow.
    pub fn drain_state(&self) -> watch::Receiver<Drain> {
        self.drain.subscribe()
    }

    /// Takes one of `user`'s meeting creations, or refuses with how long to wait.
    /// A token bucket per user in Redis (GCRA: the key holds the theoretical arrival time
    /// in ms), so every replica draws from the same one. Redis unreachable: allowed.
    pub async fn take_creation(&self, redis: &redis::Client, user: &str) -> Result<(), Refused> {
        let s = &self.settings;
        if s.create_per_minute <= 0.0 {
            return Ok(());
        }
        let interval_ms = 60_000.0 / s.create_per_minute;
        let tolerance_ms = interval_ms * (s.create_burst.max(1) - 1) as f64;
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        let result: Result<i64, redis::RedisError> = async {
            let mut conn = self.redis.get_or_try_init(|| redis.get_connection_manager()).await?.clone();
            redis::cmd("EVAL")
                .arg(GCRA)
                .arg(1)
                .arg(format!("sb:quota:create:{user}"))
                .arg(now_ms as u64)
                .arg(interval_ms)
                .arg(tolerance_ms)
                .query_async(&mut conn)
                .await
        }
        .await;
        match result {
            Ok(wait_ms) if wait_ms > 0 => {
                self.metrics.creations_throttled.inc();
                let retry = Duration::from_millis(wait_ms as u64);
                Err(Refused {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    code: "tooManyRequests",
                    message: format!(
                        "over {} meeting creations per minute (burst {}); try again in {} s",
                        s.create_per_minute,
                        s.create_burst,
                        retry.as_secs_f64().ceil()
                    ),
                    retry_after: retry,
                })
            }
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "creation quota: Redis failed; allowing");
                Ok(())
            }
        }
    }
}

/// GCRA: ARGV now (ms), emission interval (ms), tolerance (ms). Returns 0 (taken) or
/// the milliseconds until a creation is allowed.
const GCRA: &str = r"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - tolerance
if wait > 0 then return math.ceil(wait) end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil(new - now))
return 0
";

/// How long a draining replica gives its clients to reconnect elsewhere: its
/// connections at the accept rate of one replica (so the others are not flooded),
/// at least 1 s and at most half the drain.
pub fn notify_window(connections: usize, accept_per_second: f64, drain: Duration) -> Duration {
    let spread = Duration::from_secs_f64(connections as f64 / accept_per_second.max(0.001));
    spread.clamp(Duration::from_secs(1), (drain / 2).max(Duration::from_secs(1)))
}

/// How long after the notice stragglers are closed: the window and 2 s more, within the
/// drain less 2 s (left for the closes and the exit).
pub fn close_after(window: Duration, drain: Duration) -> Duration {
    (window + Duration::from_secs(2)).min(drain.saturating_sub(Duration::from_secs(2))).max(window.min(drain))
}

/// The drain on SIGTERM: readiness fails and upgrades are refused at once; every
/// connection is told to `reconnect` (each client at its own moment within the
/// window); the rest are closed with 1001; returns when none are left or the drain's
/// time is up.
pub async fn drain(app: &crate::app::App) {
    let s = &app.limits.settings;
    let started = tokio::time::Instant::now();
    let open = app.limits.open();
    let window = notify_window(open, s.accept_per_second, s.drain);
    app.limits.metrics.draining.set(1);
    tracing::info!(connections = open, window = ?window, drain = ?s.drain, "SIGTERM: draining");
    app.limits.drain.send_replace(Drain::Notify { window });
    let close_at = started + close_after(window, s.drain);
    let end = started + s.drain.saturating_sub(Duration::from_millis(500));
    let mut closing = false;
    loop {
        let now = tokio::time::Instant::now();
        if app.limits.open() == 0 || now >= end {
            break;
        }
        if !closing && now >= close_at {
            closing = true;
            tracing::info!(left = app.limits.open(), "closing the connections left");
            app.limits.drain.send_replace(Drain::Close);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(left = app.limits.open(), after = ?started.elapsed(), "drained");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_buckets_refill_and_say_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 3.0, t0);
        assert!(b.take(t0).is_ok() && b.take(t0).is_ok() && b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(b.take(t0 + Duration::from_millis(500)).is_ok());
        assert!(b.take(t0 + Duration::from_millis(500)).is_err());
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.take(later).is_ok()).count(), 3);
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.9.9".parse().unwrap()), "IPv4-mapped addresses are IPv4");
        let one: Cidr = "192.168.1.7".parse().unwrap();
        assert!(one.contains("192.168.1.7".parse().unwrap()) && !one.contains("192.168.1.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.9".parse().unwrap());
        // From the trusted proxy: the nearest untrusted hop (a client cannot forge what the proxy appended).
        assert_eq!(client_ip("10.0.0.1".parse().unwrap(), &h, &trusted), "1.2.3.4".parse::<IpAddr>().unwrap());
        // From anyone else: the peer, whatever it claims.
        assert_eq!(client_ip("5.5.5.5".parse().unwrap(), &h, &trusted), "5.5.5.5".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip("10.0.0.1".parse().unwrap(), &h, &[]), "10.0.0.1".parse::<IpAddr>().unwrap());
        // A garbled hop stops the walk at the last good one.
        let mut bad = HeaderMap::new();
        bad.insert("x-forwarded-for", "junk, 10.0.0.3".parse().unwrap());
        assert_eq!(client_ip("10.0.0.1".parse().unwrap(), &bad, &trusted), "10.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(
            counting_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            counting_key("2001:db8:1:2:bbbb::9".parse().unwrap())
        );
    }

    #[test]
    fn caps_refuse_with_retry_after_and_permits_give_back() {
        let limits = Limits::new(LimitSettings {
            max_connections: 3,
            max_connections_per_ip: 2,
            accept_burst: 100.0,
            ..Default::default()
        });
        let a: IpAddr = "1.1.1.1".parse().unwrap();
        let b: IpAddr = "2.2.2.2".parse().unwrap();
        let p1 = limits.admit(a).unwrap();
        let _p2 = limits.admit(a).unwrap();
        let e = limits.admit(a).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::TOO_MANY_REQUESTS, "maxConnectionsPerIp"));
        let _p3 = limits.admit(b).unwrap();
        let e = limits.admit(b).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::SERVICE_UNAVAILABLE, "maxConnections"));
        assert!(e.retry_after >= Duration::from_secs(1));
        drop(p1);
        assert_eq!(limits.open(), 2);
        let _p4 = limits.admit(b).unwrap();
        let r = limits.admit(b).unwrap_err().into_response();
        assert!(r.headers()[header::RETRY_AFTER].to_str().unwrap().parse::<u64>().unwrap() >= 1);
        limits.drain.send_replace(Drain::Close);
        assert_eq!(limits.admit("9.9.9.9".parse().unwrap()).unwrap_err().code, "draining");
    }

    #[test]
    fn the_accept_rate_sheds_a_storm() {
        let limits = Limits::new(LimitSettings { accept_per_second: 1.0, accept_burst: 5.0, ..Default::default() });
        let ip: IpAddr = "1.1.1.1".parse().unwrap();
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..40 {
            match limits.admit(ip) {
                Ok(p) => held.push(p),
                Err(e) => {
                    assert_eq!((e.status, e.code), (StatusCode::SERVICE_UNAVAILABLE, "acceptRate"));
                    refused += 1;
                }
            }
        }
        assert_eq!((held.len(), refused), (5, 35));
    }

    #[test]
    fn the_drain_spreads_reconnects_within_its_time() {
        let drain = Duration::from_secs(20);
        assert_eq!(notify_window(10, 100.0, drain), Duration::from_secs(1));
        assert_eq!(notify_window(500, 100.0, drain), Duration::from_secs(5));
        assert_eq!(notify_window(5000, 100.0, drain), Duration::from_secs(10));
        assert_eq!(close_after(Duration::from_secs(5), drain), Duration::from_secs(7));
        assert_eq!(close_after(Duration::from_secs(10), drain), Duration::from_secs(12));
        let short = Duration::from_secs(5);
        let w = notify_window(3, 100.0, short);
        assert_eq!((w, close_after(w, short)), (Duration::from_secs(1), Duration::from_secs(3)));
        assert!(close_after(Duration::from_secs(1), Duration::from_secs(2)) <= Duration::from_secs(2));
    }

    #[test]
    fn settings_have_defaults_and_name_bad_variables() {
        let s = LimitSettings::from_vars(|_| None).unwrap();
        assert_eq!((s.max_connections, s.max_connections_per_ip), (5000, 50));
        assert_eq!(s.drain, Duration::from_secs(20));
        let vars = [
            ("SIGNALING_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.0.1"),
            ("SIGNALING_WRITE_TIMEOUT_SECONDS", "0.5"),
            ("SIGNALING_CREATE_PER_MINUTE", "0"),
        ];
        let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let s = LimitSettings::from_vars(get).unwrap();
        assert_eq!(s.trusted_proxies.len(), 2);
        assert_eq!(s.write_timeout, Duration::from_millis(500));
        assert_eq!(s.create_per_minute, 0.0);
        for (name, value) in [
            ("SIGNALING_MAX_CONNECTIONS", "0"),
            ("SIGNALING_ACCEPT_PER_SECOND", "fast"),
            ("SIGNALING_TRUSTED_PROXIES", "10.0.0.0/40"),
            ("SIGNALING_DRAIN_SECONDS", "0"),
            ("SIGNALING_IDLE_TIMEOUT_SECONDS", "5"),
        ] {
            let e = LimitSettings::from_vars(|k| (k == name).then(|| value.to_owned())).unwrap_err();
            assert!(format!("{e:#}").contains(name), "{name}: {e:#}");
        }
    }
}
