//! What Docker users type, working as they expect (issue 16): untagged images and short IDs,
//! empty environment variables, a fresh machine, `rmi`, one exit code table, `inspect`,
//! completions and man pages. None of these needs root: the recipes only COPY.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A test directory with a store path (not created) and a home of its own, so nothing of the
/// machine's leaks in.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env { dir: tempfile::tempdir().unwrap() };
        std::fs::create_dir_all(env.path("home")).unwrap();
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// `strata` with no `--store`, `STRATA_STORE` pointing at the test store, a private HOME.
    fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
        cmd.env("STRATA_STORE", self.store())
            .env("HOME", self.path("home"))
            .env_remove("XDG_DATA_HOME")
            .env_remove("SOURCE_DATE_EPOCH");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "strata {args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs, expects exit `code`, returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(code), "strata {args:?}: {}", stderr(&out));
        stderr(&out)
    }

    /// A context whose Dockerfile copies one file holding `content`.
    fn context(&self, name: &str, content: &str) -> String {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Dockerfile"),
            "FROM scratch\nCOPY a /a\nEXPOSE 8080 53/udp\nLABEL org.example.team=core \\\n  \
             version=\"1.0\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("a"), content).unwrap();
        dir.to_str().unwrap().to_string()
    }

    /// `strata build --progress plain CTX` plus `extra`; the digest it prints.
    fn build(&self, ctx: &str, extra: &[&str]) -> String {
        let mut args = vec!["build", "--progress", "plain"];
        args.extend_from_slice(extra);
        args.push(ctx);
        self.ok(&args).trim().to_string()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The 12-hex IMAGE ID `images` prints for `digest`.
fn short_id(digest: &str) -> &str {
    &digest["sha256:".len()..][..12]
}

/// Rows of `strata images` (header dropped), split on whitespace.
fn image_rows(env: &Env) -> Vec<Vec<String>> {
    env.ok(&["images"])
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn untagged_build_is_listed_found_by_short_id_and_kept_until_pruned() {
    let env = Env::new();
    let ctx = env.context("ctx", "one\n");
    let digest = env.build(&ctx, &[]);
    let id = short_id(&digest);
    // Listed as Docker lists a dangling image, with or without -a.
    let rows = image_rows(&env);
    // SIZE, then PLATFORMS: the build's own (the host's).
    assert_eq!(rows, vec![vec!["<none>", "<none>", id, &rows[0][3], &rows[0][4]]], "{rows:?}");
    assert!(rows[0][4].starts_with("linux/"), "{rows:?}");
    assert!(env.ok(&["images", "-a"]).contains(id));
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["images", "--json"])).unwrap();
    assert_eq!(json[0]["digest"], digest.as_str());
    assert_eq!(json[0]["name"], "<none>");

    // The short ID, a shorter unique prefix, and `sha256:` prefixes name it everywhere.
    let prefixed = format!("sha256:{}", &id[..8]);
    for name in [id, &id[..6], prefixed.as_str(), digest.as_str()] {
        let shown = env.ok(&["inspect", "--no-efficiency", name]);
        assert!(shown.contains(&digest), "{name}: {shown}");
    }
    assert!(env.ok(&["history", id]).contains("COPY a /a"));
    assert!(env.ok(&["diff", id, &digest]).contains("identical"));
    let out = env.path("out");
    env.ok(&["export", id, &format!("oci:{}:x", out.display())]);
    assert!(out.join("index.json").is_file());
    // push resolves the ID before it contacts the (absent) registry.
    let err = env.fails(&["push", id, "docker://127.0.0.1:1/x:1"], 2);
    assert!(err.contains("cannot reach registry"), "{err}");
    let err = env.fails(&["push", "0000aaaa", "docker://127.0.0.1:1/x:1"], 2);
    assert!(err.contains("not found in store"), "{err}");

    // Plain gc keeps it, as Docker keeps dangling images until a prune.
    env.ok(&["gc"]);
    assert!(env.ok(&["inspect", "--no-efficiency", id]).contains(&digest));
    assert!(env.ok(&["fsck"]).contains("clean"));

    // Tagging it by ID makes it a tagged image, no longer dangling.
    env.ok(&["tag", id, "app:v1"]);
    assert_eq!(image_rows(&env).len(), 1);
    assert_eq!(image_rows(&env)[0][..3], ["app", "v1", id]);
    let pruned = env.ok(&["image", "prune"]);
    assert!(pruned.contains("removed 0 dangling images"), "{pruned}");
    assert!(env.ok(&["inspect", "--no-efficiency", "app:v1"]).contains(&digest));

    // Another untagged build: pruned only when asked, with the count said.
    let other = env.build(&env.context("ctx2", "two\n"), &[]);
    let gc = env.ok(&["gc", "--dangling"]);
    assert!(gc.contains("removed 1 dangling image\n"), "{gc}");
    assert!(gc.contains(&other), "{gc}");
    let err = env.fails(&["inspect", short_id(&other)], 2);
    assert!(err.contains("not found"), "{err}");
    assert!(env.ok(&["fsck"]).contains("clean"));
    // `image prune` is the same, and `-f` is accepted as Docker users type it.
    env.build(&env.context("ctx3", "three\n"), &[]);
    assert!(env.ok(&["image", "prune", "-f"]).contains("removed 1 dangling image\n"));
    assert_eq!(image_rows(&env).len(), 1);
}

