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

    // BuildKit's empty-wildcard rule: a wildcard matching nothing is skipped beside a source
    // that gives something, and "not found" only when nothing is found at all.
    let recipe = "FROM base:1\nCOPY none*.txt one.txt /got/\nCOPY one.txt other*.md /got2/\n";
    let ctx = e.context("wild", &[("Dockerfile", recipe), ("one.txt", "1")]);
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    assert_eq!(fs::read_to_string(root.path().join("got/one.txt")).unwrap(), "1");
    assert_eq!(fs::read_to_string(root.path().join("got2/one.txt")).unwrap(), "1");
    let recipe = "FROM base:1\nCOPY none*.txt nada?.md /got/\n";
    let ctx = e.context("wild2", &[("Dockerfile", recipe), ("one.txt", "1")]);
    let err = e.build(&ctx, &[]).unwrap_err();
    assert!(
        matches!(err.root_cause(), BuildError::SourceNotFound { path, .. } if path == "none*.txt"),
        "{err}"
    );

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

/// Issue #19 point 7: two stages with one name are BuildKit's `DuplicateStageName` warning,
/// not an error, and the later stage is the one `--from` copies from; a stage name only
/// buildah accepts (`1files`) builds too.
#[test]
fn duplicate_stage_name_copies_from_the_later_stage() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM scratch AS files
COPY a.txt /x
FROM scratch AS Files
COPY b.txt /x
FROM scratch AS 1files
COPY a.txt /y
FROM scratch
COPY --from=files /x /got
COPY --from=1FILES /y /got-y
";
    let ctx = e.context("ctx", &[("a.txt", "A"), ("b.txt", "B"), ("Dockerfile", recipe)]);
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    assert_eq!(fs::read_to_string(root.path().join("got")).unwrap(), "B");
    assert_eq!(fs::read_to_string(root.path().join("got-y")).unwrap(), "A");
}

/// Issue #19 point 5: symbolic `--chmod` (Dockerfile 1.14) is applied per entry to its own
/// mode: `X` makes directories and already-executable files executable, not plain files;
/// `g=u` copies bits; heredoc sources start from 0644; octal still replaces every bit.
#[test]
fn symbolic_chmod_applies_per_entry() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM scratch
COPY --chmod=u=rwX,go=rX tree/ /app/
COPY --chmod=+x tree/data.txt /plus-x
COPY --chmod=g=u,o= tree/run.sh /g-eq-u
COPY --chmod=a+X <<EOF /heredoc
echo hi
EOF
COPY --chmod=0640 tree/run.sh /octal
";
    let ctx = e.context(
        "ctx",
        &[
            ("tree/run.sh", "#!/bin/sh\n"),
            ("tree/data.txt", "data"),
            ("tree/sub/deep.txt", "deep"),
            ("Dockerfile", recipe),
        ],
    );
    let set = |p: &str, mode: u32| {
        fs::set_permissions(ctx.join(p), fs::Permissions::from_mode(mode)).unwrap()
    };
    set("tree/run.sh", 0o750);
    set("tree/data.txt", 0o600);
    set("tree/sub/deep.txt", 0o640);
    set("tree/sub", 0o700);
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    let mode = |p: &str| fs::symlink_metadata(root.path().join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("app/run.sh"), 0o755, "already executable: X applies");
    assert_eq!(mode("app/data.txt"), 0o644, "plain file: X does not apply");
    assert_eq!(mode("app/sub"), 0o755, "directory: X applies");
    assert_eq!(mode("app/sub/deep.txt"), 0o644);
    assert_eq!(mode("plus-x"), 0o711);
    assert_eq!(mode("g-eq-u"), 0o770);
    assert_eq!(mode("heredoc"), 0o644, "a heredoc file starts 0644, not executable");
    assert_eq!(mode("octal"), 0o640);
}

