//! Runs one `RUN` step of an image build in a throw-away Linux sandbox.
//!
//! A step is a command ([`RunRequest::argv`]) run on a root filesystem ([`RootFs`]): either
//! an overlay whose lowerdirs are the parent image's unpacked layers and whose upperdir
//! collects the changes (that upperdir *is* the step's changeset), or a plain directory for
//! the builder's copy-and-compare fallback. This crate knows nothing about layers or
//! recipes; it mounts, runs, streams output and reports the exit status.
//!
//! The command runs as PID 1 of new mount, pid, ipc and uts namespaces (and a network
//! namespace with only `lo` for [`Network::None`]; without root, also a user namespace
//! mapping the caller to root, see below). Every mount is made inside the private mount
//! namespace, so none is visible on the host and all vanish when the step's last process
//! exits; killing strata kills the step (`PR_SET_PDEATHSIG`). Output is read from two pipes
//! by two threads and handed, line by line, to the caller's callback on the calling thread.
//!
//! # The mount plan
//! All in the step's own mount namespace (details in the `plan` module): `/` made
//! recursively private; the rootfs mounted on a temp dir (overlay `lowerdir=TOP:...:BOTTOM,
//! upperdir,workdir` with `metacopy=off,redirect_dir=off`, so that the upperdir alone is the
//! changeset, or `userxattr` without root; `volatile` from Linux 5.10, so that the end of the
//! step does not sync the whole upper filesystem; or a recursive bind of [`RootFs::Dir`]); every
//! other mount made *detached* while the host is still visible: `/dev` (tmpfs, host `null
//! zero full random urandom tty` bound in, new-instance `/dev/pts`, `/dev/shm`), a procfs
//! for the new pid namespace, `/sys` read-only (sysfs in an own network namespace, else a
//! bind of the host's), `/etc/hosts` (`localhost` + hostname) and `/etc/resolv.conf` (a
//! copy of the host's) from per-run files, and [`RunRequest::mounts`]; then `pivot_root`
//! and the old root detached, so that nothing below can reach the host; then each mount
//! attached on its target resolved inside the new root, procfs last; `/proc/sys` & co.
//! read-only and kernel views masked; `mkdir -p` of the cwd; capabilities limited to
//! [`DEFAULT_CAPABILITIES`]; groups, gid, uid; `execve` with a PATH search in the container.
//!
//! # What a step cannot reach
//! Builds run recipes written by strangers, so a path a recipe names never leads out of its
//! root. A [`BindSource::InRoot`] is resolved by the sandbox process itself with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` and mounted from that very fd
//! (`open_tree`), so a symlink to `/` is the root it lives in and nothing can be swapped in
//! between (buildah's CVE-2024-1753, BuildKit's CVE-2024-23651). [`Access::Discard`] binds
//! are overlays whose writes land in the step's scratch dir. Mount targets, stubs and the
//! working directory are made after the old root is gone, resolved inside the container
//! (`/proc/<host path>` is only the container's `/proc`). Stubs are removed afterwards
//! through directory fds that follow no symlink the step may have planted (BuildKit's
//! CVE-2024-23652). The step gets fds 0, 1 and 2 and nothing else the strata process had
//! open, inherited or not (runc's CVE-2024-21626). And when the step's command is exec'd,
//! strata's own process is the only one in the step's pid namespace: even a script whose
//! interpreter is `/proc/self/exe`, which makes the kernel run strata's binary as the step's
//! PID 1, leaves no process of the step that could hold that binary open and rewrite it
//! later (the CVE-2019-5736 class). This needs Linux 5.12 (`openat2`, the new mount API,
//! `mount_setattr`).
//!
//! # Without root
//! A user namespace maps the caller to root, overlay uses `user.overlay.*` xattrs, and files
//! owned by ids outside the mapping cannot be copied up: the layers should belong to the
//! caller. As with podman and buildah, when `/etc/subuid` and `/etc/subgid` grant the caller
//! subordinate ranges (`name_or_uid:start:count`) and the setuid `newuidmap`/`newgidmap`
//! are in PATH, they map container ids 1, 2, ... to those ranges in file order, so `USER
//! 1000` works and its files land in the upperdir owned by the matching host id. Without
//! ranges or helpers, or when a helper fails, only uid/gid 0 exist and other users are
//! [`SandboxError::UnmappedUser`], whose message says why subordinate ids were not used.
//!
//! Mountpoints missing from the image (`/proc`, `/dev`, `/sys`, `/etc/hosts`,
//! `/etc/resolv.conf`, targets of extra mounts) have to be created in the rootfs, which puts
//! them in the upperdir. [`run`] removes such stubs again after the step when they are still
//! empty and lists them in [`RunOutcome::stubs`], so that a changeset does not contain them,
//! as with BuildKit. An overlay directory copied up only to hold a stub stays in the upperdir
//! for the caller to drop: telling it apart needs the layers' view (strata-layer's overlay
//! model, `overlay::drop_copy_ups`).
//!
//! ```no_run
//! use strata_sandbox::{run, Network, RootFs, RunRequest};
//! let req = RunRequest {
//!     rootfs: RootFs::Dir("/tmp/rootfs".into()),
//!     argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
//!     env: vec!["PATH=/usr/bin:/bin".into()],
//!     cwd: "/".into(),
//!     user: "".into(),
//!     network: Network::None,
//!     mounts: vec![],
//!     hostname: "build".into(),
//!     extra_hosts: vec![],
//!     resources: Default::default(),
//!     insecure: false,
//! };
//! let outcome = run(&req, &mut |_stream, line| println!("{line}"))?;
//! assert_eq!(outcome.exit_code, 0);
//! # Ok::<(), strata_sandbox::SandboxError>(())
//! ```
#![deny(missing_docs)]
// The one crate allowed raw system calls: clone, mount, pivot_root in a child process.
#![allow(unsafe_code)]

