//! The system calls the sandboxed child makes, behind a trait, and the plan interpreter.
//!
//! The child is created by a raw `clone` from a (possibly) multi-threaded parent, so it may
//! only make async-signal-safe calls: no allocation, no locks. Everything it needs (C strings,
//! pointer arrays) is therefore computed beforehand into a [`Plan`](crate::plan::Plan) of
//! [`Op`]s, and the child only walks that list calling [`Syscalls`] methods. The real
//! implementation calls `libc` directly; the recording fake used by the unit tests writes
//! down each call, so a request's mount plan can be checked without root.

use std::ffi::{c_char, CStr, CString};

use rustix::io::Errno;

/// The fd the status pipe is moved to in the child; every fd above it is closed before the
/// plan runs, so nothing the parent (or whoever started it) left open reaches the step.
pub(crate) const STATUS_FD: i32 = 3;

/// The first fd number the plan's slots use (see [`Op::Resolve`]).
pub(crate) const SLOT_BASE: i32 = 10;

/// One step of the child's setup. Paths are C strings prepared by the parent.
///
/// Detached mounts are kept in *slots*, fixed fd numbers from [`SLOT_BASE`] on chosen by the
/// plan, so that a later op can name them (and a mount option can say `/proc/self/fd/N`).
#[derive(Debug)]
pub(crate) enum Op {
    /// `mount(2)`. `optional`: a missing target (ENOENT, ENOTDIR) is skipped.
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
        optional: bool,
    },
    /// The new mount API: `fsopen(fstype)`, `fsconfig` for each `(key, value)` (a flag when
    /// `None`), create, `fsmount`, `move_mount` onto `target`.
    MountFsConfig { fstype: CString, params: Vec<(CString, Option<CString>)>, target: CString },
    /// An `O_PATH` fd at `slot`: of `root` itself (a path strata made), or of `path` resolved
    /// inside the directory `root` as if it were `/` (`openat2` with `RESOLVE_IN_ROOT |
    /// RESOLVE_NO_MAGICLINKS`): symlinks, absolute or `..`, never leave it.
    Resolve { root: CString, path: Option<CString>, slot: i32 },
    /// `open_tree(OPEN_TREE_CLONE)` of the fd at `from`: a detached copy of the mount tree at
    /// what it names (with the mounts below it when `recursive`), at `slot`.
    CloneTree { from: i32, recursive: bool, slot: i32 },
    /// A new detached mount: `fsopen(fstype)`, `fsconfig` per param, `fsmount` with the
    /// `MOUNT_ATTR_*` bits `attrs`, at `slot`.
    NewMount { fstype: CString, params: Vec<(CString, Option<CString>)>, attrs: u64, slot: i32 },
    /// `mount_setattr` on the detached tree at `slot`: sets the `MOUNT_ATTR_*` bits `set`
    /// and clears none, so flags a user namespace locks stay as they are.
    SetAttrs { slot: i32, set: u64, recursive: bool },
    /// Attaches the detached mount at `slot` (`move_mount`) on `target`, a path resolved inside
    /// the current root (`RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`). `optional`: a target that
    /// does not resolve (ENOENT, ENOTDIR, ELOOP) is skipped.
    Attach { slot: i32, target: CString, optional: bool },
    /// Closes every slot.
    CloseSlots,
    /// `umount2(target, MNT_DETACH)`.
    UmountDetach { target: CString },
    /// `pivot_root(new_root, put_old)`.
    PivotRoot { new_root: CString, put_old: CString },
    /// `chdir(2)`.
    Chdir { path: CString },
    /// `fchdir` to `path` resolved inside the root without magic links (the working
    /// directory: `/proc/self/fd/N` and the like never lead out).
    ChdirInRoot { path: CString },
    /// `mkdir(path, mode)`, an existing entry is fine. `stub` = created only as a mountpoint:
    /// reported to the parent (by op index) when it was actually created. `optional`: any
    /// other failure is skipped.
    Mkdir { path: CString, mode: u32, stub: bool, optional: bool },
    /// Create an empty regular file if missing (a mountpoint for a file bind); `stub` and
    /// `optional` as for [`Op::Mkdir`].
    CreateFile { path: CString, stub: bool, optional: bool },
    /// `symlink(target, link)`; an existing entry is fine.
    Symlink { target: CString, link: CString },
    /// `mkdir -p` of a working directory: each prefix is created if missing and then chowned.
    MkdirAllOwned { prefixes: Vec<CString>, uid: u32, gid: u32 },
    /// Write `data` to an existing file (uid_map, gid_map, setgroups).
    WriteFile { path: CString, data: Vec<u8> },
    /// `unlink(2)` (used by the overlay probe).
    Unlink { path: CString },
    /// `sethostname(2)`.
    Hostname { name: Vec<u8> },
    /// Bring the loopback interface up (`SIOCSIFFLAGS` on a socket).
    LoopbackUp,
    /// Limit capabilities to `keep` (a bit mask): bounding set, ambient set cleared,
    /// effective/permitted/inheritable.
    DropCaps { keep: u64 },
    /// `setrlimit(2)` of `resource` (`RLIMIT_*`; `name` is Docker's, for messages).
    SetRlimit { name: &'static str, resource: u32, soft: u64, hard: u64 },
    /// `setgroups`, `setresgid`, `setresuid`, in that order. `groups = None`: leave them
    /// (a user namespace with `setgroups` denied).
    SetIds { uid: u32, gid: u32, groups: Option<Vec<u32>> },
    /// Try `execve` on each candidate path in turn (a PATH search done in the container).
    Exec { candidates: Vec<CString>, argv: ExecArgs, envp: ExecArgs },
}

