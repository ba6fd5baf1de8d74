//! The escape suite: a recipe must never reach the builder's host.
//!
//! Each case is a known container-builder escape, run as root against a canary directory on
//! the host (a random marker file, an empty subdirectory, an empty file). After every build,
//! successful or not, the canary is byte-for-byte what it was, `/` of the host has gained no
//! entry, and the marker appears in no blob (decompressed too) and no step output.
//!
//! Classes covered: buildah's CVE-2024-1753 (a stage symlink to `/` as a bind source),
//! context symlinks followed on the host, `rw` binds writing to their source, mount targets
//! and mountpoint stubs created through symlinks or the old root (BuildKit's CVE-2024-23652
//! cleaner), host file descriptors reaching the step (runc's CVE-2024-21626), the running
//! builder binary reachable for writing (CVE-2019-5736), and COPY/ADD/WORKDIR/heredoc paths
//! through symlinks.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{can_run, env, Env};
use strata_build::{BuildEvent, BuildOptions, BuildOutput, RunRootfs};

/// A directory on the host that no build may change or show.
struct Canary {
    dir: tempfile::TempDir,
    marker: String,
}

impl Canary {
    fn new() -> Canary {
        let dir = tempfile::Builder::new().prefix("strata-canary-").tempdir_in("/tmp").unwrap();
        let marker = format!("STRATA-HOST-MARKER-{}", std::process::id())
            + &dir.path().file_name().unwrap().to_string_lossy();
        fs::write(dir.path().join("marker"), &marker).unwrap();
        fs::create_dir(dir.path().join("x")).unwrap();
        fs::write(dir.path().join("e"), b"").unwrap();
        fs::write(dir.path().join("hosts"), b"canary hosts\n").unwrap();
        Canary { dir, marker }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Absolute path without its leading `/` (for `/proc/<path>`-style targets).
    fn rel(&self) -> String {
        self.path().to_string_lossy().trim_start_matches('/').to_string()
    }

    /// Every entry below the canary with its type, mode, size and content.
    fn state(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        for e in walkdir::WalkDir::new(self.path()) {
            let e = e.unwrap();
            let m = e.path().symlink_metadata().unwrap();
            let content =
                if m.is_file() { fs::read_to_string(e.path()).unwrap() } else { "".into() };
            out.insert(
                e.path().to_path_buf(),
                format!(
                    "{:o} {} {} {}.{} {content}",
                    m.mode(),
                    m.len(),
                    m.file_type().is_dir(),
                    m.mtime(),
                    m.mtime_nsec()
                ),
            );
        }
        out
    }
}

fn root_entries() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Runs one build and checks that the host did not change and the marker leaked nowhere.
struct Trial<'a> {
    env: &'a Env,
    canary: &'a Canary,
}

