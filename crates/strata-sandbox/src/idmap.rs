//! The user namespace's id maps when strata runs without root.
//!
//! An unprivileged process may map only itself into a new user namespace: container root is
//! the caller, and no other id exists, so `USER app` cannot work. podman and buildah get more
//! ids from the subordinate ranges that `/etc/subuid` and `/etc/subgid` grant the user
//! (`name_or_uid:start:count`): the setuid helpers `newuidmap`/`newgidmap` check those files
//! and write the child's `uid_map`/`gid_map` for it. We do the same: container id 0 is the
//! caller, and container ids 1, 2, ... are the subordinate ranges laid end to end, in file
//! order. The helpers run in the parent after the `clone`, while the child waits on a pipe;
//! their exact command lines come from [`IdMap::helper_commands`] and run through
//! [`HostCommands`], so the recording fake can check them without root.
//!
//! Without ranges or helpers, or when a helper fails, the map is [`IdMap::Single`]: the child
//! writes `0 <caller> 1` itself (after denying `setgroups`, as the kernel requires), and the
//! reason is kept for the [`UnmappedUser`](crate::SandboxError::UnmappedUser) message.

use std::ffi::{CStr, OsStr};
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Host files granting subordinate ids.
pub(crate) const SUBUID: &str = "/etc/subuid";
/// See [`SUBUID`].
pub(crate) const SUBGID: &str = "/etc/subgid";

/// The kernel accepts at most 340 lines in a map; line one is the caller.
const MAX_RANGES: usize = 339;

/// One subordinate range: host ids `start .. start + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubIdRange {
    pub start: u32,
    pub count: u32,
}

/// The ranges that a subuid/subgid file grants to the user called `name` or numbered `uid`
/// (both files are keyed by the *user*). Comments, blank and malformed lines, empty ranges,
/// ranges reaching `u32::MAX` (not a valid id) and ranges overlapping an earlier one are
/// skipped; at most [`MAX_RANGES`] are kept, and no more than fit the container's 32-bit
/// id space.
pub(crate) fn parse_subid(text: &str, name: Option<&str>, uid: u32) -> Vec<SubIdRange> {
    let uid_text = uid.to_string();
    let mut out: Vec<SubIdRange> = Vec::new();
    let mut total: u64 = 1;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        let [owner, start, count] = fields[..] else { continue };
        if owner != uid_text && Some(owner) != name {
            continue;
        }
        let (Ok(start), Ok(count)) = (start.trim().parse::<u32>(), count.trim().parse::<u32>())
        else {
            continue;
        };
        let end = u64::from(start) + u64::from(count);
        if count == 0 || end > u64::from(u32::MAX) {
            continue;
        }
        let overlaps = out.iter().any(|r| {
            u64::from(start) < u64::from(r.start) + u64::from(r.count) && end > u64::from(r.start)
        });
        if overlaps {
            continue;
        }
        if out.len() == MAX_RANGES || total + u64::from(count) > u64::from(u32::MAX) {
            break;
        }
        total += u64::from(count);
        out.push(SubIdRange { start, count });
    }
    out
}

/// How container ids map to host ids in a rootless step's user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdMap {
    /// Only container 0, the caller (`uid`/`gid`), written by the child itself; `why` says
    /// why subordinate ids are not used.
    Single { uid: u32, gid: u32, why: String },
    /// Container 0 is the caller, 1.. the ranges; written by the helpers from the parent.
    Subordinate {
        uid: u32,
        gid: u32,
        uids: Vec<SubIdRange>,
        gids: Vec<SubIdRange>,
        newuidmap: PathBuf,
        newgidmap: PathBuf,
    },
}

/// One helper run: `program args...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HelperCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// A helper that could not be run or exited non-zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HelperFailure {
    pub command: HelperCommand,
    /// The exit status and stderr, or the spawn error.
    pub detail: String,
}

impl fmt::Display for HelperFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.command.program.display())?;
        for a in &self.command.args {
            write!(f, " {a}")?;
        }
        write!(f, " failed: {}", self.detail)
    }
}

fn count_of(ranges: &[SubIdRange]) -> u64 {
    1 + ranges.iter().map(|r| u64::from(r.count)).sum::<u64>()
}

