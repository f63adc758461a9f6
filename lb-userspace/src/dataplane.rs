//! The typed map writer: loads the XDP object with the configured map sizes and reads/writes every map through
//! the `lb-common` types. Attaching programs and pinning links is the daemon's business (see `attach`); this file
//! only optionally pins maps so that a restarted daemon adopts the running state.

use std::collections::HashSet;
use std::os::fd::AsFd as _;
use std::path::PathBuf;

use crate::ring_map::RingMap;
use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{Program, SchedClassifier, Xdp},
};
use lb_common::{
    AddrKey, Backend, BackendId, BackendStats, Counter, FlowKey, FlowState, GlobalConfig, NextHop,
    RING_SLOTS_PER_VIP, RateLimit, RateWindow, VIP_FILTER_WORDS, VipKey, VipMeta, VipStats, consts,
    hash::vip_filter_bit, maps,
};

/// The production object (`lb_xdp`, `lb_decap`), built by `build.rs` through aya-build.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Where this build put the lab object (`lb-lab-ebpf`: calibration and test programs, `lb_common::programs::LAB`).
/// Only tests, benchmarks and load tests load it, from this build's directory; lbd embeds and loads only
/// [`EBPF_OBJECT`].
pub const LAB_OBJECT_PATH: &str = concat!(env!("OUT_DIR"), "/lb-lab-ebpf");

/// The flow table, apart from the [`Dataplane`] (see [`Dataplane::flow_table`]).
pub struct FlowTable(HashMap<MapData, FlowKey, FlowState>);

impl FlowTable {
    /// Hands up to `limit` entries to `each`, in the kernel's order, until `each` returns false. The program keeps
    /// inserting and evicting meanwhile: an entry gone before it is read is skipped.
    pub fn walk(
        &self,
        limit: usize,
        mut each: impl FnMut(FlowKey, FlowState) -> bool,
    ) -> Result<()> {
        for entry in self.0.iter().take(limit) {
            let (k, s) = entry.with_context(|| format!("iterating {}", maps::FLOWS))?;
            if !each(k, s) {
                break;
            }
        }
        Ok(())
    }
}

/// Word `index` of the `LB_VIP_FILTER` that covers exactly the addresses of `keys`.
fn filter_word(keys: &HashSet<VipKey>, index: u32) -> u64 {
    keys.iter()
        .map(|k| vip_filter_bit(&k.addr))
        .filter(|bit| bit / 64 == index)
        .fold(0, |word, bit| word | 1 << (bit % 64))
}

/// A removal that finds nothing to remove did what was asked: an entry a crashed daemon never finished writing, or
/// one the LRU evicted meanwhile. (The kernel answers ENOENT; aya's `KeyNotFound` is for lookups only.)
fn removed(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// The `LB_VIP_ADDRS` key of a VIP key's address.
fn address_of(k: &VipKey) -> AddrKey {
    AddrKey {
        addr: k.addr,
        family: k.family,
        _pad: [0; 3],
    }
}

/// The configurable map sizes (`max_entries`), fixed at load time: `daemon.max_vips` and friends in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapSizes {
    /// Entries of `LB_VIPS`, `LB_VIP_ADDRS`, `LB_VIP_STATS` and `LB_DECAP_VIPS`; VIP ids are `0..max_vips`.
    pub max_vips: u32,
    /// Entries of `LB_BACKENDS`, `LB_BACKEND_STATS` and `LB_NEXTHOP_CACHE`; backend ids are `1..max_backends`.
    pub max_backends: u32,
    /// Entries of the LRU `LB_FLOWS`.
    pub flow_table_size: u32,
    /// Largest ring size of any VIP: the ring stride, `LB_RING` holds `2 * max_vips * max_ring_size` entries.
    pub max_ring_size: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            max_vips: consts::DEFAULT_MAX_VIPS,
            max_backends: consts::DEFAULT_MAX_BACKENDS,
            flow_table_size: consts::DEFAULT_FLOW_TABLE_SIZE,
            max_ring_size: consts::DEFAULT_MAX_RING_SIZE,
        }
    }
}

