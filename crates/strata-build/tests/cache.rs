//! The step cache: keys from content (DESIGN.md decision 6). Each part of a key, changed,
//! misses; anything else, changed, hits; the context digest cache avoids re-reading files;
//! `--no-cache`, `--no-cache-filter`; gc keeps the cache while its layers are reachable.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{can_run, env, Env};
use strata_build::{BuildEvent, BuildOptions, BuildOutput};

const RECIPE: &str = "FROM base:1
ARG V=1
COPY src/ /app/
RUN echo $V > /v && cat /app/a.txt > /seen
COPY later.txt /later.txt
";

/// For each event `pick` takes (its step and a value), that step's text and the value, in
/// order.
fn by_step<T>(
    events: &[BuildEvent],
    pick: impl Fn(&BuildEvent) -> Option<((usize, usize), T)>,
) -> Vec<(String, T)> {
    let mut texts = std::collections::HashMap::new();
    let mut out = Vec::new();
    for e in events {
        if let BuildEvent::StepStart { stage, step, text, .. } = e {
            texts.insert((*stage, *step), text.clone());
        }
        if let Some((at, value)) = pick(e) {
            out.push((texts[&at].clone(), value));
        }
    }
    out
}

/// The texts of the steps that came from the cache, in order.
fn cached_steps(events: &[BuildEvent]) -> Vec<String> {
    let cached = |e: &BuildEvent| match e {
        BuildEvent::StepCached { stage, step } => Some(((*stage, *step), ())),
        _ => None,
    };
    by_step(events, cached).into_iter().map(|(text, ())| text).collect()
}

fn context(e: &Env) -> std::path::PathBuf {
    let ctx = e.context(
        "ctx",
        &[
            ("Dockerfile", RECIPE),
            (".dockerignore", "src/*.log\n"),
            ("src/a.txt", "alpha\n"),
            ("src/b.txt", "beta\n"),
            ("src/sub/c.txt", "gamma\n"),
            ("src/ignored.log", "noise\n"),
            ("later.txt", "later\n"),
            ("other.txt", "unrelated\n"),
        ],
    );
    std::os::unix::fs::symlink("a.txt", ctx.join("src/link")).unwrap();
    ctx
}

fn build(e: &Env, opts: &BuildOptions) -> (BuildOutput, Vec<String>) {
    let (r, events) = e.build_with(opts);
    let out = r.unwrap();
    let cached = cached_steps(&events);
    assert_eq!(out.layers_reused, cached.len());
    assert_eq!(out.steps.iter().filter(|s| s.cached).count(), cached.len());
    (out, cached)
}

fn set_mtime(path: &Path, secs: i64) {
    let t = rustix::fs::Timespec { tv_sec: secs, tv_nsec: 0 };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps { last_access: t, last_modification: t },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

const ALL: [&str; 3] =
    ["COPY src/ /app/", "RUN echo $V > /v && cat /app/a.txt > /seen", "COPY later.txt /later.txt"];

#[test]
fn unchanged_inputs_hit_and_irrelevant_changes_still_hit() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = context(&e);
    let opts = BuildOptions::new(&ctx);
    let (first, cached) = build(&e, &opts);
    assert!(cached.is_empty());
    assert_eq!(first.layers_written, 3);

    let same = |what: &str| {
        let (out, cached) = build(&e, &opts);
        assert_eq!(cached, ALL, "{what}");
        assert_eq!(out.layers_written, 0, "{what}");
        assert_eq!(out.bytes_written, 0, "{what}");
        assert_eq!(out.manifest.digest(), first.manifest.digest(), "{what}");
    };
    same("no change");
    set_mtime(&ctx.join("src/a.txt"), 1_000_000);
    set_mtime(&ctx.join("src/sub"), 2_000_000);
    same("mtime-only touch of a source file and dir");
    fs::remove_file(ctx.join("other.txt")).unwrap();
    fs::write(ctx.join("zzz.txt"), "new\n").unwrap();
    fs::write(ctx.join("other.txt"), "unrelated, changed\n").unwrap();
    same("files outside the sources recreated, added, changed");
    fs::write(ctx.join("src/ignored.log"), "more noise\n").unwrap();
    fs::write(ctx.join("src/new.log"), "ignored too\n").unwrap();
    same("ignored files changed and added");
    // Recreating a source file with the same content (new inode, ctime) is a hit too.
    fs::remove_file(ctx.join("src/b.txt")).unwrap();
    fs::write(ctx.join("src/b.txt"), "beta\n").unwrap();
    same("source recreated with the same bytes");
}

