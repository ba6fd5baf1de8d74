//! COPY and ADD: staging the files a step adds, laid out at their destination paths.
//!
//! A COPY needs no sandbox (DESIGN.md decision 5). Its layer is exactly the files it writes
//! plus their parent directories, so the step builds that tree in a staging directory: each
//! source is expanded (wildcards with Go's `filepath.Match` rules, `.dockerignore` applied to
//! the context), its destination is resolved inside the parent image (relative to WORKDIR,
//! following the image's symlinks without leaving it, "into" an existing or `/`-terminated
//! directory), and it is copied there with its final owner and mode. Parent directories that
//! already exist in the image are staged with the image's mode, owner and mtime, so the layer
//! does not clobber them (`/tmp` stays 1777); missing ones are created 0755, owned by the
//! `--chown` user. The staging tree is then one [`Changeset::from_scan`] away from a layer.
//! `--chmod` ([`strata_recipe::Chmod`], octal or symbolic) is applied to each copied entry's
//! own mode (0644 for a heredoc, 0600 for a download), directories below the source included,
//! so a symbolic `X` tells directories and executables from plain files, as BuildKit does.
//!
//! Within one source, files that are hardlinks of each other stay hardlinks (BuildKit and
//! buildah both keep them; two sources never share an inode in the result). Fifos and device
//! nodes are recreated as such (devices need `CAP_MKNOD`, i.e. root); sockets are skipped.
//! ADD extracts a local file that is a tar archive, plain or compressed with gzip, bzip2, xz or
//! zstd, recognized as Docker does: by its first bytes, never by its name, and only when the
//! (decompressed) start is a valid tar header; anything else is copied as a file. `--chown`
//! applies to everything extracted (BuildKit's rule; buildah 1.28 keeps the archive's owners).
//!
//! [`Changeset::from_scan`]: strata_layer::Changeset::from_scan

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::Digest as _;
use strata_recipe::{Chmod, CopySpec, DockerIgnore, Source};
use strata_types::{CancelToken, Digest};

use crate::context_hash::{hash_file, ContextHashes, FileCount, SourceWalk};
use crate::error::{BuildError, Result};
use crate::git::GitUrl;
use crate::rootfs::{resolve_owner, set_mode};
use strata_layer::overlay::{normalize, MergedView};

/// Where COPY sources are read from.
pub(crate) struct SourceTree {
    pub view: MergedView,
    /// `.dockerignore` of the context; `None` for a stage or image.
    pub ignore: Option<DockerIgnore>,
    /// For messages: `the build context`, `stage NAME`, `image REF`.
    pub label: String,
    /// Whether owners are kept (`--from` sources) or reset to 0:0 (the context).
    pub keep_owner: bool,
}

impl SourceTree {
    fn hidden(&self, rel: &Path) -> bool {
        match &self.ignore {
            Some(ig) if !rel.as_os_str().is_empty() => {
                let s = rel.to_string_lossy();
                ig.is_excluded(&s)
            }
            _ => false,
        }
    }

    fn may_have_inclusions(&self, rel: &Path) -> bool {
        match &self.ignore {
            Some(ig) => ig.dir_may_have_inclusions(&rel.to_string_lossy()),
            None => false,
        }
    }
}

/// Everything a COPY/ADD step needs besides its spec.
pub(crate) struct CopyEnv<'a> {
    pub image: &'a MergedView,
    pub workdir: &'a str,
    pub is_add: bool,
    /// Scratch space for heredoc, URL and git sources.
    pub scratch: &'a Scratch<'a>,
    /// The build's Ctrl-C, looked at between files and between chunks of a big one.
    pub cancel: &'a CancelToken,
}

/// A step's scratch directory, made on first use: a COPY of context paths that hits the
/// cache makes no directory (a no-op rebuild writes nothing it does not have to).
pub(crate) struct Scratch<'a> {
    store: &'a strata_store::Store,
    dir: std::sync::Mutex<Option<strata_store::WorkDir>>,
}