impl MapSizes {
    /// The `max_entries` these sizes give `map`; `None` for a map whose size is the object's own.
    pub fn entries_of(&self, map: &str) -> Result<Option<u32>> {
        Ok(match map {
            maps::VIPS | maps::VIP_ADDRS | maps::VIP_STATS | maps::DECAP_VIPS => {
                Some(self.max_vips)
            }
            maps::RING => Some(self.ring_entries()?),
            maps::BACKENDS | maps::BACKEND_STATS | maps::NEXTHOP_CACHE => Some(self.max_backends),
            maps::FLOWS => Some(self.flow_table_size),
            _ => None,
        })
    }

    /// Entries of `LB_RING`.
    pub fn ring_entries(&self) -> Result<u32> {
        RING_SLOTS_PER_VIP
            .checked_mul(self.max_vips)
            .and_then(|n| n.checked_mul(self.max_ring_size))
            .with_context(|| {
                format!(
                    "{}: 2 * max_vips * max_ring_size overflows u32 ({self:?})",
                    maps::RING
                )
            })
    }
}

/// How to load the object.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub sizes: MapSizes,
    /// Pin every map at `pin_dir/<map name>`; an existing pin is adopted (reused with its contents) instead of
    /// creating a new map. `None`: the maps live as long as this process (and attached programs).
    pub pin_dir: Option<PathBuf>,
    /// The programs to load (`lb_common::programs`): the verifier runs only for these. lbd needs `lb_xdp`,
    /// `lbd decap` `lb_decap`; none at all gives the maps alone.
    pub programs: &'static [&'static str],
}

