//! signaling-pod as a library, so tests and the benchmark can start it in-process.
//! The binary is `src/main.rs`.

pub mod app;
pub mod auth;
pub mod config;
pub mod hub;
pub mod meetings;
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
    let store = store::Store::connect(&cfg.redis_url).await.with_context(|| "connecting to Redis")?;
    store.ping().await.context("Redis PING")?;
    let meetings = meetings::Directory::start(kube.clone(), &cfg.namespace).await.context("watching Meetings")?;
    let hub = hub::Hub::start(&store, &cfg.namespace).await.context("Redis pub/sub")?;
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    // Small signaling messages must not wait for Nagle's algorithm (40 ms with delayed ACKs).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let url = format!("http://{addr}");
    let public_url = cfg.public_url.clone().unwrap_or_else(|| url.clone());
    let app = app::App::new(cfg, public_url, store, meetings, hub, kube);
    tokio::spawn(reporter::run(app.clone()));
    let router = rest::router(app.clone());
    let serve = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "server stopped");
        }
    });
    Ok(Running { app, url, serve })
}
