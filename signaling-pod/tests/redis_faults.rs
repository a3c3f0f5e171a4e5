//! signaling-pod when Redis fails: a restart (the pub/sub reconnects and resubscribes,
//! clients are resynced, nobody leaves), a `FLUSHALL` (participants and removals are
//! written back), an outage longer than presence lasts (nobody is reaped before the
//! grace period), and Redis behind a password, an ACL user and TLS.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use switchboard_signaling_client::SignalingClient;
use switchboard_signaling_proto::{Envelope, types};

/// A redis-server on a port of its own that a test can kill and start again there.
struct RedisProc {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// `redis-cli` arguments to reach it (TLS, credentials).
    cli: Vec<String>,
}

impl RedisProc {
    fn start(name: &str, args: &[&str]) -> Self {
        let port = switchboard_e2e::free_port();
        let dir = std::env::temp_dir().join(format!("sb-redis-faults-{name}-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Self {
            port,
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            cli: vec!["-p".into(), port.to_string()],
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        // A TLS server listens on `--tls-port` and not on `--port`.
        let plain = !self.args.iter().any(|a| a == "--tls-port");
        let mut c = Command::new("redis-server");
        c.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(if plain { vec!["--port", port.as_str()] } else { vec!["--port", "0", "--tls-port", port.as_str()] })
            .args(self.args.iter().filter(|a| *a != "--tls-port"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(c.spawn().expect("redis-server runs"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no goodbyes, nothing saved.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs a command with redis-cli; its output, trimmed.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(&self.cli)
            .arg("--raw")
            .args(args)
            .stderr(Stdio::null())
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn in_process(env: &TestEnv, redis: &RedisProc, replica: &str) -> signaling_pod::Running {
    let mut cfg = env.config();
    cfg.redis_url = redis.url();
    cfg.replica = replica.into();
    env.in_process(cfg).await
}

/// `/readyz`: its status and body.
async fn readiness(url: &str) -> (u16, String) {
    match reqwest::get(format!("{url}/readyz")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

async fn wait_ready(url: &str, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = readiness(url).await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "{url}/readyz did not answer {want} within {within:?}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends chat `text` from `from` until signaling accepts it (Redis may still be coming
/// back), then waits for `to` to hear it.
async fn chat_reaches(from: &SignalingClient, to: &SignalingClient, text: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match from.request(types::CHAT, serde_json::json!({ "text": text })).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "chat {text:?} still refused: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    to.wait_for(&format!("chat {text:?}"), WAIT, |e| e.type_ == types::CHAT && e.payload["text"] == text)
        .await
        .unwrap_or_else(|e| panic!("chat {text:?} did not arrive: {e}"));
}

fn left(c: &SignalingClient) -> Vec<Envelope> {
    c.received().into_iter().filter(|e| e.type_ == types::PARTICIPANT_LEFT).collect()
}

/// Waits until `c` received, after its first `after` messages, one satisfying `check`.
async fn arrives_after(c: &SignalingClient, after: usize, what: &str, check: impl Fn(&Envelope) -> bool) {
    switchboard_e2e::wait_for(what, WAIT, || {
        let found = c.received().iter().skip(after).any(&check);
        async move { found }
    })
    .await;
}

/// The participant ids in the meeting's hash (there is one meeting per Redis here).
fn participants_in_redis(redis: &RedisProc) -> Vec<String> {
    let key = redis.cli(&["--scan", "--pattern", "sb:*:p"]);
    if key.is_empty() {
        return Vec::new();
    }
    let mut ids: Vec<String> = redis.cli(&["HKEYS", &key]).lines().map(str::to_owned).collect();
    ids.sort();
    ids
}

/// Redis is killed under a live meeting spread over two replicas: both report it on
/// `/readyz`, and once Redis is back on the same port (empty) their pub/sub is
/// subscribed again — chat crosses the replicas — the clients are sent the participants
/// afresh, the participants are in Redis again, and nobody was announced gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_resubscribes_resyncs_and_removes_nobody() {
    let env = env("sig-redis-restart").await;
    let mut redis = RedisProc::start("restart", &[]);
    meeting(&env, "standup", "hana", serde_json::json!({})).await;
    assign(&env, "standup", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let a = in_process(&env, &redis, "replica-a").await;
    let b = in_process(&env, &redis, "replica-b").await;

    let (host, host_grant, _) = connect(&rest(&a.url, "hana", None), "standup").await;
    let (guest, guest_grant, _) = connect(&rest(&b.url, "gus", None), "standup").await;
    chat_reaches(&guest, &host, "before").await;
    chat_reaches(&host, &guest, "before, back").await;
    let mut ids = vec![host_grant.participant_id.clone(), guest_grant.participant_id.clone()];
    ids.sort();
    assert_eq!(participants_in_redis(&redis), ids);

    redis.kill();
    for url in [&a.url, &b.url] {
        let body = wait_ready(url, 503, WAIT).await;
        assert!(body.contains("redis"), "{body}");
    }
    let (host_seen, guest_seen) = (host.received().len(), guest.received().len());
    redis.spawn();
    for url in [&a.url, &b.url] {
        wait_ready(url, 200, WAIT).await;
    }

    // Each client is told who is in the meeting again (what was published meanwhile was lost).
    let guest_id = guest_grant.participant_id.clone();
    arrives_after(&host, host_seen, "the guest, resynced", |e| {
        e.type_ == types::PARTICIPANT_UPDATE && e.payload["id"] == guest_id.as_str()
    })
    .await;
    let host_id = host_grant.participant_id.clone();
    arrives_after(&guest, guest_seen, "the host, resynced", |e| {
        e.type_ == types::PARTICIPANT_UPDATE && e.payload["id"] == host_id.as_str()
    })
    .await;
    // Both replicas subscribed again: chat crosses them both ways.
    chat_reaches(&guest, &host, "after").await;
    chat_reaches(&host, &guest, "after, back").await;
    // Redis came back empty; the participants were written back.
    switchboard_e2e::wait_for("both participants in Redis again", WAIT, || {
        let found = participants_in_redis(&redis);
        let ids = ids.clone();
        async move { found == ids }
    })
    .await;
    let metrics = reqwest::get(format!("{}/metrics", a.url)).await.unwrap().text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchboard_signaling_redis_pubsub_reconnects_total") && !l.ends_with(" 0")),
        "{metrics}"
    );

    assert!(host.is_open() && guest.is_open());
    assert_eq!(left(&host), vec![], "nobody left");
    assert_eq!(left(&guest), vec![], "nobody left");
    env.ns.delete().await;
}

/// `FLUSHALL` during a live meeting: the participants are written back (and still
/// present after a refresh period and the reaper's passes), chat flows, and a user a
/// host removed before the flush cannot join again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_forgets_neither_the_participants_nor_the_removed() {
    let env = env("sig-redis-flush").await;
    let redis = RedisProc::start("flush", &[]);
    meeting(&env, "retro", "hana", serde_json::json!({})).await;
    assign(&env, "retro", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let a = in_process(&env, &redis, "replica-a").await;
    let b = in_process(&env, &redis, "replica-b").await;

    let (host, host_grant, _) = connect(&rest(&a.url, "hana", None), "retro").await;
    let (guest, guest_grant, _) = connect(&rest(&b.url, "gus", None), "retro").await;
    let (intruder, intruder_grant, _) = connect(&rest(&b.url, "ivan", None), "retro").await;
    host.request(types::REMOVE, serde_json::json!({"participantId": intruder_grant.participant_id})).await.unwrap();
    intruder.wait_closed(WAIT).await.unwrap();
    let (status, body) =
        rest(&a.url, "ivan", None).call(reqwest::Method::POST, "/api/v1/meetings/retro/join", None).await.unwrap();
    assert_eq!((status, body["code"].as_str()), (403, Some("removed")), "{body}");
    let mut ids = vec![host_grant.participant_id.clone(), guest_grant.participant_id.clone()];
    ids.sort();
    assert_eq!(participants_in_redis(&redis), ids);
    let (host_left, guest_left) = (left(&host).len(), left(&guest).len());

    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    assert_eq!(participants_in_redis(&redis), Vec::<String>::new());
    switchboard_e2e::wait_for("both participants and the removal back in Redis", WAIT, || {
        let back = participants_in_redis(&redis) == ids
            && redis.cli(&["--scan", "--pattern", "sb:*:removed"]).lines().count() == 1;
        async move { back }
    })
    .await;
    // A refresh period (and five reaper passes) later they are still there.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(participants_in_redis(&redis), ids);
    chat_reaches(&guest, &host, "still here").await;
    chat_reaches(&host, &guest, "so am I").await;
    for server in [&a.url, &b.url] {
        let (status, body) =
            rest(server, "ivan", None).call(reqwest::Method::POST, "/api/v1/meetings/retro/join", None).await.unwrap();
        assert_eq!((status, body["code"].as_str()), (403, Some("removed")), "{body}");
    }
    // A newcomer sees both.
    let (_, _, joined) = connect(&rest(&a.url, "nina", None), "retro").await;
    let mut seen: Vec<String> = joined.participants.iter().map(|p| p.id.clone()).collect();
    seen.sort();
    assert!(ids.iter().all(|id| seen.contains(id)), "{seen:?}");
    assert_eq!(left(&host).len(), host_left, "nobody left after the flush: {:?}", left(&host));
    assert_eq!(left(&guest).len(), guest_left, "nobody left after the flush: {:?}", left(&guest));
    env.ns.delete().await;
}

/// Redis is down for longer than presence lasts and comes back with its data as it was
/// saved before (every presence key expired meanwhile): nobody is reaped during the
/// grace period — not the live participants, whose refresh writes presence back, and
/// not yet the one whose client went away before the outage — and once it has passed
/// the one really gone is announced gone, and only it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_is_reaped_before_the_grace_after_a_long_outage() {
    use signaling_pod::reporter::REAP_GRACE;
    use signaling_pod::store::PRESENCE_TTL;
    let env = env("sig-redis-outage").await;
    let mut redis = RedisProc::start("outage", &[]);
    meeting(&env, "board", "hana", serde_json::json!({})).await;
    assign(&env, "board", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let server = in_process(&env, &redis, "replica-a").await;

    let (host, host_grant, _) = connect(&rest(&server.url, "hana", None), "board").await;
    let (guest, guest_grant, _) = connect(&rest(&server.url, "gus", None), "board").await;
    let (gone, gone_grant, _) = connect(&rest(&server.url, "leo", None), "board").await;
    // Leo's client goes away without `leave` (it could resume until its presence expires).
    drop(gone);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(participants_in_redis(&redis).len(), 3);

    // Saved as it is now, then killed: it comes back with the records and without presence.
    assert_eq!(redis.cli(&["SAVE"]), "OK");
    redis.kill();
    wait_ready(&server.url, 503, WAIT).await;
    tokio::time::sleep(PRESENCE_TTL + Duration::from_secs(5)).await;
    redis.spawn();
    let back = Instant::now();
    assert_eq!(participants_in_redis(&redis).len(), 3, "the records came back from the dump");
    assert_eq!(redis.cli(&["--scan", "--pattern", "sb:*:alive:*"]), "", "every presence expired meanwhile");
    wait_ready(&server.url, 200, WAIT).await;

    // The live ones write their presence back at once; nobody is reaped meanwhile.
    switchboard_e2e::wait_for("the live participants present again", WAIT, || {
        let alive = redis.cli(&["--scan", "--pattern", "sb:*:alive:*"]).lines().count();
        async move { alive == 2 }
    })
    .await;
    let quiet_until = back + REAP_GRACE - Duration::from_secs(5);
    while Instant::now() < quiet_until {
        assert_eq!(left(&host), vec![], "somebody was reaped {:?} after Redis came back", back.elapsed());
        assert_eq!(participants_in_redis(&redis).len(), 3);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // After the grace, the one really gone goes, and only it.
    let gone_id = gone_grant.participant_id.clone();
    let announced = host
        .wait_for("Leo reaped after the grace", REAP_GRACE + WAIT, |e| e.type_ == types::PARTICIPANT_LEFT)
        .await
        .unwrap();
    assert!(back.elapsed() >= REAP_GRACE, "reaped {:?} after Redis came back", back.elapsed());
    assert_eq!(announced.payload["participantId"], gone_id.as_str());
    assert_eq!(announced.payload["reason"], "disconnected");
    let mut live = vec![host_grant.participant_id.clone(), guest_grant.participant_id.clone()];
    live.sort();
    assert_eq!(participants_in_redis(&redis), live);
    chat_reaches(&guest, &host, "we stayed").await;
    assert_eq!(left(&guest).len(), 1, "{:?}", left(&guest));
    env.ns.delete().await;
}

/// Redis with a password for its default user and an ACL user: signaling without
/// credentials, or with wrong ones, refuses to start; with the ACL user (variables or
/// URL) it serves a meeting, pub/sub included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_a_password_and_an_acl_user() {
    let env = env("sig-redis-acl").await;
    let redis = RedisProc::start(
        "acl",
        &["--requirepass", "default-secret-1", "--user", "signaling", "on", ">acl-secret-2", "~sb:*", "&sb:*", "+@all"],
    );
    let url = redis.url();

    for (vars, what) in [
        (vec![("SIGNALING_REDIS_URL", url.as_str())], "no credentials"),
        (
            vec![
                ("SIGNALING_REDIS_URL", url.as_str()),
                ("SIGNALING_REDIS_USERNAME", "signaling"),
                ("SIGNALING_REDIS_PASSWORD", "wrong"),
            ],
            "a wrong password",
        ),
    ] {
        let (status, stderr) = Replica::refused(&env, &vars);
        assert!(!status.success(), "{what}");
        assert!(stderr.contains("Redis"), "{what}: {stderr}");
    }

    meeting(&env, "acl", "hana", serde_json::json!({})).await;
    assign(&env, "acl", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let by_vars = Replica::start_with(
        &env,
        &env.ns.name,
        "acl-a",
        &[
            ("SIGNALING_REDIS_URL", url.as_str()),
            ("SIGNALING_REDIS_USERNAME", "signaling"),
            ("SIGNALING_REDIS_PASSWORD", "acl-secret-2"),
        ],
    );
    let in_url = format!("redis://signaling:acl-secret-2@127.0.0.1:{}", redis.port);
    let by_url = Replica::start_with(&env, &env.ns.name, "acl-b", &[("SIGNALING_REDIS_URL", in_url.as_str())]);
    for r in [&by_vars, &by_url] {
        wait_ready(&r.url, 200, WAIT).await;
    }
    let (host, _, _) = connect(&rest(&by_vars.url, "hana", None), "acl").await;
    let (guest, _, _) = connect(&rest(&by_url.url, "gus", None), "acl").await;
    chat_reaches(&guest, &host, "through the ACL").await;
    chat_reaches(&host, &guest, "both ways").await;
    env.ns.delete().await;
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=switchboard test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    // Another CA, which did not sign the server's certificate.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.crt",
            "-days",
            "2",
            "-subj",
            "/CN=another CA",
        ],
    );
}

/// Redis over TLS only (and with a password): signaling connects with `rediss://` and
/// the CA file and serves a meeting; a CA that did not sign the server's certificate,
/// no CA (the system's roots do not have it), and a CA file with a plain `redis://`
/// URL are refused at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_ca_file() {
    let env = env("sig-redis-tls").await;
    let certs = std::env::temp_dir().join(format!("sb-redis-tls-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&certs);
    std::fs::create_dir_all(&certs).unwrap();
    certificates(&certs);
    let file = |f: &str| certs.join(f).to_str().unwrap().to_owned();
    let (cert, key, ca, other) = (file("server.crt"), file("server.key"), file("ca.crt"), file("other.crt"));
    let mut redis = RedisProc::start(
        "tls",
        &[
            "--tls-port",
            "--tls-cert-file",
            cert.as_str(),
            "--tls-key-file",
            key.as_str(),
            "--tls-ca-cert-file",
            ca.as_str(),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "tls-secret-3",
        ],
    );
    redis.cli = vec![
        "-p".into(),
        redis.port.to_string(),
        "--tls".into(),
        "--cacert".into(),
        ca.clone(),
        "-a".into(),
        "tls-secret-3".into(),
        "--no-auth-warning".into(),
    ];
    assert_eq!(redis.cli(&["PING"]), "PONG", "redis-server serves TLS");
    let tls_url = format!("rediss://127.0.0.1:{}", redis.port);
    let plain_url = redis.url();

    for (vars, what, says) in [
        (
            vec![("SIGNALING_REDIS_URL", tls_url.as_str()), ("SIGNALING_REDIS_CA_FILE", other.as_str())],
            "another CA",
            "Redis",
        ),
        (vec![("SIGNALING_REDIS_URL", tls_url.as_str())], "no CA", "Redis"),
        (
            vec![("SIGNALING_REDIS_URL", plain_url.as_str()), ("SIGNALING_REDIS_CA_FILE", ca.as_str())],
            "a CA with redis://",
            "rediss://",
        ),
    ] {
        let mut vars = vars;
        vars.push(("SIGNALING_REDIS_PASSWORD", "tls-secret-3"));
        let (status, stderr) = Replica::refused(&env, &vars);
        assert!(!status.success(), "{what}");
        assert!(stderr.contains(says), "{what}: {stderr}");
    }

    meeting(&env, "tls", "hana", serde_json::json!({})).await;
    assign(&env, "tls", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let vars = [
        ("SIGNALING_REDIS_URL", tls_url.as_str()),
        ("SIGNALING_REDIS_CA_FILE", ca.as_str()),
        ("SIGNALING_REDIS_PASSWORD", "tls-secret-3"),
    ];
    let a = Replica::start_with(&env, &env.ns.name, "tls-a", &vars);
    let b = Replica::start_with(&env, &env.ns.name, "tls-b", &vars);
    wait_ready(&a.url, 200, WAIT).await;
    let (host, _, _) = connect(&rest(&a.url, "hana", None), "tls").await;
    let (guest, _, _) = connect(&rest(&b.url, "gus", None), "tls").await;
    chat_reaches(&guest, &host, "over TLS").await;
    // The pub/sub reconnects over TLS too.
    redis.kill();
    wait_ready(&a.url, 503, WAIT).await;
    redis.spawn();
    wait_ready(&a.url, 200, WAIT).await;
    wait_ready(&b.url, 200, WAIT).await;
    chat_reaches(&host, &guest, "over TLS again").await;
    let _ = std::fs::remove_dir_all(&certs);
    env.ns.delete().await;
}
