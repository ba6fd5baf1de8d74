//! `strata push`, `pull`, `copy`, `login`/`logout` and `build --pull` end to end against a
//! real registry: the Debian `docker-registry` (distribution 2.8) started on 127.0.0.1 and a
//! free port by each test, its request log read to prove what crossed the wire.

#[path = "../../strata-registry/tests/common/registry.rs"]
mod registry;

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, have, needs_root, workspace, TempRoot};
use registry::{Registry, RegistryOptions};

/// A registry on 127.0.0.1 (killed on drop), or `None` after a skip message when
/// docker-registry is not installed (a panic under STRATA_TEST_STRICT=1).
fn start_registry(htpasswd: Option<(&str, &str)>) -> Option<Registry> {
    if !registry::registry_available() {
        return None;
    }
    let options =
        RegistryOptions { htpasswd: htpasswd.map(|(u, p)| (u.to_string(), p.to_string())) };
    Some(Registry::start(options))
}

/// The current end of the registry's log: requests after it are [`requests_since`].
fn mark(reg: &Registry) -> usize {
    reg.log().len()
}

/// `(method, uri)` of every request logged after `mark` (the access-log lines:
/// `127.0.0.1 - - [date] "PUT /v2/app/manifests/v1 HTTP/1.1" 201 ...`).
fn requests_since(reg: &Registry, mark: usize) -> Vec<(String, String)> {
    // The access log line is written as the response completes: give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    let text = reg.log();
    text[mark.min(text.len())..]
        .lines()
        .filter_map(|l| {
            let start = l.find("] \"")? + 3;
            let mut parts = l[start..].split(' ');
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// Counts of the writing requests among `requests`: blob upload starts (POST), chunks (PATCH),
/// upload completions (PUT .../blobs/uploads/...), manifest PUTs.
fn writes(requests: &[(String, String)]) -> (usize, usize, usize, usize) {
    let count = |m: &str, needle: &str| {
        requests.iter().filter(|(method, uri)| method == m && uri.contains(needle)).count()
    };
    (
        count("POST", "/blobs/uploads/"),
        count("PATCH", "/blobs/uploads/"),
        count("PUT", "/blobs/uploads/"),
        count("PUT", "/manifests/"),
    )
}

/// A temp dir with a store, a HOME without credentials, and helpers to run `strata`.
struct Env {
    dir: TempRoot,
}

impl Env {
    fn new() -> Env {
        let dir = TempRoot::new();
        std::fs::create_dir_all(dir.path("home")).unwrap();
        Env { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }

    fn command(&self, store: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
        c.arg("--store")
            .arg(self.path(store))
            .args(args)
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG")
            .env("HOME", self.path("home"))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, store: &str, args: &[&str]) -> Output {
        self.command(store, args).output().unwrap()
    }

    fn ok(&self, store: &str, args: &[&str]) -> String {
        let out = self.run(store, args);
        assert!(
            out.status.success(),
            "strata {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, store: &str, args: &[&str]) -> serde_json::Value {
        let out = self.ok(store, args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// A small two-file tree imported as `name` into `store`.
    fn import(&self, store: &str, name: &str, content: &str) {
        let tree = self.path(&format!("tree-{}", name.replace([':', '/'], "-")));
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/motd"), content).unwrap();
        std::fs::write(tree.join("hello.txt"), "hello\n").unwrap();
        self.ok(store, &["import", tree.to_str().unwrap(), name]);
    }

    /// `{digest, layers, diff_ids}` of an image, from `strata inspect --json`.
    fn inspect(&self, store: &str, image: &str) -> (String, Vec<String>, Vec<String>) {
        let v = self.json(store, &["inspect", "--json", image]);
        let strings = |a: &serde_json::Value| -> Vec<String> {
            a.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
        };
        let layers =
            v["manifest"]["layers"].as_array().unwrap().iter().map(|l| l["digest"].clone());
        (
            v["digest"].as_str().unwrap().to_string(),
            layers.map(|d| d.as_str().unwrap().to_string()).collect(),
            strings(&v["config"]["rootfs"]["diff_ids"]),
        )
    }
}

/// Layer outcomes in a `--json` report: how many layers were `outcome`.
fn layers_with(report: &serde_json::Value, outcome: &str) -> usize {
    report["transfer"]["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["kind"] == "Layer")
        .filter(|b| b["outcome"] == outcome || b["outcome"].get(outcome).is_some())
        .count()
}

fn blob_outcome(report: &serde_json::Value, kind: &str) -> serde_json::Value {
    report["transfer"]["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["kind"] == kind)
        .map(|b| b["outcome"].clone())
        .unwrap_or_default()
}

#[test]
fn push_then_pull_into_a_fresh_store_gives_the_same_digests() {
    let e = Env::new();
    let Some(reg) = start_registry(None) else { return };
    let host = reg.host();
    e.import("a", "app:v1", "one\n");
    let dest = format!("docker://{host}/team/app:v1");
    let report = e.json("a", &["push", "--json", "app:v1", &dest]);
    assert_eq!(report["dry_run"], false);
    assert_eq!(layers_with(&report, "Uploaded"), 1, "{report:#}");
    assert_eq!(blob_outcome(&report, "Config"), "Uploaded", "{report:#}");
    let (digest, layers, diff_ids) = e.inspect("a", "app:v1");
    assert_eq!(report["manifest"], digest.as_str());

    // A second push of the same image moves nothing.
    let again = e.json("a", &["push", "--json", "app:v1", &dest]);
    assert_eq!(again["transfer"]["uploaded"], 0, "{again:#}");
    assert_eq!(again["transfer"]["bytes"], 0, "{again:#}");

    // Pull into an empty store: same manifest, same layers, tagged by the full reference.
    let pulled = e.json("b", &["pull", "--json", &format!("{host}/team/app:v1")]);
    assert_eq!(pulled["manifest"], digest.as_str());
    assert_eq!(layers_with(&pulled, "Downloaded"), 1, "{pulled:#}");
    assert_eq!(e.inspect("b", &format!("{host}/team/app:v1")), (digest, layers, diff_ids));
    assert!(e.ok("b", &["fsck"]).contains("clean"));
    // Pulling again downloads nothing.
    let again = e.json("b", &["pull", "--json", &format!("docker://{host}/team/app:v1")]);
    assert_eq!(again["transfer"]["downloaded"], 0, "{again:#}");

    // IMAGE names a registry: DEST defaults to it.
    e.ok("a", &["tag", "app:v1", &format!("{host}/team/other:v1")]);
    e.ok("a", &["push", &format!("{host}/team/other:v1")]);
    // Without DEST, a local name is an error naming what to do.
    let out = e.run("a", &["push", "app:v1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEST"));

    // Another tool reads what we pushed.
    if have("skopeo") {
        let out =
            Command::new("skopeo").args(["inspect", "--tls-verify=false", &dest]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Digest"], report["manifest"]);
    }
}

/// A copy of examples/lamp with its base imported into `store`.
fn lamp(e: &Env, store: &str) -> PathBuf {
    let dir = e.path("lamp");
    let status =
        Command::new("cp").arg("-r").arg(workspace().join("examples/lamp")).arg(&dir).status();
    assert!(status.unwrap().success());
    let out = Command::new(dir.join("make-base.sh"))
        .env("STRATA", env!("CARGO_BIN_EXE_strata"))
        .env("STRATA_STORE", e.path(store))
        .output()
        .unwrap();
    assert!(out.status.success(), "make-base.sh: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

#[test]
fn lamp_v2_push_uploads_one_layer_plus_config_and_manifest() {
    if !needs_root() {
        return;
    }
    let e = Env::new();
    let Some(reg) = start_registry(None) else { return };
    let host = reg.host();
    let dir = lamp(&e, "s");
    let ctx = dir.to_str().unwrap();
    e.ok("s", &["build", "--progress", "plain", "-t", "lamp:v1", ctx]);
    let v1 = e.json("s", &["push", "--json", "lamp:v1", &format!("docker://{host}/lamp:v1")]);
    assert_eq!(layers_with(&v1, "Uploaded"), 6, "{v1:#}");

    let php = dir.join("app/index.php");
    let text = std::fs::read_to_string(&php).unwrap().replace("version 1", "version 2");
    std::fs::write(&php, text).unwrap();
    e.ok("s", &["build", "--progress", "plain", "-t", "lamp:v2", ctx]);
    let mark = mark(&reg);
    let v2 = e.json("s", &["push", "--json", "lamp:v2", &format!("docker://{host}/lamp:v2")]);
    let requests = requests_since(&reg, mark);

    // The report: one layer uploaded, five found present, the new config uploaded.
    assert_eq!(layers_with(&v2, "Uploaded"), 1, "{v2:#}");
    assert_eq!(layers_with(&v2, "Present"), 5, "{v2:#}");
    assert_eq!(blob_outcome(&v2, "Config"), "Uploaded", "{v2:#}");
    assert_eq!(v2["transfer"]["uploaded"], 2, "{v2:#}");
    let (_, layers, _) = e.inspect("s", "lamp:v2");
    let app_layer = layers.last().unwrap();
    let app_size = v2["transfer"]["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["digest"] == app_layer.as_str())
        .map(|b| b["size"].as_u64().unwrap())
        .unwrap();
    let config_size = v2["transfer"]["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["kind"] == "Config")
        .map(|b| b["size"].as_u64().unwrap())
        .unwrap();
    assert_eq!(v2["transfer"]["bytes"], app_size + config_size, "{v2:#}");

    // The registry's own log: two blob uploads (the app layer and the config), each started
    // and completed once, and one manifest.
    let (posts, _patches, puts, manifests) = writes(&requests);
    assert_eq!((posts, puts, manifests), (2, 2, 1), "{requests:?}");
    let completed: Vec<&str> = requests
        .iter()
        .filter(|(m, u)| m == "PUT" && u.contains("/blobs/uploads/"))
        .map(|(_, u)| u.as_str())
        .collect();
    assert!(
        completed
            .iter()
            .any(|u| u.contains(&app_layer.replace(':', "%3A")) || u.contains(app_layer.as_str())),
        "the app layer is one of the uploads: {completed:?}"
    );
    assert!(!completed.iter().any(|u| layers[..5].iter().any(|l| u.contains(&l[7..]))));

    // And what was pushed pulls back whole.
    let pulled = e.json("fresh", &["pull", "--json", &format!("{host}/lamp:v2")]);
    assert_eq!(pulled["manifest"], v2["manifest"]);
    assert!(e.ok("fresh", &["fsck"]).contains("clean"));
}

#[test]
fn copy_between_the_registry_and_every_local_transport() {
    let e = Env::new();
    let Some(reg) = start_registry(None) else { return };
    let host = reg.host();
    e.import("a", "app:v1", "copied\n");
    let (digest, _, diff_ids) = e.inspect("a", "app:v1");

    // store -> registry
    let r = e.json("a", &["copy", "--json", "app:v1", &format!("docker://{host}/c/app:v1")]);
    assert_eq!(r["manifest"], digest.as_str());
    // store -> another repository of the same registry: blobs mounted, not uploaded.
    let r = e.json("a", &["copy", "--json", "app:v1", &format!("docker://{host}/c/mounted:v1")]);
    assert_eq!(layers_with(&r, "Mounted"), 1, "{r:#}");
    assert_eq!(
        (r["transfer"]["mounted"].as_u64(), r["transfer"]["bytes"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(reg.mounts("c/mounted").len(), 2, "{}", reg.log());
    assert!(reg.uploads("c/mounted").is_empty());
    // registry -> oci: the same manifest
    let oci = e.path("layout");
    let oci_loc = format!("oci:{}:v1", oci.display());
    let r = e.json("a", &["copy", "--json", &format!("docker://{host}/c/app:v1"), &oci_loc]);
    assert_eq!(e.inspect("a", &oci_loc).0, digest);
    // The store had every blob: copied from it, nothing downloaded.
    assert_eq!(
        (r["transfer"]["downloaded"].as_u64(), r["transfer"]["bytes"].as_u64()),
        (Some(0), Some(0))
    );
    // oci -> registry (another repository): the store knows where the blobs live, so they
    // are mounted even though the source is the layout.
    e.ok("a", &["copy", &oci_loc, &format!("docker://{host}/c/from-oci:v1")]);
    assert_eq!(reg.mounts("c/from-oci").len(), 2, "{}", reg.log());
    let r = e.json("b", &["pull", "--json", &format!("{host}/c/from-oci:v1")]);
    assert_eq!(r["manifest"], digest.as_str());
    // registry -> docker-archive: layers uncompressed, same diffIDs
    let archive = e.path("app.tar");
    let archive_loc = format!("docker-archive:{}", archive.display());
    e.ok("a", &["copy", &format!("docker://{host}/c/app:v1"), &archive_loc]);
    assert_eq!(e.inspect("a", &archive_loc).2, diff_ids);
    // docker-archive -> registry -> a store, by another name
    e.ok("a", &["copy", &archive_loc, &format!("docker://{host}/c/from-archive:v1")]);
    e.ok("c", &["copy", &format!("docker://{host}/c/from-archive:v1"), "mine:v1"]);
    assert_eq!(e.inspect("c", "mine:v1").2, diff_ids);
    assert_eq!(e.inspect("c", &format!("{host}/c/from-archive:v1")).2, diff_ids);
    // registry -> registry (same registry): mounted blob by blob, nothing downloaded.
    let r = e.json(
        "d",
        &[
            "copy",
            "--json",
            &format!("docker://{host}/c/app:v1"),
            &format!("docker://{host}/c/again:v1"),
        ],
    );
    assert_eq!(
        (r["transfer"]["mounted"].as_u64(), r["transfer"]["downloaded"].as_u64()),
        (Some(2), Some(0)),
        "{r:#}"
    );
    assert_eq!(reg.mounts("c/again").len(), 2, "{}", reg.log());
    let r = e.json("d", &["pull", "--json", &format!("{host}/c/again:v1")]);
    assert_eq!(r["manifest"], digest.as_str());
    // registry -> dir: the flattened root filesystem
    let flat = e.path("flat");
    e.ok("a", &["copy", &format!("docker://{host}/c/app:v1"), &format!("dir:{}", flat.display())]);
    assert_eq!(std::fs::read_to_string(flat.join("etc/motd")).unwrap(), "copied\n");
    // local <-> local still works through the same command
    let oci2 = format!("oci:{}:x", e.path("layout2").display());
    e.ok("a", &["copy", "app:v1", &oci2]);
    e.ok("e", &["copy", &oci2, "local:v1"]);
    assert_eq!(e.inspect("e", "local:v1").0, digest);
    for store in ["a", "b", "c", "d", "e"] {
        assert!(e.ok(store, &["fsck"]).contains("clean"), "{store}");
    }
}

#[test]
fn dry_runs_move_nothing() {
    let e = Env::new();
    e.import("a", "app:v1", "dry\n");
    // Local copies: the plan, and no layout, archive or tag written.
    let layout = e.path("dry-layout");
    let r = e.json(
        "a",
        &["copy", "--dry-run", "--json", "app:v1", &format!("oci:{}", layout.display())],
    );
    assert_eq!((r["dry_run"].as_bool(), r["local"]["written"].as_u64()), (Some(true), Some(3)));
    assert!(!layout.exists());
    let r = e.json("a", &["copy", "--dry-run", "--json", "app:v1", "again:v1"]);
    assert_eq!(
        (r["local"]["written"].as_u64(), r["local"]["skipped"].as_u64()),
        (Some(0), Some(3))
    );
    assert!(!e.ok("a", &["images"]).contains("again"));
    let Some(reg) = start_registry(None) else { return };
    let host = reg.host();
    let dest = format!("docker://{host}/dry/app:v1");
    let mark = mark(&reg);
    let out = e.ok("a", &["push", "--dry-run", "app:v1", &dest]);
    assert!(out.contains("dry run"), "{out}");
    let r = e.json("a", &["push", "--dry-run", "--json", "app:v1", &dest]);
    assert_eq!(r["dry_run"], true);
    assert_eq!(layers_with(&r, "Uploaded"), 1, "predicted: {r:#}");
    let requests = requests_since(&reg, mark);
    assert!(requests.iter().any(|(m, _)| m == "HEAD"), "{requests:?}");
    assert!(
        requests.iter().all(|(m, _)| m == "HEAD" || m == "GET"),
        "a dry run only looks: {requests:?}"
    );
    // Nothing is there: pulling fails.
    let out = e.run("b", &["pull", &format!("{host}/dry/app:v1")]);
    assert_eq!(out.status.code(), Some(2));

    // A dry-run pull writes nothing into the store.
    e.ok("a", &["push", "app:v1", &dest]);
    let r = e.json("b", &["pull", "--dry-run", "--json", &format!("{host}/dry/app:v1")]);
    assert_eq!(r["dry_run"], true);
    assert_eq!(layers_with(&r, "Downloaded"), 1, "{r:#}");
    let images = e.ok("b", &["images", "--json"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&images).unwrap(), serde_json::json!([]));
}

#[test]
fn build_pulls_a_registry_base_on_demand() {
    if !needs_root() {
        return;
    }
    let e = Env::new();
    let Some(reg) = start_registry(None) else { return };
    let host = reg.host();
    e.import("a", "base:1", "base\n");
    e.ok("a", &["push", "base:1", &format!("docker://{host}/base:1")]);
    let ctx = e.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {host}/base:1\nCOPY f.txt /f.txt\n"))
        .unwrap();
    std::fs::write(ctx.join("f.txt"), "f\n").unwrap();
    let ctx = ctx.to_str().unwrap();

    // --pull=never: the store has no copy, so the build fails and says why.
    let out = e.run("b", &["build", "--progress", "plain", "--pull=never", ctx]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{host}/base:1")) && err.contains("--pull=never"), "{err}");

    // Default (missing): pulled, and the log says so.
    let out = e.run("b", &["build", "--progress", "plain", "-t", "out:1", ctx]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("pulling {host}/base:1")), "{err}");
    assert!(err.contains(&format!("pulled {host}/base:1")), "{err}");
    assert!(e.ok("b", &["images"]).contains(&format!("{host}/base")));

    // The registry is gone: missing (and never) use the store's copy without contacting it.
    reg.kill();
    let out = e.run("b", &["build", "--progress", "plain", "-t", "out:2", ctx]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("pulling"), "{err}");
    e.ok("b", &["build", "--progress", "plain", "--pull=never", ctx]);
    // A bare --pull (= always) does not swallow the context argument.
    let out = e.run("b", &["build", "--progress", "plain", "--pull", ctx]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("pulling"));
    // always: must ask the registry, which is down: a clear failure, not a hang.
    let started = Instant::now();
    let out = e.run("b", &["build", "--progress", "plain", "--pull=always", ctx]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("pulling {host}/base:1")), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));

    // Three stages from the same base (two of them independent, so built in parallel) share
    // one pull. The registry restarts on the same port and storage.
    reg.restart();
    let recipe = format!(
        "FROM {host}/base:1 AS one\nCOPY f.txt /one\n\
         FROM {host}/base:1 AS two\nCOPY f.txt /two\n\
         FROM {host}/base:1\nCOPY --from=one /one /1\nCOPY --from=two /two /2\n"
    );
    std::fs::write(e.path("ctx/Dockerfile"), recipe).unwrap();
    let mark = mark(&reg);
    let out = e.run("b", &["build", "--progress", "plain", "--pull=always", ctx]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("=> pulling ").count(), 1, "{err}");
    let manifest_gets = requests_since(&reg, mark)
        .iter()
        .filter(|(m, u)| m == "GET" && u.contains("/manifests/"))
        .count();
    assert_eq!(manifest_gets, 1);
    reg.kill();

    // docker:// in FROM works too.
    std::fs::write(
        e.path("ctx/Dockerfile"),
        format!("FROM docker://{host}/base:1\nCOPY f.txt /g.txt\n"),
    )
    .unwrap();
    e.ok("b", &["build", "--progress", "plain", "--pull=never", ctx]);
}

/// Issue 16: a build that pulls its base shows each layer's download as `strata pull` does:
/// a bar with bytes done/total in the tty view (watched in tmux through a slow link to a real
/// registry), one line per blob in plain mode, `pull_blob_*` events in JSON.
#[test]
fn build_shows_per_layer_pull_progress_in_every_display() {
    if !needs_root() || !have("tmux") {
        return;
    }
    let e = Env::new();
    let Some(reg) = start_registry(None) else { return };
    let tree = e.path("tree");
    std::fs::create_dir_all(&tree).unwrap();
    // 3 MB that zstd cannot shrink: a layer big enough for several progress events.
    let mut noise = Vec::with_capacity(3 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(tree.join("noise"), &noise).unwrap();
    e.ok("a", &["import", tree.to_str().unwrap(), "base:1"]);
    let (_, layers, _) = e.inspect("a", "base:1");
    let layer_hex = &layers[0]["sha256:".len()..][..12];
    e.ok("a", &["push", "base:1", &format!("docker://{}/base:1", reg.host())]);
    let ctx = e.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("f.txt"), "f\n").unwrap();
    let recipe = |host: &str| format!("FROM {host}/base:1\nCOPY f.txt /f.txt\n");

    // tty, through a link of 512 kB/s: the bar is on screen while the layer downloads.
    let slow = common::throttled_proxy(&reg.host(), 512 * 1024);
    std::fs::write(ctx.join("Dockerfile"), recipe(&slow)).unwrap();
    let script = format!(
        "HOME='{}' '{}' --store '{}' build --progress tty '{}'; echo EXIT=$?; sleep 60",
        e.path("home").display(),
        env!("CARGO_BIN_EXE_strata"),
        e.path("tty").display(),
        ctx.display()
    );
    let tmux = common::Tmux::start("pull-progress", 120, 30, &script);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut bars = Vec::new();
    let screen = loop {
        let screen = tmux.screen();
        bars.extend(
            screen
                .lines()
                .filter(|l| l.starts_with(&format!(" => => layer {layer_hex} [")))
                .map(str::to_string),
        );
        if screen.contains("EXIT=") || Instant::now() > deadline {
            break screen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(tmux);
    assert!(screen.contains("EXIT=0"), "{screen}");
    // Bytes done / total, part way: `[=======>            ] 1.049MB / 3.1MB`.
    let partial = bars.iter().find(|l| {
        let (done, total) = l.rsplit_once("] ").unwrap().1.split_once(" / ").unwrap();
        done != total && !done.starts_with("0B")
    });
    assert!(partial.is_some(), "no bar part way through the download: {bars:?}\n{screen}");
    assert!(
        screen
            .lines()
            .any(|l| l.starts_with(&format!("layer {layer_hex} ")) && l.ends_with(" downloaded")),
        "the finished layer's line stays above the view: {screen}"
    );
    for line in screen.lines() {
        assert!(line.chars().count() <= 120, "line wider than the pane: {line:?}\n{screen}");
    }

    // plain and json, straight from the registry.
    std::fs::write(ctx.join("Dockerfile"), recipe(&reg.host())).unwrap();
    let ctx = ctx.to_str().unwrap();
    let out = e.run("plain", &["build", "--progress", "plain", ctx]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("=> layer {layer_hex} downloading (")), "{err}");
    assert!(
        err.lines().any(|l| l.starts_with(&format!("=> layer {layer_hex} ")) && l.ends_with(" downloaded")),
        "{err}"
    );
    let out = e.run("json", &["build", "--progress", "json", ctx]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["event"] == kind && e["digest"] == layers[0].as_str()).collect()
    };
    let start = of("pull_blob_start");
    assert_eq!(start.len(), 1, "{events:?}");
    assert_eq!(start[0]["kind"], "layer");
    assert_eq!(start[0]["reference"], format!("{}/base:1", reg.host()));
    let size = start[0]["size"].as_u64().unwrap();
    let progress = of("pull_blob_progress");
    assert!(!progress.is_empty(), "{events:?}");
    assert!(progress.iter().all(|p| p["size"] == size && p["done"].as_u64().unwrap() <= size));
    let done = of("pull_blob_done");
    assert_eq!(done.len(), 1, "{events:?}");
    assert_eq!(done[0]["outcome"], "downloaded");
    assert!(events.iter().all(|e| e["version"] == 1));
}

#[test]
fn login_and_logout_with_htpasswd() {
    let e = Env::new();
    let Some(reg) = start_registry(Some(("alice", "s3cret"))) else { return };
    let host = reg.host();
    let authfile = e.path("auth.json");
    let authfile = authfile.to_str().unwrap();
    let login = |password: &str| {
        let mut child = e
            .command(
                "a",
                &["login", &host, "-u", "alice", "--password-stdin", "--authfile", authfile],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let bad = login("wrong");
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(!Path::new(authfile).exists(), "a failed login saves nothing");
    let good = login("s3cret");
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(std::fs::read_to_string(authfile).unwrap().contains(&host));

    e.import("a", "app:v1", "secret\n");
    let dest = format!("docker://{host}/private/app:v1");
    let out = e.run("a", &["push", "app:v1", &dest]);
    assert_eq!(out.status.code(), Some(2), "no credentials: refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") || err.contains("refused"), "{err}");
    e.ok("a", &["push", "--authfile", authfile, "app:v1", &dest]);
    e.ok("b", &["pull", "--authfile", authfile, &dest]);

    e.ok("a", &["logout", &host, "--authfile", authfile]);
    let out = e.run("a", &["logout", &host, "--authfile", authfile]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not logged in"));
    let out = e.run("b", &["pull", "--authfile", authfile, &dest]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unreachable_registry_and_missing_tag_are_clear_errors() {
    let e = Env::new();
    e.import("a", "app:v1", "x\n");
    // Nobody listens on this port: exit 2, the registry named, no hang.
    let host = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = e.run("a", &["push", "app:v1", &format!("docker://{host}/app:v1")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&host), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));
    let out = e.run("a", &["pull", &format!("{host}/app:v1")]);
    assert_eq!(out.status.code(), Some(2));

    let Some(reg) = start_registry(None) else { return };
    let host = reg.host();
    e.ok("a", &["push", "app:v1", &format!("docker://{host}/app:v1")]);
    let out = e.run("b", &["pull", &format!("{host}/app:nope")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope"), "{err}");
    let out = e.run("b", &["pull", &format!("{host}/never-pushed:v1")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never-pushed"));
    // Bad locations are usage errors before any network.
    let out = e.run("a", &["copy", "dir:/tmp/x", &format!("docker://{host}/app:v2")]);
    assert_eq!(out.status.code(), Some(2));
    let out = e.run("a", &["pull", "app:v1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("names no registry"));
}

/// Writes an OCI image index listing `images` (`(manifest digest, architecture)`, manifests in
/// `layout`) into `layout` and names it `name` in its `index.json`; returns the index digest.
fn add_index(layout: &Path, name: &str, images: &[(String, &str)]) -> String {
    let blob =
        |digest: &str| layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|(digest, arch)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": std::fs::metadata(blob(digest)).unwrap().len(),
                "platform": {"architecture": arch, "os": "linux"},
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let tmp = layout.join("index-blob.tmp");
    std::fs::write(&tmp, &bytes).unwrap();
    let sum = Command::new("sha256sum").arg(&tmp).output().unwrap();
    assert!(sum.status.success());
    let hex = String::from_utf8(sum.stdout).unwrap().split_whitespace().next().unwrap().to_owned();
    let digest = format!("sha256:{hex}");
    std::fs::rename(&tmp, blob(&digest)).unwrap();
    let index_path = layout.join("index.json");
    let mut top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    top["manifests"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": digest,
        "size": bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": name},
    }));
    std::fs::write(&index_path, serde_json::to_vec(&top).unwrap()).unwrap();
    digest
}

#[test]
fn copy_all_moves_a_whole_index_through_a_layout_keeping_its_digest() {
    let e = Env::new();
    let Some(reg) = start_registry(None) else { return };
    if !have("sha256sum") {
        return;
    }
    let host = reg.host();
    // Two single-platform images in one layout, and an index of both.
    e.import("a", "amd:v1", "amd64\n");
    e.import("a", "arm:v1", "arm64\n");
    let seed = e.path("seed");
    e.ok("a", &["copy", "amd:v1", &format!("oci:{}:amd", seed.display())]);
    e.ok("a", &["copy", "arm:v1", &format!("oci:{}:arm", seed.display())]);
    let amd = e.inspect("a", "amd:v1").0;
    let arm = e.inspect("a", "arm:v1").0;
    let index = add_index(&seed, "multi", &[(amd.clone(), "amd64"), (arm.clone(), "arm64")]);
    let seed_loc = format!("oci:{}:multi", seed.display());
    let r =
        e.json("a", &["copy", "--all", "--json", &seed_loc, &format!("docker://{host}/m/app:v1")]);
    assert_eq!(r["manifest"], index.as_str(), "{r:#}");

    // --platform picks from the index (pull and copy); a platform it lacks is a clear error.
    let r = e
        .json("d", &["pull", "--json", "--platform", "linux/aarch64", &format!("{host}/m/app:v1")]);
    assert_eq!(r["manifest"], arm.as_str(), "{r:#}");
    assert_eq!(e.inspect("d", &format!("{host}/m/app:v1")).0, arm);
    let r = e.json(
        "d",
        &[
            "copy",
            "--json",
            "--platform",
            "linux/arm64",
            &format!("docker://{host}/m/app:v1"),
            &format!("docker://{host}/m/arm-only:v1"),
        ],
    );
    assert_eq!(r["manifest"], arm.as_str(), "{r:#}");
    let out = e.run("d", &["pull", "--platform", "linux/s390x", &format!("{host}/m/app:v1")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("linux/s390x") && err.contains("linux/arm64"), "{err}");
    let out = e.run("d", &["pull", "--platform", "linux", &format!("{host}/m/app:v1")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OS/ARCH"));
    let out = e.run(
        "d",
        &[
            "copy",
            "--all",
            "--platform",
            "linux/arm64",
            &seed_loc,
            &format!("docker://{host}/m/x:1"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "--all and --platform conflict");

    // registry -> oci: the index and both platforms land in a fresh layout.
    let layout = e.path("all");
    let oci_loc = format!("oci:{}:v1", layout.display());
    let r =
        e.json("b", &["copy", "--all", "--json", &format!("docker://{host}/m/app:v1"), &oci_loc]);
    assert_eq!(r["manifest"], index.as_str(), "{r:#}");
    for digest in [&index, &amd, &arm] {
        let path = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
        assert!(path.is_file(), "{digest} missing from the layout");
    }
    // The layout names the index v1.
    let top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let named = top["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "v1");
    assert_eq!(named.map(|m| m["digest"].clone()), Some(serde_json::json!(index)), "{top:#}");

    // oci -> another repository: the same index digest.
    let repo2 = format!("docker://{host}/m/repo2:v1");
    let r = e.json("b", &["copy", "--all", "--json", &oci_loc, &repo2]);
    assert_eq!(r["manifest"], index.as_str(), "{r:#}");
    if have("skopeo") {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false", &repo2])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let raw: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(raw["manifests"].as_array().map(Vec::len), Some(2), "{raw:#}");
        let seeded =
            std::fs::read(seed.join("blobs/sha256").join(index.trim_start_matches("sha256:")));
        assert_eq!(out.stdout, seeded.unwrap());
    }
    // registry -> registry with --all keeps it too; without --all the host platform is copied.
    let r =
        e.json("c", &["copy", "--all", "--json", &repo2, &format!("docker://{host}/m/repo3:v1")]);
    assert_eq!(r["manifest"], index.as_str(), "{r:#}");
    if std::env::consts::ARCH == "x86_64" {
        let r = e.json("c", &["copy", "--json", &repo2, &format!("docker://{host}/m/one:v1")]);
        assert_eq!(r["manifest"], amd.as_str(), "{r:#}");
    }
    // The layouts are consistent stores: every entry, manifest and blob present and verified.
    for store in ["a", "b", "c", "d", "all", "seed"] {
        assert!(e.ok(store, &["fsck"]).contains("clean"), "{store}");
    }
}
