//! Abuse and load limits, and the drain on SIGTERM (issue #26), against signaling-pod
//! processes (in-process for the creation quota) with a real Redis and the local control
//! plane: clients that never read or never speak are closed by the join deadline, the
//! write timeout and the idle timeout without holding anyone up; the connection caps and
//! the accept rate refuse with 503/429 and `Retry-After`; meeting creation is throttled
//! per user over all replicas; SIGTERM drains a replica's clients to another.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use switchboard_signaling_client::{Backoff, SignalingClient};
use switchboard_signaling_proto::{Envelope, ReconnectPayload, types};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(url: &str) -> String {
    format!("{}/ws", url.replacen("http", "ws", 1))
}

/// A refused upgrade: status, `Retry-After` (seconds) and the body's `code`.
#[derive(Debug)]
struct Refusal {
    status: u16,
    retry_after: Option<u64>,
    code: String,
}

/// Opens a raw WebSocket, from `from` (a loopback address) when given, claiming to be
/// forwarded for `xff` when given.
async fn upgrade(url: &str, from: Option<&str>, xff: Option<&str>) -> Result<Ws, Refusal> {
    let mut req = ws_url(url).into_client_request().unwrap();
    if let Some(xff) = xff {
        req.headers_mut().insert("x-forwarded-for", xff.parse().unwrap());
    }
    let result = match from {
        None => tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws),
        Some(from) => {
            let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
            let stream = socket.connect(addr).await.unwrap();
            tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
                .await
                .map(|(ws, _)| ws)
        }
    };
    result.map_err(|e| match e {
        tungstenite::Error::Http(r) => {
            let body: Value = r.body().as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
            Refusal {
                status: r.status().as_u16(),
                retry_after: r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()),
                code: body["code"].as_str().unwrap_or_default().to_owned(),
            }
        }
        other => panic!("upgrade to {url} failed: {other}"),
    })
}

/// A metric's value on the replica at `url` (`name` with its labels, as exposed).
async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `check` holds of the metric.
async fn metric_reaches(url: &str, name: &str, within: Duration, check: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = metric(url, name).await;
        if check(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} is {v} after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn alive(c: &SignalingClient) -> Duration {
    let at = Instant::now();
    let pong = c.request(types::PING, json!({})).await.expect("the connection lives on");
    assert_eq!(pong.type_, types::PONG);
    at.elapsed()
}

async fn chat_reaches(from: &SignalingClient, to: &SignalingClient, text: &str) {
    from.request(types::CHAT, json!({ "text": text })).await.expect("chat");
    to.wait_for(&format!("chat {text:?}"), WAIT, |e| e.type_ == types::CHAT && e.payload["text"] == text)
        .await
        .unwrap();
}

/// Reads what the server sent until it ends the connection: the frames read.
async fn read_to_end(ws: &mut futures::stream::SplitStream<Ws>, within: Duration) -> Vec<Message> {
    tokio::time::timeout(within, async {
        let mut seen = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            let close = m.is_close();
            seen.push(m);
            if close {
                break;
            }
        }
        seen
    })
    .await
    .expect("the server did not end the connection")
}