impl<'a> Scratch<'a> {
    /// Scratch space in `store`'s tmp, not made yet.
    pub fn new(store: &'a strata_store::Store) -> Scratch<'a> {
        Scratch { store, dir: std::sync::Mutex::new(None) }
    }

    /// The directory, made now if it was not yet.
    pub fn path(&self) -> Result<PathBuf> {
        let mut dir = self.dir.lock().unwrap_or_else(|p| p.into_inner());
        if dir.is_none() {
            *dir = Some(self.store.work_dir("step-")?);
        }
        Ok(dir.as_ref().map(|d| d.path().to_path_buf()).unwrap_or_default())
    }
}

/// One expanded source.
struct Item {
    /// The file on disk.
    real: PathBuf,
    /// Its path in the source tree (empty for heredoc/URL sources).
    rel: PathBuf,
    /// The name it gets when copied into a directory.
    name: OsString,
    is_dir: bool,
    /// `--parents`: the path to keep below the destination.
    keep_path: Option<PathBuf>,
    /// Fixed mode (heredoc 0644, URL 0600) instead of the file's own.
    mode: Option<u32>,
    /// A local file ADD may extract.
    may_extract: bool,
    /// As written, for messages.
    written: String,
    /// The tree a directory item is read from when it is not the step's (a git checkout).
    tree: Option<Box<SourceTree>>,
}

/// URL sources already downloaded and git sources already resolved (to compute a cache key),
/// by source index.
#[derive(Default)]
pub(crate) struct Fetched {
    urls: HashMap<usize, Item>,
    commits: HashMap<usize, crate::git::Resolved>,
}

impl Fetched {
    /// The commits the git sources resolved to, in source order.
    pub(crate) fn git_commits(&self) -> Vec<String> {
        let mut by_index: Vec<(&usize, &crate::git::Resolved)> = self.commits.iter().collect();
        by_index.sort_by_key(|(i, _)| **i);
        by_index.into_iter().map(|(_, r)| r.commit.clone()).collect()
    }
}

fn parse_exclude(spec: &CopySpec) -> Result<Option<DockerIgnore>> {
    if spec.exclude.is_empty() {
        return Ok(None);
    }
    let text = spec.exclude.join("\n");
    DockerIgnore::parse(&text).map(Some).map_err(|source| BuildError::Parse {
        path: PathBuf::from("--exclude"),
        source: Box::new(source),
    })
}

/// What the sources of `spec` contribute to its cache key (see [`crate::cache`]): for each
/// context path, every match with the digest of its tree; for a URL without `--checksum`,
/// the digest of the fetched bytes (kept in `fetched` for [`stage_copy`]). `--from` sources
/// and heredocs are covered by the chain's diffIDs and the spec itself.
pub(crate) fn source_inputs(
    env: &CopyEnv<'_>,
    spec: &CopySpec,
    tree: &SourceTree,
    hashes: &ContextHashes,
    epoch: i64,
    fetched: &mut Fetched,
    count: &mut FileCount,
) -> Result<serde_json::Value> {
    let exclude = parse_exclude(spec)?;
    let walk = SourceWalk {
        ignore: tree.ignore.as_ref(),
        exclude: exclude.as_ref(),
        owners: tree.keep_owner,
        mtime_clamp: Some(epoch),
        root_meta: false,
        cancel: Some(env.cancel),
    };
    no_match(spec, tree, env)?;
    let mut out = Vec::new();
    for (i, src) in spec.sources.iter().enumerate() {
        match src {
            Source::Path { path } if tree.ignore.is_some() => {
                let mut matches = Vec::new();
                for item in expand_path(tree, path, spec, env)? {
                    let digest = walk.digest(hashes, &item.real, &item.rel, count)?;
                    matches.push(serde_json::json!({
                        "rel": item.rel.to_string_lossy(),
                        "name": item.name.to_string_lossy(),
                        "keep_path": item.keep_path.as_ref().map(|k| k.to_string_lossy().to_string()),
                        "is_dir": item.is_dir,
                        "digest": digest.to_string(),
                    }));
                }
                out.push(serde_json::Value::Array(matches));
            }
            Source::Url { url } if env.is_add => match GitUrl::parse(url) {
                Some(git_url) => {
                    // The commit, not the ref: a moved branch is a miss, an unchanged one a
                    // hit without a clone.
                    let resolved = crate::git::resolve(&git_url)?;
                    if let Some(sum) = &spec.checksum {
                        crate::git::check_checksum(&git_url, &resolved, sum)?;
                    }
                    // The commit is a key field of its own (`git`, from `fetched`), so a
                    // miss can say a branch moved; ref, subdir and --keep-git-dir are in
                    // the spec.
                    out.push(serde_json::Value::Null);
                    fetched.commits.insert(i, resolved);
                }
                None if spec.checksum.is_none() => {
                    let item = fetch_url(url, None, &env.scratch.path()?, i)?;
                    let digest = Digest::from_sha256(hash_file(&item.real, Some(env.cancel))?);
                    out.push(serde_json::json!({ "fetched": digest.to_string(), "name": item.name.to_string_lossy() }));
                    fetched.urls.insert(i, item);
                }
                // With --checksum the digest is known: the spec covers it.
                None => out.push(serde_json::Value::Null),
            },
            _ => out.push(serde_json::Value::Null),
        }
    }
    Ok(serde_json::Value::Array(out))
}

/// Stages the files of `spec` under `staging`.
pub(crate) fn stage_copy(
    env: &CopyEnv<'_>,
    spec: &CopySpec,
    tree: &SourceTree,
    staging: &Path,
    fetched: &mut Fetched,
) -> Result<()> {
    let owner = match &spec.chown {
        Some(c) if !c.is_empty() => Some(resolve_owner(env.image, c)?),
        _ => None,
    };
    let chmod = match &spec.chmod {
        Some(flag) => Some(flag.mode().ok_or_else(|| BuildError::Unsupported {
            what: format!("--chmod={flag} before its variables are expanded"),
        })?),
        None => None,
    };
    let exclude = parse_exclude(spec)?;
    no_match(spec, tree, env)?;
    let mut items = Vec::new();
    for (i, src) in spec.sources.iter().enumerate() {
        match src {
            Source::Path { path } => items.extend(expand_path(tree, path, spec, env)?),
            Source::Heredoc { name, content, .. } => {
                let dir = env.scratch.path()?.join(format!("heredoc-{i}"));
                fs::create_dir_all(&dir).map_err(|e| BuildError::io("mkdir", &dir, e))?;
                let real = dir.join(name);
                fs::write(&real, content).map_err(|e| BuildError::io("write", &real, e))?;
                items.push(Item {
                    real,
                    rel: PathBuf::new(),
                    name: OsString::from(name),
                    is_dir: false,
                    keep_path: None,
                    mode: Some(0o644),
                    may_extract: false,
                    written: format!("<<{name}"),
                    tree: None,
                });
            }
            Source::Url { url } => {
                if !env.is_add {
                    return Err(BuildError::Unsupported {
                        what: format!("COPY from a URL ({url})"),
                    });
                }
                if let Some(git_url) = GitUrl::parse(url) {
                    items.push(git_item(env, spec, &git_url, fetched.commits.remove(&i), i)?);
                    continue;
                }
                match fetched.urls.remove(&i) {
                    Some(item) => items.push(item),
                    None => items.push(fetch_url(
                        url,
                        spec.checksum.as_deref(),
                        &env.scratch.path()?,
                        i,
                    )?),
                }
            }
        }
    }
    let dest = if spec.dest.starts_with('/') {
        spec.dest.clone()
    } else {
        let wd = if env.workdir.is_empty() { "/" } else { env.workdir };
        format!("{}/{}", wd.trim_end_matches('/'), spec.dest)
    };
    let into_dir_syntax = dest.ends_with('/') || dest.ends_with("/.") || dest == ".";
    let dest_dir = env.image.resolve(Path::new(&dest), true)?;
    let dest_is_dir = env.image.metadata(&dest_dir).is_some_and(|m| m.is_dir());
    let into_dir = into_dir_syntax || dest_is_dir;
    if (items.len() > 1 || spec.sources.len() > 1) && !into_dir {
        return Err(BuildError::DestinationNotDirectory { dest: spec.dest.clone() });
    }
    let new_owner = owner.unwrap_or((0, 0));
    let opts = CopyOpts {
        owner,
        chmod,
        exclude: exclude.as_ref(),
        keep_owner: tree.keep_owner,
        cancel: env.cancel,
    };
    for item in &items {
        cancelled(env.cancel)?;
        let base = match &item.keep_path {
            Some(k) => {
                let d = dest_dir.join(k);
                if item.is_dir {
                    d
                } else {
                    d.parent().map(Path::to_path_buf).unwrap_or_default()
                }
            }
            None => dest_dir.clone(),
        };
        let extract = env.is_add && item.may_extract && spec.unpack != Some(false);
        if extract {
            if let Some(kind) = archive_kind(&item.real)? {
                ensure_dir(env.image, staging, &base, new_owner)?;
                extract_archive(
                    &item.real,
                    kind,
                    &staging.join(&base),
                    &item.written,
                    owner,
                    Some(env.cancel),
                )?;
                continue;
            }
        }
        if item.is_dir {
            let target = if item.keep_path.is_some() { base } else { dest_dir.clone() };
            copy_dir_root(env, tree, item, &target, staging, &opts, new_owner)?;
        } else {
            let target = if item.keep_path.is_some() || into_dir {
                base.join(&item.name)
            } else {
                let parent = Path::new(&dest).parent().unwrap_or(Path::new("/"));
                let parent = env.image.resolve(parent, true)?;
                let name = Path::new(&dest).file_name().unwrap_or(OsStr::new(""));
                parent.join(name)
            };
            if let Some(parent) = target.parent() {
                ensure_dir(env.image, staging, parent, new_owner)?;
            }
            let mut links = Hardlinks::new();
            let md = fs::symlink_metadata(&item.real)
                .map_err(|e| BuildError::io("lstat", &item.real, e))?;
            copy_entry(&item.real, &md, &staging.join(&target), &opts, item.mode, &mut links)?;
        }
    }
    Ok(())
}

/// Staged paths by source inode (`dev`, `ino`): a later name of the same inode becomes a
/// hardlink to the first one staged. One map per source, so sources never share inodes.
type Hardlinks = HashMap<(u64, u64), PathBuf>;

struct CopyOpts<'a> {
    owner: Option<(u32, u32)>,
    chmod: Option<&'a Chmod>,
    exclude: Option<&'a DockerIgnore>,
    keep_owner: bool,
    cancel: &'a CancelToken,
}

