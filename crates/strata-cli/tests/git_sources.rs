//! Git sources end to end (issue 19 point 4): `ADD <git URL>` of a branch, a tag, a commit and a
//! subdirectory, `--keep-git-dir`, `--checksum`, a git URL as the build context, the cache
//! keyed on the commit, submodules, and the errors, against a real `git daemon` (and, for
//! http URLs, git-http-backend under busybox httpd) on 127.0.0.1 that each test starts on a
//! free port and kills.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

mod common;

use common::{strata, TempRoot};

/// Commit times of the fixture's two commits (2001 and 2004), before the builds' timestamp.
const FIRST: i64 = 1_000_000_000;
const SECOND: i64 = 1_100_000_000;

/// `git daemon` serving every repository under `base`, killed on drop.
struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    fn start(base: &Path) -> GitDaemon {
        GitDaemon::start_logging(base, Stdio::null())
    }

    /// [`GitDaemon::start`] with `--verbose` and its log (one `Request upload-pack for ...`
    /// line per ls-remote or fetch) going to `log`.
    fn start_logging(base: &Path, log: impl Into<Stdio>) -> GitDaemon {
        let port = common::free_port();
        let child = Command::new("git")
            .arg("daemon")
            .arg("--verbose")
            .arg("--reuseaddr")
            .arg(format!("--base-path={}", base.display()))
            .arg("--export-all")
            .arg(format!("--port={port}"))
            .arg("--listen=127.0.0.1")
            .arg(base)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut daemon = GitDaemon { child, port };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return daemon;
            }
            assert!(daemon.child.try_wait().unwrap().is_none(), "git daemon exited");
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("git daemon did not listen on port {port}");
    }

    fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `git -C dir ARGS` with a fixed identity and commit time `at`; its stdout.
fn git(dir: &Path, at: i64, args: &[&str]) -> String {
    let date = format!("@{at} +0000");
    common::run(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date),
    )
    .trim()
    .to_string()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// `base/repo`: a first commit (a.txt "one", sub/b.txt, sub/deep/c.txt, an executable, a
/// symlink, ctx/ with a recipe) tagged `v1` (annotated), then a second on `main` (a.txt "two").
/// The first commit's id.
fn fixture(base: &Path) -> String {
    let repo = base.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, FIRST, &["init", "-q", "-b", "main"]);
    write(&repo.join("a.txt"), "one\n");
    write(&repo.join("sub/b.txt"), "bee\n");
    write(&repo.join("sub/deep/c.txt"), "sea\n");
    write(&repo.join("run.sh"), "#!/bin/sh\n");
    std::fs::set_permissions(repo.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("a.txt", repo.join("link")).unwrap();
    write(&repo.join("ctx/Dockerfile"), "FROM scratch\nCOPY . /c/\n");
    write(&repo.join("ctx/f.txt"), "from git\n");
    git(&repo, FIRST, &["add", "-A"]);
    git(&repo, FIRST, &["commit", "-q", "-m", "first"]);
    git(&repo, FIRST, &["tag", "-a", "v1", "-m", "v1"]);
    let first = git(&repo, FIRST, &["rev-parse", "HEAD"]);
    write(&repo.join("a.txt"), "two\n");
    git(&repo, SECOND, &["commit", "-q", "-am", "second"]);
    first
}

fn build(store: &Path, context: &Path, recipe: &str, extra: &[&str]) -> Output {
    write(&context.join("Dockerfile"), recipe);
    let mut args = vec!["build", "--progress", "json", "--timestamp", "2000000000"];
    args.extend_from_slice(extra);
    let ctx = context.to_str().unwrap();
    args.push(ctx);
    strata(store, &args)
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "strata failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn export(store: &Path, image: &str, dir: &Path) -> PathBuf {
    ok(strata(store, &["export", image, &format!("dir:{}", dir.display())]));
    dir.to_path_buf()
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The texts of the steps a JSON-progress build took from the cache.
fn cached_steps(json: &str) -> Vec<String> {
    let mut texts = std::collections::HashMap::new();
    let mut cached = Vec::new();
    for line in json.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = (e["stage"].as_u64(), e["step"].as_u64());
        match e["event"].as_str().unwrap() {
            "step_start" => {
                texts.insert(id, e["text"].as_str().unwrap().to_string());
            }
            "step_cached" => cached.push(texts[&id].clone()),
            _ => {}
        }
    }
    cached
}

