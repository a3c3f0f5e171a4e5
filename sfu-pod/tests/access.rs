//! Who may call the SFU's internal API (issue #26): every call but the probes and
//! metrics needs the pool's credential, and the relay endpoint joins only origins an
//! SFU of the pool can be at. Each test tries the attack first and checks that
//! nothing changed, then does the same with the credential.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use switchboard_sfu_api::{ApiError, ErrorCode, NodeState, NodeStatus, RoomStatus, paths};
use switchboard_sfu_client::auth::{INSECURE_ENV, TOKEN_ENV, TOKEN_FILE_ENV};
use switchboard_sfu_client::{ApiToken, Participant, Publish, SfuApi};

/// Every call that changes or reveals something, as (method, path, body).
fn calls() -> Vec<(Method, String, &'static str)> {
    let p = |template: &str, participant: &str, track: &str| paths::fill(template, "r", participant, track);
    let offer = r#"{"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"}"#;
    vec![
        (Method::POST, paths::DRAIN.into(), "{}"),
        (Method::GET, paths::STATUS.into(), ""),
        (Method::PUT, paths::fill(paths::ROOM, "other", "", ""), ""),
        // Nor may a caller without the credential make a room mixed (the SFU decoding it).
        (Method::PUT, paths::fill(paths::ROOM, "other", "", ""), r#"{"audio": "Mixed"}"#),
        (Method::PUT, p(paths::ROOM, "", ""), r#"{"audio": "Mixed"}"#),
        (Method::GET, p(paths::ROOM, "", ""), ""),
        (Method::DELETE, p(paths::ROOM, "", ""), ""),
        (Method::POST, p(paths::RELAY, "", ""), r#"{"origin": "http://127.0.0.1:9"}"#),
        (Method::POST, p(paths::PARTICIPANTS, "", ""), r#"{"participantId": "mallory", "kind": "Hidden"}"#),
        (Method::DELETE, p(paths::PARTICIPANT, "alice", ""), ""),
        (Method::POST, p(paths::PUBLISHER_OFFER, "alice", ""), offer),
        (Method::POST, p(paths::SUBSCRIBER_ANSWER, "bob", ""), r#"{"sdp": "v=0"}"#),
        (Method::POST, p(paths::SUBSCRIBER_RESTART, "bob", ""), ""),
        (Method::POST, p(paths::CANDIDATE, "alice", ""), r#"{"target": "publisher", "candidate": ""}"#),
        (Method::GET, format!("{}?after=0&waitMs=0", p(paths::EVENTS, "bob", "")), ""),
        (Method::PUT, p(paths::TRACK, "alice", "alice-mic"), r#"{"muted": true}"#),
        (Method::DELETE, p(paths::TRACK, "alice", "alice-cam"), ""),
        (Method::PUT, p(paths::SUBSCRIPTION, "bob", "alice-cam"), r#"{"maxLayer": 0}"#),
        (Method::DELETE, p(paths::SUBSCRIPTION, "bob", "alice-cam"), ""),
        // An unknown path says no more than a known one.
        (Method::GET, "/v1/secrets".into(), ""),
    ]
}

fn unauthorized((status, body): (u16, String), what: &str) {
    let e: ApiError = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: an ApiError body, got {body}"));
    assert_eq!((status, e.code), (401, ErrorCode::Unauthorized), "{what}: {}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_without_the_pools_credential_is_refused_and_changes_nothing() {
    let _slot = media_slot().await;
    let sfu = SfuProcess::start("sfu-guarded");
    let alice = join(&sfu.api, "r", "alice", vec![Publish::audio("alice-mic"), Publish::video("alice-cam")]).await;
    let bob = join(&sfu.api, "r", "bob", vec![]).await;
    bob.wait_until("alice's media", WAIT, |rx| ["alice-mic", "alice-cam"].iter().all(|t| rx.contains_key(*t)))
        .await
        .unwrap();
    let before: RoomStatus = sfu.api.get(&sfu.api.url(paths::ROOM, "r", "", "")).await.unwrap();

    // Without a credential, with another pool's, and with a header of another scheme.
    let base = sfu.api.base.clone();
    let anonymous = SfuApi::new(&base).with_token(None);
    let stranger = SfuApi::new(&base).with_token(Some(&ApiToken::generate()));
    let http = reqwest::Client::new();
    let mut refused = 0;
    for (method, path, body) in calls() {
        let url = format!("{base}{path}");
        unauthorized(anonymous.send_raw(method.clone(), &url, body).await.unwrap(), &format!("{method} {path}"));
        unauthorized(stranger.send_raw(method.clone(), &url, body).await.unwrap(), &format!("{method} {path}"));
        let basic = http
            .request(method.clone(), &url)
            .header("authorization", format!("Basic {}", TOKEN.expose()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), 401, "{method} {path} with another scheme");
        assert_eq!(basic.headers()["www-authenticate"], "Bearer realm=\"switchboard-sfu\"");
        refused += 3;
    }
    // Joining as a participant (the client's own path) is refused the same way.
    let intruder = Participant::join(anonymous.clone(), "r", "mallory", publishing(vec![])).await;
    assert_eq!(intruder.err().expect("refused").code(), Some(ErrorCode::Unauthorized));
    refused += 1;

    // Nothing changed: the same room, participants, tracks and subscriptions, no room
    // "other", no mallory, nobody muted, the SFU not draining, and media still flowing.
    let after: RoomStatus = sfu.api.get(&sfu.api.url(paths::ROOM, "r", "", "")).await.unwrap();
    assert_eq!(after, before);
    assert_eq!(after.participants, vec!["alice", "bob"]);
    assert!(after.tracks.iter().all(|t| !t.muted), "{:?}", after.tracks);
    let other = sfu.api.get::<RoomStatus>(&sfu.api.url(paths::ROOM, "other", "", "")).await.unwrap_err();
    assert_eq!(other.code(), Some(ErrorCode::UnknownRoom), "no room was opened");
    let status: NodeStatus = sfu.api.get(&format!("{base}{}", paths::STATUS)).await.unwrap();
    assert_eq!((status.state, status.rooms, status.participants), (NodeState::Ready, 1, 2));
    let cam = bob.received()["alice-cam"].packets;
    bob.wait_until("alice's video, still", WAIT, |rx| rx["alice-cam"].packets > cam + 30).await.unwrap();

    // Probes and metrics stay open (the kubelet and Prometheus have no credential);
    // the refusals are counted there.
    for path in [paths::HEALTHZ, paths::READYZ, paths::METRICS] {
        let (status, _) = anonymous.get_text(path).await.unwrap();
        assert_eq!(status, 200, "{path}");
    }
    let (_, metrics) = anonymous.get_text(paths::METRICS).await.unwrap();
    let line = format!("switchboard_sfu_api_errors_total{{code=\"unauthorized\"}} {refused}");
    assert!(metrics.contains(&line), "{line} in\n{metrics}");

    // With the pool's credential the same calls work.
    let api = &sfu.api;
    let _: serde_json::Value =
        api.put(&api.url(paths::TRACK, "r", "alice", "alice-mic"), &serde_json::json!({"muted": true})).await.unwrap();
    bob.wait_event(
        "alice muted",
        WAIT,
        |e| matches!(e, switchboard_sfu_api::Event::TrackMuted { track, muted: true, .. } if track == "alice-mic"),
    )
    .await
    .unwrap();
    let _: serde_json::Value = api.delete(&api.url(paths::SUBSCRIPTION, "r", "bob", "alice-cam")).await.unwrap();
    let room: RoomStatus = api.get(&api.url(paths::ROOM, "r", "", "")).await.unwrap();
    assert_eq!(room.subscriptions, before.subscriptions - 1);
    bob.leave().await.unwrap();
    let status: NodeStatus = api.post(&format!("{base}{}", paths::DRAIN), &serde_json::json!({})).await.unwrap();
    assert_eq!(status.state, NodeState::Draining);
    let _: serde_json::Value = api.delete(&api.url(paths::ROOM, "r", "", "")).await.unwrap();
    let status: NodeStatus = api.get(&format!("{base}{}", paths::STATUS)).await.unwrap();
    assert_eq!((status.rooms, status.participants), (0, 0));
    drop(alice);
}

/// A loopback listener that answers every connection with `body` (status 500), and
/// counts the connections it got.
async fn listener_answering(body: &'static str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            let reply = format!(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(reply.as_bytes()).await;
        }
    });
    (url, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_endpoint_refuses_origins_no_sfu_of_the_pool_can_be_at() {
    // Something listening on the node's loopback, which must never be asked anything.
    let (local_service, hits) = listener_answering("root:x:0:0").await;
    let port = local_service.rsplit(':').next().unwrap();
    // An SFU as the operator runs it (the pool's API port known), in a pod network
    // 10.0.0.0/8; and one with the defaults (no address blocks).
    let pod = SfuProcess::start_with(
        "sfu-pod-network",
        &[("SWITCHBOARD_RELAY_ALLOWED_CIDRS", "10.0.0.0/8"), ("SWITCHBOARD_API_PORT", port)],
    );
    let plain = SfuProcess::start_with("sfu-defaults", &[("SWITCHBOARD_RELAY_ALLOWED_CIDRS", "")]);
    let origins = [
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "scheme|path"),
        ("http://169.254.169.254:7880", "link-local"),
        ("http://[::ffff:169.254.169.254]:7880", "link-local"),
        ("http://[fd00:ec2::254]:7880", "metadata"),
        ("http://metadata.google.internal", "IP address"),
        (local_service.as_str(), "loopback"),
        (&format!("http://localhost:{port}"), "IP address"),
        (&format!("http://2130706433:{port}"), "loopback"),
        ("http://0.0.0.0:7880", "unspecified"),
        ("https://10.0.0.5:7880", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("http://admin:pw@10.0.0.5:7880", "user info"),
        ("http://10.0.0.5:7880/?next=http://169.254.169.254", "query"),
    ];
    for sfu in [&pod, &plain] {
        for (origin, why) in &origins {
            let url = sfu.api.url(paths::RELAY, "hijack", "", "");
            let e = sfu
                .api
                .post::<_, serde_json::Value>(&url, &serde_json::json!({"origin": origin}))
                .await
                .expect_err(origin);
            assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{origin}: {e}");
            let message = &e.refusal().unwrap().message;
            assert!(message.contains("refused"), "{origin}: {message}");
            assert!(why.split('|').any(|w| message.contains(w)), "{origin}: {message} should say {why}");
        }
        let room = sfu.api.get::<RoomStatus>(&sfu.api.url(paths::ROOM, "hijack", "", "")).await.unwrap_err();
        assert_eq!(room.code(), Some(ErrorCode::UnknownRoom), "a refused relay opens no room");
    }
    // Only the operator-run SFU knows the pool's network and port.
    for (origin, why) in [("http://8.8.8.8:7880", "outside"), ("http://10.0.0.5:22", "port 22")] {
        let e = pod
            .api
            .post::<_, serde_json::Value>(
                &pod.api.url(paths::RELAY, "hijack", "", ""),
                &serde_json::json!({"origin": origin}),
            )
            .await
            .expect_err(origin);
        assert!(e.refusal().unwrap().message.contains(why), "{origin}: {e}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing was asked of the loopback service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_presents_the_pools_credential_and_never_echoes_what_an_origin_said() {
    // Two SFUs of different pools (credentials): the origin refuses the edge.
    let other_pool = ApiToken::generate();
    let origin = SfuProcess::start_with("origin-other-pool", &[(TOKEN_ENV, other_pool.expose())]);
    let origin_api = origin.api.clone().with_token(Some(&other_pool));
    let _: RoomStatus = origin_api.put(&origin_api.url(paths::ROOM, "town-hall", "", ""), &()).await.unwrap();
    let edge = SfuProcess::start("edge");
    let relay = edge.api.url(paths::RELAY, "town-hall", "", "");
    let e = edge
        .api
        .post::<_, serde_json::Value>(&relay, &serde_json::json!({"origin": origin.api.base}))
        .await
        .expect_err("another pool's SFU");
    let message = &e.refusal().unwrap().message;
    assert!(message.contains("HTTP 401 (Unauthorized)"), "{message}");
    let room: RoomStatus = origin_api.get(&origin_api.url(paths::ROOM, "town-hall", "", "")).await.unwrap();
    assert!(room.participants.is_empty(), "no relay joined the other pool's room: {room:?}");

    // An origin the policy admits (loopback here) that is no SFU: its answer stays with
    // the edge, the caller learns the status only.
    let (service, hits) = listener_answering("aws_secret_access_key=AKIA-TOP-SECRET").await;
    let e = edge
        .api
        .post::<_, serde_json::Value>(
            &edge.api.url(paths::RELAY, "elsewhere", "", ""),
            &serde_json::json!({"origin": service}),
        )
        .await
        .expect_err("not an SFU");
    let message = &e.refusal().unwrap().message;
    assert!(message.contains("HTTP 500") && !message.contains("TOP-SECRET"), "{message}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

fn sfu_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sfu-pod"));
    cmd.env("SWITCHBOARD_API_ADDR", "127.0.0.1:0")
        .env("SWITCHBOARD_MEDIA_ADDR", "127.0.0.1:0")
        .env_remove(TOKEN_ENV)
        .env_remove(TOKEN_FILE_ENV)
        .env_remove(INSECURE_ENV)
        .env_remove("SWITCHBOARD_POOL");
    cmd
}

/// The first line of a started SFU (its addresses), or its stderr when it stopped.
fn first_line(mut cmd: std::process::Command) -> Result<(std::process::Child, String), String> {
    use std::io::BufRead as _;
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    if line.is_empty() {
        let out = child.wait_with_output().unwrap();
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok((child, line))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sfu_starts_only_with_a_credential_unless_told_it_is_a_local_run() {
    // No credential: it refuses to start, naming what to set.
    let stderr = first_line(sfu_command()).expect_err("no credential, no SFU");
    assert!(stderr.contains(TOKEN_ENV) && stderr.contains(INSECURE_ENV), "{stderr}");
    // A weak one is refused too.
    let mut weak = sfu_command();
    weak.env(TOKEN_ENV, "hunter2");
    assert!(first_line(weak).expect_err("weak").contains("at least 16"));

    // From a file (a mounted Secret), with its trailing newline.
    let token = ApiToken::generate();
    let file = std::env::temp_dir().join(format!("sfu-token-{}", std::process::id()));
    std::fs::write(&file, format!("{}\n", token.expose())).unwrap();
    let mut from_file = sfu_command();
    from_file.env(TOKEN_FILE_ENV, &file);
    let (mut child, line) = first_line(from_file).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let base = v["api"].as_str().unwrap();
    let status = format!("{base}{}", paths::STATUS);
    let with = SfuApi::new(base).with_token(Some(&token));
    assert!(with.get::<NodeStatus>(&status).await.is_ok());
    let without = SfuApi::new(base).with_token(None).get::<NodeStatus>(&status).await.unwrap_err();
    assert_eq!(without.code(), Some(ErrorCode::Unauthorized));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&file);

    // Told it is a local run: it serves everyone, and says so.
    let mut insecure = sfu_command();
    insecure.env(INSECURE_ENV, "true");
    let (mut child, line) = first_line(insecure).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let base = v["api"].as_str().unwrap();
    let open = SfuApi::new(base).with_token(None);
    assert!(open.get::<NodeStatus>(&format!("{base}{}", paths::STATUS)).await.is_ok());
    let _ = child.kill();
    let _ = child.wait();
}
