//! The socket mark of a health probe sent along the VIP path: lbd's checker sets it (SO_MARK) on each probe socket,
//! a policy rule routes marked packets to lbd's probe interface, and `lb_hc` (TC egress there) sends each one to the
//! backend the mark names, the way `lb_xdp` would send a client's packet.
//!
//! ```text
//!  31          25  24  23                      0
//! [ 0x4c >> 1 tag | L2 | backend id (LB_BACKENDS) ]
//! ```
//! The tag keeps lbd's marks apart from other marks on the host (a firewall's, a VPN's): the policy rule matches
//! `HC_MARK_TAG/HC_MARK_TAG_MASK` only. `L2` asks for the L2 DSR rewrite instead of IP-in-IP, as the VIP's mode says.

use crate::BackendId;

/// The tag bits every probe mark carries.
pub const HC_MARK_TAG: u32 = 0x4c00_0000;
/// Which bits of a mark hold the tag (the rule's mask).
pub const HC_MARK_TAG_MASK: u32 = 0xfe00_0000;
/// Forward by MAC rewrite (an `l2dsr` VIP) instead of encapsulation.
pub const HC_MARK_L2DSR: u32 = 1 << 24;
/// The backend id bits: ids above this cannot be marked (the config refuses `max_backends` beyond it).
pub const HC_MARK_ID_MASK: u32 = 0x00ff_ffff;

/// How a probe's packets reach its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeMark {
    pub backend: BackendId,
    pub l2dsr: bool,
}

impl ProbeMark {
    /// The mark, or `None` for an id that does not fit.
    pub const fn encode(self) -> Option<u32> {
        if self.backend > HC_MARK_ID_MASK {
            return None;
        }
        let mode = if self.l2dsr { HC_MARK_L2DSR } else { 0 };
        Some(HC_MARK_TAG | mode | self.backend)
    }

    /// The probe a packet's mark names; `None` when the mark is not one of lbd's.
    #[inline(always)]
    pub const fn decode(mark: u32) -> Option<ProbeMark> {
        if mark & HC_MARK_TAG_MASK != HC_MARK_TAG {
            return None;
        }
        Some(ProbeMark {
            backend: mark & HC_MARK_ID_MASK,
            l2dsr: mark & HC_MARK_L2DSR != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_foreign_marks_are_not_probes() {
        for (backend, l2dsr) in [(1, false), (4095, true), (HC_MARK_ID_MASK, false)] {
            let m = ProbeMark { backend, l2dsr };
            assert_eq!(ProbeMark::decode(m.encode().unwrap()), Some(m));
        }
        let too_big = ProbeMark {
            backend: HC_MARK_ID_MASK + 1,
            l2dsr: false,
        };
        assert_eq!(too_big.encode(), None);
        for foreign in [0, 1, 0x4e00_0001, 0xff00_0000, HC_MARK_TAG_MASK] {
            assert_eq!(ProbeMark::decode(foreign), None, "{foreign:#x}");
        }
    }
}
