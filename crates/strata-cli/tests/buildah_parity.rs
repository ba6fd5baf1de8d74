//! Parity with buildah: the same recipe built by strata and by `buildah bud --layers
//! --isolation chroot`, both exported as OCI and unpacked with umoci, must give the same files
//! (type, mode, owner, size, content, link target) and the same config fields.
//!
//! buildah runs with its own storage in a temp dir (vfs driver), so the test touches nothing
//! of the machine's. buildah's chroot isolation leaves empty mountpoint stubs in its images
//! (`/dev`, `/proc`, `/sys`, `/run`, `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`); those,
//! when empty and absent from ours, are the only differences allowed, besides those a case
//! lists in its `known-differences` file (a path and the owner strata gives it, for rules
//! where strata follows BuildKit and buildah does not). Hardlinks are compared too: a file
//! linked to others records the first path of its group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{have_all, run, workspace, BuildahStorage};

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
    fn bah(&self) -> BuildahStorage {
        BuildahStorage::new(self.p("bah-root"), self.p("bah-run"))
    }
    /// `containers-storage:` with this rig's private buildah storage.
    fn cs(&self, name: &str) -> String {
        self.bah().image(name)
    }
    fn buildah(&self) -> Command {
        self.bah().command()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // vfs leaves no mounts, but make sure buildah's files are gone with the temp dir.
        let _ = self.buildah().args(["rmi", "--all", "--force"]).output();
    }
}

