//! Creating the sandboxed process: one raw `clone` with the namespace flags.
//!
//! `clone(CLONE_NEWPID | ...)` without a new stack behaves like `fork`, and its child is
//! PID 1 of the new pid namespace, so no intermediate process is needed: the command itself
//! becomes PID 1 (as under `docker build`). The child only runs [`sys::execute`] over a
//! prepared plan (async-signal-safe system calls, no allocation) and reports on a
//! close-on-exec status pipe: a stub record per created mountpoint, and one failure record
//! if a step fails. EOF on that pipe means the command was exec'd (or the child died).
//!
//! The child has `PR_SET_PDEATHSIG = SIGKILL`: if the thread that created it dies (strata is
//! killed), the kernel kills it, and with PID 1 gone the kernel kills the rest of its pid
//! namespace; its mount namespace, holding every mount of the step, disappears with it.
//!
//! With an [`IdMap::Subordinate`] map, or a cgroup for the step's limits, the child first
//! blocks on a sync pipe: the parent runs `newuidmap`/`newgidmap` on its pid and writes the
//! pid into the cgroup, and then writes one byte. If a helper fails the child
//! is killed before it did anything, and the caller may retry with a single-id map.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};

use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};

use crate::cgroup::RunCgroup;
use crate::idmap::{self, HelperFailure, IdMap, RealCommands};
use crate::plan::{describe, exec_candidates, Plan};
use crate::sys::{self, Op, RealSyscalls, KIND_FAILED, KIND_STUB, RECORD_LEN};
use crate::SandboxError;

/// A running sandboxed process. Dropping it kills (SIGKILL) and reaps the process.
pub(crate) struct Child {
    pid: Option<libc::pid_t>,
    /// Read end of the command's stdout.
    pub stdout: Option<File>,
    /// Read end of the command's stderr.
    pub stderr: Option<File>,
    /// Indices of the ops that created mountpoint stubs.
    pub stub_ops: Vec<usize>,
    /// Why setup failed before the command was exec'd (the child is then already reaped).
    pub setup_error: Option<SandboxError>,
}

impl Child {
    /// Sends SIGKILL (the namespace dies with its PID 1).
    pub(crate) fn kill(&self) {
        if let Some(pid) = self.pid {
            // SAFETY: pid is our unreaped child, so it cannot have been recycled.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// Waits for the process; returns the exit code, 128+signal when killed by a signal.
    pub(crate) fn wait(&mut self) -> Result<i32, SandboxError> {
        let Some(pid) = self.pid else { return Ok(0) };
        let status = wait_pid(pid)?;
        self.pid = None;
        Ok(exit_code(status))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: as in kill().
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = wait_pid(pid);
        }
    }
}

fn wait_pid(pid: libc::pid_t) -> Result<libc::c_int, SandboxError> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(SandboxError::Spawn { what: "waitpid", source: e });
        }
    }
}

fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        status
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    pipe_with(PipeFlags::CLOEXEC)
        .map_err(|e| SandboxError::Spawn { what: "pipe2", source: e.into() })
}

