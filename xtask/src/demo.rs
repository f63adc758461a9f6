//! `cargo xtask demo`: setup, then the lab binary's demo (namespaces, lbd, backends, traffic).

use anyhow::Result;

use crate::cmd::{self, exec, phase};
use crate::setup;

pub fn run(args: &[String]) -> Result<()> {
    setup::run()?;
    // lbd and lbctl are started by the lab from the target dir.
    phase("build lbd + lbctl (release)");
    exec(&mut cmd::release_bins(&[]))?;
    phase("demo");
    exec(cmd::lb_tests_bin("lb-lab").arg("demo").args(args))
}
