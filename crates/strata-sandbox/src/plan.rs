//! The mount plan: what the child does, in order, for one [`RunRequest`](crate::RunRequest).
//!
//! The parent gathers host facts (canonical paths, which devices exist, the resolved ids)
//! into a [`Prepared`] request; [`build`] turns that into a list of [`Op`]s without touching
//! the system. In order:
//!
//! 1. a single-id user namespace map (rootless without subordinate ids; `newuidmap` writes
//!    the others from the parent), hostname, loopback up (own net namespace only);
//! 2. `/` made recursively private, so nothing below propagates to the host;
//! 3. the rootfs mounted on a temp mountpoint: overlay (`lowerdir=TOP:...:BOTTOM`, with
//!    `metacopy=off,redirect_dir=off` so that the upperdir alone is the changeset; paths made
//!    relative to their common ancestor to stay under the one-page option limit), or a
//!    recursive bind of a plain directory;
//! 4. every other mount made *detached*, while the host is still visible: `/dev` (tmpfs),
//!    its device nodes, `/dev/pts`, `/dev/shm`, a procfs for the new pid namespace, `/sys`,
//!    `/etc/hosts` and `/etc/resolv.conf`, and the request's mounts. A bind source is opened
//!    by the child itself, resolved inside its root with `openat2(RESOLVE_IN_ROOT |
//!    RESOLVE_NO_MAGICLINKS)` (a symlink to `/` in a stage is that stage's root, a context
//!    symlink to `/etc` is `<context>/etc`), and the mount is cloned from that very fd
//!    (`open_tree`), so what was resolved is what is mounted: a parallel step swapping a
//!    directory for a symlink in between gains nothing (BuildKit's CVE-2024-23651). A
//!    source whose writes are to be discarded becomes an overlay with that fd as its
//!    lowerdir (`/proc/self/fd/N`) and an upperdir in the run's scratch dir;
//! 5. `pivot_root(".", ".")` and a lazy unmount of the old root: from here on, no path the
//!    child uses can reach the host, whatever the image's symlinks say;
//! 6. mountpoints created inside the new root (stubs, see below) and the detached mounts
//!    attached on targets resolved inside it, procfs last, then every slot fd closed, so
//!    nothing of the host is open when `/proc/self/fd` becomes reachable;
//! 7. `/proc` knobs made read-only and kernel views masked, `mkdir -p` of the working
//!    directory (owned by the user) and a `chdir` into it that follows no magic link,
//!    capabilities limited, ids dropped, and a PATH search with `execve` in the container.
//!
//! Mountpoints that did not exist in the rootfs are created as *stubs* and reported, so
//! that they can be removed from the upperdir afterwards (they are not the command's doing).

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::idmap::IdMap;
use crate::sys::{ExecArgs, Op, SLOT_BASE};
use crate::SandboxError;

/// Default PATH for the in-container search when the environment has none (Docker's).
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `/proc` entries bound read-only over themselves (skipped when absent).
const PROC_READ_ONLY: [&str; 5] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];
/// `/proc` files hidden under `/dev/null`.
const PROC_MASKED_FILES: [&str; 6] = [
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
];
/// `/proc` directories hidden under an empty read-only tmpfs.
const PROC_MASKED_DIRS: [&str; 3] = ["/proc/acpi", "/proc/asound", "/proc/scsi"];

/// How the rootfs is mounted on the mountpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PreparedRootfs {
    /// `mount -t overlay` after `chdir(base)`; `options` may use paths relative to `base`.
    Overlay { base: PathBuf, options: String },
    /// `fsopen("overlay")` + one `fsconfig` per `(key, value)` (`None`: a flag) + `fsmount` +
    /// `move_mount`, after `chdir(base)`: for stacks whose options exceed one page.
    OverlayFsConfig { base: PathBuf, params: Vec<(String, Option<String>)> },
    /// A recursive bind of this (canonical) directory.
    Bind(PathBuf),
}

/// Where a bind mount's tree comes from, as the child opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PreparedSource {
    /// A canonical host path strata made (cache-mount dir, secret file, device node).
    Host(PathBuf),
    /// `path` resolved inside the canonical directory `root`.
    InRoot { root: PathBuf, path: String },
    /// As `InRoot`, seen through an overlay whose upperdir and workdir (in the run's scratch
    /// dir) are thrown away: the step may write, the source never changes.
    Discarded { root: PathBuf, path: String, upper: PathBuf, work: PathBuf },
}

/// An extra mount with its host facts resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PreparedMount {
    /// Bind a tree.
    Bind { source: PreparedSource, target: String, is_dir: bool, read_only: bool },
    /// A fresh tmpfs.
    Tmpfs { target: String, size: Option<u64> },
}

/// Everything the plan depends on, gathered on the host by the parent.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// The user namespace's id map, when running without root.
    pub userns: Option<IdMap>,
    pub hostname: String,
    pub new_net: bool,
    /// The (empty, canonical) host directory the rootfs is mounted on.
    pub root_mountpoint: PathBuf,
    pub rootfs: PreparedRootfs,
    /// Device names under /dev and their canonical host paths.
    pub devices: Vec<(String, PathBuf)>,
    pub hosts_file: PathBuf,
    pub resolv_file: PathBuf,
    pub mounts: Vec<PreparedMount>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups; left alone under an [`IdMap::Single`] map (setgroups denied).
    pub groups: Vec<u32>,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub resources: crate::Resources,
    /// All capabilities kept (`RUN --security=insecure`).
    pub insecure: bool,
}