impl Trial<'_> {
    fn build(
        &self,
        ctx: &Path,
        tune: impl FnOnce(&mut BuildOptions),
    ) -> (Result<BuildOutput, strata_build::BuildError>, Vec<String>) {
        let before = self.canary.state();
        let root_before = root_entries();
        let mut opts = BuildOptions::new(ctx);
        tune(&mut opts);
        let (result, events) = self.env.build_with(&opts);
        let output: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                BuildEvent::StepOutput { line, .. } => Some(line.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(self.canary.state(), before, "the host canary changed");
        assert_eq!(root_entries(), root_before, "the host's / changed");
        for line in &output {
            assert!(!line.contains(&self.canary.marker), "host marker in step output: {line}");
        }
        if let Err(e) = &result {
            let chain = error_chain(e);
            assert!(!chain.contains(&self.canary.marker), "host marker in the error: {chain}");
        }
        let marker = self.canary.marker.as_bytes();
        for blob in self.env.all_blob_bytes() {
            assert!(!blob.windows(marker.len()).any(|w| w == marker), "host marker in a blob");
        }
        (result, output)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn both_rootfs_kinds() -> [RunRootfs; 2] {
    [RunRootfs::Overlay, RunRootfs::Copy]
}

#[test]
fn cve_2024_1753_a_stage_symlink_to_root_is_that_stage_root() {
    if !can_run() {
        return;
    }
    let (e, canary) = (env(), Canary::new());
    let t = Trial { env: &e, canary: &canary };
    let breakout = format!("STRATA_BIND_BREAKOUT_{}", std::process::id());
    let recipe = format!(
        "FROM base:1 AS b\nRUN ln -s / /rootdir && echo stage-b > /stage-file\n\
         FROM base:1\n\
         RUN --mount=type=bind,from=b,source=/rootdir,destination=/exploit,rw \
         touch /exploit/{breakout} && ls /exploit > /seen\n\
         RUN --mount=type=bind,from=b,source=/rootdir/stage-file,target=/sf cat /sf > /copied\n"
    );
    let ctx = e.context("ctx", &[("Dockerfile", &recipe)]);
    for kind in both_rootfs_kinds() {
        let (r, _) = t.build(&ctx, |o| {
            o.run_rootfs = kind;
            o.no_cache = true;
        });
        let out = r.unwrap();
        assert!(!Path::new("/").join(&breakout).exists(), "the host's / was written");
        let root = e.flatten(&out);
        let seen = fs::read_to_string(root.path().join("seen")).unwrap();
        assert!(seen.lines().any(|l| l == "stage-file"), "stage b's root was mounted: {seen}");
        assert!(!seen.lines().any(|l| l == "proc" || l == "sys"), "{seen}");
        assert_eq!(fs::read_to_string(root.path().join("copied")).unwrap(), "stage-b\n");
        assert!(!root.path().join(&breakout).exists());
    }
}

#[test]
fn context_symlinks_resolve_inside_the_context() {
    if !can_run() {
        return;
    }
    let (e, canary) = (env(), Canary::new());
    let t = Trial { env: &e, canary: &canary };
    let ctx = e.context("ctx", &[("Dockerfile", "FROM base:1\n")]);
    std::os::unix::fs::symlink(canary.path(), ctx.join("hostcanary")).unwrap();
    std::os::unix::fs::symlink("/", ctx.join("hostroot")).unwrap();
    std::os::unix::fs::symlink("../../../../../..", ctx.join("up")).unwrap();
    let write = |recipe: &str| fs::write(ctx.join("Dockerfile"), recipe).unwrap();

    // A link out of the context names a path inside it, which does not exist: an error.
    for opts in ["", ",rw"] {
        write(&format!(
            "FROM base:1\nRUN --mount=type=bind,source=hostcanary,target=/x{opts} \
             cat /x/marker; touch /x/pwned; true\n"
        ));
        let (r, _) = t.build(&ctx, |_| {});
        let err = error_chain(&r.unwrap_err());
        assert!(err.contains("hostcanary"), "{err}");
        assert!(err.contains("leaves the build context"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    // The same path made inside the context is what the link shows.
    let inside = ctx.join(canary.rel());
    fs::create_dir_all(&inside).unwrap();
    fs::write(inside.join("inner"), "inside the context\n").unwrap();
    write(
        "FROM base:1\nRUN --mount=type=bind,source=hostcanary,target=/x,rw \
         cat /x/inner > /inner && ls /x > /listing && touch /x/pwned\n",
    );
    let out = t.build(&ctx, |_| {}).0.unwrap();
    let root = e.flatten(&out);
    assert_eq!(fs::read_to_string(root.path().join("inner")).unwrap(), "inside the context\n");
    assert_eq!(fs::read_to_string(root.path().join("listing")).unwrap(), "inner\n");
    assert!(!inside.join("pwned").exists(), "a rw bind wrote to the context");

    // A link to / (or `..` past the top) is the context root; hashing it hashes the context.
    for src in ["hostroot", "up", "../../.."] {
        write(&format!(
            "FROM base:1\nRUN --mount=type=bind,source={src},target=/x ls /x > /listing\n"
        ));
        let out = t.build(&ctx, |_| {}).0.unwrap();
        let root = e.flatten(&out);
        let listing = fs::read_to_string(root.path().join("listing")).unwrap();
        assert!(listing.lines().any(|l| l == "Dockerfile"), "{src}: {listing}");
        assert!(!listing.lines().any(|l| l == "proc" || l == "usr"), "{src}: {listing}");
    }
}

#[test]
fn rw_bind_mounts_never_write_to_their_source() {
    if !can_run() {
        return;
    }
    let (e, canary) = (env(), Canary::new());
    let t = Trial { env: &e, canary: &canary };
    let ctx =
        e.context("ctx", &[("d/file", "orig\n"), ("d/other", "other\n"), ("d/sub/deep", "deep\n")]);
    let recipe = "FROM base:1 AS b\nRUN mkdir /src && echo stage > /src/file\n\
         FROM base:1\n\
         RUN --mount=type=bind,source=d,target=/x,rw \
         sh -c 'echo changed > /x/file && rm -rf /x/other /x/sub && touch /x/new && cat /x/file > /r1'\n\
         RUN --mount=type=bind,from=b,source=/src,target=/y,rw \
         sh -c 'echo changed > /y/file && touch /y/new && cat /y/file > /r2'\n\
         RUN --mount=type=bind,from=base:1,source=/etc,target=/z,rw \
         sh -c 'echo changed > /z/motd && rm /z/passwd && cat /z/motd > /r3'\n\
         COPY --from=b /src /from-b\n\
         COPY --from=base:1 /etc/motd /etc/passwd /from-base/\n";
    fs::write(ctx.join("Dockerfile"), recipe).unwrap();
    for kind in both_rootfs_kinds() {
        let out = t
            .build(&ctx, |o| {
                o.run_rootfs = kind;
                o.no_cache = true;
            })
            .0
            .unwrap();
        let root = e.flatten(&out);
        assert_eq!(fs::read_to_string(root.path().join("r1")).unwrap(), "changed\n");
        assert_eq!(fs::read_to_string(root.path().join("r2")).unwrap(), "changed\n");
        assert_eq!(fs::read_to_string(root.path().join("r3")).unwrap(), "changed\n");
        let motd = fs::read_to_string(root.path().join("from-base/motd")).unwrap();
        assert_eq!(motd, "hello from base\n");
        assert!(root.path().join("from-base/passwd").is_file());
        assert_eq!(fs::read_to_string(root.path().join("from-b/file")).unwrap(), "stage\n");
        assert!(!root.path().join("from-b/new").exists());
        assert!(!root.path().join("x").exists() && !root.path().join("y").exists());
        assert_eq!(fs::read_to_string(ctx.join("d/file")).unwrap(), "orig\n");
        assert_eq!(fs::read_to_string(ctx.join("d/other")).unwrap(), "other\n");
        assert_eq!(fs::read_to_string(ctx.join("d/sub/deep")).unwrap(), "deep\n");
        assert!(!ctx.join("d/new").exists());
    }
}

#[test]
fn mount_targets_and_stubs_stay_inside_the_rootfs() {
    if !can_run() {
        return;
    }
    let (e, canary) = (env(), Canary::new());
    let t = Trial { env: &e, canary: &canary };
    let c = canary.path().display().to_string();
    let rel = canary.rel();
    let recipe = format!(
        "FROM base:1\n\
         RUN --mount=type=tmpfs,target=/proc/{rel}/newdir true\n\
         RUN --mount=type=bind,source=.,target=/proc/{rel}/x/bound true\n\
         RUN ln -s {c} /evil && ln -s /proc/{rel} /evil2 && ln -s /proc/self/cwd/../../{rel} /evil3\n\
         RUN --mount=type=tmpfs,target=/evil/newdir true\n\
         RUN --mount=type=tmpfs,target=/evil2/newdir true\n\
         RUN --mount=type=tmpfs,target=/evil3/newdir true\n\
         RUN --mount=type=tmpfs,target=/evil2/x true\n\
         RUN --mount=type=secret,id=s,target=/evil2/hosts true\n"
    );
    let ctx = e.context("ctx", &[("Dockerfile", &recipe)]);
    for kind in both_rootfs_kinds() {
        let (r, _) = t.build(&ctx, |o| {
            o.run_rootfs = kind;
            o.no_cache = true;
        });
        r.unwrap();
    }

    // /etc replaced by a link to the host (through the old root, or directly): the per-step
    // /etc/hosts and /etc/resolv.conf stubs must not be created there.
    for link in [format!("/proc/{rel}"), c.clone()] {
        let recipe = format!("FROM base:1\nRUN rm -rf /etc && ln -s {link} /etc\nRUN true\n");
        fs::write(ctx.join("Dockerfile"), recipe).unwrap();
        for kind in both_rootfs_kinds() {
            let _ = t.build(&ctx, |o| {
                o.run_rootfs = kind;
                o.no_cache = true;
            });
        }
    }
}

#[test]
fn stub_cleanup_never_follows_a_symlink_the_step_made() {
    if !can_run() {
        return;
    }
    let (e, canary) = (env(), Canary::new());
    let t = Trial { env: &e, canary: &canary };
    let c = canary.path().display().to_string();
    // /mnt and /mnt/x are stubs; the step moves /mnt away and puts a link to the canary in
    // its place, whose `x` (an empty directory) and `e` (an empty file) look like stubs.
    let recipe = format!(
        "FROM base:1\n\
         RUN --mount=type=tmpfs,target=/mnt/x --mount=type=secret,id=s,target=/mnt/e,required=false \
         sh -c 'mv /mnt /mnt2 && ln -s {c} /mnt'\n\
         RUN --mount=type=tmpfs,target=/etc/x sh -c 'mv /etc /etc2 && ln -s {c} /etc'\n"
    );
    let ctx = e.context("ctx", &[("Dockerfile", &recipe)]);
    for kind in both_rootfs_kinds() {
        let _ = t.build(&ctx, |o| {
            o.run_rootfs = kind;
            o.no_cache = true;
        });
        assert!(canary.path().join("x").is_dir());
        assert!(canary.path().join("e").is_file());
        assert!(canary.path().join("hosts").is_file());
    }
}

/// A directory fd of the test process without close-on-exec, as a careless embedder or a
/// parent process (a CI runner, make's jobserver) would leave one.
fn leaked_dir_fd(path: &Path) -> i32 {
    static FD: OnceLock<i32> = OnceLock::new();
    *FD.get_or_init(|| {
        let f = fs::File::open(path).unwrap();
        rustix::io::fcntl_setfd(&f, rustix::io::FdFlags::empty()).unwrap();
        // Never closed: it stays open, inheritable, for the life of the test process.
        std::os::fd::IntoRawFd::into_raw_fd(f)
    })
}

#[test]
fn no_host_file_descriptor_reaches_the_step() {
    if !can_run() {
        return;
    }
    let (e, canary) = (env(), Canary::new());
    let t = Trial { env: &e, canary: &canary };
    let fd = leaked_dir_fd(canary.path());
    let recipe = format!(
        "FROM base:1\n\
         RUN [\"/bin/ls\", \"-l\", \"/proc/self/fd/\"]\n\
         RUN [\"/bin/sh\", \"-c\", \"ls /proc/1/fd > /fds; cat /proc/self/fd/{fd}/marker; touch /proc/self/fd/{fd}/pwned; true\"]\n"
    );
    let ctx = e.context("ctx", &[("Dockerfile", &recipe)]);
    for kind in both_rootfs_kinds() {
        let (r, output) = t.build(&ctx, |o| {
            o.run_rootfs = kind;
            o.no_cache = true;
        });
        let out = r.unwrap();
        let fds: Vec<&str> = output
            .iter()
            .filter(|l| l.contains(" -> "))
            .filter_map(|l| l.split(" -> ").next()?.split_whitespace().last())
            .collect();
        assert_eq!(fds, ["0", "1", "2"], "{output:?}");
        let root = e.flatten(&out);
        // busybox sh keeps a copy of stdin at 10 for itself; the leaked fd is not there.
        let shell_fds = fs::read_to_string(root.path().join("fds")).unwrap();
        assert!(!shell_fds.lines().any(|l| l == fd.to_string()), "{shell_fds}");
    }
    // WORKDIR through a leaked fd reaches nothing of the host either.
    for wd in [format!("/proc/self/fd/{fd}"), format!("/proc/self/fd/{fd}/sub")] {
        let recipe = format!("FROM base:1\nWORKDIR {wd}\nRUN touch pwned\n");
        fs::write(ctx.join("Dockerfile"), recipe).unwrap();
        let _ = t.build(&ctx, |o| o.no_cache = true);
    }
    let recipe =
        format!("FROM base:1\nRUN ln -s /proc/self/fd/{fd} /l\nWORKDIR /l\nRUN touch pwned\n");
    fs::write(ctx.join("Dockerfile"), recipe).unwrap();
    let _ = t.build(&ctx, |o| o.no_cache = true);
}

#[test]
fn the_builder_binary_is_not_reachable_for_writing() {
    if !can_run() {
        return;
    }
    let (e, canary) = (env(), Canary::new());
    let t = Trial { env: &e, canary: &canary };
    let exe = fs::read("/proc/self/exe").unwrap();
    // No process of the step shows the builder's binary, and its own binary cannot be
    // rewritten while it runs.
    let recipe = "FROM base:1\n\
         RUN for p in /proc/[0-9]*; do readlink $p/exe; done > /exes; \
         (echo x >> /proc/self/exe) 2>/dev/null && echo WRITABLE > /w; \
         (echo x >> /proc/1/exe) 2>/dev/null && echo WRITABLE > /w; true\n";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let out = t.build(&ctx, |o| o.no_cache = true).0.unwrap();
    let root = e.flatten(&out);
    let exes = fs::read_to_string(root.path().join("exes")).unwrap();
    assert!(exes.lines().all(|l| l.starts_with("/bin/")), "{exes}");
    assert!(!root.path().join("w").exists());
    assert_eq!(fs::read("/proc/self/exe").unwrap(), exe);
}

#[test]
fn copy_add_workdir_and_heredocs_resolve_inside_the_image() {
    if !can_run() {
        return;
    }
    let (e, canary) = (env(), Canary::new());
    let t = Trial { env: &e, canary: &canary };
    let c = canary.path().display().to_string();
    let rel = canary.rel();
    let ctx = e.context("ctx", &[("f", "from the context\n")]);
    std::os::unix::fs::symlink(canary.path(), ctx.join("hostcanary")).unwrap();
    std::os::unix::fs::symlink("/", ctx.join("hostroot")).unwrap();

    // COPY of a link out of the context: the path inside the context, which is missing.
    fs::write(ctx.join("Dockerfile"), "FROM base:1\nCOPY hostcanary/marker /m\n").unwrap();
    let err = error_chain(&t.build(&ctx, |_| {}).0.unwrap_err());
    assert!(err.contains("hostcanary/marker"), "{err}");
    fs::write(ctx.join("Dockerfile"), "FROM base:1\nCOPY hostroot/f /f\n").unwrap();
    let out = t.build(&ctx, |_| {}).0.unwrap();
    let root = e.flatten(&out);
    assert_eq!(fs::read_to_string(root.path().join("f")).unwrap(), "from the context\n");

    // Destinations through an image symlink to the canary land inside the image.
    let recipe = format!(
        "FROM base:1 AS b\nRUN ln -s / /rootdir\n\
         FROM base:1\n\
         RUN ln -s {c} /evil && ln -s /proc/{rel} /evil2\n\
         WORKDIR /evil/wd\n\
         WORKDIR /evil2/wd2\n\
         COPY <<EOF /evil/heredoc\nhello\nEOF\n\
         COPY f /evil/x/\n\
         COPY f /evil/e\n\
         VOLUME /evil/vol\n\
         ADD f /evil2/added\n\
         WORKDIR /\n\
         RUN true\n"
    );
    fs::write(ctx.join("Dockerfile"), &recipe).unwrap();
    let out = t.build(&ctx, |_| {}).0.unwrap();
    let root = e.flatten(&out);
    let inside = root.path().join(&rel);
    assert!(inside.join("wd").is_dir(), "WORKDIR made inside the image");
    assert_eq!(fs::read_to_string(inside.join("heredoc")).unwrap(), "hello\n");
    assert_eq!(fs::read_to_string(inside.join("x/f")).unwrap(), "from the context\n");
    assert_eq!(fs::read_to_string(inside.join("e")).unwrap(), "from the context\n");

    // --from a stage whose link points at /: that stage's root.
    let recipe = format!(
        "FROM base:1 AS b\nRUN ln -s / /rootdir\nFROM base:1\nCOPY --from=b /rootdir/{rel}/marker /m\n"
    );
    fs::write(ctx.join("Dockerfile"), recipe).unwrap();
    let (r, _) = t.build(&ctx, |_| {});
    assert!(r.is_err());
}

#[test]
fn add_archives_cannot_write_outside_the_layer() {
    if !can_run() {
        return;
    }
    let (e, canary) = (env(), Canary::new());
    let t = Trial { env: &e, canary: &canary };
    let c = canary.path().display().to_string();
    let ctx = e.context("ctx", &[]);
    // An archive that plants a link to the canary, then writes through it; and `..` names.
    let mut data = Vec::new();
    {
        let mut b = tar::Builder::new(&mut data);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "link", &c).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(6);
        h.set_mode(0o644);
        b.append_data(&mut h, "link/pwned", &b"pwned\n"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(6);
        h.set_mode(0o644);
        let name = format!("../../../../../..{c}/pwned2");
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, &b"pwned\n"[..]).unwrap();
        b.finish().unwrap();
    }
    fs::write(ctx.join("evil.tar"), &data).unwrap();
    fs::set_permissions(ctx.join("evil.tar"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM base:1\nADD evil.tar /\nADD evil.tar /sub/\n").unwrap();
    // The `..` entry is refused by the one tar policy, naming the entry (never dropped).
    let err = error_chain(&t.build(&ctx, |_| {}).0.unwrap_err());
    assert!(err.contains("extracting evil.tar") && err.contains("pwned2"), "{err}");
    assert!(err.contains("`..`"), "{err}");
}

#[test]
fn a_source_swapped_for_a_symlink_while_builds_mount_it_shows_nothing_of_the_host() {
    if !can_run() {
        return;
    }
    let (e, canary) = (env(), Canary::new());
    let t = Trial { env: &e, canary: &canary };
    let ctx = e.context("ctx", &[("real/file", "in the context\n")]);
    fs::write(
        ctx.join("Dockerfile"),
        "FROM base:1\nRUN --mount=type=bind,source=d,target=/x,rw \
         sh -c 'cat /x/marker /x/file; touch /x/pwned; true'\n",
    )
    .unwrap();
    // `d` flips between a directory and a symlink to the canary as fast as it can, as a
    // RUN step of a parallel stage would do to a shared directory (CVE-2024-23651).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (stop, ctx, target) = (stop.clone(), ctx.clone(), canary.path().to_path_buf());
        std::thread::spawn(move || {
            let d = ctx.join("d");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = fs::remove_file(&d);
                let _ = std::os::unix::fs::symlink("real", &d);
                let _ = fs::remove_file(&d);
                let _ = std::os::unix::fs::symlink(&target, &d);
            }
        })
    };
    for _ in 0..15 {
        let _ = t.build(&ctx, |o| o.no_cache = true);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
}
