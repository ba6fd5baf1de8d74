//! COPY and ADD: Docker's path rules, owners, modes, ignore files, archives and URLs.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{can_run, env, history};
use strata_build::BuildError;

#[test]
fn scratch_copy_makes_one_layer_owned_by_root() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "ctx",
        &[("hello.txt", "hi\n"), ("Dockerfile", "FROM scratch\nCOPY hello.txt /\n")],
    );
    let out = e.build(&ctx, &["hello:1"]).unwrap();
    assert_eq!(out.image.manifest.layers().len(), 1);
    assert_eq!(out.layers_written, 1);
    let root = e.flatten(&out);
    let md = fs::metadata(root.path().join("hello.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
    assert_eq!(fs::read_to_string(root.path().join("hello.txt")).unwrap(), "hi\n");
    assert_eq!(history(&out), [("COPY hello.txt / # buildkit".to_string(), false)]);
    let env = &common::config_json(&out)["config"]["Env"];
    assert_eq!(
        env,
        &serde_json::json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    );
    assert_eq!(e.store.resolve("hello:1").unwrap().digest(), out.manifest.digest());
    // Same inputs, same image.
    let again = e.build(&ctx, &[]).unwrap();
    assert_eq!(again.manifest.digest(), out.manifest.digest());
}

#[test]
fn copy_path_rules() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1
COPY a.txt /new/dir/
COPY a.txt /renamed.txt
COPY src /opt/app
COPY *.md /docs/
COPY --chown=app a.txt /home/app/
COPY --chown=app:staff --chmod=0750 a.txt b.md /perm/
COPY a.txt /tmp/
COPY a.txt /etc
COPY link /via-link
COPY . /ctx/
WORKDIR /w
COPY a.txt rel/
";
    let ctx = e.context(
        "ctx",
        &[
            ("a.txt", "A"),
            ("b.md", "B"),
            ("c.md", "C"),
            ("src/x", "X"),
            ("src/sub/y", "Y"),
            ("secret.txt", "S"),
            ("logs/keep.log", "K"),
            ("logs/drop.log", "D"),
            (".dockerignore", "secret.txt\nlogs/*.log\n!logs/keep.log\n"),
            ("Dockerfile", recipe),
        ],
    );
    std::os::unix::fs::symlink("a.txt", ctx.join("link")).unwrap();
    fs::set_permissions(ctx.join("src"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("src/x", ctx.join("rel-link")).unwrap();
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    let r = root.path();
    let read = |p: &str| fs::read_to_string(r.join(p)).unwrap();
    assert_eq!(read("new/dir/a.txt"), "A");
    assert_eq!(fs::metadata(r.join("new/dir")).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(read("renamed.txt"), "A");
    assert_eq!(read("opt/app/x"), "X");
    assert_eq!(read("opt/app/sub/y"), "Y");
    let m = fs::metadata(r.join("opt/app")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755, "a new destination dir is 0755, as buildah makes it");
    assert!(!r.join("opt/app/src").exists(), "a directory's contents are copied, not the dir");
    assert_eq!(read("docs/b.md"), "B");
    assert_eq!(read("docs/c.md"), "C");
    let m = fs::metadata(r.join("home/app/a.txt")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1001), "a name takes the user's primary group");
    let m = fs::metadata(r.join("perm/b.md")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 50, 0o750));
    assert_eq!(fs::metadata(r.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
    assert_eq!(read("etc/a.txt"), "A", "an existing directory is copied into");
    assert_eq!(read("via-link"), "A", "the source symlink itself is followed");
    assert_eq!(read("ctx/a.txt"), "A");
    assert!(!r.join("ctx/secret.txt").exists(), ".dockerignore excludes");
    assert!(r.join("ctx/logs/keep.log").exists(), "! re-includes");
    assert!(!r.join("ctx/logs/drop.log").exists());
    assert_eq!(
        fs::read_link(r.join("ctx/rel-link")).unwrap(),
        Path::new("src/x"),
        "symlinks stay links"
    );
    assert_eq!(read("w/rel/a.txt"), "A", "relative to WORKDIR");
    // The /tmp layer carries /tmp with its 1777 mode, not a default.
    let layers = out.image.layer_digests().unwrap();
    let tmp_layer = layers[7];
    assert_eq!(e.layer_paths(&tmp_layer), ["tmp", "tmp/a.txt"]);
}

#[test]
fn missing_source_names_file_and_line() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context("ctx", &[("Dockerfile", "FROM base:1\nENV A=1\nCOPY nope.txt /\n")]);
    let err = e.build(&ctx, &["never:1"]).unwrap_err();
    match &err {
        BuildError::Step { line, .. } => assert_eq!(*line, 3),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        matches!(err.root_cause(), BuildError::SourceNotFound { path, .. } if path == "nope.txt")
    );
    assert!(err.to_string().contains("nope.txt"), "{err}");
    assert!(e.store.resolve("never:1").is_err(), "a failed build tags nothing");
    let ctx_ok = e.context("ok", &[("Dockerfile", "FROM base:1\n")]);
    let err = e.build(&ctx_ok, &["Bad Name"]).unwrap_err();
    assert!(matches!(err, BuildError::Store(_)), "{err}");

    let ctx = e.context("ctx2", &[("Dockerfile", "FROM base:1\nCOPY ../x /\n")]);
    let err = e.build(&ctx, &[]).unwrap_err();
    assert!(matches!(err.root_cause(), BuildError::SourceOutsideContext { .. }), "{err}");

    let ctx = e.context(
        "ctx3",
        &[("a", "1"), ("b", "2"), ("Dockerfile", "FROM base:1\nCOPY a b /file\n")],
    );
    let err = e.build(&ctx, &[]).unwrap_err();
    assert!(matches!(err.root_cause(), BuildError::DestinationNotDirectory { .. }), "{err}");
}

#[test]
fn copy_from_stage_and_target_builds_only_needed_stages() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1 AS unused
COPY nope /
FROM scratch AS files
COPY --chown=7:8 a.txt /out/a.txt
FROM base:1 AS final
COPY --from=files /out/ /copied/
COPY --from=0 /etc/motd /never
";
    let ctx = e.context("ctx", &[("a.txt", "A"), ("Dockerfile", recipe)]);
    let mut opts = strata_build::BuildOptions::new(&ctx);
    opts.target = Some("files".into());
    let (r, events) = e.build_with(&opts);
    let out = r.unwrap();
    let stages: Vec<usize> = events
        .iter()
        .filter_map(|ev| match ev {
            strata_build::BuildEvent::StageStart { stage, .. } => Some(*stage),
            _ => None,
        })
        .collect();
    assert_eq!(stages, [1]);
    assert_eq!(out.image.manifest.layers().len(), 1);

    // Final stage: needs stage 1 and stage 0 (which fails), so use a recipe without it.
    let recipe = "FROM scratch AS files
COPY --chown=7:8 a.txt /out/a.txt
FROM base:1
COPY --from=files /out/ /copied/
COPY --from=base:1 /etc/motd /motd-from-image
";
    let ctx = e.context("ctx2", &[("a.txt", "A"), ("Dockerfile", recipe)]);
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    let m = fs::metadata(root.path().join("copied/a.txt")).unwrap();
    assert_eq!((m.uid(), m.gid()), (7, 8), "--from keeps the source owner");
    assert!(root.path().join("bin/busybox").exists());
    assert_eq!(
        fs::read_to_string(root.path().join("motd-from-image")).unwrap(),
        "hello from base\n"
    );
}

fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    {
        let mut t = tar::Builder::new(&mut gz);
        let mut root = tar::Header::new_gnu();
        root.set_entry_type(tar::EntryType::Directory);
        root.set_size(0);
        root.set_mode(0o750);
        root.set_uid(5);
        root.set_gid(6);
        root.set_cksum();
        t.append_data(&mut root, "./", std::io::empty()).unwrap();
        for (p, c) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(c.len() as u64);
            h.set_mode(0o640);
            h.set_uid(5);
            h.set_gid(6);
            h.set_cksum();
            t.append_data(&mut h, p, c.as_bytes()).unwrap();
        }
        t.finish().unwrap();
    }
    gz.finish().unwrap()
}

