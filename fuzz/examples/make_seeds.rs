//! Writes the binary seed corpora under `fuzz/corpus/` that cannot be copied from `testdata/`:
//! layer tars made by strata's own `LayerWriter` (plus a few hostile ones made by hand, like
//! `crates/strata-layer/tests/malicious.rs` does), manifests, indexes and configs, and registry
//! header values. Run it from `fuzz/` with `cargo run --example make_seeds` (stable Rust is
//! enough) after changing what it writes. The writer's tars follow the tree's timestamps, so a
//! rerun may change them slightly.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use strata_layer::{diff, scan, Compression, LayerWriter};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(name), bytes).expect("seed");
}

/// A small tree with every kind of entry a layer holds.
fn tree(root: &Path) {
    fs::create_dir_all(root.join("etc/ssl")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("etc/motd"), b"hello\n").unwrap();
    fs::write(root.join("etc/ssl/empty"), b"").unwrap();
    fs::write(root.join("usr/bin/tool"), vec![0x7f; 700]).unwrap();
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
    symlink("../etc/motd", root.join("usr/motd")).unwrap();
    let long = format!("usr/{}", "d".repeat(120));
    fs::create_dir_all(root.join(&long)).unwrap();
    fs::write(root.join(long).join(format!("{}\nnewline", "f".repeat(90))), b"pax").unwrap();
    let _ = xattr::set(root.join("etc/motd"), "user.note", b"a\nb=c");
}

fn layer(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    LayerWriter::new(Compression::None).epoch(0).write_dir(dir, &mut out).expect("layer");
    out
}

/// One raw ustar entry, no checks on the name (for hostile seeds).
fn raw(out: &mut Vec<u8>, name: &[u8], typeflag: u8, link: &[u8], data: &[u8]) {
    let octal = |f: &mut [u8], v: u64| {
        let w = f.len() - 1;
        f[..w].copy_from_slice(format!("{v:0w$o}").as_bytes());
    };
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], 0o755);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], data.len() as u64);
    octal(&mut h[136..148], 0);
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0);
    octal(&mut h[337..345], 0);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

/// (name, type flag, link target, data)
type RawEntry<'a> = (&'a [u8], u8, &'a [u8], &'a [u8]);

