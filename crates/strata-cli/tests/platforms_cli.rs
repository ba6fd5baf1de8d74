//! Multi-platform images (an OCI image index tagged in the store) through every command that
//! reads or moves one image: `images`, `inspect`, `ls`, `diff`, `history`, `export`,
//! `import`, `copy`, `push`, `tag`, `rmi`, each with `--platform` (DESIGN.md decision 11).
//! The index is made without building: two imported one-layer images whose configs are
//! rewritten to two platforms (the host's and a foreign one), then `put_index` and a tag.

#[path = "../../strata-registry/tests/common/registry.rs"]
mod registry;

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{have, TempRoot};
use registry::{Registry, RegistryOptions};
use strata::image::{put_index, PlatformImage};
use strata::store::oci_spec::image::{Arch, Descriptor};
use strata::store::Store;
use strata::types::Platform;

/// A store holding `app:v1`, an index of the host's image and a foreign platform's, and the
/// two images tagged alone as `host:v1` and `foreign:v1`.
struct Env {
    dir: TempRoot,
    /// The host's platform (`linux/amd64` on x86_64).
    host: Platform,
    /// Another platform (`linux/arm64`, or `linux/amd64` on an arm64 host).
    foreign: Platform,
    index: String,
    host_manifest: String,
    foreign_manifest: String,
}

impl Env {
    fn new() -> Env {
        let dir = TempRoot::new();
        let host = Platform::host();
        let foreign: Platform =
            if host.architecture == "arm64" { "linux/amd64" } else { "linux/arm64" }
                .parse()
                .unwrap();
        let mut env = Env {
            dir,
            host,
            foreign,
            index: String::new(),
            host_manifest: String::new(),
            foreign_manifest: String::new(),
        };
        let store = Store::init(env.store()).unwrap();
        let h = env.image(&store, "host", &env.host.clone());
        let f = env.image(&store, "foreign", &env.foreign.clone());
        let entry = |p: &Platform, m: &Descriptor| PlatformImage {
            platform: p.clone(),
            manifest: m.clone(),
        };
        let index = put_index(&store, &[entry(&env.host, &h), entry(&env.foreign, &f)]).unwrap();
        store.tag("app:v1", &index).unwrap();
        env.index = index.digest().to_string();
        env.host_manifest = h.digest().to_string();
        env.foreign_manifest = f.digest().to_string();
        env
    }

    /// `strata import` of a tree with `/etc/<name>-only` and `/etc/arch`, its config then
    /// rewritten for `platform` and tagged `<name>:v1`.
    fn image(&self, store: &Store, name: &str, platform: &Platform) -> Descriptor {
        let tree = self.path(&format!("tree-{name}"));
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join(format!("etc/{name}-only")), name).unwrap();
        std::fs::write(tree.join("etc/arch"), format!("{}\n", platform.architecture)).unwrap();
        self.ok(&["import", tree.to_str().unwrap(), &format!("{name}-plain:v1")]);
        let image = store.load_image(&format!("{name}-plain:v1")).unwrap();
        let mut config = image.config.clone();
        config.set_architecture(Arch::from(platform.architecture.as_str()));
        let manifest = store.put_image(&config, image.manifest.layers()).unwrap();
        store.untag(&format!("{name}-plain:v1")).unwrap();
        store.tag(&format!("{name}:v1"), &manifest).unwrap();
        manifest
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }

    fn store(&self) -> PathBuf {
        self.path("store")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("--store")
            .arg(self.store())
            .args(args)
            .env_remove("SOURCE_DATE_EPOCH")
            .env("HOME", self.path("home"))
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "strata {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Runs a command that must fail with exit `code`; returns its stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "strata {args:?}: {err}");
        err
    }

    /// `host,foreign` as `images` and error messages list them.
    fn both(&self) -> [String; 2] {
        [self.host.to_string(), self.foreign.to_string()]
    }
}

fn blob_size(store: &Path, digest: &str) -> u64 {
    std::fs::metadata(store.join("blobs/sha256").join(digest.trim_start_matches("sha256:")))
        .unwrap()
        .len()
}

