//! Why a pool's SFU pods cannot start, from what the kubelet reports in their
//! container statuses. A missing image, a bad image name, a missing Secret or a
//! crashing SFU leave a pod waiting forever; the pool's status and Events must say
//! so in the kubelet's own words, or a platform team sees only "0 of 2 Ready".

use k8s_openapi::api::core::v1::Pod;

/// Kubelet waiting reasons that do not resolve by waiting.
const STUCK: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
];

/// Pods that cannot start, summarised: the kubelet's reason (of the first stuck pod
/// by name) and a message naming the pod, container and the kubelet's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupFailure {
    pub reason: String,
    pub message: String,
    pub pods: usize,
}

pub fn startup_failure<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Option<StartupFailure> {
    let mut stuck: Vec<(String, String, String, String)> = pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
            statuses.iter().find_map(|c| {
                let waiting = c.state.as_ref()?.waiting.as_ref()?;
                let reason = waiting.reason.as_deref().filter(|r| STUCK.contains(r))?;
                let name = p.metadata.name.clone().unwrap_or_default();
                Some((name, c.name.clone(), reason.to_owned(), waiting.message.clone().unwrap_or_default()))
            })
        })
        .collect();
    stuck.sort();
    let (pod, container, reason, message) = stuck.first()?.clone();
    let detail = if message.is_empty() { String::new() } else { format!(": {message}") };
    Some(StartupFailure {
        message: format!("{} SFU pod(s) cannot start; pod {pod}, container {container}: {reason}{detail}", stuck.len()),
        reason,
        pods: stuck.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, waiting: Option<(&str, &str)>) -> Pod {
        let state = match waiting {
            Some((reason, message)) => json!({"waiting": {"reason": reason, "message": message}}),
            None => json!({"running": {}}),
        };
        serde_json::from_value(json!({"metadata": {"name": name},
        "status": {"containerStatuses": [{
            "name": "sfu", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": state
        }]}}))
        .unwrap()
    }

    #[test]
    fn the_kubelets_reason_is_reported_with_the_pod_and_container() {
        let table = [
            (vec![pod("a", None), pod("b", Some(("ContainerCreating", "")))], None),
            (
                vec![
                    pod("b", Some(("ErrImageNeverPull", "not present with pull policy of Never"))),
                    pod("a", Some(("ImagePullBackOff", ""))),
                ],
                Some(("ImagePullBackOff", "2 SFU pod(s) cannot start; pod a, container sfu: ImagePullBackOff")),
            ),
            (
                vec![pod("a", None), pod("c", Some(("CrashLoopBackOff", "back-off 10s")))],
                Some((
                    "CrashLoopBackOff",
                    "1 SFU pod(s) cannot start; pod c, container sfu: CrashLoopBackOff: back-off 10s",
                )),
            ),
        ];
        for (pods, want) in table {
            let got = startup_failure(&pods);
            assert_eq!(got.as_ref().map(|f| (f.reason.as_str(), f.message.as_str())), want, "{pods:?}");
        }
    }
}
