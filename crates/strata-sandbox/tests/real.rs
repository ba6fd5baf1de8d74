//! The sandbox for real: a busybox rootfs, overlay mounts, namespaces. Needs root and
//! `/bin/busybox` (static); skips otherwise unless `STRATA_TEST_STRICT=1`.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_sandbox::{
    overlay_supported, resolve_user, run, run_cancellable, Access, BindSource, CancelToken, Mount,
    Network, RootFs, RunOutcome, RunRequest, SandboxError, Stream, User,
};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "ls", "mkdir", "touch", "rm", "hostname", "ip", "ifconfig", "wc",
    "sleep", "pwd", "env", "tr", "stat", "true", "test", "tail", "cut", "grep", "yes", "head",
    "chown",
];

#[allow(clippy::print_stderr)] // the skip message
fn can_run() -> bool {
    let ok = rustix::process::geteuid().is_root() && Path::new(BUSYBOX).exists();
    if !ok {
        if std::env::var("STRATA_TEST_STRICT").as_deref() == Ok("1") {
            panic!("sandbox tests need root and {BUSYBOX}");
        }
        eprintln!("skipping: sandbox tests need root and {BUSYBOX}");
    }
    ok
}

/// A minimal image: busybox + applet links, passwd/group, a file to delete. No /proc, /dev,
/// /sys, /etc/hosts or /etc/resolv.conf, so every standard mountpoint is a stub.
fn make_rootfs(dir: &Path) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    if fs::hard_link(BUSYBOX, dir.join("bin/busybox")).is_err() {
        fs::copy(BUSYBOX, dir.join("bin/busybox")).unwrap();
    }
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\napp:x:1000:\nextra:x:2000:app\n").unwrap();
    fs::write(dir.join("etc/motd"), "hello\n").unwrap();
}

struct Image {
    _tmp: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
}

fn image() -> Image {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    let upper = tmp.path().join("upper");
    let work = tmp.path().join("work");
    for d in [&lower, &upper, &work] {
        fs::create_dir(d).unwrap();
    }
    make_rootfs(&lower);
    Image { _tmp: tmp, lower, upper, work }
}

impl Image {
    fn req(&self, script: &str) -> RunRequest {
        RunRequest {
            rootfs: RootFs::Overlay {
                lowers: vec![self.lower.clone()],
                upper: self.upper.clone(),
                work: self.work.clone(),
            },
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: self.user(""),
            network: Network::None,
            mounts: vec![],
            hostname: "stepbox".into(),
            extra_hosts: vec![],
            resources: Default::default(),
            insecure: false,
        }
    }
    /// A user resolved with the image's passwd and group, as a builder does for an overlay.
    fn user(&self, spec: &str) -> User {
        resolve_user(&self.lower, spec).unwrap().into()
    }
    /// What the step left in the upperdir besides `/etc`, which overlay copied up to hold the
    /// `/etc/hosts` and `/etc/resolv.conf` stubs and which the sandbox leaves, empty, for
    /// the caller to drop (it knows the lower layers).
    fn upper_changes(&self) -> Vec<String> {
        let etc = self.upper.join("etc");
        let mut out = self.upper_entries();
        if fs::read_dir(&etc).is_ok_and(|mut d| d.next().is_none()) {
            out.retain(|e| e != "etc");
        }
        out
    }
    fn upper_entries(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.upper, &self.upper, &mut out);
        out.sort();
        out
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.strip_prefix(base).unwrap().display().to_string());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            walk(base, &p, out);
        }
    }
}

type Lines = Vec<(Stream, String)>;

fn run_collect(req: &RunRequest) -> (RunOutcome, Lines) {
    let mut lines = Vec::new();
    let outcome = run(req, &mut |s, l| lines.push((s, l.to_string()))).unwrap();
    (outcome, lines)
}

fn stdout_of(lines: &Lines) -> Vec<String> {
    lines.iter().filter(|(s, _)| *s == Stream::Stdout).map(|(_, l)| l.clone()).collect()
}

fn no_leaked_mounts() {
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains("strata-sandbox-") && !mi.contains("strata-overlay-probe-"),
        "host mount table shows sandbox mounts:\n{mi}"
    );
}