/// The ops plus what the parent needs to interpret the child's reports.
#[derive(Debug)]
pub(crate) struct Plan {
    pub ops: Vec<Op>,
    /// Container path of each stub-creating op, by op index.
    pub stub_paths: Vec<(usize, String)>,
}

impl Plan {
    /// The container path created by stub op `index`, if it is one.
    pub(crate) fn stub_path(&self, index: usize) -> Option<&str> {
        self.stub_paths.iter().find(|(i, _)| *i == index).map(|(_, p)| p.as_str())
    }
}

pub(crate) fn cstring(field: &'static str, s: &str) -> Result<CString, SandboxError> {
    CString::new(s).map_err(|_| SandboxError::NulByte { field, value: s.to_string() })
}

fn host_cstring(p: &Path) -> Result<CString, SandboxError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| SandboxError::NulByte { field: "host path", value: p.display().to_string() })
}

/// The components of an absolute container path, `.`/empty ones dropped; `..` is refused.
pub(crate) fn container_components<'a>(
    field: &'static str,
    path: &'a str,
) -> Result<Vec<&'a str>, SandboxError> {
    let bad = || SandboxError::BadContainerPath { field, value: path.to_string() };
    if !path.starts_with('/') {
        return Err(bad());
    }
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.contains(&"..") || path.contains('\0') {
        return Err(bad());
    }
    Ok(parts)
}

/// `/a`, `/a/b`, `/a/b/c` for `/a/b/c`.
fn prefixes(parts: &[&str]) -> Vec<String> {
    let mut acc = String::new();
    parts
        .iter()
        .map(|p| {
            acc.push('/');
            acc.push_str(p);
            acc.clone()
        })
        .collect()
}

/// The exec candidates: argv\[0\] itself when it has a `/`, else each PATH entry joined with it.
pub(crate) fn exec_candidates(argv0: &str, env: &[String]) -> (Vec<String>, String) {
    if argv0.contains('/') {
        return (vec![argv0.to_string()], String::new());
    }
    let path = env
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let candidates = path
        .split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir.trim_end_matches('/') };
            format!("{dir}/{argv0}")
        })
        .collect();
    (candidates, path)
}

struct Builder {
    ops: Vec<Op>,
    stub_paths: Vec<(usize, String)>,
    next_slot: i32,
}

/// `MOUNT_ATTR_*` bits (linux/mount.h).
pub(crate) const ATTR_RDONLY: u64 = 0x01;
pub(crate) const ATTR_NOSUID: u64 = 0x02;
pub(crate) const ATTR_NODEV: u64 = 0x04;
pub(crate) const ATTR_NOEXEC: u64 = 0x08;
pub(crate) const ATTR_STRICTATIME: u64 = 0x20;

/// The most slots a plan may use: slots are fds from [`SLOT_BASE`] up, and must stay below
/// the usual `RLIMIT_NOFILE` of 1024.
const MAX_SLOTS: i32 = 900;

impl Builder {
    fn push(&mut self, op: Op) {
        self.ops.push(op);
    }
    fn slot(&mut self) -> Result<i32, SandboxError> {
        let slot = self.next_slot;
        if slot >= SLOT_BASE + MAX_SLOTS {
            return Err(SandboxError::TooManyMounts { max: (MAX_SLOTS / 2) as usize });
        }
        self.next_slot += 1;
        Ok(slot)
    }
    fn mount(
        &mut self,
        source: Option<CString>,
        target: CString,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<String>,
    ) {
        self.push(Op::Mount {
            source,
            target,
            fstype: fstype.map(|f| CString::new(f).unwrap_or_default()),
            flags,
            data: data.map(|d| CString::new(d).unwrap_or_default()),
            optional: false,
        });
    }
    /// A mount that is skipped when its target does not exist.
    fn mount_optional(
        &mut self,
        source: Option<CString>,
        target: CString,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<String>,
    ) {
        self.mount(source, target, fstype, flags, data);
        if let Some(Op::Mount { optional, .. }) = self.ops.last_mut() {
            *optional = true;
        }
    }
    /// A new detached mount of `fstype`; its slot.
    fn new_mount(
        &mut self,
        fstype: &str,
        params: &[(&str, Option<&str>)],
        attrs: u64,
    ) -> Result<i32, SandboxError> {
        let slot = self.slot()?;
        let params = params
            .iter()
            .map(|(k, v)| {
                Ok((
                    cstring("mount option", k)?,
                    v.map(|v| cstring("mount option", v)).transpose()?,
                ))
            })
            .collect::<Result<Vec<_>, SandboxError>>()?;
        self.push(Op::NewMount { fstype: cstring("fstype", fstype)?, params, attrs, slot });
        Ok(slot)
    }
    /// An `O_PATH` fd of `root`, or of `path` resolved inside it; its slot.
    fn resolve(&mut self, root: &Path, path: Option<&str>) -> Result<i32, SandboxError> {
        let slot = self.slot()?;
        let path = path.map(|p| cstring("bind mount source", p)).transpose()?;
        self.push(Op::Resolve { root: host_cstring(root)?, path, slot });
        Ok(slot)
    }
    /// A detached copy of the tree at the fd in `from`; its slot.
    fn clone_tree(&mut self, from: i32, recursive: bool) -> Result<i32, SandboxError> {
        let slot = self.slot()?;
        self.push(Op::CloneTree { from, recursive, slot });
        Ok(slot)
    }
    fn attach(&mut self, slot: i32, target: &str, optional: bool) -> Result<(), SandboxError> {
        self.push(Op::Attach { slot, target: cstring("mount target", target)?, optional });
        Ok(())
    }
    fn stub_dir(&mut self, container_path: &str, optional: bool) -> Result<(), SandboxError> {
        self.stub_paths.push((self.ops.len(), container_path.to_string()));
        self.push(Op::Mkdir {
            path: cstring("mount target", container_path)?,
            mode: 0o755,
            stub: true,
            optional,
        });
        Ok(())
    }
    /// `mkdir -p` of the parents of `target` and the target itself (a dir, or an empty file).
    /// `optional`: failures are skipped (the mount is then skipped too).
    fn stub_target(
        &mut self,
        field: &'static str,
        target: &str,
        is_dir: bool,
        optional: bool,
    ) -> Result<String, SandboxError> {
        let parts = container_components(field, target)?;
        let all = prefixes(&parts);
        let Some((last, parents)) = all.split_last() else {
            return Err(SandboxError::BadContainerPath { field, value: target.to_string() });
        };
        for p in parents {
            self.stub_dir(p, optional)?;
        }
        if is_dir {
            self.stub_dir(last, optional)?;
        } else {
            self.stub_paths.push((self.ops.len(), last.clone()));
            self.push(Op::CreateFile { path: cstring(field, last)?, stub: true, optional });
        }
        Ok(last.clone())
    }
}

