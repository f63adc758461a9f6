//! What a fixture case says: the map contents it starts from ([`Setup`], which also gives the model's state), the
//! packets and map changes it steps through, and what each packet must do ([`Pkt`]).

use std::net::IpAddr;

use lb_common::*;

use super::model::{ModelState, Route};
use super::world::*;

/// A VIP and its ring as a case sets it up.
#[derive(Clone, Debug)]
pub struct VipSpec {
    pub key: VipKey,
    pub vip_id: u32,
    pub flags: u32,
    pub ring: Vec<BackendId>,
}

impl VipSpec {
    pub fn new(
        addr: IpAddr,
        port: u16,
        proto: u8,
        vip_id: u32,
        flags: u32,
        ring: &[BackendId],
    ) -> VipSpec {
        VipSpec {
            key: VipKey::new(addr, port, proto),
            vip_id,
            flags,
            ring: ring.to_vec(),
        }
    }
}

/// A rate window a case starts with (`LB_RATE_WINDOWS[limit]` on the test CPU).
#[derive(Clone, Copy, Debug)]
pub struct WindowFill {
    pub limit: RateLimit,
    /// Already taken from it.
    pub count: u64,
    /// Started two windows ago, so the next take opens a fresh one; otherwise frozen (started in the future, so it
    /// never rolls over however long the case takes).
    pub expired: bool,
}

/// Map contents at the start of a case.
#[derive(Clone, Debug)]
pub struct Setup {
    pub config: GlobalConfig,
    pub vips: Vec<VipSpec>,
    /// Backends written to `LB_BACKENDS`: the lab's 10, each owned by the first VIP whose ring names it (the first
    /// VIP when none does); a case may mark some inactive or hand them to another service.
    pub backends: Vec<(BackendId, Backend)>,
    pub flows: Vec<(FlowKey, FlowState)>,
    pub windows: Vec<WindowFill>,
    /// Leave the second port out of `LB_TX_PORTS` (redirects to it must fail).
    pub no_redirect_port: bool,
    /// `LB_NEXTHOP_CACHE` entries planted before the packets: (backend, answer or `None` for a remembered failure,
    /// valid for how long from now; 0 = already expired). An `ifindex` of 0 stands for the ingress interface.
    pub nexthop: Vec<(BackendId, Option<Route>, u64)>,
}

impl Setup {
    pub fn new(vips: Vec<VipSpec>) -> Setup {
        let owner = |id: BackendId| {
            vips.iter()
                .find(|v| v.ring.contains(&id))
                .or(vips.first())
                .map_or(0, |v| v.vip_id)
        };
        let backends = LAB_BACKENDS
            .map(|id| (id, backend(id, owner(id))))
            .collect();
        Setup {
            config: base_config(),
            vips,
            backends,
            flows: Vec::new(),
            windows: Vec::new(),
            no_redirect_port: false,
            nexthop: Vec::new(),
        }
    }

    /// Replaces backend `id`'s entry.
    pub fn set_backend(&mut self, id: BackendId, b: Backend) {
        self.backends.retain(|(i, _)| *i != id);
        self.backends.push((id, b));
    }

    /// The reference model's state for this setup, in a world whose ingress interface is `if_in` and whose second
    /// port is `if_other`: the one place a setup becomes model state (the rig and the model-only runner share it).
    pub fn model(&self, if_in: u32, if_other: u32) -> ModelState {
        let mut m = ModelState {
            routes: lab_routes(if_in, if_other),
            ingress_ifindex: if_in,
            config: self.config,
            backends: self.backends.iter().copied().collect(),
            flows: self.flows.iter().copied().collect(),
            ..Default::default()
        };
        for ip in [IpAddr::V4(ENCAP_SRC_V4), IpAddr::V6(ENCAP_SRC_V6)] {
            m.decap_local.insert(AddrKey::new(ip));
        }
        for ip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
            m.decap_vips.insert(AddrKey::new(ip));
        }
        for ip in [IpAddr::V4(TUNNEL_FROM_V4), IpAddr::V6(TUNNEL_FROM_V6)] {
            m.decap_from.insert(AddrKey::new(ip));
        }
        if !self.no_redirect_port {
            m.tx_ports.insert(if_other);
        }
        for w in &self.windows {
            m.window_count[w.limit as usize] = if w.expired { 0 } else { w.count };
        }
        for (id, r, valid_ns) in &self.nexthop {
            if *valid_ns > 0 {
                let r = r.map(|r| Route {
                    ifindex: if r.ifindex == 0 { if_in } else { r.ifindex },
                    ..r
                });
                m.nexthop_cache.insert(*id, r);
            }
        }
        for v in &self.vips {
            // A VIP new to `LB_VIPS` gets its ring in slot `2 * vip_id` (`Dataplane::install_ring`).
            let meta = VipMeta {
                vip_id: v.vip_id,
                flags: v.flags,
                ring_slot: 2 * v.vip_id,
                ring_size: v.ring.len() as u32,
            };
            model_ring(&mut m, &v.key, meta, &v.ring);
        }
        m
    }

    /// Backend `id`'s entry as the setup has it.
    pub fn backend(&self, id: BackendId) -> Backend {
        self.backends
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, b)| *b)
            .unwrap_or_else(|| panic!("no backend {id} in the setup"))
    }
}

