//! Adopt only what matches. Before anything is touched, each pinned map is compared with the map this build would
//! create: its type, key and value sizes as the object defines them, its entries as the config sizes them. The
//! answer is a [`Plan`]: create, adopt, carry the state over into new maps (an upgrade), finish an upgrade a
//! previous daemon left ready, or refuse.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use aya::maps::MapInfo;
use lb_common::{LAYOUT_VERSION, maps};

use crate::dataplane::{EBPF_OBJECT, MapSizes};
use crate::pins::PinDir;
use crate::upgrade::KNOWN_LAYOUTS;

/// What makes a map the map a program expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// Creation flags (`BPF_F_MMAPABLE` for `LB_RING`): a map made without a flag the build relies on is replaced,
    /// its state carried over, like a map of another size.
    pub map_flags: u32,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries, flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.map_flags
        )
    }
}

/// Every map of the production object as this build creates it with `sizes`.
pub fn expected(sizes: &MapSizes) -> Result<BTreeMap<&'static str, Shape>> {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).context("parsing the production object")?;
    let mut out = BTreeMap::new();
    for name in maps::ALL {
        let m = obj
            .maps
            .get(*name)
            .with_context(|| format!("map {name} missing from the object"))?;
        out.insert(
            *name,
            Shape {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: sizes.entries_of(name)?.unwrap_or(m.max_entries()),
                map_flags: m.map_flags(),
            },
        );
    }
    Ok(out)
}

/// The maps pinned in `dir`, by name (only the project's names; absent ones are left out).
pub fn pinned(dir: &Path) -> Result<BTreeMap<&'static str, Shape>> {
    let mut out = BTreeMap::new();
    for name in maps::ALL {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info =
            MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
        let map_type = info
            .map_type()
            .with_context(|| format!("{}: map type", path.display()))?;
        out.insert(
            *name,
            Shape {
                map_type: map_type as u32,
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
                map_flags: info.map_flags() & !kernel_added_flags(map_type as u32),
            },
        );
    }
    Ok(out)
}

/// Flags the kernel sets on a map of `map_type` whatever its creator asked: a devmap's values are devices, so the
/// kernel makes it read-only to programs. They say nothing about the build that made the map; compared, every
/// restart would take a devmap for another build's and upgrade instead of adopting.
fn kernel_added_flags(map_type: u32) -> u32 {
    use aya_obj::generated::{BPF_F_RDONLY_PROG, bpf_map_type};
    if map_type == bpf_map_type::BPF_MAP_TYPE_DEVMAP as u32
        || map_type == bpf_map_type::BPF_MAP_TYPE_DEVMAP_HASH as u32
    {
        BPF_F_RDONLY_PROG
    } else {
        0
    }
}

/// What to do with the pin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing pinned: create the maps.
    Fresh,
    /// This build's layout, and every map exactly as this build would create it.
    Adopt,
    /// New maps beside the old ones, the state carried over, one program swap, the old pins removed.
    Upgrade { from: u32, why: String },
    /// An upgrade filled new maps completely and stopped before it was finished: finish it.
    Resume,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Plan::Fresh => f.write_str("no pinned maps: creating them"),
            Plan::Adopt => f.write_str("adopting the pinned maps"),
            Plan::Upgrade { from, why } => {
                write!(f, "upgrading the pinned maps (layout {from}): {why}")
            }
            Plan::Resume => f.write_str("finishing an upgrade whose new maps are ready"),
        }
    }
}

/// Decides, reading only, what may be done with the maps pinned under `pins` for maps of `sizes`.
pub fn plan(pins: &PinDir, sizes: &MapSizes) -> Result<Plan> {
    if pins.ready_dir().exists() {
        let want = expected(sizes)?;
        let have = pinned(&pins.ready_dir())?;
        if have == want {
            return Ok(Plan::Resume);
        }
        bail!(
            "{} holds an unfinished upgrade's maps for other sizes ({}); finish it with the config it was started \
             with, or remove that directory",
            pins.ready_dir().display(),
            differences(&want, &have).join("; ")
        );
    }
    let layouts = pins.layouts()?;
    if let Some(newer) = layouts.iter().find(|&&v| v > LAYOUT_VERSION) {
        bail!(
            "{} holds maps of layout {newer}, newer than this build's {LAYOUT_VERSION}: run the build that made them \
             (downgrades are not carried over), or remove them with that build's lbd --detach",
            pins.path().display()
        );
    }
    let Some(&from) = layouts.last() else {
        return Ok(Plan::Fresh);
    };
    if !KNOWN_LAYOUTS.contains(&from) {
        bail!(
            "{} holds maps of layout {from}, which this build cannot carry over; remove them with lbd --detach \
             (forwarding stops until lbd runs again)",
            pins.path().display()
        );
    }
    if from < LAYOUT_VERSION {
        return Ok(Plan::Upgrade {
            from,
            why: format!("this build lays the maps out as layout {LAYOUT_VERSION}"),
        });
    }
    let want = expected(sizes)?;
    let have = pinned(&pins.maps_dir())?;
    let diffs = differences(&want, &have);
    if diffs.is_empty() {
        return Ok(Plan::Adopt);
    }
    // Same layout, other sizes: carried over. Anything else means the maps are not what the stamp says.
    for (name, w) in &want {
        if let Some(h) = have.get(name)
            && (h.map_type, h.key_size, h.value_size) != (w.map_type, w.key_size, w.value_size)
        {
            bail!(
                "{}/{name} is stamped layout {LAYOUT_VERSION} but is {h}, where this build's is {w}: the pins were \
                 not made by a build of this layout; nothing was changed",
                pins.maps_dir().display()
            );
        }
    }
    Ok(Plan::Upgrade {
        from,
        why: diffs.join("; "),
    })
}

/// What differs between the maps this build wants and the pinned ones, in words.
fn differences(
    want: &BTreeMap<&'static str, Shape>,
    have: &BTreeMap<&'static str, Shape>,
) -> Vec<String> {
    want.iter()
        .filter_map(|(name, w)| match have.get(name) {
            None => Some(format!("{name} is missing")),
            Some(h) if h == w => None,
            Some(h)
                if (h.map_type, h.key_size, h.value_size, h.map_flags)
                    == (w.map_type, w.key_size, w.value_size, w.map_flags) =>
            {
                Some(format!(
                    "{name} has {} entries, the config asks for {}",
                    h.max_entries, w.max_entries
                ))
            }
            Some(h)
                if (h.map_type, h.key_size, h.value_size)
                    == (w.map_type, w.key_size, w.value_size) =>
            {
                Some(format!(
                    "{name} was created with flags {:#x}, this build creates it with {:#x}",
                    h.map_flags, w.map_flags
                ))
            }
            Some(h) => Some(format!("{name} is {h}, this build's is {w}")),
        })
        .collect()
}
