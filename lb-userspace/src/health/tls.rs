//! The TLS side of HTTPS checks: which certificates a check trusts and which name it expects, built once per
//! probe from its spec and the config's CA stores ([`TrustStores`]: each CA bundle is read once per config, not
//! per check, let alone per probe).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How an HTTPS check sets up its connections.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a check's `tls_*` settings say.
#[derive(Debug, Clone, Copy)]
pub struct TlsSettings<'a> {
    /// SNI and the name the certificate must be valid for; `None`: the backend's address (an IP SAN).
    pub server_name: Option<&'a str>,
    /// PEM bundle of the CAs to trust instead of the system store.
    pub ca_file: Option<&'a str>,
    /// `false`: encrypt and complete the handshake, but accept any certificate.
    pub verify: bool,
}

/// The CA stores of one config: the system store and each `tls_ca_file`, read when the config is validated and then
/// shared by every HTTPS check that names it. Clones share the stores: an lbctl edit works on a clone of the
/// running config and reads nothing again, while a reload reads the file, and so the CA files, anew (which is how a
/// rotated CA bundle is taken up).
#[derive(Clone, Default)]
pub struct TrustStores(Arc<Mutex<HashMap<Option<String>, Arc<RootCertStore>>>>);

impl TrustStores {
    /// The store of `ca_file` (`None`: the system store), read on first use.
    pub fn get(&self, ca_file: Option<&str>) -> Result<Arc<RootCertStore>, String> {
        let mut stores = self.0.lock().expect("trust stores");
        let key = ca_file.map(str::to_owned);
        if let Some(store) = stores.get(&key) {
            return Ok(store.clone());
        }
        let store = Arc::new(roots(ca_file)?);
        stores.insert(key, store.clone());
        Ok(store)
    }
}

/// Derived from the config's file names, so never what tells two configs apart.
impl PartialEq for TrustStores {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for TrustStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stores = self.0.lock().expect("trust stores");
        f.debug_set().entries(stores.keys()).finish()
    }
}

impl TlsClient {
    /// A client for one backend; a verifying one trusts the store `trust` holds for `settings.ca_file`.
    pub fn new(
        settings: &TlsSettings,
        backend: IpAddr,
        trust: &TrustStores,
    ) -> Result<TlsClient, String> {
        let name = match settings.server_name {
            Some(n) => server_name(n)?,
            None => ServerName::IpAddress(backend.into()),
        };
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?;
        let config = if settings.verify {
            builder
                .with_root_certificates(trust.get(settings.ca_file)?)
                .with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                    provider.signature_verification_algorithms,
                )))
                .with_no_client_auth()
        };
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// The name sent as SNI (and in the Host header), when one is configured.
    pub fn host(&self) -> Option<String> {
        match &self.name {
            ServerName::DnsName(n) => Some(n.as_ref().to_owned()),
            _ => None,
        }
    }

    pub async fn connect(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, String> {
        self.connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))
    }
}

/// A configured server name, checked the way the handshake will use it.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned()).map_err(|e| format!("{e}"))
}

/// The trusted CAs: every certificate of `ca_file`, or the system store. Empty is an error either way: a check
/// that can trust nothing would only ever report certificate failures.
fn roots(ca_file: Option<&str>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{path}: {e}"))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{path}: {e}"))?;
            for c in certs {
                store
                    .add(c)
                    .map_err(|e| format!("{path}: not a usable CA certificate: {e}"))?;
            }
            if store.is_empty() {
                return Err(format!("{path}: no PEM certificate in it"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(format!(
                    "no CA certificate in the system store{why}; install ca-certificates or set tls_ca_file"
                ));
            }
        }
    }
    Ok(store)
}