#[test]
fn each_part_of_a_key_misses() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = context(&e);
    let mut opts = BuildOptions::new(&ctx);
    let (first, _) = build(&e, &opts);
    let last = std::cell::RefCell::new(first);
    let expect = |e: &Env, opts: &BuildOptions, what: &str, cached: &[&str]| {
        let (out, got) = build(e, opts);
        assert_eq!(got, cached, "{what}");
        assert_ne!(out.manifest.digest(), last.borrow().manifest.digest(), "{what}");
        *last.borrow_mut() = out;
    };
    fs::write(ctx.join("src/a.txt"), "ALPHA\n").unwrap();
    expect(&e, &opts, "source bytes", &[]);
    let root = e.flatten(&last.borrow());
    assert_eq!(fs::read_to_string(root.path().join("seen")).unwrap(), "ALPHA\n");

    fs::set_permissions(ctx.join("src/b.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    expect(&e, &opts, "source mode", &[]);

    fs::remove_file(ctx.join("src/link")).unwrap();
    std::os::unix::fs::symlink("b.txt", ctx.join("src/link")).unwrap();
    expect(&e, &opts, "symlink target", &[]);

    fs::write(ctx.join("src/sub/d.txt"), "delta\n").unwrap();
    expect(&e, &opts, "a new file in a source dir", &[]);

    fs::write(ctx.join("later.txt"), "later, changed\n").unwrap();
    expect(&e, &opts, "the last COPY's source", &ALL[..2]);

    opts.build_args.set("V", "2");
    expect(&e, &opts, "a build arg the RUN sees", &ALL[..1]);

    let recipe = RECIPE.replace("COPY src/ /app/", "COPY --chown=app src/ /app/");
    fs::write(ctx.join("Dockerfile"), recipe).unwrap();
    expect(&e, &opts, "--chown", &[]);

    let recipe = RECIPE.replace("COPY later.txt /later.txt", "COPY later.txt /later2.txt");
    fs::write(ctx.join("Dockerfile"), recipe).unwrap();
    expect(&e, &opts, "dest", &["COPY src/ /app/", "RUN echo $V > /v && cat /app/a.txt > /seen"]);

    let recipe = RECIPE.replace("COPY later.txt /later.txt", "COPY <<EOF /later2.txt\none\nEOF");
    fs::write(ctx.join("Dockerfile"), &recipe).unwrap();
    expect(&e, &opts, "heredoc", &ALL[..2]);
    fs::write(ctx.join("Dockerfile"), recipe.replace("one", "two")).unwrap();
    expect(&e, &opts, "heredoc content", &ALL[..2]);

    // Another base image (retagged): every step misses.
    let rootfs = e.dir.path().join("base2");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let opts2 = strata_image::ImportOptions::default();
    let imported = strata_image::import_tree(&e.store, &rootfs, &opts2).unwrap();
    e.store.tag("base:1", &imported.manifest).unwrap();
    expect(&e, &opts, "base image", &[]);
}

#[test]
fn timestamp_and_compression_are_in_the_key() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = context(&e);
    let mut opts = BuildOptions::new(&ctx);
    let (first, _) = build(&e, &opts);
    opts.timestamp = 1_700_000_000;
    let (out, cached) = build(&e, &opts);
    assert!(cached.is_empty());
    assert_ne!(out.manifest.digest(), first.manifest.digest());
    // With a timestamp, a source mtime below it reaches the layer: it is part of the key.
    set_mtime(&ctx.join("src/a.txt"), 1_000_000);
    let (moved, cached) = build(&e, &opts);
    assert!(cached.is_empty(), "{cached:?}");
    assert_ne!(moved.manifest.digest(), out.manifest.digest());
    // Above it, it is clamped away: a hit.
    set_mtime(&ctx.join("src/a.txt"), 1_800_000_000);
    let (a, _) = build(&e, &opts);
    set_mtime(&ctx.join("src/a.txt"), 1_900_000_000);
    let (b, cached) = build(&e, &opts);
    assert_eq!(cached, ALL);
    assert_eq!(a.manifest.digest(), b.manifest.digest());
    opts.compression = strata_build::Compression::Gzip;
    let (_, cached) = build(&e, &opts);
    assert!(cached.is_empty());
}