/// Docker's retag rule: the image a tag moves away from stays listed as `<none>` (plain gc
/// keeps it) until a prune; before, the next gc freed it silently.
#[test]
fn an_image_whose_tag_moved_to_a_new_build_is_dangling_until_pruned() {
    let env = Env::new();
    let ctx = env.context("ctx", "one\n");
    let v1 = env.build(&ctx, &["-t", "app:x"]);
    std::fs::write(Path::new(&ctx).join("a"), "two\n").unwrap();
    let v2 = env.build(&ctx, &["-t", "app:x"]);
    assert_ne!(v1, v2);
    let rows = image_rows(&env);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0][..3], ["app", "x", short_id(&v2)], "{rows:?}");
    assert_eq!(rows[1][..3], ["<none>", "<none>", short_id(&v1)], "{rows:?}");
    env.ok(&["gc"]);
    assert!(env.ok(&["inspect", "--no-efficiency", short_id(&v1)]).contains(&v1));
    assert_eq!(image_rows(&env).len(), 2);
    assert!(env.ok(&["fsck"]).contains("clean"));

    // `strata tag` moving a tag does the same; an image that keeps another tag is not dangling.
    env.ok(&["tag", "app:x", "app:keep"]);
    env.ok(&["tag", short_id(&v1), "app:x"]);
    let rows = image_rows(&env);
    assert_eq!(rows.len(), 2, "v2 keeps app:keep, v1 is tagged again: {rows:?}");
    assert!(rows.iter().all(|r| r[0] == "app"), "{rows:?}");
    env.ok(&["rmi", "app:keep"]);
    env.ok(&["tag", &v2, "app:x"]);
    let rows = image_rows(&env);
    assert_eq!(rows[1][..3], ["<none>", "<none>", short_id(&v1)], "{rows:?}");

    let pruned = env.ok(&["image", "prune"]);
    assert!(pruned.contains("removed 1 dangling image\n") && pruned.contains(&v1), "{pruned}");
    let err = env.fails(&["inspect", short_id(&v1)], 2);
    assert!(err.contains("not found"), "{err}");
    assert_eq!(image_rows(&env), vec![vec!["app", "x", short_id(&v2), &rows[0][3], &rows[0][4]]]);
    assert!(env.ok(&["fsck"]).contains("clean"));
}

