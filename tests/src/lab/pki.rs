//! The lab's certificates: a CA made for each lab and one server certificate it signed, which every backend
//! serves HTTPS with. lbd's HTTPS health checks trust the CA through `tls_ca_file`.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// The name the backends' certificate is valid for (SNI and `tls_server_name`).
pub const BACKEND_TLS_NAME: &str = "backend.lab";

/// PEM files in a lab directory.
#[derive(Debug, Clone)]
pub struct LabPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl LabPki {
    /// Makes the CA and the backends' certificate and writes them (and its key) under `dir`.
    pub fn create(dir: &Path) -> LabPki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "lb lab CA");
        let ca = ca.self_signed(&ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(vec![BACKEND_TLS_NAME.to_owned()])
            .expect("server params")
            .signed_by(&key, &ca, &ca_key)
            .expect("server certificate");
        let pki = LabPki {
            ca: dir.join("lab-ca.pem"),
            cert: dir.join("backend.pem"),
            key: dir.join("backend.key"),
        };
        for (path, pem) in [
            (&pki.ca, ca.pem()),
            (&pki.cert, cert.pem()),
            (&pki.key, key.serialize_pem()),
        ] {
            std::fs::write(path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        pki
    }
}