fn map_args(pid: libc::pid_t, own: u32, ranges: &[SubIdRange]) -> Vec<String> {
    let mut args = vec![pid.to_string(), "0".into(), own.to_string(), "1".into()];
    let mut inside: u64 = 1;
    for r in ranges {
        args.extend([inside.to_string(), r.start.to_string(), r.count.to_string()]);
        inside += u64::from(r.count);
    }
    args
}

impl IdMap {
    /// How many container uids exist (0 .. n).
    fn uid_count(&self) -> u64 {
        match self {
            IdMap::Single { .. } => 1,
            IdMap::Subordinate { uids, .. } => count_of(uids),
        }
    }
    fn gid_count(&self) -> u64 {
        match self {
            IdMap::Single { .. } => 1,
            IdMap::Subordinate { gids, .. } => count_of(gids),
        }
    }
    /// Whether container uid `uid` is mapped.
    pub(crate) fn maps_uid(&self, uid: u32) -> bool {
        u64::from(uid) < self.uid_count()
    }
    /// Whether container gid `gid` is mapped.
    pub(crate) fn maps_gid(&self, gid: u32) -> bool {
        u64::from(gid) < self.gid_count()
    }
    /// What is mapped, for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            IdMap::Single { why, .. } => {
                format!("uid/gid 0 (the caller): subordinate ids are not used: {why}")
            }
            IdMap::Subordinate { .. } => format!(
                "uids 0-{} and gids 0-{} (the caller and its subordinate ids)",
                self.uid_count() - 1,
                self.gid_count() - 1
            ),
        }
    }
    /// The `newuidmap`, `newgidmap` runs that map the ids of process `pid` (none for
    /// [`IdMap::Single`]).
    pub(crate) fn helper_commands(&self, pid: libc::pid_t) -> Vec<HelperCommand> {
        match self {
            IdMap::Single { .. } => Vec::new(),
            IdMap::Subordinate { uid, gid, uids, gids, newuidmap, newgidmap } => vec![
                HelperCommand { program: newuidmap.clone(), args: map_args(pid, *uid, uids) },
                HelperCommand { program: newgidmap.clone(), args: map_args(pid, *gid, gids) },
            ],
        }
    }
}

/// A host file's text, or why it could not be read.
pub(crate) type FileText = Result<String, String>;

/// Chooses the map from host facts: the caller's ids and user name, the subuid/subgid
/// files' contents, and where the helpers are (`None`: not in PATH).
pub(crate) fn choose(
    uid: u32,
    gid: u32,
    name: Option<&str>,
    subuid: &FileText,
    subgid: &FileText,
    helpers: (Option<PathBuf>, Option<PathBuf>),
) -> IdMap {
    let who = match name {
        Some(n) => format!("user {n:?} (uid {uid})"),
        None => format!("uid {uid}"),
    };
    let ranges = |file: &FileText, path: &str| match file {
        Ok(text) => {
            let r = parse_subid(text, name, uid);
            if r.is_empty() {
                Err(format!("no range for {who} in {path}"))
            } else {
                Ok(r)
            }
        }
        Err(e) => Err(format!("cannot read {path}: {e}")),
    };
    let single = |why: String| IdMap::Single { uid, gid, why };
    let (Some(newuidmap), Some(newgidmap)) = helpers else {
        return single("newuidmap/newgidmap not found in PATH (package uidmap)".into());
    };
    match (ranges(subuid, SUBUID), ranges(subgid, SUBGID)) {
        (Ok(uids), Ok(gids)) => IdMap::Subordinate { uid, gid, uids, gids, newuidmap, newgidmap },
        (Err(why), _) | (_, Err(why)) => single(why),
    }
}

/// [`choose`] with the facts of this host and process.
pub(crate) fn detect(uid: u32, gid: u32) -> IdMap {
    let read = |p: &str| fs::read_to_string(p).map_err(|e| e.to_string());
    let path = std::env::var_os("PATH");
    let path = path.as_deref().unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    let name = user_name(uid);
    choose(
        uid,
        gid,
        name.as_deref(),
        &read(SUBUID),
        &read(SUBGID),
        (find_program("newuidmap", path), find_program("newgidmap", path)),
    )
}