#[test]
fn streams_stdout_and_stderr_line_by_line_and_returns_exit_code() {
    if !can_run() {
        return;
    }
    let img = image();
    let (outcome, lines) =
        run_collect(&img.req("echo out1; echo err1 >&2; echo out2; printf partial; exit 3"));
    assert_eq!(outcome.exit_code, 3);
    assert_eq!(stdout_of(&lines), ["out1", "out2", "partial"]);
    let stderr: Vec<&str> =
        lines.iter().filter(|(s, _)| *s == Stream::Stderr).map(|(_, l)| l.as_str()).collect();
    assert_eq!(stderr, ["err1"]);
    assert_eq!(outcome.tail.len(), 4);
    no_leaked_mounts();
}

#[test]
fn tail_keeps_the_last_twenty_lines() {
    if !can_run() {
        return;
    }
    let img = image();
    let script = "i=0; while [ $i -lt 50 ]; do echo line$i; i=$((i+1)); done";
    let (outcome, lines) = run_collect(&img.req(script));
    assert_eq!(lines.len(), 50);
    assert_eq!(outcome.tail.len(), 20);
    assert_eq!(outcome.tail.first().unwrap(), "line30");
    assert_eq!(outcome.tail.last().unwrap(), "line49");
}

#[test]
fn changes_land_in_upper_with_whiteouts_and_lower_is_untouched() {
    if !can_run() {
        return;
    }
    let img = image();
    let (outcome, _) =
        run_collect(&img.req("echo hi > /new.txt && rm /etc/motd && mkdir -p /var/lib/x"));
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(fs::read_to_string(img.upper.join("new.txt")).unwrap(), "hi\n");
    assert!(!img.lower.join("new.txt").exists());
    let wh = fs::symlink_metadata(img.upper.join("etc/motd")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "whiteout 0/0");
    assert!(img.lower.join("etc/motd").is_file());
    // only the command's changes: no /proc, /dev, /sys, /etc/hosts, /etc/resolv.conf stubs
    assert_eq!(img.upper_entries(), ["etc", "etc/motd", "new.txt", "var", "var/lib", "var/lib/x"]);
    for stub in ["/proc", "/dev", "/sys", "/etc/hosts", "/etc/resolv.conf"] {
        assert!(outcome.stubs.iter().any(|s| s == stub), "{stub} in {:?}", outcome.stubs);
    }
}

#[test]
fn command_is_pid_1_of_its_own_namespace() {
    if !can_run() {
        return;
    }
    let img = image();
    let (outcome, lines) =
        run_collect(&img.req("echo $$; tr '\\0' ' ' < /proc/1/cmdline; echo; ls /proc | wc -l"));
    assert_eq!(outcome.exit_code, 0);
    let out = stdout_of(&lines);
    assert_eq!(out[0], "1");
    assert!(out[1].starts_with("/bin/sh -c echo $$;"), "{out:?}");
}

#[test]
fn user_by_name_uid_and_group_with_supplementary_groups() {
    if !can_run() {
        return;
    }
    let cases = [
        ("", "0 0 0"),
        ("app", "1000 1000 1000 2000"),
        ("1000", "1000 1000 1000 2000"),
        ("app:extra", "1000 2000 2000"),
        ("4242:4243", "4242 4243 4243"),
    ];
    for (user, want) in cases {
        let img = image();
        let mut req = img.req("echo $(id -u) $(id -g) $(id -G)");
        req.user = img.user(user);
        let (outcome, lines) = run_collect(&req);
        assert_eq!(outcome.exit_code, 0, "{user}: {lines:?}");
        assert_eq!(stdout_of(&lines), [want], "user {user:?}");
    }
    let img = image();
    let err = resolve_user(&img.lower, "ghost").unwrap_err();
    assert!(matches!(err, SandboxError::UnknownUser { .. }), "{err}");
    // An overlay's users are the caller's to resolve (it knows the layers).
    let mut req = img.req("true");
    req.user = "app".into();
    let err = run(&req, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, SandboxError::UserNeedsIds { .. }), "{err}");
}

#[test]
fn missing_cwd_is_created_and_owned_by_the_user() {
    if !can_run() {
        return;
    }
    let img = image();
    let mut req = img.req("pwd; stat -c %u:%g . ; touch mine");
    req.cwd = "/srv/deep/dir".into();
    req.user = img.user("app");
    let (outcome, lines) = run_collect(&req);
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(stdout_of(&lines), ["/srv/deep/dir", "1000:1000"]);
    let meta = fs::metadata(img.upper.join("srv/deep/dir/mine")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
}

#[test]
fn environment_is_exactly_the_request_env_and_path_is_searched_inside() {
    if !can_run() {
        return;
    }
    let img = image();
    let mut req = img.req("");
    req.argv = vec!["env".into()];
    req.env = vec!["A=1".into(), "B=two words".into(), "PATH=/nowhere:/bin".into()];
    let (outcome, lines) = run_collect(&req);
    assert_eq!(outcome.exit_code, 0);
    let mut out = stdout_of(&lines);
    out.sort();
    assert_eq!(out, ["A=1", "B=two words", "PATH=/nowhere:/bin"]);

    req.argv = vec!["no-such-tool".into()];
    let err = run(&req, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, SandboxError::Exec { .. }), "{err}");
    assert!(err.to_string().contains("no-such-tool"), "{err}");
    assert_eq!(img.upper_changes(), Vec::<String>::new(), "stubs removed after a failed setup too");
}

