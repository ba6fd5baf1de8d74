//! SSH agent forwarding for `RUN --mount=type=ssh` (`strata build --ssh`), as BuildKit does it.
//!
//! `--ssh default` forwards the agent of `$SSH_AUTH_SOCK`; `--ssh ID=SOCKET` an agent socket;
//! `--ssh ID=KEYFILE[,KEYFILE...]` a private agent strata starts for the build (`ssh-agent`
//! from OpenSSH) holding those keys, stopped when the build ends. A RUN step sees the socket
//! at the mount's target (`/run/buildkit/ssh_agent.N` by default) with `SSH_AUTH_SOCK`
//! pointing at it; the keys themselves never enter the step, a layer or a cache key (only
//! the id does).

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{BuildError, Result};

/// One `--ssh` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSpec {
    /// The id a mount names (`default` unless the recipe says `id=`).
    pub id: String,
    /// What answers for it.
    pub source: SshSource,
}

/// Where an [`SshSpec`]'s agent comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshSource {
    /// A running agent's socket.
    Socket(PathBuf),
    /// Private keys for an agent strata starts.
    Keys(Vec<PathBuf>),
}

/// `default`, `ID` (both: `$SSH_AUTH_SOCK`), `ID=SOCKET` or `ID=KEYFILE[,KEYFILE...]`, as
/// `docker build --ssh` takes them.
impl std::str::FromStr for SshSpec {
    type Err = BuildError;

    fn from_str(spec: &str) -> Result<SshSpec> {
        let bad = |why: String| BuildError::InvalidSsh { spec: spec.to_string(), why };
        let (id, paths) = match spec.split_once('=') {
            Some((id, paths)) => (id, Some(paths)),
            None => (spec, None),
        };
        if id.is_empty() {
            return Err(bad("the id is empty".into()));
        }
        let source = match paths {
            None => {
                let sock = std::env::var_os("SSH_AUTH_SOCK")
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| bad("SSH_AUTH_SOCK is not set: start an ssh-agent, or name a socket or key files".into()))?;
                SshSource::Socket(PathBuf::from(sock))
            }
            Some(paths) => {
                let paths: Vec<PathBuf> =
                    paths.split(',').filter(|p| !p.is_empty()).map(PathBuf::from).collect();
                let first = paths.first().ok_or_else(|| bad("no socket or key file".into()))?;
                let md = std::fs::metadata(first)
                    .map_err(|e| bad(format!("{}: {e}", first.display())))?;
                if md.file_type().is_socket() && paths.len() == 1 {
                    SshSource::Socket(first.clone())
                } else {
                    for p in &paths {
                        if !std::fs::metadata(p).is_ok_and(|m| m.is_file()) {
                            return Err(bad(format!("{} is not a key file", p.display())));
                        }
                    }
                    SshSource::Keys(paths)
                }
            }
        };
        Ok(SshSpec { id: id.to_string(), source })
    }
}

/// The agents of a build by id, and the private ones it started (stopped on drop).
#[derive(Debug, Default)]
pub(crate) struct Agents {
    sockets: BTreeMap<String, PathBuf>,
    started: Vec<(Child, tempfile::TempDir)>,
}

impl Agents {
    /// Makes every spec's socket ready: forwarded sockets are checked, key files loaded into
    /// an agent of their own.
    pub fn start(specs: &[SshSpec]) -> Result<Agents> {
        let mut agents = Agents::default();
        for spec in specs {
            let socket = match &spec.source {
                SshSource::Socket(path) => {
                    if !std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                        return Err(BuildError::InvalidSsh {
                            spec: spec.id.clone(),
                            why: format!("{} is not a socket", path.display()),
                        });
                    }
                    path.clone()
                }
                SshSource::Keys(keys) => agents.start_agent(&spec.id, keys)?,
            };
            agents.sockets.insert(spec.id.clone(), socket);
        }
        Ok(agents)
    }

    fn start_agent(&mut self, id: &str, keys: &[PathBuf]) -> Result<PathBuf> {
        let failed = |why: String| BuildError::InvalidSsh { spec: id.to_string(), why };
        let dir = tempfile::Builder::new()
            .prefix("strata-ssh-")
            .tempdir()
            .map_err(|e| BuildError::io("mkdir", std::env::temp_dir(), e))?;
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                failed(format!("cannot start ssh-agent (OpenSSH's) for key files: {e}"))
            })?;
        self.started.push((child, dir));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
            if Instant::now() > deadline {
                return Err(failed("ssh-agent did not open its socket within 10 s".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = Command::new("ssh-add")
            .args(keys)
            .env("SSH_AUTH_SOCK", &socket)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed(format!("cannot run ssh-add: {e}")))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(failed(format!("ssh-add refused the key files: {why}")));
        }
        Ok(socket)
    }

    /// The socket for `id`, if `--ssh` gave one.
    pub fn socket(&self, id: &str) -> Option<&Path> {
        self.sockets.get(id).map(PathBuf::as_path)
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for (child, _) in &mut self.started {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A socket of a step's own in front of a forwarded agent, owned and moded as the mount says
/// (`uid=`, `gid=`, `mode=`; 0:0 and 0600 by default, as BuildKit's): every connection to it
/// is relayed to the agent. BuildKit serves ssh mounts the same way, so the agent's own socket
/// (and its owner and mode on the host) is never what the step sees. Stops accepting when
/// dropped (at the end of the step).
#[derive(Debug)]
pub(crate) struct SshProxy {
    dir: tempfile::TempDir,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SshProxy {
    /// Listens on a new socket relaying to `agent`, with owner `uid:gid` and `mode`.
    pub fn start(id: &str, agent: &Path, uid: u32, gid: u32, mode: u32) -> Result<SshProxy> {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::net::UnixListener;
        let failed = |why: String| BuildError::InvalidSsh { spec: id.to_string(), why };
        // A short path: a socket's name is limited to 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("strata-ssh-")
            .tempdir()
            .map_err(|e| BuildError::io("mkdir", std::env::temp_dir(), e))?;
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).map_err(|e| BuildError::io("bind", &path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| BuildError::io("chmod", &path, e))?;
        // Without root the caller is the step's root: ids other than 0 need root to give.
        if rustix::process::geteuid().is_root() || uid != 0 || gid != 0 {
            rustix::fs::chown(
                &path,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| failed(format!("cannot give the socket to {uid}:{gid}: {e}")))?;
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let agent = agent.to_path_buf();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("strata-ssh-proxy".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    // An agent that went away: the client sees its connection closed.
                    if let Ok(upstream) = std::os::unix::net::UnixStream::connect(&agent) {
                        relay(client, upstream);
                    }
                }
            })
            .map_err(|e| failed(format!("cannot start the socket relay: {e}")))?;
        Ok(SshProxy { dir, stop, thread: Some(thread) })
    }

    /// The socket to bind into the step.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }
}

/// Copies both ways between `a` and `b` on two threads, each direction's end passed on.
fn relay(a: std::os::unix::net::UnixStream, b: std::os::unix::net::UnixStream) {
    let pipe = |mut from: std::os::unix::net::UnixStream,
                mut to: std::os::unix::net::UnixStream| {
        move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        }
    };
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else { return };
    let _ = std::thread::Builder::new().name("strata-ssh-relay".into()).spawn(pipe(a, b2));
    let _ = std::thread::Builder::new().name("strata-ssh-relay".into()).spawn(pipe(b, a2));
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = std::os::unix::net::UnixStream::connect(self.socket());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