#[test]
fn images_lists_an_index_as_one_image_with_its_platforms() {
    let e = Env::new();
    let rows = e.json(&["images", "--json"]);
    let rows = rows.as_array().unwrap();
    let app = rows.iter().find(|r| r["name"] == "app").unwrap();
    assert_eq!(app["digest"], e.index.as_str());
    assert_eq!(app["platforms"], serde_json::json!(e.both()));
    // Size: both platforms' configs and layers (the two trees differ: nothing shared).
    let one = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap()["size"].as_u64();
    assert_eq!(app["size"].as_u64(), Some(one("host").unwrap() + one("foreign").unwrap()));
    let foreign = rows.iter().find(|r| r["name"] == "foreign").unwrap();
    assert_eq!(foreign["platforms"], serde_json::json!([e.foreign.to_string()]));
    let text = e.ok(&["images"]);
    assert!(text.lines().next().unwrap().ends_with("PLATFORMS"), "{text}");
    let line = text.lines().find(|l| l.starts_with("app ")).unwrap();
    assert!(line.contains(&e.index[7..19]), "{line}");
    assert!(line.ends_with(&e.both().join(",")), "{line}");

    // A platform's blob gone: the index row is marked damaged, the listing still works.
    let inspect = e.json(&["inspect", "--json", "foreign:v1"]);
    let config = inspect["manifest"]["config"]["digest"].as_str().unwrap().to_string();
    assert!(blob_size(&e.store(), &config) > 0);
    std::fs::remove_file(e.store().join("blobs/sha256").join(&config[7..])).unwrap();
    let text = e.ok(&["images"]);
    let line = text.lines().find(|l| l.starts_with("app ")).unwrap();
    assert!(line.contains("DAMAGED: 1 blob missing"), "{text}");
    let rows = e.json(&["images", "--json"]);
    let app = rows.as_array().unwrap().iter().find(|r| r["name"] == "app").unwrap();
    assert_eq!(app["missing"], serde_json::json!([config]));
}

#[test]
fn inspect_shows_the_platforms_then_the_hosts_image_or_the_one_chosen() {
    let e = Env::new();
    let text = e.ok(&["inspect", "app:v1"]);
    assert!(text.contains(&format!("Index:        {}", e.index)), "{text}");
    let platforms = text.split("Platforms:\n").nth(1).unwrap();
    let host_line = platforms.lines().next().unwrap();
    assert!(
        host_line.contains(&e.host.to_string()) && host_line.contains(&e.host_manifest),
        "{text}"
    );
    let foreign_line = platforms.lines().nth(1).unwrap();
    assert!(foreign_line.contains(&e.foreign_manifest), "{text}");
    assert!(text.contains(&format!("Digest:       {}", e.host_manifest)), "{text}");
    assert!(text.contains(&format!("Platform:     {}", e.host)), "{text}");

    let text = e.ok(&["inspect", "--platform", &e.foreign.to_string(), "app:v1"]);
    assert!(text.contains(&format!("Digest:       {}", e.foreign_manifest)), "{text}");
    assert!(text.contains(&format!("Platform:     {}", e.foreign)), "{text}");
    assert!(!text.contains("Index:"), "{text}");

    let doc = e.json(&["inspect", "--json", "app:v1"]);
    assert_eq!(doc["digest"], e.host_manifest.as_str());
    assert_eq!(doc["index"]["digest"], e.index.as_str());
    assert_eq!(doc["index"]["document"]["manifests"].as_array().map(Vec::len), Some(2));
    assert_eq!(doc["platforms"][1]["manifest"], e.foreign_manifest.as_str());
    assert_eq!(doc["platforms"][1]["platform"], e.foreign.to_string());

    // A platform it lacks: what it has; a malformed platform: how to write one.
    let err = e.fails(&["inspect", "--platform", "linux/s390x", "app:v1"], 2);
    let [h, f] = e.both();
    assert!(
        err.contains(&format!("app:v1 has no image for linux/s390x (it has: {h}, {f})")),
        "{err}"
    );
    let err = e.fails(&["inspect", "--platform", "linux", "app:v1"], 2);
    assert!(err.contains("OS/ARCH"), "{err}");
    // A single image for another platform than asked.
    let err = e.fails(&["inspect", "--platform", "linux/s390x", "host:v1"], 2);
    assert!(err.contains(&format!("(it has: {h})")), "{err}");

    // An index with no image for this host: only the list.
    let store = Store::open(e.store()).unwrap();
    let f = store.resolve("foreign:v1").unwrap();
    let only =
        put_index(&store, &[PlatformImage { platform: e.foreign.clone(), manifest: f }]).unwrap();
    store.tag("elsewhere:v1", &only).unwrap();
    let text = e.ok(&["inspect", "elsewhere:v1"]);
    assert!(text.contains("no image for this host") && !text.contains("Digest:"), "{text}");
    let doc = e.json(&["inspect", "--json", "elsewhere:v1"]);
    assert!(doc["digest"].is_null() && doc["platforms"].as_array().unwrap().len() == 1, "{doc}");
    let err = e.fails(&["ls", "elsewhere:v1"], 2);
    assert!(err.contains(&format!("has no image for {} (it has: {})", e.host, e.foreign)), "{err}");
}

