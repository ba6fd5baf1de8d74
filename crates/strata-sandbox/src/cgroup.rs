//! CPU and memory limits of a step: a cgroup of its own per RUN (buildah's and Docker's
//! `--memory`, `--memory-swap`, `--cpu-shares`, `--cpu-period`, `--cpu-quota`,
//! `--cpuset-cpus`, `--cpuset-mems`).
//!
//! When a step has limits, [`RunCgroup::create`] makes a cgroup `strata-PID-N` below the
//! cgroup strata itself runs in (so the step stays inside whatever limits strata has) and
//! writes the limits; the sandbox's child waits on its sync pipe until the parent has written
//! its pid into the cgroup, so the command runs limited from its first instruction, and the
//! cgroup is removed when the step is over, whether it succeeded, failed or was killed
//! ([`Drop`]). Leftovers of a strata killed outright (empty cgroups named after a dead pid) are
//! removed the next time a limited step runs there.
//!
//! Two layouts are handled. cgroup v2, when `/sys/fs/cgroup` is a cgroup2 mount
//! (`cgroup.controllers` at its top): the controllers the limits need must be available to
//! strata's cgroup and are enabled in its `cgroup.subtree_control` (`memory.max`,
//! `memory.swap.max`, `cpu.weight`, `cpu.max`, `cpuset.cpus`, `cpuset.mems`). cgroup v1 (one
//! hierarchy per controller, `/sys/fs/cgroup/memory`, `/sys/fs/cgroup/cpu`, ...; a host whose
//! v2 mount at `/sys/fs/cgroup/unified` has no controllers is v1 for this): a cgroup in each
//! hierarchy a limit needs (`memory.limit_in_bytes`, `memory.memsw.limit_in_bytes`,
//! `cpu.shares`, `cpu.cfs_period_us`, `cpu.cfs_quota_us`, `cpuset.cpus`, `cpuset.mems`, the
//! cpuset copied from the parent when not given, as v1 requires). Neither usable (no
//! controller, or no right to make a cgroup: rootless without delegation) is an error naming
//! the flag that needed it, as is a value the kernel refuses.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::SandboxError;

/// `--memory-swap`: Docker's total of memory and swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySwap {
    /// `-1`: swap without limit.
    Unlimited,
    /// Memory plus swap, in bytes (at least `--memory`).
    Bytes(u64),
}

/// The cgroup limits of a step; all `None` (the default) means no cgroup is made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// `--memory`: bytes of memory; the step is OOM-killed above it.
    pub memory: Option<u64>,
    /// `--memory-swap`: memory plus swap (needs `memory`); Docker's default when unset with
    /// `memory` set is twice `memory`.
    pub memory_swap: Option<MemorySwap>,
    /// `--cpu-shares`: relative CPU weight (1024 is the default share; 2..=262144).
    pub cpu_shares: Option<u64>,
    /// `--cpu-period`: the CFS period in microseconds (1000..=1000000).
    pub cpu_period: Option<u64>,
    /// `--cpu-quota`: microseconds of CPU per period (at least 1000; `-1`: no limit).
    pub cpu_quota: Option<i64>,
    /// `--cpuset-cpus`: the CPUs the step may run on (`0-3`, `0,2`).
    pub cpuset_cpus: Option<String>,
    /// `--cpuset-mems`: the memory nodes it may use.
    pub cpuset_mems: Option<String>,
}

/// Parses `--memory-swap`: `-1` or a size as [`crate::parse_size`] reads it.
impl std::str::FromStr for MemorySwap {
    type Err = SandboxError;

    fn from_str(s: &str) -> Result<MemorySwap, SandboxError> {
        match s.trim() {
            "-1" => Ok(MemorySwap::Unlimited),
            v => crate::parse_size(v).map(MemorySwap::Bytes),
        }
    }
}

impl fmt::Display for MemorySwap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemorySwap::Unlimited => f.write_str("-1"),
            MemorySwap::Bytes(b) => write!(f, "{b}"),
        }
    }
}

