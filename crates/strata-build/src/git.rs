//! Git sources: `ADD <git URL> <dest>` and a git URL as the build context, through the `git` CLI.
//!
//! A git URL is recognized as BuildKit's `gitutil.ParseGitRef` recognizes one: `git@host:path`,
//! `git://...` and `ssh://...` always, `http(s)://...` only when its path ends in `.git`. The
//! fragment names what to take, `#REF:SUBDIR`: REF is a branch, a tag or a full commit id (the
//! remote's default branch when empty), SUBDIR a directory of the tree whose contents are taken
//! instead of the whole tree.
//!
//! A build first *resolves* the source (one `git ls-remote`, or nothing at all for a full commit
//! id, as BuildKit) and keys the step on the commit it names, with the subdirectory and
//! `--keep-git-dir`: a rebuild against an unchanged ref is a cache hit without a clone, and a
//! new commit on a branch runs the step again. Only on a miss is the commit fetched (`git fetch
//! --depth 1` of exactly that commit, a full fetch where the server refuses that) and checked
//! out, its submodules too. The result has no `.git` (nor a submodule's) unless
//! `--keep-git-dir` asks for it (and no subdirectory is taken, BuildKit's rule), is owned 0:0
//! (or by `--chown`), and every file, directory and symlink has the commit's committer time
//! as its mtime: BuildKit's `git.mtime=commit`, the
//! deterministic choice (its default is the checkout time); the layer writer then clamps it to
//! the build's timestamp like any mtime. `--checksum=HEX` is BuildKit's commit check: a prefix
//! of the commit id (or of an annotated tag's object id).
//!
//! Credentials in a URL (`https://user:token@host/...`) are never shown: every message and the
//! history's `created_by` carry the URL with its password replaced by `xxxxx` (BuildKit's
//! `RedactCredentials`), and git's own error output is scrubbed the same way.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{BuildError, Result};

/// A git source as BuildKit reads one: the remote, the ref and the subdirectory of the
/// `#REF:SUBDIR` fragment. Its [`Display`](fmt::Display) is the URL with any password redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitUrl {
    remote: String,
    reference: Option<String>,
    subdir: Option<String>,
}

impl GitUrl {
    /// Parses `url` when it is a git URL by BuildKit's rule (`git@`, `git://`, `ssh://`, or
    /// `http(s)://` with a path ending in `.git`); `None` for anything else, a plain HTTP
    /// download or a local path included.
    pub fn parse(url: &str) -> Option<GitUrl> {
        let (remote, fragment) = match url.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (url, None),
        };
        let lower = remote.to_ascii_lowercase();
        let is_git = if lower.starts_with("git@") {
            remote.contains(':')
        } else if lower.starts_with("git://") || lower.starts_with("ssh://") {
            true
        } else if lower.starts_with("http://") || lower.starts_with("https://") {
            let path = remote.split('?').next().unwrap_or(remote);
            path.ends_with(".git")
        } else {
            false
        };
        if !is_git {
            return None;
        }
        let (reference, subdir) = match fragment {
            Some(f) => match f.split_once(':') {
                Some((r, s)) => (r, Some(s)),
                None => (f, None),
            },
            None => ("", None),
        };
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Some(GitUrl {
            remote: remote.to_string(),
            reference: non_empty(reference),
            subdir: subdir.and_then(non_empty),
        })
    }

    /// The repository URL, without the fragment (credentials included: never print it).
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// The branch, tag or commit id of the fragment; `None` is the default branch.
    pub fn reference(&self) -> Option<&str> {
        self.reference.as_deref()
    }

    /// The subdirectory of the fragment, if any.
    pub fn subdir(&self) -> Option<&str> {
        self.subdir.as_deref()
    }

    /// The ref for messages: as written, or `HEAD` for the default branch.
    fn ref_label(&self) -> String {
        self.reference.clone().unwrap_or_else(|| "HEAD".to_string())
    }

    /// The subdirectory as a clean relative path; `None` for the whole tree.
    fn subdir_path(&self) -> Option<PathBuf> {
        let mut out = PathBuf::new();
        for c in Path::new(self.subdir.as_deref()?).components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::ParentDir => {
                    out.pop();
                }
                _ => {}
            }
        }
        (!out.as_os_str().is_empty()).then_some(out)
    }

    /// The repository for messages: the remote, its password redacted (the ref is named
    /// apart).
    fn remote_label(&self) -> String {
        redact_text(&self.remote)
    }

    fn error(&self, action: &'static str, detail: &str) -> BuildError {
        BuildError::Git {
            url: self.remote_label(),
            reference: self.ref_label(),
            action,
            detail: redact_text(detail.trim()),
        }
    }
}

