//! `LB_RING` mapped into lbd's memory. The map is created `BPF_F_MMAPABLE`, so a 65,537-entry ring is written with
//! plain stores instead of 65,537 `bpf(MAP_UPDATE_ELEM)` calls (about 0.4 s in a debug build, 30 ms in release):
//! health changes that touch every VIP of a large config switch their rings in milliseconds.
//!
//! The kernel lays an array's values out `round_up(value_size, 8)` bytes apart, so a 4-byte backend id occupies the
//! first half of an 8-byte cell whose second half nobody reads. Tables are written to a VIP's inactive slot;
//! the program reads the active one, and the slot switch is a map update (a syscall, so every store before it is
//! visible to the program once it sees the new slot). One change goes to the active slot instead: a failed
//! backend's entries handed over ([`RingMap::hand_over`]), entry by entry, where a packet reading either value is
//! served (the failed backend stays active until its entries are gone).

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, ensure};
use lb_common::{BACKEND_ID_NONE, BackendId};
use memmap2::{MmapMut, MmapOptions};

use crate::maglev;

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
        std::sync::atomic::fence(Ordering::SeqCst);
        Ok(changed)
    }

    /// Hands every entry of a `gone` backend among the `len` entries from `first` to its heir ([`maglev::heir`]),
    /// in place: one pass to find them, then one atomic store each. Returns how many entries changed, or `None`
    /// (nothing written) when no entry stays to take them.
    pub fn hand_over(&mut self, first: u32, len: u32, gone: &[BackendId]) -> Result<Option<usize>> {
        let range = self.cells(first, len)?;
        let cells = &self.view[range.clone()];
        let at = |i: usize| {
            let c = &cells[i * CELL..i * CELL + 4];
            BackendId::from_ne_bytes([c[0], c[1], c[2], c[3]])
        };
        // The whole table is read (memory-bound: about 0.15 ms for 65,537 entries here); the heirs are few.
        let mut heirs = Vec::new();
        for i in 0..len as usize {
            let id = at(i);
            if id != BACKEND_ID_NONE && gone.contains(&id) {
                match maglev::heir(at, len as usize, i, gone) {
                    Some(h) => heirs.push((i, h)),
                    None => return Ok(None),
                }
            }
        }
        let base = self.view[range].as_mut_ptr();
        for &(i, h) in &heirs {
            // SAFETY: cell `i` lies inside the range checked above, and cells start 8-byte aligned in a page-aligned
            // mapping, so this is an aligned u32; the program reads it concurrently, hence one atomic store.
            unsafe { AtomicU32::from_ptr(base.add(i * CELL).cast::<u32>()) }
                .store(h, Ordering::Relaxed);
        }
        // The caller then clears the backend's active flag with a map update, after which no packet may read it.
        std::sync::atomic::fence(Ordering::SeqCst);
        Ok(Some(heirs.len()))
    }
}