mod cgroup;
mod child;
mod emulation;
mod error;
mod idmap;
mod limits;
mod plan;
mod scratch;
mod stubs;
mod sys;
mod user;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

pub use cgroup::{CgroupLimits, MemorySwap};
pub use emulation::{ensure_emulation, Emulation};
pub use error::SandboxError;
pub use limits::{parse_size, Ulimit};
pub use scratch::sweep_scratch_dirs;
pub use user::{resolve_user, resolve_user_in};

use plan::PreparedSource;

use idmap::IdMap;
use plan::{PreparedMount, PreparedRootfs};

/// The root filesystem of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootFs {
    /// overlayfs: `lowers` with the BOTTOM layer FIRST (the reverse of overlay's `lowerdir=`
    /// option, which lists the top first); `upper`, an empty directory that receives the
    /// changes; `work`, an empty directory on the same filesystem as `upper`. No lowers
    /// means an empty image (`FROM scratch`).
    Overlay {
        /// Read-only layers, bottom first.
        lowers: Vec<PathBuf>,
        /// Receives the step's changes (whiteouts are char devices 0/0, opaque dirs carry
        /// `trusted.overlay.opaque=y`, or `user.overlay.opaque` when run without root).
        upper: PathBuf,
        /// overlay's scratch directory; empty, same filesystem as `upper`.
        work: PathBuf,
    },
    /// A plain directory used directly (and modified in place) as the root.
    Dir(PathBuf),
}

/// The step's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The host's network namespace (`RUN --network=host`, and Docker's default for builds).
    Host,
    /// A new network namespace with only the loopback interface, up.
    None,
}

/// An extra mount for the step (`RUN --mount=...`, secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// Bind a file or directory tree (directories recursively).
    Bind {
        /// Where the tree comes from.
        source: BindSource,
        /// Absolute path in the container, resolved inside the container's root; created
        /// (as a stub) when missing.
        target: String,
        /// What the step may do to it.
        access: Access,
    },
    /// A fresh, empty tmpfs.
    Tmpfs {
        /// Absolute path in the container; created (as a stub) when missing.
        target: String,
        /// Size limit in bytes (tmpfs's default, half of RAM, when `None`).
        size: Option<u64>,
    },
}

/// Where a bind mount's tree comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindSource {
    /// A path the caller made itself and trusts (a cache-mount directory, a secret file):
    /// mounted as it is.
    Host(PathBuf),
    /// `path` resolved inside the directory `root` as if `root` were `/`: a symlink to `/`
    /// means `root`, an absolute symlink `/etc` means `root/etc`, `..` stops at `root`.
    /// This is how a path a recipe names is mounted (the build context, a stage or image
    /// rootfs): the sandbox process resolves it itself and mounts the very file descriptor
    /// it resolved, so nothing can be swapped in between.
    InRoot {
        /// The directory that is `/` for `path`.
        root: PathBuf,
        /// The path inside it (absolute or relative; `""` or `/` is `root` itself).
        path: String,
    },
}

/// What a step may do to a bind mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-only.
    ReadOnly,
    /// Writes go to the source (a cache-mount directory the caller keeps).
    ReadWrite,
    /// The step may write, but its writes are thrown away after it and never reach the
    /// source: a directory is seen through an overlay whose upperdir lives in the step's
    /// scratch space, a file through a copy (`RUN --mount=type=bind,rw` as BuildKit does it).
    Discard,
}

/// Everything needed to run one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// The root filesystem.
    pub rootfs: RootFs,
    /// The exact argv (for the shell form the builder has already prepended the SHELL).
    /// When `argv[0]` has no `/` it is searched in the container's PATH from `env`.
    pub argv: Vec<String>,
    /// `K=V` strings: exactly the process environment.
    pub env: Vec<String>,
    /// Absolute working directory in the container; created (`mkdir -p`, owned by the
    /// user) when missing.
    pub cwd: String,
    /// Who runs the command.
    pub user: User,
    /// Host network or an isolated one.
    pub network: Network,
    /// Extra mounts, applied in order after the standard ones.
    pub mounts: Vec<Mount>,
    /// Hostname in the step's uts namespace (also in the generated `/etc/hosts`);
    /// `"sandbox"` when empty.
    pub hostname: String,
    /// More `/etc/hosts` lines, `(name, address)` (`docker build --add-host`).
    pub extra_hosts: Vec<(String, String)>,
    /// Resource limits and the size of `/dev/shm`.
    pub resources: Resources,
    /// Run with every capability the sandbox has instead of [`DEFAULT_CAPABILITIES`]
    /// (BuildKit's `RUN --security=insecure`).
    pub insecure: bool,
}

