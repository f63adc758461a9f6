//! The lab object (`lb-lab-ebpf`): the calibration and test programs (`lb_pass`, `lb_empty`, `lb_floor`,
//! `lb_loadgen`) the lab, the benchmarks and the load tests attach or run. Loaded from the build directory
//! (`lb_userspace::dataplane::LAB_OBJECT_PATH`); lbd never loads it.

use anyhow::{Context, Result};
use aya::{Ebpf, EbpfLoader, programs::Xdp};
use lb_common::programs;
use lb_userspace::dataplane::LAB_OBJECT_PATH;

pub struct LabPrograms {
    ebpf: Ebpf,
}

impl LabPrograms {
    /// Loads every lab program (the verifier runs here); attaches nothing.
    pub fn load() -> Result<LabPrograms> {
        let mut ebpf = EbpfLoader::new()
            .load_file(LAB_OBJECT_PATH)
            .with_context(|| format!("loading the lab object {LAB_OBJECT_PATH}"))?;
        for name in programs::LAB {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the lab object"))?
                .try_into()
                .with_context(|| format!("program {name} is not XDP"))?;
            prog.load()
                .with_context(|| format!("loading program {name} (verifier)"))?;
        }
        Ok(LabPrograms { ebpf })
    }

    /// One of the lab programs (`lb_common::programs::LAB`).
    pub fn xdp(&mut self, name: &str) -> Result<&mut Xdp> {
        self.ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name} in the lab object"))?
            .try_into()
            .with_context(|| format!("program {name} is not XDP"))
    }
}
