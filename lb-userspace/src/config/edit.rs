//! Runtime edits (`lbctl vip add`, `lbctl backend ...`): typed operations on a running config, one named method
//! per request. Each says what it did, in words; the caller then holds the edited config to the same rules as the
//! file ([`Config::validate`]) before anything runs on it. Edits last until the next reload from the file, by
//! design: the file stays the source of truth.

use std::net::IpAddr;

use super::{BackendConfig, Config, DEFAULT_WEIGHT, VipAddr, VipConfig};

impl Config {
    pub fn add_vip(&mut self, vip: VipConfig) -> Result<String, String> {
        let key = vip.key();
        if self.vips.iter().any(|v| v.key() == key) {
            return Err(format!("VIP {key} exists already"));
        }
        self.vips.push(vip);
        Ok(format!("added VIP {key}"))
    }

    pub fn remove_vip(&mut self, vip: &VipAddr) -> Result<String, String> {
        let n = self.vips.len();
        self.vips.retain(|v| v.key() != *vip);
        if self.vips.len() == n {
            return Err(format!("no VIP {vip}"));
        }
        Ok(format!("removed VIP {vip}"))
    }

    /// A new backend of `vip`, at `weight` (default [`DEFAULT_WEIGHT`]).
    pub fn add_backend(
        &mut self,
        vip: &VipAddr,
        backend: IpAddr,
        weight: Option<u32>,
    ) -> Result<String, String> {
        let v = self.vip_mut(vip)?;
        if v.backends.iter().any(|b| b.address == backend) {
            return Err(format!("{vip} already has backend {backend}"));
        }
        let weight = weight.unwrap_or(DEFAULT_WEIGHT);
        v.backends.push(BackendConfig {
            address: backend,
            weight,
        });
        Ok(format!("{vip}: added backend {backend} weight {weight}"))
    }

    pub fn remove_backend(&mut self, vip: &VipAddr, backend: IpAddr) -> Result<String, String> {
        let v = self.vip_mut(vip)?;
        let n = v.backends.len();
        v.backends.retain(|b| b.address != backend);
        if v.backends.len() == n {
            return Err(format!("{vip} has no backend {backend}"));
        }
        Ok(format!("{vip}: removed backend {backend}"))
    }

    /// A backend's weight; 0 drains it (no new flows, open flows stay).
    pub fn set_weight(
        &mut self,
        vip: &VipAddr,
        backend: IpAddr,
        weight: u32,
    ) -> Result<String, String> {
        let b = self
            .vip_mut(vip)?
            .backends
            .iter_mut()
            .find(|b| b.address == backend)
            .ok_or_else(|| format!("{vip} has no backend {backend}"))?;
        b.weight = weight;
        Ok(format!("{vip}: {backend} weight {weight}"))
    }

    fn vip_mut(&mut self, vip: &VipAddr) -> Result<&mut VipConfig, String> {
        self.vips
            .iter_mut()
            .find(|v| v.key() == *vip)
            .ok_or_else(|| format!("no VIP {vip}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[daemon]
interface = "eth1"
encap_src_v4 = "198.18.0.1"
max_ring_size = 251

[[vip]]
address = "198.18.0.100"
port = 80
protocol = "tcp"
ring_size = 251
backends = [{ address = "198.18.1.11" }]
"#;

    fn key() -> VipAddr {
        VipAddr {
            address: "198.18.0.100".parse().unwrap(),
            port: 80,
            protocol: lb_common::IPPROTO_TCP,
        }
    }

    #[test]
    fn edits_change_the_typed_config_and_the_rules_judge_the_result() {
        let mut c = Config::parse(CONFIG).unwrap();
        let b: IpAddr = "198.18.1.12".parse().unwrap();
        assert_eq!(
            c.add_backend(&key(), b, None).unwrap(),
            "198.18.0.100:80/tcp: added backend 198.18.1.12 weight 100"
        );
        c.validate().unwrap();
        c.set_weight(&key(), b, 1001).unwrap();
        let e = c.validate().unwrap_err();
        assert_eq!(
            e.0,
            ["vip[198.18.0.100:80/tcp].backends[1].weight: 1001 is out of range 0..=1000"]
        );
        c.set_weight(&key(), b, 0).unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.add_backend(&key(), b, None).unwrap_err(),
            "198.18.0.100:80/tcp already has backend 198.18.1.12"
        );
        c.remove_backend(&key(), b).unwrap();
        assert_eq!(c.vips[0].backends.len(), 1);

        let v6 = VipConfig {
            address: "fd00:18::100".parse().unwrap(),
            backends: vec![BackendConfig {
                address: "fd00:18::11".parse().unwrap(),
                weight: 100,
            }],
            ..c.vips[0].clone()
        };
        c.add_vip(v6.clone()).unwrap();
        assert_eq!(
            c.validate().unwrap_err().0,
            [
                "vip[[fd00:18::100]:80/tcp].backends[0].address: \"fd00:18::11\" needs daemon.encap_src_v6 for \
              IP-in-IP encapsulation"
            ]
        );
        assert!(
            c.add_vip(v6.clone())
                .unwrap_err()
                .contains("exists already")
        );
        c.remove_vip(&v6.key()).unwrap();
        assert_eq!(
            c.remove_vip(&v6.key()).unwrap_err(),
            "no VIP [fd00:18::100]:80/tcp"
        );
        c.validate().unwrap();
    }
}