#[test]
fn rmi_takes_the_id_images_prints_and_force_for_several_tags() {
    let env = Env::new();
    let ctx = env.context("ctx", "one\n");
    let digest = env.build(&ctx, &["-t", "app:v1", "-t", "app:latest"]);
    let id = short_id(&digest);
    let err = env.fails(&["rmi", id], 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("app:latest, app:v1") && err.contains("force"), "{err}");
    assert_eq!(image_rows(&env).len(), 2, "refused: nothing removed");
    let out = env.ok(&["rmi", "-f", id]);
    assert!(out.contains("Untagged: app:latest") && out.contains("Untagged: app:v1"), "{out}");
    assert!(out.contains(&format!("Deleted: {digest}")), "{out}");
    assert!(image_rows(&env).is_empty());

    // One tag: the ID removes it, as `docker rmi ID`; a tag name removes just that tag.
    env.build(&ctx, &["-t", "app:v2"]);
    assert!(env.ok(&["rmi", id]).contains("Untagged: app:v2"));
    env.build(&ctx, &["-t", "app:v3", "-t", "app:v4"]);
    let out = env.ok(&["rmi", "app:v3"]);
    assert!(out.contains("Untagged: app:v3") && !out.contains("Deleted"), "{out}");
    assert_eq!(image_rows(&env).len(), 1);
    // An untagged image goes by its ID.
    let dangling = env.build(&env.context("ctx2", "two\n"), &[]);
    assert!(env.ok(&["rmi", short_id(&dangling)]).contains("Deleted"));
    assert_eq!(image_rows(&env).len(), 1);
}

#[test]
fn empty_strata_store_and_source_date_epoch_count_as_unset() {
    let env = Env::new();
    let ctx = env.context("ctx", "one\n");
    // STRATA_STORE= : the default store under HOME, not "a value is required for --store".
    let out =
        env.cmd().env("STRATA_STORE", "").args(["build", "-t", "a:1", &ctx]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.path("home/.local/share/strata/index.json").is_file());
    let out = env.cmd().env("STRATA_STORE", "").arg("images").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("a "), "{}", stderr(&out));

    // SOURCE_DATE_EPOCH= : the default timestamp (0), the same digest as without it.
    let plain = env.build(&ctx, &[]);
    for cmd in [&["build", "--progress", "plain", &ctx][..], &["import", &ctx, "imp:1"][..]] {
        let out = env.cmd().env("SOURCE_DATE_EPOCH", "").args(cmd).output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
        if cmd[0] == "build" {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), plain);
        }
    }
    // A set one still counts, and a bad one is one clear usage error.
    let out = env.cmd().env("SOURCE_DATE_EPOCH", "1000").args(["build", &ctx]).output().unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), plain);
    let out = env.cmd().env("SOURCE_DATE_EPOCH", "soon").args(["build", &ctx]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("SOURCE_DATE_EPOCH=\"soon\"") && !err.contains("--timestamp"), "{err}");
}

#[test]
fn images_on_a_fresh_machine_is_an_empty_list() {
    let env = Env::new();
    let out = env.ok(&["images"]);
    assert_eq!(out.lines().count(), 1, "header only: {out}");
    assert!(out.starts_with("REPOSITORY"));
    assert_eq!(env.ok(&["images", "--json"]).trim(), "[]");
    assert_eq!(env.ok(&["image", "ls"]).lines().count(), 1);
    assert!(!env.store().exists(), "listing creates no store");
    // Without any variable: the default location under HOME, also absent.
    let out = env.cmd().env_remove("STRATA_STORE").arg("images").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // A directory that is not a store is still an error.
    std::fs::create_dir_all(env.store()).unwrap();
    std::fs::write(env.store().join("x"), "").unwrap();
    let err = env.fails(&["images"], 2);
    assert!(err.contains("not a strata store"), "{err}");
}

/// Truncates the blob `digest` names in `store`, keeping its name.
fn damage_blob(store: &Path, digest: &str) {
    let path = store.join("blobs/sha256").join(&digest["sha256:".len()..]);
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, b"{}").unwrap();
}

