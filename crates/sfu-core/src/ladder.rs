//! The degradation ladder: how one subscriber's downlink estimate is shared among the
//! videos it receives. Audio is not on the ladder: it is never paused for video. The
//! room takes the voices a subscriber hears off its estimate first, and keeps
//! [`crate::room::ESTIMATE_HEADROOM`] for RTCP and bursts; the ladder shares the rest.
//!
//! Why one function: which videos flow at which layer when the estimate falls is the
//! product's behaviour on a bad network ("video goes first, then pauses, audio stays";
//! a shared screen outranks cameras), so it is decided in one place, with table tests,
//! from the estimate and the subscriptions alone.
//!
//! The rule, as Jitsi's and LiveKit's allocators do it:
//! 1. in priority order (screen shares, then cameras, each in the order given), every
//!    video gets its lowest layer while the budget lasts; one that does not fit is paused;
//! 2. then, priority class by class, the videos of a class are raised one layer at a
//!    time, in turns, while the budget pays for the step: a screen share reaches the
//!    highest layer it may before any camera moves up, and cameras of a grid share what
//!    is left evenly rather than one taking it all.

/// What outranks what when the budget is short.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Camera,
    Screen,
}

/// One video subscription on the ladder.
#[derive(Clone, Debug, PartialEq)]
pub struct Want {
    pub priority: Priority,
    /// Bits per second of each layer the subscriber may receive (its preferences
    /// applied), lowest first.
    pub layers: Vec<u64>,
}

/// For each of `wants`, the index into its `layers` it gets, or `None`: paused.
pub fn allocate(budget: u64, wants: &[Want]) -> Vec<Option<usize>> {
    let mut order: Vec<usize> = (0..wants.len()).collect();
    // Stable: equal priorities keep the caller's order.
    order.sort_by(|a, b| wants[*b].priority.cmp(&wants[*a].priority));
    let mut left = budget;
    let mut given: Vec<Option<usize>> = vec![None; wants.len()];
    for &i in &order {
        if let Some(&lowest) = wants[i].layers.first()
            && lowest <= left
        {
            left -= lowest;
            given[i] = Some(0);
        }
    }
    for class in [Priority::Screen, Priority::Camera] {
        loop {
            let mut raised = false;
            for &i in order.iter().filter(|i| wants[**i].priority == class) {
                let Some(at) = given[i] else { continue };
                let layers = &wants[i].layers;
                if at + 1 < layers.len() {
                    let step = layers[at + 1].saturating_sub(layers[at]);
                    if step <= left {
                        left -= step;
                        given[i] = Some(at + 1);
                        raised = true;
                    }
                }
            }
            if !raised {
                break;
            }
        }
    }
    given
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAM: [u64; 3] = [150_000, 500_000, 1_500_000];
    const SCREEN: [u64; 2] = [200_000, 1_200_000];

    fn cam() -> Want {
        Want { priority: Priority::Camera, layers: CAM.to_vec() }
    }
    fn screen() -> Want {
        Want { priority: Priority::Screen, layers: SCREEN.to_vec() }
    }

    #[test]
    fn the_ladder_drops_layers_then_pauses_cameras_and_keeps_the_screen_longest() {
        #[allow(clippy::type_complexity)]
        let table: Vec<(&str, u64, Vec<Want>, Vec<Option<usize>>)> = vec![
            (
                "plenty: everything at its highest",
                10_000_000,
                vec![cam(), cam(), screen()],
                vec![Some(2), Some(2), Some(1)],
            ),
            ("one camera, 2.7 Mbps", 2_700_000, vec![cam()], vec![Some(2)]),
            ("one camera, 1 Mbps: the middle layer", 1_000_000, vec![cam()], vec![Some(1)]),
            ("one camera, 200 kbps: the lowest", 200_000, vec![cam()], vec![Some(0)]),
            ("one camera, 100 kbps: paused (audio stays)", 100_000, vec![cam()], vec![None]),
            ("no budget at all", 0, vec![cam(), screen()], vec![None, None]),
            (
                "the screen share reaches its top before cameras move up",
                1_700_000,
                vec![cam(), cam(), screen()],
                vec![Some(0), Some(0), Some(1)],
            ),
            ("cameras of a grid share evenly", 1_300_000, vec![cam(), cam()], vec![Some(1), Some(1)]),
            (
                "short budget: the screen first, then cameras in order while they fit",
                400_000,
                vec![cam(), cam(), screen()],
                vec![Some(0), None, Some(0)],
            ),
            ("the screen alone survives", 250_000, vec![cam(), screen()], vec![None, Some(0)]),
            (
                "a capped subscription (one layer allowed) takes no more",
                5_000_000,
                vec![Want { priority: Priority::Camera, layers: vec![150_000] }, cam()],
                vec![Some(0), Some(2)],
            ),
            (
                "an unmeasured layer costs nothing",
                10_000,
                vec![Want { priority: Priority::Camera, layers: vec![0, 0] }],
                vec![Some(1)],
            ),
            (
                "no layers: nothing to give",
                1_000_000,
                vec![Want { priority: Priority::Camera, layers: vec![] }],
                vec![None],
            ),
        ];
        for (name, budget, wants, expected) in table {
            assert_eq!(allocate(budget, &wants), expected, "{name}");
        }
    }

    #[test]
    fn what_is_given_never_exceeds_the_budget() {
        for budget in (0..4_000_000).step_by(37_000) {
            let wants = vec![cam(), screen(), cam(), cam()];
            let given = allocate(budget, &wants);
            let spent: u64 = given.iter().zip(&wants).filter_map(|(g, w)| g.map(|l| w.layers[l])).sum();
            assert!(spent <= budget, "{budget}: {given:?}");
        }
    }
}