fn hostile(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, t, link, data) in entries {
        raw(&mut out, name, *t, link, data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn layers() {
    let t = tempfile::tempdir().unwrap();
    let (lower, upper) = (t.path().join("lower"), t.path().join("upper"));
    tree(&lower);
    tree(&upper);
    // upper: a file removed (whiteout), a file changed, a dir replaced by a file.
    fs::remove_file(upper.join("etc/ssl/empty")).unwrap();
    fs::write(upper.join("etc/motd"), b"changed\n").unwrap();
    fs::remove_dir_all(upper.join("usr/bin")).unwrap();
    fs::write(upper.join("usr/bin"), b"now a file").unwrap();
    let full = layer(&lower);
    let changes = diff(&scan(&lower).unwrap(), &scan(&upper).unwrap()).unwrap();
    let mut delta = Vec::new();
    LayerWriter::new(Compression::None).epoch(0).write(&changes, &upper, &mut delta).unwrap();
    let mut gz = Vec::new();
    LayerWriter::new(Compression::Gzip).epoch(0).write_dir(&lower, &mut gz).unwrap();

    let evil: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", hostile(&[(b"../x", b'0', b"", b"evil")])),
        ("absolute", hostile(&[(b"/etc/x", b'0', b"", b"evil")])),
        ("symlink-up", hostile(&[(b"l", b'2', b"..", b""), (b"l/x", b'0', b"", b"evil")])),
        ("symlink-abs", hostile(&[(b"l", b'2', b"/", b""), (b"l/x", b'0', b"", b"in root")])),
        ("hardlink-out", hostile(&[(b"h", b'1', b"../canary", b"")])),
        (
            "whiteout-up",
            hostile(&[(b".wh...", b'0', b"", b""), (b"d/.wh..wh..opq", b'0', b"", b"")]),
        ),
        ("fifo-then-file", hostile(&[(b"p", b'6', b"", b""), (b"p", b'0', b"", b"data")])),
        (
            "dir-then-symlink",
            hostile(&[
                (b"d/", b'5', b"", b""),
                (b"d", b'2', b"..", b""),
                (b"d/x", b'0', b"", b"e"),
            ]),
        ),
    ];
    // GNU base-256 size 2^64 - 1 followed by a header a short skip would read
    // (regression_tarread_base256_size_near_u64_max).
    let mut huge = hostile(&[(b"big", b'0', b"", b""), (b"smuggled", b'0', b"", b"")]);
    huge[124..136]
        .copy_from_slice(&[0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    huge[148..156].copy_from_slice(b"        ");
    let sum: u32 = huge[..512].iter().map(|&b| u32::from(b)).sum();
    huge[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut evil = evil;
    evil.push(("base256-size-near-u64-max", huge));
    for target in ["tarread", "apply"] {
        // The first byte is a control byte: for both, 1 fixes checksums (tarread) or means
        // privileged (apply); 8 fixes checksums for apply.
        let prefix: &[u8] = if target == "apply" { b"\x09" } else { b"\x01" };
        let with = |b: &[u8]| [prefix, b].concat();
        write(target, "writer-full.tar", &with(&full));
        write(target, "writer-delta-whiteouts.tar", &with(&delta));
        if target == "apply" {
            write(target, "writer-full.tar.gz", &with(&gz));
        }
        for (name, bytes) in &evil {
            write(target, &format!("hostile-{name}.tar"), &with(bytes));
        }
    }
}

const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin:/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/","Labels":{"a":"b"}},"rootfs":{"type":"layers","diff_ids":["sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"COPY . /"}]}"#;
const LAYER: &str = r#"{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef","size":1024}"#;

fn manifests() {
    // 0xff alone (not U+00FF, which is two bytes in UTF-8) separates the parts.
    let sep = |parts: &[&str]| parts.iter().map(|p| p.as_bytes()).collect::<Vec<_>>().join(&0xffu8);
    let oci = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$CONFIG_DIGEST","size":$CONFIG_SIZE}},"layers":[{LAYER}],"annotations":{{"org.opencontainers.image.created":"1970-01-01T00:00:00Z"}}}}"#
    );
    let docker = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1469,"digest":"sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":3623807,"digest":"sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"}]}"#;
    let index = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef","size":7143,"platform":{"architecture":"amd64","os":"linux"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":7682,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}"#;
    let list = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,"digest":"sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef","platform":{"architecture":"arm","os":"linux","variant":"v7"}},{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,"digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","platform":{"architecture":"amd64","os":"linux"}}]}"#;
    let untyped = r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$CONFIG_DIGEST","size":$CONFIG_SIZE},"layers":[]}"#;
    write("manifest", "oci-manifest", &sep(&[&oci, CONFIG]));
    write(
        "manifest",
        "docker-manifest",
        &sep(&[docker, CONFIG, "application/vnd.docker.distribution.manifest.v2+json"]),
    );
    write("manifest", "oci-index", &sep(&[index, "{}", "application/vnd.oci.image.index.v1+json"]));
    write("manifest", "docker-list", &sep(&[list]));
    write("manifest", "untyped-manifest", &sep(&[untyped, CONFIG]));
}

fn registry() {
    let seeds: &[(&str, u8, &str)] = &[
        ("challenge-basic", 0, r#"Basic realm="Registry Realm""#),
        (
            "challenge-bearer",
            0,
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        ),
        ("challenge-two", 0, r#"Bearer realm="https://a/t", service="s\"q", Basic realm="b""#),
        ("challenge-unquoted", 0, "bearer realm=http://x/t,scope=repository:a/b:pull,push"),
        ("range-upload", 1, "0-1048575"),
        ("range-empty", 1, "0--1"),
        ("range-bytes", 1, "bytes=0-4"),
        ("content-range", 1, "bytes 100-199/200"),
        ("content-range-unknown", 1, "bytes */200"),
        ("location-relative", 2, "/v2/team/app/blobs/uploads/4b1e?_state=abc"),
        ("location-absolute", 2, "https://storage.example/upload/x?sig=1&exp=2"),
        ("location-bare", 2, "v2/team/app/blobs/uploads/4b1e"),
    ];
    for (name, which, value) in seeds {
        write("registry", name, &[&[*which][..], value.as_bytes()].concat());
    }
}

fn main() {
    layers();
    manifests();
    registry();
}
