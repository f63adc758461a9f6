//! Indices of the per-CPU verdict/reason counters (`LB_COUNTERS`). Every packet the programs see lands in exactly
//! one verdict counter; the reason tells an operator why.

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident = $metric:literal ),+ $(,)?) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $( $(#[$doc])* $name ),+ }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name),+];
            /// Stable snake_case name used in metrics, `lbctl stats` and JSON.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$name => $metric),+ }
            }
        }
    };
}

counters! {
    /// `lb_xdp`: ARP, LLDP and every other non-IP ethertype.
    PassNotIp = "pass_not_ip",
    /// `lb_xdp`: IP traffic whose destination is not a VIP address.
    PassNotVip = "pass_not_vip",
    /// `lb_xdp`: too short or inconsistent to tell whether it is for a VIP (truncated Ethernet, VLAN or IP header);
    /// the kernel gets it untouched and applies its own checks (and discards an invalid IP header itself).
    PassMalformed = "pass_malformed",
    /// `lb_xdp`: a frame whose IP layer the program does not look into (a second VLAN tag, 802.1ad).
    PassUnsupported = "pass_unsupported",
    /// `lb_xdp`: forwarded out of the ingress interface.
    Tx = "tx",
    /// `lb_xdp`: forwarded through the devmap to another interface.
    Redirect = "redirect",
    /// `lb_xdp`: for a VIP address, with a truncated or invalid header after the IP header (TCP, UDP, ICMP and
    /// its quote, an IPv6 extension header).
    DropMalformed = "drop_malformed",
    /// `lb_xdp`: for a VIP address but for no service there (another port or protocol, an ICMP type other than
    /// echo request and too-big, an IPv6 header chain the program does not walk). Dropped, not passed: the kernel
    /// would route it back towards the upstream router that sent it, a loop until the TTL runs out.
    DropNotServed = "drop_not_served",
    /// `lb_xdp`: a fragment for a VIP whose fragment policy is `drop`.
    DropFragment = "drop_fragment",
    /// `lb_xdp`: the VIP's ring has no backend for this hash, or the backend entry is unset.
    DropNoBackend = "drop_no_backend",
    /// `lb_xdp`: `bpf_fib_lookup` found no route or no neighbour for the backend.
    DropNoRoute = "drop_no_route",
    /// `lb_xdp`: `bpf_xdp_adjust_head`/`_tail` failed.
    DropAdjustFailed = "drop_adjust_failed",
    /// `lb_xdp`: would exceed the MTU after encapsulation and no ICMP answer is possible (IPv4 without DF, ICMP itself,
    /// or ICMP answers disabled).
    DropOverMtu = "drop_over_mtu",
    /// `lb_xdp`: over the MTU, and the ICMP too-big answer it deserved was over this CPU's answer budget.
    DropIcmpRateLimited = "drop_icmp_rate_limited",
    /// `lb_xdp`: answered with ICMP fragmentation-needed / ICMPv6 packet-too-big (sent with `XDP_TX`).
    IcmpTooBigSent = "icmp_too_big_sent",
    /// `lb_xdp`: an ICMP / ICMPv6 echo request to a VIP address, answered with an echo reply (sent with `XDP_TX`).
    IcmpEchoReply = "icmp_echo_reply",
    /// `lb_xdp`: an inbound ICMP too-big about a VIP flow, steered to that flow's backend (also counted in Tx/Redirect).
    IcmpSteered = "icmp_steered",
    /// `lb_xdp`: a fragment forwarded by the 3-tuple hash (also counted in Tx/Redirect).
    FragmentHashed = "fragment_hashed",
    /// `lb_xdp`: a new flow forwarded by hash without a flow-table insert because the per-CPU rate cap was reached.
    NewFlowCapped = "new_flow_capped",
    /// `lb_decap`: an IP-in-IP packet for a local tunnel address and a served VIP, decapsulated and passed up.
    DecapOk = "decap_ok",
    /// `lb_decap`: not an IP-in-IP packet for this host (passed untouched).
    DecapPassNotTunnel = "decap_pass_not_tunnel",
    /// `lb_decap`: IP-in-IP for this host but the inner destination is not a served VIP (passed untouched).
    DecapPassNotVip = "decap_pass_not_vip",
    /// `lb_decap`: IP-in-IP for this host with a truncated inner header (dropped).
    DecapDropMalformed = "decap_drop_malformed",
    /// `lb_decap`: IP-in-IP for this host from a source that is not a configured balancer (dropped).
    DecapDropSource = "decap_drop_source",
    /// `lb_decap`: a fragmented IP-in-IP packet for this host (dropped; balancers never send one).
    DecapDropFragment = "decap_drop_fragment",
    /// `lb_hc`: a packet without a probe mark on lbd's probe interface (the interface's own chatter, or something
    /// routed there by hand): left to the interface, which sends nothing anywhere.
    HcPassUnmarked = "hc_pass_unmarked",
    /// `lb_hc`: a probe packet sent to the backend its mark names (encapsulated or MAC-rewritten, then redirected).
    HcSent = "hc_sent",
    /// `lb_hc`: the mark names no backend entry, or one of the other family on an L2 DSR VIP (dropped).
    HcDropNoBackend = "hc_drop_no_backend",
    /// `lb_hc`: `bpf_fib_lookup` found no route to the backend (dropped).
    HcDropNoRoute = "hc_drop_no_route",
    /// `lb_hc`: not an IP packet of the family its header says, or the tunnel header could not be added (dropped).
    HcDropMalformed = "hc_drop_malformed",
}

/// Length of `LB_COUNTERS`.
pub const COUNTER_COUNT: u32 = Counter::ALL.len() as u32;
