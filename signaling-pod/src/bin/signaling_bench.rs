//! signaling-bench: how many WebSocket connections one signaling replica holds, the
//! join latency from the REST join to the SFU's answer, and chat messages delivered
//! per second through two replicas and Redis.
//!
//! Needs the local control plane (`eval "$(e2e/cluster/up)"`), redis-server, and the
//! release binary next to this one:
//!
//! ```text
//! cargo build --release -p signaling-pod --bins
//! target/release/signaling-bench --connections 10000 --joins 200 --chat-clients 20 --chat-messages 500
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use kube::Api;
use switchboard_crds::Meeting;
use switchboard_sfu_client::{JoinOptions, NetworkOptions, Participant, Publish};
use switchboard_signaling_client::{Rest, SignalingClient};
use switchboard_signaling_proto::{Envelope, types};

#[path = "../bench_support.rs"]
mod support;
use support::*;

struct Args {
    connections: usize,
    meetings: usize,
    joins: usize,
    join_concurrency: usize,
    chat_clients: usize,
    chat_messages: usize,
    chat_rate: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        connections: 10_000,
        meetings: 100,
        joins: 200,
        join_concurrency: 10,
        chat_clients: 20,
        chat_messages: 200,
        chat_rate: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<usize> { Ok(it.next().context("a value")?.parse()?) };
        match flag.as_str() {
            "--connections" => a.connections = value()?,
            "--meetings" => a.meetings = value()?,
            "--joins" => a.joins = value()?,
            "--join-concurrency" => a.join_concurrency = value()?,
            "--chat-clients" => a.chat_clients = value()?,
            "--chat-messages" => a.chat_messages = value()?,
            "--chat-rate" => a.chat_rate = value()?.max(1),
            other => bail!("unknown flag {other}; see the source for the flags"),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let fd_limit = raise_fd_limit();
    let (client, ns) = namespace("signaling-bench").await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let meetings: Api<Meeting> = Api::namespaced(client.clone(), &ns);
    let (_redis, redis) = redis().await?;
    let sfu = sfu_pod::local::start("sfu-bench").await?;
    let (replica_a, url_a) = replica(&ns, &redis, "replica-a", sfu.token.expose(), &[])?;
    let (_replica_b, url_b) = replica(&ns, &redis, "replica-b", sfu.token.expose(), &[])?;
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // 1. Join latency: REST join → WebSocket join → offer → the SFU's answer.
    create_meeting(&meetings, "joins", a.joins + 5, &sfu.endpoint).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rest_b = Rest::new(&url_b, &user_token("joiner"));
    type Joined = (f64, [f64; 3]);
    let latencies: Vec<anyhow::Result<Joined>> = futures::stream::iter(0..a.joins)
        .map(|i| {
            let rest = rest_b.clone();
            async move {
                let t0 = Instant::now();
                let grant = rest.join("joins").await?;
                let t_rest = t0.elapsed().as_secs_f64() * 1000.0;
                let (c, _) = SignalingClient::join(&grant.signaling_url, &grant.session_token).await?;
                let t_ws = t0.elapsed().as_secs_f64() * 1000.0 - t_rest;
                let c = Arc::new(c);
                let opts = JoinOptions {
                    publish: vec![Publish::audio(&format!("mic-{i}"))],
                    net: NetworkOptions { loopback_only: true, ..Default::default() },
                    manual_subscribe: true,
                    ..Default::default()
                };
                let t_media = Instant::now();
                let p = Participant::join_via(c.media(), "joins", &grant.participant_id, opts).await?;
                let t_media = t_media.elapsed().as_secs_f64() * 1000.0;
                let total = t0.elapsed().as_secs_f64() * 1000.0;
                // Leave at once: the machine hosts the clients, the SFU and signaling, and
                // 200 idle publishers would measure the load of this box, not the join.
                p.vanish().await;
                let _ = c.request(types::LEAVE, serde_json::json!({})).await;
                Ok((total, [t_rest, t_ws, t_media]))
            }
        })
        .buffer_unordered(a.join_concurrency)
        .collect()
        .await;
    let mut ms: Vec<f64> = latencies.iter().filter_map(|r| r.as_ref().ok().map(|x| x.0)).collect();
    if let Some(Err(e)) = latencies.iter().find(|r| r.is_err()) {
        eprintln!("first failed join: {e:#}");
    }
    ms.sort_by(f64::total_cmp);
    let part = |k: usize| {
        let mut v: Vec<f64> = latencies.iter().filter_map(|r| r.as_ref().ok().map(|x| x.1[k])).collect();
        v.sort_by(f64::total_cmp);
        format!("p50 {:.0} / p99 {:.0} ms", percentile(&v, 0.5), percentile(&v, 0.99))
    };
    rows.push((
        format!("join latency, REST join → SFU answer ({} joins, {} at a time)", a.joins, a.join_concurrency),
        format!("p50 {:.0} ms, p99 {:.0} ms", percentile(&ms, 0.5), percentile(&ms, 0.99)),
        format!(
            "{} failed; goal p99 < 500 ms. REST join {}, WebSocket join {}, offer to applied answer (incl. the client's offer) {}",
            a.joins - ms.len(),
            part(0),
            part(1),
            part(2)
        ),
    ));

    // 2. Chat through two replicas and Redis.
    create_meeting(&meetings, "chat", a.chat_clients + 5, &sfu.endpoint).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut chatters = Vec::new();
    for i in 0..a.chat_clients {
        let url = if i % 2 == 0 { &url_a } else { &url_b };
        let grant = Rest::new(url, &user_token(&format!("chatter-{i}"))).join("chat").await?;
        chatters.push(SignalingClient::join(&grant.signaling_url, &grant.session_token).await?.0);
    }
    // Each client sends at `--chat-rate` messages/s (the per-connection limit a real
    // client lives under); every message goes to every client, across both replicas.
    let expected = a.chat_clients * a.chat_clients * a.chat_messages;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / a.chat_rate as f64);
    let senders = chatters.iter().map(|c| async move {
        let mut tick = tokio::time::interval(interval);
        for m in 0..a.chat_messages {
            tick.tick().await;
            let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
            c.send(Envelope::new(types::CHAT, serde_json::json!({"text": format!("{now_us} {m}")})));
        }
    });
    futures::future::join_all(senders).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while chatters.iter().map(|c| c.count(types::CHAT)).sum::<usize>() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let got: usize = chatters.iter().map(|c| c.count(types::CHAT)).sum();
    let mut delays: Vec<f64> = chatters.iter().flat_map(|c| c.arrival_delays_ms(types::CHAT)).collect();
    delays.sort_by(f64::total_cmp);
    rows.push((
        format!(
            "chat through 2 replicas + Redis ({} clients × {} msg/s, {} messages each)",
            a.chat_clients, a.chat_rate, a.chat_messages
        ),
        format!("{:.0} deliveries/s", got as f64 / secs),
        format!(
            "{:.0} messages/s sent and stored; {got} of {expected} delivered; send → delivery p50 {:.1} ms, p99 {:.1} ms",
            (a.chat_clients * a.chat_messages) as f64 / secs,
            percentile(&delays, 0.5),
            percentile(&delays, 0.99)
        ),
    ));