/// [`BuildError::Cancelled`] once the build is.
fn cancelled(cancel: &CancelToken) -> Result<()> {
    if cancel.is_cancelled() {
        return Err(BuildError::Cancelled);
    }
    Ok(())
}

/// Bytes copied between two looks at the cancel token (a chunk takes well under a second).
const COPY_CHUNK: u64 = 64 << 20;

/// Copies the bytes of the file `real` to a new file `target` (see [`copy_open`]).
fn copy_bytes(real: &Path, target: &Path, cancel: &CancelToken) -> Result<()> {
    let src = fs::File::open(real).map_err(|e| BuildError::io("open", real, e))?;
    let size = src.metadata().map_err(|e| BuildError::io("stat", real, e))?.len();
    let dst = fs::File::create(target).map_err(|e| BuildError::io("create", target, e))?;
    copy_open(&src, real, &dst, size, cancel)
}

/// Copies the first `size` bytes of `src` (the size its walk saw, as tar copies a file; fewer
/// if it has shrunk since) to `dst`, in [`COPY_CHUNK`]s by `copy_file_range` (the kernel
/// copies, or shares extents where the filesystem can), stopping between chunks once the
/// build is cancelled. Where the kernel cannot copy between the two files, the bytes go
/// through memory. `real` names `src` in messages.
fn copy_open(
    src: &fs::File,
    real: &Path,
    dst: &fs::File,
    size: u64,
    cancel: &CancelToken,
) -> Result<()> {
    use rustix::io::Errno;
    let mut left = size;
    while left > 0 {
        cancelled(cancel)?;
        let chunk = left.min(COPY_CHUNK) as usize;
        match rustix::fs::copy_file_range(src, None, dst, None, chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => left -= n as u64,
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => break,
            Err(e) => return Err(BuildError::io("copy", real, e.into())),
        }
    }
    while left > 0 {
        cancelled(cancel)?;
        let copied = std::io::copy(&mut src.take(left.min(COPY_CHUNK)), &mut &*dst)
            .map_err(|e| BuildError::io("copy", real, e))?;
        if copied == 0 {
            return Ok(());
        }
        left -= copied;
    }
    Ok(())
}

fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Cleans a source path; in the context, `..` above the root is an error.
fn clean_source(tree: &SourceTree, path: &str) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir if !out.pop() && tree.ignore.is_some() => {
                return Err(BuildError::SourceOutsideContext { path: path.to_string() });
            }
            _ => {}
        }
    }
    Ok(out)
}

/// BuildKit's empty-wildcard rule: a wildcard source that matches nothing is skipped when
/// another source of the instruction gives something, and is an error ("not found", naming
/// the first such pattern) only when no source gives anything at all.
fn no_match(spec: &CopySpec, tree: &SourceTree, env: &CopyEnv<'_>) -> Result<()> {
    let mut first_empty = None;
    for src in &spec.sources {
        match src {
            Source::Path { path }
                if has_meta(path) && expand_path(tree, path, spec, env)?.is_empty() =>
            {
                first_empty.get_or_insert(path);
            }
            // A plain path either exists (and counts) or is an error of its own later.
            _ => return Ok(()),
        }
    }
    match first_empty {
        Some(path) => {
            Err(BuildError::SourceNotFound { path: path.clone(), location: tree.label.clone() })
        }
        None => Ok(()),
    }
}

fn expand_path(
    tree: &SourceTree,
    path: &str,
    spec: &CopySpec,
    env: &CopyEnv<'_>,
) -> Result<Vec<Item>> {
    let not_found =
        || BuildError::SourceNotFound { path: path.to_string(), location: tree.label.clone() };
    let is_context = tree.ignore.is_some();
    if is_context && path.split('/').filter(|c| *c == "..").count() > 0 {
        // Reject any `..` that climbs above the context root.
        clean_source(tree, path)?;
    }
    // `--parents` keeps the path after a `/./` pivot, or the whole path.
    let pivot = path.find("/./").map(|i| normalize(Path::new(&path[..i])));
    let matches: Vec<PathBuf> = if has_meta(path) {
        let pattern = clean_source(tree, path)?;
        // An empty match is not an error here: see `no_match`.
        glob(tree, &pattern)?
    } else {
        vec![clean_source(tree, path)?]
    };
    let mut out = Vec::new();
    for m in matches {
        let resolved = tree.view.resolve(&m, true)?;
        if tree.hidden(&resolved) && !tree.may_have_inclusions(&resolved) {
            return Err(not_found());
        }
        let real = tree.view.find(&resolved).ok_or_else(not_found)?;
        let md = fs::metadata(&real).map_err(|e| BuildError::io("stat", &real, e))?;
        let keep_path = if spec.parents {
            Some(match &pivot {
                Some(p) => m.strip_prefix(p).map(Path::to_path_buf).unwrap_or(m.clone()),
                None => m.clone(),
            })
        } else {
            None
        };
        let name = m.file_name().map(OsStr::to_os_string).unwrap_or_default();
        out.push(Item {
            real,
            rel: resolved,
            name,
            is_dir: md.is_dir(),
            keep_path,
            mode: None,
            may_extract: env.is_add && md.is_file(),
            written: path.to_string(),
            tree: None,
        });
    }
    Ok(out)
}

/// Expands a wildcard pattern component by component over the tree.
fn glob(tree: &SourceTree, pattern: &Path) -> Result<Vec<PathBuf>> {
    let mut current = vec![PathBuf::new()];
    for comp in pattern.components() {
        let part = comp.as_os_str().to_string_lossy().to_string();
        let mut next = Vec::new();
        for base in &current {
            if has_meta(&part) {
                let resolved = tree.view.resolve(base, true)?;
                for name in tree.view.list(&resolved)?.into_keys() {
                    let n = name.to_string_lossy();
                    if go_match(&part, &n) {
                        let p = base.join(&name);
                        if !tree.hidden(&p) || tree.may_have_inclusions(&p) {
                            next.push(p);
                        }
                    }
                }
            } else {
                let p = base.join(&part);
                let resolved = tree.view.resolve(&p, true)?;
                if tree.view.find(&resolved).is_some() {
                    next.push(p);
                }
            }
        }
        current = next;
    }
    current.sort();
    Ok(current)
}

/// Go's `path/filepath.Match` for one path component (no `/` in either).
pub(crate) fn go_match(pattern: &str, name: &str) -> bool {
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, chars consumed including ']').
        let mut i = 0;
        let negate = p.first() == Some(&'^');
        if negate {
            i += 1;
        }
        let mut matched = false;
        let mut first = true;
        loop {
            let ch = *p.get(i)?;
            if ch == ']' && !first {
                i += 1;
                break;
            }
            first = false;
            let lo = if ch == '\\' {
                i += 1;
                *p.get(i)?
            } else {
                ch
            };
            i += 1;
            let mut hi = lo;
            if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|c| *c != ']') {
                i += 1;
                hi = if p[i] == '\\' {
                    i += 1;
                    *p.get(i)?
                } else {
                    p[i]
                };
                i += 1;
            }
            if lo <= c && c <= hi {
                matched = true;
            }
        }
        Some((matched != negate, i))
    }
    fn rec(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|k| rec(&p[1..], &n[k..])),
            Some('?') => !n.is_empty() && rec(&p[1..], &n[1..]),
            Some('[') => match (n.first(), class(&p[1..], n.first().copied().unwrap_or('\0'))) {
                (Some(_), Some((true, used))) => rec(&p[1 + used..], &n[1..]),
                _ => false,
            },
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && rec(&p[2..], &n[1..]),
            Some(c) => n.first() == Some(c) && rec(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    rec(&p, &n)
}

