//! gc beside running builds (issue 15 point 7): a build's lease keeps what it has written
//! and the base it reads, so `strata gc` runs while it runs and deletes only garbage; a
//! killed build's lease, store temp entries and sandbox scratch directories are swept by the
//! next gc, writer and build.

mod common;

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{needs_root, TempRoot};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

fn strata(store: &Path, args: &[&str]) -> String {
    common::run(Command::new(STRATA).arg("--store").arg(store).args(args))
}

/// A store with the LAMP example's base and 3 blobs of garbage (an untagged import).
fn setup(tmp: &TempRoot) -> PathBuf {
    let store = tmp.path("store");
    common::lamp(&tmp.path(""), &store);
    let tree = tmp.path("garbage");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("g"), "garbage of gc_beside_builds").unwrap();
    strata(&store, &["import", tree.to_str().unwrap(), "garbage:1"]);
    strata(&store, &["rmi", "garbage:1"]);
    store
}

/// Starts `strata build -t TAG` of `recipe` (its RUN prints "started") with `TMPDIR` set to
/// `tmpdir`, and returns once the RUN has printed.
fn start_build(tmp: &TempRoot, store: &Path, tmpdir: &Path, tag: &str, recipe: &str) -> Child {
    let ctx = tmp.path(&format!("ctx-{tag}"));
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), recipe).unwrap();
    std::fs::write(ctx.join("a"), format!("copied by {tag}")).unwrap();
    let mut child = Command::new(STRATA)
        .arg("--store")
        .arg(store)
        .args(["build", "--progress", "plain", "-t", tag])
        .arg(&ctx)
        .env("TMPDIR", tmpdir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    common::read_until_line(&mut stderr, |l| l.ends_with(" started"));
    // Keep draining, so the build never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    child
}

fn scratch_dirs(tmpdir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmpdir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("strata-sandbox-"))
        .collect()
}

fn assert_fsck_clean(store: &Path) {
    let fsck = strata(store, &["fsck"]);
    assert!(fsck.contains("clean"), "{fsck}");
}

#[test]
fn gc_runs_during_a_build_and_the_build_then_tags_fine() {
    if !needs_root() {
        return;
    }
    let tmp = TempRoot::new();
    let store = setup(&tmp);
    let tmpdir = tmp.path("tmp");
    std::fs::create_dir_all(&tmpdir).unwrap();
    // The COPY's layer is written and untagged when gc runs; the base is only read.
    let recipe = "FROM lamp-base:latest\nCOPY a /a\nRUN echo started && sleep 2\n";
    let mut build = start_build(&tmp, &store, &tmpdir, "app:1", recipe);
    let gc = strata(&store, &["gc"]);
    assert!(build.try_wait().unwrap().is_none(), "the build ended before gc ran");
    assert!(gc.starts_with("removed 3 blobs"), "gc did not delete the garbage: {gc}");
    assert!(gc.contains("(1 live leases)"), "{gc}");
    assert!(build.wait().unwrap().success(), "the build failed after a gc beside it");
    assert_fsck_clean(&store);
    strata(&store, &["inspect", "--no-efficiency", "app:1"]);
    // Nothing the build made was garbage, and its lease ended with it.
    let again = strata(&store, &["gc"]);
    assert!(again.starts_with("removed 0 blobs") && again.contains("(0 live leases)"), "{again}");
    assert_fsck_clean(&store);
}

#[test]
fn a_killed_builds_lease_temp_entries_and_scratch_dirs_are_swept() {
    if !needs_root() {
        return;
    }
    let tmp = TempRoot::new();
    let store = setup(&tmp);
    strata(&store, &["gc"]); // the garbage goes: what follows is the killed build's
    let tmpdir = tmp.path("tmp");
    std::fs::create_dir_all(&tmpdir).unwrap();
    let recipe = "FROM lamp-base:latest\nCOPY a /a\nRUN echo started && sleep 30\n";
    let mut build = start_build(&tmp, &store, &tmpdir, "app:1", recipe);
    build.kill().unwrap(); // SIGKILL
    build.wait().unwrap();
    // PR_SET_PDEATHSIG stops the RUN's process; give it a moment.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let leases = store.join("strata/v1/leases");
    assert_eq!(std::fs::read_dir(&leases).unwrap().count(), 1, "the killed build left no lease");
    assert_eq!(scratch_dirs(&tmpdir).len(), 1, "the killed build left no scratch dir");

    // gc: the dead lease goes, and the COPY layer (and its snapshot) only it kept.
    let gc = strata(&store, &["gc"]);
    assert!(gc.contains("1 dead leases") && !gc.starts_with("removed 0 blobs"), "{gc}");
    assert_eq!(std::fs::read_dir(&leases).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(store.join("strata/v1/tmp")).unwrap().count(), 0);
    assert_fsck_clean(&store);

    // The next build sweeps the scratch dir, and works.
    let mut next =
        start_build(&tmp, &store, &tmpdir, "app:2", "FROM lamp-base:latest\nRUN echo started\n");
    assert!(next.wait().unwrap().success());
    assert!(scratch_dirs(&tmpdir).is_empty(), "left: {:?}", scratch_dirs(&tmpdir));
    assert_fsck_clean(&store);
}

#[test]
fn the_next_writer_sweeps_a_killed_writers_temp_entries() {
    if !needs_root() {
        return;
    }
    let tmp = TempRoot::new();
    let store = setup(&tmp);
    let tmpdir = tmp.path("tmp");
    std::fs::create_dir_all(&tmpdir).unwrap();
    let recipe = "FROM lamp-base:latest\nCOPY a /a\nRUN echo started && sleep 30\n";
    let mut build = start_build(&tmp, &store, &tmpdir, "app:1", recipe);
    build.kill().unwrap();
    build.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let store_tmp = store.join("strata/v1/tmp");
    assert!(
        std::fs::read_dir(&store_tmp).unwrap().count() > 0,
        "the killed build left no temp entry"
    );
    // Not gc: any command that writes (a tag here) sweeps them on opening the store.
    strata(&store, &["import", tmp.path("garbage").to_str().unwrap(), "again:1"]);
    let left: Vec<_> = std::fs::read_dir(&store_tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "left: {left:?}");
    assert_fsck_clean(&store);
}
