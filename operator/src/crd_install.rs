//! Installs (server-side applies) the Switchboard CRDs and waits until the API
//! server serves them. Used by `operator install-crds` and the e2e harness, so
//! both run against exactly the CRDs the Rust types generate.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};

pub const FIELD_MANAGER: &str = "switchboard-operator";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("applying CRD {name}: {source}")]
    Apply { name: String, source: kube::Error },
    #[error("waiting for CRD {name} to be Established: {reason}")]
    NotEstablished { name: String, reason: String },
}

/// Applies every Switchboard CRD and waits up to `timeout` for each to be Established.
pub async fn install_crds(client: &Client, timeout: Duration) -> Result<Vec<String>, InstallError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for (_, crd) in switchboard_crds::all() {
        let name = crd.name_any();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|source| InstallError::Apply { name: name.clone(), source })?;
        names.push(name);
    }
    for name in &names {
        let established = await_condition(api.clone(), name, conditions::is_crd_established());
        match tokio::time::timeout(timeout, established).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(InstallError::NotEstablished { name: name.clone(), reason: e.to_string() }),
            Err(_) => {
                return Err(InstallError::NotEstablished {
                    name: name.clone(),
                    reason: format!("not within {timeout:?}"),
                });
            }
        }
    }
    // Established can come a moment before the API server routes the new
    // resources ("404 page not found"): wait until each one lists.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let lp = kube::api::ListParams::default().limit(1);
        let served = Api::<switchboard_crds::SfuPool>::all(client.clone()).list(&lp).await.is_ok()
            && Api::<switchboard_crds::SignalingPool>::all(client.clone()).list(&lp).await.is_ok()
            && Api::<switchboard_crds::Meeting>::all(client.clone()).list(&lp).await.is_ok()
            && Api::<switchboard_crds::RecordingJob>::all(client.clone()).list(&lp).await.is_ok();
        if served {
            return Ok(names);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(InstallError::NotEstablished { name: "switchboard.dev".into(), reason: "not served".into() });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