/// Creates `rel` (and its parents) in the staging tree: as the image has them, or new 0755
/// directories owned by `owner`.
pub(crate) fn ensure_dir(
    image: &MergedView,
    staging: &Path,
    rel: &Path,
    owner: (u32, u32),
) -> Result<()> {
    let mut prefix = PathBuf::new();
    for c in normalize(rel).components() {
        prefix.push(c);
        let target = staging.join(&prefix);
        if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let _ = fs::remove_file(&target);
        fs::create_dir(&target).map_err(|e| BuildError::io("mkdir", &target, e))?;
        match image.metadata(&prefix).filter(|m| m.is_dir()) {
            Some(md) => apply_meta(&target, md.uid(), md.gid(), md.mode() & 0o7777, Some(&md))?,
            None => apply_meta(&target, owner.0, owner.1, 0o755, None)?,
        }
    }
    Ok(())
}

fn apply_meta(
    path: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
    times: Option<&fs::Metadata>,
) -> Result<()> {
    use rustix::fs::{AtFlags, Gid, Timespec, Timestamps, Uid};
    let is_link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| BuildError::io("chown", path, e.into()))?;
    if !is_link {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| BuildError::io("chmod", path, e))?;
    }
    if let Some(md) = times {
        let t = Timespec { tv_sec: md.mtime(), tv_nsec: md.mtime_nsec() as _ };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            path,
            &Timestamps { last_access: t, last_modification: t },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| BuildError::io("utimensat", path, e.into()))?;
    }
    Ok(())
}

/// Owner and mode of a copied entry: `--chmod` applied to the mode it would have without
/// it (the fixed mode of a heredoc or URL source, else the source's own), as a symbolic
/// mode's `X` depends on that mode and on whether the entry is a directory.
fn meta_for(md: &fs::Metadata, opts: &CopyOpts<'_>, fixed_mode: Option<u32>) -> (u32, u32, u32) {
    let (uid, gid) = match opts.owner {
        Some(o) => o,
        None if opts.keep_owner => (md.uid(), md.gid()),
        None => (0, 0),
    };
    let mode = fixed_mode.unwrap_or(md.mode() & 0o7777);
    let mode = opts.chmod.map_or(mode, |c| c.apply(mode, md.is_dir()));
    (uid, gid, mode)
}

/// Copies one non-directory entry (file, symlink, fifo, device) to `target` in the staging
/// tree; a file whose inode `links` has seen becomes a hardlink to its first copy.
fn copy_entry(
    real: &Path,
    md: &fs::Metadata,
    target: &Path,
    opts: &CopyOpts<'_>,
    fixed_mode: Option<u32>,
    links: &mut Hardlinks,
) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    clear_target(target)?;
    let ft = md.file_type();
    if ft.is_symlink() {
        let link = fs::read_link(real).map_err(|e| BuildError::io("readlink", real, e))?;
        std::os::unix::fs::symlink(&link, target)
            .map_err(|e| BuildError::io("symlink", target, e))?;
    } else if ft.is_file() {
        let inode = (md.dev(), md.ino());
        if md.nlink() > 1 {
            if let Some(first) = links.get(&inode) {
                // Owner, mode and times are the inode's, already set on the first name.
                return fs::hard_link(first, target).map_err(|e| BuildError::io("link", target, e));
            }
            links.insert(inode, target.to_path_buf());
        }
        copy_bytes(real, target, opts.cancel)?;
    } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
        use rustix::fs::{FileType, Mode};
        let kind = if ft.is_fifo() {
            FileType::Fifo
        } else if ft.is_char_device() {
            FileType::CharacterDevice
        } else {
            FileType::BlockDevice
        };
        rustix::fs::mknodat(rustix::fs::CWD, target, kind, Mode::from_raw_mode(0o600), md.rdev())
            .map_err(|e| BuildError::io("mknod", target, e.into()))?;
    } else {
        // A socket means nothing outside the process that bound it.
        return Ok(());
    }
    let (uid, gid, mode) = meta_for(md, opts, fixed_mode);
    apply_meta(target, uid, gid, mode, Some(md))
}

/// Removes what an earlier source staged at `target`, so the entry copied there replaces it.
fn clear_target(target: &Path) -> Result<()> {
    if fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) {
        fs::remove_dir_all(target).map_err(|e| BuildError::io("remove", target, e))?;
    } else {
        let _ = fs::remove_file(target);
    }
    Ok(())
}

/// Copies the contents of a source directory into `target` (created with the source
/// directory's mode when the image lacks it; kept as the image has it otherwise).
fn copy_dir_root(
    env: &CopyEnv<'_>,
    tree: &SourceTree,
    item: &Item,
    target: &Path,
    staging: &Path,
    opts: &CopyOpts<'_>,
    new_owner: (u32, u32),
) -> Result<()> {
    // As buildah does: a missing destination is created like any missing parent (0755, the
    // --chown owner), not with the source directory's mode; an existing one is kept.
    ensure_dir(env.image, staging, target, new_owner)?;
    let mut links = Hardlinks::new();
    let mut plan = TreePlan::default();
    let tree = item.tree.as_deref().unwrap_or(tree);
    let dest = staging.join(target);
    let walk = TreeWalk { tree, opts };
    walk.copy_tree(&item.rel, Path::new(""), &dest, false, &mut links, &mut plan)?;
    plan.run(opts)
}

