//! What noderoll's integration tests, the chaos suite and the drain benchmark share: the
//! built binary and the simulator run as processes ([`harness`]), the real control plane
//! ([`control_plane`]), a real knotd ([`knot`]) and a real 3-member etcd ([`etcd`]), each
//! started on free loopback ports in a temp dir and stopped when dropped. A crate of its
//! own, so that each user takes what it needs and none has to silence unused-code warnings.

pub mod control_plane;
pub mod etcd;
pub mod harness;
pub mod knot;