    // 3. Connections held by one replica.
    let per_meeting = a.connections.div_ceil(a.meetings);
    futures::stream::iter(0..a.meetings)
        .map(|i| {
            let (meetings, sfu) = (meetings.clone(), sfu.endpoint.clone());
            async move { create_meeting(&meetings, &format!("conn-{i}"), per_meeting + 1, &sfu).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_mib(replica_a.0.id());
    let started = Instant::now();
    let rest = Rest::new(&url_a, &user_token("bench-user"));
    let results: Vec<anyhow::Result<SignalingClient>> = futures::stream::iter(0..a.connections)
        .map(|i| {
            let rest = rest.clone();
            async move {
                let grant = rest.join(&format!("conn-{}", i % a.meetings)).await?;
                Ok(SignalingClient::join(&grant.signaling_url, &grant.session_token).await?.0)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let connect_secs = started.elapsed().as_secs_f64();
    let (held, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
    if let Some(Err(e)) = failed.first() {
        eprintln!("first failed connection: {e:#}");
    }
    let held: Vec<SignalingClient> = held.into_iter().map(Result::unwrap).collect();
    tokio::time::sleep(Duration::from_secs(12)).await; // past a presence refresh
    let alive = held.iter().filter(|c| c.is_open()).count();
    let rss = rss_mib(replica_a.0.id());
    rows.push((
        "WebSocket connections held by one replica".into(),
        format!("{alive} of {}", a.connections),
        format!("goal 10,000; fd limit {fd_limit}"),
    ));
    rows.push((
        "  time to join them all (64 at a time)".into(),
        format!("{connect_secs:.1} s"),
        format!("{:.0} joins/s", held.len() as f64 / connect_secs),
    ));
    rows.push((
        "  replica RSS with them".into(),
        format!("{rss:.0} MiB"),
        format!("{:.1} KiB per connection", (rss - rss_before) * 1024.0 / alive.max(1) as f64),
    ));
    drop(held);

    println!("| measure | result | notes |\n|---|---|---|");
    for (m, r, n) in rows {
        println!("| {m} | {r} | {n} |");
    }
    let _ = namespaces.delete(&ns, &Default::default()).await;
    Ok(())
}
