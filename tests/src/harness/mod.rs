//! The packet harness: packet builders, the reference model, the fixture world, cases, runner and oracle, the
//! differential comparison, and the guards and namespaces every real-kernel test stands on.

pub mod capabilities;
pub mod case;
pub mod differential;
pub mod guards;
pub mod lab_programs;
pub mod legacy_layout;
pub mod model;
pub mod netns;
pub mod oracle;
pub mod packets;
pub mod pinned;
pub mod rig;
pub mod wait;
pub mod world;