/// A `--chmod` that is neither octal nor symbolic fails the parse, naming the line, before
/// anything is built.
#[test]
fn invalid_chmod_is_a_parse_error_naming_the_line() {
    let e = env();
    let ctx =
        e.context("ctx", &[("a", "a"), ("Dockerfile", "FROM scratch\nCOPY --chmod=u+q a /a\n")]);
    let before = e.store.list_blobs().unwrap();
    let err = e.build(&ctx, &[]).unwrap_err();
    match &err {
        BuildError::Parse { source, .. } => {
            assert_eq!(source.span.line, 2);
            assert!(source.to_string().contains("invalid --chmod value 'u+q'"), "{source}");
        }
        other => panic!("expected a parse error, got {other}"),
    }
    assert_eq!(e.store.list_blobs().unwrap(), before, "nothing written");
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
    let sum = strata_types::Digest::of_bytes(BODY);
    let good =
        format!("FROM base:1\nADD --checksum={sum} http://127.0.0.1:{port}/files/tool.txt /opt/\n");
    let ctx = e.context("good", &[("Dockerfile", &good)]);
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    let p = root.path().join("opt/tool.txt");
    assert_eq!(fs::read(&p).unwrap(), BODY);
    assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);

    let wrong = strata_types::Digest::of_bytes(b"other");
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

/// One entry of a test archive.
enum TarEntry<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// A tar with a `./` root entry (0750, 5:6) and `entries`, all owned 5:6.
fn tar_bytes(entries: &[TarEntry<'_>]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(mode);
        h.set_uid(5);
        h.set_gid(6);
        h.set_mtime(1_000_000);
        h
    };
    let mut root = header(tar::EntryType::Directory, 0o750);
    root.set_cksum();
    t.append_data(&mut root, "./", std::io::empty()).unwrap();
    for e in entries {
        match e {
            TarEntry::Dir(p, mode) => {
                let mut h = header(tar::EntryType::Directory, *mode);
                t.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            TarEntry::File(p, mode, content) => {
                let mut h = header(tar::EntryType::Regular, *mode);
                h.set_size(content.len() as u64);
                t.append_data(&mut h, p, content.as_bytes()).unwrap();
            }
            TarEntry::Symlink(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777);
                t.append_link(&mut h, p, target).unwrap();
            }
            TarEntry::Hardlink(p, target) => {
                let mut h = header(tar::EntryType::Link, 0o644);
                t.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    t.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn bzip2(bytes: &[u8]) -> Vec<u8> {
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    bz.write_all(bytes).unwrap();
    bz.finish().unwrap()
}

fn xz(bytes: &[u8]) -> Vec<u8> {
    let mut x = liblzma::write::XzEncoder::new(Vec::new(), 6);
    x.write_all(bytes).unwrap();
    x.finish().unwrap()
}

fn app_archive() -> Vec<u8> {
    tar_bytes(&[
        TarEntry::Dir("app", 0o755),
        TarEntry::File("app/main.txt", 0o640, "main"),
        TarEntry::Hardlink("app/same.txt", "app/main.txt"),
        TarEntry::File("VERSION", 0o644, "1"),
    ])
}

#[test]
fn add_extracts_bzip2_and_xz_archives_by_magic_bytes() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM base:1\nADD app.tar.bz2 /bz/\nADD payload.bin /xz/\n\
             ADD notes.txt.xz fake.tar.gz text.gz /raw/\n",
        )],
    );
    fs::write(ctx.join("app.tar.bz2"), bzip2(&app_archive())).unwrap();
    // Recognized by content: the name says nothing.
    fs::write(ctx.join("payload.bin"), xz(&app_archive())).unwrap();
    // Compressed but not a tar, and named like an archive but not one: copied as they are.
    let notes = xz(b"just some notes\n");
    fs::write(ctx.join("notes.txt.xz"), &notes).unwrap();
    fs::write(ctx.join("fake.tar.gz"), "not gzip at all\n").unwrap();
    let text = gzip(b"plain text, not a tar\n");
    fs::write(ctx.join("text.gz"), &text).unwrap();
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    for dir in ["bz", "xz"] {
        let main = root.path().join(dir).join("app/main.txt");
        assert_eq!(fs::read_to_string(&main).unwrap(), "main", "{dir}");
        let m = fs::metadata(&main).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (5, 6, 0o640), "{dir}");
        let same = fs::metadata(root.path().join(dir).join("app/same.txt")).unwrap();
        assert_eq!(same.ino(), m.ino(), "{dir}: the archive's hardlink stays one");
        assert_eq!(fs::read_to_string(root.path().join(dir).join("VERSION")).unwrap(), "1");
        let d = fs::metadata(root.path().join(dir)).unwrap();
        assert_eq!((d.uid(), d.mode() & 0o7777), (5, 0o750), "{dir}: ./ entry applies");
    }
    assert_eq!(fs::read(root.path().join("raw/notes.txt.xz")).unwrap(), notes);
    assert_eq!(fs::read(root.path().join("raw/fake.tar.gz")).unwrap(), b"not gzip at all\n");
    assert_eq!(fs::read(root.path().join("raw/text.gz")).unwrap(), text);
}