impl fmt::Display for GitUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_text(&self.remote))?;
        match (&self.reference, &self.subdir) {
            (None, None) => Ok(()),
            (r, None) => write!(f, "#{}", r.as_deref().unwrap_or("")),
            (r, Some(s)) => write!(f, "#{}:{s}", r.as_deref().unwrap_or("")),
        }
    }
}

/// Replaces the password of every `scheme://user:password@` in `text` with `xxxxx`, as
/// BuildKit's `urlutil.RedactCredentials` does for one URL.
pub(crate) fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', ' ', '\t', '\n', '\'', '"', '#']).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:xxxxx")),
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

/// What a git source's ref named when the build resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// The commit id (40 hex digits).
    pub commit: String,
    /// The annotated tag's object id, when the ref is one.
    pub tag: Option<String>,
}

fn is_commit_id(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `git` with no prompt that could hang a build and no input.
fn git() -> Command {
    let mut c = Command::new("git");
    c.env("GIT_TERMINAL_PROMPT", "0").env("LC_ALL", "C").stdin(Stdio::null());
    if std::env::var_os("GIT_SSH_COMMAND").is_none() {
        // ssh must not ask for a password or a host key either.
        c.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    c
}

/// Runs `cmd`; its stdout, or its stderr as the error detail.
fn run(url: &GitUrl, action: &'static str, cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|source| BuildError::GitNotRunnable { source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // git's message on one line.
        let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let detail = match lines.as_slice() {
            [] => format!("git exited with {}", out.status),
            _ => lines.join(" "),
        };
        return Err(url.error(action, &detail));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The commit `url`'s ref names: without asking the remote for a full commit id (BuildKit's
/// rule), else one `git ls-remote`, preferring an exact ref name, then a branch, then a tag
/// (peeled to its commit).
pub(crate) fn resolve(url: &GitUrl) -> Result<Resolved> {
    let reference = url.ref_label();
    if is_commit_id(&reference) {
        return Ok(Resolved { commit: reference, tag: None });
    }
    let peeled = format!("{reference}^{{}}");
    let out =
        run(url, "ls-remote", git().args(["ls-remote", "--", url.remote(), &reference, &peeled]))?;
    let refs: Vec<(&str, &str)> =
        out.lines().filter_map(|l| l.split_once('\t')).filter(|(id, _)| is_commit_id(id)).collect();
    let candidates =
        [reference.clone(), format!("refs/heads/{reference}"), format!("refs/tags/{reference}")];
    let name = candidates
        .iter()
        .find(|c| refs.iter().any(|(_, n)| n == c))
        .cloned()
        .or_else(|| refs.iter().map(|(_, n)| n.to_string()).find(|n| !n.ends_with("^{}")));
    let Some(name) = name else {
        return Err(BuildError::GitUnknownRef { url: url.remote_label(), reference });
    };
    let id_of = |n: &str| refs.iter().find(|(_, m)| *m == n).map(|(id, _)| id.to_string());
    let direct = id_of(&name).unwrap_or_default();
    Ok(match id_of(&format!("{name}^{{}}")) {
        Some(commit) => Resolved { commit, tag: Some(direct) },
        None => Resolved { commit: direct, tag: None },
    })
}

/// BuildKit's `--checksum` for a git source: a prefix of the commit id or of the annotated
/// tag's object id.
pub(crate) fn check_checksum(url: &GitUrl, resolved: &Resolved, checksum: &str) -> Result<()> {
    let want = checksum.to_ascii_lowercase();
    let matches = |id: &str| !want.is_empty() && id.starts_with(&want);
    if matches(&resolved.commit) || resolved.tag.as_deref().is_some_and(matches) {
        return Ok(());
    }
    Err(BuildError::GitChecksumMismatch {
        url: url.remote_label(),
        expected: checksum.to_string(),
        found: resolved.commit.clone(),
    })
}

/// Fetches and checks out the resolved commit of `url` in the empty directory `dir`; the
/// directory whose contents are the source (`dir` or its subdirectory), with `.git` only
/// when `keep_git_dir` and no subdirectory, and every mtime the commit's time.
pub(crate) fn checkout(
    url: &GitUrl,
    resolved: &Resolved,
    dir: &Path,
    keep_git_dir: bool,
) -> Result<PathBuf> {
    let commit = &resolved.commit;
    let at = |c: &mut Command| {
        c.arg("-C").arg(dir);
    };
    let mut init = git();
    init.args(["-c", "init.defaultBranch=main", "init", "-q"]).arg(dir);
    run(url, "init", &mut init)?;
    let mut add = git();
    at(&mut add);
    run(url, "remote add", add.args(["remote", "add", "origin", url.remote()]))?;
    let mut shallow = git();
    at(&mut shallow);
    shallow.args(["fetch", "-q", "--depth", "1", "--no-tags", "origin", commit]);
    if run(url, "fetch", &mut shallow).is_err() {
        // A server that refuses a want by id (protocol v0 without allowReachableSHA1InWant):
        // everything, then the commit from it.
        let mut full = git();
        at(&mut full);
        run(url, "fetch", full.args(["fetch", "-q", "--tags", "origin"]))?;
    }
    let mut co = git();
    at(&mut co);
    run(url, "checkout", co.args(["-c", "advice.detachedHead=false", "checkout", "-q", commit]))?;
    if dir.join(".gitmodules").is_file() {
        // Submodules too, shallow, as BuildKit; never from the builder's own filesystem.
        let mut sub = git();
        at(&mut sub);
        sub.args(["-c", "protocol.file.allow=never", "submodule", "update", "--init"]);
        run(url, "submodule update", sub.args(["--recursive", "--depth=1"]))?;
    }
    let mut show = git();
    at(&mut show);
    let time = run(url, "show", show.args(["show", "-s", "--format=%ct", commit]))?;
    let time: i64 = time
        .trim()
        .parse()
        .map_err(|_| url.error("show", &format!("unexpected commit time {:?}", time.trim())))?;
    let git_dir = dir.join(".git");
    let root = match url.subdir_path() {
        Some(sub) => {
            // Every component a real directory (BuildKit's validateDirsOnly), never a symlink
            // out of the tree.
            let mut at = dir.to_path_buf();
            for c in sub.components() {
                at.push(c);
                if !std::fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir()) {
                    return Err(BuildError::GitNoSubdir {
                        url: url.remote_label(),
                        reference: url.ref_label(),
                        subdir: sub.to_string_lossy().into_owned(),
                    });
                }
            }
            at
        }
        None => dir.to_path_buf(),
    };
    if keep_git_dir && root == dir {
        // What the image keeps names the remote without its credentials.
        let mut set = git();
        at(&mut set);
        run(
            url,
            "remote set-url",
            set.args(["remote", "set-url", "origin"]).arg(redact_text(url.remote())),
        )?;
        let _ = std::fs::remove_file(git_dir.join("FETCH_HEAD"));
    } else {
        // The repository's `.git` and every submodule's (a file naming the first).
        remove_git_entries(dir)?;
    }
    set_mtimes(&root, time)?;
    Ok(root)
}

/// Removes every `.git` below `dir` (git never tracks a path of that name).
fn remove_git_entries(dir: &Path) -> Result<()> {
    let mut found = Vec::new();
    let mut walk = walkdir::WalkDir::new(dir).into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            BuildError::io("walk", path, e.into())
        })?;
        if entry.file_name() == ".git" {
            if entry.file_type().is_dir() {
                walk.skip_current_dir();
            }
            found.push((entry.path().to_path_buf(), entry.file_type().is_dir()));
        }
    }
    for (path, is_dir) in found {
        let removed =
            if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.map_err(|e| BuildError::io("remove", &path, e))?;
    }
    Ok(())
}

