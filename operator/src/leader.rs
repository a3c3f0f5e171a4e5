//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go does it:
//! a candidate takes the Lease when it is free or when its record has not changed
//! for a whole lease duration *as observed locally* (so clock skew between
//! replicas does not matter); the leader renews it and steps down (the process
//! stops reconciling) when it cannot renew before the renew deadline.
//! Writes use the Lease's resourceVersion, so two candidates never both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::time::Instant;

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    /// The last record seen and when (locally) it was first seen.
    observed: Option<(Option<LeaseSpec>, Instant)>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeadershipLost {
    #[error("could not renew the leader Lease within {0:?}")]
    RenewDeadline(Duration),
    #[error("another replica ({0}) holds the leader Lease")]
    Taken(String),
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, lease_duration: Duration) -> Self {
        Self { api, name: name.into(), identity: identity.into(), lease_duration, observed: None }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn retry_period(&self) -> Duration {
        (self.lease_duration / 7).max(Duration::from_millis(200))
    }

    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// Waits until this replica leads.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Renews the Lease until leadership is lost; returns why. A renewal that has
    /// not succeeded within the renew deadline (counted from the start of the last
    /// successful attempt, so a slow answer cannot stretch it) ends leadership even
    /// while its request still hangs: the caller stops the controllers then, before
    /// a standby can take the Lease (a lease duration after it last changed).
    pub async fn hold(&mut self) -> LeadershipLost {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.retry_period()).await;
            let attempt = Instant::now();
            let deadline = last_renewed + self.renew_deadline();
            match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                Err(_) => return LeadershipLost::RenewDeadline(self.renew_deadline()),
                Ok(Ok(true)) => last_renewed = attempt,
                Ok(Ok(false)) => {
                    let holder = self.observed.as_ref().and_then(|(s, _)| s.as_ref()?.holder_identity.clone());
                    return LeadershipLost::Taken(holder.unwrap_or_default());
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the leader Lease"),
            }
            if last_renewed.elapsed() > self.renew_deadline() {
                return LeadershipLost::RenewDeadline(self.renew_deadline());
            }
        }
    }

    /// Gives the Lease up so that a standby takes over at once (graceful shutdown).
    /// A renewal cut short by the shutdown may still land after the read here; its
    /// write then wins the resourceVersion race, so a conflict is read again.
    pub async fn release(&mut self) {
        for _ in 0..5 {
            let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(&self.identity) {
                return;
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
            match self.api.replace(&self.name, &PostParams::default(), &lease).await {
                Ok(_) => {
                    tracing::info!(identity = %self.identity, "released the leader Lease");
                    return;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "releasing the leader Lease");
                    return;
                }
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = jiff::Timestamp::now();
        let seconds = self.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone();
        self.observe(spec.clone());
        let spec = spec.unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        if !ours && !holder.is_empty() {
            let held_for = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(seconds).max(1) as u64);
            let (_, seen) = self.observed.as_ref().expect("observed above");
            if seen.elapsed() < held_for {
                return Ok(false);
            }
        }
        let new = lease.spec.get_or_insert_with(Default::default);
        if !ours {
            new.acquire_time = Some(MicroTime(now));
            new.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        new.holder_identity = Some(self.identity.clone());
        new.lease_duration_seconds = Some(seconds);
        new.renew_time = Some(MicroTime(now));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(updated) => {
                self.observe(updated.spec);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Remembers when the Lease last changed, as this process saw it: another's Lease
    /// expires a lease duration after that. A process that has just started has never
    /// seen the Lease renewed, so its first sighting counts as two retry periods later:
    /// when a leader's container dies and restarts, the standby that has watched the
    /// Lease all along takes over, not the newcomer (whose checks could otherwise fall
    /// first by chance).
    fn observe(&mut self, spec: Option<LeaseSpec>) {
        let first = self.observed.is_none();
        let changed = self.observed.as_ref().is_none_or(|(seen, _)| *seen != spec);
        if changed {
            let at = if first { Instant::now() + 2 * self.retry_period() } else { Instant::now() };
            self.observed = Some((spec, at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An API server that answers reads of the Lease (held by `holder`) and lets
    /// every write hang, counting them.
    fn hanging_writes(holder: &str, writes: Arc<AtomicUsize>) -> kube::Client {
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "switchboard-operator", "namespace": "ops", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": "2026-12-01T09:00:00.000000Z"}
        })
        .to_string();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let (lease, writes) = (lease.clone(), writes.clone());
            async move {
                if request.method() != http::Method::GET {
                    writes.fetch_add(1, Ordering::SeqCst);
                    futures::future::pending::<()>().await;
                }
                let body = kube::client::Body::from(lease.into_bytes());
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder().header("content-type", "application/json").body(body).unwrap(),
                )
            }
        });
        kube::Client::new(service, "ops")
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_hangs_ends_leadership_at_the_renew_deadline() {
        let writes = Arc::new(AtomicUsize::new(0));
        let api = Api::namespaced(hanging_writes("operator-a", writes.clone()), "ops");
        let lease_duration = Duration::from_secs(15);
        let mut elector = LeaderElector::new(api, "switchboard-operator", "operator-a", lease_duration);
        let started = Instant::now();
        let lost = tokio::time::timeout(lease_duration, elector.hold())
            .await
            .expect("gave up before a standby could take over");
        assert!(matches!(lost, LeadershipLost::RenewDeadline(d) if d == Duration::from_secs(10)), "{lost}");
        assert!(started.elapsed() <= Duration::from_secs(10), "stopped at {:?}", started.elapsed());
        assert_eq!(writes.load(Ordering::SeqCst), 1, "one renewal was sent and hung");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_taken_by_another_ends_leadership_at_once() {
        let writes = Arc::new(AtomicUsize::new(0));
        let api = Api::namespaced(hanging_writes("operator-b", writes.clone()), "ops");
        let mut elector = LeaderElector::new(api, "switchboard-operator", "operator-a", Duration::from_secs(15));
        let lost = elector.hold().await;
        assert!(matches!(&lost, LeadershipLost::Taken(holder) if holder == "operator-b"), "{lost}");
        assert_eq!(writes.load(Ordering::SeqCst), 0, "nothing written over another's Lease");
    }
}
