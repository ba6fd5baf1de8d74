//! The embedding examples (`crates/strata/examples/`), run as a user would run them: built by
//! `cargo test`, executed against a temp store (and a local registry for the push).

#[path = "../../strata-registry/tests/common/registry.rs"]
mod registry;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The example binary `name` that `cargo test` built beside this test.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(Path::parent).unwrap();
    let path = debug.join("examples").join(name);
    assert!(path.is_file(), "{} not built (cargo test builds examples)", path.display());
    path
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(example(name)).args(args).output().unwrap()
}

/// A context with no RUN step: it builds without root.
fn context(dir: &Path, message: &str) -> PathBuf {
    let ctx = dir.join(format!("ctx-{message}"));
    fs::create_dir_all(ctx.join("app")).unwrap();
    fs::write(ctx.join("app/index.php"), format!("<?php echo '{message}';\n")).unwrap();
    fs::write(ctx.join("app/static.txt"), "unchanged\n").unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY app/static.txt /srv/\nCOPY app/index.php /srv/\nCMD [\"/srv/index.php\"]\n",
    )
    .unwrap();
    ctx
}

#[test]
fn embed_build_then_embed_diff() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let s = store.to_str().unwrap();
    for (tag, message) in [("app:v1", "one"), ("app:v2", "two")] {
        let ctx = context(tmp.path(), message);
        let out = run("embed-build", &[s, ctx.to_str().unwrap(), tag]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let digest = String::from_utf8(out.stdout).unwrap();
        assert!(digest.trim().starts_with("sha256:"), "{digest}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("COPY app/index.php"));
    }
    let same = run("embed-diff", &[s, "app:v1", "app:v1"]);
    assert_eq!(same.status.code(), Some(0), "{}", String::from_utf8_lossy(&same.stderr));
    let differ = run("embed-diff", &[s, "app:v1", "app:v2"]);
    assert_eq!(differ.status.code(), Some(1), "{}", String::from_utf8_lossy(&differ.stderr));
    let text = String::from_utf8(differ.stdout).unwrap();
    assert!(text.contains("srv/index.php"), "{text}");
    assert!(text.contains("transfer: 3 blobs"), "one layer, config and manifest: {text}");
    let bad = run("embed-diff", &[s, "app:v1", "app:nope"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn embed_push_moves_only_what_the_registry_lacks() {
    if !registry::registry_available() {
        return;
    }
    let reg = registry::Registry::start(registry::RegistryOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let s = store.to_str().unwrap();
    for (tag, message) in [("app:v1", "one"), ("app:v2", "two")] {
        let ctx = context(tmp.path(), message);
        assert!(run("embed-build", &[s, ctx.to_str().unwrap(), tag]).status.success());
    }
    let dest = |tag: &str| format!("docker://127.0.0.1:{}/app:{tag}", reg.port);
    let first = run("embed-push", &[s, "app:v1", &dest("v1")]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let text = String::from_utf8(first.stdout).unwrap();
    assert!(text.contains("0 present, 0 mounted, 3 uploaded"), "two layers and the config: {text}");
    let second = run("embed-push", &[s, "app:v2", &dest("v2")]);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let text = String::from_utf8(second.stdout).unwrap();
    assert!(
        text.contains("1 present, 0 mounted, 2 uploaded"),
        "only the new layer and config: {text}"
    );
}