#[test]
fn ls_diff_and_history_read_the_platform_asked_for() {
    let e = Env::new();
    let foreign = e.foreign.to_string();
    let ls = e.ok(&["ls", "app:v1", "etc"]);
    assert!(ls.contains("/etc/host-only") && !ls.contains("foreign-only"), "{ls}");
    let ls = e.ok(&["ls", "--platform", &foreign, "app:v1", "etc"]);
    assert!(ls.contains("/etc/foreign-only") && !ls.contains("host-only"), "{ls}");
    e.fails(&["ls", "--platform", "linux/s390x", "app:v1"], 2);

    // --platform applies to both sides: the index's platform against the image alone.
    e.ok(&["diff", "app:v1", "host:v1"]);
    e.ok(&["diff", "--platform", &foreign, "app:v1", "foreign:v1"]);
    let out = e.run(&["diff", "--only", "files", "app:v1", "foreign:v1"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/etc/host-only") && text.contains("/etc/foreign-only"), "{text}");
    let err = e.fails(&["diff", "--platform", "linux/s390x", "app:v1", "foreign:v1"], 2);
    assert!(err.contains("linux/s390x"), "{err}");

    let h = e.json(&["history", "--json", "--platform", &foreign, "app:v1"]);
    assert_eq!(h["digest"], e.foreign_manifest.as_str());
    let h = e.json(&["history", "--json", "app:v1"]);
    assert_eq!(h["digest"], e.host_manifest.as_str());
}

#[test]
fn export_keeps_the_index_in_a_layout_and_needs_a_platform_for_an_archive() {
    let e = Env::new();
    let layout = e.path("layout");
    let dest = format!("oci:{}:multi", layout.display());
    e.ok(&["export", "app:v1", &dest]);
    let top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(top["manifests"][0]["digest"], e.index.as_str(), "{top:#}");
    for digest in [&e.index, &e.host_manifest, &e.foreign_manifest] {
        assert!(blob_size(&layout, digest) > 0);
    }
    if have("skopeo") {
        let raw = common::run(Command::new("skopeo").args(["inspect", "--raw", &dest]));
        let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let listed: Vec<(String, String)> = raw["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let p = &m["platform"];
                (
                    m["digest"].as_str().unwrap().into(),
                    format!(
                        "{}/{}",
                        p["os"].as_str().unwrap(),
                        p["architecture"].as_str().unwrap()
                    ),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                (e.host_manifest.clone(), e.host.to_string()),
                (e.foreign_manifest.clone(), e.foreign.to_string())
            ]
        );
        let other = format!("oci:{}:x", e.path("other").display());
        common::run(Command::new("skopeo").args(["copy", "--all", &dest, &other]));
        let raw = common::run(Command::new("skopeo").args(["inspect", "--raw", &other]));
        assert!(raw.contains(&e.foreign_manifest), "{raw}");
    }
    // The layout comes back whole, or one platform of it.
    e.ok(&["import", &dest, "back:v1"]);
    let rows = e.json(&["images", "--json"]);
    let back = rows.as_array().unwrap().iter().find(|r| r["name"] == "back").unwrap();
    assert_eq!(back["digest"], e.index.as_str());
    e.ok(&["import", "--platform", &e.foreign.to_string(), &dest, "back-foreign:v1"]);
    let doc = e.json(&["inspect", "--json", "back-foreign:v1"]);
    assert_eq!(doc["digest"], e.foreign_manifest.as_str());

    // --platform: that image alone.
    let single = e.path("single");
    e.ok(&[
        "export",
        "--platform",
        &e.foreign.to_string(),
        "app:v1",
        &format!("oci:{}:one", single.display()),
    ]);
    let top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(single.join("index.json")).unwrap()).unwrap();
    assert_eq!(top["manifests"][0]["digest"], e.foreign_manifest.as_str(), "{top:#}");

    // docker-archive: and dir: hold one image.
    let archive = e.path("app.tar");
    let to_archive = format!("docker-archive:{}", archive.display());
    let err = e.fails(&["export", "app:v1", &to_archive], 2);
    let [h, f] = e.both();
    assert!(
        err.contains(&format!(
            "app:v1 is a multi-platform image ({h}, {f}): choose one with --platform"
        )),
        "{err}"
    );
    assert!(!archive.exists());
    let flat = format!("dir:{}", e.path("flat").display());
    e.fails(&["export", "app:v1", &flat], 2);
    e.ok(&["export", "--platform", &e.foreign.to_string(), "app:v1", &to_archive]);
    e.ok(&["import", &to_archive, "from-archive:v1"]);
    let doc = e.json(&["inspect", "--json", "from-archive:v1"]);
    assert_eq!(doc["config"]["architecture"], e.foreign.architecture.as_str());
    let ls = e.ok(&["ls", "from-archive:v1", "etc"]);
    assert!(ls.contains("foreign-only"), "{ls}");
    let err = e.fails(&["export", "--platform", "linux/s390x", "app:v1", &to_archive], 2);
    assert!(err.contains(&format!("(it has: {h}, {f})")), "{err}");
    // copy says the same as export.
    let err =
        e.fails(&["copy", "app:v1", &format!("docker-archive:{}", e.path("c.tar").display())], 2);
    assert!(err.contains("choose one with --platform"), "{err}");
    assert!(e.ok(&["fsck"]).contains("clean"));
}

#[test]
fn tag_and_rmi_of_an_index_tag() {
    let e = Env::new();
    e.ok(&["tag", "app:v1", "app:v2"]);
    let rows = e.json(&["images", "--json"]);
    let v2 = rows.as_array().unwrap().iter().find(|r| r["tag"] == "v2").unwrap();
    assert_eq!(v2["digest"], e.index.as_str());
    assert_eq!(v2["platforms"], serde_json::json!(e.both()));
    let out = e.ok(&["rmi", "app:v1"]);
    assert_eq!(out.trim(), "Untagged: app:v1");
    // By ID, the last tag goes with the image.
    let out = e.ok(&["rmi", &e.index[7..19]]);
    assert!(
        out.contains("Untagged: app:v2") && out.contains(&format!("Deleted: {}", e.index)),
        "{out}"
    );
    e.ok(&["rmi", "host:v1", "foreign:v1"]);
    let gc = e.ok(&["gc"]);
    // The index, two manifests, two configs, two layers; the plain imports' configs and
    // manifests went with their tags.
    assert!(gc.starts_with("removed "), "{gc}");
    assert_eq!(e.json(&["images", "--json"]), serde_json::json!([]));
    assert!(e.ok(&["fsck"]).contains("clean"));
    let blobs = std::fs::read_dir(e.store().join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 0, "{gc}");
}

#[test]
fn push_sends_the_index_children_first_and_platform_one_image() {
    if !registry::registry_available() {
        return;
    }
    let reg = Registry::start(RegistryOptions { htpasswd: None });
    let e = Env::new();
    let host = reg.host();
    let dest = format!("docker://{host}/m/app:v1");
    let mark = reg.log().len();
    let r = e.json(&["push", "--json", "app:v1", &dest]);
    assert_eq!(r["manifest"], e.index.as_str(), "{r:#}");
    // The registry's log: the two manifests by digest, then the index under its tag.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = reg.log();
    let puts: Vec<&str> = log[mark..]
        .lines()
        .filter_map(|l| l.split("\"PUT ").nth(1))
        .filter(|l| l.contains("/manifests/"))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let at = |what: &str| puts.iter().position(|p| p.ends_with(what));
    let tag = at("/manifests/v1").expect("the index PUT under its tag");
    assert!(
        at(&e.host_manifest).unwrap() < tag && at(&e.foreign_manifest).unwrap() < tag,
        "{puts:?}"
    );
    verify_registry_index(&e, &dest);

    let r = e.json(&[
        "push",
        "--json",
        "--platform",
        &e.foreign.to_string(),
        "app:v1",
        &format!("docker://{host}/m/one:v1"),
    ]);
    assert_eq!(r["manifest"], e.foreign_manifest.as_str(), "{r:#}");
    // Read back whole into a fresh store: the same index, both platforms listed.
    let fresh = Env::new();
    fresh.ok(&["copy", "--all", &dest, "pulled:v1"]);
    let rows = fresh.json(&["images", "--json"]);
    let pulled = rows.as_array().unwrap().iter().find(|r| r["name"] == "pulled").unwrap();
    assert_eq!(pulled["digest"], e.index.as_str());
    assert_eq!(pulled["platforms"], serde_json::json!(e.both()));
    // A registry index the store does not hold is pulled into a scratch layout, the platform
    // asked for (or the host's) picked from it.
    let ls = e.ok(&["ls", "--platform", &e.foreign.to_string(), &dest, "etc"]);
    assert!(ls.contains("foreign-only"), "{ls}");
    let ls = e.ok(&["ls", &dest, "etc"]);
    assert!(ls.contains("host-only"), "{ls}");
    // One the store holds (pulled whole) is read from the store, the platform picked there.
    let ls = fresh.ok(&["ls", "--platform", &e.foreign.to_string(), &dest, "etc"]);
    assert!(ls.contains("foreign-only"), "{ls}");
}

fn verify_registry_index(e: &Env, dest: &str) {
    if !have("skopeo") {
        return;
    }
    let raw =
        common::run(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", dest]));
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json", "{raw:#}");
    let digests: Vec<&str> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests, [e.host_manifest.as_str(), e.foreign_manifest.as_str()]);
}