#[test]
fn add_extracts_local_archives_unless_unpack_false() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM base:1\nADD app.tar.gz /srv/\nADD --unpack=false app.tar.gz /raw/\n",
        )],
    );
    fs::write(ctx.join("app.tar.gz"), tar_gz(&[("app/main.txt", "main"), ("VERSION", "1")]))
        .unwrap();
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    assert_eq!(fs::read_to_string(root.path().join("srv/app/main.txt")).unwrap(), "main");
    let m = fs::metadata(root.path().join("srv/VERSION")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (5, 6, 0o640));
    let m = fs::metadata(root.path().join("srv")).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o7777),
        (5, 0o750),
        "the archive's ./ entry describes the destination"
    );
    assert!(root.path().join("raw/app.tar.gz").is_file());
}

/// Serves `body` for every request, `count` times, on a local port.
fn serve(body: &'static [u8], count: usize) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(count) {
            let mut s = stream.unwrap();
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(body).unwrap();
        }
    });
    port
}

#[test]
fn add_url_verifies_checksum_before_use() {
    if !can_run() {
        return;
    }
    let e = env();
    const BODY: &[u8] = b"downloaded content\n";
    let port = serve(BODY, 2);
    let sum = strata_store::Digest::of_bytes(BODY);
    let good =
        format!("FROM base:1\nADD --checksum={sum} http://127.0.0.1:{port}/files/tool.txt /opt/\n");
    let ctx = e.context("good", &[("Dockerfile", &good)]);
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    let p = root.path().join("opt/tool.txt");
    assert_eq!(fs::read(&p).unwrap(), BODY);
    assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);

    let wrong = strata_store::Digest::of_bytes(b"other");
    let bad = format!(
        "FROM base:1\nADD --checksum={wrong} http://127.0.0.1:{port}/files/tool.txt /opt/\n"
    );
    let ctx = e.context("bad", &[("Dockerfile", &bad)]);
    let err = e.build(&ctx, &[]).unwrap_err();
    match err.root_cause() {
        BuildError::ChecksumMismatch { expected, found, .. } => {
            assert_eq!(expected, &wrong.to_string());
            assert_eq!(found, &sum);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn heredoc_copy_writes_a_file() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "ctx",
        &[("Dockerfile", "FROM base:1\nARG WHO=world\nCOPY <<EOF /greeting\nhello $WHO\nEOF\n")],
    );
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    assert_eq!(fs::read_to_string(root.path().join("greeting")).unwrap(), "hello world\n");
}