/// A NULL-terminated `char *[]` together with the strings it points into.
#[derive(Debug)]
pub(crate) struct ExecArgs {
    strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl ExecArgs {
    pub(crate) fn new(strings: Vec<CString>) -> Self {
        let mut ptrs: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        ExecArgs { strings, ptrs }
    }
    pub(crate) fn strings(&self) -> &[CString] {
        &self.strings
    }
    pub(crate) fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }
}

/// Where and why the child's setup stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    /// Index of the failing op in the plan.
    pub index: usize,
    /// Its errno.
    pub errno: Errno,
}

/// The side effects of sandbox setup. Implementations used in the child must not allocate.
pub(crate) trait Syscalls {
    fn mount(
        &mut self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> Result<(), Errno>;
    fn mount_fsconfig(
        &mut self,
        fstype: &CStr,
        params: &[(CString, Option<CString>)],
        target: &CStr,
    ) -> Result<(), Errno>;
    /// [`Op::Resolve`]: the fd goes to `slot`.
    fn resolve(&mut self, root: &CStr, path: Option<&CStr>, slot: i32) -> Result<(), Errno>;
    /// [`Op::CloneTree`].
    fn clone_tree(&mut self, from: i32, recursive: bool, slot: i32) -> Result<(), Errno>;
    /// [`Op::NewMount`].
    fn new_mount(
        &mut self,
        fstype: &CStr,
        params: &[(CString, Option<CString>)],
        attrs: u64,
        slot: i32,
    ) -> Result<(), Errno>;
    /// [`Op::SetAttrs`].
    fn set_attrs(&mut self, slot: i32, set: u64, recursive: bool) -> Result<(), Errno>;
    /// [`Op::Attach`] (never optional here).
    fn attach(&mut self, slot: i32, target: &CStr) -> Result<(), Errno>;
    /// Closes every fd from `first` on.
    fn close_from(&mut self, first: i32);
    /// [`Op::ChdirInRoot`].
    fn chdir_in_root(&mut self, path: &CStr) -> Result<(), Errno>;
    fn umount_detach(&mut self, target: &CStr) -> Result<(), Errno>;
    fn pivot_root(&mut self, new_root: &CStr, put_old: &CStr) -> Result<(), Errno>;
    fn chdir(&mut self, path: &CStr) -> Result<(), Errno>;
    /// `Ok(true)` when created, `Ok(false)` when something already existed there.
    fn mkdir(&mut self, path: &CStr, mode: u32) -> Result<bool, Errno>;
    /// `Ok(true)` when created, `Ok(false)` when something already existed there.
    fn create_file(&mut self, path: &CStr) -> Result<bool, Errno>;
    fn symlink(&mut self, target: &CStr, link: &CStr) -> Result<(), Errno>;
    fn chown(&mut self, path: &CStr, uid: u32, gid: u32) -> Result<(), Errno>;
    fn write_file(&mut self, path: &CStr, data: &[u8]) -> Result<(), Errno>;
    fn unlink(&mut self, path: &CStr) -> Result<(), Errno>;
    fn sethostname(&mut self, name: &[u8]) -> Result<(), Errno>;
    fn loopback_up(&mut self) -> Result<(), Errno>;
    fn drop_caps(&mut self, keep: u64) -> Result<(), Errno>;
    fn setrlimit(&mut self, resource: u32, soft: u64, hard: u64) -> Result<(), Errno>;
    fn set_ids(&mut self, uid: u32, gid: u32, groups: Option<&[u32]>) -> Result<(), Errno>;
    /// Replaces the process on success, so the real implementation only returns errors;
    /// `Ok(())` means "the process was replaced" (only a fake can say that).
    fn execve(&mut self, path: &CStr, argv: &ExecArgs, envp: &ExecArgs) -> Result<(), Errno>;
    /// Tells the parent that op `index` created a mountpoint stub.
    fn report_stub(&mut self, index: usize);
}

/// Runs `ops` in order; stops at the first failure.
pub(crate) fn execute<S: Syscalls>(ops: &[Op], sys: &mut S) -> Result<(), Failure> {
    for (index, op) in ops.iter().enumerate() {
        let fail = |errno| Failure { index, errno };
        match op {
            Op::Mount { source, target, fstype, flags, data, optional } => {
                let r = sys.mount(
                    source.as_deref(),
                    target,
                    fstype.as_deref(),
                    *flags,
                    data.as_deref(),
                );
                match r {
                    Err(e) if *optional && (e == Errno::NOENT || e == Errno::NOTDIR) => {}
                    r => r.map_err(fail)?,
                }
            }
            Op::MountFsConfig { fstype, params, target } => {
                sys.mount_fsconfig(fstype, params, target).map_err(fail)?
            }
            Op::Resolve { root, path, slot } => {
                sys.resolve(root, path.as_deref(), *slot).map_err(fail)?
            }
            Op::CloneTree { from, recursive, slot } => {
                sys.clone_tree(*from, *recursive, *slot).map_err(fail)?
            }
            Op::NewMount { fstype, params, attrs, slot } => {
                sys.new_mount(fstype, params, *attrs, *slot).map_err(fail)?
            }
            Op::SetAttrs { slot, set, recursive } => {
                sys.set_attrs(*slot, *set, *recursive).map_err(fail)?
            }
            Op::Attach { slot, target, optional } => match sys.attach(*slot, target) {
                Err(e)
                    if *optional
                        && (e == Errno::NOENT || e == Errno::NOTDIR || e == Errno::LOOP) => {}
                r => r.map_err(fail)?,
            },
            Op::CloseSlots => sys.close_from(SLOT_BASE),
            Op::ChdirInRoot { path } => sys.chdir_in_root(path).map_err(fail)?,
            Op::UmountDetach { target } => sys.umount_detach(target).map_err(fail)?,
            Op::PivotRoot { new_root, put_old } => {
                sys.pivot_root(new_root, put_old).map_err(fail)?
            }
            Op::Chdir { path } => sys.chdir(path).map_err(fail)?,
            Op::Mkdir { path, mode, stub, optional } => match sys.mkdir(path, *mode) {
                Ok(created) if created && *stub => sys.report_stub(index),
                Ok(_) => {}
                Err(_) if *optional => {}
                Err(e) => return Err(fail(e)),
            },
            Op::CreateFile { path, stub, optional } => match sys.create_file(path) {
                Ok(created) if created && *stub => sys.report_stub(index),
                Ok(_) => {}
                Err(_) if *optional => {}
                Err(e) => return Err(fail(e)),
            },
            Op::Symlink { target, link } => sys.symlink(target, link).map_err(fail)?,
            Op::MkdirAllOwned { prefixes, uid, gid } => {
                for p in prefixes {
                    if sys.mkdir(p, 0o755).map_err(fail)? {
                        sys.chown(p, *uid, *gid).map_err(fail)?;
                    }
                }
            }
            Op::WriteFile { path, data } => sys.write_file(path, data).map_err(fail)?,
            Op::Unlink { path } => sys.unlink(path).map_err(fail)?,
            Op::Hostname { name } => sys.sethostname(name).map_err(fail)?,
            Op::LoopbackUp => sys.loopback_up().map_err(fail)?,
            Op::DropCaps { keep } => sys.drop_caps(*keep).map_err(fail)?,
            Op::SetRlimit { resource, soft, hard, .. } => {
                sys.setrlimit(*resource, *soft, *hard).map_err(fail)?
            }
            Op::SetIds { uid, gid, groups } => {
                sys.set_ids(*uid, *gid, groups.as_deref()).map_err(fail)?
            }
            Op::Exec { candidates, argv, envp } => {
                let mut denied = false;
                let mut last = Errno::NOENT;
                for path in candidates {
                    match sys.execve(path, argv, envp) {
                        Ok(()) => return Ok(()),
                        Err(e) if e == Errno::NOENT || e == Errno::NOTDIR => last = e,
                        Err(e) if e == Errno::ACCESS => denied = true,
                        Err(e) => return Err(fail(e)),
                    }
                }
                return Err(fail(if denied { Errno::ACCESS } else { last }));
            }
        }
    }
    Ok(())
}

/// The real system calls, for the child process. `status_fd` is the write end of the
/// status pipe (close-on-exec) on which stub reports are sent.
pub(crate) struct RealSyscalls {
    pub status_fd: i32,
}

fn check(ret: libc::c_int) -> Result<(), Errno> {
    if ret == -1 {
        Err(Errno::from_raw_os_error(last_errno()))
    } else {
        Ok(())
    }
}

fn last_errno() -> i32 {
    // SAFETY: errno location is thread-local and always valid.
    unsafe { *libc::__errno_location() }
}

fn opt_ptr(s: Option<&CStr>) -> *const c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// `struct mount_attr` (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `struct open_how`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(dir, path, flags)` resolving inside `dir` as if it were `/`, without magic
/// links; -1 with errno set on failure.
///
/// # Safety
/// `dir` must be an open fd.
unsafe fn openat2_in_root(dir: libc::c_int, path: &CStr, flags: libc::c_int) -> libc::c_int {
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // EAGAIN: a `..` raced with a rename or mount somewhere on the system, and the kernel
    // could not vouch that it stayed inside; openat2(2) says the caller may retry.
    for _ in 0..OPENAT2_TRIES {
        // SAFETY: a correctly sized open_how and a valid C string.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            ) as libc::c_int
        };
        if fd >= 0 || last_errno() != libc::EAGAIN {
            return fd;
        }
    }
    -1
}

