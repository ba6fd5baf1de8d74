//! A real OCI registry for tests: the Debian `docker-registry` binary (distribution 2.8),
//! started on 127.0.0.1 with a free port and storage in a temp dir, killed on drop.
//!
//! Include it from any test crate with
//! `#[path = "<relative path to>/strata-registry/tests/common/registry.rs"] mod registry;`.
//! It depends on `std` and `tempfile` only.
//!
//! Facts about the registry useful to assertions: its log (stdout access log and stderr app
//! log, both captured in [`Registry::log`]) has one access line per request, e.g.
//! `"PATCH /v2/app/blobs/uploads/<uuid>?_state=... HTTP/1.1" 202`, `"PUT
//! /v2/app/blobs/uploads/<uuid>?_state=...&digest=sha256:... HTTP/1.1" 201` (an upload),
//! `"POST /v2/other/blobs/uploads/?mount=sha256:...&from=app HTTP/1.1" 201` (a mount) and
//! `"HEAD /v2/app/blobs/sha256:... HTTP/1.1" 200`. [`Registry::uploads`] counts blob uploads
//! completed in a repository, [`Registry::mounts`] mounts.
#![allow(dead_code, clippy::print_stderr)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The binary the Debian package installs.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Whether the registry binary is installed; when not, prints why (tests then return), or
/// panics under `STRATA_TEST_STRICT=1`.
pub fn registry_available() -> bool {
    let ok = Path::new(REGISTRY_BIN).is_file();
    if !ok {
        assert!(
            std::env::var_os("STRATA_TEST_STRICT").is_none_or(|v| v != "1"),
            "{REGISTRY_BIN} is required under STRATA_TEST_STRICT=1 (apt install docker-registry)"
        );
        eprintln!("skipping: {REGISTRY_BIN} not found (apt install docker-registry)");
    }
    ok
}

/// How to start the registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Require htpasswd Basic auth with this user and password.
    pub htpasswd: Option<(String, String)>,
}

/// A running `docker-registry serve`; killed on drop.
pub struct Registry {
    /// The port on [`Registry::ip`].
    pub port: u16,
    /// The address it listens on (127.0.0.1 unless started with [`Registry::start_on`]).
    pub ip: std::net::IpAddr,
    tls: bool,
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
}

impl Registry {
    /// Starts a registry on 127.0.0.1 with a fresh storage directory and waits until `/v2/`
    /// answers.
    pub fn start(options: RegistryOptions) -> Registry {
        Registry::start_on(options, std::net::IpAddr::from([127, 0, 0, 1]))
    }

    /// Like [`Registry::start`], listening on `ip` (e.g. a non-loopback address of this host,
    /// which clients reach over HTTPS unless told it is insecure).
    pub fn start_on(options: RegistryOptions, ip: std::net::IpAddr) -> Registry {
        Registry::start_with(options, ip, false)
    }

    /// Like [`Registry::start_on`], serving HTTPS with a certificate for `ip` issued by a test
    /// CA made with `openssl` (see [`Registry::ca_path`]). `None` (after saying why) when
    /// `openssl` is missing.
    pub fn start_tls_on(options: RegistryOptions, ip: std::net::IpAddr) -> Option<Registry> {
        if Command::new("openssl").arg("version").output().is_err() {
            assert!(
                std::env::var_os("STRATA_TEST_STRICT").is_none_or(|v| v != "1"),
                "openssl is required under STRATA_TEST_STRICT=1"
            );
            eprintln!("skipping: openssl not found");
            return None;
        }
        Some(Registry::start_with(options, ip, true))
    }