#[test]
fn add_chown_applies_to_extracted_files() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM base:1\nADD --chown=33:44 app.tar.xz /srv/\nADD app.tar.xz /plain/\n",
        )],
    );
    let archive = tar_bytes(&[
        TarEntry::Dir("app", 0o755),
        TarEntry::File("app/main.txt", 0o640, "main"),
        TarEntry::File("app/tool", 0o4755, "#!/bin/sh\n"),
        TarEntry::Symlink("app/link", "main.txt"),
        TarEntry::Hardlink("app/hard", "app/tool"),
    ]);
    fs::write(ctx.join("app.tar.xz"), xz(&archive)).unwrap();
    let out = e.build(&ctx, &[]).unwrap();
    let layers = out.image.layer_digests().unwrap();
    let chowned = e.layer_entries(&layers[1]);
    let paths: Vec<&str> = chowned.iter().map(|x| x.path.as_str()).collect();
    assert_eq!(
        paths,
        ["srv", "srv/app", "srv/app/hard", "srv/app/link", "srv/app/main.txt", "srv/app/tool"]
    );
    for entry in &chowned {
        assert_eq!((entry.uid, entry.gid), (33, 44), "{entry:?}");
    }
    let mode = |path: &str| chowned.iter().find(|x| x.path == path).unwrap().mode & 0o7777;
    assert_eq!(mode("srv"), 0o750, "the ./ entry's mode, the --chown owner");
    assert_eq!(mode("srv/app/main.txt"), 0o640);
    assert_eq!(mode("srv/app/hard"), 0o4755, "chown must not clear setuid");
    let hard = chowned.iter().find(|x| x.path == "srv/app/tool").unwrap();
    assert_eq!((hard.kind, hard.link.as_deref()), (tar::EntryType::Link, Some("srv/app/hard")));
    for entry in e.layer_entries(&layers[2]) {
        assert_eq!((entry.uid, entry.gid), (5, 6), "without --chown: {entry:?}");
    }
}

#[test]
fn add_chown_applies_to_url_downloads() {
    if !can_run() {
        return;
    }
    let e = env();
    const BODY: &[u8] = b"downloaded\n";
    let port = serve(BODY, 1);
    let recipe =
        format!("FROM base:1\nADD --chown=app http://127.0.0.1:{port}/dl/tool.txt /opt/\n");
    let ctx = e.context("ctx", &[("Dockerfile", &recipe)]);
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    let m = fs::metadata(root.path().join("opt/tool.txt")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o600));
}

