//! `strata diff`, `history`, `ls` and inspect's efficiency line, end to end; and a diff of
//! images built from one recipe by buildah and by strata.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
#[path = "../../strata-registry/tests/common/registry.rs"]
mod registry;

use common::{free_port, have_all, run, workspace, BuildahStorage, TempRoot};

struct Env {
    dir: TempRoot,
}

impl Env {
    fn new() -> Env {
        Env { dir: TempRoot::new() }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }
    fn strata(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("--store")
            .arg(self.p("store"))
            .args(args)
            .env_remove("SOURCE_DATE_EPOCH")
            // Registry operands: no credentials from the machine.
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG")
            .env("HOME", self.p("home"))
            .output()
            .unwrap()
    }
    /// Runs and checks the exit status; returns stdout.
    fn code(&self, args: &[&str], want: i32) -> String {
        let out = self.strata(args);
        assert_eq!(
            out.status.code(),
            Some(want),
            "strata {args:?}:\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    fn stderr(&self, args: &[&str], want: i32) -> String {
        let out = self.strata(args);
        assert_eq!(out.status.code(), Some(want), "strata {args:?}");
        String::from_utf8(out.stderr).unwrap()
    }
    fn write(&self, rel: &str, content: &str) {
        let p = self.p(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    /// A base image (`base:1`) and an app image built on it from context `name`.
    fn build(&self, ctx: &str, tag: &str, extra: &[&str]) {
        let mut args = vec!["build", "--progress", "plain", "-t", tag];
        args.extend_from_slice(extra);
        let ctx = self.p(ctx);
        args.push(ctx.to_str().unwrap());
        self.code(&args, 0);
    }
}

/// base:1 (one imported layer), app:v1 and app:v2 (base + COPY app/, LABEL, RUN-free), the
/// second with one changed file, one removed by a later layer, a new label.
fn images() -> Env {
    let env = Env::new();
    env.write("rootfs/etc/passwd", "root:x:0:0::/root:/bin/sh\n");
    env.write("rootfs/etc/motd", "hello\n");
    env.write("rootfs/bin/tool", "#!/bin/sh\n");
    let rootfs = env.p("rootfs");
    env.code(&["import", rootfs.to_str().unwrap(), "base:1"], 0);
    for (ctx, version, config) in [("v1", "1", "a=1\nb=2\n"), ("v2", "2", "a=1\nb=3\n")] {
        env.write(&format!("{ctx}/app/config"), config);
        env.write(&format!("{ctx}/app/data.bin"), "\0\u{1}\u{2}");
        env.write(
            &format!("{ctx}/Dockerfile"),
            &format!("FROM base:1\nCOPY app/ /app/\nLABEL version={version}\n"),
        );
    }
    env.build("v1", "app:v1", &[]);
    env.build("v2", "app:v2", &[]);
    env
}

#[test]
fn diff_reports_and_exit_codes() {
    let env = images();
    let same = env.code(&["diff", "app:v1", "app:v1"], 0);
    assert!(same.contains("identical; read 0 of 2 layers"), "{same}");

    let text = env.code(&["diff", "app:v1", "app:v2"], 1);
    assert!(text.contains("Labels[version]: \"1\" -> \"2\""), "{text}");
    assert!(text.contains("M /app/config  content"), "{text}");
    assert!(text.contains("[layer 1: COPY app/ /app/"), "{text}");
    assert!(
        text.contains("layers: 1 shared, 1 only in a, 1 only in b; diverge at layer 1"),
        "{text}"
    );
    assert!(text.contains("read 2 of 3 layers"), "the shared base is never read: {text}");

    let json: serde_json::Value =
        serde_json::from_str(&env.code(&["diff", "--json", "app:v1", "app:v2"], 1)).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["identical"], false);
    let changes = json["files"]["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["path"], "app/config");
    assert_eq!(changes[0]["change"], "modified");
    assert_eq!(changes[0]["changed"], serde_json::json!(["content"]));
    assert_eq!(changes[0]["layer"], 1);
    assert_eq!(json["transfer"]["layers"], 1);
    assert_eq!(json["stats"]["layers_read"], 2);

    let unified = env.code(&["diff", "--file", "/app/config", "app:v1", "app:v2"], 1);
    assert_eq!(unified, "--- a/app/config\n+++ b/app/config\n@@ -1,2 +1,2 @@\n a=1\n-b=2\n+b=3\n");
    let binary = env.code(&["diff", "--file", "app/data.bin", "app:v1", "app:v2"], 0);
    assert_eq!(binary, "", "same bytes");
    let err = env.stderr(&["diff", "--file", "app/nothing", "app:v1", "app:v2"], 2);
    assert!(err.contains("no regular file"), "{err}");

    let config_only = env.code(&["diff", "--only", "config", "app:v1", "app:v2"], 1);
    assert!(config_only.contains("Labels[version]") && !config_only.contains("files"));
    let files_only = env.code(&["diff", "--only", "files", "base:1", "base:1"], 0);
    assert!(files_only.contains("identical"), "{files_only}");
}

#[test]
fn semantic_ignores_build_time_only() {
    let env = images();
    env.build("v1", "app:t100", &["--timestamp", "100"]);
    env.build("v1", "app:t200", &["--timestamp", "200"]);
    let plain = env.code(&["diff", "app:t100", "app:t200"], 1);
    assert!(plain.contains("mtime 100 -> 200"), "{plain}");
    assert!(plain.contains("created:"), "{plain}");
    let semantic = env.code(&["diff", "--semantic", "app:t100", "app:t200"], 0);
    assert!(semantic.contains("identical"), "{semantic}");
    // A real change still shows under --semantic.
    env.build("v2", "app:t300", &["--timestamp", "300"]);
    let semantic = env.code(&["diff", "--semantic", "app:t100", "app:t300"], 1);
    assert!(semantic.contains("M /app/config  content"), "{semantic}");
    assert!(!semantic.contains("mtime"), "{semantic}");
}

#[test]
fn other_transports_and_bad_input() {
    let env = images();
    let oci = format!("oci:{}:v2", env.p("layout").display());
    env.code(&["export", "--compression", "gzip", "app:v2", &oci], 0);
    let archive = format!("docker-archive:{}", env.p("v1.tar").display());
    env.code(&["export", "app:v1", &archive], 0);
    let text = env.code(&["diff", &archive, &oci], 1);
    assert!(text.contains("M /app/config"), "{text}");
    assert!(text.contains("1 shared"), "recompressed layers keep their diffIDs: {text}");

    let err = env.stderr(&["diff", "app:v1", "app:nope"], 2);
    assert!(err.contains("app:nope") && err.contains("not found"), "{err}");
    let err = env.stderr(&["diff", "app:v1", "dir:/tmp/x"], 2);
    assert!(err.contains("not an image"), "{err}");
    // Corrupt v2's own layer: the diff must read it, and says which blob is bad, as store
    // damage (exit 3, pointing at fsck).
    let json: serde_json::Value =
        serde_json::from_str(&env.code(&["inspect", "--json", "--no-efficiency", "app:v2"], 0))
            .unwrap();
    let digest = json["manifest"]["layers"][1]["digest"].as_str().unwrap().to_string();
    let blob = env.p("store/blobs/sha256").join(digest.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0x55;
    std::fs::write(&blob, bytes).unwrap();
    // Store damage: exit 3, the blob and the image named (issue 15 point 1).
    let err = env.stderr(&["diff", "app:v1", "app:v2"], 3);
    let line = format!("blob {digest} of image app:v2 is corrupt; run `strata fsck --repair`");
    assert!(err.contains(&line), "{err}");
}

#[test]
fn history_ls_and_efficiency() {
    let env = images();
    env.write("v3/Dockerfile", "FROM app:v1\nCOPY big /app/big\nCOPY small /app/big\n");
    env.write("v3/big", &"x".repeat(50_000));
    env.write("v3/small", "small\n");
    env.build("v3", "app:v3", &[]);

    let history = env.code(&["history", "app:v2"], 0);
    assert!(history.contains("(empty)") && history.contains("LABEL version=2"), "{history}");
    // One name per layer everywhere (issue 16 point 10): the blob digest that build,
    // inspect and push print, not the diffID.
    let inspect: serde_json::Value =
        serde_json::from_str(&env.code(&["inspect", "--json", "--no-efficiency", "app:v2"], 0))
            .unwrap();
    for l in inspect["manifest"]["layers"].as_array().unwrap() {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        assert!(history.contains(&hex[..12]), "{hex} in {history}");
    }
    assert!(history.contains("DIGEST"), "{history}");
    assert!(history.contains("COPY app/ /app/"), "{history}");
    let json: serde_json::Value =
        serde_json::from_str(&env.code(&["history", "--json", "app:v2"], 0)).unwrap();
    assert_eq!(json["version"], 1);
    let rows = json["history"].as_array().unwrap();
    assert_eq!(rows.iter().filter(|r| r["empty_layer"] == true).count(), 1);
    assert_eq!(rows.iter().filter(|r| !r["layer"].is_null()).count(), 2);

    let ls = env.code(&["ls", "app:v3", "/app"], 0);
    assert!(ls.contains("L3    /app/big"), "{ls}");
    assert!(ls.contains("L1    /app/config"), "{ls}");
    let at2 = env.code(&["ls", "--layer", "2", "app:v3", "app/big"], 0);
    assert!(at2.contains("50kB  L2  * /app/big"), "{at2}");
    let json: serde_json::Value =
        serde_json::from_str(&env.code(&["ls", "--json", "app:v3"], 0)).unwrap();
    assert!(json["entries"].as_array().unwrap().iter().any(|e| e["path"] == "etc/passwd"));
    env.stderr(&["ls", "--layer", "9", "app:v3"], 2);

    let inspect = env.code(&["inspect", "app:v3"], 0);
    assert!(inspect.contains("Efficiency:"), "{inspect}");
    assert!(inspect.contains("50kB  /app/big  (layers 2)"), "{inspect}");
    let json: serde_json::Value =
        serde_json::from_str(&env.code(&["inspect", "--json", "app:v3"], 0)).unwrap();
    assert_eq!(json["efficiency"]["wasted_bytes"], 50_000);
}

// ---- registry operands -----------------------------------------------------------------

/// Every file under `root` with its size, except the registry client's blob-location hints.
fn store_files(root: &Path) -> Vec<(String, u64)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, u64)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel.contains("registry-v1") {
                continue;
            }
            let md = std::fs::symlink_metadata(&path).unwrap();
            if md.is_dir() {
                walk(&path, root, out);
            } else {
                out.push((rel, md.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// A `--json` diff report without the operand names.
fn without_names(mut v: serde_json::Value) -> serde_json::Value {
    for side in ["a", "b"] {
        v[side].as_object_mut().unwrap().remove("name");
    }
    v
}

#[test]
fn registry_operands_are_pulled_to_scratch_from_local_blobs() {
    let env = images();
    if !registry::registry_available() {
        return;
    }
    let reg = registry::Registry::start(registry::RegistryOptions::default());
    let host = reg.host();
    for tag in ["v1", "v2"] {
        env.code(&["push", &format!("app:{tag}"), &format!("docker://{host}/app:{tag}")], 0);
    }
    let before = store_files(&env.p("store"));
    let log_mark = reg.log().len();

    let local = env.code(&["diff", "--json", "app:v1", "app:v2"], 1);
    let remote_a = format!("docker://{host}/app:v1");
    let remote = env.code(&["diff", "--json", &remote_a, "app:v2"], 1);
    let (local, remote): (serde_json::Value, serde_json::Value) =
        (serde_json::from_str(&local).unwrap(), serde_json::from_str(&remote).unwrap());
    assert_eq!(remote["a"]["name"], remote_a.as_str());
    assert_eq!(without_names(remote.clone()), without_names(local));
    assert_eq!(remote["files"]["changes"][0]["path"], "app/config");
    // The text report too, and a plain HOST/REPO:TAG the store does not have is a registry.
    let text = env.code(&["diff", "app:v1", "app:v2"], 1);
    let plain = env.code(&["diff", "app:v1", &format!("{host}/app:v2")], 1);
    assert_eq!(plain.lines().skip(2).collect::<Vec<_>>(), text.lines().skip(2).collect::<Vec<_>>());

    // history and ls read registry images the same way.
    let hist = |image: &str| -> serde_json::Value {
        let mut v: serde_json::Value =
            serde_json::from_str(&env.code(&["history", "--json", image], 0)).unwrap();
        v.as_object_mut().unwrap().remove("image");
        v
    };
    assert_eq!(hist(&format!("docker://{host}/app:v2")), hist("app:v2"));
    let ls = |image: &str| -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&env.code(&["ls", "--json", image], 0)).unwrap();
        v["entries"].clone()
    };
    assert_eq!(ls(&format!("docker://{host}/app:v1")), ls("app:v1"));

    // Every blob came from the local store: the registry served manifests only.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = reg.log();
    let blob_gets: Vec<&str> =
        log[log_mark..].lines().filter(|l| l.contains("\"GET /v2/app/blobs/")).collect();
    assert!(blob_gets.is_empty(), "blobs downloaded although the store has them: {blob_gets:?}");
    assert!(log[log_mark..].contains("GET /v2/app/manifests/v1"), "{log}");
    // And the store itself is as it was (only blob-location hints may be recorded).
    assert_eq!(store_files(&env.p("store")), before);
    env.code(&["fsck"], 0);

    // Unreachable: exit 2 naming the registry, quickly.
    let gone = format!("127.0.0.1:{}", free_port());
    let started = std::time::Instant::now();
    let err = env.stderr(&["diff", &format!("docker://{gone}/app:v1"), "app:v2"], 2);
    assert!(err.contains(&gone) && err.contains("cannot pull"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    let err = env.stderr(&["history", &format!("docker://{gone}/app:v1")], 2);
    assert!(err.contains(&gone), "{err}");
    let err = env.stderr(&["diff", &format!("docker://{host}/app:nope"), "app:v2"], 2);
    assert!(err.contains("nope"), "{err}");

    // A plain HOST/REPO:TAG the store has (pulled) is read from the store: no registry needed.
    env.code(&["pull", &format!("{host}/app:v1")], 0);
    reg.kill();
    let pulled = env.code(&["diff", &format!("{host}/app:v1"), "app:v2"], 1);
    assert_eq!(
        pulled.lines().skip(2).collect::<Vec<_>>(),
        text.lines().skip(2).collect::<Vec<_>>()
    );
}

// ---- buildah as an oracle -------------------------------------------------------------

/// The mountpoint stubs buildah's chroot isolation leaves in its images (see
/// buildah_parity.rs): empty, and absent from ours.
fn is_buildah_stub(path: &str) -> bool {
    matches!(
        path,
        "dev" | "proc" | "sys" | "run" | "etc/hosts" | "etc/hostname" | "etc/resolv.conf"
    )
}

/// The same recipe built by buildah and by strata: `diff --semantic` finds no file
/// differences but buildah's mountpoint stubs.
#[test]
fn buildah_image_of_the_same_recipe_differs_only_in_mountpoint_stubs() {
    if !have_all("diff vs buildah", &["buildah", "skopeo", "busybox"]) {
        return;
    }
    let env = Env::new();
    let store = env.p("store");
    run(Command::new(workspace().join("examples/lamp/make-base.sh"))
        .env("STRATA", env!("CARGO_BIN_EXE_strata"))
        .env("STRATA_STORE", &store));
    let base_oci = format!("oci:{}:base", env.p("base-oci").display());
    env.code(&["export", "--compression", "gzip", "lamp-base:latest", &base_oci], 0);
    let bah = BuildahStorage::new(env.p("bah-root"), env.p("bah-run"));
    let cs = |name: &str| bah.image(name);
    let buildah = || bah.command();
    run(Command::new("skopeo").args(["copy", &base_oci, &cs("localhost/base:latest")]));
    let case = workspace().join("testdata/parity/run-changes");
    let (ctx, file) = (case.to_str().unwrap(), case.join("Dockerfile"));
    env.code(
        &[
            "build",
            "--progress",
            "plain",
            "-f",
            file.to_str().unwrap(),
            "--build-arg",
            "BASE=lamp-base:latest",
            "-t",
            "ours:1",
            ctx,
        ],
        0,
    );
    run(buildah().args(["bud", "--layers", "--isolation", "chroot", "-f"]).arg(&file).args([
        "--build-arg",
        "BASE=localhost/base:latest",
        "-t",
        "localhost/theirs:1",
        ctx,
    ]));
    let theirs = format!("oci:{}:theirs", env.p("theirs-oci").display());
    run(Command::new("skopeo").args(["copy", &cs("localhost/theirs:1"), &theirs]));
    let _ = buildah().args(["rmi", "--all", "--force"]).output();

    let out = env.strata(&["diff", "--semantic", "--only", "files", "--json", "ours:1", &theirs]);
    assert!(out.status.code().is_some_and(|c| c < 2), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let unexpected: Vec<String> = report["files"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            let path = c["path"].as_str().unwrap();
            let empty = c["b"]["kind"] == "dir" || c["b"]["size"] == 0;
            !(c["change"] == "added" && is_buildah_stub(path) && empty)
        })
        .map(|c| c.to_string())
        .collect();
    assert!(
        unexpected.is_empty(),
        "differences besides buildah's stubs:\n{}",
        unexpected.join("\n")
    );
    // The base layer is shared (same diffID once skopeo recompressed it): never read.
    assert_eq!(report["stats"]["layers_total"].as_u64().unwrap(), 1 + 4 + 4);
}