/// How many times an `openat2` that says EAGAIN is tried (see [`openat2_in_root`]).
pub(crate) const OPENAT2_TRIES: usize = 64;

/// `rustix::fs::openat2`, retried while it says EAGAIN: with `RESOLVE_IN_ROOT` or
/// `RESOLVE_BENEATH` the kernel answers that when a `..` raced with a rename or mount anywhere
/// on the system and it could not vouch that the walk stayed inside (openat2(2): "The caller
/// may choose to retry"). Seen under load beside other builders' mounts.
pub(crate) fn openat2_retrying<Fd: std::os::fd::AsFd>(
    dir: Fd,
    path: &str,
    oflags: rustix::fs::OFlags,
    mode: rustix::fs::Mode,
    resolve: rustix::fs::ResolveFlags,
) -> rustix::io::Result<std::os::fd::OwnedFd> {
    let mut tries = 1;
    loop {
        match rustix::fs::openat2(&dir, path, oflags, mode, resolve) {
            Err(rustix::io::Errno::AGAIN) if tries < OPENAT2_TRIES => tries += 1,
            other => return other,
        }
    }
}

/// Moves `fd` to the fixed number `slot` (close-on-exec).
///
/// # Safety
/// `fd` must be an fd this process owns; whatever was at `slot` is closed.
unsafe fn place(fd: libc::c_int, slot: libc::c_int) -> Result<(), Errno> {
    if fd == slot {
        return Ok(());
    }
    // SAFETY: dup3/close on fds we own.
    unsafe {
        let r = libc::dup3(fd, slot, libc::O_CLOEXEC);
        let e = last_errno();
        libc::close(fd);
        if r == -1 {
            return Err(Errno::from_raw_os_error(e));
        }
    }
    Ok(())
}

