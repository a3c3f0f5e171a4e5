//! Which SFU pod(s) take a meeting.
//!
//! * One pod when one can hold it: Packed takes the fullest pod that fits (best
//!   fit, so that other pods and whole nodes empty out); Distributed takes the
//!   emptiest (spreading load and risk).
//! * Otherwise a cascade: an origin plus edges, as a tree in which every pod
//!   relays to at most [`RELAY_FANOUT`] children. A relay link costs one
//!   participant slot on each of its two pods (the relay is a subscriber there).
//!   Packed uses as few pods as it can; Distributed interleaves zones.
//!
//! Only Ready pods are candidates; the caller leaves out draining, starting and
//! unhealthy ones.

use std::collections::BTreeMap;

/// Most edges one SFU relays to; deeper trees keep each relay's fan-out bounded.
pub const RELAY_FANOUT: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Packed,
    Distributed,
}

/// A Ready SFU pod with its committed load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub pod: String,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub capacity: u64,
    /// Participants (and relay slots) already committed to it.
    pub allocated: u64,
}

impl Candidate {
    pub fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.allocated)
    }
}

/// One pod's part of a placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    pub pod: String,
    /// Participants it serves.
    pub participants: u64,
    /// The pod it relays from; None for the origin.
    pub parent: Option<String>,
    /// Relay links it terminates (to its parent and its children).
    pub relay_links: u64,
}

impl Share {
    /// Slots it takes on its pod.
    pub fn slots(&self) -> u64 {
        self.participants + self.relay_links
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortfall {
    /// No Ready pod at all.
    NoReadyPods,
    /// Not enough free capacity on the Ready pods.
    InsufficientCapacity { needed: u64, free: u64 },
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shortfall::NoReadyPods => write!(f, "no Ready SFU pod"),
            Shortfall::InsufficientCapacity { needed, free } => {
                write!(f, "{needed} participants needed, {free} free on Ready SFU pods")
            }
        }
    }
}

/// Tracks one participant of a meeting of n takes on its pod, per member of the meeting:
/// it publishes a camera and a microphone and receives everyone else's, 2n in all.
pub const TRACKS_PER_PARTICIPANT: u64 = 2;

/// Participants of a meeting of `meeting_size` that still fit on a pod holding
/// `tracks_in_use` of `track_limit` tracks. A pod's seats and its tracks are separate
/// limits: a few large meetings fill a pod's tracks before its seats.
pub fn participants_within_tracks(track_limit: u64, tracks_in_use: u64, meeting_size: u64) -> u64 {
    track_limit.saturating_sub(tracks_in_use) / (TRACKS_PER_PARTICIPANT * meeting_size.max(1))
}

/// Places a breakout room beside its main meeting: on the first of `preferred` (the
/// main meeting's origin, then its edges) that is a candidate with room for
/// `participants`, so opening rooms needs no new capacity and their people stay on the
/// pods their media already reaches. `None` when none has room: the room is then placed
/// as any meeting. Never a cascade: a breakout room is small.
pub fn place_beside(candidates: &[Candidate], preferred: &[String], participants: u64) -> Option<Vec<Share>> {
    let participants = participants.max(1);
    preferred
        .iter()
        .filter_map(|p| candidates.iter().find(|c| &c.pod == p))
        .find(|c| c.free() >= participants)
        .map(|c| vec![Share { pod: c.pod.clone(), participants, parent: None, relay_links: 0 }])
}

