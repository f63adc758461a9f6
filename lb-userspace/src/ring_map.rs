//! `LB_RING` mapped into lbd's memory. The map is created `BPF_F_MMAPABLE`, so a 65,537-entry ring is written with
//! plain stores instead of 65,537 `bpf(MAP_UPDATE_ELEM)` calls (about 0.4 s in a debug build, 30 ms in release):
//! health changes that touch every VIP of a large config switch their rings in milliseconds.
//!
//! The kernel lays an array's values out `round_up(value_size, 8)` bytes apart, so a 4-byte backend id occupies the
//! first half of an 8-byte cell whose second half nobody reads. Writes go only to a VIP's inactive slot;
//! the program reads the active one, and the slot switch is a map update (a syscall, so every store before it is
//! visible to the program once it sees the new slot).

use std::os::fd::AsFd;

use anyhow::{Context, Result, ensure};
use lb_common::BackendId;
use memmap2::{MmapMut, MmapOptions};

/// Bytes between two entries of an array map whose values are 4 bytes.
const CELL: usize = 8;

pub struct RingMap {
    view: MmapMut,
    entries: u32,
}

impl RingMap {
    /// Maps the `entries` values of the array behind `fd` (created with `BPF_F_MMAPABLE`).
    pub fn new(fd: impl AsFd, entries: u32) -> Result<RingMap> {
        let len = entries as usize * CELL;
        let raw = fd.as_fd();
        // SAFETY: the mapping is of a BPF array's values, which live as long as the mapping (it holds a reference
        // to the map), never shrink, and are only ever read as plain integers here; the program's concurrent reads
        // are of other slots (see the module doc).
        let view = unsafe { MmapOptions::new().len(len).map_mut(&raw) }.with_context(|| {
            format!(
                "mapping {} ({entries} entries) into memory: the map must be created BPF_F_MMAPABLE",
                lb_common::maps::RING
            )
        })?;
        Ok(RingMap { view, entries })
    }

    fn cells(&self, first: u32, len: u32) -> Result<std::ops::Range<usize>> {
        ensure!(
            first
                .checked_add(len)
                .is_some_and(|end| end <= self.entries),
            "{}: entries {first}..{first}+{len} beyond its {}",
            lb_common::maps::RING,
            self.entries
        );
        Ok(first as usize * CELL..(first + len) as usize * CELL)
    }

    /// The `len` entries from `first`.
    pub fn read(&self, first: u32, len: u32) -> Result<Vec<BackendId>> {
        let bytes = &self.view[self.cells(first, len)?];
        Ok(bytes
            .chunks_exact(CELL)
            .map(|c| BackendId::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Writes `ring` from entry `first` on, storing only the entries that differ (a ring that changed by one backend
    /// dirties a few pages, not all of them). Returns how many entries changed.
    pub fn write(&mut self, first: u32, ring: &[BackendId]) -> Result<usize> {
        let range = self.cells(first, ring.len() as u32)?;
        let mut changed = 0;
        for (cell, id) in self.view[range].chunks_exact_mut(CELL).zip(ring) {
            let want = id.to_ne_bytes();
            if cell[..4] != want {
                cell[..4].copy_from_slice(&want);
                changed += 1;
            }
        }
        // The caller's next step publishes these stores with a map update; keep the compiler from sinking them
        // past it.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(changed)
    }
}