/// Closes every fd from `first` on (`close_range`, or one by one where it is missing).
pub(crate) fn close_from(first: libc::c_int) {
    // SAFETY: closing fds; nothing refers to them afterwards.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, 0) == 0 {
            return;
        }
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 20) as libc::c_int
        } else {
            65536
        };
        for fd in first..max {
            libc::close(fd);
        }
    }
}

/// A new detached mount: `fsopen`, `fsconfig` per param (a flag when the value is `None`),
/// create, `fsmount(attrs)`; returns the mount fd.
///
/// # Safety
/// Raw syscalls; only async-signal-safe calls are made.
unsafe fn fs_mount(
    fstype: &CStr,
    params: &[(CString, Option<CString>)],
    attrs: u64,
) -> Result<libc::c_int, Errno> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_FLAG: libc::c_uint = 0;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    // SAFETY: raw syscalls with valid C strings; the fs fd is closed on every path.
    unsafe {
        let fs = libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) as libc::c_int;
        check(fs)?;
        let configure = || -> Result<libc::c_int, Errno> {
            for (key, value) in params {
                let r = match value {
                    Some(v) => libc::syscall(
                        libc::SYS_fsconfig,
                        fs,
                        FSCONFIG_SET_STRING,
                        key.as_ptr(),
                        v.as_ptr(),
                        0,
                    ),
                    None => libc::syscall(
                        libc::SYS_fsconfig,
                        fs,
                        FSCONFIG_SET_FLAG,
                        key.as_ptr(),
                        std::ptr::null::<c_char>(),
                        0,
                    ),
                };
                check(r as libc::c_int)?;
            }
            let null = std::ptr::null::<c_char>();
            check(libc::syscall(libc::SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, null, null, 0)
                as libc::c_int)?;
            let mnt = libc::syscall(libc::SYS_fsmount, fs, FSMOUNT_CLOEXEC, attrs as libc::c_uint)
                as libc::c_int;
            check(mnt)?;
            Ok(mnt)
        };
        let result = configure();
        libc::close(fs);
        result
    }
}