/// Sets the mtime (and atime) of `root` and everything below it, symlinks themselves
/// included, to `time`.
fn set_mtimes(root: &Path, time: i64) -> Result<()> {
    use rustix::fs::{AtFlags, Timespec, Timestamps};
    let t = Timespec { tv_sec: time, tv_nsec: 0 };
    let stamps = Timestamps { last_access: t, last_modification: t };
    // Children first, so setting a directory's time is the last change to it.
    for entry in walkdir::WalkDir::new(root).contents_first(true) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            BuildError::io("walk", path, e.into())
        })?;
        rustix::fs::utimensat(rustix::fs::CWD, entry.path(), &stamps, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| BuildError::io("utimensat", entry.path(), e.into()))?;
    }
    Ok(())
}

/// A build context fetched from a git URL (`strata build https://host/repo.git#REF:DIR`, as
/// `docker build` takes one): the commit the ref names, checked out (shallow) into a
/// directory of its own, the subdirectory's contents when the URL names one, without `.git`
/// unless the build arg `BUILDKIT_CONTEXT_KEEP_GIT_DIR` is true (BuildKit's switch).
#[derive(Debug)]
pub struct GitContext {
    /// The temp dir of an uncached checkout.
    _dir: Option<tempfile::TempDir>,
    root: PathBuf,
    commit: String,
}

/// BuildKit's `BUILDKIT_CONTEXT_KEEP_GIT_DIR`, true by Go's `ParseBool`.
fn keep_git_dir(build_args: &strata_recipe::BuildArgs) -> bool {
    matches!(
        build_args.get("BUILDKIT_CONTEXT_KEEP_GIT_DIR"),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True")
    )
}