/// `tls_verify = false`: any certificate is accepted, but the handshake signatures are still checked, so the
/// probe still proves the backend holds the key of the certificate it sent.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The one crypto provider of every check (and of the tests' TLS servers): ring, which builds without cmake.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// HTTPS checks against a real TLS server on loopback, with a CA and certificates made for the test.
#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use rustls::ServerConfig;
    use rustls_pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::health::{CheckKind, CheckSpec, Checker, HealthKey, http};

    const T: Duration = Duration::from_secs(2);

    /// A CA (its PEM in a file, removed on drop) and a server certificate it signed for `gw.test` and 127.0.0.1.
    struct Pki {
        ca_file: PathBuf,
        server: ServerConfig,
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.ca_file);
        }
    }

    fn pki(tag: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "lbd test CA");
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["gw.test".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let ca_file =
            std::env::temp_dir().join(format!("lbd-test-ca-{}-{tag}.pem", std::process::id()));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        Pki { ca_file, server }
    }

    /// Answers every request that completes a handshake with `status`.
    async fn https_server(pki: &Pki, status: u16) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(pki.server.clone()));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi"
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        addr
    }

    async fn check(
        target: SocketAddr,
        settings: TlsSettings<'_>,
        status: u16,
    ) -> Result<(), String> {
        let client = TlsClient::new(&settings, target.ip(), &TrustStores::default())?;
        http::probe(&target.into(), "/healthz", status, T, Some(&client))
            .await
            .map_err(|e| e.reason)
    }

    #[tokio::test]
    async fn https_checks_verify_the_certificate() {
        let pki = pki("verify");
        let ca = pki.ca_file.to_str().unwrap();
        let target = https_server(&pki, 200).await;
        let with = |server_name, ca_file, verify| TlsSettings {
            server_name,
            ca_file,
            verify,
        };

        check(target, with(Some("gw.test"), Some(ca), true), 200)
            .await
            .expect("name in the certificate, CA trusted");
        check(target, with(None, Some(ca), true), 200)
            .await
            .expect("no name: the backend address must be an IP SAN, and is");
        let err = check(target, with(Some("other.test"), Some(ca), true), 200)
            .await
            .unwrap_err();
        assert!(err.contains("tls") && err.contains("certificate"), "{err}");
        // The system store does not know the test CA (or is empty: then the client cannot even be built).
        let err = check(target, with(Some("gw.test"), None, true), 200)
            .await
            .unwrap_err();
        assert!(err.contains("certificate") || err.contains("CA"), "{err}");
        check(target, with(Some("other.test"), None, false), 200)
            .await
            .expect("tls_verify = false accepts any certificate");
        let err = check(target, with(Some("gw.test"), Some(ca), true), 204)
            .await
            .unwrap_err();
        assert!(err.contains("status 200, expected 204"), "{err}");
    }

    #[tokio::test]
    async fn a_plain_http_check_fails_against_a_tls_server() {
        let pki = pki("plain");
        let target = https_server(&pki, 200).await;
        assert!(
            http::probe(&target.into(), "/", 200, T, None)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn checker_marks_a_backend_with_a_wrong_certificate_down() {
        let pki = pki("checker");
        let target = https_server(&pki, 200).await;
        let (tx, mut rx) = mpsc::channel(16);
        let mut checker = Checker::new(tx).unwrap();
        let spec = |name: &str| CheckSpec {
            kind: CheckKind::Https,
            tls_server_name: Some(name.to_owned()),
            tls_ca_file: Some(pki.ca_file.to_str().unwrap().to_owned()),
            interval_ms: 50,
            fall: 1,
            ..CheckSpec::default()
        };
        let key = HealthKey {
            vip: crate::control::api::parse_vip("198.18.0.10:443/tcp").unwrap(),
            backend: target.ip(),
        };
        checker.set(key, target.into(), spec("gw.test"), true);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let row = &checker.table()[0];
        assert!(row.up && row.last_ok == Some(true), "{row:?}");

        checker.set(key, target.into(), spec("wrong.test"), true);
        let down = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .expect("a health event")
            .unwrap()
            .remove(0);
        assert!(!down.up, "{down:?}");
        assert!(down.reason.contains("certificate"), "{down:?}");
    }

    #[test]
    fn validation_names_the_tls_fields() {
        let spec = |toml_text: &str| toml::from_str::<CheckSpec>(toml_text).unwrap();
        let errors = spec("kind = \"https\"\ntls_ca_file = \"/nonexistent/ca.pem\"").validate(
            "v",
            443,
            &TrustStores::default(),
        );
        assert!(
            errors.len() == 1 && errors[0].starts_with("v.tls_ca_file: \"/nonexistent/ca.pem\""),
            "{errors:?}"
        );
        let errors = spec("kind = \"https\"\ntls_ca_file = \"ca.pem\"").validate(
            "v",
            443,
            &TrustStores::default(),
        );
        assert!(
            errors.len() == 1 && errors[0] == "v.tls_ca_file: \"ca.pem\" must be an absolute path",
            "{errors:?}"
        );
        let errors = spec("kind = \"http\"\ntls_verify = false\ntls_server_name = \"a.test\"")
            .validate("v", 80, &TrustStores::default());
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("v.tls_verify: set but kind is Http")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("v.tls_server_name: set but kind is Http")),
            "{errors:?}"
        );
        let errors = spec("kind = \"https\"\ntls_server_name = \"bad name!\"\ntls_verify = false")
            .validate("v", 443, &TrustStores::default());
        assert!(
            errors.len() == 1
                && errors[0].starts_with("v.tls_server_name: \"bad name!\" is not a server name"),
            "{errors:?}"
        );
        let pki = pki("validate");
        let ok = spec(&format!(
            "kind = \"https\"\npath = \"/healthz\"\ntls_ca_file = {:?}",
            pki.ca_file.to_str().unwrap()
        ));
        let trust = TrustStores::default();
        assert_eq!(ok.validate("v", 443, &trust), Vec::<String>::new());
        // Read once per config: the same config's stores do not read the file again...
        std::fs::write(&pki.ca_file, "").unwrap();
        assert_eq!(ok.validate("v", 443, &trust), Vec::<String>::new());
        // ...a new config reads it anew, and an empty file is no trust store.
        let errors = ok.validate("v", 443, &TrustStores::default());
        assert!(
            errors.len() == 1 && errors[0].contains("no PEM certificate"),
            "{errors:?}"
        );
    }
}