#[test]
fn network_none_has_only_loopback_up_and_hostname_is_set() {
    if !can_run() {
        return;
    }
    let img = image();
    let (outcome, lines) = run_collect(
        &img.req("hostname; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; ip link show lo"),
    );
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    let out = stdout_of(&lines);
    assert_eq!(out[0], "stepbox");
    // busybox may lack tail/cut via links; the shell resolves them through the busybox applets
    assert!(out.iter().any(|l| l == "lo"), "{out:?}");
    assert_eq!(out.iter().filter(|l| !l.contains(' ') && *l != "stepbox").count(), 1, "{out:?}");
    assert!(out.iter().any(|l| l.contains("<LOOPBACK,UP")), "{out:?}");
}

#[test]
fn hosts_and_resolv_conf_are_present_inside_but_not_left_in_upper() {
    if !can_run() {
        return;
    }
    let img = image();
    let mut req = img.req("cat /etc/hosts; test -f /etc/resolv.conf && echo resolv-ok");
    req.extra_hosts = vec![("db.internal".into(), "10.1.2.3".into())];
    let (outcome, lines) = run_collect(&req);
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    let out = stdout_of(&lines);
    assert!(out.iter().any(|l| l.starts_with("127.0.0.1") && l.contains("stepbox")), "{out:?}");
    assert!(out.iter().any(|l| l == "10.1.2.3\tdb.internal"), "--add-host: {out:?}");
    assert!(out.iter().any(|l| l == "resolv-ok"), "{out:?}");
    assert_eq!(img.upper_changes(), Vec::<String>::new());
}

#[test]
fn ulimits_shm_size_and_insecure_reach_the_command() {
    if !can_run() {
        return;
    }
    let img = image();
    let script =
        "ulimit -n; ulimit -Hn; grep ' /dev/shm ' /proc/mounts; grep CapEff /proc/self/status";
    let (outcome, lines) = run_collect(&img.req(script));
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    let default = stdout_of(&lines);
    assert!(default[2].contains("size=65536k"), "Docker's 64 MiB: {default:?}");
    assert!(default[3].ends_with("00000000a80425fb"), "{default:?}");
    let mut req = img.req(script);
    req.resources.ulimits = vec!["nofile=123:456".parse().unwrap()];
    req.resources.shm_size = Some(8 << 20);
    req.insecure = true;
    let (outcome, lines) = run_collect(&req);
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    let out = stdout_of(&lines);
    assert_eq!(out[..2], ["123", "456"], "{out:?}");
    assert!(out[2].contains("size=8192k"), "{out:?}");
    // Every capability: more than the default set, CAP_SYS_ADMIN (21) included.
    let eff = u64::from_str_radix(out[3].rsplit('\t').next().unwrap(), 16).unwrap();
    assert!(eff & (1 << 21) != 0 && eff & 0xa804_25fb == 0xa804_25fb, "{out:?}");
}