/// What a directory copy leaves for after its walk. Creating and filling the regular files is
/// most of a cold COPY's time, and it is bound by system calls, not by one resource, so they
/// are copied in parallel once the walk has made every directory (a file's parent exists
/// before its copy starts). Hardlinks follow once their first name is there, and directories
/// get their owner, mode and mtime last, children first: creating an entry in a directory
/// would change its mtime again.
#[derive(Default)]
struct TreePlan {
    files: Vec<FileJob>,
    /// (first name, further name) of one inode.
    links: Vec<(PathBuf, PathBuf)>,
    /// Directories in the order their metadata is applied (each after its contents).
    dirs: Vec<(PathBuf, fs::Metadata)>,
}

/// One regular file to copy: its source, its staged path, the source's metadata.
struct FileJob {
    real: PathBuf,
    target: PathBuf,
    md: fs::Metadata,
}

impl TreePlan {
    fn run(self, opts: &CopyOpts<'_>) -> Result<()> {
        use rayon::prelude::*;
        self.files.par_iter().try_for_each(|job| {
            cancelled(opts.cancel)?;
            copy_file(job, opts)
        })?;
        for (first, target) in &self.links {
            fs::hard_link(first, target).map_err(|e| BuildError::io("link", target, e))?;
        }
        for (dir, md) in &self.dirs {
            let (uid, gid, mode) = meta_for(md, opts, None);
            apply_meta(dir, uid, gid, mode, Some(md))?;
        }
        Ok(())
    }
}

/// Copies a regular file and gives it its owner, mode and mtime through the open file (no path
/// is looked up again). The target does not exist yet: a new file is made, never one opened.
fn copy_file(job: &FileJob, opts: &CopyOpts<'_>) -> Result<()> {
    use rustix::fs::{Gid, Mode, Timespec, Timestamps, Uid};
    use std::os::unix::fs::OpenOptionsExt;
    let FileJob { real, target, md } = job;
    let src = fs::File::open(real).map_err(|e| BuildError::io("open", real, e))?;
    let dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)
        .map_err(|e| BuildError::io("create", target, e))?;
    copy_open(&src, real, &dst, md.len(), opts.cancel)?;
    let (uid, gid, mode) = meta_for(md, opts, None);
    // Owner before mode: chown clears the setuid and setgid bits.
    rustix::fs::fchown(&dst, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|e| BuildError::io("chown", target, e.into()))?;
    rustix::fs::fchmod(&dst, Mode::from_raw_mode(mode))
        .map_err(|e| BuildError::io("chmod", target, e.into()))?;
    let t = Timespec { tv_sec: md.mtime(), tv_nsec: md.mtime_nsec() as _ };
    rustix::fs::futimens(&dst, &Timestamps { last_access: t, last_modification: t })
        .map_err(|e| BuildError::io("utimensat", target, e.into()))
}

/// A directory copy's walk over one source tree.
struct TreeWalk<'w, 'o> {
    tree: &'w SourceTree,
    opts: &'w CopyOpts<'o>,
}

impl TreeWalk<'_, '_> {
    /// Recursively copies the directory `rel` of the tree into `dest` (regular files, hardlinks
    /// and directory metadata into `plan`); `inner` is the path below the copied source root
    /// (what `--exclude` patterns see); `fresh` says this walk created `dest`, so nothing is
    /// staged in it yet. Whether anything was copied.
    ///
    /// An excluded directory is walked when an exception pattern may match below it, and kept
    /// only when something below it was copied (fsutil's rule, so `!*/sub1*` does not leave
    /// every other directory behind empty).
    fn copy_tree(
        &self,
        rel: &Path,
        inner: &Path,
        dest: &Path,
        fresh: bool,
        links: &mut Hardlinks,
        plan: &mut TreePlan,
    ) -> Result<bool> {
        let (tree, opts) = (self.tree, self.opts);
        let mut copied = false;
        for (name, real) in tree.view.list(rel)? {
            cancelled(opts.cancel)?;
            let child = rel.join(&name);
            let child_inner = inner.join(&name);
            let md = fs::symlink_metadata(&real).map_err(|e| BuildError::io("lstat", &real, e))?;
            let hidden = tree.hidden(&child)
                || opts.exclude.is_some_and(|x| x.is_excluded(&child_inner.to_string_lossy()));
            if hidden && !(md.is_dir() && tree.may_have_inclusions(&child)) {
                continue;
            }
            let target = dest.join(&name);
            if md.is_dir() {
                let mut created = false;
                if fresh || !fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                    if !fresh {
                        let _ = fs::remove_file(&target);
                    }
                    fs::create_dir(&target).map_err(|e| BuildError::io("mkdir", &target, e))?;
                    created = true;
                }
                let below = self.copy_tree(&child, &child_inner, &target, created, links, plan)?;
                if hidden && !below {
                    if created {
                        fs::remove_dir(&target).map_err(|e| BuildError::io("rmdir", &target, e))?;
                    }
                    continue;
                }
                plan.dirs.push((target, md));
            } else if md.is_file() {
                if !fresh {
                    clear_target(&target)?;
                }
                let inode = (md.dev(), md.ino());
                match links.get(&inode) {
                    // Owner, mode and times are the inode's, set through its first name.
                    Some(first) => plan.links.push((first.clone(), target)),
                    None => {
                        if md.nlink() > 1 {
                            links.insert(inode, target.clone());
                        }
                        plan.files.push(FileJob { real, target, md });
                    }
                }
            } else {
                copy_entry(&real, &md, &target, opts, None, links)?;
            }
            copied = true;
        }
        Ok(copied)
    }
}

