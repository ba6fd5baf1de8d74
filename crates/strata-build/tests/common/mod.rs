//! Shared fixtures: a store with a busybox base image, contexts, flattening.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use strata_build::{build, BuildError, BuildEvent, BuildOptions, BuildOutput};
use strata_image::{import_tree, ImportOptions};
use strata_layer::{apply_blob, ApplyOptions};
use strata_store::Store;
use strata_types::Digest;

pub fn strict() -> bool {
    std::env::var("STRATA_TEST_STRICT").is_ok_and(|v| v == "1")
}

/// Skips (returns false) when not root or busybox is missing, unless strict.
pub fn can_run() -> bool {
    let root = rustix_is_root();
    let busybox = Path::new("/bin/busybox").exists();
    if root && busybox {
        return true;
    }
    let why = if !root { "not running as root" } else { "busybox-static not at /bin/busybox" };
    if strict() {
        panic!("STRATA_TEST_STRICT=1 but {why}");
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!("skipping: {why}");
    }
    false
}

fn rustix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: Store,
}

impl Env {
    pub fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.dir.path().join(name);
        for (path, content) in files {
            let p = ctx.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, content).unwrap();
        }
        fs::create_dir_all(&ctx).unwrap();
        ctx
    }

    pub fn build(&self, ctx: &Path, tags: &[&str]) -> Result<BuildOutput, BuildError> {
        let mut opts = BuildOptions::new(ctx);
        opts.tags = tags.iter().map(|t| t.to_string()).collect();
        self.build_with(&opts).0
    }

    pub fn build_with(
        &self,
        opts: &BuildOptions,
    ) -> (Result<BuildOutput, BuildError>, Vec<BuildEvent>) {
        let events = Mutex::new(Vec::new());
        let sink = |e: &BuildEvent| events.lock().unwrap().push(e.clone());
        let r = build(&self.store, opts, &sink);
        (r, events.into_inner().unwrap())
    }

    /// Applies every layer of the image into a fresh directory.
    pub fn flatten(&self, out: &BuildOutput) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for d in out.image.layer_digests().unwrap() {
            apply_blob(&self.store, &d, dir.path(), &ApplyOptions::default()).unwrap();
        }
        dir
    }

    /// Paths of the entries of a layer blob, in tar order.
    pub fn layer_paths(&self, digest: &Digest) -> Vec<String> {
        let blob = self.store.open_blob(digest).unwrap();
        let r = strata_layer::decompress(blob).unwrap();
        let mut a = tar::Archive::new(r);
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().trim_end_matches('/').to_string())
            .collect()
    }

    /// The entries of a layer blob, in tar order: path, type, link target, uid, gid, mode.
    pub fn layer_entries(&self, digest: &Digest) -> Vec<LayerEntry> {
        let blob = self.store.open_blob(digest).unwrap();
        let r = strata_layer::decompress(blob).unwrap();
        let mut a = tar::Archive::new(r);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                LayerEntry {
                    path: e.path().unwrap().to_string_lossy().trim_end_matches('/').to_string(),
                    kind: h.entry_type(),
                    link: e.link_name().unwrap().map(|l| l.to_string_lossy().to_string()),
                    uid: h.uid().unwrap(),
                    gid: h.gid().unwrap(),
                    mode: h.mode().unwrap(),
                }
            })
            .collect()
    }

    /// Every blob's bytes, uncompressed when they are layers.
    pub fn all_blob_bytes(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for d in self.store.list_blobs().unwrap() {
            let raw = self.store.read_blob(&d).unwrap();
            let mut plain = Vec::new();
            if strata_layer::decompress(&raw[..]).unwrap().read_to_end(&mut plain).is_ok() {
                out.push(plain);
            }
            out.push(raw);
        }
        out
    }
}

/// One entry of a layer tar, as [`Env::layer_entries`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    pub path: String,
    pub kind: tar::EntryType,
    pub link: Option<String>,
    pub uid: u64,
    pub gid: u64,
    pub mode: u32,
}

/// A store holding `base:1`: busybox with its applets, /etc/passwd and /etc/group, /tmp 1777.
pub fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("store")).unwrap();
    let root = dir.path().join("base-rootfs");
    for d in ["bin", "etc", "tmp", "home/app", "usr/share"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "ls", "cat", "echo", "rm", "mkdir", "touch", "id", "env", "test", "true", "false",
        "sleep", "stat", "wc", "printf", "chmod", "cp", "mv", "ln", "tr", "head", "tail", "grep",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\napp:x:1001:\nstaff:x:50:\n").unwrap();
    fs::write(root.join("etc/motd"), "hello from base\n").unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    let imported = import_tree(&store, &root, &ImportOptions::default()).unwrap();
    store.tag("base:1", &imported.manifest).unwrap();
    Env { dir, store }
}

pub fn history(out: &BuildOutput) -> Vec<(String, bool)> {
    out.image
        .config
        .history()
        .as_ref()
        .map(|h| {
            h.iter()
                .map(|e| {
                    (e.created_by().clone().unwrap_or_default(), e.empty_layer().unwrap_or(false))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn config_json(out: &BuildOutput) -> serde_json::Value {
    serde_json::to_value(&out.image.config).unwrap()
}

/// Whether `tool` is on PATH; a skip message when not, a panic under STRATA_TEST_STRICT=1.
pub fn have_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        if strict() {
            panic!("STRATA_TEST_STRICT=1 but {tool} is not installed");
        }
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipping: {tool} is not installed");
        }
    }
    found
}
