//! Announcing the VIP addresses to the upstream routers, through the host's BGP speaker (BIRD 2). lbd decides,
//! BIRD speaks BGP: lbd keeps one route per announced address in a kernel table of its own ([`routes`]), BIRD's
//! `kernel` protocol learns that table and its BGP sessions export what it learned. No BGP code here.
//!
//! What is announced follows health ([`policy`]): an address is announced while one of its VIPs has `min_healthy`
//! backends serving, withdrawn at once when none has, announced again after a hold-down. `lbctl announce drain`
//! withdraws everything (for maintenance: ECMP moves the flows to the other balancers while this one keeps
//! forwarding what still arrives) and is remembered in `drain_file`, so a restarted lbd stays drained.
//!
//! The routes are kernel state, like the pinned maps: when lbd stops or dies they stay, and BGP keeps announcing
//! while lb_xdp keeps forwarding (fail static, health frozen). The next lbd reads them back and carries on without
//! a flap. `lbd --detach` withdraws them.

pub mod policy;
pub mod routes;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::AnnounceConfig;
pub use policy::{AddressState, VipHealth};
use policy::{Policy, Standing};
use routes::RouteTable;

/// What `lbctl announce` shows, and what `lbctl status` and the metrics summarise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceInfo {
    pub enabled: bool,
    pub drained: bool,
    pub table: u32,
    pub protocol: u32,
    pub hold_down_ms: u64,
    /// Every VIP address of the config (none while announcing is off).
    pub addresses: Vec<AddressInfo>,
    /// Why the last attempt to read or write the routes failed (`None` once one succeeds).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressInfo {
    pub address: IpAddr,
    pub state: AddressState,
    /// While in hold-down: when it will be announced, if nothing changes.
    pub announce_in_ms: Option<u64>,
    /// Announcements and withdrawals by this lbd.
    pub changes: u64,
    pub vips: Vec<VipHealth>,
}

impl AddressInfo {
    pub fn announced(&self) -> bool {
        self.state == AddressState::Announced
    }