#[test]
fn add_takes_a_branch_a_tag_a_commit_and_a_subdirectory() {
    if !common::have_all("git sources", &["git"]) {
        return;
    }
    let tmp = TempRoot::new();
    let (store, base) = (tmp.path("store"), tmp.path("git"));
    let first = fixture(&base);
    let daemon = GitDaemon::start(&base);
    let url = daemon.url("repo");
    let recipe = format!(
        "FROM scratch\n\
         ADD {url} /default\n\
         ADD {url}#main /branch\n\
         ADD {url}#v1 /tag/\n\
         ADD {url}#{first} /commit\n\
         ADD {url}#main:sub /sub\n\
         ADD --keep-git-dir=true {url}#v1 /kept\n\
         ADD --checksum={} {url}#v1 /checked\n\
         ADD --chown=7:8 {url}#v1 /owned\n",
        &first[..12]
    );
    ok(build(&store, &tmp.path("ctx"), &recipe, &["-t", "git:1"]));
    let root = export(&store, "git:1", &tmp.path("out"));

    // The branch's head, the whole tree, no `.git`.
    assert_eq!(read(root.join("branch/a.txt")), "two\n");
    // No ref: the remote's default branch.
    assert_eq!(read(root.join("default/a.txt")), "two\n");
    assert_eq!(read(root.join("branch/sub/deep/c.txt")), "sea\n");
    assert!(!root.join("branch/.git").exists());
    let script = std::fs::metadata(root.join("branch/run.sh")).unwrap();
    assert_eq!(script.mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read_link(root.join("branch/link")).unwrap(), Path::new("a.txt"));
    // The annotated tag and the commit id both name the first commit.
    assert_eq!(read(root.join("tag/a.txt")), "one\n");
    assert_eq!(read(root.join("commit/a.txt")), "one\n");
    assert_eq!(read(root.join("checked/a.txt")), "one\n");
    // A subdirectory's contents, not the directory.
    assert_eq!(read(root.join("sub/b.txt")), "bee\n");
    assert_eq!(read(root.join("sub/deep/c.txt")), "sea\n");
    assert!(!root.join("sub/a.txt").exists() && !root.join("sub/sub").exists());
    // --keep-git-dir: a repository at that commit, its remote the URL.
    assert!(root.join("kept/.git").is_dir());
    assert!(!root.join("tag/.git").exists());
    let kept = root.join("kept");
    assert_eq!(git(&kept, FIRST, &["rev-parse", "HEAD"]), first);
    assert_eq!(git(&kept, FIRST, &["remote", "get-url", "origin"]), url);
    // Owners 0:0 (or --chown's), mtimes the commit's time (BuildKit's git.mtime=commit).
    let a = std::fs::symlink_metadata(root.join("branch/a.txt")).unwrap();
    assert_eq!((a.uid(), a.gid(), a.mtime()), (0, 0, SECOND));
    let deep = std::fs::symlink_metadata(root.join("tag/sub/deep")).unwrap();
    assert_eq!(deep.mtime(), FIRST);
    let link = std::fs::symlink_metadata(root.join("tag/link")).unwrap();
    assert_eq!(link.mtime(), FIRST);
    let owned = std::fs::symlink_metadata(root.join("owned/sub/b.txt")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (7, 8));
}