/// The first executable regular file `name` in the directories of `path`.
pub(crate) fn find_program(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The login name of `uid` (through NSS, as the helpers look it up).
fn user_name(uid: u32) -> Option<String> {
    let mut size = 1024;
    while size <= 1 << 20 {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: a zeroed passwd is a valid out-parameter; getpwuid_r fills it with
        // pointers into `buf`, which outlives their use below.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: valid pointers and the buffer's real length.
        let r =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if r == libc::ERANGE {
            size *= 4;
            continue;
        }
        if r != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: pw_name points to a NUL-terminated string in `buf`.
        return unsafe { CStr::from_ptr(pwd.pw_name) }.to_str().ok().map(str::to_string);
    }
    None
}

/// Runs helper programs on the host.
pub(crate) trait HostCommands {
    /// Runs `command` to completion; an error carries the status and stderr.
    fn run(&mut self, command: &HelperCommand) -> Result<(), String>;
}

/// Runs them for real (stdin and stdout `/dev/null`, stderr captured).
pub(crate) struct RealCommands;

impl HostCommands for RealCommands {
    fn run(&mut self, command: &HelperCommand) -> Result<(), String> {
        let out = Command::new(&command.program)
            .args(&command.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!("{}: {}", out.status, stderr.trim()))
    }
}

/// Writes the maps of process `pid` with the helpers; stops at the first failure.
pub(crate) fn apply(
    map: &IdMap,
    pid: libc::pid_t,
    host: &mut dyn HostCommands,
) -> Result<(), HelperFailure> {
    for command in map.helper_commands(pid) {
        host.run(&command).map_err(|detail| HelperFailure { command, detail })?;
    }
    Ok(())
}

/// The file name of a helper's path.
#[cfg(test)]
fn program_name(path: &std::path::Path) -> String {
    path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned())
}

/// A fake that records each command line and fails those starting with `fail_on`.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct RecordingCommands {
    pub calls: Vec<String>,
    pub fail_on: Option<String>,
}