#[test]
fn copy_keeps_hardlinks_within_one_source() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM base:1\nCOPY hl/ /a/\nCOPY hl/one hl/two /sep/\nCOPY --chown=7:8 hl /c/\n",
            ),
            ("hl/one", "same\n"),
            ("hl/other", "other\n"),
        ],
    );
    fs::create_dir(ctx.join("hl/sub")).unwrap();
    fs::hard_link(ctx.join("hl/one"), ctx.join("hl/two")).unwrap();
    fs::hard_link(ctx.join("hl/one"), ctx.join("hl/sub/three")).unwrap();
    let out = e.build(&ctx, &[]).unwrap();
    let layers = out.image.layer_digests().unwrap();
    let kinds = |i: usize| -> Vec<(String, tar::EntryType, Option<String>, u64)> {
        e.layer_entries(&layers[i])
            .into_iter()
            .filter(|x| x.kind != tar::EntryType::Directory)
            .map(|x| (x.path, x.kind, x.link, x.uid))
            .collect()
    };
    use tar::EntryType::{Link, Regular};
    let link = |p: &str| Some(p.to_string());
    assert_eq!(
        kinds(1),
        [
            ("a/one".into(), Regular, None, 0),
            ("a/other".into(), Regular, None, 0),
            ("a/sub/three".into(), Link, link("a/one"), 0),
            ("a/two".into(), Link, link("a/one"), 0),
        ]
    );
    assert_eq!(
        kinds(2),
        [("sep/one".into(), Regular, None, 0), ("sep/two".into(), Regular, None, 0)],
        "separate sources are separate files"
    );
    assert_eq!(
        kinds(3),
        [
            ("c/one".into(), Regular, None, 7),
            ("c/other".into(), Regular, None, 7),
            ("c/sub/three".into(), Link, link("c/one"), 7),
            ("c/two".into(), Link, link("c/one"), 7),
        ]
    );
    let root = e.flatten(&out);
    let ino = |p: &str| fs::metadata(root.path().join(p)).unwrap().ino();
    assert_eq!(ino("a/one"), ino("a/two"));
    assert_ne!(ino("sep/one"), ino("sep/two"));
}

#[test]
fn copy_recreates_fifos_and_devices() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "ctx",
        &[("Dockerfile", "FROM base:1\nCOPY special/ /s/\n"), ("special/file", "f\n")],
    );
    let fifo = ctx.join("special/pipe");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    fs::set_permissions(&fifo, fs::Permissions::from_mode(0o640)).unwrap();
    let null = rustix::fs::makedev(1, 3);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        ctx.join("special/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        null,
    )
    .unwrap();
    let out = e.build(&ctx, &[]).unwrap();
    let layers = out.image.layer_digests().unwrap();
    let entries = e.layer_entries(&layers[1]);
    let get = |p: &str| entries.iter().find(|x| x.path == p).unwrap_or_else(|| panic!("{p}"));
    assert_eq!((get("s/pipe").kind, get("s/pipe").mode & 0o7777), (tar::EntryType::Fifo, 0o640));
    assert_eq!(get("s/null").kind, tar::EntryType::Char);
    let root = e.flatten(&out);
    let m = fs::symlink_metadata(root.path().join("s/null")).unwrap();
    assert_eq!(m.rdev(), null);
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(root.path().join("s/pipe")).unwrap().file_type().is_fifo());
}