/// Turns a prepared request into the child's list of ops (no system access).
pub(crate) fn build(p: &Prepared) -> Result<Plan, SandboxError> {
    use libc::{
        MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT,
    };
    let c = |s: &str| CString::new(s).unwrap_or_default();
    let mut b = Builder { ops: Vec::new(), stub_paths: Vec::new(), next_slot: SLOT_BASE };

    // Subordinate maps are written by newuidmap/newgidmap from the parent (see child.rs),
    // which leaves setgroups allowed; a single-id map the child writes itself.
    if let Some(IdMap::Single { uid, gid, .. }) = p.userns {
        b.push(Op::WriteFile { path: c("/proc/self/setgroups"), data: b"deny".to_vec() });
        b.push(Op::WriteFile {
            path: c("/proc/self/uid_map"),
            data: format!("0 {uid} 1\n").into_bytes(),
        });
        b.push(Op::WriteFile {
            path: c("/proc/self/gid_map"),
            data: format!("0 {gid} 1\n").into_bytes(),
        });
    }
    b.push(Op::Hostname { name: cstring("hostname", &p.hostname)?.into_bytes() });
    if p.new_net {
        b.push(Op::LoopbackUp);
    }

    b.mount(None, c("/"), None, MS_REC | MS_PRIVATE, None);
    let root = host_cstring(&p.root_mountpoint)?;
    match &p.rootfs {
        PreparedRootfs::Overlay { base, options } => {
            b.push(Op::Chdir { path: host_cstring(base)? });
            b.mount(Some(c("overlay")), root.clone(), Some("overlay"), 0, Some(options.clone()));
        }
        PreparedRootfs::OverlayFsConfig { base, params } => {
            b.push(Op::Chdir { path: host_cstring(base)? });
            let params = params
                .iter()
                .map(|(k, v)| {
                    Ok((
                        cstring("overlay option", k)?,
                        v.as_deref().map(|v| cstring("overlay option", v)).transpose()?,
                    ))
                })
                .collect::<Result<Vec<_>, SandboxError>>()?;
            b.push(Op::MountFsConfig { fstype: c("overlay"), params, target: root.clone() });
        }
        PreparedRootfs::Bind(dir) => {
            b.mount(Some(host_cstring(dir)?), root.clone(), None, MS_BIND | MS_REC, None);
        }
    }

    // Detached mounts, while the host is visible: a procfs or sysfs in a user namespace
    // needs a fully visible one beside it, and bind sources live on the host.
    let dev = b.new_mount(
        "tmpfs",
        &[("mode", Some("755")), ("size", Some("65536k"))],
        ATTR_NOSUID | ATTR_STRICTATIME,
    )?;
    let mut devices = Vec::new();
    for (name, host) in &p.devices {
        let fd = b.resolve(host, None)?;
        devices.push((format!("/dev/{name}"), b.clone_tree(fd, false)?));
    }
    let mut pts_opts =
        vec![("newinstance", None), ("ptmxmode", Some("0666")), ("mode", Some("620"))];
    if p.userns.as_ref().is_none_or(|m| m.maps_gid(5)) {
        pts_opts.push(("gid", Some("5")));
    }
    let pts = b.new_mount("devpts", &pts_opts, ATTR_NOSUID | ATTR_NOEXEC)?;
    let shm_size = match p.resources.shm_size {
        Some(bytes) => bytes.to_string(),
        None => "65536k".to_string(),
    };
    let shm = b.new_mount(
        "tmpfs",
        &[("mode", Some("1777")), ("size", Some(shm_size.as_str()))],
        ATTR_NOSUID | ATTR_NODEV | ATTR_NOEXEC,
    )?;
    let proc = b.new_mount("proc", &[], ATTR_NOSUID | ATTR_NODEV | ATTR_NOEXEC)?;
    let ro_locked = ATTR_RDONLY | ATTR_NOSUID | ATTR_NODEV | ATTR_NOEXEC;
    let sys = if p.new_net {
        b.new_mount("sysfs", &[], ro_locked)?
    } else {
        let fd = b.resolve(Path::new("/sys"), None)?;
        let tree = b.clone_tree(fd, true)?;
        b.push(Op::SetAttrs { slot: tree, set: ro_locked, recursive: true });
        tree
    };
    let mut etc_files = Vec::new();
    for (target, host) in [("/etc/hosts", &p.hosts_file), ("/etc/resolv.conf", &p.resolv_file)] {
        let fd = b.resolve(host, None)?;
        etc_files.push((target, b.clone_tree(fd, false)?));
    }
    let mut extra = Vec::new();
    for m in &p.mounts {
        extra.push(match m {
            PreparedMount::Bind { source, target, is_dir, read_only } => {
                let tree = match source {
                    PreparedSource::Host(path) => {
                        let fd = b.resolve(path, None)?;
                        b.clone_tree(fd, *is_dir)?
                    }
                    PreparedSource::InRoot { root, path } => {
                        let fd = b.resolve(root, Some(path))?;
                        b.clone_tree(fd, *is_dir)?
                    }
                    PreparedSource::Discarded { root, path, upper, work } => {
                        let fd = b.resolve(root, Some(path))?;
                        let lower = format!("/proc/self/fd/{fd}");
                        let upper = host_str(upper)?;
                        let work = host_str(work)?;
                        let mut opts = vec![
                            ("lowerdir", Some(lower.as_str())),
                            ("upperdir", Some(upper.as_str())),
                            ("workdir", Some(work.as_str())),
                        ];
                        if p.userns.is_some() {
                            opts.push(("userxattr", None));
                        }
                        b.new_mount("overlay", &opts, 0)?
                    }
                };
                if *read_only {
                    b.push(Op::SetAttrs { slot: tree, set: ATTR_RDONLY, recursive: true });
                }
                (target.as_str(), *is_dir, tree)
            }
            PreparedMount::Tmpfs { target, size } => {
                let size = size.map(|n| n.to_string());
                let mut opts = vec![("mode", Some("755"))];
                if let Some(n) = &size {
                    opts.push(("size", Some(n.as_str())));
                }
                (target.as_str(), true, b.new_mount("tmpfs", &opts, ATTR_NOSUID | ATTR_NODEV)?)
            }
        });
    }

    // Into the new root; the old one is stacked on it by pivot_root(".", ".") and goes.
    b.push(Op::Chdir { path: root });
    b.push(Op::PivotRoot { new_root: c("."), put_old: c(".") });
    b.push(Op::UmountDetach { target: c(".") });
    b.push(Op::Chdir { path: c("/") });

    // /dev
    b.stub_dir("/dev", false)?;
    b.attach(dev, "/dev", false)?;
    for (target, tree) in &devices {
        b.push(Op::CreateFile { path: cstring("device", target)?, stub: false, optional: false });
        b.attach(*tree, target, false)?;
    }
    b.push(Op::Mkdir { path: c("/dev/pts"), mode: 0o755, stub: false, optional: false });
    b.attach(pts, "/dev/pts", false)?;
    for (target, link) in [
        ("pts/ptmx", "/dev/ptmx"),
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        b.push(Op::Symlink { target: c(target), link: c(link) });
    }
    b.push(Op::Mkdir { path: c("/dev/shm"), mode: 0o1777, stub: false, optional: false });
    b.attach(shm, "/dev/shm", false)?;

    // /sys, read-only
    b.stub_dir("/sys", false)?;
    b.attach(sys, "/sys", false)?;

    // /etc/hosts and /etc/resolv.conf, optional: an image's dangling symlink there (e.g. to
    // systemd-resolved), or an /etc that leads nowhere, is left alone.
    for (target, tree) in etc_files {
        let t = b.stub_target("mount target", target, false, true)?;
        b.attach(tree, &t, true)?;
    }

    // the request's mounts, in order
    for (target, is_dir, tree) in extra {
        let t = b.stub_target("mount target", target, is_dir, false)?;
        b.attach(tree, &t, false)?;
    }

    // procfs last, then nothing of the host stays open
    b.stub_dir("/proc", false)?;
    b.attach(proc, "/proc", false)?;
    b.push(Op::CloseSlots);
    // as Docker: kernel-wide knobs read-only, kernel-memory views masked
    let ro_flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
    for dir in PROC_READ_ONLY {
        b.mount_optional(Some(c(dir)), c(dir), None, MS_BIND | MS_REC, None);
        b.mount_optional(None, c(dir), None, MS_REMOUNT | MS_BIND | ro_flags, None);
    }
    for file in PROC_MASKED_FILES {
        b.mount_optional(Some(c("/dev/null")), c(file), None, MS_BIND, None);
    }
    for dir in PROC_MASKED_DIRS {
        b.mount_optional(Some(c("tmpfs")), c(dir), Some("tmpfs"), ro_flags, None);
    }

    // working directory, identity, exec
    let cwd_parts = container_components("cwd", &p.cwd)?;
    let cwd_prefixes =
        prefixes(&cwd_parts).iter().map(|s| cstring("cwd", s)).collect::<Result<Vec<_>, _>>()?;
    b.push(Op::MkdirAllOwned { prefixes: cwd_prefixes, uid: p.uid, gid: p.gid });
    b.push(Op::ChdirInRoot { path: cstring("cwd", &p.cwd)? });
    // Limits first: raising a hard limit needs CAP_SYS_RESOURCE, gone after the next ops.
    for u in &p.resources.ulimits {
        b.push(Op::SetRlimit {
            name: u.name(),
            resource: u.resource(),
            soft: u.soft(),
            hard: u.hard(),
        });
    }
    // An insecure step keeps every capability the sandbox's root has.
    if !p.insecure {
        b.push(Op::DropCaps { keep: crate::DEFAULT_CAPABILITIES });
    }
    let groups = match p.userns {
        Some(IdMap::Single { .. }) => None,
        _ => Some(p.groups.clone()),
    };
    b.push(Op::SetIds { uid: p.uid, gid: p.gid, groups });
    let Some(argv0) = p.argv.first() else {
        return Err(SandboxError::EmptyArgv);
    };
    let (candidates, _) = exec_candidates(argv0, &p.env);
    b.push(Op::Exec {
        candidates: candidates.iter().map(|s| cstring("argv", s)).collect::<Result<_, _>>()?,
        argv: ExecArgs::new(p.argv.iter().map(|s| cstring("argv", s)).collect::<Result<_, _>>()?),
        envp: ExecArgs::new(p.env.iter().map(|s| cstring("env", s)).collect::<Result<_, _>>()?),
    });

    Ok(Plan { ops: b.ops, stub_paths: b.stub_paths })
}

