//! The serializable results: [`ImageDiff`] and what `history`, `ls` and `efficiency` return.
//!
//! These types are the `--json` format of the CLI (version [`FORMAT_VERSION`]): field names
//! and meanings only change with that number. Paths are relative to the image root without a
//! leading `/` (`etc/passwd`), sorted bytewise; bytes that are not UTF-8 are shown as U+FFFD.
//! Digests are `sha256:<hex>` strings, modes 4-digit octal strings (`"0755"`), times seconds
//! since the epoch.

use std::collections::BTreeMap;

use serde::Serialize;
use strata_types::Digest;

use crate::read::Node;

/// The version of the JSON format these types serialize to.
pub const FORMAT_VERSION: u32 = 1;

/// The type of a filesystem entry (strata-layer's [`EntryKind`](strata_layer::EntryKind):
/// a hardlink is a file with [`FileMeta::hardlink`] set; layers never hold sockets).
pub use strata_layer::EntryKind as FileKind;

/// What an image has at a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileMeta {
    /// Entry type.
    pub kind: FileKind,
    /// Permission bits with setuid/setgid/sticky, as 4 octal digits.
    pub mode: String,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
    /// Size in bytes (regular files; 0 otherwise).
    pub size: u64,
    /// sha256 of the content (regular files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Symlink target, as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// For a hardlink: the path it is linked to (as the layer records it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardlink: Option<String>,
    /// Modification time (seconds since the epoch).
    pub mtime: i64,
    /// Extended attributes: name -> value (UTF-8 values as they are, others as `hex:...`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// `[major, minor]` of a device node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<[u32; 2]>,
}

pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl FileMeta {
    pub(crate) fn from_node(n: &Node) -> FileMeta {
        FileMeta {
            kind: n.kind,
            mode: format!("{:04o}", n.mode),
            uid: n.uid,
            gid: n.gid,
            size: n.size,
            digest: n.digest,
            link_target: n.link.as_deref().map(lossy),
            hardlink: n.hardlink.as_deref().map(lossy),
            mtime: n.mtime,
            xattrs: n
                .xattrs
                .iter()
                .map(|(k, v)| {
                    let v = match std::str::from_utf8(v) {
                        Ok(s) => s.to_owned(),
                        Err(_) => format!("hex:{}", hex::encode(v)),
                    };
                    (lossy(k), v)
                })
                .collect(),
            device: n.device.map(|(a, b)| [a, b]),
        }
    }
}

/// Which sections a diff computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sections {
    /// Config fields.
    pub config: bool,
    /// Layers and transfer cost.
    pub layers: bool,
    /// Files of the flattened filesystems.
    pub files: bool,
}

impl Default for Sections {
    fn default() -> Self {
        Sections { config: true, layers: true, files: true }
    }
}

/// A summary of one side of a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    /// The name it was opened by, if any.
    pub name: Option<String>,
    /// Manifest digest.
    pub digest: Digest,
    /// Config digest.
    pub config_digest: Digest,
    /// Number of layers.
    pub layers: usize,
    /// Bytes of its blobs: layers, config and manifest.
    pub size: u64,
}

/// One config field that differs. `a` or `b` is `null` where the field is unset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigChange {
    /// `Env[NAME]`, `Labels[KEY]`, `Cmd`, `Entrypoint`, `WorkingDir`, `User`, `ExposedPorts`,
    /// `Volumes`, `StopSignal`, `Healthcheck`, `Shell`, `OnBuild`, `author`, `platform`,
    /// `created`.
    pub field: String,
    /// The value in A.
    pub a: serde_json::Value,
    /// The value in B.
    pub b: serde_json::Value,
}

/// One layer of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    /// Zero-based index in its image (in B for shared layers).
    pub index: usize,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's media type.
    pub media_type: String,
    /// Compressed (blob) size.
    pub size: u64,
    /// Uncompressed size, when known without reading the layer (plain tar, gzip trailer) or
    /// because the diff read it.
    pub uncompressed_size: Option<u64>,
    /// The history line that made it (`created_by`), empty-layer entries skipped.
    pub created_by: Option<String>,
}

/// A layer both images have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedLayer {
    /// Its index in A.
    pub index_a: usize,
    /// Its index in B.
    pub index_b: usize,
    /// The layer (as B has it).
    pub layer: LayerInfo,
}

/// The layers of A and B aligned by diffID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerComparison {
    /// Layers with the same diffID in both.
    pub shared: Vec<SharedLayer>,
    /// Layers only A has.
    pub only_in_a: Vec<LayerInfo>,
    /// Layers only B has.
    pub only_in_b: Vec<LayerInfo>,
    /// The first index where the diffID lists differ (`null` when they are equal). Layers
    /// below it are the common base: identical filesystems, never read by the file diff.
    pub first_divergence: Option<usize>,
}

/// What a push of B to a place holding A moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TransferCost {
    /// Blobs of B (layers, config, manifest) A does not have.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Of those, layers.
    pub layers: usize,
    /// Of those, layer bytes.
    pub layer_bytes: u64,
}

/// How a path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Only B has it.
    Added,
    /// Only A has it.
    Removed,
    /// Both have it, differently.
    Modified,
}

/// What differs about a path present in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Attribute {
    /// Entry type (file, dir, symlink, ...).
    Type,
    /// File bytes (by sha256).
    Content,
    /// File size.
    Size,
    /// Permission bits.
    Mode,
    /// uid or gid.
    Owner,
    /// Symlink target.
    LinkTarget,
    /// Hardlink target.
    Hardlink,
    /// Extended attributes.
    Xattrs,
    /// Device numbers.
    Device,
    /// Modification time (not compared with `semantic`).
    Mtime,
}