#[test]
fn unchanged_files_are_not_read_again_and_ctime_changes_are() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = context(&e);
    let opts = BuildOptions::new(&ctx);
    // Files younger than the racy window are never remembered; let them age.
    std::thread::sleep(Duration::from_millis(2100));
    let (first, _) = build(&e, &opts);
    assert_eq!(first.context_files_hashed, 4, "a, b, sub/c and later.txt; not the ignored file");
    let (noop, cached) = build(&e, &opts);
    assert_eq!(cached, ALL);
    assert_eq!(noop.context_files_hashed, 0, "a no-op rebuild reads no file");

    set_mtime(&ctx.join("src/a.txt"), 1_000_000);
    let (touched, cached) = build(&e, &opts);
    assert_eq!(cached, ALL);
    assert_eq!(touched.context_files_hashed, 1, "only the touched file is read");

    // Same size, mtime put back: only ctime says the bytes changed.
    fs::write(ctx.join("src/a.txt"), "ALPHA\n").unwrap();
    set_mtime(&ctx.join("src/a.txt"), 1_000_000);
    let (rewritten, cached) = build(&e, &opts);
    assert!(cached.is_empty(), "{cached:?}");
    let root = e.flatten(&rewritten);
    assert_eq!(fs::read_to_string(root.path().join("app/a.txt")).unwrap(), "ALPHA\n");

    // A corrupt cache file is a miss, not an error.
    let canonical = fs::canonicalize(&ctx).unwrap();
    let key = strata_types::Digest::of_bytes(canonical.as_os_str().as_encoded_bytes());
    assert!(e.store.context_cache(&key).is_some());
    e.store.put_context_cache(&key, b"strata-hashes-v1\n1 2 x\n\0garbage").unwrap();
    let (again, cached) = build(&e, &opts);
    assert_eq!(cached, ALL);
    assert_eq!(again.context_files_hashed, first.context_files_hashed);
}

#[test]
fn context_bind_mounts_are_keyed_by_their_content() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "bind",
        &[
            (
                "Dockerfile",
                "FROM base:1\nRUN --mount=type=bind,source=data,target=/d cat /d/x > /out\n",
            ),
            ("data/x", "one\n"),
            ("elsewhere", "a\n"),
        ],
    );
    let opts = BuildOptions::new(&ctx);
    let (first, _) = build(&e, &opts);
    fs::write(ctx.join("elsewhere"), "b\n").unwrap();
    let (same, cached) = build(&e, &opts);
    assert_eq!(cached.len(), 1);
    assert_eq!(same.manifest.digest(), first.manifest.digest());
    fs::write(ctx.join("data/x"), "two\n").unwrap();
    let (changed, cached) = build(&e, &opts);
    assert!(cached.is_empty());
    let root = e.flatten(&changed);
    assert_eq!(fs::read_to_string(root.path().join("out")).unwrap(), "two\n");
}

