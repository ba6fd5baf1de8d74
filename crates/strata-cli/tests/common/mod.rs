//! Helpers shared by the CLI integration tests: locating the workspace, running external
//! tools, and skipping when a tool or root is missing (a panic instead under
//! `STRATA_TEST_STRICT=1`). Each test binary includes this with `mod common;` and uses only
//! part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary directory for one test, removed on drop.
pub struct TempRoot {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl TempRoot {
    /// A fresh, empty directory.
    pub fn new() -> TempRoot {
        let tmp = tempfile::tempdir().unwrap();
        TempRoot { root: tmp.path().to_path_buf(), _tmp: tmp }
    }

    /// `name` inside it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// A private buildah storage (vfs driver) in two test directories, so buildah touches nothing
/// of the machine's: `buildah` commands and `containers-storage:` names that use it.
pub struct BuildahStorage {
    root: PathBuf,
    runroot: PathBuf,
}

impl BuildahStorage {
    /// Storage in `root` (images) and `runroot` (runtime state).
    pub fn new(root: PathBuf, runroot: PathBuf) -> BuildahStorage {
        BuildahStorage { root, runroot }
    }

    /// `buildah` with this storage.
    pub fn command(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .arg("--storage-driver")
            .arg("vfs");
        c
    }

    /// `containers-storage:` naming `name` in this storage (for skopeo).
    pub fn image(&self, name: &str) -> String {
        format!("containers-storage:[vfs@{}+{}]{name}", self.root.display(), self.runroot.display())
    }
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Does `STRATA_TEST_STRICT=1` turn skips into failures?
pub fn strict() -> bool {
    std::env::var_os("STRATA_TEST_STRICT").is_some_and(|v| v == "1")
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Is `tool` on PATH? Absent: skip (print why), or fail under STRATA_TEST_STRICT=1.
#[allow(clippy::print_stderr)] // the skip message is the point
pub fn have(tool: &str) -> bool {
    let found = on_path(tool);
    if !found {
        if strict() {
            panic!("{tool} is not installed and STRATA_TEST_STRICT=1");
        }
        eprintln!("skipping: {tool} is not installed");
    }
    found
}

/// Are we root and are all `tools` on PATH? If not: skip with a message naming `what`, or
/// fail under STRATA_TEST_STRICT=1.
#[allow(clippy::print_stderr)] // the skip message is the point
pub fn have_all(what: &str, tools: &[&str]) -> bool {
    let root = is_root();
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() && root {
        return true;
    }
    let why = if root { format!("missing {missing:?}") } else { "not root".to_string() };
    if strict() {
        panic!("{what}: {why} and STRATA_TEST_STRICT=1");
    }
    eprintln!("skipping {what}: {why}");
    false
}

/// Is this process root? (No message; see [`needs_root`].)
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// [`is_root`], printing a skip message when not (a panic under STRATA_TEST_STRICT=1).
#[allow(clippy::print_stderr)]
pub fn needs_root() -> bool {
    let root = is_root();
    if !root {
        if strict() {
            panic!("this test needs root and STRATA_TEST_STRICT=1");
        }
        eprintln!("skipping: this test needs root");
    }
    root
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `cmd`, asserts success (showing its output if not), returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A copy of examples/lamp in `tmp/lamp`, with its base imported into `store` by the
/// example's own `make-base.sh`.
pub fn lamp(tmp: &Path, store: &Path) -> PathBuf {
    let dir = tmp.join("lamp");
    let status = Command::new("cp")
        .arg("-r")
        .arg(workspace().join("examples/lamp"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new(dir.join("make-base.sh"))
        .env("STRATA", env!("CARGO_BIN_EXE_strata"))
        .env("STRATA_STORE", store)
        .output()
        .unwrap();
    assert!(out.status.success(), "make-base.sh: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// `(reused, written)` from a build's `built ...: N layers reused, M written` line.
#[allow(dead_code)] // not every test binary builds
pub fn counts(output: &str) -> (usize, usize) {
    let line = output.lines().find(|l| l.starts_with("built ")).expect(output);
    let num = |before: &str| -> usize {
        let head = line.split(before).next().unwrap();
        head.rsplit(' ').find(|w| !w.is_empty()).unwrap().parse().unwrap()
    };
    (num(" layers reused"), num(" written"))
}

/// Reads `output` line by line up to and including the first line `stop` accepts, and
/// returns what it read (panicking with it if the output ends first: "build ended early").
#[allow(dead_code)] // not every test binary waits for a line
pub fn read_until_line(output: &mut impl std::io::BufRead, stop: impl Fn(&str) -> bool) -> String {
    let mut log = String::new();
    loop {
        let mut line = String::new();
        assert!(output.read_line(&mut line).unwrap() > 0, "build ended early:\n{log}");
        log.push_str(&line);
        if stop(line.trim_end()) {
            return log;
        }
    }
}

/// `strata --store STORE ARGS...`, without the caller's `SOURCE_DATE_EPOCH`.
pub fn strata(store: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap()
}

/// A server on 127.0.0.1 that accepts, reads, and never answers (a registry that hangs);
/// its `host:port`.
pub fn silent_server() -> String {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            // Read whatever comes; hold the connection open until the client gives up.
            std::thread::spawn(move || {
                let mut sink = [0u8; 4096];
                while conn.read(&mut sink).is_ok_and(|n| n > 0) {}
            });
        }
    });
    host
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` (`host:port`) that passes requests on
/// as they come and answers at most `bytes_per_sec`: a slow link to a real registry, so a
/// download lasts long enough to be watched. Its `host:port`.
pub fn throttled_proxy(upstream: &str, bytes_per_sec: u64) -> String {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { return };
            let Ok(server) = TcpStream::connect(&upstream) else { continue };
            let (Ok(mut to_server), Ok(mut from_server)) = (client.try_clone(), server.try_clone())
            else {
                continue;
            };
            let (mut from_client, mut to_client) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_client, &mut to_client);
                let _ = to_client.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                const SLICE: usize = 16 * 1024;
                let pause = std::time::Duration::from_secs_f64(SLICE as f64 / bytes_per_sec as f64);
                let mut buf = [0u8; SLICE];
                while let Ok(n) = from_server.read(&mut buf) {
                    if n == 0 || to_server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    std::thread::sleep(pause);
                }
                let _ = to_server.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    host
}

/// A private tmux server (its own socket, so no session of the machine's is touched) running
/// one session; killed on drop.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `script` (run by the shell) in a `width` x `height` pane.
    pub fn start(name: &str, width: u16, height: u16, script: &str) -> Tmux {
        let tmux = Tmux { socket: format!("strata-{name}-{}", std::process::id()) };
        let (w, h) = (width.to_string(), height.to_string());
        let out = tmux.command(&["new-session", "-d", "-x", &w, "-y", &h, "-s", "t", script]);
        assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));
        tmux
    }

    fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().unwrap()
    }

    /// The pane as shown now; `-J` joins wrapped lines, so a line that wrapped shows as one
    /// longer than the pane.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.command(&["capture-pane", "-p", "-J", "-t", "t"]).stdout)
            .into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command(&["kill-server"]);
    }
}
