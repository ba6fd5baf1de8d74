//! Test images made byte by byte: each layer is a tar written here (plain or gzip), so
//! whiteouts, opaque markers, hardlinks, owners, modes, mtimes and xattrs are exactly as the
//! test says, and stored with the store's own API.
#![allow(dead_code)]

use std::io::Write;

use strata_store::oci_spec::image::{
    ConfigBuilder, Descriptor, HistoryBuilder, ImageConfigurationBuilder, MediaType, RootFsBuilder,
};
use strata_store::{Image, Store};
use strata_types::Digest;

/// One tar entry.
#[derive(Clone)]
pub struct Ent {
    pub path: String,
    pub kind: u8,
    pub data: Vec<u8>,
    pub link: String,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Ent {
    fn new(path: &str, kind: u8) -> Ent {
        Ent {
            path: path.into(),
            kind,
            data: Vec::new(),
            link: String::new(),
            mode: if kind == b'5' { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        }
    }
    pub fn mode(mut self, m: u32) -> Ent {
        self.mode = m;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Ent {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, t: u64) -> Ent {
        self.mtime = t;
        self
    }
    pub fn xattr(mut self, k: &str, v: &[u8]) -> Ent {
        self.xattrs.push((k.into(), v.to_vec()));
        self
    }
}

pub fn dir(path: &str) -> Ent {
    Ent::new(path, b'5')
}
pub fn file(path: &str, data: &[u8]) -> Ent {
    let mut e = Ent::new(path, b'0');
    e.data = data.to_vec();
    e
}
pub fn symlink(path: &str, target: &str) -> Ent {
    let mut e = Ent::new(path, b'2');
    e.link = target.into();
    e.mode = 0o777;
    e
}
pub fn hardlink(path: &str, target: &str) -> Ent {
    let mut e = Ent::new(path, b'1');
    e.link = target.into();
    e
}
/// `.wh.NAME` for `path`.
pub fn whiteout(path: &str) -> Ent {
    let (d, n) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
    let p = if d.is_empty() { format!(".wh.{n}") } else { format!("{d}/.wh.{n}") };
    Ent::new(&p, b'0')
}
pub fn opaque(dir: &str) -> Ent {
    Ent::new(&format!("{dir}/.wh..wh..opq"), b'0')
}

pub fn tar_bytes(entries: &[Ent]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.xattrs.is_empty() {
            let pax: Vec<(String, Vec<u8>)> =
                e.xattrs.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone())).collect();
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::new(e.kind));
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(e.data.len() as u64);
        let name = if e.kind == b'5' { format!("{}/", e.path) } else { e.path.clone() };
        if e.kind == b'1' || e.kind == b'2' {
            b.append_link(&mut h, &name, &e.link).unwrap();
        } else {
            b.append_data(&mut h, &name, e.data.as_slice()).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// A layer as stored: its descriptor and diffID.
#[derive(Clone)]
pub struct Layer {
    pub desc: Descriptor,
    pub diff_id: Digest,
    pub created_by: String,
}

pub fn put_layer(store: &Store, entries: &[Ent], created_by: &str, gzip: bool) -> Layer {
    let tar = tar_bytes(entries);
    let diff_id = Digest::of_bytes(&tar);
    let (bytes, mt) = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&tar).unwrap();
        (enc.finish().unwrap(), MediaType::ImageLayerGzip)
    } else {
        (tar, MediaType::ImageLayer)
    };
    let put = store.put_blob(bytes.as_slice()).unwrap();
    Layer {
        desc: Descriptor::new(mt, put.size, put.digest),
        diff_id,
        created_by: created_by.into(),
    }
}

/// An image of `layers` with `labels` and `created`; history has one entry per layer plus an
/// empty-layer entry first (as a `LABEL` step would make).
pub fn put_image(store: &Store, layers: &[Layer], labels: &[(&str, &str)], created: &str) -> Image {
    let mut history = vec![HistoryBuilder::default()
        .created_by("LABEL metadata".to_string())
        .empty_layer(true)
        .build()
        .unwrap()];
    for l in layers {
        history.push(HistoryBuilder::default().created_by(l.created_by.clone()).build().unwrap());
    }
    let config = ConfigBuilder::default()
        .env(vec!["PATH=/bin".to_string()])
        .labels(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()
        .unwrap();
    let config = ImageConfigurationBuilder::default()
        .created(created.to_string())
        .architecture("amd64")
        .os("linux")
        .config(config)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>())
                .build()
                .unwrap(),
        )
        .history(history)
        .build()
        .unwrap();
    let descs: Vec<Descriptor> = layers.iter().map(|l| l.desc.clone()).collect();
    let manifest = store.put_image(&config, &descs).unwrap();
    store.image(&manifest).unwrap()
}

pub struct Fixture {
    pub _tmp: tempfile::TempDir,
    pub store: Store,
}

pub fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::init(tmp.path().join("store")).unwrap();
    Fixture { _tmp: tmp, store }
}

/// A small base: etc/ with passwd and a conf dir, bin/ with a tool and a symlink.
pub fn base_entries() -> Vec<Ent> {
    vec![
        dir("bin"),
        file("bin/tool", b"#!/bin/sh\necho tool\n").mode(0o755),
        symlink("bin/sh", "tool"),
        dir("etc"),
        dir("etc/conf.d"),
        file("etc/conf.d/a.conf", b"a=1\n"),
        file("etc/conf.d/b.conf", b"b=2\n"),
        file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
        file("etc/old", b"obsolete\n"),
    ]
}
