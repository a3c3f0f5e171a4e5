//! sfu-pod: Switchboard's selective forwarding unit.
//!
//! Prints one JSON line on stdout once listening — `{"api": "http://…", "media": "ip:port"}` —
//! so harnesses that start it on ephemeral ports can find it. SIGTERM starts a drain; the
//! process exits when the last participant has left or the drain timeout passes.

use std::sync::Arc;

use anyhow::Context as _;
use sfu_pod::{api, config, heartbeat, metrics, sfu};
use switchboard_sfu_client::media::NetworkOptions;
use tracing::info;
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};

// Per packet the SFU allocates several small buffers (RTP clones, SRTP output); mimalloc's
// thread-local free lists make those cheaper than glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cfg = config::Config::from_env()?;
    // One worker means no work stealing and no cross-thread wake-ups between the webrtc-rs
    // tasks of a connection: the cheapest per packet, like mediasoup's one worker per core.
    let runtime = match cfg.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build()?,
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
    };
    runtime.block_on(run(cfg))
}

async fn run(cfg: config::Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        "info,webrtc=warn,webrtc_ice=warn,webrtc_dtls=warn,webrtc_srtp=warn,webrtc_sctp=warn".into()
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("SWITCHBOARD_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }

    let udp = tokio::net::UdpSocket::bind(cfg.media_addr)
        .await
        .with_context(|| format!("binding media UDP {}", cfg.media_addr))?;
    let media_addr = udp.local_addr()?;
    let mux = UDPMuxDefault::new(UDPMuxParams::new(udp));
    let net = NetworkOptions {
        loopback_only: media_addr.ip().is_loopback(),
        announced_ips: cfg.announced_ips.clone(),
        local_ips: cfg.local_ips.clone(),
        udp_mux: Some(mux),
        own_retransmissions: true,
        ..Default::default()
    };
    let sfu = sfu::Sfu::on_network(&net, media_addr, metrics::Metrics::default(), cfg.send_side_bwe)?;
    sfu.set_audio_policy(cfg.audio_policy);

    let listener =
        tokio::net::TcpListener::bind(cfg.api_addr).await.with_context(|| format!("binding API {}", cfg.api_addr))?;
    let api_addr = listener.local_addr()?;
    // API replies (answers, events) must not wait for Nagle's algorithm.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let endpoint = cfg.endpoint.clone().unwrap_or(format!("http://{api_addr}"));
    println!("{}", serde_json::json!({"api": format!("http://{api_addr}"), "media": media_addr.to_string()}));
    info!(
        api = %api_addr, media = %media_addr, announced = ?cfg.announced_ips, worker_threads = ?cfg.worker_threads,
        authenticated = cfg.api_token.is_some(), "sfu listening"
    );

    if let Some(hb) = cfg.heartbeat {
        tokio::spawn(heartbeat::run(sfu.clone(), hb, endpoint));
    }

    if cfg.api_token.is_none() {
        tracing::warn!("SWITCHBOARD_SFU_API_INSECURE=true: the internal API serves anyone who reaches it");
    }
    let relay = sfu_pod::relay::RelayPolicy { own: Some(api_addr), ..cfg.relay.clone() };
    let state =
        api::AppState { sfu: sfu.clone(), name: cfg.name.clone(), token: cfg.api_token.clone(), relay: relay.into() };
    let app = api::router(state);
    let shutdown = drain_on_sigterm(sfu.clone(), cfg.drain_timeout);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    info!("sfu stopped");
    Ok(())
}

/// Resolves when, after SIGTERM (or Ctrl-C), the SFU has drained or the timeout passed.
async fn drain_on_sigterm(sfu: Arc<sfu::Sfu>, timeout: std::time::Duration) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    sfu.drain();
    let drained = async {
        loop {
            let changed = sfu.state_changed.notified();
            if matches!(sfu.api_state(), switchboard_sfu_api::NodeState::Drained) {
                return;
            }
            changed.await;
        }
    };
    if tokio::time::timeout(timeout, drained).await.is_err() {
        info!("drain timeout: stopping with participants still connected");
    }
}
