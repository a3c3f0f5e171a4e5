//! signaling-pod as a library, so tests and the benchmark can start it in-process.
//! The binary is `src/main.rs`.

pub mod access;
pub mod app;
pub mod auth;
pub mod breakouts;
pub mod config;
pub mod hub;
pub mod limits;
pub mod meetings;
pub mod recordings;
pub mod reporter;
pub mod rest;
pub mod session;
pub mod store;

use std::sync::Arc;

use anyhow::Context as _;

/// A running server.
pub struct Running {
    pub app: Arc<app::App>,
    /// `http://host:port`
    pub url: String,
    pub serve: tokio::task::JoinHandle<()>,
}

/// Binds, connects Redis and the API server, and serves until the task is dropped.
pub async fn start(cfg: config::Config, kube: kube::Client) -> anyhow::Result<Running> {
    let a = &cfg.auth;
    let jwks = a.user_jwks.as_deref().map(auth::Jwks::load).transpose()?;
    let policy = auth::UserPolicy { issuer: a.user_issuer.clone(), audience: a.user_audience.clone() };
    let users = auth::UserVerifier::new(&a.user_hmac_keys, jwks, policy);
    let store =
        store::Store::connect(&cfg.redis_url, &cfg.redis_access).await.with_context(|| "connecting to Redis")?;
    store.ping().await.context("Redis PING")?;
    let session_key = match &a.session_key {
        Some(k) => k.clone(),
        None => {
            tracing::warn!(
                "SIGNALING_SESSION_KEY is unset: session tokens are signed with a key shared through Redis \
                 (set SIGNALING_SESSION_KEY; see docs/security.md)"
            );
            store.shared_session_key().await.context("the shared session key in Redis")?
        }
    };
    let sessions = auth::SessionKeys::new(&session_key, a.session_key_previous.as_deref());
    let meetings = meetings::Directory::start(kube.clone(), &cfg.namespace).await.context("watching Meetings")?;
    let hub = hub::Hub::start(&store).await.context("Redis pub/sub")?;
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    // Small signaling messages must not wait for Nagle's algorithm (40 ms with delayed ACKs).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let url = format!("http://{addr}");
    let public_url = cfg.public_url.clone().unwrap_or_else(|| url.clone());
    let app = app::App::new(app::Parts { cfg, public_url, users, sessions, store, meetings, hub, kube });
    tokio::spawn(reporter::run(app.clone()));
    tokio::spawn(reporter::tell_audience(app.clone()));
    tokio::spawn(recordings::watch(app.clone()));
    tokio::spawn(breakouts::run(app.clone()));
    if app.users.jwks().is_some() {
        tokio::spawn(refresh_jwks(app.clone()));
    }
    let router = rest::router(app.clone());
    let serve = tokio::spawn(async move {
        // The peer's address: per-address connection caps (see `limits.rs`).
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            tracing::error!(error = %e, "server stopped");
        }
    });
    Ok(Running { app, url, serve })
}

/// Reads the JWKS file again every `SIGNALING_USER_JWKS_REFRESH_SECONDS`.
async fn refresh_jwks(app: std::sync::Arc<app::App>) {
    let mut tick = tokio::time::interval(app.cfg.auth.user_jwks_refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Some(jwks) = app.users.jwks()
            && let Err(e) = jwks.reload()
        {
            tracing::error!(error = format!("{e:#}"), "JWKS reload");
        }
    }
}
