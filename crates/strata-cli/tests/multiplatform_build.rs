//! `strata build --platform`: one recipe, an image index for amd64 and arm64 in one command
//! (issue #14). RUN steps of arm64 execute for real through qemu-user-static registered in
//! binfmt_misc; the arm64 base is Debian's busybox-static:arm64 (`scripts/arm64-busybox.sh`).
//! Needs root, qemu and the fixture; skips with a message otherwise (a failure under
//! `STRATA_TEST_STRICT=1`). Written for an amd64 host, where arm64 is the foreign platform.

#[path = "../../strata-registry/tests/common/registry.rs"]
mod registry;

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{counts, have, have_all, strict, workspace, TempRoot};
use registry::{Registry, RegistryOptions};

/// The arm64 static busybox, or `None` after a skip message.
#[allow(clippy::print_stderr)]
fn arm64_busybox() -> Option<PathBuf> {
    let out = Command::new("bash").arg(workspace().join("scripts/arm64-busybox.sh")).output();
    match out {
        Ok(o) if o.status.success() => {
            Some(PathBuf::from(String::from_utf8(o.stdout).unwrap().trim()))
        }
        other => {
            let why = format!("no arm64 busybox from scripts/arm64-busybox.sh: {other:?}");
            assert!(!strict(), "{why}");
            eprintln!("skipping: {why}");
            None
        }
    }
}

/// A context with `busybox-amd64` (the host's static busybox) and `busybox-arm64`, or `None`
/// after a skip message (not root, no qemu, no fixture, not an amd64 host).
#[allow(clippy::print_stderr)]
fn setup() -> Option<(TempRoot, PathBuf)> {
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("skipping: these tests build arm64 as the foreign platform of an amd64 host");
        return None;
    }
    if !have_all("multi-platform builds", &["busybox", "qemu-aarch64-static"]) {
        return None;
    }
    let arm = arm64_busybox()?;
    let dir = TempRoot::new();
    let ctx = dir.path("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let host = String::from_utf8(
        Command::new("sh").args(["-c", "command -v busybox"]).output().unwrap().stdout,
    )
    .unwrap();
    fs::copy(host.trim(), ctx.join("busybox-amd64")).unwrap();
    fs::copy(arm, ctx.join("busybox-arm64")).unwrap();
    Some((dir, ctx))
}

fn strata(dir: &TempRoot, args: &[&str]) -> Output {
    common::strata(&dir.path("store"), args)
}