/// Places `participants` on `candidates`. The first share is the origin.
pub fn place(strategy: Strategy, candidates: &[Candidate], participants: u64) -> Result<Vec<Share>, Shortfall> {
    let participants = participants.max(1);
    let usable: Vec<&Candidate> = candidates.iter().filter(|c| c.free() > 0).collect();
    if candidates.is_empty() {
        return Err(Shortfall::NoReadyPods);
    }
    let by_name = |a: &&Candidate, b: &&Candidate| a.pod.cmp(&b.pod);
    let single = match strategy {
        Strategy::Packed => usable
            .iter()
            .filter(|c| c.free() >= participants)
            .min_by(|a, b| a.free().cmp(&b.free()).then(by_name(a, b))),
        Strategy::Distributed => usable
            .iter()
            .filter(|c| c.free() >= participants)
            .max_by(|a, b| a.free().cmp(&b.free()).then(by_name(b, a))),
    };
    if let Some(c) = single {
        return Ok(vec![Share { pod: c.pod.clone(), participants, parent: None, relay_links: 0 }]);
    }
    let largest = usable.iter().map(|c| c.free()).max().unwrap_or(0);
    cascade(strategy, usable, participants).map_err(|e| match e {
        Shortfall::InsufficientCapacity { needed, free } => {
            Shortfall::InsufficientCapacity { needed, free: free.max(largest) }
        }
        other => other,
    })
}

fn cascade(strategy: Strategy, mut usable: Vec<&Candidate>, participants: u64) -> Result<Vec<Share>, Shortfall> {
    // A pod must hold its upstream link and at least one participant to be an edge.
    usable.retain(|c| c.free() >= 2);
    usable.sort_by(|a, b| b.free().cmp(&a.free()).then(a.pod.cmp(&b.pod)));
    let ordered: Vec<&Candidate> = match strategy {
        Strategy::Packed => usable,
        Strategy::Distributed => {
            // Round-robin over zones, each zone's pods emptiest first.
            let mut zones: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
            for c in usable {
                zones.entry(c.zone.as_deref().unwrap_or("")).or_default().push(c);
            }
            let mut queues: Vec<std::collections::VecDeque<&Candidate>> = zones.into_values().map(Into::into).collect();
            let mut out = Vec::new();
            while queues.iter().any(|q| !q.is_empty()) {
                for q in &mut queues {
                    if let Some(c) = q.pop_front() {
                        out.push(c);
                    }
                }
            }
            out
        }
    };
    // Fewest pods whose free slots, less two per relay link, cover everyone.
    let mut total = 0u64;
    let mut count = 0usize;
    for (i, c) in ordered.iter().enumerate() {
        total += c.free();
        count = i + 1;
        if total.saturating_sub(2 * i as u64) >= participants {
            break;
        }
    }
    let capacity = total.saturating_sub(2 * count.saturating_sub(1) as u64);
    if capacity < participants {
        return Err(Shortfall::InsufficientCapacity { needed: participants, free: capacity });
    }
    let chosen = &ordered[..count];
    let mut shares: Vec<Share> = chosen
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let parent = (i > 0).then(|| chosen[(i - 1) / RELAY_FANOUT].pod.clone());
            let children = (1..count).filter(|j| (j - 1) / RELAY_FANOUT == i).count() as u64;
            Share { pod: c.pod.clone(), participants: 0, parent, relay_links: children + u64::from(i > 0) }
        })
        .collect();
    let mut left = participants;
    for (share, c) in shares.iter_mut().zip(chosen) {
        let room = c.free().saturating_sub(share.relay_links);
        share.participants = room.min(left);
        left -= share.participants;
    }
    debug_assert_eq!(left, 0);
    Ok(shares)
}

/// A meeting moved off failed pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replacement {
    /// The new tree; the first share is the origin.
    pub shares: Vec<Share>,
    /// (from, to) for every pod the meeting left.
    pub moves: Vec<(String, String)>,
}