#[test]
fn bind_mounts_read_only_and_read_write_and_tmpfs() {
    if !can_run() {
        return;
    }
    let img = image();
    let host = tempfile::tempdir().unwrap();
    let ro = host.path().join("ro");
    let rw = host.path().join("rw");
    fs::create_dir(&ro).unwrap();
    fs::create_dir(&rw).unwrap();
    fs::write(ro.join("data"), "from host\n").unwrap();
    let secret = host.path().join("secret");
    fs::write(&secret, "s3cret\n").unwrap();
    let mut req = img.req(
        "cat /ro/data; echo x > /ro/data || echo ro-refused; echo w > /cache/rw/out; \
         cat /run/secrets/token; echo t > /scratch/tmp; cat /scratch/tmp; cat /proc/mounts | grep -c ' /scratch tmpfs'",
    );
    req.mounts = vec![
        Mount::Bind {
            source: BindSource::Host(ro.clone()),
            target: "/ro".into(),
            access: Access::ReadOnly,
        },
        Mount::Bind {
            source: BindSource::Host(rw.clone()),
            target: "/cache/rw".into(),
            access: Access::ReadWrite,
        },
        Mount::Bind {
            source: BindSource::Host(secret),
            target: "/run/secrets/token".into(),
            access: Access::ReadOnly,
        },
        Mount::Tmpfs { target: "/scratch".into(), size: Some(1 << 20) },
    ];
    let (outcome, lines) = run_collect(&req);
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(stdout_of(&lines), ["from host", "ro-refused", "s3cret", "t", "1"]);
    assert_eq!(fs::read_to_string(ro.join("data")).unwrap(), "from host\n");
    assert_eq!(fs::read_to_string(rw.join("out")).unwrap(), "w\n");
    assert_eq!(
        img.upper_changes(),
        Vec::<String>::new(),
        "stubs and tmpfs contents stay out of upper"
    );
    for stub in
        ["/ro", "/cache", "/cache/rw", "/run", "/run/secrets", "/run/secrets/token", "/scratch"]
    {
        assert!(outcome.stubs.iter().any(|s| s == stub), "{stub} in {:?}", outcome.stubs);
    }
}

#[test]
fn in_root_sources_resolve_inside_their_root_and_discarded_writes_never_land() {
    if !can_run() {
        return;
    }
    let img = image();
    let host = tempfile::tempdir().unwrap();
    let outside = host.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "host secret\n").unwrap();
    let root = host.path().join("root");
    fs::create_dir_all(root.join("data")).unwrap();
    fs::write(root.join("data/file"), "in root\n").unwrap();
    fs::write(root.join("single"), "one file\n").unwrap();
    std::os::unix::fs::symlink("/", root.join("toroot")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
    std::os::unix::fs::symlink("../../../../../../..", root.join("up")).unwrap();
    let in_root = |path: &str| BindSource::InRoot { root: root.clone(), path: path.into() };
    let mut req = img.req(
        "ls /a; ls /b; cat /c/file; echo changed > /c/file; rm /c/file; touch /c/new; \
         echo more >> /d; cat /d",
    );
    req.mounts = vec![
        Mount::Bind { source: in_root("toroot"), target: "/a".into(), access: Access::ReadOnly },
        Mount::Bind { source: in_root("up/data"), target: "/b".into(), access: Access::ReadOnly },
        Mount::Bind {
            source: in_root("/toroot/data"),
            target: "/c".into(),
            access: Access::Discard,
        },
        Mount::Bind { source: in_root("single"), target: "/d".into(), access: Access::Discard },
    ];
    let (outcome, lines) = run_collect(&req);
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(
        stdout_of(&lines),
        ["data", "out", "single", "toroot", "up", "file", "in root", "one file", "more"]
    );
    assert_eq!(fs::read_to_string(root.join("data/file")).unwrap(), "in root\n");
    assert!(!root.join("data/new").exists());
    assert_eq!(fs::read_to_string(root.join("single")).unwrap(), "one file\n");

    // A link out of the root names a path inside it: here, one that does not exist.
    req.mounts = vec![Mount::Bind {
        source: in_root("out/secret"),
        target: "/s".into(),
        access: Access::ReadOnly,
    }];
    let err = strata_sandbox::run(&req, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, SandboxError::MountSource { .. }), "{err}");
}

#[test]
fn plain_directory_rootfs_and_host_network() {
    if !can_run() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    make_rootfs(&root);
    let req = RunRequest {
        rootfs: RootFs::Dir(root.clone()),
        argv: vec![
            "sh".into(),
            "-c".into(),
            "echo made > /made && ls /sys/class/net | wc -l".into(),
        ],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: "app".into(),
        network: Network::Host,
        mounts: vec![],
        hostname: String::new(),
        extra_hosts: vec![],
        resources: Default::default(),
        insecure: false,
    };
    let (outcome, _) = run_collect(&req);
    assert_ne!(outcome.exit_code, 0, "app may not write to /");
    assert!(!root.join("made").exists());
    let mut req = req;
    req.user = "".into();
    let (outcome, lines) = run_collect(&req);
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(fs::read_to_string(root.join("made")).unwrap(), "made\n");
    let host_ifaces = fs::read_dir("/sys/class/net").unwrap().count();
    assert_eq!(stdout_of(&lines), [host_ifaces.to_string()], "host network namespace");
    for stub in ["proc", "dev", "sys", "etc/hosts", "etc/resolv.conf"] {
        assert!(!root.join(stub).exists(), "stub {stub} left in the directory");
    }

    // a step that changes nothing leaves no trace, not even in directory mtimes
    let mtimes = |root: &Path| {
        ["", "etc"].map(|d| {
            let m = fs::symlink_metadata(root.join(d)).unwrap();
            (m.mtime(), m.mtime_nsec())
        })
    };
    let before = mtimes(&root);
    req.argv = vec!["true".into()];
    let (outcome, _) = run_collect(&req);
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(mtimes(&root), before);
    no_leaked_mounts();
}