fn ok(dir: &TempRoot, args: &[&str]) -> String {
    let out = strata(dir, args);
    assert!(
        out.status.success(),
        "strata {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn fails(dir: &TempRoot, args: &[&str]) -> String {
    let out = strata(dir, args);
    assert!(!out.status.success(), "strata {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The file `path` of `platform`'s image of `image`, read from a `dir:` export.
fn file_of(dir: &TempRoot, image: &str, platform: &str, path: &str) -> String {
    let out = dir.path(&format!("out-{}-{}", image.replace(':', "-"), platform.replace('/', "-")));
    let _ = fs::remove_dir_all(&out);
    ok(dir, &["export", "--platform", platform, image, &format!("dir:{}", out.display())]);
    let text = fs::read_to_string(out.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.trim().to_string()
}

/// Every path under `dir` whose name mentions qemu.
fn qemu_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().to_lowercase().contains("qemu") {
            found.push(p.clone());
        }
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            found.extend(qemu_files(&p));
        }
    }
    found
}

const UNAME: &str = "\
FROM scratch
ARG TARGETARCH
COPY busybox-$TARGETARCH /bin/busybox
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox uname -m > /arch\"]
COPY app.php /app.php
";

#[test]
fn one_recipe_two_platforms_an_index_with_each_platforms_run() {
    let Some((dir, ctx)) = setup() else { return };
    fs::write(ctx.join("Dockerfile"), UNAME).unwrap();
    fs::write(ctx.join("app.php"), "<?php echo 1;\n").unwrap();
    let c = ctx.to_str().unwrap();
    let out = ok(
        &dir,
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "app:v1",
            c,
        ],
    );
    assert_eq!(counts(&out), (0, 6), "{out}");
    assert!(out.contains("[linux/arm64]"), "stages name their platform: {out}");
    // One image in the store, an index listing both platforms.
    let rows: serde_json::Value = serde_json::from_str(&ok(&dir, &["images", "--json"])).unwrap();
    assert_eq!(rows[0]["platforms"], serde_json::json!(["linux/amd64", "linux/arm64"]), "{rows}");
    assert_eq!(file_of(&dir, "app:v1", "linux/amd64", "arch"), "x86_64");
    assert_eq!(file_of(&dir, "app:v1", "linux/arm64", "arch"), "aarch64");
    // The emulator ran the arm64 step and is nowhere in its image.
    let arm = dir.path("out-app-v1-linux-arm64");
    assert_eq!(qemu_files(&arm), Vec::<PathBuf>::new());
    let ls = ok(&dir, &["ls", "--platform", "linux/arm64", "app:v1"]);
    assert!(!ls.to_lowercase().contains("qemu"), "{ls}");
    // The configs carry their platforms.
    let inspect = ok(&dir, &["inspect", "--no-efficiency", "--platform", "linux/arm64", "app:v1"]);
    assert!(inspect.contains("Platform:     linux/arm64"), "{inspect}");

    // A no-op rebuild reuses everything; an edit of the PHP file re-runs only its COPY, once
    // per platform: the cache keys carry the platform.
    let out = ok(
        &dir,
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "app:v1",
            c,
        ],
    );
    assert_eq!(counts(&out), (6, 0), "{out}");
    fs::write(ctx.join("app.php"), "<?php echo 2;\n").unwrap();
    let out = ok(
        &dir,
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "app:v2",
            c,
        ],
    );
    assert_eq!(counts(&out), (4, 2), "{out}");
    assert_eq!(file_of(&dir, "app:v2", "linux/arm64", "app.php"), "<?php echo 2;");

    // One platform gives that platform's image, not an index; its layers come from the cache.
    let out =
        ok(&dir, &["build", "--progress", "plain", "--platform", "linux/arm64", "-t", "arm:v1", c]);
    assert_eq!(counts(&out), (3, 0), "{out}");
    let rows: serde_json::Value = serde_json::from_str(&ok(&dir, &["images", "--json"])).unwrap();
    let arm = rows.as_array().unwrap().iter().find(|r| r["name"] == "arm").unwrap();
    assert_eq!(arm["platforms"], serde_json::json!(["linux/arm64"]), "{rows}");

    // A base that is an index resolves to each stage's platform.
    let child = dir.path("child");
    fs::create_dir_all(&child).unwrap();
    fs::write(
        child.join("Dockerfile"),
        "FROM app:v1\nRUN [\"/bin/busybox\", \"cp\", \"/arch\", \"/arch2\"]\n",
    )
    .unwrap();
    let cc = child.to_str().unwrap();
    ok(&dir, &["build", "--platform", "linux/arm64,linux/amd64", "-t", "child:v1", cc]);
    assert_eq!(file_of(&dir, "child:v1", "linux/arm64", "arch2"), "aarch64");
    assert_eq!(file_of(&dir, "child:v1", "linux/amd64", "arch2"), "x86_64");
    let raw = ok(&dir, &["inspect", "--json", "--no-efficiency", "child:v1"]);
    let doc: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(doc["platforms"][0]["platform"], "linux/arm64", "--platform order: {doc:#}");

    // Bad input: a base without the platform lists what it has; a single image is for one.
    let err = fails(&dir, &["build", "--platform", "linux/s390x", "-t", "x:1", cc]);
    assert!(err.contains("linux/s390x") && err.contains("linux/amd64, linux/arm64"), "{err}");
    fs::write(child.join("Dockerfile"), "FROM arm:v1\nRUN [\"/bin/busybox\", \"true\"]\n").unwrap();
    let err = fails(&dir, &["build", "--platform", "linux/amd64", "-t", "x:1", cc]);
    assert!(err.contains("arm:v1 has no image for linux/amd64 (it has: linux/arm64)"), "{err}");
    // An unknown platform string, the same platform twice, an archive of two platforms.
    let err = fails(&dir, &["build", "--platform", "linux", "-t", "x:1", c]);
    assert!(err.contains("invalid platform \"linux\""), "{err}");
    let err = fails(&dir, &["build", "--platform", "linux/arm64,linux/aarch64", "-t", "x:1", c]);
    assert!(err.contains("--platform lists linux/arm64 twice"), "{err}");
    let archive = format!("docker-archive:{}", dir.path("a.tar").display());
    let err =
        fails(&dir, &["build", "--platform", "linux/amd64,linux/arm64", "--output", &archive, c]);
    assert!(err.contains("holds one image") && err.contains("linux/amd64, linux/arm64"), "{err}");
    assert!(ok(&dir, &["fsck"]).contains("clean"));
}

