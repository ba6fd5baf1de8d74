//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// Why a step could not be run.
///
/// A command that runs and exits non-zero is *not* an error: its status is in
/// [`RunOutcome::exit_code`](crate::RunOutcome::exit_code). These variants are for
/// requests that cannot be honoured and for sandbox setup that failed before the
/// command started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// A `--ulimit` value that does not parse.
    #[error("invalid ulimit {value:?}: {reason}")]
    BadUlimit {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A size (`--shm-size`) that does not parse.
    #[error("invalid size {value:?}: expected a number with an optional unit b, k, m, g, t or p")]
    BadSize {
        /// The value as given.
        value: String,
    },
    /// A cgroup limit (`--memory`, `--cpu-quota`, ...) out of range or malformed.
    #[error("invalid {flag} {value}: {reason}")]
    BadCgroupLimit {
        /// The flag.
        flag: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A limit was asked for and no cgroup can hold it (no such controller, no cgroup v1
    /// hierarchy, no right to make a cgroup).
    #[error("{flag} needs a cgroup, and none can be made: {why}")]
    CgroupUnavailable {
        /// The flag that needed it.
        flag: &'static str,
        /// Why not.
        why: String,
    },
    /// The kernel refused a limit written to the step's cgroup.
    #[error("the kernel refused {flag} {value} (writing {path})")]
    CgroupLimit {
        /// The flag.
        flag: &'static str,
        /// The value written.
        value: String,
        /// The cgroup file.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// `argv` was empty.
    #[error("nothing to run: argv is empty")]
    EmptyArgv,
    /// A string that must become a C string contains a NUL byte.
    #[error("{field} contains a NUL byte: {value:?}")]
    NulByte {
        /// Which request field (`argv`, `env`, `cwd`, `hostname`, a mount target ...).
        field: &'static str,
        /// The offending value.
        value: String,
    },
    /// A container path (cwd, mount target) is not absolute or contains `..`.
    #[error("{field} must be an absolute path without `..`, got {value:?}")]
    BadContainerPath {
        /// Which request field.
        field: &'static str,
        /// The offending value.
        value: String,
    },
    /// The `user` string names a user that the rootfs's passwd file lacks.
    #[error("user {user:?} not found in {passwd}")]
    UnknownUser {
        /// The user name as given.
        user: String,
        /// The passwd file consulted (host path), or the path it was looked for at.
        passwd: PathBuf,
    },
    /// The `user` string names a group that the rootfs's group file lacks.
    #[error("group {group:?} not found in {group_file}")]
    UnknownGroup {
        /// The group name as given.
        group: String,
        /// The group file consulted (host path).
        group_file: PathBuf,
    },
    /// A user given by name for an overlay rootfs: the caller resolves it through the layers.
    #[error("user {user:?} must be resolved to ids for an overlay rootfs (resolve_user_in)")]
    UserNeedsIds {
        /// The user spec as given.
        user: String,
    },
    /// The `user` string is not `""`, `user`, or `user:group`.
    #[error("malformed user spec {user:?}")]
    BadUserSpec {
        /// The spec as given.
        user: String,
    },
    /// Without root, the user namespace maps the caller to container root and, when
    /// `/etc/subuid` and `/etc/subgid` grant it ranges (and `newuidmap`/`newgidmap` work),
    /// container ids 1.. to those; the user resolves to an id outside of that.
    #[error("running without root: {user:?} resolves to uid {uid}, gid {gid}, groups {groups:?}, but the user namespace maps only {mapped}")]
    UnmappedUser {
        /// The user spec as given.
        user: String,
        /// Resolved uid.
        uid: u32,
        /// Resolved gid.
        gid: u32,
        /// Resolved supplementary groups.
        groups: Vec<u32>,
        /// What the namespace maps and, when only the caller, why subordinate ids are not
        /// used (no range for the user in `/etc/subuid`, helpers missing, a helper failed).
        mapped: String,
    },
    /// A layer, upper or work directory path cannot be written into overlay's options.
    #[error("overlay directory {path} contains ',', ':' or '\\', or is not UTF-8; overlay options cannot express it")]
    UnsupportedOverlayPath {
        /// The host path.
        path: PathBuf,
    },
    /// A bind mount source does not resolve inside its root (missing, or a symlink that
    /// leads to nothing there).
    #[error("bind mount source {path:?} inside {root}")]
    MountSource {
        /// The directory that is `/` for the path.
        root: PathBuf,
        /// The path as given.
        path: String,
        /// Why it does not resolve.
        #[source]
        source: io::Error,
    },
    /// More mounts than one step can hold.
    #[error("too many mounts for one step (at most {max})")]
    TooManyMounts {
        /// The limit.
        max: usize,
    },
    /// More lower layers than overlayfs can stack.
    #[error("{count} layers, but overlayfs stacks at most {max}")]
    TooManyLayers {
        /// Number of lowerdirs requested.
        count: usize,
        /// overlayfs's limit.
        max: usize,
    },
    /// A host-side file operation failed (temp dir, reading passwd, bind source ...).
    #[error("{action} {path}")]
    Io {
        /// What was being done, e.g. "reading", "creating".
        action: &'static str,
        /// The host path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Creating the sandboxed process failed (pipe, clone, wait).
    #[error("spawning the sandbox: {what}")]
    Spawn {
        /// The system call that failed.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A setup step inside the new namespaces failed before the command was started.
    #[error("sandbox setup failed at: {step}")]
    Setup {
        /// The step, e.g. `mount overlay on /tmp/strata-sandbox-x/root (...)`.
        step: String,
        /// The errno it failed with.
        #[source]
        source: io::Error,
    },
    /// The command could not be executed (not found in PATH, not executable ...).
    #[error("cannot execute {program:?} (PATH searched: {path:?})")]
    Exec {
        /// `argv[0]`.
        program: String,
        /// The PATH value used for the search (empty when argv\[0\] contains a `/`).
        path: String,
        /// The errno of the last `execve` tried (ENOENT: not found; EACCES: not executable).
        #[source]
        source: io::Error,
    },
    /// The platform cannot run here at all: not linux, or an architecture strata knows no
    /// ELF machine (and so no emulator) for.
    #[error("cannot run {platform} steps: {reason}")]
    UnsupportedPlatform {
        /// The platform as `os/arch[/variant]`.
        platform: String,
        /// Why.
        reason: &'static str,
    },
    /// No binfmt_misc handler runs the platform's programs, and strata could not register
    /// one (not root, `qemu-user-static` missing, binfmt_misc not mounted or disabled).
    #[error("cannot run {platform} steps: {reason}; fix: {fix}")]
    NoEmulation {
        /// The platform as `os/arch[/variant]`.
        platform: String,
        /// What is missing.
        reason: String,
        /// What to install or run, as exact commands.
        fix: String,
    },
    /// A binfmt_misc handler runs the platform's programs but was registered without the `F`
    /// flag, so the kernel would look for its interpreter inside the step's root: the
    /// emulator would have to be copied into the image.
    #[error("cannot run {platform} steps: binfmt_misc handler {handler} ({interpreter}) lacks the F flag, so the emulator would have to be inside the image; fix: {fix}")]
    EmulationWithoutFixBinary {
        /// The platform as `os/arch[/variant]`.
        platform: String,
        /// The handler's name in `/proc/sys/fs/binfmt_misc`.
        handler: String,
        /// Its interpreter.
        interpreter: PathBuf,
        /// The commands that re-register it with `F`.
        fix: String,
    },
    /// The binfmt_misc handler's interpreter is dynamically linked: even opened on the host
    /// (`F`), it would need its loader and libraries inside the step's root. Debian's
    /// `qemu-user-static` interpreters are static.
    #[error("cannot run {platform} steps: binfmt_misc handler {handler} runs {interpreter}, which is dynamically linked and would need its libraries inside the image; fix: {fix}")]
    DynamicEmulator {
        /// The platform as `os/arch[/variant]`.
        platform: String,
        /// The handler's name in `/proc/sys/fs/binfmt_misc`.
        handler: String,
        /// Its interpreter.
        interpreter: PathBuf,
        /// What to install and run instead.
        fix: String,
    },
    /// Mounting binfmt_misc, reading it or registering a handler failed.
    #[error("setting up emulation for {platform}: {step}")]
    EmulationSetup {
        /// The platform as `os/arch[/variant]`.
        platform: String,
        /// What was being done (the equivalent shell command where there is one).
        step: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The run was cancelled through its [`CancelToken`](crate::CancelToken); the process tree was killed.
    #[error("run cancelled; the step's processes were killed")]
    Cancelled,
}