fn sleepers(marker: &str) -> usize {
    let mut n = 0;
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = fs::read(e.path().join("cmdline")) {
            if cmd.split(|b| *b == 0).any(|arg| arg == marker.as_bytes()) {
                n += 1;
            }
        }
    }
    n
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cancelling_kills_the_step_and_leaves_nothing() {
    if !can_run() {
        return;
    }
    let img = image();
    let mut req = img.req("");
    req.argv = vec!["sh".into(), "-c".into(), "sleep 987001 & sleep 987001; echo never".into()];
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let watcher = std::thread::spawn(move || {
        wait_until("the sleepers", Duration::from_secs(5), || sleepers("987001") == 2);
        c2.cancel();
    });
    let start = Instant::now();
    let err = run_cancellable(&req, &mut |_, _| {}, &cancel).unwrap_err();
    watcher.join().unwrap();
    assert!(matches!(err, SandboxError::Cancelled), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    wait_until("no sleepers", Duration::from_secs(3), || sleepers("987001") == 0);
    no_leaked_mounts();
}

/// Runs a long step when started by `killing_strata_kills_the_step` in a child process.
#[test]
fn helper_long_step() {
    if std::env::var("STRATA_SANDBOX_HELPER").is_err() || !can_run() {
        return;
    }
    let img = image();
    let mut req = img.req("");
    req.argv = vec!["sh".into(), "-c".into(), "sleep 987002 & sleep 987002".into()];
    let _ = run(&req, &mut |_, _| {});
}

#[test]
fn killing_strata_kills_the_step() {
    if !can_run() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    // the killed helper cannot clean up its temp dirs: keep them in one of ours
    let tmp = tempfile::tempdir().unwrap();
    let mut helper = std::process::Command::new(exe)
        .args(["--exact", "helper_long_step", "--nocapture", "--test-threads=1"])
        .env("STRATA_SANDBOX_HELPER", "1")
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the sleepers", Duration::from_secs(10), || sleepers("987002") == 2);
    helper.kill().unwrap();
    helper.wait().unwrap();
    wait_until("no sleepers", Duration::from_secs(3), || sleepers("987002") == 0);
    no_leaked_mounts();
}

#[test]
fn overlay_is_supported_here() {
    if !can_run() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    assert!(overlay_supported(tmp.path()));
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0, "probe cleans up");
    no_leaked_mounts();
}

#[test]
fn empty_lowers_is_an_empty_image() {
    if !can_run() {
        return;
    }
    let img = image();
    let req = RunRequest {
        rootfs: RootFs::Overlay {
            lowers: vec![],
            upper: img.upper.clone(),
            work: img.work.clone(),
        },
        ..img.req("true")
    };
    let err = run(&req, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, SandboxError::Exec { .. }), "no /bin/sh in scratch: {err}");
}

#[test]
fn root_step_has_dockers_capabilities_and_proc_is_guarded() {
    if !can_run() {
        return;
    }
    let img = image();
    let (outcome, lines) = run_collect(&img.req(
        "grep -E '^Cap(Eff|Bnd)' /proc/self/status; \
         echo x > /proc/sys/kernel/domainname || echo sys-refused; \
         if [ -e /proc/timer_list ]; then wc -c < /proc/timer_list; else echo 0; fi",
    ));
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    let out = stdout_of(&lines);
    assert_eq!(out[0], "CapEff:\t00000000a80425fb");
    assert_eq!(out[1], "CapBnd:\t00000000a80425fb");
    assert_eq!(out[2..], ["sys-refused", "0"]);

    let mut req = img.req("grep -E '^CapEff' /proc/self/status");
    req.user = img.user("app");
    let (_, lines) = run_collect(&req);
    assert_eq!(stdout_of(&lines), ["CapEff:\t0000000000000000"]);
}

