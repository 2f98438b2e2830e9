//! A private PostgreSQL (Debian package `postgresql`, binaries under
//! `/usr/lib/postgresql/<version>/bin`) started by a test on a free loopback port with its own
//! data directory, password authentication (scram-sha-256) and its socket in that directory;
//! stopped (`pg_ctl stop -m immediate`) on drop. As root, the server runs as the `postgres`
//! user (initdb refuses root).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::unused_port;

pub const PASSWORD: &str = "test-password-not-secret";

pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL must be installed (apt-get install -y postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/initdb (apt-get install -y postgresql)")
}

impl Postgres {
    pub fn start() -> Postgres {
        Self::start_with(None)
    }

    /// A server with `ssl = on` and a certificate for `127.0.0.1` issued by `ca`; plain
    /// connections are still accepted.
    pub fn start_tls(ca: &super::pki::TestCa) -> Postgres {
        Self::start_with(Some(ca))
    }

    fn start_with(ca: Option<&super::pki::TestCa>) -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let uid = Command::new("id").arg("-u").output().unwrap();
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let pw = dir.path().join("pw");
        std::fs::write(&pw, PASSWORD).unwrap();
        if as_postgres {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success());
        }
        let p = Postgres {
            port: unused_port(),
            bin: bin_dir(),
            as_postgres,
            dir,
        };
        let data = p.data();
        p.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--pwfile",
                pw.to_str().unwrap(),
                "--no-sync",
            ],
        );
        if let Some(ca) = ca {
            let (cert, key) = ca.issue(&["127.0.0.1"], super::pki::KeyAlg::EcdsaP256);
            std::fs::write(data.join("server.crt"), cert).unwrap();
            let key_file = data.join("server.key");
            std::fs::write(&key_file, key).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
            if as_postgres {
                let st = Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(data.join("server.crt"))
                    .arg(&key_file)
                    .status()
                    .unwrap();
                assert!(st.success());
            }
            let conf = data.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str(
                "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            );
            std::fs::write(&conf, text).unwrap();
        }
        p.up();
        p
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `prog` of the server's binaries, run as the `postgres` user when the tests run as root.
    fn server_command(&self, prog: &str) -> Command {
        let exe = self.bin.join(prog);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// A client program (`psql`, `pg_dump`) connected to this server as `postgres`.
    fn client_command(&self, prog: &str) -> Command {
        let mut c = Command::new(self.bin.join(prog));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .env("PGPASSWORD", PASSWORD);
        c
    }

    /// Runs a client program and returns its standard output; panics when it fails.
    fn client_output(&self, prog: &str, args: &[&str]) -> String {
        let out = self.client_command(prog).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{prog}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn run(&self, prog: &str, args: &[&str]) -> std::process::Output {
        let out = self
            .server_command(prog)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{prog} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server at once (connections are cut).
    pub fn down(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (no password: it goes in a file).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A file holding the password.
    pub fn password_file(&self, dir: &Path) -> PathBuf {
        let f = dir.join("pg-password");
        std::fs::write(&f, format!("{PASSWORD}\n")).unwrap();
        f
    }

    /// Runs `sql` with psql and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.client_output("psql", &["-At", "-c", sql])
    }

    /// The whole database as `pg_dump` writes it (plain SQL).
    pub fn dump(&self) -> String {
        self.client_output("pg_dump", &[])
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .server_command("pg_ctl")
            .args(["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"])
            .output();
    }
}