/// Resource limits of a step's process (`docker build --ulimit`, `--shm-size`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// `setrlimit(2)` calls made in the sandbox before the command starts, in order.
    pub ulimits: Vec<Ulimit>,
    /// The size of the `/dev/shm` tmpfs in bytes; 64 MiB (Docker's default) when `None`.
    pub shm_size: Option<u64>,
    /// CPU and memory limits, enforced by a cgroup of the step's own (see [`CgroupLimits`]);
    /// none by default.
    pub cgroup: CgroupLimits,
}

/// Who runs a step's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// `""` (root), `name`, `uid`, `name:group` or `uid:gid`, resolved with the rootfs's own
    /// `/etc/passwd` and `/etc/group` (see [`resolve_user`]). Only for a [`RootFs::Dir`]:
    /// what an overlay's lower layers hold is the caller's to read (it knows the layer model).
    Spec(String),
    /// Numeric ids, already resolved (e.g. with [`resolve_user_in`]).
    Ids {
        /// The uid.
        uid: u32,
        /// The primary gid.
        gid: u32,
        /// Supplementary gids.
        groups: Vec<u32>,
    },
}

impl From<&str> for User {
    fn from(spec: &str) -> User {
        User::Spec(spec.to_string())
    }
}

impl From<(u32, u32, Vec<u32>)> for User {
    fn from((uid, gid, groups): (u32, u32, Vec<u32>)) -> User {
        User::Ids { uid, gid, groups }
    }
}

impl std::fmt::Display for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            User::Spec(s) => f.write_str(s),
            User::Ids { uid, gid, .. } => write!(f, "{uid}:{gid}"),
        }
    }
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// The exit status; 128+N when killed by signal N.
    pub exit_code: i32,
    /// The last [`TAIL_LINES`] output lines (both streams, in arrival order).
    pub tail: Vec<String>,
    /// Container paths created only as mountpoints (parents before children). [`run`] has
    /// already removed those still empty from the rootfs (for an overlay, from the upperdir;
    /// their copied-up parents are the caller's to drop); any still present were written to
    /// by the command.
    pub stubs: Vec<String>,
    /// The kernel's OOM killer killed a process of the step for its memory limit
    /// ([`CgroupLimits::memory`]).
    pub oom_killed: bool,
}

/// The capabilities a step keeps (Docker's default set): CHOWN, DAC_OVERRIDE, FOWNER,
/// FSETID, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD,
/// AUDIT_WRITE, SETFCAP. All others leave the bounding set before the command starts, so
/// a root step cannot mount, load modules or reach host devices.
pub const DEFAULT_CAPABILITIES: u64 = 0xa804_25fb;

/// How many trailing output lines [`RunOutcome::tail`] keeps.
pub const TAIL_LINES: usize = 20;

/// Longest line handed to the callback; longer runs without a newline are split.
pub const MAX_LINE: usize = 64 * 1024;

/// Lets another thread stop a running step: [`CancelToken::cancel`] makes
/// [`run_cancellable`] kill the step's process tree and return [`SandboxError::Cancelled`].
pub use strata_types::CancelToken;

/// Runs the step and waits for it, calling `on_line` for every output line (without its
/// newline; invalid UTF-8 replaced) on the calling thread.
///
/// A non-zero exit is reported in [`RunOutcome::exit_code`], not as an error.
pub fn run(
    req: &RunRequest,
    on_line: &mut dyn FnMut(Stream, &str),
) -> Result<RunOutcome, SandboxError> {
    run_cancellable(req, on_line, &CancelToken::new())
}