/// The join deadline, the idle timeout and the write timeout close clients that do not
/// join, do not answer pings, or do not read — each on time, even though the client
/// never reads — while a reading client is kept alive by pings, and the others' requests
/// are answered promptly throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_closed_on_time_without_holding_up_others() {
    let env = env("lim-deadlines").await;
    meeting(&env, "deadlines", "hana", json!({})).await;
    assign(&env, "deadlines", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let server = Replica::start_with(
        &env,
        &env.ns.name,
        "deadlines",
        &[
            ("SIGNALING_JOIN_DEADLINE_SECONDS", "2"),
            ("SIGNALING_WRITE_TIMEOUT_SECONDS", "2"),
            // No ping before the join deadline: a client reading late answers the pings it
            // finds, and a Pong to a closed socket resets it (and drops what it buffered).
            ("SIGNALING_PING_SECONDS", "2.5"),
            ("SIGNALING_IDLE_TIMEOUT_SECONDS", "5"),
            ("SIGNALING_RATE_PER_SECOND", "100000"),
            ("SIGNALING_RATE_BURST", "100000"),
        ],
    );
    let (host, _, _) = connect(&rest(&server.url, "hana", None), "deadlines").await;
    let (mia, _, _) = connect(&rest(&server.url, "mia", None), "deadlines").await;
    let (fred, _, _) = connect(&rest(&server.url, "fred", None), "deadlines").await;

    // 1. Connects, sends nothing, reads nothing: closed by the join deadline.
    let silent = upgrade(&server.url, None, None).await.unwrap();
    let at = Instant::now();
    metric_reaches(&server.url, "switchboard_signaling_join_timeouts_total", Duration::from_secs(5), |v| v >= 1.0)
        .await;
    let took = at.elapsed();
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(4), "closed after {took:?}");
    let (_silent_tx, mut silent_rx) = silent.split();
    let seen = read_to_end(&mut silent_rx, Duration::from_secs(5)).await;
    let text: Vec<String> = seen.iter().filter_map(|m| m.to_text().ok().map(str::to_owned)).collect();
    assert!(text.iter().any(|t| t.contains("no `join` within 2 s")), "{text:?}");
    assert!(seen.last().is_some_and(Message::is_close), "{seen:?}");

    // 2. Joins, then neither reads nor writes: pings go unanswered, closed by the idle
    // timeout. The host, whose client reads (and so answers pings), sits idle as long
    // and stays.
    let quiet_grant = rest(&server.url, "quinn", None).join("deadlines").await.unwrap();
    let quiet = upgrade(&server.url, None, None).await.unwrap();
    let (mut quiet_tx, mut quiet_rx) = quiet.split();
    quiet_tx
        .send(Message::text(Envelope::new(types::JOIN, json!({"token": quiet_grant.session_token})).to_json()))
        .await
        .unwrap();
    host.wait_for("quinn joined", WAIT, |e| {
        e.type_ == types::PARTICIPANT_UPDATE && e.payload["id"] == quiet_grant.participant_id.as_str()
    })
    .await
    .unwrap();
    let at = Instant::now();
    metric_reaches(&server.url, "switchboard_signaling_idle_timeouts_total", Duration::from_secs(9), |v| v >= 1.0)
        .await;
    let took = at.elapsed();
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(8), "idle close after {took:?}");
    let seen = read_to_end(&mut quiet_rx, Duration::from_secs(5)).await;
    assert!(seen.iter().any(Message::is_ping), "the server pinged: {seen:?}");
    assert!(host.is_open() && mia.is_open(), "clients that answer pings stay");
    assert!(alive(&host).await < Duration::from_secs(1));

    // 3. Joins and stops reading (it keeps sending, so it is not idle) while a flood of
    // chat fills its socket: closed by the write timeout; the others are answered
    // promptly all along.
    let stuck_grant = rest(&server.url, "sam", None).join("deadlines").await.unwrap();
    let stuck = upgrade(&server.url, None, None).await.unwrap();
    let (mut stuck_tx, mut stuck_rx) = stuck.split();
    stuck_tx
        .send(Message::text(Envelope::new(types::JOIN, json!({"token": stuck_grant.session_token})).to_json()))
        .await
        .unwrap();
    host.wait_for("sam joined", WAIT, |e| {
        e.type_ == types::PARTICIPANT_UPDATE && e.payload["id"] == stuck_grant.participant_id.as_str()
    })
    .await
    .unwrap();
    let keep_talking = tokio::spawn(async move {
        loop {
            let ping = Envelope::new(types::PING, json!({})).to_json();
            if stuck_tx.send(Message::text(ping)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let text = "😀".repeat(4000);
    let mut sent = 0;
    let mut slowest = Duration::ZERO;
    while metric(&server.url, "switchboard_signaling_write_timeouts_total").await < 1.0 {
        assert!(sent < 20_000, "the stuck client was never closed");
        for _ in 0..50 {
            fred.send(Envelope::new(types::CHAT, json!({ "text": text })));
        }
        sent += 50;
        slowest = slowest.max(alive(&fred).await).max(alive(&host).await);
        // Once its socket is full, the write timeout runs: no need to pile up more.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(slowest < Duration::from_secs(2), "a request waited {slowest:?} behind the stuck client");
    keep_talking.abort();
    // It reads at last: what was buffered, then the end of the connection.
    read_to_end(&mut stuck_rx, Duration::from_secs(30)).await;
    // The others carry on.
    chat_reaches(&host, &mia, "carry on").await;
    assert_eq!(metric(&server.url, "switchboard_signaling_write_timeouts_total").await, 1.0);
    env.ns.delete().await;
}

/// Per-address and per-replica caps refuse upgrades with 429 / 503 and `Retry-After`;
/// `X-Forwarded-For` counts only from a trusted proxy; a closed connection frees its
/// place. The accept rate sheds a storm of upgrades with 503 and `Retry-After`, and the
/// client's resume waits as told and gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_and_the_accept_rate_refuse_with_retry_after() {
    let env = env("lim-caps").await;
    meeting(&env, "caps", "hana", json!({})).await;
    assign(&env, "caps", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let capped = Replica::start_with(
        &env,
        &env.ns.name,
        "capped",
        &[
            ("SIGNALING_MAX_CONNECTIONS", "5"),
            ("SIGNALING_MAX_CONNECTIONS_PER_IP", "3"),
            ("SIGNALING_TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    );
    let url = &capped.url;
    // From an untrusted peer (127.0.0.2), X-Forwarded-For is ignored: all one address.
    let mut spoofed = Vec::new();
    for i in 0..3 {
        spoofed.push(upgrade(url, Some("127.0.0.2"), Some(&format!("10.9.9.{i}"))).await.unwrap());
    }
    let r = upgrade(url, Some("127.0.0.2"), Some("10.9.9.99")).await.unwrap_err();
    assert_eq!((r.status, r.code.as_str()), (429, "maxConnectionsPerIp"), "{r:?}");
    assert!(r.retry_after.is_some_and(|s| s >= 1), "{r:?}");
    drop(spoofed);
    metric_reaches(url, "switchboard_signaling_connections", WAIT, |v| v == 0.0).await;

    // Through the trusted proxy (127.0.0.1), each forwarded address has its own count...
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(upgrade(url, None, Some("10.0.0.1")).await.unwrap());
    }
    let r = upgrade(url, None, Some("10.0.0.1")).await.unwrap_err();
    assert_eq!((r.status, r.code.as_str()), (429, "maxConnectionsPerIp"), "{r:?}");
    let _second =
        [upgrade(url, None, Some("10.0.0.2")).await.unwrap(), upgrade(url, None, Some("10.0.0.2")).await.unwrap()];
    // ...and the replica's total is capped.
    let r = upgrade(url, None, Some("10.0.0.3")).await.unwrap_err();
    assert_eq!((r.status, r.code.as_str()), (503, "maxConnections"), "{r:?}");
    assert!(r.retry_after.is_some_and(|s| s >= 1), "{r:?}");
    // A closed connection frees its place.
    drop(first.pop());
    let deadline = Instant::now() + WAIT;
    let _third = loop {
        match upgrade(url, None, Some("10.0.0.3")).await {
            Ok(ws) => break ws,
            Err(r) => assert!(r.status == 503 && Instant::now() < deadline, "{r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        metric(url, "switchboard_signaling_connections_refused_total{reason=\"maxConnectionsPerIp\"}").await >= 2.0
    );
    assert!(metric(url, "switchboard_signaling_connections_refused_total{reason=\"maxConnections\"}").await >= 1.0);

    // The accept rate: a burst of 3, then 1 a second.
    let slow = Replica::start_with(
        &env,
        &env.ns.name,
        "slow",
        &[("SIGNALING_ACCEPT_PER_SECOND", "1"), ("SIGNALING_ACCEPT_BURST", "3")],
    );
    let grant = rest(&slow.url, "hana", None).join("caps").await.unwrap();
    let storm = futures::future::join_all((0..20).map(|_| upgrade(&slow.url, None, None))).await;
    let (ok, refused): (Vec<_>, Vec<_>) = storm.into_iter().partition(Result::is_ok);
    assert!((3..=4).contains(&ok.len()), "{} of 20 got in", ok.len());
    for r in refused.into_iter().map(Result::unwrap_err) {
        assert_eq!((r.status, r.code.as_str()), (503, "acceptRate"), "{r:?}");
        assert!(r.retry_after.is_some_and(|s| (1..=4).contains(&s)), "{r:?}");
    }
    assert_eq!(reqwest::get(format!("{}/healthz", slow.url)).await.unwrap().status(), 200);
    // The client's resume is refused at first (the bucket is empty), waits as told, gets in.
    while upgrade(&slow.url, None, None).await.is_ok() {}
    let e = SignalingClient::connect(&ws_url(&slow.url)).await.err().expect("refused");
    assert_eq!(e.status(), Some(503));
    assert!(e.retry_after().is_some_and(|d| d >= Duration::from_secs(1)), "{e}");
    let at = Instant::now();
    let backoff = Backoff { first: Duration::from_millis(100), max: Duration::from_secs(1) };
    let (hana, joined) =
        SignalingClient::resume(&[&ws_url(&slow.url)], &grant.session_token, &backoff, WAIT).await.unwrap();
    assert!(at.elapsed() >= Duration::from_millis(900), "retried before the Retry-After: {:?}", at.elapsed());
    assert!(!joined.resumed);
    alive(&hana).await;
    assert!(metric(&slow.url, "switchboard_signaling_connections_refused_total{reason=\"acceptRate\"}").await >= 16.0);
    env.ns.delete().await;
}

/// A user creating meetings in a loop is refused with 429 and `Retry-After` once over
/// the quota, on every replica (the bucket is in Redis); other users are not; the
/// existing meeting and its participants carry on; the bucket refills as told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meeting_creation_is_throttled_per_user_over_all_replicas() {
    let env = env("lim-create").await;
    meeting(&env, "keep", "hana", json!({})).await;
    assign(&env, "keep", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let mut cfg = env.config();
    cfg.limits.create_per_minute = 6.0;
    cfg.limits.create_burst = 2;
    let a = env.in_process(cfg.clone()).await;
    let b = env.in_process(cfg).await;
    let (host, _, _) = connect(&rest(&a.url, "hana", None), "keep").await;
    let (mia, _, _) = connect(&rest(&b.url, "mia", None), "keep").await;

    let create = |url: String, user: &'static str| async move {
        let r = reqwest::Client::new()
            .post(format!("{url}/api/v1/meetings"))
            .bearer_auth(user_token(user, None, 600))
            .json(&json!({"title": "flood", "expectedParticipants": 2}))
            .send()
            .await
            .unwrap();
        let retry_after: Option<u64> = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or_default();
        (status, retry_after, body)
    };
    // The burst: two, on either replica.
    assert_eq!(create(a.url.clone(), "hana").await.0, 201);
    assert_eq!(create(b.url.clone(), "hana").await.0, 201);
    // Then refused, on both.
    let mut waits = Vec::new();
    for url in [&a.url, &b.url, &a.url, &b.url] {
        let (status, retry_after, body) = create(url.clone(), "hana").await;
        assert_eq!((status, body["code"].as_str()), (429, Some("tooManyRequests")), "{body}");
        let retry_after = retry_after.expect("Retry-After");
        assert!((1..=10).contains(&retry_after), "Retry-After: {retry_after}");
        waits.push(retry_after);
    }
    assert!(body_mentions_quota(&create(a.url.clone(), "hana").await.2));
    // Someone else is not held back by hana's quota.
    assert_eq!(create(b.url.clone(), "ben").await.0, 201);
    // The meeting and its participants carry on.
    alive(&host).await;
    chat_reaches(&host, &mia, "still here").await;
    chat_reaches(&mia, &host, "me too").await;
    let throttled = metric(&a.url, "switchboard_signaling_meeting_creations_throttled_total").await
        + metric(&b.url, "switchboard_signaling_meeting_creations_throttled_total").await;
    assert_eq!(throttled, 5.0);
    // After the wait it was told, hana may create one again.
    tokio::time::sleep(Duration::from_secs(*waits.last().unwrap())).await;
    assert_eq!(create(a.url.clone(), "hana").await.0, 201);
    env.ns.delete().await;
}

fn body_mentions_quota(body: &Value) -> bool {
    body["message"].as_str().is_some_and(|m| m.contains("meeting creations per minute"))
}

/// SIGTERM: the replica is unready at once and refuses upgrades (503); its clients get
/// `reconnect` (each at its own moment within the window) and resume on another replica
/// with their session tokens; one that does not move is closed with 1001 (going away);
/// the process exits 0 within SIGNALING_DRAIN_SECONDS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_clients_to_another_replica() {
    let env = env("lim-drain").await;
    meeting(&env, "drain", "hana", json!({})).await;
    assign(&env, "drain", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let mut a = Replica::start_with(&env, &env.ns.name, "replica-a", &[("SIGNALING_DRAIN_SECONDS", "6")]);
    let b = Replica::start_with(&env, &env.ns.name, "replica-b", &[]);
    let (hana, hana_grant, _) = connect(&rest(&a.url, "hana", None), "drain").await;
    let (mia, mia_grant, _) = connect(&rest(&a.url, "mia", None), "drain").await;
    assert_eq!(reqwest::get(format!("{}/readyz", a.url)).await.unwrap().status(), 200);

    let at = Instant::now();
    a.terminate();
    // Unready at once, and no new connections.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = reqwest::get(format!("{}/readyz", a.url)).await.unwrap();
        if r.status() == 503 {
            assert!(r.text().await.unwrap().contains("draining"));
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still {}", r.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = upgrade(&a.url, None, None).await.unwrap_err();
    assert_eq!((r.status, r.code.as_str()), (503, "draining"), "{r:?}");
    assert_eq!(reqwest::get(format!("{}/readyz", b.url)).await.unwrap().status(), 200);

    // Both are told to reconnect, within the window (2 connections: 1 s).
    for c in [&hana, &mia] {
        let notice = c.wait_for("reconnect", Duration::from_secs(3), |e| e.type_ == types::RECONNECT).await;
        let n: ReconnectPayload = notice.unwrap().payload_as().unwrap();
        assert!(n.retry_after_ms < 1000, "{n:?}");
    }
    // Hana moves at the moment named: her session resumes on B; the old connection ends.
    let n = hana.reconnect_notice().unwrap();
    tokio::time::sleep(Duration::from_millis(n.retry_after_ms)).await;
    let backoff = Backoff::default();
    let (hana2, joined) =
        SignalingClient::resume(&[&ws_url(&b.url)], &hana_grant.session_token, &backoff, WAIT).await.unwrap();
    assert!(joined.resumed && joined.participant.id == hana_grant.participant_id && joined.participant.admitted);
    hana.wait_closed(WAIT).await.unwrap();
    // Mia stays put: closed cleanly, 1001 going away, before the drain's end.
    mia.wait_closed(Duration::from_secs(6)).await.unwrap();
    let (code, reason) = mia.close_frame().expect("a Close frame");
    assert_eq!(code, 1001, "{reason}");
    // The process ends on its own, status 0, within SIGNALING_DRAIN_SECONDS.
    let status =
        a.wait_exit(Duration::from_secs(7).saturating_sub(at.elapsed())).await.expect("exits within the drain");
    assert!(status.success(), "{status:?}");
    assert!(at.elapsed() < Duration::from_secs(7), "{:?}", at.elapsed());
    // Mia resumes too; the meeting carries on on B, nobody having left.
    let (mia2, joined) =
        SignalingClient::resume(&[&ws_url(&a.url), &ws_url(&b.url)], &mia_grant.session_token, &backoff, WAIT)
            .await
            .unwrap();
    assert!(joined.resumed && joined.participant.admitted);
    chat_reaches(&hana2, &mia2, "moved").await;
    chat_reaches(&mia2, &hana2, "me too").await;
    assert_eq!(hana2.count(types::PARTICIPANT_LEFT), 0);
    env.ns.delete().await;
}
