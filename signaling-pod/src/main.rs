//! signaling-pod: Switchboard's signaling server.
//!
//! Prints one JSON line on stdout once listening — `{"url": "http://…"}` — so
//! harnesses that start it on an ephemeral port can find it.

use signaling_pod::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("SWITCHBOARD_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
    let cfg = Config::from_env()?;
    let kube = kube::Client::try_default().await?;
    let running = signaling_pod::start(cfg, kube).await?;
    println!("{}", serde_json::json!({ "url": running.url }));
    tracing::info!(url = %running.url, "signaling listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = running.serve => {}
    }
    Ok(())
}