impl fmt::Display for CgroupLimits {
    /// The limits set, as flags (`--memory=33554432 --cpuset-cpus=0`): what a cache key
    /// records.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(m) = self.memory {
            parts.push(format!("--memory={m}"));
        }
        if let Some(swap) = self.memory_swap {
            parts.push(format!("--memory-swap={swap}"));
        }
        if let Some(v) = self.cpu_shares {
            parts.push(format!("--cpu-shares={v}"));
        }
        if let Some(v) = self.cpu_period {
            parts.push(format!("--cpu-period={v}"));
        }
        if let Some(v) = self.cpu_quota {
            parts.push(format!("--cpu-quota={v}"));
        }
        if let Some(v) = &self.cpuset_cpus {
            parts.push(format!("--cpuset-cpus={v}"));
        }
        if let Some(v) = &self.cpuset_mems {
            parts.push(format!("--cpuset-mems={v}"));
        }
        f.write_str(&parts.join(" "))
    }
}

impl CgroupLimits {
    /// Whether any limit is set (a cgroup is needed).
    pub fn is_empty(&self) -> bool {
        *self == CgroupLimits::default()
    }

    /// Checks the values the kernel would refuse anyway, before any work, naming the flag.
    pub fn validate(&self) -> Result<(), SandboxError> {
        let bad = |flag: &'static str, value: String, reason: &'static str| {
            Err(SandboxError::BadCgroupLimit { flag, value, reason })
        };
        // The kernel's floor is lower, but a limit this small kills any shell (Docker's).
        if let Some(m) = self.memory.filter(|m| *m < 6 << 20) {
            return bad("--memory", m.to_string(), "the minimum is 6m");
        }
        if let Some(swap) = self.memory_swap {
            let Some(memory) = self.memory else {
                return bad("--memory-swap", swap.to_string(), "it needs --memory too");
            };
            if let MemorySwap::Bytes(b) = swap {
                if b < memory {
                    return bad(
                        "--memory-swap",
                        b.to_string(),
                        "it is memory plus swap: at least --memory",
                    );
                }
            }
        }
        if let Some(s) = self.cpu_shares.filter(|s| !(2..=262_144).contains(s)) {
            return bad("--cpu-shares", s.to_string(), "from 2 to 262144");
        }
        if let Some(p) = self.cpu_period.filter(|p| !(1000..=1_000_000).contains(p)) {
            return bad("--cpu-period", p.to_string(), "from 1000 to 1000000 microseconds");
        }
        if let Some(q) = self.cpu_quota.filter(|q| *q != -1 && *q < 1000) {
            return bad("--cpu-quota", q.to_string(), "at least 1000 microseconds, or -1");
        }
        for (flag, v) in
            [("--cpuset-cpus", &self.cpuset_cpus), ("--cpuset-mems", &self.cpuset_mems)]
        {
            if let Some(v) = v.as_ref().filter(|v| !is_cpu_list(v)) {
                return bad(flag, v.clone(), "a list like 0-3,5");
            }
        }
        Ok(())
    }

