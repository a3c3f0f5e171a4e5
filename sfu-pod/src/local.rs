//! An SFU on loopback inside the calling process, for other components' tests
//! (signaling, the recorder): the same wiring as `main.rs`, on ephemeral ports.

use std::sync::Arc;

use switchboard_sfu_client::ApiToken;
use switchboard_sfu_client::auth::process_token_or_generate;
use switchboard_sfu_client::media::NetworkOptions;
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};

use crate::relay::RelayPolicy;
use crate::{api, metrics, sfu};

pub struct LocalSfu {
    /// `http://127.0.0.1:port`
    pub endpoint: String,
    /// The credential it requires: the process's (`switchboard_sfu_client::auth`), so
    /// every `SfuApi` of this process presents it, as the pods of a namespace do.
    pub token: ApiToken,
    pub sfu: Arc<sfu::Sfu>,
    serve: tokio::task::JoinHandle<()>,
}

impl Drop for LocalSfu {
    fn drop(&mut self) {
        self.serve.abort();
    }
}

pub async fn start(name: &str) -> anyhow::Result<LocalSfu> {
    start_on(name, std::net::Ipv4Addr::LOCALHOST.into()).await
}

/// An SFU whose media port is on `media_ip` (its only candidate), e.g. the host's end
/// of a link to a network namespace a test takes away and back; its API stays on
/// loopback.
pub async fn start_on(name: &str, media_ip: std::net::IpAddr) -> anyhow::Result<LocalSfu> {
    let udp = tokio::net::UdpSocket::bind((media_ip, 0)).await?;
    let media_addr = udp.local_addr()?;
    let net = NetworkOptions {
        loopback_only: media_ip.is_loopback(),
        local_ips: if media_ip.is_loopback() { Vec::new() } else { vec![media_ip] },
        udp_mux: Some(UDPMuxDefault::new(UDPMuxParams::new(udp))),
        own_retransmissions: true,
        ..Default::default()
    };
    let send_side_bwe = crate::config::send_side_bwe_from_env()?;
    let sfu = sfu::Sfu::on_network(&net, media_addr, metrics::Metrics::default(), send_side_bwe)?;
    sfu.set_audio_policy(crate::config::audio_policy_from_env()?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // The environment's credential (SWITCHBOARD_SFU_API_TOKEN), else one made for this
    // process, which its clients then present too.
    let token = process_token_or_generate();
    let state = api::AppState {
        sfu: sfu.clone(),
        name: name.into(),
        token: Some(token.clone()),
        relay: Arc::new(RelayPolicy::loopback()),
    };
    let app = api::router(state);
    let serve = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(LocalSfu { endpoint, token, sfu, serve })
}