/// Clones a child into new namespaces (`flags`: `CLONE_NEW*`) that runs `plan`, writes its
/// id maps with the helpers when `id_map` needs them, and waits until it has exec'd or failed
/// (see [`Child::setup_error`]). The inner error: a helper failed (the child is gone).
pub(crate) fn spawn(
    plan: &Plan,
    flags: libc::c_int,
    id_map: Option<&IdMap>,
    cgroup: Option<&RunCgroup>,
) -> Result<Result<Child, HelperFailure>, SandboxError> {
    let (out_r, out_w) = pipe()?;
    let helpers = matches!(id_map, Some(IdMap::Subordinate { .. }));
    let sync = match helpers || cgroup.is_some() {
        true => Some(pipe()?),
        false => None,
    };
    let (err_r, err_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let null: OwnedFd = File::open("/dev/null")
        .map_err(|source| SandboxError::Io { action: "opening", path: "/dev/null".into(), source })?
        .into();
    // lets the child notice a parent that died before PR_SET_PDEATHSIG took effect
    let parent = rustix::process::pidfd_open(
        rustix::process::getpid(),
        rustix::process::PidfdFlags::empty(),
    )
    .ok();
    let fds = ChildFds {
        parent: parent.as_ref().map_or(-1, |p| p.as_raw_fd()),
        null: null.as_raw_fd(),
        out: out_w.as_raw_fd(),
        err: err_w.as_raw_fd(),
        status: status_w.as_raw_fd(),
        sync_r: sync.as_ref().map_or(-1, |(r, _)| r.as_raw_fd()),
        sync_w: sync.as_ref().map_or(-1, |(_, w)| w.as_raw_fd()),
    };

    // Block every signal around the clone (as posix_spawn does) so that none of the
    // parent's handlers can run in the child before it has reset them.
    // SAFETY: sigset manipulation on local values.
    let old_mask = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    // SAFETY: a fork-like clone (no CLONE_VM, no new stack). The child only runs
    // `child_main`, which makes async-signal-safe system calls on memory prepared above.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        // SAFETY: we are the child; see child_main.
        unsafe { child_main(&plan.ops, fds) }
    }
    let clone_error = io::Error::last_os_error();
    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(SandboxError::Spawn { what: "clone", source: clone_error });
    }
    let mut child = Child {
        pid: Some(pid as libc::pid_t),
        stdout: Some(File::from(out_r)),
        stderr: Some(File::from(err_r)),
        stub_ops: Vec::new(),
        setup_error: None,
    };
    drop((out_w, err_w, status_w, null, parent));
    if let Some((sync_r, sync_w)) = sync {
        drop(sync_r);
        if let Some(map) = id_map.filter(|_| helpers) {
            if let Err(failure) = idmap::apply(map, pid as libc::pid_t, &mut RealCommands) {
                drop(child); // kills and reaps it; it was still waiting
                return Ok(Err(failure));
            }
        }
        // Into its cgroup while it waits: limited before the command's first instruction.
        if let Some(cgroup) = cgroup {
            if let Err(e) = cgroup.add(pid as i32) {
                drop(child);
                return Err(e);
            }
        }
        // the child's go-ahead; if it died meanwhile, the status pipe says so below
        let _ = rustix::io::write(&sync_w, b"1");
    }

    let mut status = File::from(status_r);
    let mut failure = None;
    loop {
        let mut rec = [0u8; RECORD_LEN];
        match read_full(&mut status, &mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(source) => {
                return Err(SandboxError::Spawn { what: "reading the status pipe", source })
            }
        }
        let word = |i: usize| [rec[i], rec[i + 1], rec[i + 2], rec[i + 3]];
        let kind = u32::from_ne_bytes(word(0));
        let index = u32::from_ne_bytes(word(4)) as usize;
        let errno = i32::from_ne_bytes(word(8));
        match kind {
            KIND_STUB => child.stub_ops.push(index),
            KIND_FAILED => failure = Some((index, errno)),
            _ => {}
        }
    }
    if let Some((index, errno)) = failure {
        let _ = child.wait();
        child.setup_error = Some(setup_error(plan, index, errno));
    }
    Ok(Ok(child))
}

/// Reads exactly one record; `Ok(false)` on a clean EOF.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The "op index" reported when the standard streams could not be set up.
const STDIO_STEP: usize = u32::MAX as usize;