#[cfg(test)]
impl HostCommands for RecordingCommands {
    fn run(&mut self, command: &HelperCommand) -> Result<(), String> {
        let line = format!("{} {}", command.program.display(), command.args.join(" "));
        let fails = self.fail_on.as_deref().is_some_and(|f| program_name(&command.program) == f);
        self.calls.push(line);
        if fails {
            Err("exit status: 1: newuidmap: write to uid_map failed: Operation not permitted"
                .into())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SUBUID_FIXTURE: &str = "\
# comment line
alice:100000:65536
bob:165536:65536
  1000:300000:1000  
alice:200000:10
alice:100010:5
broken line
carol:1:2:3
alice:abc:10
alice:5:0
alice:4294967290:10

alice:400000:1
";

    fn r(start: u32, count: u32) -> SubIdRange {
        SubIdRange { start, count }
    }

    #[test]
    fn ranges_match_name_or_uid_in_file_order_skipping_bad_lines() {
        assert_eq!(
            parse_subid(SUBUID_FIXTURE, Some("alice"), 1000),
            [r(100000, 65536), r(300000, 1000), r(200000, 10), r(400000, 1)]
        );
        assert_eq!(parse_subid(SUBUID_FIXTURE, None, 1000), [r(300000, 1000)]);
        assert_eq!(parse_subid(SUBUID_FIXTURE, Some("bob"), 7), [r(165536, 65536)]);
        assert_eq!(parse_subid(SUBUID_FIXTURE, Some("dave"), 7), []);
        assert_eq!(parse_subid("", Some("alice"), 1000), []);
        assert_eq!(parse_subid("a:4294967294:1\n", Some("a"), 1), [r(u32::MAX - 1, 1)]);
        assert_eq!(parse_subid("a:4294967295:1\n", Some("a"), 1), [], "id 2^32-1 is invalid");
    }

    #[test]
    fn ranges_stop_at_the_kernel_line_limit_and_the_id_space() {
        let many: String = (0..400).map(|i| format!("u:{}:1\n", 1000 + i)).collect();
        assert_eq!(parse_subid(&many, Some("u"), 1).len(), MAX_RANGES);
        let big = "u:0:4294967295\nu:4294967295:1\n";
        assert_eq!(parse_subid(big, Some("u"), 1), [], "the first fills more than 2^32 - 1");
        let big = "u:1:4294967294\nu:0:1\n";
        assert_eq!(parse_subid(big, Some("u"), 1), [r(1, 4294967294)]);
    }

    fn subordinate() -> IdMap {
        choose(
            1000,
            1001,
            Some("alice"),
            &Ok(SUBUID_FIXTURE.into()),
            &Ok("1000:500000:65536\n".into()),
            (Some("/usr/bin/newuidmap".into()), Some("/usr/bin/newgidmap".into())),
        )
    }

    #[test]
    fn helper_argv_lays_ranges_end_to_end_after_the_caller() {
        let map = subordinate();
        let mut host = RecordingCommands::default();
        apply(&map, 4321, &mut host).unwrap();
        assert_eq!(
            host.calls,
            [
                "/usr/bin/newuidmap 4321 0 1000 1 1 100000 65536 65537 300000 1000 66537 200000 10 66547 400000 1",
                "/usr/bin/newgidmap 4321 0 1001 1 1 500000 65536",
            ]
        );
        assert!(map.maps_uid(66547) && !map.maps_uid(66548));
        assert!(map.maps_gid(65536) && !map.maps_gid(65537));
        assert_eq!(
            map.describe(),
            "uids 0-66547 and gids 0-65536 (the caller and its subordinate ids)"
        );
    }

    #[test]
    fn a_failing_helper_stops_and_is_reported_with_its_command_line() {
        let mut host =
            RecordingCommands { fail_on: Some("newuidmap".into()), ..Default::default() };
        let err = apply(&subordinate(), 9, &mut host).unwrap_err();
        assert_eq!(host.calls.len(), 1, "newgidmap is not tried");
        let shown = err.to_string();
        assert!(shown.starts_with("/usr/bin/newuidmap 9 0 1000 1 1 100000 65536 "), "{shown}");
        assert!(shown.contains("failed: exit status: 1: newuidmap: write"), "{shown}");
    }

    #[test]
    fn without_helpers_or_ranges_only_the_caller_is_mapped_and_why_is_said() {
        let helpers = || (Some(PathBuf::from("/a/newuidmap")), Some(PathBuf::from("/a/newgidmap")));
        let text = |s: &str| -> FileText { Ok(s.to_string()) };
        let why = |m: IdMap| match m {
            IdMap::Single { uid: 1000, gid: 1001, why } => why,
            other => panic!("{other:?}"),
        };
        let m = choose(
            1000,
            1001,
            Some("alice"),
            &text("alice:1:2\n"),
            &text("alice:1:2\n"),
            (None, None),
        );
        assert_eq!(why(m), "newuidmap/newgidmap not found in PATH (package uidmap)");
        let m =
            choose(1000, 1001, Some("alice"), &text("bob:1:2\n"), &text("alice:1:2\n"), helpers());
        assert_eq!(why(m), "no range for user \"alice\" (uid 1000) in /etc/subuid");
        let m =
            choose(1000, 1001, None, &text("1000:1:2\n"), &Err("No such file".into()), helpers());
        assert_eq!(why(m), "cannot read /etc/subgid: No such file");
        let single = IdMap::Single { uid: 5, gid: 5, why: "x".into() };
        assert!(single.maps_uid(0) && !single.maps_uid(1) && !single.maps_gid(1));
        assert_eq!(single.helper_commands(1), []);
    }

    #[test]
    fn programs_are_found_only_as_executable_files_in_path() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("newuidmap");
        fs::write(&exe, "#!/bin/sh\n").unwrap();
        let path = std::env::join_paths([Path::new("relative"), dir.path()]).unwrap();
        assert_eq!(find_program("newuidmap", &path), None, "not executable");
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_program("newuidmap", &path), Some(exe));
        fs::create_dir(dir.path().join("newgidmap")).unwrap();
        assert_eq!(find_program("newgidmap", &path), None, "a directory");
    }
}