/// [`run`], stoppable from another thread through `cancel`.
pub fn run_cancellable(
    req: &RunRequest,
    on_line: &mut dyn FnMut(Stream, &str),
    cancel: &CancelToken,
) -> Result<RunOutcome, SandboxError> {
    let scratch = scratch::Scratch::new()?;
    let euid = rustix::process::geteuid().as_raw();
    let egid = rustix::process::getegid().as_raw();
    let id_map = (euid != 0).then(|| idmap::detect(euid, egid));
    let mut prepared = prepare(req, scratch.path(), id_map)?;
    let mut plan = plan::build(&prepared)?;
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if req.network == Network::None {
        flags |= libc::CLONE_NEWNET;
    }
    if prepared.userns.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    let candidates: Vec<String> = plan.stub_paths.iter().map(|(_, p)| p.clone()).collect();
    let dir_times = match &req.rootfs {
        RootFs::Dir(dir) => Some(stubs::DirTimes::record(dir, &candidates)),
        RootFs::Overlay { .. } => None,
    };
    // Made before the child and removed after it, whatever happens (its Drop).
    let cgroup = cgroup::RunCgroup::create(&req.resources.cgroup, &cgroup::CgroupFs::host())?;
    let mut child = loop {
        match child::spawn(&plan, flags, prepared.userns.as_ref(), cgroup.as_ref())? {
            Ok(child) => break child,
            Err(failure) => {
                // the helpers refused: only the caller can be mapped
                prepared.userns =
                    Some(IdMap::Single { uid: euid, gid: egid, why: failure.to_string() });
                check_mapped(&prepared, &req.user.to_string())?;
                plan = plan::build(&prepared)?;
            }
        }
    };
    let mut stubs: Vec<String> =
        child.stub_ops.iter().filter_map(|i| plan.stub_path(*i).map(str::to_string)).collect();
    stubs.dedup();

    let result = match child.setup_error.take() {
        Some(e) => Err(e),
        None => {
            stream_output(&mut child, on_line, cancel).and_then(|tail| Ok((tail, child.wait()?)))
        }
    };
    drop(child); // kills and reaps it if still running (an error above)
    let oom_killed = cgroup.as_ref().is_some_and(|c| c.oom_killed());
    drop(cgroup);
    let stub_root = match &req.rootfs {
        RootFs::Overlay { upper, .. } => stubs::StubRoot::Overlay { upper: upper.clone() },
        RootFs::Dir(dir) => stubs::StubRoot::Dir(dir.clone()),
    };
    stubs::remove_stubs(&stub_root, &stubs);
    if let RootFs::Overlay { work, .. } = &req.rootfs {
        if overlay_volatile() {
            clear_volatile_mark(work);
        }
    }
    if let (Some(times), RootFs::Dir(dir)) = (&dir_times, &req.rootfs) {
        times.restore(dir, &stubs);
    }
    let (tail, exit_code) = result?;
    if cancel.is_cancelled() {
        return Err(SandboxError::Cancelled);
    }
    Ok(RunOutcome { exit_code, tail, stubs, oom_killed })
}

/// Reads both pipes on two threads, hands lines to `on_line` here, keeps the tail.
fn stream_output(
    child: &mut child::Child,
    on_line: &mut dyn FnMut(Stream, &str),
    cancel: &CancelToken,
) -> Result<Vec<String>, SandboxError> {
    let (tx, rx) = mpsc::channel::<(Stream, String)>();
    let mut readers = Vec::new();
    for (stream, file) in
        [(Stream::Stdout, child.stdout.take()), (Stream::Stderr, child.stderr.take())]
    {
        let Some(file) = file else { continue };
        let tx = tx.clone();
        let reader = std::thread::Builder::new()
            .name("strata-sandbox-output".into())
            .spawn(move || read_lines(file, |line| tx.send((stream, line)).is_ok()))
            .map_err(|source| SandboxError::Spawn { what: "starting an output thread", source })?;
        readers.push(reader);
    }
    drop(tx);
    let mut tail = VecDeque::with_capacity(TAIL_LINES + 1);
    let mut killed = false;
    loop {
        if !killed && cancel.is_cancelled() {
            child.kill();
            killed = true;
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((stream, line)) => {
                on_line(stream, &line);
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for r in readers {
        let _ = r.join();
    }
    Ok(tail.into())
}

/// Splits a byte stream into lines (without `\n` or `\r\n`); stops when `emit` says so.
fn read_lines(mut file: File, mut emit: impl FnMut(String) -> bool) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    let emit_one = |bytes: &[u8], emit: &mut dyn FnMut(String) -> bool| {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        emit(String::from_utf8_lossy(bytes).into_owned())
    };
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            if !emit_one(&buf[start..start + pos], &mut emit) {
                return;
            }
            start += pos + 1;
        }
        buf.drain(..start);
        while buf.len() >= MAX_LINE {
            let rest = buf.split_off(MAX_LINE);
            if !emit_one(&buf, &mut emit) {
                return;
            }
            buf = rest;
        }
    }
    if !buf.is_empty() {
        emit_one(&buf, &mut emit);
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SandboxError + 'a {
    move |source| SandboxError::Io { action, path: path.to_path_buf(), source }
}

fn canonical(p: &Path) -> Result<PathBuf, SandboxError> {
    fs::canonicalize(p).map_err(io_err("resolving", p))
}

/// A bind mount's source as the child will open it. An in-root source is resolved here too
/// (the child resolves it again and mounts what it resolved): to know whether the target
/// is a directory or a file, to say clearly when the source does not exist, and to copy a
/// file whose writes are to be discarded.
fn prepare_bind(
    scratch: &Path,
    index: usize,
    source: &BindSource,
    target: &str,
    access: Access,
) -> Result<PreparedMount, SandboxError> {
    let read_only = access == Access::ReadOnly;
    let (source, is_dir) = match source {
        BindSource::Host(path) => {
            let path = canonical(path)?;
            let meta = fs::metadata(&path).map_err(io_err("reading", &path))?;
            (PreparedSource::Host(path), meta.is_dir())
        }
        BindSource::InRoot { root, path } => {
            let root = canonical(root)?;
            let fd = open_in_root(&root, path).map_err(|source| SandboxError::MountSource {
                root: root.clone(),
                path: path.clone(),
                source,
            })?;
            let meta = fs::File::from(fd).metadata().map_err(io_err("reading", &root))?;
            let is_dir = meta.is_dir();
            match access {
                Access::Discard if is_dir => {
                    let dir = scratch.join(format!("bind-{index}"));
                    let (upper, work) = (dir.join("upper"), dir.join("work"));
                    for d in [&dir, &upper, &work] {
                        fs::create_dir(d).map_err(io_err("creating", d))?;
                    }
                    let (upper, work) = (canonical(&upper)?, canonical(&work)?);
                    (PreparedSource::Discarded { root, path: path.clone(), upper, work }, true)
                }
                Access::Discard => {
                    // A file: the step gets a copy of what was resolved.
                    let copy = scratch.join(format!("bind-{index}"));
                    let mut from = fs::File::from(open_in_root_for_reading(&root, path)?);
                    let mut to = fs::File::create(&copy).map_err(io_err("creating", &copy))?;
                    io::copy(&mut from, &mut to).map_err(io_err("copying to", &copy))?;
                    to.set_permissions(meta.permissions()).map_err(io_err("chmod", &copy))?;
                    (PreparedSource::Host(canonical(&copy)?), false)
                }
                _ => (PreparedSource::InRoot { root, path: path.clone() }, is_dir),
            }
        }
    };
    Ok(PreparedMount::Bind { source, target: target.to_string(), is_dir, read_only })
}

/// The resolution flags of every path a recipe names: inside the root, no magic links.
fn in_root_flags() -> rustix::fs::ResolveFlags {
    rustix::fs::ResolveFlags::IN_ROOT | rustix::fs::ResolveFlags::NO_MAGICLINKS
}

/// An `O_PATH` fd of `path` resolved inside `root`.
fn open_in_root(root: &Path, path: &str) -> io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let dir =
        rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let path = if path.is_empty() { "." } else { path };
    Ok(crate::sys::openat2_retrying(
        &dir,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        in_root_flags(),
    )?)
}

