//! Pebble, Let's Encrypt's test CA (Debian package `pebble`), started by the tests on free
//! loopback ports, validating for real against the proxy under test.
//!
//! - `pebble-challtestsrv` is Pebble's DNS: every name resolves to 127.0.0.1 (its own challenge
//!   servers are off); [`Pebble::add_a`] points one name elsewhere.
//! - Pebble's `tlsPort` / `httpPort` are the proxy's HTTPS / HTTP ports, so TLS-ALPN-01 and
//!   HTTP-01 are validated against the running trackproxy.
//! - Pebble's own HTTPS certificate comes from a [`TestCa`] whose root the proxy trusts through
//!   `tls.acme.ca_file`; the issuing root is fetched from the management `/roots/0`.
//! - `PEBBLE_VA_NOSLEEP=1` and `PEBBLE_WFE_NONCEREJECT=0` keep it fast and deterministic.
//!
//! Both processes are killed when the [`Pebble`] is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

use super::{KeyAlg, TestCa, TestConfig, eventually, provider, unused_port, unused_udp_tcp_port};

/// Everything the proxy's configuration needs before Pebble runs: the directory URL and the
/// root of Pebble's HTTPS certificate. Pebble itself starts with [`Pebble::start`].
pub struct PebblePlan {
    pub dir: tempfile::TempDir,
    /// `https://127.0.0.1:PORT/dir`
    pub directory: String,
    /// Trusts Pebble's HTTPS API (for `tls.acme.ca_file`).
    pub ca_file: PathBuf,
    listen: u16,
    management: u16,
    dns: u16,
    dns_management: u16,
    cert: PathBuf,
    key: PathBuf,
    _api_ca: TestCa,
}

impl PebblePlan {
    pub fn new() -> Self {
        let api_ca = TestCa::new();
        let (cert, key) =
            api_ca.write_leaf("pebble-api", &["localhost", "127.0.0.1"], KeyAlg::EcdsaP256);
        let dir = tempfile::tempdir().unwrap();
        let listen = unused_port();
        PebblePlan {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            ca_file: api_ca.ca_file.clone(),
            listen,
            management: unused_port(),
            dns: unused_udp_tcp_port(),
            dns_management: unused_port(),
            cert,
            key,
            dir,
            _api_ca: api_ca,
        }
    }

    /// `config` with a `[tls.acme]` section for this Pebble.
    pub fn acme(&self, config: TestConfig, cache_dir: &Path, challenge: &str) -> TestConfig {
        config
            .set("tls.acme.directory", &self.directory)
            .set("tls.acme.contact", ["mailto:ops@example.test"])
            .set("tls.acme.cache_dir", cache_dir)
            .set("tls.acme.challenge", challenge)
            .set("tls.acme.ca_file", &self.ca_file)
    }
}

/// What may differ from Pebble's defaults.
#[derive(Default)]
pub struct PebbleOptions {
    /// `certificateValidityPeriod` in seconds (Pebble's default: 5 years), to make certificates
    /// due for renewal within a test.
    pub validity_seconds: Option<u64>,
}

/// A running Pebble and its DNS.
pub struct Pebble {
    pub plan: PebblePlan,
    pebble: Child,
    dns: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Pebble {
    /// Starts Pebble validating against `tls_port` (TLS-ALPN-01) and `http_port` (HTTP-01) on
    /// 127.0.0.1, and waits until its directory is served.
    pub async fn start(plan: PebblePlan, tls_port: u16, http_port: u16) -> Pebble {
        Self::start_with(plan, tls_port, http_port, PebbleOptions::default()).await
    }

    /// [`Pebble::start`] with `options`.
    pub async fn start_with(
        plan: PebblePlan,
        tls_port: u16,
        http_port: u16,
        options: PebbleOptions,
    ) -> Pebble {
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-management",
                &format!("127.0.0.1:{}", plan.dns_management),
                "-dns01",
                &format!("127.0.0.1:{}", plan.dns),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("pebble-challtestsrv must be installed (apt-get install -y pebble)");
        let config = plan.dir.path().join("pebble.json");
        let mut json = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{}", plan.listen),
                "managementListenAddress": format!("127.0.0.1:{}", plan.management),
                "certificate": plan.cert,
                "privateKey": plan.key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        if let Some(v) = options.validity_seconds {
            json["pebble"]["certificateValidityPeriod"] = v.into();
        }
        std::fs::write(&config, json.to_string()).unwrap();
        let mut pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{}", plan.dns))
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("pebble must be installed (apt-get install -y pebble)");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        let stdout = pebble.stdout.take().unwrap();
        let stderr = pebble.stderr.take().unwrap();
        let lines = log.clone();
        tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                if line.contains("ACME directory available")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let lines = log.clone();
        tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = r.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        if tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .is_err()
        {
            panic!("pebble did not start: {:?}", log.lock().unwrap());
        }
        let p = Pebble {
            plan,
            pebble,
            dns,
            log,
        };
        // Ready when its API, its management interface and the DNS server's management
        // interface accept connections (the log line can come before the sockets).
        for port in [p.plan.listen, p.plan.management, p.plan.dns_management] {
            eventually(
                &format!("port {port} of pebble"),
                Duration::from_secs(10),
                async || {
                    let connect = TcpStream::connect(("127.0.0.1", port)).await;
                    connect.map(drop).map_err(|e| (e.to_string(), p.log()))
                },
            )
            .await;
        }
        p
    }

    /// Pebble's log so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// New orders Pebble has received (`POST /order-plz`).
    pub fn orders(&self) -> usize {
        self.log()
            .iter()
            .filter(|l| l.contains("POST /order-plz"))
            .count()
    }

    /// Certificates Pebble has issued (`Issued certificate serial … for order …`).
    pub fn issued(&self) -> usize {
        self.log()
            .iter()
            .filter(|l| l.contains("Issued certificate serial"))
            .count()
    }

    /// The root issuing certificates in this run of Pebble (PEM).
    pub async fn root_pem(&self) -> String {
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(
                &std::fs::read(&self.plan.ca_file).unwrap(),
            )
            .unwrap()])
            .no_proxy()
            .build()
            .unwrap();
        client
            .get(format!(
                "https://127.0.0.1:{}/roots/0",
                self.plan.management
            ))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Makes `host` resolve to `ip` for Pebble (to fail its validation, for example).
    pub async fn add_a(&self, host: &str, ip: &str) {
        self.dns_management(
            "add-a",
            serde_json::json!({ "host": host, "addresses": [ip] }),
        )
        .await;
    }

    /// Undoes [`Pebble::add_a`]: `host` resolves to 127.0.0.1 again.
    pub async fn clear_a(&self, host: &str) {
        self.dns_management("clear-a", serde_json::json!({ "host": host }))
            .await;
    }

    async fn dns_management(&self, path: &str, body: serde_json::Value) {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!(
                "http://127.0.0.1:{}/{path}",
                self.plan.dns_management
            ))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.pebble.start_kill();
        let _ = self.dns.start_kill();
    }
}

/// A TLS client configuration trusting only `root_pem`.
pub fn client_config(root_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// The leaf certificate `addr` presents for `sni`, verified against `root_pem`.
pub async fn served_certificate(
    root_pem: &str,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<CertificateDer<'static>> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(client_config(root_pem))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].clone())
}

/// Subject alternative names (DNS) and issuer of a certificate.
pub fn names_and_issuer(der: &CertificateDer<'_>) -> (Vec<String>, String) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let names = cert
        .subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (names, cert.issuer().to_string())
}