/// Moves a placed meeting off the `failed` pods of its tree (`shares`).
///
/// Each failed share moves whole to one healthy pod outside the tree, chosen by
/// the strategy (best fit when Packed, emptiest when Distributed), so that the
/// tree keeps its shape and participants on healthy pods stay where they are.
/// When some share fits no single pod, the whole meeting is placed again over
/// every candidate, counting the seats it already holds on healthy pods as free.
/// `candidates` are the healthy Ready pods with their committed load, which
/// includes this meeting's own seats on the pods of the tree.
pub fn replace(
    strategy: Strategy,
    candidates: &[Candidate],
    shares: &[Share],
    failed: &[String],
) -> Result<Replacement, Shortfall> {
    let in_tree = |pod: &str| shares.iter().any(|s| s.pod == pod);
    let mut taken: Vec<String> = Vec::new();
    let mut swaps: Vec<(String, String)> = Vec::new();
    let mut whole = true;
    for share in shares.iter().filter(|s| failed.contains(&s.pod)) {
        let fits =
            candidates.iter().filter(|c| !in_tree(&c.pod) && !taken.contains(&c.pod) && c.free() >= share.slots());
        let chosen = match strategy {
            Strategy::Packed => fits.min_by(|a, b| a.free().cmp(&b.free()).then(a.pod.cmp(&b.pod))),
            Strategy::Distributed => fits.max_by(|a, b| a.free().cmp(&b.free()).then(b.pod.cmp(&a.pod))),
        };
        match chosen {
            Some(c) => {
                taken.push(c.pod.clone());
                swaps.push((share.pod.clone(), c.pod.clone()));
            }
            None => {
                whole = false;
                break;
            }
        }
    }
    if whole {
        let rename =
            |pod: &String| swaps.iter().find(|(from, _)| from == pod).map_or_else(|| pod.clone(), |(_, to)| to.clone());
        let shares = shares
            .iter()
            .map(|s| Share { pod: rename(&s.pod), parent: s.parent.as_ref().map(rename), ..s.clone() })
            .collect();
        return Ok(Replacement { shares, moves: swaps });
    }
    // Start over: the seats this meeting holds on its healthy pods are free for it.
    let own = |pod: &str| shares.iter().find(|s| s.pod == pod && !failed.contains(&s.pod)).map_or(0, Share::slots);
    let freed: Vec<Candidate> = candidates
        .iter()
        .map(|c| Candidate { allocated: c.allocated.saturating_sub(own(&c.pod)), ..c.clone() })
        .collect();
    let participants = shares.iter().map(|s| s.participants).sum();
    let placed = place(strategy, &freed, participants)?;
    let origin = placed[0].pod.clone();
    let moves = shares
        .iter()
        .filter(|s| !placed.iter().any(|p| p.pod == s.pod))
        .map(|s| (s.pod.clone(), origin.clone()))
        .collect();
    Ok(Replacement { shares: placed, moves })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, zone: &str, capacity: u64, allocated: u64) -> Candidate {
        Candidate { pod: name.into(), node: Some(format!("node-{name}")), zone: Some(zone.into()), capacity, allocated }
    }

    #[test]
    fn packed_takes_the_fullest_pod_that_fits_distributed_the_emptiest() {
        let pods = [pod("a", "z1", 100, 10), pod("b", "z1", 100, 80), pod("c", "z2", 100, 95)];
        let packed = place(Strategy::Packed, &pods, 10).unwrap();
        assert_eq!(packed, vec![Share { pod: "b".into(), participants: 10, parent: None, relay_links: 0 }]);
        let spread = place(Strategy::Distributed, &pods, 10).unwrap();
        assert_eq!(spread[0].pod, "a");
    }

    #[test]
    fn a_breakout_room_goes_beside_its_main_meeting_when_there_is_room() {
        let pods = [pod("a", "z", 20, 18), pod("b", "z", 20, 5), pod("c", "z", 20, 0)];
        let beside = |preferred: &[&str], n| {
            let preferred: Vec<String> = preferred.iter().map(|p| p.to_string()).collect();
            place_beside(&pods, &preferred, n).map(|s| (s[0].pod.clone(), s[0].participants, s.len()))
        };
        // The origin first, when it has room.
        assert_eq!(beside(&["b", "c"], 4), Some(("b".into(), 4, 1)));
        // A full origin: the next of the main meeting's pods.
        assert_eq!(beside(&["a", "b"], 4), Some(("b".into(), 4, 1)));
        // Exactly full is full enough.
        assert_eq!(beside(&["a"], 2), Some(("a".into(), 2, 1)));
        // None of them has room, or none is a candidate (not Ready): placed as usual.
        assert_eq!(beside(&["a"], 3), None);
        assert_eq!(beside(&["gone"], 1), None);
        assert_eq!(beside(&[], 1), None);
        // An empty room still takes a seat (its first arrival).
        assert_eq!(beside(&["c"], 0), Some(("c".into(), 1, 1)));
    }

    #[test]
    fn no_pods_and_full_pods_are_told_apart() {
        assert_eq!(place(Strategy::Packed, &[], 5), Err(Shortfall::NoReadyPods));
        let full = [pod("a", "z", 10, 10), pod("b", "z", 10, 9)];
        assert_eq!(place(Strategy::Packed, &full, 5), Err(Shortfall::InsufficientCapacity { needed: 5, free: 1 }));
    }

    /// Checks the invariants of a cascade: a tree rooted at the origin, fan-out
    /// bounded, shares add up, no pod over capacity.
    fn assert_valid_tree(shares: &[Share], pods: &[Candidate], participants: u64) {
        assert!(shares[0].parent.is_none());
        assert_eq!(shares.iter().map(|s| s.participants).sum::<u64>(), participants);
        for (i, s) in shares.iter().enumerate() {
            let c = pods.iter().find(|c| c.pod == s.pod).unwrap();
            assert!(s.slots() <= c.free(), "{} over capacity", s.pod);
            assert!(s.participants > 0, "{} serves nobody", s.pod);
            if i > 0 {
                let parent = s.parent.as_ref().unwrap();
                let at = shares.iter().position(|p| &p.pod == parent).unwrap();
                assert!(at < i, "parent comes first");
            }
            let children = shares.iter().filter(|x| x.parent.as_deref() == Some(&s.pod)).count();
            assert!(children <= RELAY_FANOUT);
            assert_eq!(s.relay_links, children as u64 + u64::from(i > 0));
        }
        let pods_used: std::collections::HashSet<_> = shares.iter().map(|s| &s.pod).collect();
        assert_eq!(pods_used.len(), shares.len(), "a pod appears once");
    }

    #[test]
    fn three_times_a_pod_becomes_an_origin_and_edges() {
        let pods: Vec<Candidate> = (0..6).map(|i| pod(&format!("p{i}"), ["a", "b", "c"][i % 3], 250, 0)).collect();
        let shares = place(Strategy::Packed, &pods, 750).unwrap();
        assert_eq!(shares.len(), 4, "3 pods hold 746 after relay slots, so a fourth is needed");
        assert_valid_tree(&shares, &pods, 750);
        let spread = place(Strategy::Distributed, &pods, 750).unwrap();
        assert_valid_tree(&spread, &pods, 750);
        let zones: std::collections::HashSet<_> =
            spread.iter().map(|s| pods.iter().find(|p| p.pod == s.pod).unwrap().zone.clone()).collect();
        assert_eq!(zones.len(), 3, "Distributed spans every zone");
    }

    #[test]
    fn large_cascades_bound_the_fan_out() {
        let pods: Vec<Candidate> = (0..100).map(|i| pod(&format!("p{i:03}"), "z", 100, i % 7)).collect();
        let shares = place(Strategy::Packed, &pods, 5_000).unwrap();
        assert!(shares.len() > RELAY_FANOUT + 1);
        assert_valid_tree(&shares, &pods, 5_000);
    }

    #[test]
    fn a_cascade_that_cannot_fit_says_how_much_is_free() {
        let pods = [pod("a", "z", 100, 0), pod("b", "z", 100, 0)];
        assert_eq!(
            place(Strategy::Packed, &pods, 250),
            Err(Shortfall::InsufficientCapacity { needed: 250, free: 198 })
        );
    }

    #[test]
    fn a_failed_pod_of_a_single_pod_meeting_moves_to_the_best_fit() {
        let pods = [pod("b", "z", 100, 50), pod("c", "z", 100, 90), pod("d", "z", 100, 0)];
        let tree = vec![Share { pod: "a".into(), participants: 10, parent: None, relay_links: 0 }];
        let packed = replace(Strategy::Packed, &pods, &tree, &["a".into()]).unwrap();
        assert_eq!(packed.moves, vec![("a".to_owned(), "c".to_owned())]);
        assert_eq!(packed.shares, vec![Share { pod: "c".into(), participants: 10, parent: None, relay_links: 0 }]);
        let spread = replace(Strategy::Distributed, &pods, &tree, &["a".into()]).unwrap();
        assert_eq!(spread.moves, vec![("a".to_owned(), "d".to_owned())]);
    }

    #[test]
    fn a_failed_origin_moves_alone_and_the_tree_keeps_its_shape() {
        let pods: Vec<Candidate> = (0..6).map(|i| pod(&format!("p{i}"), "z", 250, 0)).collect();
        let tree = place(Strategy::Packed, &pods[..4], 750).unwrap();
        let failed = vec![tree[0].pod.clone()];
        // The origin fails: its share (participants and relay links) moves to one new pod.
        let mut load = pods.clone();
        for c in &mut load {
            c.allocated = tree.iter().find(|s| s.pod == c.pod).map_or(0, Share::slots);
        }
        let healthy: Vec<Candidate> = load.into_iter().filter(|c| !failed.contains(&c.pod)).collect();
        let r = replace(Strategy::Packed, &healthy, &tree, &failed).unwrap();
        assert_eq!(r.moves.len(), 1);
        let to = &r.moves[0].1;
        assert!(!tree.iter().any(|s| &s.pod == to), "a pod outside the tree");
        assert_eq!(&r.shares[0].pod, to, "it becomes the origin");
        for (old, new) in tree.iter().zip(&r.shares).skip(1) {
            assert_eq!(old.pod, new.pod, "edges stay");
            assert_eq!(new.parent.as_deref(), Some(to.as_str()), "and relay from the new origin");
        }
        let check: Vec<Candidate> = healthy.iter().map(|c| Candidate { allocated: 0, ..c.clone() }).collect();
        assert_valid_tree(&r.shares, &check, 750);
    }

    #[test]
    fn when_no_single_pod_fits_a_share_the_meeting_is_placed_again() {
        // "a" held 80; the healthy pods have 50 free each, plus the meeting's own 20 on "b".
        let tree = vec![
            Share { pod: "a".into(), participants: 79, parent: None, relay_links: 1 },
            Share { pod: "b".into(), participants: 19, parent: Some("a".into()), relay_links: 1 },
        ];
        let pods = [pod("b", "z", 100, 70), pod("c", "z", 100, 50), pod("d", "z", 100, 50)];
        let r = replace(Strategy::Packed, &pods, &tree, &["a".into()]).unwrap();
        assert_eq!(r.shares.iter().map(|s| s.participants).sum::<u64>(), 98);
        assert!(r.shares.iter().all(|s| s.pod != "a"));
        assert!(r.moves.iter().any(|(from, _)| from == "a"));
        let freed = [pod("b", "z", 100, 50), pod("c", "z", 100, 50), pod("d", "z", 100, 50)];
        assert_valid_tree(&r.shares, &freed, 98);
        let none = replace(Strategy::Packed, &[], &tree, &["a".into()]);
        assert_eq!(none, Err(Shortfall::NoReadyPods));
    }

    #[test]
    fn the_track_limit_bounds_participants_by_meeting_size() {
        // (limit, in use, meeting size, participants that fit)
        for (limit, used, size, fits) in
            [(1_000, 0, 10, 50), (1_000, 900, 10, 5), (1_000, 1_000, 2, 0), (1_000, 1_200, 2, 0), (100, 0, 0, 50)]
        {
            assert_eq!(participants_within_tracks(limit, used, size), fits, "{limit} {used} {size}");
        }
    }
}
