//! `strata build --memory/--memory-swap/--cpu-*/--cpuset-*` (issue 19): every RUN in a
//! cgroup of its own with the limits, removed afterwards. Runs on the host's real cgroups
//! (v1 hierarchies or v2 with the controllers); the v2 file writes are unit-tested in
//! strata-sandbox against a fake cgroupfs. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::{needs_root, run, strata, strict, workspace};

/// The host can hold a memory and a cpuset limit (cgroup v2 with the controllers, or v1's
/// hierarchies); skips otherwise (fails under STRATA_TEST_STRICT=1).
#[allow(clippy::print_stderr)]
fn cgroups_usable() -> bool {
    let root = Path::new("/sys/fs/cgroup");
    let v2 = std::fs::read_to_string(root.join("cgroup.controllers"))
        .is_ok_and(|c| c.contains("memory") && c.contains("cpuset"));
    let v1 =
        root.join("memory/cgroup.procs").is_file() && root.join("cpuset/cgroup.procs").is_file();
    if !(v1 || v2) {
        if strict() {
            panic!("no usable cgroup memory/cpuset controllers and STRATA_TEST_STRICT=1");
        }
        eprintln!("skipping: no usable cgroup memory/cpuset controllers");
    }
    v1 || v2
}

struct Rig {
    tmp: tempfile::TempDir,
}

impl Rig {
    fn new() -> Option<Rig> {
        if !needs_root() || !cgroups_usable() {
            return None;
        }
        let rig = Rig { tmp: tempfile::tempdir().unwrap() };
        run(Command::new(workspace().join("examples/lamp/make-base.sh"))
            .env("STRATA", env!("CARGO_BIN_EXE_strata"))
            .env("STRATA_STORE", rig.store()));
        Some(rig)
    }
    fn store(&self) -> PathBuf {
        self.tmp.path().join("store")
    }
    /// Builds a recipe of `run` lines on the LAMP base with `flags`.
    fn build(&self, name: &str, run: &str, flags: &[&str]) -> Output {
        let ctx = self.tmp.path().join(name);
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), format!("FROM lamp-base:latest\nRUN {run}\n"))
            .unwrap();
        let mut args = vec!["build", "--progress", "plain"];
        args.extend_from_slice(flags);
        args.push(ctx.to_str().unwrap());
        strata(&self.store(), &args)
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Every `strata-PID-N` cgroup path the step printed from /proc/self/cgroup, as a host path
/// (v1: `/sys/fs/cgroup/CONTROLLER/PATH`, v2: `/sys/fs/cgroup/PATH`).
fn step_cgroups(log: &str) -> Vec<PathBuf> {
    log.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(' ').and_then(|(_, r)| r.split_once(' '))?;
            let mut f = rest.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            path.contains("/strata-").then(|| {
                let c = controllers.split(',').next().unwrap_or("");
                Path::new("/sys/fs/cgroup").join(c).join(path.trim_start_matches('/'))
            })
        })
        .collect()
}

#[test]
fn a_step_over_its_memory_limit_is_killed_and_the_build_says_why() {
    let Some(rig) = Rig::new() else { return };
    // busybox dd's 100 MiB buffer, filled from /dev/zero.
    let hog = "busybox dd if=/dev/zero of=/dev/null bs=100M count=1 && echo sur''vived";
    let out = rig.build("hog", hog, &["--memory", "32m"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("memory limit") && log.contains("--memory"), "{log}");
    assert!(!log.contains("survived"), "{log}");
    // The same step without the limit runs (what failed was the limit).
    let out = rig.build("hog", hog, &[]);
    assert!(out.status.success() && text(&out).contains("survived"), "{}", text(&out));
}

#[test]
fn a_step_runs_in_a_strata_cgroup_with_its_cpuset_and_leaves_none_behind() {
    let Some(rig) = Rig::new() else { return };
    let script = "cat /proc/self/cgroup; busybox grep Cpus_allowed_list /proc/self/status; \
                  echo nproc=$(busybox nproc); \
                  echo cpus=$(cat /sys/fs/cgroup/cpuset$(busybox grep cpuset /proc/self/cgroup | busybox cut -d: -f3)/cpuset.cpus 2>/dev/null || \
                  cat /sys/fs/cgroup$(busybox grep ^0:: /proc/self/cgroup | busybox cut -d: -f3)/cpuset.cpus)";
    let out = rig.build(
        "cpuset",
        script,
        &["--cpuset-cpus", "0", "--memory", "64m", "--cpu-shares", "512"],
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    let cgroups = step_cgroups(&log);
    assert!(!cgroups.is_empty(), "no strata cgroup in /proc/self/cgroup:\n{log}");
    assert!(log.contains("Cpus_allowed_list:\t0\n"), "{log}");
    assert!(log.contains("nproc=1\n") && log.contains("cpus=0\n"), "{log}");
    for dir in &cgroups {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    // A failing step's cgroup goes too.
    let out = rig.build("fails", "cat /proc/self/cgroup; exit 3", &["--cpuset-cpus", "0"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    let cgroups = step_cgroups(&log);
    assert!(!cgroups.is_empty(), "{log}");
    for dir in &cgroups {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn bad_limits_are_one_error_naming_the_flag() {
    let Some(rig) = Rig::new() else { return };
    let out = rig.build("bad", "true", &["--memory", "lots"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--memory"), "{}", text(&out));
    // A CPU this machine does not have: the kernel refuses it.
    let out = rig.build("bad", "true", &["--cpuset-cpus", "4095"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--cpuset-cpus 4095"), "{}", text(&out));
    let out = rig.build("bad", "true", &["--memory-swap", "64m"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--memory-swap") && text(&out).contains("--memory"));
    let out = rig.build("bad", "true", &["--cpu-quota", "10"]);
    assert!(text(&out).contains("--cpu-quota"), "{}", text(&out));
    assert_eq!(out.status.code(), Some(1));
}
