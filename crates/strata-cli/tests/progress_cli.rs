//! `strata build`'s displays and Ctrl-C: the tty view driven in a real terminal (tmux), the
//! JSON events' versioned shape, and cancelling a running RUN (as root) with SIGINT/SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{have, needs_root, workspace};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// A FROM-scratch recipe that copies three files (8 + 4 + 1000 bytes) in two steps, with
/// names long enough to overflow a 100-column terminal.
fn copy_context(dir: &Path) {
    let long = "a-file-name-long-enough-to-overflow-a-hundred-column-terminal-if-nothing-cut-it";
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/one"), "12345678").unwrap();
    std::fs::write(dir.join("files/two"), "1234").unwrap();
    std::fs::write(dir.join(long), "x".repeat(1000)).unwrap();
    let recipe = format!("FROM scratch\nCOPY files/ /data/\nCOPY {long} /{long}\n");
    std::fs::write(dir.join("Dockerfile"), recipe).unwrap();
}

#[test]
fn tty_view_shows_header_and_counters_within_the_pane_width() {
    if !have("tmux") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    copy_context(&ctx);
    let store = tmp.path().join("store");
    let script = format!(
        "'{STRATA}' --store '{}' build --progress tty '{}'; echo EXIT=$?; sleep 60",
        store.display(),
        ctx.display()
    );
    let tmux = common::Tmux::start("progress", 100, 30, &script);
    let deadline = Instant::now() + Duration::from_secs(60);
    let screen = loop {
        let screen = tmux.screen();
        if screen.contains("EXIT=") || Instant::now() > deadline {
            break screen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(tmux);
    assert!(screen.contains("EXIT=0"), "{screen}");
    let header = screen.lines().find(|l| l.starts_with("[+] Building ")).expect(&screen);
    assert!(header.contains("(2/2) FINISHED"), "done/total steps: {screen}");
    assert!(
        screen.contains("[stage-0] 2 steps") && screen.contains("copied 3 files, 1.012kB"),
        "one summary line per stage, with the COPY counters: {screen}"
    );
    assert!(!screen.contains("build report"), "no step report in tty mode: {screen}");
    let built = screen.lines().find(|l| l.starts_with("built sha256:")).expect(&screen);
    assert!(
        built.contains("2 written (") && built.ends_with("B)"),
        "the closing counts fit the pane: {screen}"
    );
    for line in screen.lines() {
        assert!(line.chars().count() <= 100, "line wider than the pane: {line:?}\n{screen}");
    }
}

#[test]
fn plain_log_counts_context_and_copied_files_and_json_events_are_versioned() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    copy_context(&ctx);
    let store = tmp.path().join("store");
    let build = |mode: &str| {
        let out = Command::new(STRATA)
            .arg("--store")
            .arg(&store)
            .args(["build", "--no-cache", "--progress", mode])
            .arg(&ctx)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let plain = String::from_utf8(build("plain").stderr).unwrap();
    assert!(plain.contains("#1 context: 2 files, 12B"), "{plain}");
    assert!(plain.contains("#1 copied 2 files, 12B"), "{plain}");
    assert!(plain.contains("build report:"), "plain mode keeps the full report: {plain}");

    let json = String::from_utf8(build("json").stdout).unwrap();
    let events: Vec<serde_json::Value> =
        json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().all(|e| e["version"] == 1), "{json}");
    assert_eq!(events[0]["event"], "build_start", "{json}");
    assert_eq!(events[0]["steps"], 2, "{json}");
    let staged: Vec<_> = events.iter().filter(|e| e["event"] == "copy_staged").collect();
    assert_eq!(staged[0]["files"], 2, "{json}");
    assert_eq!(staged[1]["bytes"], 1000, "{json}");
    assert_eq!(events.last().unwrap()["event"], "build_done", "{json}");
}

/// Starts a build whose RUN prints a line then sleeps `marker` seconds (an argument no other
/// process has), waits for that line, sends `signal`, and returns (exit code, stderr). The
/// store gets `lamp-base:latest` first.
fn cancel_running_build(
    tmp: &Path,
    signal: &str,
    tag: &str,
    marker: &str,
) -> (Option<i32>, String) {
    let store = tmp.join("store");
    let out = Command::new(workspace().join("examples/lamp/make-base.sh"))
        .env("STRATA", STRATA)
        .env("STRATA_STORE", &store)
        .output()
        .unwrap();
    assert!(out.status.success(), "make-base.sh: {}", String::from_utf8_lossy(&out.stderr));
    let ctx = tmp.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM lamp-base:latest\nRUN echo started && sleep {marker}\nRUN touch /never\n"),
    )
    .unwrap();
    let private_tmp = tmp.join("tmp");
    std::fs::create_dir_all(&private_tmp).unwrap();
    let mut child = Command::new(STRATA)
        .arg("--store")
        .arg(&store)
        .args(["build", "--progress", "plain", "-t", tag])
        .arg(&ctx)
        .env("TMPDIR", &private_tmp)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = common::read_until_line(&mut stderr, |l| l.ends_with(" started"));
    // The step printed; give sleep a moment to be exec'd by the shell.
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the build did not stop within 30s of {signal}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    log.push_str(&reader.join().unwrap());
    let left: Vec<_> = std::fs::read_dir(&private_tmp).unwrap().collect();
    assert!(left.is_empty(), "temp dirs left in TMPDIR: {left:?}\n{log}");
    (code, log)
}

