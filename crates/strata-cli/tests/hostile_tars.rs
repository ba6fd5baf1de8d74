//! One verdict for a hostile tar wherever strata reads it (issue 15 point 3): `import`, `ADD`
//! in a build, `diff` and `export dir:` of an image whose layer it is. Each refuses it with an
//! error naming the entry, and nothing lands outside where it was asked to write.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{needs_root, strata, TempRoot};

/// Writes the hostile tars (python's tarfile writes exactly what it is told) and, for each, an
/// OCI layout `<name>-layout` holding a one-layer image `v1` of it; the entry each must name.
fn hostile(dir: &Path) -> Vec<(String, &'static str)> {
    let script = r#"
import hashlib, io, json, os, sys, tarfile
out = sys.argv[1]
def entry(t, name, kind=tarfile.REGTYPE, data=b"x", link=""):
    i = tarfile.TarInfo(name); i.type = kind; i.linkname = link; i.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    if kind == tarfile.REGTYPE:
        i.size = len(data); t.addfile(i, io.BytesIO(data))
    else:
        t.addfile(i)
cases = {
    "dotdot": [("../escape", tarfile.REGTYPE, "")],
    "absolute": [("/escape-abs", tarfile.REGTYPE, "")],
    "symlink-up": [("up", tarfile.SYMTYPE, "../.."), ("up/escape-link", tarfile.REGTYPE, "")],
    "hardlink-out": [("hl", tarfile.LNKTYPE, "../../etc/passwd")],
}
for name, entries in cases.items():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for n, k, l in entries:
            entry(t, n, k, link=l)
    layer = buf.getvalue()
    open(os.path.join(out, name + ".tar"), "wb").write(layer)
    lay = os.path.join(out, name + "-layout")
    os.makedirs(os.path.join(lay, "blobs", "sha256"))
    def blob(b):
        d = hashlib.sha256(b).hexdigest()
        open(os.path.join(lay, "blobs", "sha256", d), "wb").write(b)
        return "sha256:" + d, len(b)
    ld, ls = blob(layer)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [ld]}, "config": {}}).encode()
    cd, cs = blob(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}]}).encode()
    md, ms = blob(manifest)
    json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(lay, "oci-layout"), "w"))
    json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, open(os.path.join(lay, "index.json"), "w"))
"#;
    let st = Command::new("python3").arg("-c").arg(script).arg(dir).status().unwrap();
    assert!(st.success());
    vec![
        ("dotdot".into(), "../escape"),
        ("absolute".into(), "/escape-abs"),
        ("symlink-up".into(), "up/escape-link"),
        ("hardlink-out".into(), "hl"),
    ]
}

/// The refusal: a failure whose message names `entry`.
fn refused(what: &str, out: &Output, entry: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: accepted");
    assert!(err.contains(entry), "{what}: the error does not name {entry}: {err}");
}

#[test]
fn import_add_diff_and_export_give_a_hostile_tar_the_same_verdict() {
    if !needs_root() {
        return;
    }
    let root = TempRoot::new();
    let dir = root.path("work");
    std::fs::create_dir_all(&dir).unwrap();
    let store = root.path("store");
    // A benign image to diff against.
    let benign = root.path("benign");
    std::fs::create_dir_all(&benign).unwrap();
    std::fs::write(benign.join("ok"), "ok").unwrap();
    assert!(strata(&store, &["import", benign.to_str().unwrap(), "benign:1"]).status.success());
    let outside: PathBuf = root.path("escape");
    for (name, entry) in hostile(&dir) {
        let tar = dir.join(format!("{name}.tar"));
        let layout = format!("oci:{}:v1", dir.join(format!("{name}-layout")).display());
        // import
        refused(
            &format!("{name}: import"),
            &strata(&store, &["import", tar.to_str().unwrap(), "evil:1"]),
            entry,
        );
        // ADD in a build
        let ctx = dir.join(format!("{name}-ctx"));
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::copy(&tar, ctx.join("evil.tar")).unwrap();
        std::fs::write(ctx.join("Dockerfile"), "FROM benign:1\nADD evil.tar /x/y/\n").unwrap();
        refused(&format!("{name}: ADD"), &strata(&store, &["build", ctx.to_str().unwrap()]), entry);
        // diff reads the layer
        refused(&format!("{name}: diff"), &strata(&store, &["diff", "benign:1", &layout]), entry);
        // export dir: applies it
        let flat = dir.join(format!("{name}-flat"));
        refused(
            &format!("{name}: export"),
            &strata(&store, &["export", &layout, &format!("dir:{}", flat.display())]),
            entry,
        );
        assert!(!outside.exists() && !Path::new("/escape-abs").exists(), "{name}: escaped");
        assert!(
            !root.path("escape-link").exists() && !dir.join("escape").exists(),
            "{name}: escaped"
        );
    }
    let fsck = strata(&store, &["fsck"]);
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
}