/// A status-pipe record: kind, op index, errno (native endian, 12 bytes, atomic on a pipe).
pub(crate) const RECORD_LEN: usize = 12;
/// Record kind: the op created a stub.
pub(crate) const KIND_STUB: u32 = 1;
/// Record kind: the op failed.
pub(crate) const KIND_FAILED: u32 = 2;

/// Writes one status record; async-signal-safe.
pub(crate) fn write_record(fd: i32, kind: u32, index: usize, errno: i32) {
    let mut rec = [0u8; RECORD_LEN];
    rec[0..4].copy_from_slice(&kind.to_ne_bytes());
    rec[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
    rec[8..12].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writing a stack buffer to an fd we own; a failure cannot be reported anyway.
    unsafe {
        libc::write(fd, rec.as_ptr().cast(), RECORD_LEN);
    }
}

impl Syscalls for RealSyscalls {
    fn mount(
        &mut self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> Result<(), Errno> {
        // SAFETY: all pointers are NUL-terminated strings or NULL.
        check(unsafe {
            libc::mount(
                opt_ptr(source),
                target.as_ptr(),
                opt_ptr(fstype),
                flags,
                opt_ptr(data).cast(),
            )
        })
    }
    fn mount_fsconfig(
        &mut self,
        fstype: &CStr,
        params: &[(CString, Option<CString>)],
        target: &CStr,
    ) -> Result<(), Errno> {
        // SAFETY: see fs_mount; the mount fd is closed on every path.
        unsafe {
            let mnt = fs_mount(fstype, params, 0)?;
            let r = libc::syscall(
                libc::SYS_move_mount,
                mnt,
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ) as libc::c_int;
            let e = last_errno();
            libc::close(mnt);
            if r == -1 {
                return Err(Errno::from_raw_os_error(e));
            }
        }
        Ok(())
    }
    fn resolve(&mut self, root: &CStr, path: Option<&CStr>, slot: i32) -> Result<(), Errno> {
        // SAFETY: valid C strings; every fd opened here is closed or placed.
        unsafe {
            let fd = match path {
                None => libc::open(root.as_ptr(), libc::O_PATH | libc::O_CLOEXEC),
                Some(path) => {
                    let dir = libc::open(
                        root.as_ptr(),
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    );
                    if dir == -1 {
                        return Err(Errno::from_raw_os_error(last_errno()));
                    }
                    let fd = openat2_in_root(dir, path, libc::O_PATH | libc::O_CLOEXEC);
                    let e = last_errno();
                    libc::close(dir);
                    if fd == -1 {
                        return Err(Errno::from_raw_os_error(e));
                    }
                    fd
                }
            };
            place(fd, slot)
        }
    }
    fn clone_tree(&mut self, from: i32, recursive: bool, slot: i32) -> Result<(), Errno> {
        let mut flags =
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
        if recursive {
            flags |= libc::AT_RECURSIVE as libc::c_uint;
        }
        // SAFETY: open_tree on an fd we own with an empty path.
        let fd = unsafe { libc::syscall(libc::SYS_open_tree, from, c"".as_ptr(), flags) } as i32;
        check(fd)?;
        // SAFETY: fd was just returned by the kernel.
        unsafe { place(fd, slot) }
    }
    fn new_mount(
        &mut self,
        fstype: &CStr,
        params: &[(CString, Option<CString>)],
        attrs: u64,
        slot: i32,
    ) -> Result<(), Errno> {
        // SAFETY: see fs_mount.
        let mnt = unsafe { fs_mount(fstype, params, attrs)? };
        // SAFETY: mnt was just returned by the kernel.
        unsafe { place(mnt, slot) }
    }
    fn set_attrs(&mut self, slot: i32, set: u64, recursive: bool) -> Result<(), Errno> {
        let attr = MountAttr { attr_set: set, attr_clr: 0, propagation: 0, userns_fd: 0 };
        let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
        if recursive {
            flags |= libc::AT_RECURSIVE as libc::c_uint;
        }
        // SAFETY: mount_setattr with a correctly sized struct on an fd we own.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                slot,
                c"".as_ptr(),
                flags,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        check(r as libc::c_int)
    }
    fn attach(&mut self, slot: i32, target: &CStr) -> Result<(), Errno> {
        // SAFETY: fds opened here are closed on every path; strings are valid.
        unsafe {
            let root =
                libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
            check(root)?;
            let t = openat2_in_root(root, target, libc::O_PATH | libc::O_CLOEXEC);
            let e = last_errno();
            libc::close(root);
            if t == -1 {
                return Err(Errno::from_raw_os_error(e));
            }
            let r = libc::syscall(
                libc::SYS_move_mount,
                slot,
                c"".as_ptr(),
                t,
                c"".as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            ) as libc::c_int;
            let e = last_errno();
            libc::close(t);
            if r == -1 {
                return Err(Errno::from_raw_os_error(e));
            }
        }
        Ok(())
    }
    fn close_from(&mut self, first: i32) {
        close_from(first);
    }
    fn chdir_in_root(&mut self, path: &CStr) -> Result<(), Errno> {
        // SAFETY: fds opened here are closed on every path; strings are valid.
        unsafe {
            let root =
                libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
            check(root)?;
            let d = openat2_in_root(root, path, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
            let e = last_errno();
            libc::close(root);
            if d == -1 {
                return Err(Errno::from_raw_os_error(e));
            }
            let r = libc::fchdir(d);
            let e = last_errno();
            libc::close(d);
            if r == -1 {
                return Err(Errno::from_raw_os_error(e));
            }
        }
        Ok(())
    }
    fn umount_detach(&mut self, target: &CStr) -> Result<(), Errno> {
        // SAFETY: valid C string.
        check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
    }
    fn pivot_root(&mut self, new_root: &CStr, put_old: &CStr) -> Result<(), Errno> {
        // SAFETY: valid C strings; raw syscall (glibc has no wrapper).
        let r = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
        check(r as libc::c_int)
    }
    fn chdir(&mut self, path: &CStr) -> Result<(), Errno> {
        // SAFETY: valid C string.
        check(unsafe { libc::chdir(path.as_ptr()) })
    }
    fn mkdir(&mut self, path: &CStr, mode: u32) -> Result<bool, Errno> {
        // SAFETY: valid C string.
        match check(unsafe { libc::mkdir(path.as_ptr(), mode) }) {
            Ok(()) => Ok(true),
            Err(e) if e == Errno::EXIST => Ok(false),
            Err(e) => Err(e),
        }
    }
    fn create_file(&mut self, path: &CStr) -> Result<bool, Errno> {
        // SAFETY: valid C string.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o644,
            )
        };
        if fd == -1 {
            let e = Errno::from_raw_os_error(last_errno());
            return if e == Errno::EXIST { Ok(false) } else { Err(e) };
        }
        // SAFETY: closing the fd just opened.
        unsafe { libc::close(fd) };
        Ok(true)
    }
    fn symlink(&mut self, target: &CStr, link: &CStr) -> Result<(), Errno> {
        // SAFETY: valid C strings.
        match check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }) {
            Err(e) if e == Errno::EXIST => Ok(()),
            r => r,
        }
    }
    fn chown(&mut self, path: &CStr, uid: u32, gid: u32) -> Result<(), Errno> {
        // SAFETY: valid C string.
        check(unsafe { libc::chown(path.as_ptr(), uid, gid) })
    }
    fn write_file(&mut self, path: &CStr, data: &[u8]) -> Result<(), Errno> {
        // SAFETY: valid C string; the fd is closed on every path.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd == -1 {
                return Err(Errno::from_raw_os_error(last_errno()));
            }
            let n = libc::write(fd, data.as_ptr().cast(), data.len());
            let e = last_errno();
            libc::close(fd);
            if n != data.len() as isize {
                return Err(Errno::from_raw_os_error(if n < 0 { e } else { libc::EIO }));
            }
        }
        Ok(())
    }
    fn unlink(&mut self, path: &CStr) -> Result<(), Errno> {
        // SAFETY: valid C string.
        check(unsafe { libc::unlink(path.as_ptr()) })
    }
    fn sethostname(&mut self, name: &[u8]) -> Result<(), Errno> {
        // SAFETY: pointer and length of a live slice.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
    }
    fn loopback_up(&mut self) -> Result<(), Errno> {
        /// `struct ifreq` with the `ifr_flags` member (40 bytes on 64-bit Linux).
        #[repr(C)]
        struct IfreqFlags {
            name: [u8; libc::IFNAMSIZ],
            flags: libc::c_short,
            _pad: [u8; 22],
        }
        let mut req = IfreqFlags { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
        req.name[..2].copy_from_slice(b"lo");
        // SAFETY: socket/ioctl with a correctly sized ifreq; the fd is closed on every path.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd == -1 {
                return Err(Errno::from_raw_os_error(last_errno()));
            }
            let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req as *mut IfreqFlags);
            if r == 0 {
                req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
                r = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &mut req as *mut IfreqFlags);
            }
            let e = last_errno();
            libc::close(fd);
            if r != 0 {
                return Err(Errno::from_raw_os_error(e));
            }
        }
        Ok(())
    }
    fn setrlimit(&mut self, resource: u32, soft: u64, hard: u64) -> Result<(), Errno> {
        let lim = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
        // SAFETY: a valid rlimit for the duration of the call.
        check(unsafe { libc::setrlimit(resource as _, &lim) })
    }
    fn drop_caps(&mut self, keep: u64) -> Result<(), Errno> {
        #[repr(C)]
        struct CapHeader {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        struct CapData {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        // SAFETY: prctl/capset with correctly laid out arguments.
        unsafe {
            for cap in 0..64u64 {
                if keep & (1 << cap) == 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) == -1
                {
                    let e = Errno::from_raw_os_error(last_errno());
                    if e == Errno::INVAL {
                        break; // past the kernel's last capability
                    }
                    return Err(e);
                }
            }
            // ambient capabilities exist since Linux 4.3; EINVAL before that is fine
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            );
            let header = CapHeader {
                version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
                pid: 0,
            };
            let (lo, hi) = (keep as u32, (keep >> 32) as u32);
            let data = [
                CapData { effective: lo, permitted: lo, inheritable: lo },
                CapData { effective: hi, permitted: hi, inheritable: hi },
            ];
            check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int)?;
        }
        Ok(())
    }
    fn set_ids(&mut self, uid: u32, gid: u32, groups: Option<&[u32]>) -> Result<(), Errno> {
        // Raw syscalls: glibc's wrappers broadcast to all threads of the *parent*, which do
        // not exist in this forked child.
        // SAFETY: plain syscalls with valid arguments.
        unsafe {
            if let Some(groups) = groups {
                let r = libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr());
                check(r as libc::c_int)?;
            }
            check(libc::syscall(libc::SYS_setresgid, gid, gid, gid) as libc::c_int)?;
            check(libc::syscall(libc::SYS_setresuid, uid, uid, uid) as libc::c_int)?;
        }
        Ok(())
    }
    fn execve(&mut self, path: &CStr, argv: &ExecArgs, envp: &ExecArgs) -> Result<(), Errno> {
        // SAFETY: NULL-terminated arrays of valid C strings.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        Err(Errno::from_raw_os_error(last_errno()))
    }
    fn report_stub(&mut self, index: usize) {
        write_record(self.status_fd, KIND_STUB, index, 0);
    }
}