    /// Why it stands where it stands, in words.
    pub fn reason(&self) -> String {
        let vips = || {
            self.vips
                .iter()
                .map(|v| {
                    format!(
                        "{} {}/{} serving, needs {}",
                        v.vip, v.serving, v.backends, v.min_healthy
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        match self.state {
            AddressState::Announced => format!("announced ({})", vips()),
            AddressState::HoldDown => format!(
                "hold-down: announced in {:.1} s if it stays healthy ({})",
                self.announce_in_ms.unwrap_or(0) as f64 / 1000.0,
                vips()
            ),
            AddressState::Unhealthy => {
                format!("withdrawn: no VIP has min_healthy backends ({})", vips())
            }
            AddressState::Drained => "withdrawn: drained (lbctl announce undrain)".to_string(),
        }
    }
}

impl AnnounceInfo {
    /// One line for `lbctl status`.
    pub fn summary(&self) -> String {
        if !self.enabled {
            return "off".to_string();
        }
        let announced: Vec<String> = self
            .addresses
            .iter()
            .filter(|a| a.announced())
            .map(|a| a.address.to_string())
            .collect();
        let mut s = format!(
            "{}{} of {} addresses announced",
            if self.drained { "DRAINED, " } else { "" },
            announced.len(),
            self.addresses.len()
        );
        if !announced.is_empty() {
            s += &format!(" ({})", announced.join(", "));
        }
        for a in self.addresses.iter().filter(|a| !a.announced()) {
            s += &format!("; {} {}", a.address, a.state);
        }
        if let Some(e) = &self.error {
            s += &format!("; ERROR: {e}");
        }
        s
    }
}

/// The announcements of one lbd: the policy, the drain flag and the kernel table they are written to.
pub struct Announcer {
    config: AnnounceConfig,
    policy: Policy,
    drained: bool,
    standings: Vec<Standing>,
    error: Option<String>,
}

impl Announcer {
    /// Reads back what is announced and whether this balancer is drained. With announcing off nothing is read or
    /// written, ever.
    pub fn start(config: &AnnounceConfig) -> anyhow::Result<Announcer> {
        let mut a = Announcer {
            config: config.clone(),
            policy: Policy::default(),
            drained: false,
            standings: Vec::new(),
            error: None,
        };
        if config.enabled {
            a.adopt()?;
        }
        Ok(a)
    }

    fn table(&self) -> RouteTable {
        table_of(&self.config)
    }

    fn adopt(&mut self) -> anyhow::Result<()> {
        let announced = self.table().list().map_err(|e| {
            anyhow::anyhow!(
                "reading the announced addresses (table {}, protocol {}): {e}",
                self.config.table,
                self.config.protocol
            )
        })?;
        self.drained = self.config.drain_file.exists();
        info!(
            announced = announced.len(),
            drained = self.drained,
            table = self.config.table,
            protocol = self.config.protocol,
            "announcing VIP addresses through the kernel table"
        );
        self.policy = Policy::new(hold_down(&self.config), &announced);
        Ok(())
    }

    /// A reloaded `[announce]`: turned off withdraws everything; a new table or protocol moves the routes there.
    pub fn reconfigure(&mut self, new: &AnnounceConfig) {
        let old = std::mem::replace(&mut self.config, new.clone());
        if old == *new {
            return;
        }
        if old.enabled && (!new.enabled || table_of(&old) != table_of(new)) {
            match table_of(&old).clear() {
                Ok(n) => info!(
                    withdrawn = n,
                    table = old.table,
                    "announcements removed from the old table"
                ),
                Err(e) => warn!(table = old.table, "removing the announcements: {e}"),
            }
        }
        if !new.enabled {
            self.standings.clear();
            return;
        }
        if !old.enabled {
            if let Err(e) = self.adopt() {
                self.error = Some(format!("{e:#}"));
            }
            return;
        }
        self.policy.set_hold_down(hold_down(new));
        if old.drain_file != new.drain_file
            && let Err(e) = self.record_drain()
        {
            warn!("{e}");
        }
    }

    /// Steps the policy to `now` and makes the kernel table hold exactly what it announces.
    pub fn sync(&mut self, now: Instant, vips: &[VipHealth]) {
        if !self.config.enabled {
            return;
        }
        self.standings = self.policy.step(now, self.drained, vips);
        let want = self.policy.announced();
        self.error = self.write(&want).err().map(|e| {
            let e = if crate::privileges::can_announce() {
                e
            } else {
                // lbd keeps CAP_NET_ADMIN only when it starts with [announce] on (see privileges).
                format!(
                    "{e} (lbd holds no CAP_NET_ADMIN: it keeps it only when it starts with [announce] enabled; \
                     restart lbd to announce)"
                )
            };
            warn!("announcements: {e}");
            e
        });
    }

    /// Adds and removes routes until the table holds `want`; every failure is reported, none stops the others.
    fn write(&self, want: &BTreeSet<IpAddr>) -> Result<(), String> {
        let table = self.table();
        let have = table
            .list()
            .map_err(|e| format!("reading table {}: {e}", self.config.table))?;
        let mut errors = Vec::new();
        for ip in want.difference(&have) {
            match table.add(*ip) {
                Ok(()) => info!(address = %ip, "announced"),
                Err(e) => errors.push(format!("announcing {ip}: {e}")),
            }
        }
        for ip in have.difference(want) {
            let why = self.standings.iter().find(|s| s.address == *ip).map_or(
                "no VIP has it any more",
                |s| match s.state {
                    AddressState::Drained => "drained",
                    _ => "no VIP has min_healthy serving backends",
                },
            );
            match table.remove(*ip) {
                Ok(()) => info!(address = %ip, why, "withdrawn"),
                Err(e) => errors.push(format!("withdrawing {ip}: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    pub fn drained(&self) -> bool {
        self.drained
    }

    /// `lbctl announce drain|undrain`: the flag, remembered in `drain_file`. The caller syncs afterwards.
    pub fn set_drained(&mut self, drained: bool) -> Result<(), String> {
        if !self.config.enabled {
            return Err("announcing is off ([announce] enabled = false): nothing to drain".into());
        }
        self.drained = drained;
        info!(
            drained,
            "announcements {}",
            if drained { "drained" } else { "undrained" }
        );
        self.record_drain()
    }

    fn record_drain(&self) -> Result<(), String> {
        let f = &self.config.drain_file;
        let res = if self.drained {
            f.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(f, "drained by `lbctl announce drain`\n"))
        } else {
            match std::fs::remove_file(f) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        res.map_err(|e| {
            format!(
                "cannot record the drain state in {}: {e} (a restarted lbd would not know it)",
                f.display()
            )
        })
    }

    /// `lbctl shutdown --detach`: every route of lbd's removed.
    pub fn withdraw_all(&mut self) -> anyhow::Result<usize> {
        if !self.config.enabled {
            return Ok(0);
        }
        self.standings.clear();
        let n = withdraw(&self.config)?;
        // No later sync may put them back.
        self.config.enabled = false;
        Ok(n)
    }

    pub fn info(&self) -> AnnounceInfo {
        let c = &self.config;
        AnnounceInfo {
            enabled: c.enabled,
            drained: self.drained,
            table: c.table,
            protocol: c.protocol,
            hold_down_ms: c.hold_down_ms,
            addresses: self
                .standings
                .iter()
                .map(|s| AddressInfo {
                    address: s.address,
                    state: s.state,
                    announce_in_ms: s.announce_in.map(|d| d.as_millis() as u64),
                    changes: s.changes,
                    vips: s.vips.clone(),
                })
                .collect(),
            error: self.error.clone(),
        }
    }
}

/// `lbd --detach`: removes lbd's routes (with announcing on), so BGP withdraws every address of this balancer.
pub fn withdraw(config: &AnnounceConfig) -> anyhow::Result<usize> {
    if !config.enabled {
        return Ok(0);
    }
    let n = table_of(config).clear().map_err(|e| {
        anyhow::anyhow!(
            "withdrawing the announcements (table {}, protocol {}): {e}",
            config.table,
            config.protocol
        )
    })?;
    info!(withdrawn = n, "every announcement withdrawn");
    Ok(n)
}

fn table_of(c: &AnnounceConfig) -> RouteTable {
    RouteTable {
        table: c.table,
        // The rules keep it in 0..=255.
        protocol: u8::try_from(c.protocol).unwrap_or(u8::MAX),
    }
}

fn hold_down(c: &AnnounceConfig) -> Duration {
    Duration::from_millis(c.hold_down_ms)
}