/// A host path as a string for a mount option (overlay's upper/work dirs).
fn host_str(p: &Path) -> Result<String, SandboxError> {
    match p.to_str() {
        Some(s) if !s.contains([',', ':', '\\']) => Ok(s.to_string()),
        _ => Err(SandboxError::UnsupportedOverlayPath { path: p.to_path_buf() }),
    }
}

/// A short human description of an op, for error messages.
pub(crate) fn describe(op: &Op) -> String {
    let s = |c: &CString| c.to_string_lossy().into_owned();
    match op {
        Op::Mount { source, target, fstype, flags, data, .. } => format!(
            "mount {} on {} (type {}, flags {}, options {})",
            source.as_ref().map_or("none".into(), s),
            s(target),
            fstype.as_ref().map_or("none".into(), s),
            flags_to_string(*flags),
            data.as_ref().map_or(String::new(), s)
        ),
        Op::MountFsConfig { fstype, params, target } => format!(
            "mount {} on {} through fsconfig ({} options, {} lowerdir+)",
            s(fstype),
            s(target),
            params.len(),
            params.iter().filter(|(k, _)| k.as_bytes() == b"lowerdir+").count()
        ),
        Op::Resolve { root, path: None, .. } => format!("open {}", s(root)),
        Op::Resolve { root, path: Some(path), .. } => {
            format!("resolve {} inside {}", s(path), s(root))
        }
        Op::CloneTree { .. } => "clone a bind mount source (open_tree)".into(),
        Op::NewMount { fstype, params, .. } => {
            let lower = params.iter().find(|(k, _)| k.as_bytes() == b"lowerdir");
            match lower {
                Some(_) => "create the overlay that discards a read-write bind's writes".into(),
                None => format!("create a {} mount", s(fstype)),
            }
        }
        Op::SetAttrs { set, .. } => format!("set mount attributes {}", attrs_to_string(*set)),
        Op::Attach { target, .. } => format!("mount on {}", s(target)),
        Op::CloseSlots => "close file descriptors".into(),
        Op::ChdirInRoot { path } => format!("chdir {}", s(path)),
        Op::UmountDetach { target } => format!("umount2 {} MNT_DETACH", s(target)),
        Op::PivotRoot { new_root, put_old } => format!("pivot_root {} {}", s(new_root), s(put_old)),
        Op::Chdir { path } => format!("chdir {}", s(path)),
        Op::Mkdir { path, .. } => format!("mkdir {}", s(path)),
        Op::CreateFile { path, .. } => format!("create mountpoint file {}", s(path)),
        Op::Symlink { target, link } => format!("symlink {} -> {}", s(link), s(target)),
        Op::MkdirAllOwned { prefixes, uid, gid } => {
            format!("mkdir -p {} (owner {uid}:{gid})", prefixes.last().map_or("/".into(), s))
        }
        Op::WriteFile { path, .. } => format!("write {}", s(path)),
        Op::Unlink { path } => format!("unlink {}", s(path)),
        Op::Hostname { name } => format!("sethostname {}", String::from_utf8_lossy(name)),
        Op::LoopbackUp => "bring up loopback interface lo".into(),
        Op::DropCaps { keep } => format!("limit capabilities to {keep:#x}"),
        Op::SetRlimit { name, soft, hard, .. } => format!("set ulimit {name} to {soft}:{hard}"),
        Op::SetIds { uid, gid, groups } => format!("set uid {uid}, gid {gid}, groups {groups:?}"),
        Op::Exec { argv, .. } => format!(
            "exec {}",
            argv.strings().first().map_or(String::new(), |a| a.to_string_lossy().into_owned())
        ),
    }
}

