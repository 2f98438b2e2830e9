//! A real HAProxy (Debian package `haproxy`) in TCP mode in front of trackproxy, started on free
//! loopback ports with a temporary configuration and killed on drop.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::eventually;

/// One frontend → backend pair.
#[derive(Default)]
pub struct Route {
    /// Backend servers (trackproxy listeners).
    pub servers: Vec<SocketAddr>,
    /// `send-proxy-v2`, `send-proxy` or "" (no PROXY header).
    pub send_proxy: &'static str,
    /// Extra `default-server` options, e.g. health checks.
    pub server_options: String,
    /// Options per server (same order as `servers`; missing entries mean none), e.g.
    /// `check port 9090` for each server's own admin port.
    pub per_server: Vec<String>,
    /// HTTP mode (an L7 load balancer) instead of TCP.
    pub http: bool,
    /// Extra lines for the backend section, e.g. `option forwardfor`.
    pub backend: String,
}

pub struct HaProxy {
    child: tokio::process::Child,
    /// Frontend addresses, in the order of the routes given.
    pub frontends: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl HaProxy {
    pub async fn start(routes: &[Route], extra_global: &str) -> HaProxy {
        let dir = tempfile::tempdir().unwrap();
        let mut frontends = Vec::new();
        let mut cfg = format!(
            "global\n    maxconn 4000\n{extra_global}\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\n"
        );
        for (i, r) in routes.iter().enumerate() {
            let fe = super::unused_addr();
            frontends.push(fe);
            let mode = if r.http { "http" } else { "tcp" };
            cfg.push_str(&format!(
                "frontend fe{i}\n    mode {mode}\n    bind {fe}\n    default_backend be{i}\n\n\
                 backend be{i}\n    mode {mode}\n    balance roundrobin\n{}\n    default-server {} {}\n",
                r.backend, r.send_proxy, r.server_options
            ));
            for (j, s) in r.servers.iter().enumerate() {
                let extra = r.per_server.get(j).map_or("", String::as_str);
                cfg.push_str(&format!("    server s{j} {s} {extra}\n"));
            }
            cfg.push('\n');
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &cfg).unwrap();
        let check = std::process::Command::new("haproxy")
            .args(["-c", "-q", "-f"])
            .arg(&path)
            .output()
            .expect("haproxy must be installed (apt-get install -y haproxy)");
        assert!(
            check.status.success(),
            "haproxy -c: {}\n{cfg}",
            String::from_utf8_lossy(&check.stderr)
        );
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = tokio::process::Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // ready when every frontend accepts connections
        for fe in &frontends {
            eventually(
                &format!("haproxy listening on {fe}"),
                Duration::from_secs(5),
                async || {
                    TcpStream::connect(fe).await.map(drop).map_err(|e| {
                        let log = std::fs::read_to_string(dir.path().join("haproxy.log"));
                        (e.to_string(), log.unwrap_or_default())
                    })
                },
            )
            .await;
        }
        HaProxy {
            child,
            frontends,
            _dir: dir,
        }
    }
}
