//! `operator install-crds`: apply the CRDs to the cluster of the current kubeconfig.

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
    ).init();
    let command = std::env::args().nth(1).unwrap_or_default();
    match command.as_str() {
        "install-crds" => {
            let client = kube::Client::try_default().await?;
            let names = switchboard_operator::crd_install::install_crds(&client, Duration::from_secs(60)).await?;
            for name in names {
                println!("customresourcedefinition.apiextensions.k8s.io/{name} established");
            }
            Ok(())
        }
        other => anyhow::bail!("unknown command {other:?}; usage: operator install-crds"),
    }
}