fn setup_error(plan: &Plan, index: usize, errno: i32) -> SandboxError {
    let source = io::Error::from_raw_os_error(errno);
    if index == STDIO_STEP {
        return SandboxError::Setup { step: "connecting stdin/stdout/stderr".into(), source };
    }
    match plan.ops.get(index) {
        Some(Op::Exec { argv, envp, .. }) => {
            let program =
                argv.strings().first().map_or(String::new(), |a| a.to_string_lossy().into_owned());
            let env: Vec<String> =
                envp.strings().iter().map(|e| e.to_string_lossy().into_owned()).collect();
            let (_, path) = exec_candidates(&program, &env);
            SandboxError::Exec { program, path, source }
        }
        Some(op) => SandboxError::Setup { step: describe(op), source },
        None => SandboxError::Setup { step: format!("step #{index}"), source },
    }
}

#[derive(Clone, Copy)]
struct ChildFds {
    /// pidfd of the parent process, or -1.
    parent: i32,
    null: i32,
    out: i32,
    err: i32,
    status: i32,
    /// Read and write ends of the id-map sync pipe, or -1.
    sync_r: i32,
    sync_w: i32,
}

/// The child side. Only async-signal-safe calls from here on.
///
/// # Safety
/// Must only be called in the child of a fork-like clone.
unsafe fn child_main(ops: &[Op], fds: ChildFds) -> ! {
    // SAFETY: plain system calls on fds and memory owned by this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        if fds.parent >= 0 {
            let mut pfd = libc::pollfd { fd: fds.parent, events: libc::POLLIN, revents: 0 };
            if libc::poll(&mut pfd, 1, 0) == 1 {
                libc::_exit(128 + libc::SIGKILL); // the parent is gone already
            }
        }
        if fds.sync_r >= 0 {
            // wait until the parent has written our id maps; EOF: it gave up
            libc::close(fds.sync_w);
            let mut byte = 0u8;
            loop {
                let n = libc::read(fds.sync_r, (&mut byte as *mut u8).cast(), 1);
                if n == 1 {
                    break;
                }
                if n == -1 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                libc::_exit(127);
            }
            libc::close(fds.sync_r);
        }
        // Copies well above 2 first: with a closed stdio fd in the parent (Rust's runtime
        // reopens them, a C host embedding us might not), a source could itself be 0, 1 or 2
        // and be overwritten, or keep its close-on-exec flag, otherwise.
        let mut high = [-1; 4];
        for (slot, from) in high.iter_mut().zip([fds.null, fds.out, fds.err, fds.status]) {
            *slot = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, sys::SLOT_BASE);
        }
        for (to, from) in high[..3].iter().enumerate() {
            if *from == -1 || libc::dup2(*from, to as libc::c_int) == -1 {
                sys::write_record(fds.status, KIND_FAILED, STDIO_STEP, *libc::__errno_location());
                libc::_exit(127);
            }
        }
        // The status pipe goes to fd 3 and every other fd is closed: the step gets only
        // 0, 1 and 2, whatever this process inherited without close-on-exec (runc's
        // CVE-2024-21626 was a leaked directory fd reached through /proc/self/fd).
        if high[3] == -1 || libc::dup3(high[3], sys::STATUS_FD, libc::O_CLOEXEC) == -1 {
            sys::write_record(fds.status, KIND_FAILED, STDIO_STEP, *libc::__errno_location());
            libc::_exit(127);
        }
        sys::close_from(sys::STATUS_FD + 1);
        // Default dispositions everywhere (the parent's handlers must not run here, and
        // Rust's ignored SIGPIPE would stay ignored across exec), then unblock everything.
        // Raw rt_sigaction: glibc's wrapper refuses its internal signals (32, 33). An
        // all-zero kernel sigaction is SIG_DFL with no flags and an empty mask on any layout.
        let dfl = [0u64; 4];
        for sig in 1..=64 {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                dfl.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());

        let mut real = RealSyscalls { status_fd: sys::STATUS_FD };
        match sys::execute(ops, &mut real) {
            Ok(()) => libc::_exit(0),
            Err(f) => {
                let errno: Errno = f.errno;
                sys::write_record(sys::STATUS_FD, KIND_FAILED, f.index, errno.raw_os_error());
                libc::_exit(127)
            }
        }
    }
}