/// path -> "type mode uid gid size link sha256 [= first hardlink]"
fn tree(root: &Path) -> BTreeMap<String, String> {
    let listing = run(Command::new("find")
        .arg(".")
        .arg("-mindepth")
        .arg("1")
        .arg("-printf")
        .arg("%p\t%y %m %U %G %s %l\t%i %n\n")
        .current_dir(root));
    // The first path (in sort order) of every inode with several names.
    let mut first_name: BTreeMap<String, String> = BTreeMap::new();
    for line in listing.lines() {
        let mut cols = line.split('\t');
        let (path, meta, inode) =
            (cols.next().unwrap(), cols.next().unwrap(), cols.next().unwrap());
        let (ino, nlink) = inode.split_once(' ').unwrap();
        if !meta.starts_with("d ") && nlink != "1" {
            let path = path.trim_start_matches("./").to_string();
            let first = first_name.entry(ino.to_string()).or_insert_with(|| path.clone());
            if path < *first {
                *first = path;
            }
        }
    }
    let mut out = BTreeMap::new();
    for line in listing.lines() {
        let mut cols = line.split('\t');
        let (path, meta, inode) =
            (cols.next().unwrap(), cols.next().unwrap(), cols.next().unwrap());
        let (ino, _) = inode.split_once(' ').unwrap();
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
        if let Some(first) = first_name.get(ino).filter(|_| !meta.starts_with("d ")) {
            meta.push_str(&format!(" = {first}"));
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

/// A case's `known-differences`: path -> the `uid:gid` strata gives it.
fn known_differences(case: &Path) -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(case.join("known-differences")) else {
        return BTreeMap::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (path, owner) = l.split_once(' ').unwrap();
            (path.to_string(), owner.trim().to_string())
        })
        .collect()
}

/// Builds `context` (with `-f recipe`) both ways and compares; the paths of `known` must
/// differ, and have the owner it gives on our side.
fn parity(context: &Path, recipe: &Path, known: &BTreeMap<String, String>) {
    parity_with(context, recipe, known, &[], &["--layers"]);
}

/// [`parity`] with `ours` added to strata's build flags and `theirs` to buildah's; the layer
/// counts of both images (strata's, buildah's).
fn parity_with(
    context: &Path,
    recipe: &Path,
    known: &BTreeMap<String, String>,
    ours: &[&str],
    theirs: &[&str],
) -> (usize, usize) {
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
    rig.strata(
        &[
            &["build", "--progress", "plain"][..],
            ours,
            &["-f", file, "--build-arg", "BASE=lamp-base:latest", "-t", "ours:1", ctx],
        ]
        .concat(),
    );
    run(rig.buildah().arg("bud").args(theirs).args([
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
        if a == b {
            assert!(
                !known.contains_key(path),
                "{path} is listed as a known difference but matches"
            );
            continue;
        }
        if let Some(owner) = known.get(path) {
            let ours_owner = a.map(|m| m.split(' ').skip(2).take(2).collect::<Vec<_>>().join(":"));
            assert_eq!(ours_owner.as_deref(), Some(owner.as_str()), "{path}: strata {a:?}");
            continue;
        }
        differences.push(format!("{path}: strata {a:?} buildah {b:?}"));
    }
    assert!(differences.is_empty(), "{}:\n{}", recipe.display(), differences.join("\n"));
    assert_eq!(config_fields(&ours_oci), config_fields(&theirs_oci), "{}", recipe.display());
    let layers = |oci: &str| -> usize {
        let raw = run(Command::new("skopeo").args(["inspect", "--raw", oci]));
        let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
        v["layers"].as_array().unwrap().len()
    };
    (layers(&ours_oci), layers(&theirs_oci))
}

fn case(name: &str) {
    let dir = workspace().join("testdata/parity").join(name);
    parity(&dir, &dir.join("Dockerfile"), &known_differences(&dir));
}

#[test]
fn lamp_matches_buildah() {
    if !have_all("buildah parity", &["buildah", "skopeo", "umoci"]) {
        return;
    }
    let lamp = workspace().join("examples/lamp");
    parity(&lamp, &lamp.join("Dockerfile"), &BTreeMap::new());
}

#[test]
fn copy_rules_and_config_match_buildah() {
    if !have_all("buildah parity", &["buildah", "skopeo", "umoci"]) {
        return;
    }
    case("copy-rules");
}

#[test]
fn run_changes_match_buildah() {
    if !have_all("buildah parity", &["buildah", "skopeo", "umoci"]) {
        return;
    }
    case("run-changes");
}

/// `--squash` is podman's (and Docker's): the base layer kept, the build's layers one, which
/// buildah makes without `--layers`; `--squash-all` is buildah's `--squash`. Adding,
/// modifying and deleting base files (a directory deleted and made again too) must give
/// buildah's tree.
#[test]
fn squash_matches_buildah() {
    if !have_all("buildah parity", &["buildah", "skopeo", "umoci"]) {
        return;
    }
    let dir = workspace().join("testdata/parity/squash");
    let recipe = dir.join("Dockerfile");
    let known = known_differences(&dir);
    assert_eq!(parity_with(&dir, &recipe, &known, &["--squash"], &[]), (2, 2));
    assert_eq!(parity_with(&dir, &recipe, &known, &["--squash-all"], &["--squash"]), (1, 1));
}

#[test]
fn multi_stage_matches_buildah() {
    if !have_all("buildah parity", &["buildah", "skopeo", "umoci"]) {
        return;
    }
    case("multi-stage");
}

#[test]
fn add_archives_and_hardlinks_match_buildah() {
    if !have_all("buildah parity", &["buildah", "skopeo", "umoci"]) {
        return;
    }
    // Git keeps neither hardlinks nor fifos: the context is the case plus hl/, made here.
    let case = workspace().join("testdata/parity/add-archives");
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    run(Command::new("cp").arg("-a").arg(&case).arg(&ctx));
    let hl = ctx.join("hl");
    std::fs::create_dir_all(hl.join("sub")).unwrap();
    std::fs::write(hl.join("one"), "same bytes\n").unwrap();
    std::fs::write(hl.join("other"), "other bytes\n").unwrap();
    std::fs::hard_link(hl.join("one"), hl.join("two")).unwrap();
    std::fs::hard_link(hl.join("one"), hl.join("sub/three")).unwrap();
    run(Command::new("mkfifo").arg("-m").arg("0640").arg(hl.join("pipe")));
    parity(&ctx, &ctx.join("Dockerfile"), &known_differences(&case));
}