fn open_in_root_for_reading(root: &Path, path: &str) -> Result<std::os::fd::OwnedFd, SandboxError> {
    use rustix::fs::{Mode, OFlags};
    let dir =
        rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| SandboxError::Io {
            action: "opening",
            path: root.to_path_buf(),
            source: e.into(),
        })?;
    crate::sys::openat2_retrying(
        &dir,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        in_root_flags(),
    )
    .map_err(|e| SandboxError::MountSource {
        root: root.to_path_buf(),
        path: path.to_string(),
        source: e.into(),
    })
}

/// Overlay's limit on the whole option string (one page, NUL included).
const MOUNT_DATA_MAX: usize = 4095;

/// [`SandboxError::UnmappedUser`] when the step's ids are outside the user namespace's map.
fn check_mapped(p: &plan::Prepared, user: &str) -> Result<(), SandboxError> {
    let Some(map) = &p.userns else { return Ok(()) };
    let groups_ok = match map {
        IdMap::Single { .. } => true, // left alone: setgroups is denied
        IdMap::Subordinate { .. } => p.groups.iter().all(|g| map.maps_gid(*g)),
    };
    if map.maps_uid(p.uid) && map.maps_gid(p.gid) && groups_ok {
        return Ok(());
    }
    Err(SandboxError::UnmappedUser {
        user: user.to_string(),
        uid: p.uid,
        gid: p.gid,
        groups: p.groups.clone(),
        mapped: map.describe(),
    })
}

/// Gathers host facts and writes per-run files into `scratch`; `id_map` is the user
/// namespace's map when running without root.
fn prepare(
    req: &RunRequest,
    scratch: &Path,
    id_map: Option<IdMap>,
) -> Result<plan::Prepared, SandboxError> {
    if req.argv.is_empty() {
        return Err(SandboxError::EmptyArgv);
    }
    plan::container_components("cwd", &req.cwd)?;
    let rootless = id_map.is_some();

    let root_mountpoint = scratch.join("root");
    fs::create_dir(&root_mountpoint).map_err(io_err("creating", &root_mountpoint))?;
    let root_mountpoint = canonical(&root_mountpoint)?;

    let rootfs = match &req.rootfs {
        RootFs::Overlay { lowers, upper, work } => {
            let mut top_first: Vec<PathBuf> =
                lowers.iter().rev().map(|l| canonical(l)).collect::<Result<_, _>>()?;
            if top_first.is_empty() {
                let empty = scratch.join("empty");
                fs::create_dir(&empty).map_err(io_err("creating", &empty))?;
                top_first.push(canonical(&empty)?);
            }
            let upper = canonical(upper)?;
            let work = canonical(work)?;
            overlay_rootfs(&top_first, &upper, &work, rootless, overlay_volatile())?
        }
        RootFs::Dir(dir) => PreparedRootfs::Bind(canonical(dir)?),
    };

    let (uid, gid, groups) = match (&req.user, &req.rootfs) {
        (User::Ids { uid, gid, groups }, _) => (*uid, *gid, groups.clone()),
        (User::Spec(spec), RootFs::Dir(dir)) => resolve_user(dir, spec)?,
        (User::Spec(spec), RootFs::Overlay { .. }) => {
            return Err(SandboxError::UserNeedsIds { user: spec.clone() })
        }
    };

    let hostname = if req.hostname.is_empty() { "sandbox" } else { &req.hostname };
    let hosts_file = scratch.join("hosts");
    let mut hosts =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, address) in &req.extra_hosts {
        hosts.push_str(&format!("{address}\t{name}\n"));
    }
    fs::write(&hosts_file, hosts).map_err(io_err("writing", &hosts_file))?;
    let resolv_file = scratch.join("resolv.conf");
    let resolv = match fs::read("/etc/resolv.conf") {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(SandboxError::Io {
                action: "reading",
                path: "/etc/resolv.conf".into(),
                source,
            })
        }
    };
    fs::write(&resolv_file, resolv).map_err(io_err("writing", &resolv_file))?;

    let devices = ["null", "zero", "full", "random", "urandom", "tty"]
        .iter()
        .filter_map(|name| {
            let host = Path::new("/dev").join(name);
            let m = fs::metadata(&host).ok()?;
            m.file_type().is_char_device().then(|| (name.to_string(), host))
        })
        .collect();

    let mut mounts = Vec::new();
    for (i, m) in req.mounts.iter().enumerate() {
        mounts.push(match m {
            Mount::Bind { source, target, access } => {
                prepare_bind(scratch, i, source, target, *access)?
            }
            Mount::Tmpfs { target, size } => {
                PreparedMount::Tmpfs { target: target.clone(), size: *size }
            }
        });
    }

    let prepared = plan::Prepared {
        userns: id_map,
        hostname: hostname.to_string(),
        new_net: req.network == Network::None,
        root_mountpoint,
        rootfs,
        devices,
        hosts_file: canonical(&hosts_file)?,
        resolv_file: canonical(&resolv_file)?,
        mounts,
        cwd: req.cwd.clone(),
        uid,
        gid,
        groups,
        argv: req.argv.clone(),
        env: req.env.clone(),
        resources: req.resources.clone(),
        insecure: req.insecure,
    };
    check_mapped(&prepared, &req.user.to_string())?;
    Ok(prepared)
}

