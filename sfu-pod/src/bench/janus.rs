//! The same load against Janus VideoRoom (Debian package `janus`), for comparison.
//!
//! `--janus auto` starts `/usr/bin/janus` with a generated configuration (HTTP transport
//! on 127.0.0.1:8088, the VideoRoom plugin only); `--janus URL` uses a running one.
//! Publishers and subscribers are the same webrtc-rs peers and synthetic packets as
//! for Switchboard, signalled through Janus' HTTP API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use switchboard_sfu_client::media::{self, NetworkOptions, build_api};
use switchboard_sfu_client::participant::{ReceivedTrack, now_us, synthetic_payload};
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

use super::{Measured, Scenario, VIDEO_BYTES, VIDEO_PPS, cpu_seconds, tally_track};

const PLUGINS: &str = "/usr/lib/x86_64-linux-gnu/janus/plugins";
const TRANSPORTS: &str = "/usr/lib/x86_64-linux-gnu/janus/transports";

pub struct JanusProcess {
    child: std::process::Child,
    _dir: std::path::PathBuf,
}

impl Drop for JanusProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Janus with the VideoRoom plugin and the HTTP transport on loopback.
pub fn start() -> anyhow::Result<(JanusProcess, String)> {
    let dir = std::env::temp_dir().join(format!("sfu-bench-janus-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let disabled_plugins = [
        "audiobridge",
        "duktape",
        "echotest",
        "lua",
        "nosip",
        "recordplay",
        "sip",
        "streaming",
        "textroom",
        "videocall",
        "voicemail",
    ]
    .map(|p| format!("libjanus_{p}.so"))
    .join(",");
    std::fs::write(
        dir.join("janus.jcfg"),
        format!(
            "general: {{\n configs_folder = \"{dir}\"\n plugins_folder = \"{PLUGINS}\"\n transports_folder = \"{TRANSPORTS}\"\n \
             log_to_stdout = true\n debug_level = 2\n event_handlers = false\n}}\n\
             media: {{\n rtp_port_range = \"30000-39999\"\n}}\n\
             nat: {{\n ignore_mdns = true\n}}\n\
             plugins: {{\n disable = \"{disabled_plugins}\"\n}}\n\
             transports: {{\n disable = \"libjanus_websockets.so,libjanus_pfunix.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_rabbitmq.so\"\n}}\n\
             events: {{\n broadcast = false\n}}\n",
            dir = dir.display()
        ),
    )?;
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        "general: {\n json = \"compact\"\n base_path = \"/janus\"\n http = true\n port = 8088\n ip = \"127.0.0.1\"\n https = false\n}\n\
         admin: {\n admin_http = false\n admin_https = false\n}\n",
    )?;
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")?;
    let child = std::process::Command::new("/usr/bin/janus")
        .arg("-F")
        .arg(&dir)
        .arg("-C")
        .arg(dir.join("janus.jcfg"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting /usr/bin/janus (apt install janus)")?;
    Ok((JanusProcess { child, _dir: dir }, "http://127.0.0.1:8088/janus".into()))
}

/// One Janus session with its plugin handles, over the HTTP API.
struct Session {
    http: reqwest::Client,
    base: String,
    id: u64,
    /// Events for a handle, filled by the long poll.
    events: Arc<Mutex<HashMap<u64, Vec<Value>>>>,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

fn transaction() -> String {
    format!("{:x}", rand::random::<u64>())
}

async fn post(http: &reqwest::Client, url: &str, mut body: Value) -> anyhow::Result<Value> {
    body["transaction"] = json!(transaction());
    let v: Value = http.post(url).json(&body).send().await?.json().await?;
    if v["janus"] == "error" {
        bail!("janus error: {}", v["error"]);
    }
    Ok(v)
}

impl Session {
    async fn create(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let v = post(&http, base, json!({"janus": "create"})).await?;
        let id = v["data"]["id"].as_u64().context("no session id")?;
        let events: Arc<Mutex<HashMap<u64, Vec<Value>>>> = Arc::default();
        let (h, url, sink) = (http.clone(), format!("{base}/{id}?maxev=20"), events.clone());
        let poller = tokio::spawn(async move {
            loop {
                let Ok(resp) = h.get(&url).send().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(v) = resp.json::<Value>().await else { continue };
                let batch = if v.is_array() { v.as_array().cloned().unwrap_or_default() } else { vec![v] };
                for e in batch {
                    if let Some(handle) = e["sender"].as_u64() {
                        sink.lock().unwrap().entry(handle).or_default().push(e);
                    }
                }
            }
        });
        Ok(Self { http, base: base.to_owned(), id, events, poller })
    }

    async fn attach(&self) -> anyhow::Result<u64> {
        let v = post(
            &self.http,
            &format!("{}/{}", self.base, self.id),
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
        )
        .await?;
        v["data"]["id"].as_u64().context("no handle id")
    }

    async fn message(&self, handle: u64, body: Value, jsep: Option<Value>) -> anyhow::Result<Value> {
        let mut msg = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        post(&self.http, &format!("{}/{}/{}", self.base, self.id, handle), msg).await
    }

    /// The first event for `handle` that `check` accepts.
    async fn event(&self, handle: u64, what: &str, check: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(list) = self.events.lock().unwrap().get_mut(&handle)
                && let Some(i) = list.iter().position(&check)
            {
                return Ok(list.remove(i));
            }
            if Instant::now() > deadline {
                let seen = self.events.lock().unwrap().get(&handle).cloned().unwrap_or_default();
                bail!("janus: no {what} for handle {handle}; its events: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn gathered_local(pc: &RTCPeerConnection, offer: bool) -> anyhow::Result<String> {
    let desc = if offer { pc.create_offer(None).await? } else { pc.create_answer(None).await? };
    let mut done = pc.gathering_complete_promise().await;
    pc.set_local_description(desc).await?;
    let _ = tokio::time::timeout(Duration::from_secs(3), done.recv()).await;
    Ok(pc.local_description().await.context("no local description")?.sdp)
}

/// libnice leaves loopback out of Janus' candidates, so the peers talking to Janus use
/// the host's own address; traffic to it still never leaves the machine.
fn janus_network() -> NetworkOptions {
    NetworkOptions { loopback_only: false, ..Default::default() }
}

struct Receiver {
    _pc: Arc<RTCPeerConnection>,
    received: Arc<Mutex<ReceivedTrack>>,
}

async fn subscribe(session: &Session, room: u64, feed: u64) -> anyhow::Result<Receiver> {
    let handle = session.attach().await?;
    session
        .message(
            handle,
            json!({"request": "join", "ptype": "subscriber", "room": room, "streams": [{"feed": feed}]}),
            None,
        )
        .await?;
    let attached = session.event(handle, "subscriber offer", |e| e["jsep"]["type"] == "offer").await?;
    let pc = Arc::new(build_api(&janus_network())?.new_peer_connection(RTCConfiguration::default()).await?);
    let received: Arc<Mutex<ReceivedTrack>> = Arc::default();
    let sink = received.clone();
    pc.on_track(Box::new(move |t, _, _| {
        let sink = sink.clone();
        Box::pin(async move {
            tokio::spawn(async move {
                while let Ok((p, _)) = t.read_rtp().await {
                    sink.lock().unwrap().record_packet(
                        p.header.sequence_number,
                        p.header.ssrc,
                        &p.payload,
                        p.payload.len() + 12,
                        now_us(),
                    );
                }
            });
        })
    }));
    pc.set_remote_description(RTCSessionDescription::offer(
        attached["jsep"]["sdp"].as_str().context("no sdp")?.to_owned(),
    )?)
    .await?;
    let answer = gathered_local(&pc, false).await?;
    media::wait_receivers_started(&pc, Duration::from_secs(1)).await;
    session
        .message(handle, json!({"request": "start", "room": room}), Some(json!({"type": "answer", "sdp": answer})))
        .await?;
    Ok(Receiver { _pc: pc, received })
}

struct Sender {
    _pc: Arc<RTCPeerConnection>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Joins as a publisher, publishes one synthetic video track; returns its feed id.
async fn publish(session: &Session, room: u64, name: &str) -> anyhow::Result<(u64, Sender)> {
    let handle = session.attach().await?;
    let pc = Arc::new(build_api(&janus_network())?.new_peer_connection(RTCConfiguration::default()).await?);
    let track = Arc::new(TrackLocalStaticRTP::new(media::vp8(), format!("{name}-cam"), name.into()));
    pc.add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>).await?;
    let offer = gathered_local(&pc, true).await?;
    session
        .message(
            handle,
            json!({
                "request": "joinandconfigure", "ptype": "publisher", "room": room, "display": name,
                "audio": false, "video": true,
            }),
            Some(json!({"type": "offer", "sdp": offer})),
        )
        .await?;
    let joined = session.event(handle, "publisher answer", |e| e["jsep"]["type"] == "answer").await?;
    let feed = joined["plugindata"]["data"]["id"].as_u64().context("no feed id")?;
    if std::env::var("SFU_BENCH_DEBUG").is_ok() {
        eprintln!("janus answer: {}", joined["jsep"]["sdp"]);
    }
    pc.set_remote_description(RTCSessionDescription::answer(
        joined["jsep"]["sdp"].as_str().context("no sdp")?.to_owned(),
    )?)
    .await?;
    // The feed exists for subscribers once Janus has the publisher's media connection.
    session.event(handle, "webrtcup", |e| e["janus"] == "webrtcup").await?;
    let task = tokio::spawn(async move {
        // Same packets and pacing as the Switchboard publishers (keyframe every second:
        // Janus subscribers get no PLI-driven keyframe path from this synthetic source).
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / VIDEO_PPS as f64));
        let (mut seq, mut ts) = (rand::random::<u16>(), rand::random::<u32>());
        for n in 0u64.. {
            tick.tick().await;
            let packet = webrtc::rtp::packet::Packet {
                header: webrtc::rtp::header::Header {
                    version: 2,
                    marker: true,
                    sequence_number: seq,
                    timestamp: ts,
                    ..Default::default()
                },
                payload: synthetic_payload(true, n % VIDEO_PPS as u64 == 0, 2, VIDEO_BYTES),
            };
            let _ = track.write_rtp(&packet).await;
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(90_000 / VIDEO_PPS);
        }
    });
    Ok((feed, Sender { _pc: pc, task }))
}

pub async fn run(url: &str, s: Scenario, seconds: u64) -> anyhow::Result<Measured> {
    let (process, base) = if url == "auto" {
        let (p, b) = start()?;
        (Some(p), b)
    } else {
        (None, url.to_owned())
    };
    let pid = process.as_ref().map(|p| p.child.id());
    // Janus answers once its HTTP transport is up.
    let deadline = Instant::now() + Duration::from_secs(15);
    let session = loop {
        match Session::create(&base).await {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(e.context("janus did not come up")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let control = session.attach().await?;
    let room = 1000 + rand::random::<u32>() as u64 % 100_000;
    session
        .message(
            control,
            json!({"request": "create", "room": room, "publishers": 64, "videocodec": "vp8", "bitrate": 0}),
            None,
        )
        .await?;
    let (publishers, per_track) = s.shape();
    let mut senders = Vec::new();
    let mut feeds = Vec::new();
    for i in 0..publishers {
        let (feed, sender) = publish(&session, room, &format!("p{i}")).await?;
        feeds.push(feed);
        senders.push(sender);
    }
    let mut receivers = Vec::new();
    for (i, feed) in feeds.iter().enumerate() {
        for _ in 0..per_track {
            receivers.push((i, subscribe(&session, room, *feed).await?));
        }
    }
    let want = receivers.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while receivers.iter().filter(|(_, r)| r.received.lock().unwrap().packets > 20).count() < want {
        anyhow::ensure!(Instant::now() < deadline, "janus: not every subscriber is receiving");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let marks: Vec<(usize, i64)> = receivers
        .iter()
        .map(|(_, r)| {
            let t = r.received.lock().unwrap();
            (t.latencies_us.len(), t.highest_ext_seq)
        })
        .collect();
    let tally = || {
        let mut latencies = Vec::new();
        let (mut advance, mut expected, mut missing) = (0u64, 0u64, 0u64);
        for ((_, r), (lat_from, seq_from)) in receivers.iter().zip(&marks) {
            let (a, e, m) = tally_track(&r.received.lock().unwrap(), *lat_from, *seq_from, &mut latencies);
            (advance, expected, missing) = (advance + a, expected + e, missing + m);
        }
        latencies.sort_unstable();
        (latencies, advance, expected, missing)
    };
    let (c0, t0) = (pid.map(cpu_seconds).unwrap_or(0.0), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (c1, t1) = (pid.map(cpu_seconds).unwrap_or(0.0), Instant::now());
    // Janus exports no forwarding counter here: what the subscribers' streams advanced
    // by over the window is what it forwarded.
    let advance = tally().1;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (latencies, _, expected, missing) = tally();
    let wall = t1.duration_since(t0).as_secs_f64();
    drop(senders);
    drop(receivers);
    drop(session);
    drop(process);
    Ok(Measured::new(want, wall, advance, c1 - c0, &latencies, expected, missing))
}
