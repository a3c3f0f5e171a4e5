//! The operator binary.
//!
//! * `operator` — run every controller against the current kubeconfig (or the
//!   in-cluster ServiceAccount), configured by `SWITCHBOARD_*` variables (see
//!   `OperatorConfig`).
//! * `operator install-crds` — apply the CRDs and wait until they are served.

use std::time::Duration;

use switchboard_operator::{Health, Metrics, OperatorConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    let json = std::env::var("SWITCHBOARD_LOG_FORMAT").is_ok_and(|f| f == "json");
    if json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let client = switchboard_operator::api_client::connect().await?;
    match std::env::args().nth(1).as_deref() {
        Some("install-crds") => {
            let names = switchboard_operator::crd_install::install_crds(&client, Duration::from_secs(60)).await?;
            for name in names {
                println!("customresourcedefinition.apiextensions.k8s.io/{name} established");
            }
            Ok(())
        }
        None | Some("run") => {
            let config = OperatorConfig::from_env()?;
            let metrics = Metrics::default();
            let health = Health::default();
            let (addr, server) =
                switchboard_operator::http::serve(config.http_addr, metrics.clone(), health.clone()).await?;
            tracing::info!(
                %addr, identity = %config.identity, namespace = ?config.watch_namespace,
                "operator starting"
            );
            tokio::spawn(server);
            switchboard_operator::run(client, config, metrics, health, shutdown_signal()).await
        }
        Some(other) => anyhow::bail!("unknown command {other:?}; usage: operator [run|install-crds]"),
    }
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