/// overlayfs's maximum number of lower layers (`OVL_MAX_STACK`).
const OVERLAY_MAX_LAYERS: usize = 500;

/// How to mount the overlay, with paths relative to their common ancestor `base` (the child
/// `chdir`s there first) to keep the option string short: one `mount(2)` with all options
/// when they fit in its one page, else one `fsconfig` call per option (`lowerdir+`,
/// Linux 6.8+), which has no such limit. `volatile` adds overlayfs's option of that name
/// (see [`overlay_volatile`]).
fn overlay_rootfs(
    lowers_top_first: &[PathBuf],
    upper: &Path,
    work: &Path,
    rootless: bool,
    volatile: bool,
) -> Result<PreparedRootfs, SandboxError> {
    if lowers_top_first.len() > OVERLAY_MAX_LAYERS {
        return Err(SandboxError::TooManyLayers {
            count: lowers_top_first.len(),
            max: OVERLAY_MAX_LAYERS,
        });
    }
    let mut base = upper.parent().unwrap_or(Path::new("/")).to_path_buf();
    for p in lowers_top_first.iter().map(PathBuf::as_path).chain([work]) {
        while !p.starts_with(&base) {
            base = match base.parent() {
                Some(parent) => parent.to_path_buf(),
                None => break,
            };
        }
    }
    let rel = |p: &Path| -> Result<String, SandboxError> {
        let r = p.strip_prefix(&base).unwrap_or(p);
        let s = if r.as_os_str().is_empty() {
            ".".to_string()
        } else {
            r.to_string_lossy().into_owned()
        };
        if s.contains([',', ':', '\\']) || r.to_str().is_none() {
            return Err(SandboxError::UnsupportedOverlayPath { path: p.to_path_buf() });
        }
        Ok(s)
    };
    let lowers = lowers_top_first.iter().map(|l| rel(l)).collect::<Result<Vec<_>, _>>()?;
    let (upper, work) = (rel(upper)?, rel(work)?);
    let mut flags: Vec<(&str, Option<&str>)> = if rootless {
        vec![("userxattr", None)]
    } else {
        vec![("metacopy", Some("off")), ("redirect_dir", Some("off"))]
    };
    if volatile {
        flags.push(("volatile", None));
    }
    let mut options = format!("lowerdir={},upperdir={upper},workdir={work}", lowers.join(":"));
    for (k, v) in &flags {
        options.push(',');
        options.push_str(k);
        if let Some(v) = v {
            options.push('=');
            options.push_str(v);
        }
    }
    if options.len() <= MOUNT_DATA_MAX {
        return Ok(PreparedRootfs::Overlay { base, options });
    }
    let mut params: Vec<(String, Option<String>)> =
        lowers.into_iter().map(|l| ("lowerdir+".to_string(), Some(l))).collect();
    params.push(("upperdir".into(), Some(upper)));
    params.push(("workdir".into(), Some(work)));
    params.extend(flags.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))));
    Ok(PreparedRootfs::OverlayFsConfig { base, params })
}