/// The loaded object: all programs verified and loaded (none attached), all maps created or adopted.
pub struct Dataplane {
    ebpf: Ebpf,
    sizes: MapSizes,
    /// The keys in `LB_VIPS` (read at load, then kept by every write here): which addresses the filter must cover,
    /// without walking the map on every removal.
    vip_keys: HashSet<VipKey>,
    /// `LB_RING`'s values, written and read in place.
    ring: RingMap,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("sizes", &self.sizes)
            .finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Creates (or adopts) the maps and loads the requested programs (the verifier runs here); attaches nothing.
    pub fn load(opts: &LoadOptions) -> Result<Dataplane> {
        let s = opts.sizes;
        ensure!(
            s.max_vips > 0 && s.max_backends > 1 && s.flow_table_size > 0 && s.max_ring_size > 0,
            "map sizes must be non-zero (max_backends ≥ 2): {s:?}"
        );
        let mut loader = EbpfLoader::new();
        for name in maps::ALL {
            if let Some(n) = s.entries_of(name)? {
                loader.map_max_entries(name, n);
            }
        }
        if let Some(dir) = &opts.pin_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating map pin directory {}", dir.display()))?;
            for name in maps::ALL {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the lb-ebpf object (map creation)")?;
        for name in opts.programs {
            let loaded = match ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
            {
                Program::Xdp(p) => p.load(),
                Program::SchedClassifier(p) => p.load(),
                other => bail!(
                    "program {name} is a {:?}, neither XDP nor TC",
                    other.prog_type()
                ),
            };
            loaded.with_context(|| format!("loading program {name} (verifier)"))?;
        }
        let ring = match ebpf.map(maps::RING) {
            Some(Map::Array(data)) => RingMap::new(data.fd(), s.ring_entries()?)?,
            _ => bail!("map {} missing from the object or not an array", maps::RING),
        };
        let mut dp = Dataplane {
            ebpf,
            sizes: s,
            vip_keys: HashSet::new(),
            ring,
        };
        dp.vip_keys = dp.vips()?.into_iter().map(|(k, _)| k).collect();
        // Adopted maps may hold VIPs whose addresses the filter or the address set do not cover (pins written by a
        // build without them, or by an lbd killed between two writes): both follow from the VIP keys.
        for index in 0..VIP_FILTER_WORDS {
            let want = filter_word(&dp.vip_keys, index);
            dp.write_filter_word(index, |_| want)?;
        }
        let want: HashSet<AddrKey> = dp.vip_keys.iter().map(address_of).collect();
        let have: Vec<AddrKey> = dp
            .hash::<AddrKey, u32>(maps::VIP_ADDRS)?
            .keys()
            .collect::<Result<_, _>>()
            .with_context(|| format!("iterating {}", maps::VIP_ADDRS))?;
        for a in &have {
            if !want.contains(a) {
                dp.remove_vip_address(a)?;
            }
        }
        for a in &want {
            dp.insert_vip_address(a)?;
        }
        Ok(dp)
    }

    /// The sizes the maps were created with.
    pub fn sizes(&self) -> &MapSizes {
        &self.sizes
    }

    /// The names of the object's programs, loaded or not.
    pub fn program_names(&self) -> Vec<&str> {
        self.ebpf.programs().map(|(name, _)| name).collect()
    }

    /// The aya-log reader of the loaded programs' log records (an error when the object logs nothing).
    pub fn logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, aya_log::Error> {
        aya_log::EbpfLogger::init(&mut self.ebpf)
    }

    /// One of the loaded XDP programs by name (`lb_common::programs`).
    pub fn xdp(&mut self, prog: &str) -> Result<&mut Xdp> {
        self.ebpf
            .program_mut(prog)
            .with_context(|| format!("no program {prog}"))?
            .try_into()
            .with_context(|| format!("program {prog} is not XDP"))
    }

    /// One of the loaded TC programs by name (`lb_hc`).
    pub fn classifier(&mut self, prog: &str) -> Result<&mut SchedClassifier> {
        self.ebpf
            .program_mut(prog)
            .with_context(|| format!("no program {prog}"))?
            .try_into()
            .with_context(|| format!("program {prog} is not a TC classifier"))
    }

    fn map(&self, name: &str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("map {name} missing from the object"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the object"))
    }

    fn array<V: aya::Pod>(&self, name: &str) -> Result<Array<&MapData, V>> {
        Array::try_from(self.map(name)?).with_context(|| format!("map {name}"))
    }

    fn array_mut<V: aya::Pod>(&mut self, name: &str) -> Result<Array<&mut MapData, V>> {
        Array::try_from(self.map_mut(name)?).with_context(|| format!("map {name}"))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> Result<HashMap<&MapData, K, V>> {
        HashMap::try_from(self.map(name)?).with_context(|| format!("map {name}"))
    }

    fn hash_mut<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        HashMap::try_from(self.map_mut(name)?).with_context(|| format!("map {name}"))
    }

    fn percpu<V: aya::Pod>(&self, name: &str) -> Result<PerCpuArray<&MapData, V>> {
        PerCpuArray::try_from(self.map(name)?).with_context(|| format!("map {name}"))
    }

    /// Writes `LB_CONFIG[0]`. `ring_stride` must equal `sizes().max_ring_size` (the ring map's layout).
    pub fn set_config(&mut self, cfg: &GlobalConfig) -> Result<()> {
        ensure!(
            cfg.ring_stride == self.sizes.max_ring_size,
            "{}: ring_stride {} must equal max_ring_size {}",
            maps::CONFIG,
            cfg.ring_stride,
            self.sizes.max_ring_size
        );
        self.array_mut::<GlobalConfig>(maps::CONFIG)?
            .set(0, cfg, 0)
            .with_context(|| format!("writing {}", maps::CONFIG))
    }

    /// Reads `LB_CONFIG[0]` (all zero before the first `set_config`).
    pub fn config(&self) -> Result<GlobalConfig> {
        self.array(maps::CONFIG)?
            .get(&0, 0)
            .with_context(|| format!("reading {}", maps::CONFIG))
    }

    /// Inserts or replaces a VIP. Prefer [`Dataplane::install_ring`] for a VIP whose ring changes.
    pub fn upsert_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<()> {
        ensure!(
            meta.vip_id < self.sizes.max_vips,
            "{}: vip_id {} ≥ max_vips {}",
            maps::VIPS,
            meta.vip_id,
            self.sizes.max_vips
        );
        // The bit and the address first: an entry the filter hides would send the VIP's packets to the kernel.
        let bit = vip_filter_bit(&key.addr);
        self.write_filter_word(bit / 64, |have| have | 1 << (bit % 64))?;
        self.insert_vip_address(&address_of(key))?;
        self.hash_mut::<VipKey, VipMeta>(maps::VIPS)?
            .insert(key, meta, 0)
            .with_context(|| format!("inserting into {}", maps::VIPS))?;
        self.vip_keys.insert(*key);
        Ok(())
    }

    /// Removes a VIP entry. Packets for it are dropped as not served while its address has other entries, and go to
    /// the kernel again (`PassNotVip`) once the address has none.
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        removed(self.hash_mut::<VipKey, VipMeta>(maps::VIPS)?.remove(key))
            .with_context(|| format!("removing from {}", maps::VIPS))?;
        self.vip_keys.remove(key);
        let addr = address_of(key);
        if !self.vip_keys.iter().any(|k| address_of(k) == addr) {
            self.remove_vip_address(&addr)?;
        }
        // Another address (or another entry of this one) may share the bit.
        let index = vip_filter_bit(&key.addr) / 64;
        let want = filter_word(&self.vip_keys, index);
        self.write_filter_word(index, |_| want)
    }

    fn insert_vip_address(&mut self, a: &AddrKey) -> Result<()> {
        self.hash_mut::<AddrKey, u32>(maps::VIP_ADDRS)?
            .insert(a, 1u32, 0)
            .with_context(|| format!("inserting into {}", maps::VIP_ADDRS))
    }

    fn remove_vip_address(&mut self, a: &AddrKey) -> Result<()> {
        removed(self.hash_mut::<AddrKey, u32>(maps::VIP_ADDRS)?.remove(a))
            .with_context(|| format!("removing from {}", maps::VIP_ADDRS))
    }

    /// Every address in `LB_VIP_ADDRS` (tests check it is exactly the VIP keys' addresses).
    pub fn vip_addresses(&self) -> Result<Vec<AddrKey>> {
        self.hash::<AddrKey, u32>(maps::VIP_ADDRS)?
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("iterating {}", maps::VIP_ADDRS))
    }