#[test]
fn dangling_resolv_conf_symlink_in_the_image_is_left_alone() {
    if !can_run() {
        return;
    }
    let img = image();
    std::os::unix::fs::symlink(
        "../run/systemd/resolve/stub-resolv.conf",
        img.lower.join("etc/resolv.conf"),
    )
    .unwrap();
    let (outcome, lines) = run_collect(&img.req("cat /etc/hosts >/dev/null && echo ok"));
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(stdout_of(&lines), ["ok"]);
    assert!(!outcome.stubs.iter().any(|s| s == "/etc/resolv.conf"), "{:?}", outcome.stubs);
    assert_eq!(img.upper_changes(), Vec::<String>::new());
}

/// The rootless path, run by `rootless_step_runs_in_a_user_namespace` as uid 65534.
#[test]
fn helper_rootless_step() {
    if std::env::var("STRATA_SANDBOX_ROOTLESS").is_err() {
        return;
    }
    assert!(!rustix::process::geteuid().is_root(), "helper must not be root");
    let img = image();
    let mut req = img.req(
        "echo $(id -u) $(id -g); echo hi > /new.txt; rm /etc/motd; ls /sys/class/net; cat /etc/hosts | wc -l",
    );
    req.mounts = vec![Mount::Tmpfs { target: "/scratch".into(), size: None }];
    let (outcome, lines) = run_collect(&req);
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(stdout_of(&lines), ["0 0", "lo", "2"]);
    assert_eq!(fs::read_to_string(img.upper.join("new.txt")).unwrap(), "hi\n");
    let wh = fs::symlink_metadata(img.upper.join("etc/motd")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "whiteout 0/0");
    assert_eq!(img.upper_entries(), ["etc", "etc/motd", "new.txt"]);

    req.user = img.user("app");
    let err = run(&req, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, SandboxError::UnmappedUser { uid: 1000, .. }), "{err}");
    assert!(err.to_string().contains("subordinate ids are not used"), "{err}");
}

/// First and count of the host uid and gid ranges the subordinate-id test grants.
const SUB_UIDS: (u32, u32) = (300_000, 65_536);
const SUB_GIDS: (u32, u32) = (400_000, 65_536);

/// The subordinate-id path, run by `subordinate_ids_map_more_than_root` as a system user
/// that `/etc/subuid` and `/etc/subgid` grant [`SUB_UIDS`] and [`SUB_GIDS`].
#[test]
fn helper_subordinate_step() {
    let Ok(mode) = std::env::var("STRATA_SANDBOX_SUBIDS") else { return };
    assert!(!rustix::process::geteuid().is_root(), "helper must not be root");
    let img = image();
    if mode == "failing-helpers" {
        // PATH finds newuidmap/newgidmap that exit 1: a root step still runs, with the
        // single-id map, and other users are refused with the helper's complaint
        let (outcome, lines) = run_collect(&img.req("id -u; touch /f"));
        assert_eq!(outcome.exit_code, 0, "{lines:?}");
        assert_eq!(stdout_of(&lines), ["0"]);
        let mut req = img.req("true");
        req.user = img.user("app");
        let err = run(&req, &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, SandboxError::UnmappedUser { uid: 1000, .. }), "{err}");
        assert!(
            err.to_string().contains("newuidmap ") && err.to_string().contains("refused"),
            "{err}"
        );
        return;
    }
    let mut req = img.req("id -u; id -g; id -G; touch mine; stat -c %u:%g mine");
    req.user = img.user("app");
    req.cwd = "/work".into();
    let (outcome, lines) = run_collect(&req);
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(stdout_of(&lines), ["1000", "1000", "1000 2000", "1000:1000"]);
    let host = |rel: &str| {
        let m = fs::symlink_metadata(img.upper.join(rel)).unwrap();
        (m.uid(), m.gid())
    };
    let mapped = (SUB_UIDS.0 + 999, SUB_GIDS.0 + 999);
    assert_eq!(host("work"), mapped, "the cwd is created for container 1000:1000");
    assert_eq!(host("work/mine"), mapped);

    let mut req = img.req(
        "chown 1000:1000 /etc/motd && touch /new && chown 5:7 /new && stat -c %u:%g /etc/motd /new",
    );
    req.user = img.user("");
    let (outcome, lines) = run_collect(&req);
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(stdout_of(&lines), ["1000:1000", "5:7"]);
    assert_eq!(host("etc/motd"), mapped, "copied up and chowned to the mapped ids");
    assert_eq!(host("new"), (SUB_UIDS.0 + 4, SUB_GIDS.0 + 6));
    let me = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
    let mut req = img.req("touch /mine-as-root");
    req.user = img.user("0:0");
    assert_eq!(run_collect(&req).0.exit_code, 0);
    assert_eq!(host("mine-as-root"), me, "container root is the caller");

    req.user = img.user("70000");
    let err = run(&req, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, SandboxError::UnmappedUser { uid: 70000, .. }), "{err}");
    assert!(err.to_string().contains("uids 0-65536 and gids 0-65536"), "{err}");
}