impl Attribute {
    /// The name used in JSON and text output.
    pub fn name(self) -> &'static str {
        match self {
            Attribute::Type => "type",
            Attribute::Content => "content",
            Attribute::Size => "size",
            Attribute::Mode => "mode",
            Attribute::Owner => "owner",
            Attribute::LinkTarget => "link_target",
            Attribute::Hardlink => "hardlink",
            Attribute::Xattrs => "xattrs",
            Attribute::Device => "device",
            Attribute::Mtime => "mtime",
        }
    }
}

/// One path that differs between the flattened filesystems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    /// The path.
    pub path: String,
    /// Added, removed or modified.
    pub change: ChangeKind,
    /// For `modified`: what differs (empty otherwise).
    pub changed: Vec<Attribute>,
    /// A's entry.
    pub a: Option<FileMeta>,
    /// B's entry.
    pub b: Option<FileMeta>,
    /// The layer of B that introduced B's state of the path (its entry, or the whiteout,
    /// opaque directory or replacing entry that removed it); `null` when no layer of B
    /// mentions it (a path only A's own layers added).
    pub layer: Option<usize>,
    /// That layer's history line.
    pub created_by: Option<String>,
}

/// Counts over [`FileChanges::changes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FileTotals {
    /// Paths only B has.
    pub added: usize,
    /// Paths only A has.
    pub removed: usize,
    /// Paths both have, differently.
    pub modified: usize,
    /// Bytes of regular files B adds.
    pub added_bytes: u64,
    /// Bytes of regular files B no longer has.
    pub removed_bytes: u64,
}

/// The file section of a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChanges {
    /// Every differing path, sorted.
    pub changes: Vec<FileChange>,
    /// Counts.
    pub totals: FileTotals,
}

/// One side of a single-file content comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContentSide {
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the bytes.
    pub digest: Option<Digest>,
    /// The layer the bytes come from.
    pub layer: usize,
}

/// `diff --file PATH`: one file's content in A and B.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContentDiff {
    /// The path.
    pub path: String,
    /// A's file (`null`: not a regular file in A, or absent).
    pub a: Option<ContentSide>,
    /// B's file.
    pub b: Option<ContentSide>,
    /// Whether the bytes are equal.
    pub identical: bool,
    /// Whether both sides are text (UTF-8, no NUL, at most 16 MiB), so `unified` is set.
    pub text: bool,
    /// A unified diff (`--- a/PATH`, `+++ b/PATH`, 3 lines of context); empty when identical.
    pub unified: Option<String>,
}

/// What a diff had to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiffStats {
    /// Distinct layers (by diffID) in A and B together.
    pub layers_total: usize,
    /// Layers whose tar was read (each at most once).
    pub layers_read: usize,
    /// Compressed bytes of the layers read.
    pub bytes_read: u64,
    /// Path lookups answered by a layer's unpacked snapshot in the store (`lstat`s) instead of
    /// its tar.
    pub snapshot_probes: usize,
}

/// The result of [`diff`](crate::diff).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageDiff {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The old image.
    pub a: ImageSummary,
    /// The new image.
    pub b: ImageSummary,
    /// Whether timestamps were ignored (config `created`, file mtimes; layers then count only
    /// through the files they hold).
    pub semantic: bool,
    /// No difference in the sections computed.
    pub identical: bool,
    /// Config fields that differ (`null`: not computed).
    pub config: Option<Vec<ConfigChange>>,
    /// Layer alignment (`null`: not computed).
    pub layers: Option<LayerComparison>,
    /// Transfer cost of B given A (`null`: not computed; comes with `layers`).
    pub transfer: Option<TransferCost>,
    /// File changes (`null`: not computed).
    pub files: Option<FileChanges>,
    /// The single-file content comparison, when one was asked for.
    pub file_content: Option<ContentDiff>,
    /// What was read.
    pub stats: DiffStats,
}

/// One line of an image's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// `created` of the history entry.
    pub created: Option<String>,
    /// The command that made it.
    pub created_by: Option<String>,
    /// Its comment.
    pub comment: Option<String>,
    /// Whether it made no layer (metadata-only steps).
    pub empty_layer: bool,
    /// The layer it made (`null` for empty layers, or when the history has more non-empty
    /// entries than the image has layers).
    pub layer: Option<LayerInfo>,
}

/// One path of `ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LsEntry {
    /// The path.
    pub path: String,
    /// What is there.
    pub meta: FileMeta,
    /// The layer whose entry sets it.
    pub layer: usize,
}

/// A path whose bytes were shipped and then overwritten or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WastedPath {
    /// The path.
    pub path: String,
    /// Bytes of its versions that do not survive.
    pub wasted_bytes: u64,
    /// The layers whose versions do not survive.
    pub layers: Vec<usize>,
}

/// The wasted space of an image (dive's notion): file bytes a layer ships and a later layer
/// overwrites or deletes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Efficiency {
    /// Bytes of regular files over all layers (hardlinks count once).
    pub total_bytes: u64,
    /// Of those, bytes that do not reach the final filesystem.
    pub wasted_bytes: u64,
    /// `1 - wasted/total` (1 when total is 0).
    pub score: f64,
    /// The worst paths, most wasted bytes first (at most the number asked for).
    pub worst: Vec<WastedPath>,
}