/// `MOUNT_ATTR_*` bits as `RDONLY|NOSUID` (for messages and the recorded plan).
pub(crate) fn attrs_to_string(attrs: u64) -> String {
    let names = [
        (ATTR_RDONLY, "RDONLY"),
        (ATTR_NOSUID, "NOSUID"),
        (ATTR_NODEV, "NODEV"),
        (ATTR_NOEXEC, "NOEXEC"),
        (ATTR_STRICTATIME, "STRICTATIME"),
    ];
    let parts: Vec<&str> = names.iter().filter(|(f, _)| attrs & f != 0).map(|(_, n)| *n).collect();
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join("|")
    }
}

/// Mount flags as `MS_A|MS_B` (for messages and the recorded plan).
pub(crate) fn flags_to_string(flags: libc::c_ulong) -> String {
    let names: [(libc::c_ulong, &str); 14] = [
        (libc::MS_RDONLY, "MS_RDONLY"),
        (libc::MS_NOSUID, "MS_NOSUID"),
        (libc::MS_NODEV, "MS_NODEV"),
        (libc::MS_NOEXEC, "MS_NOEXEC"),
        (libc::MS_REMOUNT, "MS_REMOUNT"),
        (libc::MS_BIND, "MS_BIND"),
        (libc::MS_REC, "MS_REC"),
        (libc::MS_PRIVATE, "MS_PRIVATE"),
        (libc::MS_SLAVE, "MS_SLAVE"),
        (libc::MS_STRICTATIME, "MS_STRICTATIME"),
        (libc::MS_NOATIME, "MS_NOATIME"),
        (libc::MS_NODIRATIME, "MS_NODIRATIME"),
        (libc::MS_RELATIME, "MS_RELATIME"),
        (libc::MS_MOVE, "MS_MOVE"),
    ];
    let parts: Vec<&str> = names.iter().filter(|(f, _)| flags & f != 0).map(|(_, n)| *n).collect();
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join("|")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{execute, RecordingSyscalls};
    use rustix::io::Errno;

    fn prepared() -> Prepared {
        Prepared {
            userns: None,
            hostname: "box".into(),
            new_net: true,
            root_mountpoint: "/tmp/s/root".into(),
            rootfs: PreparedRootfs::Overlay {
                base: "/store".into(),
                options:
                    "lowerdir=l/top:l/bottom,upperdir=up,workdir=wk,metacopy=off,redirect_dir=off"
                        .into(),
            },
            devices: vec![("null".into(), "/dev/null".into())],
            hosts_file: "/tmp/s/hosts".into(),
            resolv_file: "/tmp/s/resolv.conf".into(),
            mounts: vec![
                PreparedMount::Bind {
                    source: PreparedSource::Host("/host/cache".into()),
                    target: "/root/.cache".into(),
                    is_dir: true,
                    read_only: true,
                },
                PreparedMount::Tmpfs { target: "/tmp".into(), size: Some(4096) },
                PreparedMount::Bind {
                    source: PreparedSource::InRoot { root: "/ctx".into(), path: "src".into() },
                    target: "/src".into(),
                    is_dir: true,
                    read_only: true,
                },
                PreparedMount::Bind {
                    source: PreparedSource::Discarded {
                        root: "/stage".into(),
                        path: "/".into(),
                        upper: "/tmp/s/bind-3/upper".into(),
                        work: "/tmp/s/bind-3/work".into(),
                    },
                    target: "/rw".into(),
                    is_dir: true,
                    read_only: false,
                },
            ],
            cwd: "/app/src".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 2000],
            argv: vec!["make".into(), "all".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "A=1".into()],
            resources: Default::default(),
            insecure: false,
        }
    }

    #[test]
    fn ulimits_shm_size_and_insecure_change_the_plan() {
        let sys = || RecordingSyscalls {
            existing: ["/etc", "/root", "/app"].iter().map(|s| s.to_string()).collect(),
            executables: vec!["/bin/make".into()],
            ..Default::default()
        };
        let mut p = prepared();
        p.resources.ulimits = vec!["nofile=100:200".parse().unwrap()];
        p.resources.shm_size = Some(1 << 20);
        let mut rec = sys();
        record(&p, &mut rec).unwrap();
        let calls = rec.calls.join("\n");
        assert!(calls.contains("new_mount tmpfs mode=1777,size=1048576 NOSUID|NODEV|NOEXEC"));
        let at = |prefix: &str| rec.calls.iter().position(|c| c.starts_with(prefix)).unwrap();
        let nofile = libc::RLIMIT_NOFILE;
        let limit = at(&format!("setrlimit {nofile} 100:200"));
        // Before privileges go: raising a hard limit needs CAP_SYS_RESOURCE.
        assert!(limit < at("drop_caps") && at("drop_caps") < at("set_ids"), "{calls}");
        p.insecure = true;
        let mut rec = sys();
        record(&p, &mut rec).unwrap();
        assert!(!rec.calls.iter().any(|c| c.starts_with("drop_caps")), "{:?}", rec.calls);
    }

    fn record(p: &Prepared, sys: &mut RecordingSyscalls) -> Result<(), crate::sys::Failure> {
        let plan = build(p).unwrap();
        execute(&plan.ops, sys)
    }

    #[test]
    fn full_plan_in_order() {
        let mut sys = RecordingSyscalls {
            existing: ["/etc", "/root", "/app"].iter().map(|s| s.to_string()).collect(),
            executables: vec!["/bin/make".into()],
            ..Default::default()
        };
        record(&prepared(), &mut sys).unwrap();
        let want = [
            "sethostname box",
            "loopback_up",
            "mount - / - MS_REC|MS_PRIVATE -",
            "chdir /store",
            "mount overlay /tmp/s/root overlay 0 lowerdir=l/top:l/bottom,upperdir=up,workdir=wk,metacopy=off,redirect_dir=off",
            "new_mount tmpfs mode=755,size=65536k NOSUID|STRICTATIME -> fd 10",
            "resolve /dev/null -> fd 11",
            "clone_tree fd 11 -> fd 12",
            "new_mount devpts newinstance,ptmxmode=0666,mode=620,gid=5 NOSUID|NOEXEC -> fd 13",
            "new_mount tmpfs mode=1777,size=65536k NOSUID|NODEV|NOEXEC -> fd 14",
            "new_mount proc - NOSUID|NODEV|NOEXEC -> fd 15",
            "new_mount sysfs - RDONLY|NOSUID|NODEV|NOEXEC -> fd 16",
            "resolve /tmp/s/hosts -> fd 17",
            "clone_tree fd 17 -> fd 18",
            "resolve /tmp/s/resolv.conf -> fd 19",
            "clone_tree fd 19 -> fd 20",
            "resolve /host/cache -> fd 21",
            "clone_tree fd 21 recursive -> fd 22",
            "set_attrs fd 22 RDONLY recursive",
            "new_mount tmpfs mode=755,size=4096 NOSUID|NODEV -> fd 23",
            "resolve /ctx in-root src -> fd 24",
            "clone_tree fd 24 recursive -> fd 25",
            "set_attrs fd 25 RDONLY recursive",
            "resolve /stage in-root / -> fd 26",
            "new_mount overlay lowerdir=/proc/self/fd/26,upperdir=/tmp/s/bind-3/upper,workdir=/tmp/s/bind-3/work 0 -> fd 27",
            "chdir /tmp/s/root",
            "pivot_root . .",
            "umount2 . MNT_DETACH",
            "chdir /",
            "mkdir /dev 755",
            "stub #29",
            "attach fd 10 /dev",
            "create /dev/null",
            "attach fd 12 /dev/null",
            "mkdir /dev/pts 755",
            "attach fd 13 /dev/pts",
            "symlink pts/ptmx /dev/ptmx",
            "symlink /proc/self/fd /dev/fd",
            "symlink /proc/self/fd/0 /dev/stdin",
            "symlink /proc/self/fd/1 /dev/stdout",
            "symlink /proc/self/fd/2 /dev/stderr",
            "mkdir /dev/shm 1777",
            "attach fd 14 /dev/shm",
            "mkdir /sys 755",
            "stub #42",
            "attach fd 16 /sys",
            "mkdir /etc 755",
            "create /etc/hosts",
            "stub #45",
            "attach fd 18 /etc/hosts",
            "mkdir /etc 755",
            "create /etc/resolv.conf",
            "stub #48",
            "attach fd 20 /etc/resolv.conf",
            "mkdir /root 755",
            "mkdir /root/.cache 755",
            "stub #51",
            "attach fd 22 /root/.cache",
            "mkdir /tmp 755",
            "stub #53",
            "attach fd 23 /tmp",
            "mkdir /src 755",
            "stub #55",
            "attach fd 25 /src",
            "mkdir /rw 755",
            "stub #57",
            "attach fd 27 /rw",
            "mkdir /proc 755",
            "stub #59",
            "attach fd 15 /proc",
            "close_from 10",
            "mount /proc/bus /proc/bus - MS_BIND|MS_REC -",
            "mount - /proc/bus - MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC|MS_REMOUNT|MS_BIND -",
            "mount /proc/fs /proc/fs - MS_BIND|MS_REC -",
            "mount - /proc/fs - MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC|MS_REMOUNT|MS_BIND -",
            "mount /proc/irq /proc/irq - MS_BIND|MS_REC -",
            "mount - /proc/irq - MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC|MS_REMOUNT|MS_BIND -",
            "mount /proc/sys /proc/sys - MS_BIND|MS_REC -",
            "mount - /proc/sys - MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC|MS_REMOUNT|MS_BIND -",
            "mount /proc/sysrq-trigger /proc/sysrq-trigger - MS_BIND|MS_REC -",
            "mount - /proc/sysrq-trigger - MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC|MS_REMOUNT|MS_BIND -",
            "mount /dev/null /proc/kcore - MS_BIND -",
            "mount /dev/null /proc/keys - MS_BIND -",
            "mount /dev/null /proc/latency_stats - MS_BIND -",
            "mount /dev/null /proc/timer_list - MS_BIND -",
            "mount /dev/null /proc/timer_stats - MS_BIND -",
            "mount /dev/null /proc/sched_debug - MS_BIND -",
            "mount tmpfs /proc/acpi tmpfs MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC -",
            "mount tmpfs /proc/asound tmpfs MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC -",
            "mount tmpfs /proc/scsi tmpfs MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC -",
            "mkdir /app 755",
            "mkdir /app/src 755",
            "chown /app/src 1000:1000",
            "chdir_in_root /app/src",
            "drop_caps keep=0xa80425fb",
            "set_ids 1000 1000 Some([1000, 2000])",
            "execve /usr/bin/make [\"make\", \"all\"] [\"PATH=/usr/bin:/bin\", \"A=1\"]",
            "execve /bin/make [\"make\", \"all\"] [\"PATH=/usr/bin:/bin\", \"A=1\"]",
        ];
        assert_eq!(sys.calls, want);
    }

    #[test]
    fn a_long_stack_mounts_through_fsconfig() {
        let mut p = prepared();
        p.rootfs = PreparedRootfs::OverlayFsConfig {
            base: "/store".into(),
            params: vec![
                ("lowerdir+".into(), Some("l/top".into())),
                ("lowerdir+".into(), Some("l/bottom".into())),
                ("upperdir".into(), Some("up".into())),
                ("workdir".into(), Some("wk".into())),
                ("userxattr".into(), None),
            ],
        };
        let mut sys = RecordingSyscalls::default();
        let _ = record(&p, &mut sys);
        assert_eq!(
            sys.calls[3..6],
            [
                "chdir /store",
                "fsmount overlay /tmp/s/root lowerdir+=l/top,lowerdir+=l/bottom,upperdir=up,workdir=wk,userxattr",
                "new_mount tmpfs mode=755,size=65536k NOSUID|STRICTATIME -> fd 10",
            ]
        );
        let plan = build(&p).unwrap();
        assert_eq!(
            describe(&plan.ops[4]),
            "mount overlay on /tmp/s/root through fsconfig (5 options, 2 lowerdir+)"
        );
    }

    #[test]
    fn stub_indices_map_to_container_paths() {
        let plan = build(&prepared()).unwrap();
        let stubs: Vec<&str> = plan.stub_paths.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(
            stubs,
            [
                "/dev",
                "/sys",
                "/etc",
                "/etc/hosts",
                "/etc",
                "/etc/resolv.conf",
                "/root",
                "/root/.cache",
                "/tmp",
                "/src",
                "/rw",
                "/proc"
            ]
        );
        assert_eq!(plan.stub_path(29), Some("/dev"));
        assert_eq!(plan.stub_path(30), None);
    }

    #[test]
    fn host_network_binds_sys_read_only_and_plain_dir_is_bound() {
        let mut p = prepared();
        p.new_net = false;
        p.rootfs = PreparedRootfs::Bind("/work/rootfs".into());
        let mut sys = RecordingSyscalls::default();
        let _ = record(&p, &mut sys);
        let calls = sys.calls.join("\n");
        assert!(!calls.contains("loopback_up"));
        assert!(calls.contains("mount /work/rootfs /tmp/s/root - MS_BIND|MS_REC -"), "{calls}");
        assert!(calls.contains(
            "resolve /sys -> fd 16\nclone_tree fd 16 recursive -> fd 17\nset_attrs fd 17 RDONLY|NOSUID|NODEV|NOEXEC recursive"
        ), "{calls}");
        assert!(calls.contains("attach fd 17 /sys"), "{calls}");
    }

    #[test]
    fn rootless_maps_ids_first_and_keeps_groups() {
        let mut p = prepared();
        p.userns = Some(IdMap::Single { uid: 1234, gid: 5678, why: "none".into() });
        p.uid = 0;
        p.gid = 0;
        let mut sys = RecordingSyscalls::default();
        let _ = record(&p, &mut sys);
        assert_eq!(
            sys.calls[..3],
            [
                "write /proc/self/setgroups \"deny\"",
                "write /proc/self/uid_map \"0 1234 1\\n\"",
                "write /proc/self/gid_map \"0 5678 1\\n\""
            ]
        );
        assert!(sys.calls.iter().any(|c| c == "set_ids 0 0 None"));
        assert!(sys.calls.iter().any(|c| c.contains("newinstance,ptmxmode=0666,mode=620 ")));
    }

    #[test]
    fn subordinate_maps_leave_the_maps_to_the_parent_and_keep_setgroups() {
        let mut p = prepared();
        p.userns = Some(IdMap::Subordinate {
            uid: 1234,
            gid: 5678,
            uids: vec![crate::idmap::SubIdRange { start: 100000, count: 65536 }],
            gids: vec![crate::idmap::SubIdRange { start: 100000, count: 65536 }],
            newuidmap: "/usr/bin/newuidmap".into(),
            newgidmap: "/usr/bin/newgidmap".into(),
        });
        let mut sys = RecordingSyscalls::default();
        let _ = record(&p, &mut sys);
        assert_eq!(sys.calls[0], "sethostname box", "no map writes in the child");
        assert!(!sys.calls.iter().any(|c| c.starts_with("write ")), "{:?}", sys.calls);
        assert!(sys.calls.iter().any(|c| c == "set_ids 1000 1000 Some([1000, 2000])"));
        assert!(sys.calls.iter().any(|c| c.contains("mode=620,gid=5 ")));
    }

    #[test]
    fn exec_search_order_and_errors() {
        let mut p = prepared();
        p.argv = vec!["tool".into()];
        p.env = vec!["PATH=/a::/b/".into()];
        let mut sys = RecordingSyscalls::default();
        let err = record(&p, &mut sys).unwrap_err();
        assert_eq!(err.errno, Errno::NOENT);
        let tried: Vec<&str> = sys
            .calls
            .iter()
            .filter_map(|c| c.strip_prefix("execve "))
            .map(|c| c.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(tried, ["/a/tool", "./tool", "/b/tool"]);

        let (c, path) = exec_candidates("ls", &[]);
        assert_eq!(path, DEFAULT_PATH);
        assert_eq!(c[0], "/usr/local/sbin/ls");
        assert_eq!(exec_candidates("./x", &["PATH=/bin".into()]).0, ["./x"]);
    }

    #[test]
    fn a_failing_step_stops_the_plan_and_is_described() {
        let mut sys = RecordingSyscalls {
            fail_on: Some(("pivot_root".into(), Errno::INVAL)),
            ..Default::default()
        };
        let plan = build(&prepared()).unwrap();
        let f = execute(&plan.ops, &mut sys).unwrap_err();
        assert_eq!(f.errno, Errno::INVAL);
        assert_eq!(sys.calls.last().unwrap(), "pivot_root . .");
        assert_eq!(describe(&plan.ops[f.index]), "pivot_root . .");
    }

    #[test]
    fn bad_container_paths_are_refused() {
        for bad in ["relative", "/a/../b", ""] {
            let mut p = prepared();
            p.cwd = bad.into();
            assert!(matches!(build(&p), Err(SandboxError::BadContainerPath { .. })), "{bad}");
        }
        let mut p = prepared();
        p.mounts = vec![PreparedMount::Tmpfs { target: "/".into(), size: None }];
        assert!(matches!(build(&p), Err(SandboxError::BadContainerPath { .. })));
        let mut p = prepared();
        p.env = vec!["A=\0".into()];
        assert!(matches!(build(&p), Err(SandboxError::NulByte { field: "env", .. })));
    }
}
