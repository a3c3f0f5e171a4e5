//! Small builders for standard status conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition of `type_`, keeping the previous lastTransitionTime when the status
/// did not change (so that "since when" stays true).
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    condition_at(previous, type_, status, reason, message, generation, jiff::Timestamp::now())
}

/// [`condition`] with the time of a transition passed in (for pure status steps).
pub fn condition_at(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Whether two condition lists say the same (ignoring transition times).
pub fn same(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let first = condition(&[], "Available", true, "MinimumReplicasReady", "2 of 2", Some(1));
        let again =
            condition(std::slice::from_ref(&first), "Available", true, "MinimumReplicasReady", "3 of 2", Some(2));
        assert_eq!(first.last_transition_time, again.last_transition_time);
        let flipped = condition(std::slice::from_ref(&first), "Available", false, "NoReadyPods", "0 of 2", Some(2));
        assert_eq!(flipped.status, "False");
        assert!(!same(&[first], &[flipped]));
    }
}