/// Whether the step overlays are mounted `volatile` (Linux 5.10+): overlayfs then skips every
/// sync of its upper filesystem, above all the `syncfs` of the whole upper filesystem that
/// tearing the overlay down does when the step's mount namespace ends. A step's upperdir is
/// scratch that strata reads directly (the layer blob written from it is `fsync`ed by the
/// store), so that sync bought nothing, and it made each RUN wait until every dirty page on
/// the store's filesystem was on disk: after a big COPY, 0.8 s for a RUN whose command took
/// 10 ms. An upper that was mounted volatile cannot be mounted again after a crash; none is.
fn overlay_volatile() -> bool {
    static VOLATILE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VOLATILE.get_or_init(|| {
        kernel_at_least(&rustix::system::uname().release().to_string_lossy(), (5, 10))
    })
}

/// Removes the mark a `volatile` overlay leaves in its workdir (`work/incompat/volatile/`),
/// which makes overlayfs refuse to mount that upper again: it stands for "the upper may have
/// lost writes in a crash", and the step's mount namespace has ended without one, its writes
/// all in the page cache, so the upper may be mounted again (a caller that runs several steps
/// on one upper).
fn clear_volatile_mark(work: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let inner = work.join("work");
    let incompat = inner.join("incompat");
    // Overlay makes these directories mode 000: without root, only their owner's chmod opens
    // them for the removal.
    for dir in [&inner, &incompat, &incompat.join("volatile")] {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    let _ = fs::remove_dir_all(&incompat);
}

/// Whether a kernel release string (`6.1.0-13-amd64`) is at least `major.minor`.
fn kernel_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// Whether overlayfs works here for what a build needs: mounts an overlay in a private
/// mount namespace on a temp dir under `scratch` (which should be on the filesystem that
/// will hold upperdirs), creates a file and deletes a lower one, and checks that the upperdir
/// got the file and a whiteout. Never leaves a mount behind.
///
/// A yes is cached per filesystem (device of `scratch`) for the life of the process, so
/// calling it before every step costs a `stat` after the first (the probe itself takes tens
/// of milliseconds, mostly tearing down its mount namespace); a no is probed again.
pub fn overlay_supported(scratch: &Path) -> bool {
    static SUPPORTED_ON: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let Ok(dev) = fs::metadata(scratch).map(|m| m.dev()) else { return false };
    if SUPPORTED_ON.lock().is_ok_and(|devs| devs.contains(&dev)) {
        return true;
    }
    let ok = overlay_probe(scratch).unwrap_or(false);
    if ok {
        if let Ok(mut devs) = SUPPORTED_ON.lock() {
            devs.push(dev);
        }
    }
    ok
}

fn overlay_probe(scratch: &Path) -> Result<bool, SandboxError> {
    let dir = tempfile::Builder::new()
        .prefix("strata-overlay-probe-")
        .tempdir_in(scratch)
        .map_err(io_err("creating a temp dir in", scratch))?;
    let d = canonical(dir.path())?;
    for sub in ["lower", "upper", "work", "merged"] {
        fs::create_dir(d.join(sub)).map_err(io_err("creating", &d))?;
    }
    fs::write(d.join("lower/gone"), b"x").map_err(io_err("writing", &d))?;
    let euid = rustix::process::geteuid().as_raw();
    let rootless = euid != 0;
    let PreparedRootfs::Overlay { base, options } = overlay_rootfs(
        &[d.join("lower")],
        &d.join("upper"),
        &d.join("work"),
        rootless,
        overlay_volatile(),
    )?
    else {
        return Ok(false); // one short lowerdir always fits in the mount data
    };
    let c = |p: &Path| plan::cstring("host path", &p.to_string_lossy());
    let mut ops = Vec::new();
    if rootless {
        let egid = rustix::process::getegid().as_raw();
        for (file, data) in [
            ("/proc/self/setgroups", "deny".to_string()),
            ("/proc/self/uid_map", format!("0 {euid} 1\n")),
            ("/proc/self/gid_map", format!("0 {egid} 1\n")),
        ] {
            ops.push(sys::Op::WriteFile { path: c(Path::new(file))?, data: data.into_bytes() });
        }
    }
    ops.push(sys::Op::Mount {
        source: None,
        target: c(Path::new("/"))?,
        fstype: None,
        flags: (libc::MS_REC | libc::MS_PRIVATE),
        data: None,
        optional: false,
    });
    ops.push(sys::Op::Chdir { path: c(&base)? });
    ops.push(sys::Op::Mount {
        source: Some(c(Path::new("overlay"))?),
        target: c(&d.join("merged"))?,
        fstype: Some(c(Path::new("overlay"))?),
        flags: 0,
        data: Some(plan::cstring("overlay options", &options)?),
        optional: false,
    });
    ops.push(sys::Op::CreateFile { path: c(&d.join("merged/new"))?, stub: false, optional: false });
    ops.push(sys::Op::Unlink { path: c(&d.join("merged/gone"))? });
    let probe = plan::Plan { ops, stub_paths: Vec::new() };
    let mut flags = libc::CLONE_NEWNS;
    if rootless {
        flags |= libc::CLONE_NEWUSER;
    }
    let Ok(mut child) = child::spawn(&probe, flags, None, None)? else {
        return Ok(false); // no helpers without a subordinate map
    };
    if child.setup_error.is_some() || child.wait()? != 0 {
        return Ok(false);
    }
    let whiteout = fs::symlink_metadata(d.join("upper/gone"))
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false);
    Ok(whiteout && d.join("upper/new").is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    fn lines_of(bytes: &[u8]) -> Vec<String> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        let mut out = Vec::new();
        read_lines(f, |l| {
            out.push(l);
            true
        });
        out
    }

    #[test]
    fn lines_are_split_on_newlines_with_crlf_and_a_final_partial_line() {
        assert_eq!(lines_of(b"a\r\nb\n\nlast"), ["a", "b", "", "last"]);
        assert_eq!(lines_of(b""), Vec::<String>::new());
        assert_eq!(lines_of(b"bad \xff utf8\n"), ["bad \u{fffd} utf8"]);
    }

    #[test]
    fn endless_lines_are_cut_at_max_line() {
        let mut big = vec![b'x'; MAX_LINE + 10];
        big.push(b'\n');
        let out = lines_of(&big);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), MAX_LINE);
        assert_eq!(out[1].len(), 10);
    }

    #[test]
    fn overlay_options_are_relative_to_the_common_ancestor_and_top_first() {
        let lowers = [PathBuf::from("/s/snap/b"), PathBuf::from("/s/snap/a")];
        let r = overlay_rootfs(
            &lowers,
            Path::new("/s/run/1/upper"),
            Path::new("/s/run/1/work"),
            false,
            false,
        )
        .unwrap();
        assert_eq!(
            r,
            PreparedRootfs::Overlay {
                base: "/s".into(),
                options: "lowerdir=snap/b:snap/a,upperdir=run/1/upper,workdir=run/1/work,metacopy=off,redirect_dir=off".into()
            }
        );
        let r = overlay_rootfs(&lowers, Path::new("/s/u"), Path::new("/s/w"), true, false).unwrap();
        assert!(
            matches!(&r, PreparedRootfs::Overlay { options, .. } if options.ends_with(",userxattr")),
            "{r:?}"
        );
        let r = overlay_rootfs(&lowers, Path::new("/s/u"), Path::new("/s/w"), false, true).unwrap();
        assert!(
            matches!(&r, PreparedRootfs::Overlay { options, .. } if options.ends_with(",redirect_dir=off,volatile")),
            "{r:?}"
        );
        let bad = [PathBuf::from("/s/a:b")];
        assert!(matches!(
            overlay_rootfs(&bad, Path::new("/s/u"), Path::new("/s/w"), false, false),
            Err(SandboxError::UnsupportedOverlayPath { .. })
        ));
    }

    #[test]
    fn volatile_needs_linux_5_10() {
        assert!(kernel_at_least("6.1.0-13-amd64", (5, 10)));
        assert!(kernel_at_least("5.10.0", (5, 10)));
        assert!(kernel_at_least("6.18.44-fc-v1272", (5, 10)));
        assert!(!kernel_at_least("5.4.0-150-generic", (5, 10)));
        assert!(!kernel_at_least("4.19.0", (5, 10)));
        assert!(!kernel_at_least("garbage", (5, 10)));
    }

    #[test]
    fn many_layers_switch_to_fsconfig_and_too_many_are_refused() {
        let many: Vec<PathBuf> =
            (0..200).map(|i| PathBuf::from(format!("/x/layer-{i:04}-0123456789"))).collect();
        let r = overlay_rootfs(&many, Path::new("/y/u"), Path::new("/y/w"), false, false).unwrap();
        let PreparedRootfs::OverlayFsConfig { base, params } = r else { panic!("{r:?}") };
        assert_eq!(base, Path::new("/"));
        assert_eq!(params.len(), 204);
        assert_eq!(
            params[0],
            ("lowerdir+".to_string(), Some("x/layer-0000-0123456789".to_string()))
        );
        assert_eq!(params[199].1.as_deref(), Some("x/layer-0199-0123456789"));
        assert_eq!(params[200], ("upperdir".to_string(), Some("y/u".to_string())));
        assert_eq!(params[203], ("redirect_dir".to_string(), Some("off".to_string())));
        let too_many: Vec<PathBuf> = (0..501).map(|i| PathBuf::from(format!("/x/{i}"))).collect();
        let err = overlay_rootfs(&too_many, Path::new("/y/u"), Path::new("/y/w"), false, false)
            .unwrap_err();
        assert!(matches!(err, SandboxError::TooManyLayers { count: 501, max: 500 }), "{err}");
    }

    #[test]
    fn request_errors_are_reported_before_anything_runs() {
        let req = RunRequest {
            rootfs: RootFs::Dir("/nonexistent-strata-rootfs".into()),
            argv: vec![],
            env: vec![],
            cwd: "/".into(),
            user: "".into(),
            network: Network::None,
            mounts: vec![],
            hostname: String::new(),
            extra_hosts: vec![],
            resources: Default::default(),
            insecure: false,
        };
        assert!(matches!(run(&req, &mut |_, _| {}), Err(SandboxError::EmptyArgv)));
        let req = RunRequest { argv: vec!["true".into()], cwd: "rel".into(), ..req };
        assert!(matches!(run(&req, &mut |_, _| {}), Err(SandboxError::BadContainerPath { .. })));
        let req = RunRequest { cwd: "/".into(), ..req };
        let err = run(&req, &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-strata-rootfs"), "{err}");
    }
}