/// The snapshot a COPY leaves behind (its staging tree, adopted) must be indistinguishable from
/// the same layer unpacked from its blob: later steps see one or the other depending on the
/// cache, and must not see a difference.
#[test]
fn adopted_copy_snapshot_equals_the_unpacked_layer() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "ctx",
        &[
            ("Dockerfile", "FROM base:1\nCOPY --chmod=0640 tree /t/\nCOPY tree/a /single\n"),
            ("tree/a", "a\n"),
            ("tree/sub/b", "b\n"),
        ],
    );
    std::os::unix::fs::symlink("a", ctx.join("tree/link")).unwrap();
    // An mtime above the clamp and one below it, with nanoseconds.
    let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::new(2_000_000_000, 5);
    fs::File::options().write(true).open(ctx.join("tree/a")).unwrap().set_modified(t).unwrap();
    let mut opts = strata_build::BuildOptions::new(&ctx);
    opts.timestamp = 1_700_000_000;
    let out = e.build_with(&opts).0.unwrap();
    let listing = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .into_iter()
            .map(|en| {
                let en = en.unwrap();
                let m = en.path().symlink_metadata().unwrap();
                let content = if m.is_file() { fs::read(en.path()).unwrap() } else { Vec::new() };
                format!(
                    "{} {:o} {}:{} {} {} {:?} {:?}",
                    en.path().strip_prefix(dir).unwrap().display(),
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.mtime(),
                    m.mtime_nsec(),
                    fs::read_link(en.path()).ok(),
                    content
                )
            })
            .collect();
        v.sort();
        v
    };
    let diff_ids = common::config_json(&out)["rootfs"]["diff_ids"].clone();
    for diff_id in diff_ids.as_array().unwrap().iter().skip(1) {
        let digest: strata_types::Digest = diff_id.as_str().unwrap().parse().unwrap();
        let snap = e.store.snapshots().get(&digest).unwrap();
        let adopted = listing(&snap);
        assert!(!adopted.is_empty());
        fs::remove_dir_all(&snap).unwrap();
        // A cached rebuild unpacks the snapshot from the blob again.
        let again = e.build_with(&opts).0.unwrap();
        assert_eq!(again.manifest.digest(), out.manifest.digest());
        assert_eq!(listing(&snap), adopted, "snapshot of {digest}");
    }
}

#[test]
fn an_excluded_directory_appears_only_when_something_below_it_is_included() {
    if !can_run() {
        return;
    }
    // fsutil (BuildKit) walks into an excluded directory when an exception might match below
    // it, but emits the directory only once something below it is included.
    let e = env();
    let ctx = e.context(
        "ctx",
        &[
            ("Dockerfile", "FROM base:1\nCOPY . /ctx/\n"),
            (".dockerignore", "*\n!*/sub1*\n"),
            ("dir1/sub1/f", "f"),
            ("dir1/sub2/g", "g"),
            ("dir2/other/h", "h"),
            ("top.txt", "t"),
        ],
    );
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    let r = root.path().join("ctx");
    assert_eq!(fs::read_to_string(r.join("dir1/sub1/f")).unwrap(), "f");
    for gone in ["dir1/sub2", "dir2", "top.txt", "Dockerfile"] {
        assert!(!r.join(gone).exists(), "{gone} is excluded and holds nothing included");
    }
}

#[test]
fn later_sources_merge_into_and_replace_what_earlier_ones_staged() {
    if !can_run() {
        return;
    }
    // Two directory sources into one destination: the second merges into the directories the
    // first staged and replaces its entries of the same name, a file by a directory and a
    // directory by a file included (Docker copies the sources in order).
    let e = env();
    let ctx = e.context(
        "ctx",
        &[
            ("Dockerfile", "FROM base:1\nCOPY a/ b/ /dest/\n"),
            ("a/same.txt", "from a\n"),
            ("a/only-a.txt", "a\n"),
            ("a/dir/inner-a", "a\n"),
            ("a/becomes-dir", "a file in a\n"),
            ("a/becomes-file/x", "a dir in a\n"),
            ("b/same.txt", "from b\n"),
            ("b/dir/inner-b", "b\n"),
            ("b/becomes-dir/y", "a dir in b\n"),
            ("b/becomes-file", "a file in b\n"),
        ],
    );
    fs::set_permissions(ctx.join("b/same.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    let d = root.path().join("dest");
    let read = |p: &str| fs::read_to_string(d.join(p)).unwrap();
    assert_eq!(read("same.txt"), "from b\n");
    assert_eq!(fs::metadata(d.join("same.txt")).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(read("only-a.txt"), "a\n");
    assert_eq!((read("dir/inner-a"), read("dir/inner-b")), ("a\n".into(), "b\n".into()));
    assert_eq!(read("becomes-dir/y"), "a dir in b\n");
    assert_eq!(read("becomes-file"), "a file in b\n");
}