#[test]
fn cross_compilation_stage_runs_once_for_two_targets() {
    let Some((dir, ctx)) = setup() else { return };
    // `tools` reads no TARGET* arg: one native run serves both targets. `cross` reads
    // TARGETARCH: it runs natively once per target. The last stage is each target's own.
    fs::write(
        ctx.join("Dockerfile"),
        "\
FROM --platform=$BUILDPLATFORM scratch AS tools
ARG BUILDARCH
COPY busybox-$BUILDARCH /bin/busybox
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox uname -m > /tools-ran-on\"]
FROM --platform=$BUILDPLATFORM scratch AS cross
ARG BUILDARCH
COPY busybox-$BUILDARCH /bin/busybox
ARG TARGETARCH
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo $TARGETARCH > /for; /bin/busybox uname -m > /cross-ran-on\"]
FROM scratch
ARG TARGETARCH
COPY busybox-$TARGETARCH /bin/busybox
COPY --from=tools /tools-ran-on /
COPY --from=cross /for /cross-ran-on /
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox uname -m > /final-ran-on\"]
",
    )
    .unwrap();
    let c = ctx.to_str().unwrap();
    let out = ok(
        &dir,
        &["build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64", "-t", "x:v1", c],
    );
    let report: Vec<&str> = out.lines().skip_while(|l| !l.starts_with("build report")).collect();
    let ran = |needle: &str| report.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(ran("> /tools-ran-on"), 1, "the $BUILDPLATFORM stage runs once: {out}");
    assert_eq!(ran("> /cross-ran-on"), 2, "a stage reading TARGETARCH runs per target: {out}");
    assert_eq!(ran("> /final-ran-on"), 2, "{out}");
    for (platform, arch, machine) in
        [("linux/amd64", "amd64", "x86_64"), ("linux/arm64", "arm64", "aarch64")]
    {
        assert_eq!(file_of(&dir, "x:v1", platform, "tools-ran-on"), "x86_64");
        assert_eq!(file_of(&dir, "x:v1", platform, "cross-ran-on"), "x86_64");
        assert_eq!(file_of(&dir, "x:v1", platform, "for"), arch);
        assert_eq!(file_of(&dir, "x:v1", platform, "final-ran-on"), machine);
    }
}

#[test]
fn push_sends_the_index_and_skopeo_reads_it_back_whole() {
    let Some((dir, ctx)) = setup() else { return };
    if !registry::registry_available() || !have("skopeo") {
        return;
    }
    let reg = Registry::start(RegistryOptions::default());
    fs::write(ctx.join("Dockerfile"), UNAME).unwrap();
    fs::write(ctx.join("app.php"), "<?php echo 1;\n").unwrap();
    let tag = format!("{}/mp/app:v1", reg.host());
    let c = ctx.to_str().unwrap();
    ok(
        &dir,
        &[
            "build",
            "--tls-verify=false",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &tag,
            "--push",
            c,
        ],
    );
    let raw = common::run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{tag}"),
    ]));
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json", "{raw}");
    let archs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"], "{raw}");
    let layout = dir.path("copied");
    common::run(Command::new("skopeo").args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{tag}"),
        &format!("oci:{}:x", layout.display()),
    ]));
    // The copy kept the index byte for byte: its digest is the one strata tagged.
    let local = ok(&dir, &["images", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&local).unwrap();
    let digest = rows[0]["digest"].as_str().unwrap().to_string();
    let copied = common::run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        &format!("oci:{}:x", layout.display()),
    ]));
    assert_eq!(format!("sha256:{}", sha256_hex(copied.as_bytes())), digest);
}

#[test]
fn the_registry_cache_carries_both_platforms_to_a_cold_runner() {
    let Some((dir, ctx)) = setup() else { return };
    if !registry::registry_available() {
        return;
    }
    let reg = Registry::start(RegistryOptions::default());
    fs::write(ctx.join("Dockerfile"), UNAME).unwrap();
    fs::write(ctx.join("app.php"), "<?php echo 1;\n").unwrap();
    let c = ctx.to_str().unwrap();
    let cache = format!("type=registry,ref={}/mp/cache:main,mode=max", reg.host());
    let both = "linux/amd64,linux/arm64";
    // Runner A builds both platforms and exports one cache for them.
    let a =
        ok(&dir, &["build", "--progress", "plain", "--platform", both, "--cache-to", &cache, c]);
    assert_eq!(counts(&a), (0, 6), "{a}");
    assert!(a.contains("exported cache"), "{a}");

    // Runner B starts empty, with the PHP file changed and one job: every step of both
    // platforms but the PHP COPY comes from the cache (the arm64 RUN is not emulated again).
    fs::write(ctx.join("app.php"), "<?php echo 2;\n").unwrap();
    let b_store = dir.path("store-b");
    let b_args = [
        "build",
        "--progress",
        "plain",
        "--platform",
        both,
        "--jobs",
        "1",
        "--cache-from",
        &cache,
        "-t",
        "app:v2",
        c,
    ];
    let out = common::strata(&b_store, &b_args);
    let b =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{b}");
    assert_eq!(counts(&b), (4, 2), "{b}");
    assert!(!b.contains("WARNING"), "{b}");
    for (platform, arch) in [("linux/amd64", "x86_64"), ("linux/arm64", "aarch64")] {
        let to = dir.path(&format!("b-{}", platform.replace('/', "-")));
        let target = format!("dir:{}", to.display());
        let out = common::strata(&b_store, &["export", "--platform", platform, "app:v2", &target]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(fs::read_to_string(to.join("arch")).unwrap().trim(), arch);
        assert_eq!(fs::read_to_string(to.join("app.php")).unwrap(), "<?php echo 2;\n");
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    strata::types::Digest::of_bytes(bytes).hex().to_string()
}
