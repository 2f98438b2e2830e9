//! The binary as a user runs it: `check-config` exit codes and messages, `serve` on the
//! embedded default, SIGTERM, and memory staying bounded while a large body streams through.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{BinProxy, KeyAlg, Setup, TestCa};

const HOST: &str = "url1234.example.test";

fn trackproxy(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trackproxy"))
        .args(args)
        .env_remove("TRACKPROXY_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn version_and_help() {
    let (code, out, _) = trackproxy(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("trackproxy {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, out, _) = trackproxy(&["--help"]);
    assert_eq!(code, 0);
    for sub in ["serve", "check-config", "certs", "probe", "doctor"] {
        assert!(out.contains(sub), "{out}");
    }
}

#[test]
fn check_config_accepts_shipped_configs() {
    let path = format!("{}/config/default.toml", env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = trackproxy(&["check-config", "--config", &path]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration is valid"));

    // example.toml is valid as shipped except for a machine-specific path: its ACME cache
    // directory (check-config creates it and proves it writable). Point that at a temporary
    // directory instead of creating /var/lib/trackproxy on the test machine.
    let cache = tempfile::tempdir().unwrap();
    let path = format!("{}/config/example.toml", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_trackproxy"))
        .args(["check-config", "--config", &path])
        .env_remove("TRACKPROXY_CONFIG")
        .env(
            "TRACKPROXY__TLS__ACME__CACHE_DIR",
            cache.path().join("acme"),
        )
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("url1234.example.com: certificate to be ordered over ACME"),
        "{stdout}"
    );
    assert!(cache.path().join("acme").is_dir());

    let (code, out, _) = trackproxy(&["check-config"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("<embedded default config>: configuration is valid"),
        "{out}"
    );
}

#[test]
fn check_config_reports_every_problem_with_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    // missing file
    let missing = dir.path().join("nope.toml").display().to_string();
    let (code, _, err) = trackproxy(&["check-config", "--config", &missing]);
    assert_eq!(code, 64);
    assert!(err.contains(&missing) && err.contains("not found"), "{err}");

    // not TOML
    let bad = write(&dir, "bad.toml", "[server\nhttps_listen = 1");
    let (code, _, err) = trackproxy(&["check-config", "--config", &bad]);
    assert_eq!(code, 64);
    assert!(err.contains(&bad) && err.contains("TOML"), "{err}");

    // several bad keys at once, all reported
    let f = write(
        &dir,
        "keys.toml",
        r#"
[server]
https_listen = "0.0.0.0:99999"
shutdown_grace = "soon"
colour = "blue"
[upstream]
url = "sendgrid.net"
[[hosts]]
name = "url1234.example.test"
[tls]
self_signed = true
"#,
    );
    let (code, _, err) = trackproxy(&["check-config", "--config", &f]);
    assert_eq!(code, 64);
    for key in [
        "server.https_listen",
        "server.shutdown_grace",
        "server.colour",
        "upstream.url",
    ] {
        assert!(
            err.contains(&format!("{f}: {key}:")),
            "{key} missing in {err}"
        );
    }
    assert!(err.contains("4 configuration problems"), "{err}");

    // environment override errors name the variable
    let out = Command::new(env!("CARGO_BIN_EXE_trackproxy"))
        .args(["check-config"])
        .env("TRACKPROXY__UPSTREAM__RESPONSE_TIMEOUT", "forever")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "environment variable TRACKPROXY__UPSTREAM__RESPONSE_TIMEOUT: upstream.response_timeout"
        ),
        "{err}"
    );
}

#[test]
fn check_config_reports_certificate_problems() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.write_leaf("other", &["other.example.test"], KeyAlg::EcdsaP256);
    // bad certificate path
    let f = write(
        &dir,
        "badpath.toml",
        &format!(
            "[[hosts]]\nname = \"{HOST}\"\n[[tls.certificates]]\ncert = \"/nonexistent/tls.crt\"\nkey = {:?}\n",
            key.display().to_string()
        ),
    );
    let (code, _, err) = trackproxy(&["check-config", "--config", &f]);
    assert_eq!(code, 64);
    assert!(
        err.contains(&format!(
            "{f}: tls.certificates[0].cert: cannot read /nonexistent/tls.crt"
        )),
        "{err}"
    );

    // certificate does not cover the host
    let f = write(
        &dir,
        "uncovered.toml",
        &format!(
            "[[hosts]]\nname = \"{HOST}\"\n[[tls.certificates]]\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    );
    let (code, _, err) = trackproxy(&["check-config", "--config", &f]);
    assert_eq!(code, 64);
    assert!(
        err.contains(&format!(
            "{f}: hosts[0].name: no certificate for \"{HOST}\""
        )),
        "{err}"
    );

    // key that does not belong to the certificate
    let (_, other_key) = ca.write_leaf("third", &[HOST], KeyAlg::EcdsaP256);
    let (good_cert, _) = ca.write_leaf("good", &[HOST], KeyAlg::EcdsaP256);
    let f = write(
        &dir,
        "mismatch.toml",
        &format!(
            "[[hosts]]\nname = \"{HOST}\"\n[[tls.certificates]]\ncert = {:?}\nkey = {:?}\n",
            good_cert.display().to_string(),
            other_key.display().to_string()
        ),
    );
    let (code, _, err) = trackproxy(&["check-config", "--config", &f]);
    assert_eq!(code, 64);
    assert!(
        err.contains("tls.certificates[0].key") && err.contains("does not fit"),
        "{err}"
    );

    // and a good one passes
    let f = write(
        &dir,
        "good.toml",
        &format!(
            "[[hosts]]\nname = \"{HOST}\"\n[[tls.certificates]]\ncert = {:?}\nkey = {:?}\n",
            good_cert.display().to_string(),
            ca.dir.path().join("good.key").display().to_string()
        ),
    );
    let (code, out, err) = trackproxy(&["check-config", "--config", &f]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{HOST}: certificate from tls.certificates[0]")),
        "{out}"
    );
}

#[tokio::test]
async fn serve_embedded_default_then_sigterm_exits_zero() {
    let mut p = BinProxy::start(None, &[]).await;
    // the default serves localhost with a self-signed certificate (curl -k, as the README says)
    let (out, err, ok) = common::curl(&[
        "-sk",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("https://localhost:{}/", p.https.port()),
    ])
    .await;
    // no network here: sendgrid.net is unreachable, so the proxy answers 502 itself
    assert!(ok, "{err}");
    assert!(out == "502" || out == "504", "{out}");
    p.signal("TERM").await;
    let status = p.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{:?}", p.log_lines());
    assert!(p.log_lines().iter().any(|l| l.contains("SIGTERM")));
}

#[tokio::test]
async fn serve_with_file_certificate_answers_curl_with_upstream_302() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("trackproxy.toml");
    std::fs::write(&cfg, s.toml(&[HOST])).unwrap();
    let mut p = BinProxy::start(Some(&cfg), &[]).await;
    let port = p.https.port();
    let (out, err, ok) = common::curl(&[
        "-sS",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "--resolve",
        &format!("{HOST}:{port}:127.0.0.1"),
        "--cacert",
        &s.ca.ca_file.display().to_string(),
        &format!("https://{HOST}:{port}/ls/click?upn=abc%2Bdef"),
    ])
    .await;
    assert!(ok, "{err}");
    assert!(out.starts_with("HTTP/2 302"), "{out}");
    assert!(
        out.contains(&format!("location: {}", common::LANDING)),
        "{out}"
    );
    assert_eq!(s.upstream.last().target, "/ls/click?upn=abc%2Bdef");
    p.signal("INT").await;
    let status = p.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn hundred_megabyte_post_streams_in_bounded_memory() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("trackproxy.toml");
    std::fs::write(&cfg, s.toml(&[HOST])).unwrap();
    let p = BinProxy::start(Some(&cfg), &[]).await;
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 400; // 100 MiB
    let stream = futures_util::stream::iter(
        (0..CHUNKS).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'u'; CHUNK]))),
    );
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(s.ca.cert_pem.as_bytes()).unwrap()])
        .resolve(HOST, p.https)
        .http1_only()
        .build()
        .unwrap();
    let res = client
        .post(format!("https://{HOST}:{}/upload", p.https.port()))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(s.upstream.last().body_len, (CHUNK * CHUNKS) as u64);
    let peak_mib = p.peak_rss_kib() / 1024;
    eprintln!("proxy peak RSS after a 100 MiB POST: {peak_mib} MiB");
    assert!(
        peak_mib < 64,
        "proxy peak RSS {peak_mib} MiB for a 100 MiB body: it buffered"
    );
}

#[test]
fn probe_exit_code_follows_the_admin_answer() {
    use std::io::{Read, Write};
    for (answer, want) in [
        ("HTTP/1.1 200 OK", 0),
        ("HTTP/1.1 503 Service Unavailable", 1),
    ] {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 512];
            let mut n = 0;
            while !req[..n].ends_with(b"\r\n\r\n") {
                n += s.read(&mut req[n..]).unwrap();
            }
            s.write_all(format!("{answer}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                .unwrap();
            String::from_utf8_lossy(&req[..n]).into_owned()
        });
        let out = Command::new(env!("CARGO_BIN_EXE_trackproxy"))
            .args(["probe", "--path", "/readyz"])
            .env("TRACKPROXY__ADMIN__LISTEN", addr.to_string())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(want),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            server
                .join()
                .unwrap()
                .starts_with("GET /readyz HTTP/1.1\r\n")
        );
    }
    // nothing listening: failure, quickly
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trackproxy"))
        .args(["probe"])
        .env("TRACKPROXY__ADMIN__LISTEN", closed.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}