    /// The files to write, in order: (controller, flag, v1 file, v2 file, value). A `None`
    /// file means the layout has no such setting (and the value is written to the other).
    fn writes(&self) -> Vec<Setting> {
        let mut out = Vec::new();
        let mut push = |controller,
                        flag,
                        v1: Option<&'static str>,
                        v2: Option<&'static str>,
                        v1_value: String,
                        v2_value: String| {
            out.push(Setting { controller, flag, v1, v2, v1_value, v2_value })
        };
        // cpuset first: a v1 cpuset cgroup takes no process before both are set.
        if let Some(c) = &self.cpuset_cpus {
            push(
                "cpuset",
                "--cpuset-cpus",
                Some("cpuset.cpus"),
                Some("cpuset.cpus"),
                c.clone(),
                c.clone(),
            );
        }
        if let Some(m) = &self.cpuset_mems {
            push(
                "cpuset",
                "--cpuset-mems",
                Some("cpuset.mems"),
                Some("cpuset.mems"),
                m.clone(),
                m.clone(),
            );
        }
        if let Some(s) = self.cpu_shares {
            // runc's conversion of shares (2..262144) to v2's weight (1..10000).
            let weight = 1 + ((s.saturating_sub(2)) * 9999) / 262_142;
            push(
                "cpu",
                "--cpu-shares",
                Some("cpu.shares"),
                Some("cpu.weight"),
                s.to_string(),
                weight.to_string(),
            );
        }
        if let Some(p) = self.cpu_period {
            push(
                "cpu",
                "--cpu-period",
                Some("cpu.cfs_period_us"),
                None,
                p.to_string(),
                String::new(),
            );
        }
        if let Some(q) = self.cpu_quota {
            push(
                "cpu",
                "--cpu-quota",
                Some("cpu.cfs_quota_us"),
                None,
                q.to_string(),
                String::new(),
            );
        }
        if self.cpu_period.is_some() || self.cpu_quota.is_some() {
            // v2 has both in one file: `QUOTA PERIOD`, `max` for none.
            let quota = match self.cpu_quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".into(),
            };
            let period = self.cpu_period.unwrap_or(100_000);
            let flag = if self.cpu_quota.is_some() { "--cpu-quota" } else { "--cpu-period" };
            push("cpu", flag, None, Some("cpu.max"), String::new(), format!("{quota} {period}"));
        }
        if let Some(m) = self.memory {
            push(
                "memory",
                "--memory",
                Some("memory.limit_in_bytes"),
                Some("memory.max"),
                m.to_string(),
                m.to_string(),
            );
            // Docker: memory-swap unset means as much swap as memory.
            let total = match self.memory_swap {
                Some(MemorySwap::Unlimited) => None,
                Some(MemorySwap::Bytes(b)) => Some(b),
                None => Some(m.saturating_mul(2)),
            };
            let flag = if self.memory_swap.is_some() { "--memory-swap" } else { "--memory" };
            push(
                "memory",
                flag,
                Some("memory.memsw.limit_in_bytes"),
                Some("memory.swap.max"),
                total.map_or("-1".into(), |t| t.to_string()),
                total.map_or("max".into(), |t| (t - m).to_string()),
            );
        }
        out
    }
}