    /// The PEM file of the CA that issued an HTTPS registry's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn start_with(options: RegistryOptions, ip: std::net::IpAddr, tls: bool) -> Registry {
        let dir = tempfile::tempdir().expect("temp dir for the registry");
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).expect("registry storage dir");
        let mut auth = String::new();
        if let Some((user, password)) = &options.htpasswd {
            let file = dir.path().join("htpasswd");
            fs::write(&file, format!("{user}:{}\n", bcrypt_hash(password)))
                .expect("write htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                file.display()
            );
        }
        let mut tls_config = String::new();
        if tls {
            make_certificates(dir.path(), ip);
            tls_config = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("cert.pem").display(),
                dir.path().join("key.pem").display()
            );
        }
        let mut registry = Registry { port: 0, ip, tls, dir, child: Mutex::new(None) };
        // A port found free may be taken by a parallel test before the registry binds it:
        // then this registry exits, and another port is tried.
        for _ in 0..5 {
            registry.port = free_port(ip);
            // A fixed http.secret lets upload-session state survive a restart.
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {}\n  secret: strata-test-secret\n{tls_config}{auth}",
                storage.display(),
                registry.host()
            );
            fs::write(registry.dir.path().join("config.yml"), config)
                .expect("write registry config");
            if registry.spawn() {
                return registry;
            }
        }
        panic!("docker-registry did not start; log:\n{}", registry.log());
    }

    /// Starts the process; `true` once it answers on its port (and is still alive, so the
    /// answer is its own), `false` if it exited (port taken).
    fn spawn(&self) -> bool {
        let listening = |log: String| log.matches("msg=\"listening on ").count();
        let before = listening(self.log());
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("registry log file");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let exited = slot.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                *slot = None;
                return false;
            }
            // Its own "listening on" line, not just any answer on the port.
            if listening(self.log()) > before && self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not answer on port {}; log:\n{}", self.port, self.log());
    }

    /// Whether `GET /v2/` gets any HTTP answer.
    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect((self.ip, self.port)) else { return false };
        if self.tls {
            // Accepting connections is all we can check without a TLS client here.
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req =
            format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.host());
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
    }

    /// `127.0.0.1:<port>` (`<ip>:<port>`), the registry part of references.
    pub fn host(&self) -> String {
        std::net::SocketAddr::new(self.ip, self.port).to_string()
    }

    /// The storage root (`rootdirectory` of the filesystem driver).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the bytes of a blob (`sha256:<hex>` or `<hex>`).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    /// The log file (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Access-log lines of completed blob uploads (`PUT .../blobs/uploads/...digest=` answered
    /// 201) into `repository`.
    pub fn uploads(&self, repository: &str) -> Vec<String> {
        let needle = format!("\"PUT /v2/{repository}/blobs/uploads/");
        self.log()
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("digest=") && l.contains("\" 201 "))
            .map(str::to_owned)
            .collect()
    }

    /// Access-log lines of blob downloads (`GET .../blobs/sha256:...` answered 200) from
    /// `repository`.
    pub fn downloads(&self, repository: &str) -> Vec<String> {
        let needle = format!("\"GET /v2/{repository}/blobs/sha256:");
        self.log()
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("\" 200 "))
            .map(str::to_owned)
            .collect()
    }

    /// Access-log lines of `PATCH` chunk uploads into `repository`.
    pub fn patches(&self, repository: &str) -> Vec<String> {
        let needle = format!("\"PATCH /v2/{repository}/blobs/uploads/");
        self.log().lines().filter(|l| l.contains(&needle)).map(str::to_owned).collect()
    }

    /// Access-log lines of successful mounts (`POST ...?mount=` answered 201) into `repository`.
    pub fn mounts(&self, repository: &str) -> Vec<String> {
        let needle = format!("\"POST /v2/{repository}/blobs/uploads/?");
        self.log()
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("mount=") && l.contains("\" 201 "))
            .map(str::to_owned)
            .collect()
    }

    /// Kills the registry (SIGKILL) and waits for it; callable through `&self`, e.g. from a
    /// progress callback on another thread.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it if running, then starts it again on the same port and storage.
    pub fn restart(&self) {
        self.kill();
        assert!(
            self.spawn(),
            "docker-registry did not restart on port {}:\n{}",
            self.port,
            self.log()
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes `ca.pem` (a test CA) and `cert.pem`/`key.pem` (a server certificate for `ip`, signed
/// by it) into `dir`. rustls refuses a CA certificate as a server's, hence the two levels.
fn make_certificates(dir: &Path, ip: std::net::IpAddr) {
    let ext = dir.join("server.ext");
    fs::write(
        &ext,
        format!(
            "subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .expect("write openssl extensions");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let steps: [Vec<&str>; 3] = [
        [&["req", "-x509"][..], &ec[..], &["-keyout", "ca.key", "-out", "ca.pem"][..]].concat(),
        [&["req"][..], &ec[..], &["-keyout", "key.pem", "-out", "server.csr"][..]].concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-extfile",
            "server.ext",
        ],
    ];
    for (i, args) in steps.iter().enumerate() {
        let subject = if i == 0 { "/CN=strata test CA" } else { "/CN=strata test registry" };
        let mut cmd = Command::new("openssl");
        cmd.current_dir(dir).args(args).args(["-days", "2"]);
        if i < 2 {
            cmd.args(["-subj", subject]);
        }
        let out = cmd.output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A port free on `ip` right now.
fn free_port(ip: std::net::IpAddr) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A bcrypt hash as htpasswd files need: `htpasswd -nbB` when installed, else glibc's
/// crypt(3) through perl (libxcrypt implements `$2b$`).
pub fn bcrypt_hash(password: &str) -> String {
    if let Ok(out) = Command::new("htpasswd").args(["-nbB", "u", password]).output() {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some((_, hash)) = text.trim().split_once(':') {
                return hash.to_owned();
            }
        }
    }
    const ALPHABET: &[u8] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        ^ u128::from(std::process::id());
    let mut x = seed as u64 | 1;
    let mut salt = String::new();
    for _ in 0..21 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        salt.push(ALPHABET[(x % 64) as usize] as char);
    }
    // The 22nd salt character only carries 2 bits; '.' is always valid.
    salt.push('.');
    let out = Command::new("perl")
        .args(["-e", "print crypt($ARGV[0], $ARGV[1])", password, &format!("$2b$05${salt}")])
        .output()
        .expect("neither htpasswd nor perl is available to make a bcrypt hash");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(hash.starts_with("$2b$05$"), "perl crypt() has no bcrypt support: {hash:?}");
    hash
}
