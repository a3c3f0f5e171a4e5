//! The error of a reconcile, with the step that failed: every controller runs the
//! same pipeline (observe → decide → apply → status; `crate::controller`), and
//! only the steps that talk to the API server can fail. The step and the API
//! server's answer label `switchboard_reconcile_errors_total`.

/// A failed reconcile: which step, which object, and the API server's answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading what the caches do not hold (an owned Deployment, a room-code block).
    #[error("observing {what}: {source}")]
    Observe {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// Writing a child or owned object (a pod, a Deployment, a pod's ledger, an eviction).
    #[error("applying {object}: {source}")]
    Apply {
        object: String,
        #[source]
        source: kube::Error,
    },
    /// Writing the object's own status.
    #[error("writing status: {source}")]
    Status {
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The step that failed, for the metric's `step` label.
    pub fn step(&self) -> &'static str {
        match self {
            Error::Observe { .. } => "observe",
            Error::Apply { .. } => "apply",
            Error::Status { .. } => "status",
        }
    }

    /// The kind of the API server's answer, a low-cardinality `error` label.
    pub fn kind(&self) -> &'static str {
        let (Error::Observe { source, .. } | Error::Apply { source, .. } | Error::Status { source }) = self;
        match source {
            kube::Error::Api(s) if s.code == 409 => "conflict",
            kube::Error::Api(s) if s.code == 403 => "forbidden",
            kube::Error::Api(s) if s.code == 422 => "invalid",
            kube::Error::Api(_) => "api",
            _ => "transport",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Names the step of a Kubernetes call's failure: `api.get(..).await.observing("Deployment x")?`.
pub trait Step<T> {
    fn observing(self, what: impl Into<String>) -> Result<T>;
    fn applying(self, object: impl Into<String>) -> Result<T>;
    fn writing_status(self) -> Result<T>;
}

impl<T> Step<T> for kube::Result<T> {
    fn observing(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Observe { what: what.into(), source })
    }
    fn applying(self, object: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Apply { object: object.into(), source })
    }
    fn writing_status(self) -> Result<T> {
        self.map_err(|source| Error::Status { source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(kube::core::Status::failure("refused", "Reason").with_code(code).boxed())
    }

    #[test]
    fn labels_name_the_step_and_the_answer() {
        let e = Err::<(), _>(api(409)).applying("Pod p-1").unwrap_err();
        assert_eq!((e.step(), e.kind()), ("apply", "conflict"));
        assert!(e.to_string().starts_with("applying Pod p-1: "), "{e}");
        let e = Err::<(), _>(api(403)).observing("Deployment d").unwrap_err();
        assert_eq!((e.step(), e.kind()), ("observe", "forbidden"));
        let e = Err::<(), _>(api(422)).writing_status().unwrap_err();
        assert_eq!((e.step(), e.kind()), ("status", "invalid"));
        let e = Err::<(), _>(api(500)).writing_status().unwrap_err();
        assert_eq!(e.kind(), "api");
    }
}
