//! `--timeout`: a registry that accepts connections and never answers costs one stall timeout,
//! then one clear error naming the registry and the request; the store stays consistent.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{silent_server, TempRoot};

fn strata(dir: &TempRoot, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--store")
        .arg(dir.path("store"))
        .args(args)
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .env("HOME", dir.path("home"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn pull_from_a_registry_that_never_answers_fails_after_the_timeout() {
    let dir = TempRoot::new();
    std::fs::create_dir_all(dir.path("home")).unwrap();
    let host = silent_server();
    let started = Instant::now();
    let out = strata(&dir, &["pull", "--timeout", "2s", &format!("{host}/app:v1")]);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}: {stderr}");
    let expected = format!("registry {host}: GET /v2/ stalled: no data for 2 s");
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(stderr.matches("no data for").count(), 1, "said once: {stderr}");

    let fsck = strata(&dir, &["fsck"]);
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stderr));
    assert!(String::from_utf8_lossy(&fsck.stdout).contains("clean"));
    let images = strata(&dir, &["images"]);
    assert!(!String::from_utf8_lossy(&images.stdout).contains("app"), "nothing tagged");
}

#[test]
fn a_timeout_that_is_not_a_duration_is_a_usage_error() {
    let dir = TempRoot::new();
    for bad in ["0", "soon", "2x"] {
        let out = strata(&dir, &["pull", "--timeout", bad, "127.0.0.1:9/app:v1"]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--timeout"), "{bad}");
    }
}

#[test]
fn a_build_whose_base_registry_never_answers_fails_after_the_timeout() {
    let dir = TempRoot::new();
    std::fs::create_dir_all(dir.path("home")).unwrap();
    std::fs::create_dir_all(dir.path("ctx")).unwrap();
    let host = silent_server();
    std::fs::write(dir.path("ctx/Dockerfile"), format!("FROM {host}/base:1\n")).unwrap();
    let ctx = dir.path("ctx");
    let started = Instant::now();
    let out = strata(
        &dir,
        &["build", "--progress", "plain", "--timeout", "2", "-t", "out:1", ctx.to_str().unwrap()],
    );
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}: {stderr}");
    assert!(
        stderr.contains(&format!("registry {host}: GET /v2/ stalled: no data for 2 s")),
        "{stderr}"
    );
    let images = strata(&dir, &["images"]);
    assert!(!String::from_utf8_lossy(&images.stdout).contains("out"), "nothing tagged");
}