#[test]
fn a_git_url_is_a_build_context() {
    if !common::have_all("git sources", &["git"]) {
        return;
    }
    let tmp = TempRoot::new();
    let (store, base) = (tmp.path("store"), tmp.path("git"));
    fixture(&base);
    let daemon = GitDaemon::start(&base);
    let context = format!("{}#main:ctx", daemon.url("repo"));
    ok(strata(&store, &["build", "-t", "ctx:1", &context]));
    let root = export(&store, "ctx:1", &tmp.path("out"));
    assert_eq!(read(root.join("c/f.txt")), "from git\n");
    assert!(root.join("c/Dockerfile").is_file());
    assert!(!root.join("c/.git").exists() && !root.join("c/a.txt").exists());
    // BuildKit's BUILDKIT_CONTEXT_KEEP_GIT_DIR keeps the repository in the context; a
    // relative -f names a file of the checkout.
    let whole = format!("{}#main", daemon.url("repo"));
    let keep = ["build", "-t", "ctx:kept", "--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1"];
    ok(strata(&store, &[&keep[..], &["-f", "ctx/Dockerfile", &whole]].concat()));
    let kept = export(&store, "ctx:kept", &tmp.path("kept"));
    assert!(kept.join("c/.git").is_dir() && kept.join("c/ctx/f.txt").is_file());

    // A context that names nothing fails before any build, naming the URL and the ref.
    let bad = format!("{}#nope", daemon.url("repo"));
    let out = strata(&store, &["build", "-t", "ctx:2", &bad]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&daemon.url("repo")) && stderr.contains("nope"), "{stderr}");
}

/// The number of upload-pack requests (ls-remote or fetch) in a `git daemon --verbose` log.
fn upload_packs(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap().matches("Request upload-pack for").count()
}