/// Processes whose command line has the `marker` argument.
fn marked_processes(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == marker || a.contains(&format!("sleep {marker}"))) {
            found.push(format!("{}: {}", entry.file_name().to_string_lossy(), args.join(" ")));
        }
    }
    found
}

fn store_leftovers(store: &Path) -> Vec<String> {
    let mut left = Vec::new();
    let mut stack = vec![store.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("step-") {
                left.push(e.path().display().to_string());
            } else if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    left
}

#[test]
fn ctrl_c_kills_the_run_step_cleans_up_and_exits_130() {
    if !needs_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (code, log) = cancel_running_build(tmp.path(), "-INT", "cancel:int", "31415");
    assert_eq!(code, Some(130), "{log}");
    assert!(log.lines().any(|l| l == "cancelled"), "{log}");
    assert!(!log.contains("error"), "a cancel is not reported as a failure: {log}");
    assert_eq!(marked_processes("31415"), Vec::<String>::new(), "the step's processes survived");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let store = tmp.path().join("store");
    assert!(
        !mounts
            .lines()
            .any(|l| l.contains("strata-sandbox-") || l.contains(&*store.to_string_lossy())),
        "mounts left:\n{mounts}"
    );
    assert_eq!(store_leftovers(&store), Vec::<String>::new(), "step scratch dirs left");
    let fsck = Command::new(STRATA).arg("--store").arg(&store).arg("fsck").output().unwrap();
    assert!(fsck.status.success(), "fsck: {}", String::from_utf8_lossy(&fsck.stderr));
}

#[test]
fn a_build_stopped_by_sigterm_tags_nothing() {
    if !needs_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (code, log) = cancel_running_build(tmp.path(), "-TERM", "cancel:term", "27182");
    assert_eq!(marked_processes("27182"), Vec::<String>::new(), "the step's processes survived");
    assert_eq!(code, Some(130), "{log}");
    assert!(log.contains("cancelled"), "{log}");
    let store = tmp.path().join("store");
    let inspect =
        Command::new(STRATA).arg("--store").arg(&store).args(["inspect", "cancel:term"]).output();
    assert!(!inspect.unwrap().status.success(), "the tag exists after a cancelled build");
    let images = Command::new(STRATA).arg("--store").arg(&store).arg("images").output().unwrap();
    let listed = String::from_utf8_lossy(&images.stdout);
    assert!(!listed.contains("cancel"), "{listed}");
}

#[test]
fn a_second_ctrl_c_exits_at_once() {
    // A base from a registry that accepts and never answers: the pull waits for its stall
    // timeout (minutes by default) whatever the first Ctrl-C says, so only the second stops it.
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::create_dir_all(tmp.path().join("home")).unwrap();
    let host = common::silent_server();
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {host}/base:1\nCOPY Dockerfile /\n"))
        .unwrap();
    let mut child = Command::new(STRATA)
        .arg("--store")
        .arg(tmp.path().join("store"))
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .env("HOME", tmp.path().join("home"))
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    while !log.contains("pulling") {
        assert!(stderr.read_line(&mut log).unwrap() > 0, "build ended early:\n{log}");
    }
    let pid = child.id().to_string();
    let interrupt =
        || assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    interrupt();
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the pull should still be waiting:\n{log}");
    let second = Instant::now();
    interrupt();
    let deadline = second + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second Ctrl-C did not exit at once:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
    assert_eq!(code, Some(130), "{log}");
    assert_eq!(log.matches("cancelled").count(), 1, "{log}");
}

/// Runs `strata build --progress plain -t copy:x CTX` (TMPDIR private), sends SIGINT once
/// stderr has a line containing `at`, and returns (exit code, stderr, time from the signal
/// to the exit). Panics if the build does not stop within 60 s of the signal.
fn interrupt_build_at(tmp: &Path, ctx: &Path, at: &str) -> (Option<i32>, String, Duration) {
    let private_tmp = tmp.join("tmp");
    std::fs::create_dir_all(&private_tmp).unwrap();
    let mut child = Command::new(STRATA)
        .arg("--store")
        .arg(tmp.join("store"))
        .args(["build", "--progress", "plain", "-t", "copy:x"])
        .arg(ctx)
        .env("TMPDIR", &private_tmp)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = common::read_until_line(&mut stderr, |l| l.contains(at));
    let signalled = Instant::now();
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if signalled.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the build did not stop within 60 s of Ctrl-C:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    log.push_str(&reader.join().unwrap());
    let left: Vec<_> = std::fs::read_dir(&private_tmp).unwrap().collect();
    assert!(left.is_empty(), "temp dirs left in TMPDIR: {left:?}\n{log}");
    (code, log, took)
}

/// After a cancelled build: nothing of it is left in the store (no step dirs, no temp
/// blobs, no layer blob, no tag), no mount names it, and fsck is clean.
fn assert_nothing_left(store: &Path, log: &str) {
    assert_eq!(store_leftovers(store), Vec::<String>::new(), "step dirs left: {log}");
    let tmp = store.join("strata/v1/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).into_iter().flatten().collect();
    assert!(left.is_empty(), "store temp files left: {left:?}\n{log}");
    let blobs: Vec<_> =
        std::fs::read_dir(store.join("blobs/sha256")).into_iter().flatten().collect();
    assert!(blobs.is_empty(), "the COPY's layer was written: {blobs:?}\n{log}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&*store.to_string_lossy()), "mounts left:\n{mounts}");
    let inspect =
        Command::new(STRATA).arg("--store").arg(store).args(["inspect", "copy:x"]).output();
    assert!(!inspect.unwrap().status.success(), "tagged after a cancel: {log}");
    let fsck = Command::new(STRATA).arg("--store").arg(store).arg("fsck").output().unwrap();
    assert!(fsck.status.success(), "fsck: {}", String::from_utf8_lossy(&fsck.stderr));
}

/// Regression (issue 16): Ctrl-C during a COPY waited for the step to finish (minutes for a
/// big file). It stops the COPY between files and chunks: while hashing a 16 GB (sparse)
/// file for the cache key, while staging 20,000 files and while an ADD extracts a tar of
/// them, exit 130 well within a few seconds, "cancelled", nothing written, tagged or left
/// behind.
#[test]
fn ctrl_c_during_a_copy_stops_it_at_once_and_leaves_nothing() {
    // Hashing: the context scan of one big file.
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::File::create(ctx.join("big")).unwrap().set_len(16 << 30).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY big /big\n").unwrap();
    let (code, log, took) = interrupt_build_at(tmp.path(), &ctx, "COPY big /big");
    assert_eq!(code, Some(130), "{log}");
    assert!(log.lines().any(|l| l == "cancelled"), "{log}");
    assert!(!log.contains("error"), "a cancel is not reported as a failure: {log}");
    assert!(took < Duration::from_secs(5), "took {took:?} to stop hashing:\n{log}");
    assert!(!log.contains("context:"), "the scan finished: {log}");
    assert_nothing_left(&tmp.path().join("store"), &log);

    // Staging: 20,000 small files, interrupted once the context scan is done.
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    for d in 0..100 {
        let dir = ctx.join(format!("files/d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..200 {
            std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}\n").repeat(200)).unwrap();
        }
    }
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY files/ /files/\n").unwrap();
    let (code, log, took) = interrupt_build_at(tmp.path(), &ctx, "#1 context: 20000 files");
    assert_eq!(code, Some(130), "{log}");
    assert!(log.lines().any(|l| l == "cancelled"), "{log}");
    assert!(took < Duration::from_secs(5), "took {took:?} to stop staging:\n{log}");
    assert!(!log.contains("copied") && !log.contains("DONE"), "the COPY finished: {log}");
    assert_nothing_left(&tmp.path().join("store"), &log);

    // Extracting: an ADD of a tar of those 20,000 files, interrupted after the scan.
    let files = tmp.path().join("ctx");
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let tar = Command::new("tar")
        .arg("-cf")
        .arg(ctx.join("files.tar"))
        .arg("-C")
        .arg(&files)
        .arg("files")
        .status()
        .unwrap();
    assert!(tar.success());
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nADD files.tar /x/\n").unwrap();
    let (code, log, took) = interrupt_build_at(tmp.path(), &ctx, "#1 context: 1 file");
    assert_eq!(code, Some(130), "{log}");
    assert!(log.lines().any(|l| l == "cancelled"), "{log}");
    assert!(took < Duration::from_secs(5), "took {took:?} to stop extracting:\n{log}");
    assert!(!log.contains("copied") && !log.contains("DONE"), "the ADD finished: {log}");
    assert_nothing_left(&tmp.path().join("store"), &log);
}