/// `0-3,5,7-8`.
fn is_cpu_list(s: &str) -> bool {
    !s.is_empty()
        && s.split(',').all(|part| {
            let mut ends = part.splitn(2, '-');
            let num = |x: Option<&str>| {
                x.is_some_and(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
            };
            match part.contains('-') {
                true => num(ends.next()) && num(ends.next()),
                false => num(Some(part)),
            }
        })
}

struct Setting {
    controller: &'static str,
    flag: &'static str,
    v1: Option<&'static str>,
    v2: Option<&'static str>,
    v1_value: String,
    v2_value: String,
}

/// Where the cgroup filesystems are and which cgroup strata is in: the host's
/// (`/sys/fs/cgroup`, `/proc/self/cgroup`), or a fake one for tests.
#[derive(Debug, Clone)]
pub(crate) struct CgroupFs {
    /// The cgroup mount point (`/sys/fs/cgroup`).
    pub root: PathBuf,
    /// The text of `/proc/self/cgroup`.
    pub membership: String,
}

impl CgroupFs {
    /// The host's.
    pub fn host() -> CgroupFs {
        CgroupFs {
            root: PathBuf::from("/sys/fs/cgroup"),
            membership: fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        }
    }

    /// strata's own cgroup path in the hierarchy of `controller` (`""` for v2's).
    fn own_path(&self, controller: &str) -> Option<&str> {
        self.membership.lines().find_map(|line| {
            let mut f = line.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let hit = match controller {
                "" => controllers.is_empty(),
                c => controllers.split(',').any(|x| x == c),
            };
            hit.then_some(path)
        })
    }

    fn is_v2(&self) -> bool {
        self.root.join("cgroup.controllers").is_file()
    }
}

/// Numbers this process's step cgroups.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// The cgroup (one per v1 hierarchy) of one running step; removed on drop.
#[derive(Debug)]
pub(crate) struct RunCgroup {
    /// The step's cgroup directories (one per hierarchy), made by us.
    dirs: Vec<PathBuf>,
    /// Where the memory controller's counters are (its OOM kill count), with the layout.
    memory: Option<(PathBuf, bool)>,
}

impl RunCgroup {
    /// Makes the step's cgroup with `limits` in `cgroups` (the host's, in production), or
    /// nothing when no limit is set.
    pub fn create(
        limits: &CgroupLimits,
        cgroups: &CgroupFs,
    ) -> Result<Option<RunCgroup>, SandboxError> {
        if limits.is_empty() {
            return Ok(None);
        }
        limits.validate()?;
        let settings = limits.writes();
        let name =
            format!("strata-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut cg = RunCgroup { dirs: Vec::new(), memory: None };
        if cgroups.is_v2() {
            cg.create_v2(&settings, cgroups, &name)?;
        } else {
            cg.create_v1(&settings, cgroups, &name)?;
        }
        Ok(Some(cg))
    }

    fn create_v2(
        &mut self,
        settings: &[Setting],
        cgroups: &CgroupFs,
        name: &str,
    ) -> Result<(), SandboxError> {
        let first = &settings[0];
        let unavailable =
            |flag: &'static str, why: String| SandboxError::CgroupUnavailable { flag, why };
        let own = cgroups.own_path("").ok_or_else(|| {
            unavailable(first.flag, "/proc/self/cgroup names no cgroup v2 membership".into())
        })?;
        let base = cgroups.root.join(own.trim_start_matches('/'));
        let available = fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        let enabled = fs::read_to_string(base.join("cgroup.subtree_control")).unwrap_or_default();
        let mut enable = Vec::new();
        for s in settings {
            if !available.split_whitespace().any(|c| c == s.controller) {
                return Err(unavailable(s.flag, format!("the {} controller is not available to {} (cgroup v2 without delegation of it)", s.controller, base.display())));
            }
            let plus = format!("+{}", s.controller);
            if !enabled.split_whitespace().any(|c| c == s.controller) && !enable.contains(&plus) {
                enable.push(plus);
            }
        }
        if !enable.is_empty() {
            let path = base.join("cgroup.subtree_control");
            fs::write(&path, enable.join(" ")).map_err(|e| {
                unavailable(first.flag, format!("cannot enable {} in {}: {e} (a cgroup v2 with processes of its own takes no controllers for its children; run strata in a delegated cgroup of its own)", enable.join(" "), path.display()))
            })?;
        }
        sweep(&base);
        let dir = base.join(name);
        make_dir(&dir, first.flag)?;
        self.dirs.push(dir.clone());
        for s in settings {
            if let Some(file) = s.v2 {
                write_limit(&dir.join(file), &s.v2_value, s.flag)?;
            }
        }
        if settings.iter().any(|s| s.controller == "memory") {
            self.memory = Some((dir, true));
        }
        Ok(())
    }

    fn create_v1(
        &mut self,
        settings: &[Setting],
        cgroups: &CgroupFs,
        name: &str,
    ) -> Result<(), SandboxError> {
        let mut controllers: Vec<&'static str> = Vec::new();
        for s in settings {
            if !controllers.contains(&s.controller) {
                controllers.push(s.controller);
            }
        }
        for controller in controllers {
            let flag = settings.iter().find(|s| s.controller == controller).map_or("", |s| s.flag);
            let hierarchy = cgroups.root.join(controller);
            let own =
                cgroups.own_path(controller).filter(|_| hierarchy.join("cgroup.procs").is_file());
            let Some(own) = own else {
                return Err(SandboxError::CgroupUnavailable {
                    flag,
                    why: format!(
                        "{} is neither cgroup v2 nor has a cgroup v1 {controller} hierarchy",
                        cgroups.root.display()
                    ),
                });
            };
            let base = hierarchy.join(own.trim_start_matches('/'));
            sweep(&base);
            let dir = base.join(name);
            make_dir(&dir, flag)?;
            self.dirs.push(dir.clone());
            if controller == "cpuset" {
                // v1 starts a cpuset empty, and an empty one takes no process.
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    if !settings.iter().any(|s| s.v1 == Some(file)) {
                        let parent = fs::read_to_string(base.join(file)).unwrap_or_default();
                        write_limit(&dir.join(file), parent.trim(), flag)?;
                    }
                }
            }
            for s in settings.iter().filter(|s| s.controller == controller) {
                let Some(file) = s.v1 else { continue };
                let path = dir.join(file);
                if file == "memory.memsw.limit_in_bytes" && !base.join(file).exists() {
                    // No swap accounting in this kernel: only an explicit --memory-swap cares.
                    if s.flag == "--memory-swap" {
                        return Err(SandboxError::CgroupUnavailable { flag: s.flag, why: "this kernel does not account swap (no memory.memsw.limit_in_bytes; boot with swapaccount=1)".into() });
                    }
                    continue;
                }
                write_limit(&path, &s.v1_value, s.flag)?;
            }
            if controller == "memory" {
                self.memory = Some((dir, false));
            }
        }
        Ok(())
    }

    /// Puts process `pid` into the step's cgroup(s) (before it execs).
    pub fn add(&self, pid: i32) -> Result<(), SandboxError> {
        for dir in &self.dirs {
            let path = dir.join("cgroup.procs");
            fs::write(&path, pid.to_string()).map_err(|source| SandboxError::Io {
                action: "writing",
                path,
                source,
            })?;
        }
        Ok(())
    }

    /// Whether the kernel's OOM killer killed a process of the step for its memory limit.
    pub fn oom_killed(&self) -> bool {
        let Some((dir, v2)) = &self.memory else { return false };
        let (file, key) = match v2 {
            true => ("memory.events", "oom_kill"),
            false => ("memory.oom_control", "oom_kill"),
        };
        fs::read_to_string(dir.join(file)).unwrap_or_default().lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(key)
                && w.next().and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > 0)
        })
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            remove_cgroup(dir);
        }
    }
}

