//! recorder-pod: one recording (or one deletion) per run; the exit code tells the Job
//! whether to retry (see `run`).

use recorder_pod::config::Config;
use recorder_pod::http::{Metrics, router};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,webrtc=warn".into()),
        )
        .init();
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("recorder-pod: {e}");
            std::process::exit(2);
        }
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("recorder-pod: no Kubernetes client: {e}");
            std::process::exit(1);
        }
    };
    let metrics = Metrics::default();
    match tokio::net::TcpListener::bind(cfg.http_addr).await {
        Ok(listener) => {
            tracing::info!(
                addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                "health and metrics"
            );
            let app = router(metrics.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        Err(e) => tracing::warn!(addr = %cfg.http_addr, error = %e, "no health endpoint"),
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            term.recv().await;
            let _ = stop_tx.send(true);
        }
    });
    let span =
        tracing::info_span!("recording", job = %cfg.recording_job, meeting = %cfg.meeting, namespace = %cfg.namespace);
    let outcome = tracing::Instrument::instrument(recorder_pod::run::run(cfg, client, metrics, stop_rx), span).await;
    tracing::info!(?outcome, "recorder finished");
    std::process::exit(outcome.exit_code());
}
