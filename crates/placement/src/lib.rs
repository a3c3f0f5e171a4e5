//! The pure core of the Meeting controller: no Kubernetes client, no I/O, explicit
//! time. The operator dereferences what it watches into these views, asks these
//! functions what to do, and carries the answer out.
//!
//! * [`lifecycle`]: which phase a meeting is in and what it needs now (a
//!   reservation, an assignment, an end, deletion), and when to look again.
//! * [`place`]: which SFU pod(s) take a meeting, by strategy and free capacity,
//!   with a relay tree when one pod cannot hold it.
//! * [`room_code`]: 12-character room codes that are unique by construction.

pub mod lifecycle;
pub mod place;
pub mod room_code;