/// `rmdir` of a cgroup, retried for a moment: the processes of a killed step's pid namespace
/// may still be exiting.
fn remove_cgroup(dir: &Path) {
    for _ in 0..100 {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => return,
        }
    }
}

/// Removes the step cgroups of strata processes that are gone (killed before they could).
fn sweep(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("strata-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = fs::remove_dir(e.path());
        }
    }
}

fn make_dir(dir: &Path, flag: &'static str) -> Result<(), SandboxError> {
    fs::create_dir(dir).map_err(|e| SandboxError::CgroupUnavailable {
        flag,
        why: format!(
            "cannot create the cgroup {}: {e}{}",
            dir.display(),
            match e.kind() {
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem =>
                    " (without root, cgroups need delegation)",
                _ => "",
            }
        ),
    })
}

fn write_limit(path: &Path, value: &str, flag: &'static str) -> Result<(), SandboxError> {
    fs::write(path, value).map_err(|source| SandboxError::CgroupLimit {
        flag,
        value: value.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CgroupLimits {
        CgroupLimits {
            memory: Some(32 << 20),
            memory_swap: Some(MemorySwap::Bytes(48 << 20)),
            cpu_shares: Some(512),
            cpu_period: Some(50_000),
            cpu_quota: Some(25_000),
            cpuset_cpus: Some("0".into()),
            cpuset_mems: Some("0".into()),
        }
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// This host's cgroup v2 mount has no controllers, so the v2 path is tested against a
    /// fake cgroupfs in a temp dir: what it writes where, not what the kernel does with it.
    #[test]
    fn v2_writes_the_limits_into_a_child_of_its_own_cgroup() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        let own = root.join("build.slice");
        fs::create_dir(&own).unwrap();
        fs::write(own.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        fs::write(own.join("cgroup.subtree_control"), "").unwrap();
        let fs_ = CgroupFs { root: root.to_path_buf(), membership: "0::/build.slice\n".into() };
        let cg = RunCgroup::create(&limits(), &fs_).unwrap().unwrap();
        assert_eq!(read(&own.join("cgroup.subtree_control")), "+cpuset +cpu +memory");
        let dir = cg.dirs[0].clone();
        assert_eq!(dir.parent().unwrap(), own);
        assert!(dir.file_name().unwrap().to_str().unwrap().starts_with("strata-"));
        assert_eq!(read(&dir.join("memory.max")), (32u64 << 20).to_string());
        assert_eq!(read(&dir.join("memory.swap.max")), (16u64 << 20).to_string());
        assert_eq!(read(&dir.join("cpu.weight")), "20");
        assert_eq!(read(&dir.join("cpu.max")), "25000 50000");
        assert_eq!(read(&dir.join("cpuset.cpus")), "0");
        assert_eq!(read(&dir.join("cpuset.mems")), "0");
        assert!(!dir.join("memory.limit_in_bytes").exists());
        cg.add(4242).unwrap();
        assert_eq!(read(&dir.join("cgroup.procs")), "4242");
        assert!(!cg.oom_killed());
        fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert!(cg.oom_killed());
    }

    #[test]
    fn v2_without_the_controller_names_the_flag() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("cgroup.controllers"), "pids\n").unwrap();
        let fs_ = CgroupFs { root: t.path().to_path_buf(), membership: "0::/\n".into() };
        let only_memory = CgroupLimits { memory: Some(64 << 20), ..Default::default() };
        let err = RunCgroup::create(&only_memory, &fs_).unwrap_err().to_string();
        assert!(err.contains("--memory") && err.contains("memory controller"), "{err}");
    }

    #[test]
    fn v1_writes_each_hierarchy_and_copies_the_parent_cpuset() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        for c in ["memory", "cpu", "cpuset"] {
            fs::create_dir_all(root.join(c).join("outer")).unwrap();
            fs::write(root.join(c).join("cgroup.procs"), "").unwrap();
        }
        fs::write(root.join("memory/outer/memory.memsw.limit_in_bytes"), "").unwrap();
        fs::write(root.join("cpuset/cpuset.mems"), "0\n").unwrap();
        fs::write(root.join("cpuset/cpuset.cpus"), "0-7\n").unwrap();
        let fs_ = CgroupFs {
            root: root.to_path_buf(),
            membership: "4:memory:/outer\n3:cpuset:/\n1:cpu,cpuacct:/outer\n0::/\n".into(),
        };
        let l = CgroupLimits { cpuset_cpus: Some("1".into()), ..limits() };
        let l = CgroupLimits { cpuset_mems: None, ..l };
        let cg = RunCgroup::create(&l, &fs_).unwrap().unwrap();
        let [cpuset, cpu, memory] = [&cg.dirs[0], &cg.dirs[1], &cg.dirs[2]];
        assert_eq!(cpuset.parent().unwrap(), root.join("cpuset"));
        assert_eq!(read(&cpuset.join("cpuset.cpus")), "1");
        assert_eq!(read(&cpuset.join("cpuset.mems")), "0");
        assert_eq!(cpu.parent().unwrap(), root.join("cpu/outer"));
        assert_eq!(read(&cpu.join("cpu.shares")), "512");
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "50000");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "25000");
        assert_eq!(read(&memory.join("memory.limit_in_bytes")), (32u64 << 20).to_string());
        assert_eq!(read(&memory.join("memory.memsw.limit_in_bytes")), (48u64 << 20).to_string());
        cg.add(7).unwrap();
        for d in &cg.dirs {
            assert_eq!(read(&d.join("cgroup.procs")), "7");
        }
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: [(CgroupLimits, &str); 5] = [
            (CgroupLimits { memory: Some(1024), ..Default::default() }, "--memory"),
            (
                CgroupLimits { memory_swap: Some(MemorySwap::Unlimited), ..Default::default() },
                "--memory-swap",
            ),
            (CgroupLimits { cpu_quota: Some(10), ..Default::default() }, "--cpu-quota"),
            (
                CgroupLimits { cpuset_cpus: Some("zero".into()), ..Default::default() },
                "--cpuset-cpus",
            ),
            (CgroupLimits { cpu_shares: Some(1), ..Default::default() }, "--cpu-shares"),
        ];
        for (l, flag) in cases {
            let err = l.validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
        assert!(is_cpu_list("0-3,5") && !is_cpu_list("0-") && !is_cpu_list(""));
        assert_eq!("-1".parse::<MemorySwap>().unwrap(), MemorySwap::Unlimited);
    }
}