/// How an archive ADD extracts is compressed, recognized by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArchiveKind {
    Tar,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl ArchiveKind {
    /// The compression `head` (the file's first bytes) starts with; plain tar otherwise.
    fn sniff(head: &[u8]) -> ArchiveKind {
        // A zstd skippable frame (magic 0x184D2A5?, little endian) may precede the data.
        let zstd_skippable =
            head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18];
        if head.starts_with(&[0x1f, 0x8b, 0x08]) {
            ArchiveKind::Gzip
        } else if head.starts_with(b"BZh") {
            ArchiveKind::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            ArchiveKind::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) || zstd_skippable {
            ArchiveKind::Zstd
        } else {
            ArchiveKind::Tar
        }
    }

    /// The decompressed bytes of `file`.
    fn reader(self, file: fs::File) -> std::io::Result<Box<dyn Read + Send>> {
        let buffered = std::io::BufReader::new(file);
        Ok(match self {
            ArchiveKind::Tar => Box::new(buffered),
            ArchiveKind::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
            ArchiveKind::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(buffered)),
            ArchiveKind::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(buffered)),
            ArchiveKind::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
        })
    }
}

/// Reads until `buf` is full or the input ends; the count read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether `block` is a tar header Go's `archive/tar` would accept as a first entry: its
/// checksum field matches the unsigned (or, for old writers, signed) byte sum with the field
/// itself counted as spaces. An all-zero block is the end of an empty archive, not an entry.
fn is_tar_header(block: &[u8; 512]) -> bool {
    let field = &block[148..156];
    let digits: Vec<u8> = field.iter().copied().filter(|b| *b != b' ' && *b != 0).collect();
    let Some(recorded) = std::str::from_utf8(&digits)
        .ok()
        .filter(|d| !d.is_empty())
        .and_then(|d| i64::from_str_radix(d, 8).ok())
    else {
        return false;
    };
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    recorded == unsigned || recorded == signed
}

/// How `path` is to be extracted, or `None` when it is not a (compressed) tar archive and is
/// copied as a file. As Docker's `isArchivePath`: the compression is recognized by magic
/// bytes, and the decompressed stream must start with a valid tar header; a stream that
/// fails to decompress is not an archive either.
fn archive_kind(path: &Path) -> Result<Option<ArchiveKind>> {
    let mut f = fs::File::open(path).map_err(|e| BuildError::io("open", path, e))?;
    let mut head = [0u8; 8];
    let n = read_full(&mut f, &mut head).map_err(|e| BuildError::io("read", path, e))?;
    let kind = ArchiveKind::sniff(&head[..n]);
    let f = fs::File::open(path).map_err(|e| BuildError::io("open", path, e))?;
    let Ok(mut reader) = kind.reader(f) else { return Ok(None) };
    let mut block = [0u8; 512];
    match read_full(&mut reader, &mut block) {
        Ok(512) if is_tar_header(&block) => Ok(Some(kind)),
        _ => Ok(None),
    }
}

/// Extracts the archive at `path` into `dest` with the owners, modes, times and xattrs it
/// records; with `owner` (`--chown`), every extracted entry, the destination's `./` included,
/// is owned by it instead. The archive goes through strata-layer's apply, the one tar reader
/// and path-safety policy of every tar strata reads: entries resolve inside `dest` (a symlink
/// the archive planted is followed inside it, never out), and an entry it refuses (`..`, an
/// absolute name, a hardlink out of the archive) fails the step naming that entry.
fn extract_archive(
    path: &Path,
    kind: ArchiveKind,
    dest: &Path,
    written: &str,
    owner: Option<(u32, u32)>,
    cancel: Option<&CancelToken>,
) -> Result<()> {
    let err = |source: strata_layer::LayerError| match cancel {
        // The reader below failed because the build was cancelled.
        Some(c) if c.is_cancelled() => BuildError::Cancelled,
        _ => BuildError::Extract { path: written.to_string(), source: Box::new(source) },
    };
    let f = fs::File::open(path).map_err(|e| BuildError::io("open", path, e))?;
    let reader = kind
        .reader(f)
        .map_err(|e| err(strata_layer::LayerError::ReadArchive { index: 0, source: e }))?;
    let mut opts = strata_layer::ApplyOptions::default();
    if let Some((uid, gid)) = owner {
        opts = opts.owner(uid, gid);
    }
    let reader = CancelRead { inner: reader, cancel: cancel.cloned() };
    strata_layer::apply(reader, dest, &opts).map_err(err)?;
    Ok(())
}

/// A git source checked out into the scratch dir: a directory whose contents go into the
/// destination (BuildKit copies the checkout's `/` there), read as a tree of its own whose
/// owners are reset to 0:0 like the context's.
fn git_item(
    env: &CopyEnv<'_>,
    spec: &CopySpec,
    url: &GitUrl,
    resolved: Option<crate::git::Resolved>,
    i: usize,
) -> Result<Item> {
    let resolved = match resolved {
        Some(r) => r,
        None => {
            let r = crate::git::resolve(url)?;
            if let Some(sum) = &spec.checksum {
                crate::git::check_checksum(url, &r, sum)?;
            }
            r
        }
    };
    let dir = env.scratch.path()?.join(format!("git-{i}"));
    let root = crate::git::checkout(url, &resolved, &dir, spec.keep_git_dir)?;
    Ok(Item {
        real: root.clone(),
        rel: PathBuf::new(),
        name: OsString::new(),
        is_dir: true,
        keep_path: None,
        mode: None,
        may_extract: false,
        written: url.to_string(),
        tree: Some(Box::new(SourceTree {
            view: MergedView::new(vec![root]),
            ignore: None,
            label: format!("git {url}"),
            keep_owner: false,
        })),
    })
}