#[test]
fn dockerfile_specific_ignore_file_wins() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "ctx",
        &[
            ("a", "A"),
            ("b", "B"),
            (".dockerignore", "a\n"),
            ("build.Dockerfile.dockerignore", "b\n"),
            ("build.Dockerfile", "FROM scratch\nCOPY . /\n"),
        ],
    );
    let mut opts = strata_build::BuildOptions::new(&ctx);
    opts.recipe_path = ctx.join("build.Dockerfile");
    let out = e.build_with(&opts).0.unwrap();
    let root = e.flatten(&out);
    assert!(root.path().join("a").exists());
    assert!(!root.path().join("b").exists());
}

#[test]
fn copy_exclude_and_parents() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM scratch
COPY --exclude=*.tmp --exclude=cache app /app/
COPY --parents pkgs/*/manifest.json /meta/
COPY --parents ./root/./deep/file.txt /pivot/
";
    let ctx = e.context(
        "ctx",
        &[
            ("app/main.rs", "m"),
            ("app/scratch.tmp", "t"),
            ("app/cache/blob", "c"),
            ("app/sub/keep.txt", "k"),
            ("pkgs/one/manifest.json", "1"),
            ("pkgs/two/manifest.json", "2"),
            ("pkgs/two/other.json", "x"),
            ("root/deep/file.txt", "f"),
            ("Dockerfile", recipe),
        ],
    );
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    let r = root.path();
    assert!(r.join("app/main.rs").exists() && r.join("app/sub/keep.txt").exists());
    assert!(!r.join("app/scratch.tmp").exists());
    assert!(!r.join("app/cache").exists());
    assert!(r.join("meta/pkgs/one/manifest.json").exists());
    assert!(r.join("meta/pkgs/two/manifest.json").exists());
    assert!(!r.join("meta/pkgs/two/other.json").exists());
    assert!(r.join("pivot/deep/file.txt").exists(), "the path after /./ is kept");
}
