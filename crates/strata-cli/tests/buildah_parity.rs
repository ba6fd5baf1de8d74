//! Parity with buildah: the same recipe built by strata and by `buildah bud --layers
//! --isolation chroot`, both exported as OCI and unpacked with umoci, must give the same files
//! (type, mode, owner, size, content, link target) and the same config fields.
//!
//! buildah runs with its own storage in a temp dir (vfs driver), so the test touches nothing
//! of the machine's. buildah's chroot isolation leaves empty mountpoint stubs in its images
//! (`/dev`, `/proc`, `/sys`, `/run`, `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`); those,
//! when empty and absent from ours, are the only differences allowed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[allow(clippy::print_stderr)] // the skip message is the point
fn have_all(tools: &[&str]) -> bool {
    let root = String::from_utf8_lossy(&Command::new("id").arg("-u").output().unwrap().stdout)
        .trim()
        == "0";
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() && root {
        return true;
    }
    let why = if root { format!("missing {missing:?}") } else { "not root".to_string() };
    if std::env::var_os("STRATA_TEST_STRICT").is_some_and(|v| v == "1") {
        panic!("buildah parity: {why} and STRATA_TEST_STRICT=1");
    }
    eprintln!("skipping buildah parity: {why}");
    false
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Rig {
    tmp: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        Rig { tmp: tempfile::tempdir().unwrap() }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    fn store(&self) -> PathBuf {
        self.p("store")
    }
    fn strata(&self, args: &[&str]) -> String {
        run(Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("--store")
            .arg(self.store())
            .args(args)
            .env_remove("SOURCE_DATE_EPOCH"))
    }
    /// `containers-storage:` with this rig's private buildah storage.
    fn cs(&self, name: &str) -> String {
        format!(
            "containers-storage:[vfs@{}+{}]{name}",
            self.p("bah-root").display(),
            self.p("bah-run").display()
        )
    }
    fn buildah(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(self.p("bah-root"))
            .arg("--runroot")
            .arg(self.p("bah-run"))
            .arg("--storage-driver")
            .arg("vfs");
        c
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // vfs leaves no mounts, but make sure buildah's files are gone with the temp dir.
        let _ = self.buildah().args(["rmi", "--all", "--force"]).output();
    }
}

/// path -> "type mode uid gid size link sha256"
fn tree(root: &Path) -> BTreeMap<String, String> {
    let listing = run(Command::new("find")
        .arg(".")
        .arg("-mindepth")
        .arg("1")
        .arg("-printf")
        .arg("%p\t%y %m %U %G %s %l\n")
        .current_dir(root));
    let mut out = BTreeMap::new();
    for line in listing.lines() {
        let (path, meta) = line.split_once('\t').unwrap();
        let mut meta = meta.to_string();
        if meta.starts_with("d ") {
            // Directory sizes are a filesystem detail.
            let parts: Vec<&str> = meta.split(' ').collect();
            meta = format!("{} {} {} {} - {}", parts[0], parts[1], parts[2], parts[3], parts[5]);
        }
        if meta.starts_with("f ") {
            let sum = run(Command::new("sha256sum").arg(path).current_dir(root));
            meta.push(' ');
            meta.push_str(sum.split(' ').next().unwrap());
        }
        out.insert(path.trim_start_matches("./").to_string(), meta);
    }
    out
}

fn is_buildah_stub(path: &str, meta: &str) -> bool {
    let stub = matches!(
        path,
        "dev" | "proc" | "sys" | "run" | "etc/hosts" | "etc/hostname" | "etc/resolv.conf"
    );
    let empty = meta.starts_with("d ") || meta.split(' ').nth(4) == Some("0");
    stub && empty
}

const CONFIG_FIELDS: [&str; 9] = [
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "StopSignal",
];

fn config_fields(oci: &str) -> BTreeMap<String, serde_json::Value> {
    let raw = run(Command::new("skopeo").args(["inspect", "--config", oci]));
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let mut out = BTreeMap::new();
    for f in CONFIG_FIELDS {
        let mut value = v["config"][f].clone();
        if f == "Labels" {
            if let Some(map) = value.as_object_mut() {
                map.retain(|k, _| !k.starts_with("io.buildah."));
                if map.is_empty() {
                    value = serde_json::Value::Null;
                }
            }
        }
        out.insert(f.to_string(), value);
    }
    out.insert("os".into(), v["os"].clone());
    out.insert("architecture".into(), v["architecture"].clone());
    out
}

/// Builds `context` (with `-f recipe`) both ways and compares.
fn parity(context: &Path, recipe: &Path) {
    let rig = Rig::new();
    // The base: our busybox root filesystem, given to buildah through an OCI layout.
    run(Command::new(workspace().join("examples/lamp/make-base.sh"))
        .env("STRATA", env!("CARGO_BIN_EXE_strata"))
        .env("STRATA_STORE", rig.store()));
    let base_oci = format!("oci:{}:base", rig.p("base-oci").display());
    rig.strata(&["export", "--compression", "gzip", "lamp-base:latest", &base_oci]);
    run(Command::new("skopeo").args(["copy", &base_oci, &rig.cs("localhost/parity-base:latest")]));

    let ctx = context.to_str().unwrap();
    let file = recipe.to_str().unwrap();
    rig.strata(&[
        "build",
        "--progress",
        "plain",
        "-f",
        file,
        "--build-arg",
        "BASE=lamp-base:latest",
        "-t",
        "ours:1",
        ctx,
    ]);
    run(rig.buildah().args([
        "bud",
        "--layers",
        "--isolation",
        "chroot",
        "-f",
        file,
        "--build-arg",
        "BASE=localhost/parity-base:latest",
        "-t",
        "localhost/theirs:1",
        ctx,
    ]));
    let ours_oci = format!("oci:{}:ours", rig.p("ours-oci").display());
    let theirs_oci = format!("oci:{}:theirs", rig.p("theirs-oci").display());
    rig.strata(&["export", "--compression", "gzip", "ours:1", &ours_oci]);
    run(Command::new("skopeo").args(["copy", &rig.cs("localhost/theirs:1"), &theirs_oci]));
    for (oci, bundle) in [(&ours_oci, "ours-bundle"), (&theirs_oci, "theirs-bundle")] {
        let image = oci.strip_prefix("oci:").unwrap();
        run(Command::new("umoci").args(["unpack", "--image", image]).arg(rig.p(bundle)));
    }
    let ours = tree(&rig.p("ours-bundle/rootfs"));
    let mut theirs = tree(&rig.p("theirs-bundle/rootfs"));
    theirs.retain(|path, meta| ours.contains_key(path) || !is_buildah_stub(path, meta));
    let mut differences = Vec::new();
    for path in ours.keys().chain(theirs.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (a, b) = (ours.get(path), theirs.get(path));
        if a != b {
            differences.push(format!("{path}: strata {a:?} buildah {b:?}"));
        }
    }
    assert!(differences.is_empty(), "{}:\n{}", recipe.display(), differences.join("\n"));
    assert_eq!(config_fields(&ours_oci), config_fields(&theirs_oci), "{}", recipe.display());
}

fn case(name: &str) {
    let dir = workspace().join("testdata/parity").join(name);
    parity(&dir, &dir.join("Dockerfile"));
}

#[test]
fn lamp_matches_buildah() {
    if !have_all(&["buildah", "skopeo", "umoci"]) {
        return;
    }
    let lamp = workspace().join("examples/lamp");
    parity(&lamp, &lamp.join("Dockerfile"));
}

#[test]
fn copy_rules_and_config_match_buildah() {
    if !have_all(&["buildah", "skopeo", "umoci"]) {
        return;
    }
    case("copy-rules");
}

#[test]
fn run_changes_match_buildah() {
    if !have_all(&["buildah", "skopeo", "umoci"]) {
        return;
    }
    case("run-changes");
}

#[test]
fn multi_stage_matches_buildah() {
    if !have_all(&["buildah", "skopeo", "umoci"]) {
        return;
    }
    case("multi-stage");
}
