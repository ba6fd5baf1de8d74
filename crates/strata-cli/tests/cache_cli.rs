//! `strata build --cache-to/--cache-from/--push` against a real registry (the Debian
//! `docker-registry` on 127.0.0.1): two stores stand for two CI runners, the second one
//! empty, and the registry's access log says what crossed the wire.

#[path = "../../strata-registry/tests/common/registry.rs"]
mod registry;

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::{have, needs_root, TempRoot};
use registry::{Registry, RegistryOptions};

const CACHE_ARTIFACT_TYPE: &str = "application/vnd.strata.cache.v1+json";

struct Env {
    dir: TempRoot,
    reg: Registry,
}

impl Env {
    /// A registry holding `HOST/base:1` (busybox, pushed from store `seed`) and a LAMP-like
    /// context in `ctx`; `None` when root or docker-registry is missing (skip).
    fn new() -> Option<Env> {
        if !needs_root() || !registry::registry_available() {
            return None;
        }
        let env = Env { dir: TempRoot::new(), reg: Registry::start(RegistryOptions::default()) };
        std::fs::create_dir_all(env.path("home")).unwrap();
        let root = env.path("base-rootfs");
        for d in ["bin", "etc", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in ["sh", "mkdir", "echo", "cat"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        env.ok("seed", &["import", root.to_str().unwrap(), "base:1"]);
        env.ok("seed", &["push", "base:1", &format!("docker://{}/base:1", env.host())]);
        let ctx = env.path("ctx");
        for d in ["conf", "www"] {
            std::fs::create_dir_all(ctx.join(d)).unwrap();
        }
        let recipe = format!(
            "FROM {}/base:1\n\
             RUN mkdir -p /var/www && echo 'Listen 80' > /etc/httpd.conf\n\
             ENV APP=lamp\n\
             WORKDIR /srv/app\n\
             COPY conf/ /etc/app/\n\
             RUN echo 'extension=mysqli' > /etc/php.ini\n\
             COPY www/ /var/www/html/\n",
            env.host()
        );
        std::fs::write(ctx.join("Dockerfile"), recipe).unwrap();
        std::fs::write(ctx.join("conf/app.conf"), "db=mysql\n").unwrap();
        std::fs::write(ctx.join("www/index.php"), "<?php echo 'v1';\n").unwrap();
        std::fs::write(ctx.join("www/about.php"), "<?php echo 'about';\n").unwrap();
        Some(env)
    }

    fn host(&self) -> String {
        self.reg.host()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }

    fn ctx(&self) -> String {
        self.path("ctx").to_str().unwrap().to_string()
    }

    fn run(&self, store: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("--store")
            .arg(self.path(store))
            .args(args)
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG")
            .env("HOME", self.path("home"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs strata, asserts success, returns stderr.
    fn ok(&self, store: &str, args: &[&str]) -> String {
        let out = self.run(store, args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "strata {args:?} failed: {err}");
        err
    }

    /// `strata build --progress plain ARGS CTX` in `store`; stderr.
    fn build(&self, store: &str, args: &[&str]) -> String {
        let mut all = vec!["build", "--progress", "plain"];
        all.extend_from_slice(args);
        let ctx = self.ctx();
        all.push(&ctx);
        self.ok(store, &all)
    }

    /// The raw manifest of `reference` (HOST/REPO:TAG), as skopeo reads it.
    fn raw_manifest(&self, reference: &str) -> serde_json::Value {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{reference}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// The build report's lines (`  CACHED  [stage 0, line 2] RUN ...`).
fn report(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .skip_while(|l| *l != "build report:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect()
}

fn cached(stderr: &str) -> Vec<&str> {
    report(stderr).into_iter().filter(|l| l.trim_start().starts_with("CACHED")).collect()
}

const TOC_MEDIA_TYPE: &str = "application/vnd.strata.layer.toc.v1+zstd";

/// The digests of a cache artifact's layer blobs and of its tables of contents.
fn split_tocs(artifact: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    let (tocs, layers): (Vec<_>, Vec<_>) = artifact["layers"]
        .as_array()
        .unwrap()
        .iter()
        .partition(|l| l["mediaType"] == TOC_MEDIA_TYPE);
    let digests = |v: Vec<&serde_json::Value>| {
        v.iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect()
    };
    (digests(layers), digests(tocs))
}

fn layer_digests(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_cold_runner_reuses_the_registry_cache_and_pushes_only_the_new_layer() {
    let Some(e) = Env::new() else { return };
    if !have("skopeo") {
        return;
    }
    let host = e.host();
    let cache = format!("type=registry,ref={host}/cache/lamp:buildcache");
    let v1 = format!("{host}/lamp:v1");
    let a = e.build("a", &["--cache-to", &cache, "--push", "-t", &v1]);
    assert!(a.contains(&format!("pushed {v1}")) && a.contains("exported cache"), "{a}");
    assert!(cached(&a).is_empty(), "{a}");

    // The cache is an artifact of ours, listing the very layer blobs of the image.
    let artifact = e.raw_manifest(&format!("{host}/cache/lamp:buildcache"));
    assert_eq!(artifact["artifactType"], CACHE_ARTIFACT_TYPE, "{artifact:#}");
    assert_eq!(artifact["config"]["mediaType"], "application/vnd.strata.cache.index.v1+json");
    let image_a = e.raw_manifest(&v1);
    let layers_a = layer_digests(&image_a);
    // base + RUN + WORKDIR + COPY + RUN + COPY: the cache keeps them all (the base's too,
    // so a cold runner can take the base from it without downloading it).
    assert_eq!(layers_a.len(), 6, "{image_a:#}");
    let (mut in_cache, tocs) = split_tocs(&artifact);
    in_cache.sort();
    let mut built = layers_a.clone();
    built.sort();
    assert_eq!(in_cache, built, "{artifact:#}");
    // And a table of contents for each layer of the image.
    assert_eq!(tocs.len(), 6, "{artifact:#}");
    // Exporting the cache moved no layer twice: each was mounted from the image's repo (the
    // base's from its own); the index and the tables of contents are uploaded.
    assert_eq!(e.reg.uploads("cache/lamp").len(), 1 + 6, "{}", e.reg.log());
    assert_eq!(e.reg.mounts("cache/lamp").len(), 6);

    // Runner B: empty store, one PHP file changed.
    std::fs::write(e.path("ctx/www/index.php"), "<?php echo 'v2';\n").unwrap();
    let uploads_before = e.reg.uploads("lamp").len();
    let log_before = e.reg.log().lines().count();
    let v2 = format!("{host}/lamp:v2");
    let b = e.build("b", &["--cache-from", &cache, "--cache-to", &cache, "--push", "-t", &v2]);
    // Lazy layers: B downloaded no layer at all, only the cache's index and manifest, the
    // base's manifest and config, and the tables of contents the COPY resolved its
    // destination through; each layer the image shares with A's was mounted or found, never
    // read. Bytes from the registry's access log (combined format: status, then size).
    let log = e.reg.log();
    let b_requests: Vec<&str> =
        log.lines().skip(log_before).filter(|l| l.contains("\"GET /v2/")).collect();
    for layer in &layers_a {
        assert!(
            !b_requests.iter().any(|l| l.contains(layer.as_str())),
            "B downloaded layer {layer}: {b_requests:#?}"
        );
    }
    let served = |l: &&str| -> u64 {
        let after = l.split("HTTP/1.1\" ").nth(1).unwrap_or("");
        let mut f = after.split(' ');
        match (f.next(), f.next()) {
            (Some("200"), Some(n)) => n.parse().unwrap_or(0),
            _ => 0,
        }
    };
    let downloaded: u64 = b_requests.iter().map(served).sum();
    let image_v1: u64 =
        image_a["layers"].as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).sum();
    assert!(downloaded > 0, "the cache index at least: {b_requests:#?}");
    assert!(
        downloaded * 10 < image_v1,
        "B downloaded {downloaded} bytes, more than 10% of the {image_v1}-byte image: {b_requests:#?}"
    );
    assert!(b.contains("not stored here: 5 of its layers"), "{b}");
    let hits = cached(&b);
    assert_eq!(hits.len(), 4, "{b}");
    let last = *report(&b).last().unwrap();
    assert!(last.contains("COPY www/") && !last.contains("CACHED"), "{b}");
    assert!(!b.contains("WARNING"), "{b}");

    // B's image differs from A's in the last layer only, and only it (and the config) was
    // uploaded to the image's repository.
    let layers_b = layer_digests(&e.raw_manifest(&v2));
    assert_eq!(layers_b.len(), 6);
    assert_eq!(layers_b[..5], layers_a[..5]);
    assert_ne!(layers_b[5], layers_a[5]);
    assert_eq!(e.reg.uploads("lamp").len() - uploads_before, 2, "{}", e.reg.log());

    // The COPY that resolved its destination through stand-in trees made the very layer a
    // runner holding every layer makes: the same image, byte for byte.
    let whole = e.build("a", &["--output", &format!("docker://{host}/lamp:v2-whole")]);
    assert!(!whole.contains("not stored here"), "{whole}");
    let v2_whole = e.raw_manifest(&format!("{host}/lamp:v2-whole"));
    assert_eq!(layer_digests(&v2_whole), layers_b);
    assert_eq!(v2_whole["config"], e.raw_manifest(&v2)["config"]);
}

#[test]
fn a_missing_cache_or_a_missing_blob_is_a_warning_and_a_rebuild() {
    let Some(e) = Env::new() else { return };
    if !have("skopeo") {
        return;
    }
    let host = e.host();
    // A cache ref the registry does not have: one warning, a full build.
    let out = e.build("a", &["--cache-from", &format!("{host}/cache/none:nothing")]);
    assert!(out.contains("WARNING: cache type=registry") && out.contains("not imported"), "{out}");
    assert!(cached(&out).is_empty(), "{out}");

    let cache = format!("{host}/cache/lamp:buildcache");
    e.build("a", &["-t", "lamp:1", "--cache-to", &format!("type=registry,ref={cache},mode=max")]);
    // The blob of `COPY conf/` (the image's fourth layer: base, RUN, WORKDIR, COPY) is gone
    // from the registry: that step is a miss; the build still succeeds.
    e.ok("a", &["push", "lamp:1", &format!("docker://{host}/cache/lamp:image")]);
    let gone = layer_digests(&e.raw_manifest(&format!("{host}/cache/lamp:image")))[3].clone();
    std::fs::remove_file(e.reg.blob_data_path(&gone)).unwrap();
    let out = e.build("b", &["--cache-from", &cache]);
    assert!(out.contains("not available, rebuilding the step"), "{out}");
    let copy = report(&out).into_iter().find(|l| l.contains("COPY conf/")).unwrap();
    assert!(!copy.contains("CACHED"), "{out}");
    assert!(cached(&out).len() >= 2, "the steps before it hit: {out}");

    // A bare ref without a tag is `type=registry` at `:latest`, as in BuildKit.
    e.build("a", &["--cache-to", &format!("{host}/cache/notag")]);
    let artifact = e.raw_manifest(&format!("{host}/cache/notag:latest"));
    assert_eq!(artifact["artifactType"], CACHE_ARTIFACT_TYPE);

    // Something that is not a cache (an image) is refused as such.
    let out = e.build("c", &["--cache-from", &format!("{host}/base:1")]);
    assert!(out.contains("is not a strata build cache"), "{out}");
}

#[test]
fn a_local_cache_round_trips_through_an_oci_layout() {
    let Some(e) = Env::new() else { return };
    let dir = e.path("cache-dir");
    let dir = dir.to_str().unwrap();
    let a = e.build("a", &["--cache-to", &format!("type=local,dest={dir},mode=max")]);
    let out = format!("docker://{}/out:1", e.host());
    let b = e.build("b", &["--cache-from", &format!("type=local,src={dir}"), "--output", &out]);
    assert_eq!(cached(&b).len(), 5, "{b}");
    // `--output docker://...` pushes, as --push does for the tags.
    assert!(b.contains(&format!("pushed {}/out:1", e.host())), "{b}");
    assert!(!b.contains("wrote docker://"), "{b}");
    // The same image: every layer reused, configs equal.
    let digest = |s: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix("built "))
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(digest(&a), digest(&b), "{a}\n{b}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}/index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["artifactType"], CACHE_ARTIFACT_TYPE);
}

/// Rewrites the cache index of the layout at `dir` to `bytes`, keeping the layout consistent
/// (new index blob, new manifest naming it, `index.json` naming that).
fn replace_layout_index(dir: &str, edit: impl Fn(&str) -> String) {
    let read = |p: String| std::fs::read_to_string(p).unwrap();
    let blob = |d: &str| format!("{dir}/blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let put = |text: &str| -> String {
        use sha2_digest::hex_sha256;
        let d = format!("sha256:{}", hex_sha256(text.as_bytes()));
        std::fs::write(blob(&d), text).unwrap();
        d
    };
    let top: serde_json::Value = serde_json::from_str(&read(format!("{dir}/index.json"))).unwrap();
    let manifest_digest = top["manifests"][0]["digest"].as_str().unwrap().to_string();
    let mut manifest: serde_json::Value =
        serde_json::from_str(&read(blob(&manifest_digest))).unwrap();
    let old = manifest["config"]["digest"].as_str().unwrap().to_string();
    let new_index = edit(&read(blob(&old)));
    manifest["config"]["digest"] = put(&new_index).into();
    manifest["config"]["size"] = new_index.len().into();
    let manifest_text = manifest.to_string();
    let mut top = top;
    top["manifests"][0]["digest"] = put(&manifest_text).into();
    top["manifests"][0]["size"] = manifest_text.len().into();
    std::fs::write(format!("{dir}/index.json"), top.to_string()).unwrap();
}

/// SHA-256 by `sha256sum` (the test crate has no hash dependency).
mod sha2_digest {
    pub fn hex_sha256(bytes: &[u8]) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap().split(' ').next().unwrap().to_string()
    }
}

#[test]
fn a_cache_of_another_format_version_or_a_corrupt_index_is_a_warning_and_a_full_build() {
    let Some(e) = Env::new() else { return };
    let dir = e.path("cache-dir");
    let dir = dir.to_str().unwrap();
    e.build("a", &["--cache-to", &format!("type=local,dest={dir}")]);
    let from = format!("type=local,src={dir}");

    replace_layout_index(dir, |text| text.replace("\"version\":1", "\"version\":2"));
    let out = e.build("b", &["--cache-from", &from]);
    assert!(out.contains("WARNING") && out.contains("format version 2"), "{out}");
    assert!(cached(&out).is_empty(), "{out}");

    replace_layout_index(dir, |_| "{\"version\":1,\"entries\":[{\"kind\":\"run\"}]}".into());
    let out = e.build("c", &["--cache-from", &from]);
    assert!(out.contains("WARNING") && out.contains("malformed"), "{out}");
    assert!(cached(&out).is_empty(), "{out}");
}

/// A context whose RUN fills a cache mount the way a package manager fills its download
/// cache: each dependency `/src/deps.txt` names is fetched (its 256 kB of noise copied in
/// from the context) only when the cache does not have it yet.
fn deps_context(e: &Env, deps: &str, main: &str) -> String {
    let ctx = e.path("deps-ctx");
    std::fs::create_dir_all(ctx.join("src")).unwrap();
    let recipe = format!(
        "FROM {}/base:1\n\
         COPY src/ /src/\n\
         RUN --mount=type=cache,id=deps,target=/cache \
         for d in $(cat /src/deps.txt); do \
         if [ -f /cache/$d ]; then echo \"reused $d\"; \
         else echo \"fetched $d\"; cat /src/$d.bin > /cache/$d; fi; \
         done; cat /src/main.txt > /main.txt\n",
        e.host()
    );
    std::fs::write(ctx.join("Dockerfile"), recipe).unwrap();
    for (n, d) in deps.split(' ').enumerate() {
        // Incompressible and different for each, so layer sizes count dependencies.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64 + n as u64;
        let noise: Vec<u8> = (0..256 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(ctx.join(format!("src/{d}.bin")), noise).unwrap();
    }
    std::fs::write(ctx.join("src/deps.txt"), format!("{deps}\n")).unwrap();
    std::fs::write(ctx.join("src/main.txt"), main).unwrap();
    ctx.to_str().unwrap().to_string()
}

/// The cache index of the cache artifact `reference`, read from the registry's storage.
fn registry_cache_index(e: &Env, reference: &str) -> serde_json::Value {
    let artifact = e.raw_manifest(reference);
    let config = artifact["config"]["digest"].as_str().unwrap();
    serde_json::from_slice(&std::fs::read(e.reg.blob_data_path(config)).unwrap()).unwrap()
}

fn mount_chain(index: &serde_json::Value, id: &str) -> Vec<(String, u64)> {
    let mounts = index["mounts"].as_array().expect("the index carries mounts");
    let m = mounts.iter().find(|m| m["id"] == id).expect("the mount is in the index");
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["layer"]["digest"].as_str().unwrap().to_string(),
                l["layer"]["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn cache_mounts_travel_with_mounts_true_and_only_their_changes_are_uploaded() {
    let Some(e) = Env::new() else { return };
    if !have("skopeo") {
        return;
    }
    let cache = format!("{}/cache/deps:c", e.host());
    let to = format!("type=registry,ref={cache},mode=max,mounts=true");
    let build = |store: &str, ctx: &str, args: &[&str]| {
        let mut all = vec!["build", "--progress", "plain"];
        all.extend_from_slice(args);
        all.push(ctx);
        e.ok(store, &all)
    };

    // Runner A: fetches both dependencies into the cache mount and exports it.
    let ctx = deps_context(&e, "dep1 dep2", "v1\n");
    let a = build("a", &ctx, &["--cache-to", &to]);
    assert!(a.contains("fetched dep1") && a.contains("fetched dep2"), "{a}");
    let chain_a = mount_chain(&registry_cache_index(&e, &cache), "deps");
    assert_eq!(chain_a.len(), 1, "{chain_a:?}");
    assert!(chain_a[0].1 > 500 * 1024, "both dependencies are in the layer: {chain_a:?}");

    // Runner B, empty store, a source edit and one more dependency: the RUN runs again, on
    // the seeded cache, and the export adds only the new dependency to the chain.
    let ctx = deps_context(&e, "dep1 dep2 dep3", "v2\n");
    let uploads_before = e.reg.uploads("cache/deps");
    let b = build(
        "b",
        &ctx,
        &["--cache-from", &format!("type=registry,ref={cache}"), "--cache-to", &to],
    );
    assert!(b.contains("reused dep1") && b.contains("reused dep2"), "{b}");
    assert!(b.contains("fetched dep3") && !b.contains("fetched dep1"), "{b}");
    assert!(!b.contains("WARNING"), "{b}");
    let chain_b = mount_chain(&registry_cache_index(&e, &cache), "deps");
    assert_eq!(chain_b.len(), 2, "{chain_b:?}");
    assert_eq!(chain_b[0], chain_a[0], "the chain grows on A's layer");
    assert!(
        chain_b[1].1 < 300 * 1024 && chain_b[1].1 > 250 * 1024,
        "the new layer is one dependency: {chain_b:?} after {chain_a:?}"
    );
    let uploads = e.reg.uploads("cache/deps");
    let new_uploads = &uploads[uploads_before.len()..];
    assert!(
        !new_uploads.iter().any(|l| l.contains(&chain_a[0].0)),
        "A's mount layer is not uploaded again: {new_uploads:#?}"
    );
    assert!(new_uploads.iter().any(|l| l.contains(&chain_b[1].0)), "{new_uploads:#?}");

    // Runner C, empty store: the whole chain seeds the mount; nothing is fetched again.
    let ctx = deps_context(&e, "dep1 dep2 dep3", "v3\n");
    let c = build("c", &ctx, &["--cache-from", &cache]);
    for d in ["dep1", "dep2", "dep3"] {
        assert!(c.contains(&format!("reused {d}")), "{c}");
    }
    assert!(!c.contains("fetched dep"), "{c}");

    // Without mounts=true no mount is exported.
    let plain = format!("{}/cache/deps:plain", e.host());
    build("a", &ctx, &["--cache-to", &format!("type=registry,ref={plain},mode=max")]);
    assert!(registry_cache_index(&e, &plain).get("mounts").is_none());
}
