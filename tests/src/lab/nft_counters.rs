//! Named nftables counters in a test namespace: a table installed from rule text, read back by counter name, and
//! deleted on drop (also after a panic). Tests use it to count frames where no program of the project runs, e.g.
//! on the lab's switch, so that a figure does not come from the code under test.

use std::collections::BTreeMap;

use crate::harness::netns::NetNs;

pub struct NftCounters<'a> {
    ns: &'a NetNs,
    family: &'static str,
    table: String,
}

impl<'a> NftCounters<'a> {
    /// Creates `table <family> <table>` in `ns` with one named counter per entry of `counters` and the chains in
    /// `chains` (nft syntax; rules refer to the counters as `counter name "<name>"`).
    pub fn install(
        ns: &'a NetNs,
        family: &'static str,
        table: &str,
        counters: &[&str],
        chains: &str,
    ) -> NftCounters<'a> {
        let declared: String = counters
            .iter()
            .map(|c| format!("  counter {c} {{ }}\n"))
            .collect();
        ns.exec(&[
            "nft",
            &format!("table {family} {table} {{\n{declared}{chains}\n}}\n"),
        ]);
        NftCounters {
            ns,
            family,
            table: table.to_string(),
        }
    }

    /// Packets counted so far, by counter name.
    pub fn read(&self) -> BTreeMap<String, u64> {
        let out = self.ns.exec(&[
            "nft",
            "-j",
            "list",
            "counters",
            "table",
            self.family,
            &self.table,
        ]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("nft -j list counters: not JSON ({e}): {out}"));
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| {
                let c = item.get("counter")?;
                Some((c["name"].as_str()?.to_string(), c["packets"].as_u64()?))
            })
            .collect()
    }
}

impl Drop for NftCounters<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .exec_output(&["nft", "delete", "table", self.family, &self.table]);
    }
}
