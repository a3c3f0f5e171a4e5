//! What an SfuPool's pod template may not ask for: the same rules as the CRD's CEL
//! (`crds/src/sfu_pool.rs`), checked again by the operator, so that a pool admitted
//! by an older CRD (or with validation off) still cannot reach beyond its pod.

use k8s_openapi::api::core::v1::{Container, PodSpec};

fn privileged(c: &Container) -> bool {
    c.security_context.as_ref().and_then(|s| s.privileged).unwrap_or(false)
}

/// Why the template's pod spec is refused, if it is.
pub fn refused(spec: &PodSpec) -> Option<&'static str> {
    if spec.service_account_name.is_some() || spec.service_account.is_some() {
        return Some("spec.template.spec.serviceAccountName: the operator gives SFU pods the pool's ServiceAccount");
    }
    if spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
        return Some("spec.template.spec.hostPID/hostIPC: SFU pods cannot share the node's process or IPC namespace");
    }
    if spec.volumes.iter().flatten().any(|v| v.host_path.is_some()) {
        return Some("spec.template.spec.volumes: hostPath volumes are not allowed in SFU pods");
    }
    if spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(privileged) {
        return Some("spec.template.spec.containers: privileged containers are not allowed in SFU pods");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_template_reaching_beyond_its_pod_is_refused() {
        let base = json!({"containers": [{"name": "sfu", "image": "switchboard/sfu-pod:test"}]});
        let spec = |patch: serde_json::Value| {
            let mut s = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                s[k] = v.clone();
            }
            serde_json::from_value::<PodSpec>(s).unwrap()
        };
        assert_eq!(refused(&spec(json!({}))), None);
        let cases = [
            (json!({"serviceAccountName": "switchboard-operator"}), "serviceAccountName"),
            (json!({"serviceAccount": "default"}), "serviceAccountName"),
            (json!({"hostPID": true}), "hostPID"),
            (json!({"hostIPC": true}), "hostIPC"),
            (json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}), "hostPath"),
            (
                json!({"containers": [{"name": "sfu", "image": "x", "securityContext": {"privileged": true}}]}),
                "privileged",
            ),
            (
                json!({"initContainers": [{"name": "i", "image": "x", "securityContext": {"privileged": true}}]}),
                "privileged",
            ),
        ];
        for (patch, words) in cases {
            let why = refused(&spec(patch.clone())).unwrap_or_else(|| panic!("{patch} accepted"));
            assert!(why.contains(words), "{patch}: {why}");
        }
        // Allowed: an emptyDir, an unprivileged security context, hostNetwork off.
        let fine = json!({"volumes": [{"name": "tmp", "emptyDir": {}}], "hostPID": false,
                          "containers": [{"name": "sfu", "image": "x", "securityContext": {"privileged": false}}]});
        assert_eq!(refused(&spec(fine)), None);
    }
}