/// A fake that records every call as a line of text, and pretends that the paths in
/// `existing` already exist and the paths in `executables` can be executed.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct RecordingSyscalls {
    pub calls: Vec<String>,
    pub existing: Vec<String>,
    pub executables: Vec<String>,
    pub fail_on: Option<(String, Errno)>,
}

#[cfg(test)]
impl RecordingSyscalls {
    fn record(&mut self, call: String) -> Result<(), Errno> {
        let failing = self.fail_on.as_ref().filter(|(prefix, _)| call.starts_with(prefix.as_str()));
        let result = failing.map_or(Ok(()), |(_, e)| Err(*e));
        self.calls.push(call);
        result
    }
    fn exists(&self, p: &CStr) -> bool {
        self.existing.iter().any(|e| e.as_bytes() == p.to_bytes())
    }
}

#[cfg(test)]
fn s(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}

#[cfg(test)]
impl Syscalls for RecordingSyscalls {
    fn mount(
        &mut self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> Result<(), Errno> {
        self.record(format!(
            "mount {} {} {} {} {}",
            source.map_or("-".into(), s),
            s(target),
            fstype.map_or("-".into(), s),
            crate::plan::flags_to_string(flags),
            data.map_or("-".into(), s)
        ))
    }
    fn mount_fsconfig(
        &mut self,
        fstype: &CStr,
        params: &[(CString, Option<CString>)],
        target: &CStr,
    ) -> Result<(), Errno> {
        let shown: Vec<String> = params
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{}={}", s(k), s(v)),
                None => s(k),
            })
            .collect();
        self.record(format!("fsmount {} {} {}", s(fstype), s(target), shown.join(",")))
    }
    fn resolve(&mut self, root: &CStr, path: Option<&CStr>, slot: i32) -> Result<(), Errno> {
        let path = path.map_or(String::new(), |p| format!(" in-root {}", s(p)));
        self.record(format!("resolve {}{path} -> fd {slot}", s(root)))
    }
    fn clone_tree(&mut self, from: i32, recursive: bool, slot: i32) -> Result<(), Errno> {
        let rec = if recursive { " recursive" } else { "" };
        self.record(format!("clone_tree fd {from}{rec} -> fd {slot}"))
    }
    fn new_mount(
        &mut self,
        fstype: &CStr,
        params: &[(CString, Option<CString>)],
        attrs: u64,
        slot: i32,
    ) -> Result<(), Errno> {
        let shown: Vec<String> = params
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{}={}", s(k), s(v)),
                None => s(k),
            })
            .collect();
        self.record(format!(
            "new_mount {} {} {} -> fd {slot}",
            s(fstype),
            if shown.is_empty() { "-".to_string() } else { shown.join(",") },
            crate::plan::attrs_to_string(attrs)
        ))
    }
    fn set_attrs(&mut self, slot: i32, set: u64, recursive: bool) -> Result<(), Errno> {
        let rec = if recursive { " recursive" } else { "" };
        self.record(format!("set_attrs fd {slot} {}{rec}", crate::plan::attrs_to_string(set)))
    }
    fn attach(&mut self, slot: i32, target: &CStr) -> Result<(), Errno> {
        self.record(format!("attach fd {slot} {}", s(target)))
    }
    fn close_from(&mut self, first: i32) {
        self.calls.push(format!("close_from {first}"));
    }
    fn chdir_in_root(&mut self, path: &CStr) -> Result<(), Errno> {
        self.record(format!("chdir_in_root {}", s(path)))
    }
    fn umount_detach(&mut self, target: &CStr) -> Result<(), Errno> {
        self.record(format!("umount2 {} MNT_DETACH", s(target)))
    }
    fn pivot_root(&mut self, new_root: &CStr, put_old: &CStr) -> Result<(), Errno> {
        self.record(format!("pivot_root {} {}", s(new_root), s(put_old)))
    }
    fn chdir(&mut self, path: &CStr) -> Result<(), Errno> {
        self.record(format!("chdir {}", s(path)))
    }
    fn mkdir(&mut self, path: &CStr, mode: u32) -> Result<bool, Errno> {
        let exists = self.exists(path);
        self.record(format!("mkdir {} {:o}", s(path), mode))?;
        Ok(!exists)
    }
    fn create_file(&mut self, path: &CStr) -> Result<bool, Errno> {
        let exists = self.exists(path);
        self.record(format!("create {}", s(path)))?;
        Ok(!exists)
    }
    fn symlink(&mut self, target: &CStr, link: &CStr) -> Result<(), Errno> {
        self.record(format!("symlink {} {}", s(target), s(link)))
    }
    fn chown(&mut self, path: &CStr, uid: u32, gid: u32) -> Result<(), Errno> {
        self.record(format!("chown {} {uid}:{gid}", s(path)))
    }
    fn write_file(&mut self, path: &CStr, data: &[u8]) -> Result<(), Errno> {
        self.record(format!("write {} {:?}", s(path), String::from_utf8_lossy(data)))
    }
    fn unlink(&mut self, path: &CStr) -> Result<(), Errno> {
        self.record(format!("unlink {}", s(path)))
    }
    fn sethostname(&mut self, name: &[u8]) -> Result<(), Errno> {
        self.record(format!("sethostname {}", String::from_utf8_lossy(name)))
    }
    fn loopback_up(&mut self) -> Result<(), Errno> {
        self.record("loopback_up".into())
    }
    fn drop_caps(&mut self, keep: u64) -> Result<(), Errno> {
        self.record(format!("drop_caps keep={keep:#x}"))
    }
    fn setrlimit(&mut self, resource: u32, soft: u64, hard: u64) -> Result<(), Errno> {
        self.record(format!("setrlimit {resource} {soft}:{hard}"))
    }
    fn set_ids(&mut self, uid: u32, gid: u32, groups: Option<&[u32]>) -> Result<(), Errno> {
        self.record(format!("set_ids {uid} {gid} {groups:?}"))
    }
    fn execve(&mut self, path: &CStr, argv: &ExecArgs, envp: &ExecArgs) -> Result<(), Errno> {
        let show = |a: &ExecArgs| a.strings().iter().map(|c| s(c)).collect::<Vec<_>>();
        self.record(format!("execve {} {:?} {:?}", s(path), show(argv), show(envp)))?;
        if self.executables.iter().any(|e| e.as_bytes() == path.to_bytes()) {
            Ok(())
        } else {
            Err(Errno::NOENT)
        }
    }
    fn report_stub(&mut self, index: usize) {
        self.calls.push(format!("stub #{index}"));
    }
}