/// Waits until the daemon's log has `n` requests (its children log as they start).
fn wait_for_upload_packs(log: &Path, n: usize) -> usize {
    for _ in 0..100 {
        if upload_packs(log) >= n {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    upload_packs(log)
}

#[test]
fn a_git_context_is_cloned_once_per_commit() {
    if !common::have_all("git sources", &["git"]) {
        return;
    }
    let tmp = TempRoot::new();
    let (store, base) = (tmp.path("store"), tmp.path("git"));
    fixture(&base);
    let log_path = tmp.path("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let daemon = GitDaemon::start_logging(&base, log);
    let context = format!("{}#main:ctx", daemon.url("repo"));
    let first = ok(strata(&store, &["build", "-t", "ctx:1", &context]));
    // ls-remote, then the fetch of the commit.
    let after_first = wait_for_upload_packs(&log_path, 2);
    assert!(after_first >= 2, "{}", read(log_path.clone()));
    // The same commit again, and another subdirectory of it: only ls-remote reaches the
    // server, and the image is the same.
    let again = ok(strata(&store, &["build", "-t", "ctx:2", &context]));
    assert_eq!(again, first);
    let whole = format!("{}#main", daemon.url("repo"));
    ok(strata(&store, &["build", "-t", "ctx:3", "-f", "ctx/Dockerfile", &whole]));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(upload_packs(&log_path), after_first + 2, "{}", read(log_path.clone()));
    let root = export(&store, "ctx:3", &tmp.path("out"));
    assert_eq!(read(root.join("c/a.txt")), "two\n");
    assert!(!root.join("c/.git").exists());

    // A new commit on the branch is fetched, and built.
    let repo = base.join("repo");
    write(&repo.join("ctx/f.txt"), "changed\n");
    git(&repo, SECOND + 1, &["commit", "-q", "-am", "third"]);
    ok(strata(&store, &["build", "-t", "ctx:4", &context]));
    assert!(wait_for_upload_packs(&log_path, after_first + 4) >= after_first + 4);
    let root = export(&store, "ctx:4", &tmp.path("out4"));
    assert_eq!(read(root.join("c/f.txt")), "changed\n");
}

#[test]
fn a_rebuild_is_cached_until_the_branch_moves() {
    if !common::have_all("git sources", &["git"]) {
        return;
    }
    let tmp = TempRoot::new();
    let (store, base, ctx) = (tmp.path("store"), tmp.path("git"), tmp.path("ctx"));
    fixture(&base);
    let daemon = GitDaemon::start(&base);
    let recipe = format!("FROM scratch\nADD {}#main /src\n", daemon.url("repo"));
    let step = format!("ADD {}#main /src", daemon.url("repo"));
    let first = ok(build(&store, &ctx, &recipe, &["-t", "c:1"]));
    assert!(cached_steps(&first).is_empty());
    // Same commit on `main`: the ADD is a hit (resolved by ls-remote, nothing cloned).
    let again = ok(build(&store, &ctx, &recipe, &["-t", "c:2"]));
    assert_eq!(cached_steps(&again), vec![step.clone()]);
    assert!(!again.contains("\"copy_staged\""));
    // A new commit on `main`: the ADD runs again and takes it.
    let repo = base.join("repo");
    write(&repo.join("a.txt"), "three\n");
    git(&repo, SECOND + 1, &["commit", "-q", "-am", "third"]);
    let moved = ok(build(&store, &ctx, &recipe, &["-t", "c:3"]));
    assert!(cached_steps(&moved).is_empty());
    let reason = moved
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "cache_miss")
        .map(|e| e["reason"].as_str().unwrap().to_string());
    assert_eq!(reason.as_deref(), Some("a git source's ref names another commit"));
    let root = export(&store, "c:3", &tmp.path("out"));
    assert_eq!(read(root.join("src/a.txt")), "three\n");
}

#[test]
fn git_errors_name_the_url_and_the_ref_and_never_a_password() {
    if !common::have_all("git sources", &["git"]) {
        return;
    }
    let tmp = TempRoot::new();
    let (store, base, ctx) = (tmp.path("store"), tmp.path("git"), tmp.path("ctx"));
    fixture(&base);
    let daemon = GitDaemon::start(&base);
    let url = daemon.url("repo");
    let nobody = format!("git://127.0.0.1:{}/repo", common::free_port());
    let cases = [
        (format!("ADD {nobody}#main /x"), vec![nobody.clone(), "main".into(), "ls-remote".into()]),
        (format!("ADD {url}#nope /x"), vec![format!("{url} has no branch, tag or ref nope")]),
        (
            format!("ADD {url}#main:nodir /x"),
            vec![format!("{url} has no directory nodir at ref main")],
        ),
        (
            format!("ADD --checksum=deadbeef {url}#v1 /x"),
            vec!["expected checksum to match deadbeef".into(), url.clone()],
        ),
    ];
    for (line, wanted) in cases {
        let out = build(&store, &ctx, &format!("FROM scratch\n{line}\n"), &[]);
        assert_eq!(out.status.code(), Some(1), "{line}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for w in wanted {
            assert!(stderr.contains(&w), "{line}: {w:?} not in {stderr}");
        }
    }
    // A password in the URL shows as xxxxx, in the error and anywhere else.
    let port = common::free_port();
    let secret = format!("FROM scratch\nADD https://user:s3cret@127.0.0.1:{port}/r.git#main /x\n");
    let out = build(&store, &ctx, &secret, &[]);
    assert!(!out.status.success());
    let all =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("user:xxxxx@127.0.0.1"), "{all}");
    assert!(!all.contains("s3cret"), "{all}");
}

#[test]
fn add_checks_out_submodules_without_their_git_files() {
    if !common::have_all("git sources", &["git"]) {
        return;
    }
    let tmp = TempRoot::new();
    let (store, base, ctx) = (tmp.path("store"), tmp.path("git"), tmp.path("ctx"));
    let lib = base.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    git(&lib, FIRST, &["init", "-q", "-b", "main"]);
    write(&lib.join("lib.txt"), "from the submodule\n");
    git(&lib, FIRST, &["add", "-A"]);
    git(&lib, FIRST, &["commit", "-q", "-m", "lib"]);
    let app = base.join("app");
    std::fs::create_dir_all(&app).unwrap();
    git(&app, FIRST, &["init", "-q", "-b", "main"]);
    write(&app.join("app.txt"), "app\n");
    // `../lib` resolves against the remote the build clones from: the daemon's `lib`.
    git(
        &app,
        FIRST,
        &["-c", "protocol.file.allow=always", "submodule", "add", "-q", "../lib", "vendor/lib"],
    );
    git(&app, FIRST, &["commit", "-q", "-m", "app"]);
    let daemon = GitDaemon::start(&base);
    let recipe = format!(
        "FROM scratch\nADD {app}#main /app\nADD --keep-git-dir=true {app}#main /kept\n",
        app = daemon.url("app")
    );
    ok(build(&store, &ctx, &recipe, &["-t", "sub:1"]));
    let root = export(&store, "sub:1", &tmp.path("out"));
    assert_eq!(read(root.join("app/vendor/lib/lib.txt")), "from the submodule\n");
    assert!(!root.join("app/.git").exists() && !root.join("app/vendor/lib/.git").exists());
    // Kept, the submodule's `.git` file still leads to its repository.
    assert!(root.join("kept/vendor/lib/.git").is_file());
    let kept = root.join("kept/vendor/lib");
    assert_eq!(git(&kept, FIRST, &["rev-parse", "HEAD"]), git(&lib, FIRST, &["rev-parse", "HEAD"]));
}

/// busybox httpd running git-http-backend as a CGI over `base`, killed on drop.
struct GitHttp {
    child: Child,
    port: u16,
}

impl GitHttp {
    fn start(base: &Path, www: &Path) -> GitHttp {
        let exec_path = common::run(Command::new("git").arg("--exec-path")).trim().to_string();
        let cgi = www.join("cgi-bin/git");
        write(
            &cgi,
            &format!(
                "#!/bin/sh\nexport GIT_PROJECT_ROOT={} GIT_HTTP_EXPORT_ALL=1\nexec {exec_path}/git-http-backend\n",
                base.display()
            ),
        );
        std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = common::free_port();
        let child = Command::new("busybox")
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut server = GitHttp { child, port };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            assert!(server.child.try_wait().unwrap().is_none(), "busybox httpd exited");
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("busybox httpd did not listen on port {port}");
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn http_git_urls_go_through_git_http_backend_and_keep_no_password() {
    if !common::have_all("git over http", &["git", "busybox"]) {
        return;
    }
    let tmp = TempRoot::new();
    let (store, base, ctx) = (tmp.path("store"), tmp.path("git"), tmp.path("ctx"));
    fixture(&base);
    git(&base, FIRST, &["clone", "-q", "--bare", "repo", "repo.git"]);
    let server = GitHttp::start(&base, &tmp.path("www"));
    let url = format!("http://127.0.0.1:{}/cgi-bin/git/repo.git", server.port);
    // The server asks for no credentials, so git never sends these; they must show nowhere.
    let with_password = url.replacen("http://", "http://builder:s3cretpw@", 1);
    let redacted = url.replacen("http://", "http://builder:xxxxx@", 1);
    let recipe = format!(
        "FROM scratch\nADD {url}#v1:sub /sub\nADD --keep-git-dir=true {with_password}#main /kept\n"
    );
    let json = ok(build(&store, &ctx, &recipe, &["-t", "http:1"]));
    assert!(!json.contains("s3cretpw"), "{json}");
    let root = export(&store, "http:1", &tmp.path("out"));
    assert_eq!(read(root.join("sub/b.txt")), "bee\n");
    assert_eq!(read(root.join("kept/a.txt")), "two\n");
    let kept = root.join("kept");
    assert_eq!(git(&kept, FIRST, &["remote", "get-url", "origin"]), redacted);
    let grep = Command::new("grep").args(["-r", "-l", "s3cretpw"]).arg(&kept).output().unwrap();
    assert_eq!(grep.status.code(), Some(1), "{}", String::from_utf8_lossy(&grep.stdout));
    let history = ok(strata(&store, &["inspect", "--json", "http:1"]));
    assert!(history.contains(&redacted) && !history.contains("s3cretpw"), "{history}");
}