/// Adds lines to `/etc/subuid` and `/etc/subgid` while it lives and puts the files back
/// byte for byte when dropped (also on a panic). Holds an exclusive lock on a file in /tmp,
/// so that test processes do not edit them at the same time.
struct SubIdEntries {
    saved: Vec<(PathBuf, Option<Vec<u8>>)>,
    _lock: fs::File,
}

impl SubIdEntries {
    fn add(subuid_line: &str, subgid_line: &str) -> SubIdEntries {
        let lock = fs::File::create("/tmp/strata-sandbox-subid-test.lock").unwrap();
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let mut saved = Vec::new();
        for (path, line) in [("/etc/subuid", subuid_line), ("/etc/subgid", subgid_line)] {
            let path = PathBuf::from(path);
            let old = fs::read(&path).ok();
            let mut new = old.clone().unwrap_or_default();
            if !new.is_empty() && !new.ends_with(b"\n") {
                new.push(b'\n');
            }
            new.extend_from_slice(line.as_bytes());
            new.push(b'\n');
            saved.push((path.clone(), old));
            fs::write(&path, new).unwrap();
        }
        SubIdEntries { saved, _lock: lock }
    }
}

impl Drop for SubIdEntries {
    fn drop(&mut self) {
        for (path, old) in &self.saved {
            let _ = match old {
                Some(bytes) => fs::write(path, bytes),
                None => fs::remove_file(path),
            };
        }
    }
}

/// A system account to run the subordinate-id helper as: (name, uid, gid).
fn system_user() -> Option<(String, u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    ["games", "man", "lp", "irc", "list", "backup"].iter().find_map(|want| {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let (uid, gid) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
            (f[0] == *want && uid != 0 && uid != 65534).then(|| (f[0].to_string(), uid, gid))
        })
    })
}