/// What the output frame must be.
#[derive(Clone, Debug)]
pub enum Out {
    /// The input, byte for byte.
    Unchanged,
    /// Not compared (drops).
    Ignore,
    Bytes(Vec<u8>),
}

/// One packet through one program, and what must happen.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub name: String,
    pub prog: &'static str,
    pub input: Vec<u8>,
    pub action: u32,
    pub counter: Counter,
    pub info: Vec<Counter>,
    pub backend: Option<BackendId>,
    pub out: Out,
    /// After the step, this flow must map to this backend (`None`: must be absent).
    pub flow: Option<(FlowKey, Option<BackendId>)>,
}

impl Pkt {
    pub fn new(name: &str, input: Vec<u8>, action: u32, counter: Counter) -> Pkt {
        let out = if action == XDP_DROP {
            Out::Ignore
        } else {
            Out::Unchanged
        };
        Pkt {
            name: name.into(),
            prog: programs::LB,
            input,
            action,
            counter,
            info: Vec::new(),
            backend: None,
            out,
            flow: None,
        }
    }
    pub fn pass(name: &str, input: Vec<u8>, counter: Counter) -> Pkt {
        Pkt::new(name, input, XDP_PASS, counter)
    }
    pub fn drop(name: &str, input: Vec<u8>, counter: Counter) -> Pkt {
        Pkt::new(name, input, XDP_DROP, counter)
    }
    /// Forwarded with `XDP_TX` to `backend` as `out`.
    pub fn tx(name: &str, input: Vec<u8>, backend: BackendId, out: Vec<u8>) -> Pkt {
        Pkt {
            backend: Some(backend),
            out: Out::Bytes(out),
            ..Pkt::new(name, input, XDP_TX, Counter::Tx)
        }
    }
    pub fn decap(mut self) -> Pkt {
        self.prog = programs::DECAP;
        self
    }
    pub fn info(mut self, c: Counter) -> Pkt {
        self.info.push(c);
        self
    }
    pub fn backend(mut self, id: BackendId) -> Pkt {
        self.backend = Some(id);
        self
    }
    pub fn out(mut self, out: Vec<u8>) -> Pkt {
        self.out = Out::Bytes(out);
        self
    }
    pub fn flow(mut self, key: FlowKey, backend: Option<BackendId>) -> Pkt {
        self.flow = Some((key, backend));
        self
    }
    /// The exact counter deltas this step must cause.
    pub fn want_counters(&self) -> Vec<(Counter, u64)> {
        let mut want = vec![(self.counter, 1)];
        want.extend(self.info.iter().map(|c| (*c, 1)));
        want.sort_by_key(|(c, _)| *c as u32);
        want
    }
}

#[derive(Clone, Debug)]
pub enum Step {
    Packet(Pkt),
    /// Atomically switch a VIP's ring (as the daemon does on a backend change).
    Ring(VipKey, Vec<BackendId>),
    /// Rewrite a backend entry (e.g. mark it inactive, or hand its id to another service).
    Backend(BackendId, Backend),
    /// Rewrite `LB_CONFIG`.
    Config(GlobalConfig),
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub setup: Setup,
    pub steps: Vec<Step>,
}

impl Case {
    pub fn new(name: &str, setup: Setup, steps: Vec<Step>) -> Case {
        Case {
            name: name.into(),
            setup,
            steps,
        }
    }
    /// A case of one packet.
    pub fn one(setup: Setup, pkt: Pkt) -> Case {
        Case {
            name: pkt.name.clone(),
            setup,
            steps: vec![Step::Packet(pkt)],
        }
    }
}

pub(super) fn model_ring(m: &mut ModelState, key: &VipKey, meta: VipMeta, ring: &[BackendId]) {
    for (i, id) in ring.iter().enumerate() {
        m.ring
            .insert(meta.ring_slot * SIZES.max_ring_size + i as u32, *id);
    }
    m.vips.insert(*key, meta);
}