impl GitContext {
    /// Resolves and checks out `url` (into the system temp dir, removed on drop), keeping
    /// `.git` when `build_args` set `BUILDKIT_CONTEXT_KEEP_GIT_DIR` to a true value (Go's
    /// `ParseBool`: `1`, `t`, `true`, ...).
    pub fn fetch(url: &GitUrl, build_args: &strata_recipe::BuildArgs) -> Result<GitContext> {
        let keep_git_dir = keep_git_dir(build_args);
        let dir = tempfile::Builder::new()
            .prefix("strata-git-context-")
            .tempdir()
            .map_err(|e| BuildError::io("mkdir", std::env::temp_dir(), e))?;
        let resolved = resolve(url)?;
        let checkout_dir = dir.path().join("checkout");
        let root = checkout(url, &resolved, &checkout_dir, keep_git_dir)?;
        Ok(GitContext { _dir: Some(dir), root, commit: resolved.commit })
    }

    /// [`GitContext::fetch`] through `store`'s git tree table: the ref is resolved (one
    /// `git ls-remote`, none for a commit id) and the commit's tree is checked out only when
    /// the store does not have it yet, so a second build of the same commit clones nothing.
    /// The tree is kept by commit and `.git` choice; the subdirectory is taken from it.
    pub fn fetch_cached(
        store: &strata_store::Store,
        url: &GitUrl,
        build_args: &strata_recipe::BuildArgs,
    ) -> Result<GitContext> {
        // `.git` stays only in a context that is the whole tree (as `checkout` rules).
        let keep_git_dir = keep_git_dir(build_args) && url.subdir.is_none();
        let resolved = resolve(url)?;
        let key = strata_types::Digest::of_bytes(
            format!("git-context-v1\0{}\0{keep_git_dir}", resolved.commit).as_bytes(),
        );
        // The whole tree: every subdirectory of the commit is then a hit.
        let whole = GitUrl { subdir: None, ..url.clone() };
        let tree = store.git_trees().ensure(&key, |dir| {
            checkout(&whole, &resolved, &dir.join("checkout"), keep_git_dir).map(|_| ())
        })?;
        let mut root = tree.join("checkout");
        if let Some(sub) = url.subdir_path() {
            // Every component a real directory, as `checkout` checks it.
            for c in sub.components() {
                root.push(c);
                if !std::fs::symlink_metadata(&root).is_ok_and(|m| m.is_dir()) {
                    return Err(BuildError::GitNoSubdir {
                        url: url.remote_label(),
                        reference: url.ref_label(),
                        subdir: sub.to_string_lossy().into_owned(),
                    });
                }
            }
        }
        Ok(GitContext { _dir: None, root, commit: resolved.commit })
    }

    /// The context directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The commit it was checked out at.
    pub fn commit(&self) -> &str {
        &self.commit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls_are_recognized_as_buildkit_does() {
        let u = GitUrl::parse("https://host/repo.git#v1:sub/dir").unwrap();
        assert_eq!(
            (u.remote(), u.reference(), u.subdir()),
            ("https://host/repo.git", Some("v1"), Some("sub/dir"))
        );
        let u = GitUrl::parse("git@github.com:moby/buildkit.git#main").unwrap();
        assert_eq!((u.remote(), u.reference()), ("git@github.com:moby/buildkit.git", Some("main")));
        let u = GitUrl::parse("git://127.0.0.1:9418/repo#:docs").unwrap();
        assert_eq!((u.reference(), u.subdir()), (None, Some("docs")));
        assert!(GitUrl::parse("ssh://git@host/repo").is_some());
        // An HTTP URL is a download unless its path ends in `.git`.
        assert!(GitUrl::parse("https://host/file.tar.gz").is_none());
        assert!(GitUrl::parse("https://host/repo#main").is_none());
        assert!(GitUrl::parse("./local").is_none());
    }

    #[test]
    fn credentials_never_show() {
        let u = GitUrl::parse("https://user:s3cret@host/r.git#main").unwrap();
        assert_eq!(u.to_string(), "https://user:xxxxx@host/r.git#main");
        assert_eq!(
            redact_text("fatal: unable to access 'https://u:tok@h/r.git/': refused"),
            "fatal: unable to access 'https://u:xxxxx@h/r.git/': refused"
        );
        // A user without a password is not a secret.
        assert_eq!(redact_text("ssh://git@host/r"), "ssh://git@host/r");
    }

    #[test]
    fn checksum_is_a_prefix_of_the_commit_or_tag() {
        let u = GitUrl::parse("git://h/r#v1").unwrap();
        let r = Resolved { commit: "ab".repeat(20), tag: Some("cd".repeat(20)) };
        assert!(check_checksum(&u, &r, "abab").is_ok());
        assert!(check_checksum(&u, &r, "CDCD").is_ok());
        assert!(check_checksum(&u, &r, "ee").is_err());
        assert!(check_checksum(&u, &r, "").is_err());
    }
}
