//! Foreign steps for real: an arm64 busybox run through qemu registered in binfmt_misc with
//! the F flag. Needs root, qemu-user-static and the arm64 fixture
//! (`scripts/arm64-busybox.sh`); skips otherwise unless `STRATA_TEST_STRICT=1`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_sandbox::{ensure_emulation, run, Emulation, Network, RootFs, RunRequest, Stream, User};
use strata_types::Platform;

fn strict() -> bool {
    std::env::var("STRATA_TEST_STRICT").as_deref() == Ok("1")
}

#[allow(clippy::print_stderr)] // the skip message
fn skip(why: &str) {
    if strict() {
        panic!("{why}");
    }
    eprintln!("skipping: {why}");
}

/// The arm64 static busybox from `scripts/arm64-busybox.sh` (which honours
/// `STRATA_ARM64_BUSYBOX` and `STRATA_FIXTURES`), or `None` after a skip message.
fn arm64_busybox() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/arm64-busybox.sh");
    let out = match Command::new("bash").arg(&script).output() {
        Ok(out) => out,
        Err(e) => {
            skip(&format!("cannot run {}: {e}", script.display()));
            return None;
        }
    };
    if !out.status.success() {
        skip(&format!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return None;
    }
    Some(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()))
}

/// Every path under `dir` whose name mentions qemu.
fn qemu_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().to_lowercase().contains("qemu") {
            out.push(p.clone());
        }
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(qemu_files(&p));
        }
    }
    out
}

fn stdout_of(req: &RunRequest) -> (i32, Vec<String>) {
    let mut lines = Vec::new();
    let outcome = run(req, &mut |s, l| {
        if s == Stream::Stdout {
            lines.push(l.to_string())
        }
    })
    .unwrap();
    (outcome.exit_code, lines)
}

#[test]
fn arm64_busybox_runs_through_emulation_and_no_emulator_lands_in_the_rootfs() {
    if !rustix::process::geteuid().is_root() {
        return skip("foreign-step tests need root");
    }
    let Some(busybox) = arm64_busybox() else { return };
    let arm64: Platform = "linux/arm64".parse().unwrap();
    let emulation = match ensure_emulation(&arm64) {
        Ok(e) => e,
        Err(e) => return skip(&format!("no emulation for linux/arm64: {e}")),
    };
    if Platform::host().architecture != "arm64" {
        let Emulation::Qemu { handler, .. } = &emulation else {
            panic!("linux/arm64 on {} must be emulated, got {emulation:?}", Platform::host())
        };
        let entry =
            fs::read_to_string(Path::new("/proc/sys/fs/binfmt_misc").join(handler)).unwrap();
        assert!(
            entry.lines().any(|l| l.starts_with("flags:") && l.contains('F')),
            "{handler} lacks F:\n{entry}"
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let (lower, upper, work, dir) =
        ["lower", "upper", "work", "dir"].map(|d| tmp.path().join(d)).into();
    for d in [&lower, &upper, &work, &dir] {
        fs::create_dir(d).unwrap();
    }
    for root in [&lower, &dir] {
        fs::create_dir(root.join("bin")).unwrap();
        fs::copy(&busybox, root.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    }
    let req = |rootfs: RootFs, argv: &[&str]| RunRequest {
        rootfs,
        argv: argv.iter().map(|a| a.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: User::Ids { uid: 0, gid: 0, groups: vec![] },
        network: Network::None,
        mounts: vec![],
        hostname: "arm".into(),
        extra_hosts: vec![],
        resources: Default::default(),
        insecure: false,
    };
    let overlay = || RootFs::Overlay {
        lowers: vec![lower.clone()],
        upper: upper.clone(),
        work: work.clone(),
    };

    assert_eq!(
        stdout_of(&req(overlay(), &["/bin/busybox", "uname", "-m"])),
        (0, vec!["aarch64".into()])
    );
    // A PATH search and a script: the emulated shell execs the emulated busybox again.
    let script = "busybox uname -m > /machine && busybox cat /machine";
    assert_eq!(stdout_of(&req(overlay(), &["sh", "-c", script])), (0, vec!["aarch64".into()]));
    assert_eq!(fs::read_to_string(upper.join("machine")).unwrap(), "aarch64\n");
    assert_eq!(
        stdout_of(&req(RootFs::Dir(dir.clone()), &["sh", "-c", script])),
        (0, vec!["aarch64".into()])
    );

    for root in [&lower, &upper, &dir] {
        assert_eq!(
            qemu_files(root),
            Vec::<PathBuf>::new(),
            "an emulator landed in {}",
            root.display()
        );
    }
}