#[test]
#[allow(clippy::print_stderr)] // the skip messages
fn subordinate_ids_map_more_than_root() {
    use std::os::unix::process::CommandExt;
    if !can_run() {
        return;
    }
    let have_helpers = ["/usr/bin/newuidmap", "/usr/bin/newgidmap"]
        .iter()
        .all(|p| fs::metadata(p).is_ok_and(|m| m.mode() & 0o4000 != 0));
    if !have_helpers {
        if std::env::var("STRATA_TEST_STRICT").as_deref() == Ok("1") {
            panic!("subordinate-id test needs setuid /usr/bin/newuidmap and newgidmap (uidmap)");
        }
        eprintln!("skipping: setuid /usr/bin/newuidmap and newgidmap (package uidmap) not found");
        return;
    }
    let Some((name, uid, gid)) = system_user() else {
        eprintln!("skipping: no system account (games, man, ...) to run the step as");
        return;
    };
    let userns_ok = std::process::Command::new("unshare")
        .args(["-Ur", "true"])
        .uid(uid)
        .gid(gid)
        .status()
        .is_ok_and(|s| s.success());
    if !userns_ok {
        eprintln!("skipping: unprivileged user namespaces unavailable");
        return;
    }
    let before: Vec<Option<Vec<u8>>> =
        ["/etc/subuid", "/etc/subgid"].iter().map(|p| fs::read(p).ok()).collect();
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let fake_bin = tmp.path().join("fake-bin");
    fs::create_dir(&fake_bin).unwrap();
    for helper in ["newuidmap", "newgidmap"] {
        let script = fake_bin.join(helper);
        fs::write(&script, format!("#!/bin/sh\necho {helper} refused >&2\nexit 1\n")).unwrap();
        fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:/usr/bin:/bin", fake_bin.display());
    let outs: Vec<_> = {
        // by name in subuid, by uid in subgid: newuidmap/newgidmap and strata accept both
        let _entries = SubIdEntries::add(
            &format!("{name}:{}:{}", SUB_UIDS.0, SUB_UIDS.1),
            &format!("{uid}:{}:{}", SUB_GIDS.0, SUB_GIDS.1),
        );
        [("1", "/usr/bin:/bin"), ("failing-helpers", path.as_str())]
            .into_iter()
            .map(|(mode, path)| {
                std::process::Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", "helper_subordinate_step", "--nocapture", "--test-threads=1"])
                    .env("STRATA_SANDBOX_SUBIDS", mode)
                    .env("PATH", path)
                    .env("TMPDIR", tmp.path())
                    .uid(uid)
                    .gid(gid)
                    .output()
                    .unwrap()
            })
            .collect()
    };
    let after: Vec<Option<Vec<u8>>> =
        ["/etc/subuid", "/etc/subgid"].iter().map(|p| fs::read(p).ok()).collect();
    assert_eq!(before, after, "/etc/subuid and /etc/subgid are restored");
    for out in outs {
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "subordinate-id helper failed or did not run:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    no_leaked_mounts();
}

#[test]
fn rootless_step_runs_in_a_user_namespace() {
    use std::os::unix::process::CommandExt;
    if !can_run() {
        return;
    }
    let userns_ok = std::process::Command::new("unshare")
        .args(["-Ur", "true"])
        .uid(65534)
        .gid(65534)
        .status()
        .is_ok_and(|s| s.success());
    if !userns_ok {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipping: unprivileged user namespaces unavailable");
        }
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_rootless_step", "--nocapture", "--test-threads=1"])
        .env("STRATA_SANDBOX_ROOTLESS", "1")
        .env("TMPDIR", tmp.path())
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "rootless helper failed or did not run:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    no_leaked_mounts();
}

#[test]
fn dev_has_the_usual_nodes_and_shm() {
    if !can_run() {
        return;
    }
    let img = image();
    let (outcome, lines) = run_collect(&img.req(
        "ls /dev | tr '\\n' ' '; echo; echo x > /dev/null && echo null-ok; \
         head -c 4 /dev/urandom | wc -c; echo t > /dev/shm/t && echo shm-ok; test -c /dev/pts/ptmx && echo pts-ok",
    ));
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    let out = stdout_of(&lines);
    for node in ["null", "zero", "full", "random", "urandom", "pts", "shm", "ptmx", "fd", "stdin"] {
        assert!(out[0].split(' ').any(|n| n == node), "/dev lacks {node}: {}", out[0]);
    }
    assert_eq!(out[1..], ["null-ok", "4", "shm-ok", "pts-ok"]);
}

#[test]
fn parallel_steps_do_not_mix() {
    if !can_run() {
        return;
    }
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let img = image();
                let (outcome, lines) = run_collect(
                    &img.req(&format!("for j in 1 2 3; do echo step{i}-$j; done; exit {i}")),
                );
                (i, outcome.exit_code, stdout_of(&lines))
            })
        })
        .collect();
    for h in handles {
        let (i, code, out) = h.join().unwrap();
        assert_eq!(code, i);
        assert_eq!(out, [1, 2, 3].map(|j| format!("step{i}-{j}")));
    }
}

#[test]
fn signals_start_at_their_defaults() {
    if !can_run() {
        return;
    }
    let img = image();
    // with SIGPIPE still ignored (as Rust leaves it) `yes` would complain about EPIPE
    let (outcome, lines) = run_collect(&img.req("yes | head -n 1"));
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(lines, [(Stream::Stdout, "y".to_string())]);
    let mut req = img.req("");
    req.argv = vec!["grep".into(), "-E".into(), "^Sig(Blk|Ign)".into(), "/proc/self/status".into()];
    let (outcome, lines) = run_collect(&req);
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(
        lines,
        [
            (Stream::Stdout, "SigBlk:\t0000000000000000".to_string()),
            (Stream::Stdout, "SigIgn:\t0000000000000000".to_string()),
        ]
    );
}

#[test]
fn a_deep_layer_stack_beyond_the_mount_option_page_still_mounts() {
    if !can_run() {
        return;
    }
    let img = image();
    let stack = tempfile::tempdir().unwrap();
    let mut lowers = vec![img.lower.clone()];
    for i in 0..150 {
        let l = stack.path().join(format!("layer-with-a-rather-long-name-{i:03}"));
        fs::create_dir(&l).unwrap();
        fs::write(l.join("n"), format!("{i}\n")).unwrap();
        fs::write(l.join(format!("only-{i}")), "").unwrap();
        lowers.push(l);
    }
    let req = RunRequest {
        rootfs: RootFs::Overlay { lowers, upper: img.upper.clone(), work: img.work.clone() },
        ..img.req("cat /n; ls / | grep -c '^only-'")
    };
    let (outcome, lines) = run_collect(&req);
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(stdout_of(&lines), ["149", "150"], "top layer wins, all layers visible");
}