    /// Rewrites filter word `index` to `want(current)` when that differs.
    fn write_filter_word(&mut self, index: u32, want: impl FnOnce(u64) -> u64) -> Result<()> {
        let mut arr = self.array_mut::<u64>(maps::VIP_FILTER)?;
        let have = arr
            .get(&index, 0)
            .with_context(|| format!("reading {}[{index}]", maps::VIP_FILTER))?;
        let want = want(have);
        if have != want {
            arr.set(index, want, 0)
                .with_context(|| format!("writing {}[{index}]", maps::VIP_FILTER))?;
        }
        Ok(())
    }

    /// The filter as the program sees it (tests check it covers every VIP address).
    pub fn vip_filter(&self) -> Result<Vec<u64>> {
        let arr = self.array::<u64>(maps::VIP_FILTER)?;
        (0..VIP_FILTER_WORDS)
            .map(|i| {
                arr.get(&i, 0)
                    .with_context(|| format!("reading {}[{i}]", maps::VIP_FILTER))
            })
            .collect()
    }

    /// Every VIP in the map.
    pub fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>> {
        self.hash(maps::VIPS)?
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("iterating {}", maps::VIPS))
    }

    fn check_backend_id(&self, id: BackendId) -> Result<()> {
        ensure!(
            id != consts::BACKEND_ID_NONE,
            "{}: backend id 0 is reserved for \"unset\"",
            maps::BACKENDS
        );
        ensure!(
            id < self.sizes.max_backends,
            "{}: backend id {id} ≥ max_backends {}",
            maps::BACKENDS,
            self.sizes.max_backends
        );
        Ok(())
    }

    /// Writes `LB_BACKENDS[id]` (id 0 is rejected).
    pub fn set_backend(&mut self, id: BackendId, b: &Backend) -> Result<()> {
        self.check_backend_id(id)?;
        self.array_mut::<Backend>(maps::BACKENDS)?
            .set(id, b, 0)
            .with_context(|| format!("writing {}[{id}]", maps::BACKENDS))
    }

    /// Zeroes `LB_BACKENDS[id]`: flows pinned to it re-choose from the ring, and a ring entry still naming it drops.
    pub fn clear_backend(&mut self, id: BackendId) -> Result<()> {
        self.set_backend(id, &Backend::default())
    }

    /// Reads `LB_BACKENDS[id]`.
    pub fn backend(&self, id: BackendId) -> Result<Backend> {
        self.check_backend_id(id)?;
        self.array(maps::BACKENDS)?
            .get(&id, 0)
            .with_context(|| format!("reading {}[{id}]", maps::BACKENDS))
    }

    fn check_ring_meta(&self, meta: &VipMeta) -> Result<()> {
        ensure!(
            meta.vip_id < self.sizes.max_vips,
            "{}: vip_id {} ≥ max_vips {}",
            maps::RING,
            meta.vip_id,
            self.sizes.max_vips
        );
        ensure!(
            meta.ring_size > 0 && meta.ring_size <= self.sizes.max_ring_size,
            "{}: ring_size {} not in 1..={}",
            maps::RING,
            meta.ring_size,
            self.sizes.max_ring_size
        );
        let first = 2 * meta.vip_id;
        ensure!(
            meta.ring_slot == first || meta.ring_slot == first + 1,
            "{}: ring_slot {} is not one of vip {}'s slots ({first}, {})",
            maps::RING,
            meta.ring_slot,
            meta.vip_id,
            first + 1
        );
        Ok(())
    }

    /// Atomic ring switch: writes `ring` (`len == meta.ring_size`) into the VIP's inactive slot, then flips
    /// `meta.ring_slot` with one map update, so a packet sees either the whole old ring or the whole new one.
    /// For a VIP not yet in `LB_VIPS` the ring goes to slot `2 * vip_id` and the VIP is inserted. Returns the meta
    /// now in the map.
    pub fn install_ring(
        &mut self,
        key: &VipKey,
        meta: VipMeta,
        ring: &[BackendId],
    ) -> Result<VipMeta> {
        ensure!(
            ring.len() == meta.ring_size as usize,
            "{}: ring has {} entries, meta.ring_size is {}",
            maps::RING,
            ring.len(),
            meta.ring_size
        );
        let current = match self.hash::<VipKey, VipMeta>(maps::VIPS)?.get(key, 0) {
            Ok(m) => Some(m),
            Err(aya::maps::MapError::KeyNotFound) => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", maps::VIPS)),
        };
        let first = 2 * meta.vip_id;
        let slot = match current {
            Some(cur) if cur.vip_id == meta.vip_id && cur.ring_slot == first => first + 1,
            _ => first,
        };
        let new_meta = VipMeta {
            ring_slot: slot,
            ..meta
        };
        self.check_ring_meta(&new_meta)?;
        self.ring
            .write(slot * self.sizes.max_ring_size, ring)
            .with_context(|| format!("writing slot {slot} of {}", maps::RING))?;
        self.upsert_vip(key, &new_meta)?;
        Ok(new_meta)
    }

    /// Hands the entries of the `gone` backends in a VIP's active ring to their heirs, in place
    /// ([`RingMap::hand_over`]): how many changed, or `None` when no backend stays.
    pub fn hand_over(&mut self, meta: &VipMeta, gone: &[BackendId]) -> Result<Option<usize>> {
        self.check_ring_meta(meta)?;
        self.ring.hand_over(
            meta.ring_slot * self.sizes.max_ring_size,
            meta.ring_size,
            gone,
        )
    }

    /// The active ring of a VIP (`meta.ring_size` entries of slot `meta.ring_slot`).
    pub fn read_ring(&self, meta: &VipMeta) -> Result<Vec<BackendId>> {
        self.check_ring_meta(meta)?;
        self.ring
            .read(meta.ring_slot * self.sizes.max_ring_size, meta.ring_size)
    }

    /// Takes `ifindex` out of the redirect targets (a missing one is fine).
    pub fn remove_tx_port(&mut self, ifindex: u32) -> Result<()> {
        let mut m = DevMapHash::try_from(self.map_mut(maps::TX_PORTS)?)
            .with_context(|| format!("map {}", maps::TX_PORTS))?;
        removed(m.remove(ifindex))
            .with_context(|| format!("removing ifindex {ifindex} from {}", maps::TX_PORTS))
    }

    /// Each CPU's `LB_NEXTHOP_CACHE[id]`.
    pub fn nexthops(&self, id: BackendId) -> Result<Vec<NextHop>> {
        self.check_backend_id(id)?;
        let v = self
            .percpu::<NextHop>(maps::NEXTHOP_CACHE)?
            .get(&id, 0)
            .with_context(|| format!("reading {}[{id}]", maps::NEXTHOP_CACHE))?;
        Ok(v.iter().copied().collect())
    }

    /// Writes `LB_NEXTHOP_CACHE[id]` on every CPU (0 is allowed: it is never used, which tests rely on).
    pub fn set_nexthop(&mut self, id: BackendId, nh: &NextHop) -> Result<()> {
        self.set_every_cpu(maps::NEXTHOP_CACHE, id, *nh)
    }

    /// Writes `LB_RATE_WINDOWS[limit]` on every CPU.
    pub fn set_rate_window(&mut self, limit: RateLimit, w: &RateWindow) -> Result<()> {
        self.set_every_cpu(maps::RATE_WINDOWS, limit as u32, *w)
    }

    /// Overwrites one word of `LB_VIP_FILTER` without regard to `LB_VIPS`: for tests proving the program reads
    /// the filter. Anything else keeps the filter with [`Dataplane::upsert_vip`] and [`Dataplane::remove_vip`].
    pub fn overwrite_filter_word(&mut self, index: u32, word: u64) -> Result<()> {
        self.write_filter_word(index, |_| word)
    }

    fn set_every_cpu<V: aya::Pod>(&mut self, name: &str, index: u32, v: V) -> Result<()> {
        let ncpu = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting CPUs")?;
        let values = PerCpuValues::try_from(vec![v; ncpu]).context("per-CPU values")?;
        self.set_percpu_values(name, index, values)
    }

    /// Writes entry `index` of the per-CPU array `name`, one value per CPU (an upgrade carries counters over).
    pub fn set_percpu_values<V: aya::Pod>(
        &mut self,
        name: &str,
        index: u32,
        values: PerCpuValues<V>,
    ) -> Result<()> {
        let mut arr = PerCpuArray::<_, V>::try_from(self.map_mut(name)?)
            .with_context(|| format!("map {name}"))?;
        arr.set(index, values, 0)
            .with_context(|| format!("writing {name}[{index}]"))
    }

    /// Lets `lb_xdp` redirect to `ifindex` (an egress interface other than the ingress one).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        let mut m = DevMapHash::try_from(self.map_mut(maps::TX_PORTS)?)
            .with_context(|| format!("map {}", maps::TX_PORTS))?;
        m.insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("inserting ifindex {ifindex} into {}", maps::TX_PORTS))
    }

    /// Every verdict/reason counter, summed over CPUs, in `Counter::ALL` order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        let arr = self.percpu::<u64>(maps::COUNTERS)?;
        Counter::ALL
            .iter()
            .map(|&c| {
                let v = arr
                    .get(&(c as u32), 0)
                    .with_context(|| format!("reading {}[{}]", maps::COUNTERS, c.name()))?;
                Ok((c, v.iter().copied().fold(0u64, u64::wrapping_add)))
            })
            .collect()
    }

    /// A VIP's traffic, summed over CPUs.
    pub fn vip_stats(&self, vip_id: u32) -> Result<VipStats> {
        let v = self
            .percpu::<VipStats>(maps::VIP_STATS)?
            .get(&vip_id, 0)
            .with_context(|| format!("reading {}[{vip_id}]", maps::VIP_STATS))?;
        Ok(v.iter().fold(VipStats::default(), |a, s| VipStats {
            packets: a.packets.wrapping_add(s.packets),
            bytes: a.bytes.wrapping_add(s.bytes),
            new_flows: a.new_flows.wrapping_add(s.new_flows),
            lru_misses: a.lru_misses.wrapping_add(s.lru_misses),
        }))
    }

    /// A backend's traffic, summed over CPUs.
    pub fn backend_stats(&self, id: BackendId) -> Result<BackendStats> {
        self.check_backend_id(id)?;
        let v = self
            .percpu::<BackendStats>(maps::BACKEND_STATS)?
            .get(&id, 0)
            .with_context(|| format!("reading {}[{id}]", maps::BACKEND_STATS))?;
        Ok(v.iter().fold(BackendStats::default(), |a, s| BackendStats {
            packets: a.packets.wrapping_add(s.packets),
            bytes: a.bytes.wrapping_add(s.bytes),
        }))
    }

    /// Up to `limit` flow-table entries (iteration order of the kernel's hash table).
    pub fn flows(&self, limit: usize) -> Result<Vec<(FlowKey, FlowState)>> {
        self.hash(maps::FLOWS)?
            .iter()
            .take(limit)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("iterating {}", maps::FLOWS))
    }

    /// A handle on the flow table of its own (a second descriptor of the same map), for a walk that must not hold
    /// the daemon: `lbctl flows` reads through it on a blocking thread while lbd goes on.
    pub fn flow_table(&self) -> Result<FlowTable> {
        let data = match self.map(maps::FLOWS)? {
            Map::LruHashMap(d) | Map::HashMap(d) => d,
            _ => anyhow::bail!("{} is not a hash map", maps::FLOWS),
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicating the descriptor of {}", maps::FLOWS))?;
        let data = MapData::from_fd(fd).with_context(|| format!("opening {}", maps::FLOWS))?;
        let map = HashMap::try_from(Map::from_map_data(data)?)
            .with_context(|| format!("map {}", maps::FLOWS))?;
        Ok(FlowTable(map))
    }

    /// The flow table's entry for one flow.
    pub fn flow(&self, k: &FlowKey) -> Result<Option<FlowState>> {
        match self.hash::<FlowKey, FlowState>(maps::FLOWS)?.get(k, 0) {
            Ok(s) => Ok(Some(s)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", maps::FLOWS)),
        }
    }

    /// Inserts a flow entry (an upgrade carries flows over with it; tests preload state).
    pub fn insert_flow(&mut self, k: &FlowKey, v: &FlowState) -> Result<()> {
        self.hash_mut::<FlowKey, FlowState>(maps::FLOWS)?
            .insert(k, v, 0)
            .with_context(|| format!("inserting into {}", maps::FLOWS))
    }

    /// Inserts a flow entry unless the table has one for the flow (the running program's choice stands); says
    /// whether it inserted.
    pub fn insert_flow_if_absent(&mut self, k: &FlowKey, v: &FlowState) -> Result<bool> {
        const BPF_NOEXIST: u64 = 1;
        match self
            .hash_mut::<FlowKey, FlowState>(maps::FLOWS)?
            .insert(k, v, BPF_NOEXIST)
        {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(false)
            }
            Err(e) => Err(e).with_context(|| format!("inserting into {}", maps::FLOWS)),
        }
    }

    /// Empties the flow table.
    pub fn clear_flows(&mut self) -> Result<()> {
        let mut m = self.hash_mut::<FlowKey, FlowState>(maps::FLOWS)?;
        let keys = m
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("iterating {}", maps::FLOWS))?;
        for k in keys {
            // The LRU may evict between listing and removal.
            match removed(m.remove(&k)) {
                Ok(()) => {}
                Err(e) => return Err(e).with_context(|| format!("removing from {}", maps::FLOWS)),
            }
        }
        Ok(())
    }

    /// Tells `lb_decap` that this host serves VIP address `a`.
    pub fn add_decap_vip(&mut self, a: &AddrKey) -> Result<()> {
        self.hash_mut::<AddrKey, u32>(maps::DECAP_VIPS)?
            .insert(a, 1u32, 0)
            .with_context(|| format!("inserting into {}", maps::DECAP_VIPS))
    }

    /// Tells `lb_decap` that `a` is one of this host's tunnel endpoint addresses.
    pub fn add_decap_local(&mut self, a: &AddrKey) -> Result<()> {
        self.hash_mut::<AddrKey, u32>(maps::DECAP_LOCAL)?
            .insert(a, 1u32, 0)
            .with_context(|| format!("inserting into {}", maps::DECAP_LOCAL))
    }

    /// Tells `lb_decap` to accept tunnels whose outer source is `a` (a balancer's encapsulation source).
    pub fn add_decap_from(&mut self, a: &AddrKey) -> Result<()> {
        self.hash_mut::<AddrKey, u32>(maps::DECAP_FROM)?
            .insert(a, 1u32, 0)
            .with_context(|| format!("inserting into {}", maps::DECAP_FROM))
    }
}