#[test]
fn no_cache_and_no_cache_filter() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "stages",
        &[
            (
                "Dockerfile",
                "FROM base:1 AS a\nCOPY a.txt /a\nRUN cp /a /a2\n\
                 FROM base:1\nWORKDIR /w\nCOPY --from=a /a2 /b\nRUN cat /w/../b > /c\n",
            ),
            ("a.txt", "A\n"),
        ],
    );
    let mut opts = BuildOptions::new(&ctx);
    let (first, _) = build(&e, &opts);
    let (_, cached) = build(&e, &opts);
    assert_eq!(cached.len(), 5, "{cached:?}");

    opts.no_cache = true;
    let (all, cached) = build(&e, &opts);
    assert!(cached.is_empty());
    assert_eq!(all.layers_written, 5);
    assert_eq!(all.manifest.digest(), first.manifest.digest());

    opts.no_cache = false;
    opts.no_cache_filter = vec!["a".to_string()];
    let (_, cached) = build(&e, &opts);
    assert_eq!(cached, ["WORKDIR /w", "COPY --from=a /a2 /b", "RUN cat /w/../b > /c"]);
    opts.no_cache_filter = vec!["1".to_string()];
    let (_, cached) = build(&e, &opts);
    assert_eq!(cached, ["COPY a.txt /a", "RUN cp /a /a2"]);

    // A changed --from stage misses the COPY that reads it.
    opts.no_cache_filter.clear();
    fs::write(ctx.join("a.txt"), "B\n").unwrap();
    let (_, cached) = build(&e, &opts);
    assert_eq!(cached, ["WORKDIR /w"]);

    // Names match as --target does, case-insensitively.
    opts.no_cache_filter = vec!["A".to_string()];
    let (_, cached) = build(&e, &opts);
    assert_eq!(cached, ["WORKDIR /w", "COPY --from=a /a2 /b", "RUN cat /w/../b > /c"]);
}

#[test]
fn no_cache_filter_naming_a_missing_stage_is_an_error() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "stages",
        &[("Dockerfile", "FROM base:1 AS a\nRUN true\nFROM base:1\nRUN true\n")],
    );
    let mut opts = BuildOptions::new(&ctx);
    for bad in ["nope", "2"] {
        opts.no_cache_filter = vec!["a".to_string(), bad.to_string()];
        let (r, events) = e.build_with(&opts);
        let err = r.unwrap_err();
        match &err {
            strata_build::BuildError::UnknownStageFilter { name, stages } => {
                assert_eq!(name, bad);
                assert_eq!(stages, &["a", "1"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains(&format!("--no-cache-filter {bad}")), "{err}");
        assert!(
            !events.iter().any(|e| matches!(e, BuildEvent::StepStart { .. })),
            "fails before any step runs"
        );
    }
}

#[test]
fn hardlinking_context_files_changes_the_copy_key() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "ctx",
        &[
            ("Dockerfile", "FROM base:1\nCOPY hl/ /a/\n"),
            ("hl/one", "same\n"),
            ("hl/two", "same\n"),
        ],
    );
    let opts = BuildOptions::new(&ctx);
    let (first, _) = build(&e, &opts);
    // Same names, modes and bytes; only the link between them is new.
    fs::remove_file(ctx.join("hl/two")).unwrap();
    fs::hard_link(ctx.join("hl/one"), ctx.join("hl/two")).unwrap();
    let (linked, cached) = build(&e, &opts);
    assert!(cached.is_empty(), "{cached:?}");
    assert_ne!(linked.manifest.digest(), first.manifest.digest());
    let (_, cached) = build(&e, &opts);
    assert_eq!(cached, ["COPY hl/ /a/"]);
}

#[test]
fn gc_keeps_the_cache_of_tagged_images_and_drops_the_rest() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = context(&e);
    let mut opts = BuildOptions::new(&ctx);
    opts.tags = vec!["app:1".to_string()];
    build(&e, &opts);
    let report = e.store.gc(&[]).unwrap();
    assert_eq!(report.build_cache_removed, 0);
    let (_, cached) = build(&e, &opts);
    assert_eq!(cached, ALL, "tagged: the cache survives gc");

    e.store.untag("app:1").unwrap();
    let report = e.store.gc(&[]).unwrap();
    assert_eq!(report.build_cache_removed, 3);
    let (out, cached) = build(&e, &opts);
    assert!(cached.is_empty(), "untagged and collected: a miss");
    assert_eq!(out.layers_written, 3);
}

/// Serves the current `body` for every request on a local port, counting requests.
fn serve(
    body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = body.lock().unwrap().clone();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    port
}