#[test]
fn one_exit_code_table_for_every_command() {
    let env = Env::new();
    let help = env.ok(&["--help"]);
    for line in ["Exit codes", "0  success", "1  the thing failed", "2  usage", "3  store damage"] {
        assert!(help.contains(line), "{line}: {help}");
    }
    let a = env.build(&env.context("a", "one\n"), &["-t", "app:a"]);
    env.build(&env.context("b", "two\n"), &["-t", "app:b"]);
    // 0: success.
    env.ok(&["diff", "app:a", "app:a"]);
    // 1: the thing failed (a diff that finds differences; a build whose COPY source is absent).
    env.fails(&["diff", "app:a", "app:b"], 1);
    let bad = env.path("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("Dockerfile"), "FROM scratch\nCOPY missing /x\n").unwrap();
    env.fails(&["build", "--progress", "plain", bad.to_str().unwrap()], 1);
    // 2: usage or environment, from clap and from the commands alike.
    env.fails(&["images", "--no-such-flag"], 2);
    env.fails(&["inspect", "nope:1"], 2);
    env.fails(&["build", "-t", "Bad Name", bad.to_str().unwrap()], 2);
    env.fails(&["build", "-f", "/nonexistent/Dockerfile", bad.to_str().unwrap()], 2);
    // 3: store damage, found by a reader and by fsck.
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.store().join("blobs/sha256").join(&a["sha256:".len()..]))
            .unwrap(),
    )
    .unwrap();
    damage_blob(&env.store(), manifest["config"]["digest"].as_str().unwrap());
    let err = env.fails(&["inspect", "--no-efficiency", "app:a"], 3);
    assert_eq!(err.lines().count(), 1, "{err}");
    env.fails(&["fsck"], 3);
}

#[test]
fn text_inspect_shows_exposed_ports_and_labels() {
    let env = Env::new();
    env.build(&env.context("ctx", "one\n"), &["-t", "app:v1"]);
    let out = env.ok(&["inspect", "--no-efficiency", "app:v1"]);
    assert!(out.contains("ExposedPorts: 53/udp 8080/tcp\n"), "{out}");
    assert!(out.contains("Labels:\n  org.example.team=core\n  version=1.0\n"), "{out}");
}

#[test]
fn completions_mention_the_subcommands() {
    let env = Env::new();
    let bash = env.ok(&["completion", "bash"]);
    for sub in ["build", "images", "rmi", "prune", "completion", "man", "--dangling"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    assert!(env.ok(&["completion", "zsh"]).contains("#compdef strata"));
    assert!(env.ok(&["completion", "fish"]).contains("complete -c strata"));
    env.fails(&["completion", "tcsh"], 2);
}

#[test]
fn man_pages_are_written_with_examples_and_help_shows_them() {
    let env = Env::new();
    let dir = env.path("man/man1");
    assert!(env.ok(&["man", dir.to_str().unwrap()]).contains("man pages"));
    let page = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    for cmd in ["build", "diff", "push", "images"] {
        let text = page(&format!("strata-{cmd}.1"));
        assert!(text.contains(".SH EXAMPLES"), "strata-{cmd}.1: {text}");
        assert!(text.contains(&format!("strata {cmd} ")), "strata-{cmd}.1: {text}");
        let help = env.ok(&[cmd, "--help"]);
        let examples = help.split("Examples:").nth(1).unwrap_or_else(|| panic!("{help}"));
        let lines = examples.lines().filter(|l| l.trim_start().starts_with("strata ")).count();
        assert!((2..=3).contains(&lines), "{cmd} --help: {help}");
    }
    let top = page("strata.1");
    assert!(top.contains(".SH EXIT STATUS") && top.contains("store damage"), "{top}");
    assert!(page("strata-image-prune.1").contains("dangling"));
}