/// A reader that fails once `cancel` is cancelled, so an archive being extracted stops
/// between reads.
struct CancelRead<R> {
    inner: R,
    cancel: Option<CancelToken>,
}

impl<R: Read> Read for CancelRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
            return Err(std::io::Error::other("build cancelled"));
        }
        self.inner.read(buf)
    }
}

/// Downloads `url` into the scratch dir, verifying `checksum` before the file is used.
fn fetch_url(url: &str, checksum: Option<&str>, scratch: &Path, i: usize) -> Result<Item> {
    let expected = match checksum {
        Some(c) => {
            let hex = c
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| BuildError::InvalidChecksum { value: c.to_string() })?;
            Some(
                Digest::from_hex(&hex.to_ascii_lowercase())
                    .map_err(|_| BuildError::InvalidChecksum { value: c.to_string() })?,
            )
        }
        None => None,
    };
    let fetch_err = |e| BuildError::Fetch { url: url.to_string(), source: Box::new(e) };
    let response = ureq::get(url).call().map_err(fetch_err)?;
    let path_part = url.split(['?', '#']).next().unwrap_or(url);
    let after_host = path_part.splitn(4, '/').nth(3).unwrap_or("");
    let name = after_host.rsplit('/').find(|s| !s.is_empty()).unwrap_or("index.html").to_string();
    let dir = scratch.join(format!("url-{i}"));
    fs::create_dir_all(&dir).map_err(|e| BuildError::io("mkdir", &dir, e))?;
    let real = dir.join(&name);
    let mut out = fs::File::create(&real).map_err(|e| BuildError::io("create", &real, e))?;
    let mut reader = response.into_body().into_reader();
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BuildError::io("download", url, e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| BuildError::io("write", &real, e))?;
    }
    out.flush().map_err(|e| BuildError::io("write", &real, e))?;
    let found = Digest::from_sha256(hasher.finalize().into());
    if let Some(expected) = expected {
        if expected != found {
            let _ = fs::remove_file(&real);
            return Err(BuildError::ChecksumMismatch {
                url: url.to_string(),
                expected: expected.to_string(),
                found,
            });
        }
    }
    set_mode(&real, 0o600)?;
    Ok(Item {
        real,
        rel: PathBuf::new(),
        name: OsString::from(name),
        is_dir: false,
        keep_path: None,
        mode: Some(0o600),
        may_extract: false,
        written: url.to_string(),
        tree: None,
    })
}

#[cfg(test)]
mod tests {
    use super::go_match;

    #[test]
    fn go_filepath_match_semantics() {
        assert!(go_match("*.txt", "a.txt"));
        assert!(!go_match("*.txt", "a.txt.bak"));
        assert!(go_match("a?c", "abc"));
        assert!(go_match("[a-c]x", "bx"));
        assert!(!go_match("[^a-c]x", "bx"));
        assert!(go_match("[^a-c]x", "dx"));
        assert!(go_match("\\*", "*"));
        assert!(!go_match("\\*", "a"));
        assert!(go_match("*", ""));
    }
}

/// A build context that came as one stream (`strata build -`, as `docker build -`): a tar
/// archive (plain, gzip, bzip2, xz or zstd) unpacked into a directory of its own, or, when the
/// stream is not an archive, a recipe with an empty context.
#[derive(Debug)]
pub struct StreamContext {
    dir: tempfile::TempDir,
    recipe: Option<String>,
}

impl StreamContext {
    /// Reads `stream` to its end and unpacks it (into the system temp dir), through the same
    /// tar reader and path-safety policy as ADD: an entry that would land outside the context
    /// is an error naming it.
    pub fn read(mut stream: impl std::io::Read) -> Result<StreamContext> {
        let dir = tempfile::Builder::new()
            .prefix("strata-context-")
            .tempdir()
            .map_err(|e| BuildError::io("mkdir", std::env::temp_dir(), e))?;
        let spool = dir.path().join("stream");
        let mut f = fs::File::create(&spool).map_err(|e| BuildError::io("create", &spool, e))?;
        std::io::copy(&mut stream, &mut f)
            .map_err(|e| BuildError::io("read", Path::new("-"), e))?;
        drop(f);
        let ctx = dir.path().join("context");
        fs::create_dir(&ctx).map_err(|e| BuildError::io("mkdir", &ctx, e))?;
        let recipe = match archive_kind(&spool)? {
            Some(kind) => {
                extract_archive(&spool, kind, &ctx, "the context on stdin", None, None)?;
                None
            }
            None => Some(
                String::from_utf8(fs::read(&spool).map_err(|e| BuildError::io("read", &spool, e))?)
                    .map_err(|_| BuildError::StdinNotContext)?,
            ),
        };
        fs::remove_file(&spool).map_err(|e| BuildError::io("remove", &spool, e))?;
        Ok(StreamContext { dir, recipe })
    }

    /// The context directory (empty when the stream was a recipe).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("context")
    }

    /// The recipe, when the stream was one rather than an archive.
    pub fn recipe(&self) -> Option<&str> {
        self.recipe.as_deref()
    }
}