#[test]
fn add_urls_are_keyed_by_checksum_or_fetched_bytes() {
    if !can_run() {
        return;
    }
    use std::sync::atomic::Ordering;
    let e = env();
    let body = std::sync::Arc::new(std::sync::Mutex::new(b"one\n".to_vec()));
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let port = serve(body.clone(), hits.clone());
    let url = format!("http://127.0.0.1:{port}/f/tool.txt");

    // With --checksum, the checksum is the key: a hit does not download.
    let sum = strata_types::Digest::of_bytes(b"one\n");
    let ctx = e.context(
        "url-sum",
        &[("Dockerfile", &format!("FROM base:1\nADD --checksum={sum} {url} /opt/\n"))],
    );
    let opts = BuildOptions::new(&ctx);
    build(&e, &opts);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let (_, cached) = build(&e, &opts);
    assert_eq!(cached.len(), 1);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a hit with --checksum fetches nothing");

    // Without, the fetched bytes are: same bytes hit, new bytes miss.
    let ctx = e.context("url", &[("Dockerfile", &format!("FROM base:1\nADD {url} /opt/\n"))]);
    let opts = BuildOptions::new(&ctx);
    build(&e, &opts);
    let (_, cached) = build(&e, &opts);
    assert_eq!(cached.len(), 1);
    *body.lock().unwrap() = b"two\n".to_vec();
    let (out, cached) = build(&e, &opts);
    assert!(cached.is_empty());
    let root = e.flatten(&out);
    assert_eq!(fs::read_to_string(root.path().join("opt/tool.txt")).unwrap(), "two\n");
}

/// `(step text, reason)` of every cache miss, in order.
fn misses(events: &[BuildEvent]) -> Vec<(String, String)> {
    by_step(events, |e| match e {
        BuildEvent::CacheMiss { stage, step, reason } => Some(((*stage, *step), reason.clone())),
        _ => None,
    })
}

#[test]
fn each_miss_says_which_input_changed() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = context(&e);
    let mut opts = BuildOptions::new(&ctx);
    // Files younger than the racy window are not remembered; let them age so the stat-hash
    // cache knows their content.
    std::thread::sleep(Duration::from_millis(2100));
    let run = |opts: &BuildOptions| {
        let (r, events) = e.build_with(opts);
        r.unwrap();
        misses(&events)
    };
    let first = run(&opts);
    assert_eq!(first.len(), 3, "{first:?}");
    for (_, why) in &first {
        assert_eq!(why, "not built from this context and recipe before");
    }
    assert_eq!(run(&opts), vec![], "a no-op rebuild misses nothing");

    // A source file's content: the COPY names it, the steps after it name their parent.
    fs::write(ctx.join("src/sub/c.txt"), "GAMMA\n").unwrap();
    let later = "an earlier step changed (the layers below differ)";
    let expected = vec![
        (ALL[0].to_string(), "source files changed: src/sub/c.txt".to_string()),
        (ALL[1].to_string(), later.to_string()),
        (ALL[2].to_string(), later.to_string()),
    ];
    assert_eq!(run(&opts), expected);

    // A build arg the RUN sees.
    opts.build_args.set("V", "2");
    let got = run(&opts);
    assert_eq!(got[0], (ALL[1].to_string(), "the environment or build args changed".into()));
    assert_eq!(got[1], (ALL[2].to_string(), later.to_string()));

    // A new file, which the stat-hash cache never saw: the sources changed, unnamed.
    fs::write(ctx.join("src/new.txt"), "new\n").unwrap();
    let got = run(&opts);
    assert_eq!(
        got[0],
        (
            ALL[0].to_string(),
            "its sources changed (new, removed or renamed files, or modes)".into()
        )
    );

    // The instruction; then the layers of the last result gone (rmi + gc).
    let recipe = RECIPE.replace("COPY later.txt /later.txt", "COPY later.txt /later2.txt");
    fs::write(ctx.join("Dockerfile"), recipe).unwrap();
    let got = run(&opts);
    assert_eq!(got, vec![("COPY later.txt /later2.txt".into(), "the instruction changed".into())]);
    // The untagged results pruned and collected: every step says its layer is gone.
    e.store.prune_dangling().unwrap();
    e.store.gc(&[]).unwrap();
    let got = run(&opts);
    let gone = "its cached layer is gone (gc, prune or rmi removed it)";
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|(_, why)| why == gone), "{got:?}");
    opts.no_cache = true;
    let got = run(&opts);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|(_, why)| why == "--no-cache"), "{got:?}");
}
