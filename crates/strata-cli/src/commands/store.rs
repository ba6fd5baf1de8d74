//! Store commands: `import`, `images`, `inspect`, `tag`, `rmi`, `export`, `gc`, `fsck`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde::Serialize;
use strata::image::{self, ImportOptions};
use strata::layer::Compression;
use strata::store::{NotAStoreProblem, Store, StoreError};
use strata::types::{ImageLocation, Platform};

/// Opens the store for reading; a missing store is an error, not an empty list.
pub fn open_store(root: Option<&Path>) -> anyhow::Result<Store> {
    let root = store_root(root)?;
    Store::open(&root).with_context(|| format!("cannot open store {}", root.display()))
}

/// Opens the store for writing, creating it if needed.
pub fn init_store(root: Option<&Path>) -> anyhow::Result<Store> {
    let root = store_root(root)?;
    Store::init(&root).with_context(|| format!("cannot open or create store {}", root.display()))
}

/// The store for a listing command: `None` when there is no store yet (a fresh machine has
/// no images, which is not an error); a directory that is not a store still is one.
pub fn open_store_to_list(root: Option<&Path>) -> anyhow::Result<Option<Store>> {
    let root = store_root(root)?;
    match Store::open(&root) {
        Ok(store) => Ok(Some(store)),
        Err(StoreError::NotAStore { problem: NotAStoreProblem::Missing, .. }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot open store {}", root.display())),
    }
}

/// The store at `root` (or the default location) if one exists there; never creates one.
pub fn open_store_if_present(root: Option<&Path>) -> Option<Store> {
    Store::open(store_root(root).ok()?).ok()
}

fn store_root(root: Option<&Path>) -> anyhow::Result<PathBuf> {
    match root {
        Some(r) => Ok(r.to_path_buf()),
        None => Store::default_root()
            .context("no store location: set --store, STRATA_STORE, XDG_DATA_HOME or HOME"),
    }
}

/// Human-readable byte size, like `docker images`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.3}{}", UNITS[unit]).replace(".000", "")
    }
}

/// `strata import SRC NAME[:TAG]`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A directory, a tar archive (plain, gzip or zstd) of a root filesystem, or an image:
    /// `oci:DIR[:REF]`, `docker-archive:FILE[:REF]`.
    pub source: String,
    /// The name to tag the image with (`name[:tag]`, tag `latest` by default).
    pub name: String,
    /// Layer compression for a directory or tar source.
    #[arg(long, value_enum, default_value = "zstd")]
    pub compression: CompressionArg,
    /// Timestamp for `created` and the mtime clamp (seconds since the epoch); default
    /// $SOURCE_DATE_EPOCH (unless empty), else 0.
    #[arg(long)]
    pub timestamp: Option<i64>,
    /// For an `oci:` multi-platform image (an index), import only this platform's image
    /// (`OS/ARCH[/VARIANT]`); without it the whole index is imported.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
}

/// `--compression`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompressionArg {
    /// zstd (default).
    Zstd,
    /// gzip.
    Gzip,
    /// No compression.
    None,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::None => Compression::None,
        }
    }
}

pub fn import(store: Option<&Path>, args: ImportArgs) -> anyhow::Result<ExitCode> {
    // Validate the name before doing any work.
    let name: strata::types::Reference =
        args.name.parse().with_context(|| format!("invalid image name {:?}", args.name))?;
    if name.digest().is_some() {
        bail!("cannot tag with a digest: {}", args.name);
    }
    let store = init_store(store)?;
    let location: Option<ImageLocation> = match args.source.parse::<ImageLocation>() {
        Ok(l @ (ImageLocation::Oci { .. } | ImageLocation::DockerArchive { .. })) => Some(l),
        _ => None,
    };
    let mut out = std::io::stdout().lock();
    let manifest = match location {
        Some(location) => {
            let (manifest, report) =
                image::load_platform(&store, &location, args.platform.as_ref())
                    .with_context(|| format!("cannot import {location}"))?;
            writeln!(
                out,
                "copied {} blobs ({}), {} already present",
                report.copied,
                human(report.bytes),
                report.skipped
            )?;
            manifest
        }
        None => {
            if args.platform.is_some() {
                bail!("--platform picks an image of oci:DIR or docker-archive:FILE, not of a directory or tar");
            }
            let path = Path::new(&args.source);
            if !path.exists() {
                bail!("{}: no such file or directory", path.display());
            }
            let opts = ImportOptions {
                compression: args.compression.into(),
                epoch: match args.timestamp {
                    Some(t) => t,
                    None => image::source_date_epoch()?.unwrap_or(0),
                },
            };
            let imported = image::import_tree(&store, path, &opts)
                .with_context(|| format!("cannot import {}", path.display()))?;
            let state = if imported.layer_written { "written" } else { "already stored" };
            writeln!(
                out,
                "layer {} ({}) {state}",
                imported.layer.digest,
                human(imported.layer.size)
            )?;
            imported.manifest
        }
    };
    store.retag(&name.tag_key(), &manifest)?;
    writeln!(out, "{} {}", name.tag_key(), manifest.digest())?;
    Ok(ExitCode::SUCCESS)
}

/// `strata images --help` examples.
pub const IMAGES_EXAMPLES: &str = "\
Examples:
  strata images                    tagged images, and untagged builds as <none>
  strata images --json | jq -r '.[].digest'
  strata rmi 3f2a9c1b7d4e          remove an image by the IMAGE ID listed";

/// `strata images`.
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Show all images. Untagged (dangling) builds are always listed, as `<none>`, as
    /// `docker images` does; strata keeps no intermediate images, so `-a` adds nothing and is
    /// accepted for Docker habits.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Print JSON: `[{name, tag, digest, size, platforms, missing}]` (`<none>` for an
    /// untagged image's name and tag); `platforms` lists a multi-platform image's platforms
    /// (`OS/ARCH[/VARIANT]`), or a single image's own; `missing` lists the blobs a damaged
    /// image lacks (empty when whole).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct ImageRow {
    name: String,
    tag: String,
    digest: String,
    /// Config and layers, of every platform for an index (a shared blob once).
    size: u64,
    /// The platforms of an index, or the single image's config platform.
    platforms: Vec<String>,
    /// Blobs the image reaches that are gone from the store (empty when whole).
    missing: Vec<String>,
}

/// One row of `images`. A damaged image is listed, marked, not read: its manifest may be the
/// missing blob.
fn image_row(
    store: &Store,
    name: String,
    tag: String,
    desc: &strata::store::oci_spec::image::Descriptor,
    what: &str,
) -> anyhow::Result<ImageRow> {
    let missing = store.missing_blobs(desc)?;
    let listed = |store: &Store| -> anyhow::Result<Vec<String>> {
        let listed = image::platforms::platforms(store, desc)?;
        Ok(listed.iter().map(|p| p.platform.to_string()).collect())
    };
    let (size, platforms) = if missing.is_empty() {
        let size = image::image_size(store, desc).with_context(|| format!("image {what}"))?;
        (size, listed(store).with_context(|| format!("image {what}"))?)
    } else {
        // What can still be read of a damaged image (an index whose child is gone).
        (0, listed(store).unwrap_or_default())
    };
    let missing = missing.iter().map(ToString::to_string).collect();
    Ok(ImageRow { name, tag, digest: desc.digest().to_string(), size, platforms, missing })
}

pub fn images(store: Option<&Path>, args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let _ = args.all;
    let mut rows = Vec::new();
    if let Some(store) = open_store_to_list(store)? {
        for (tag_key, desc) in store.tags()? {
            let (name, tag) = match tag_key.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => (n.to_string(), t.to_string()),
                _ => (tag_key.clone(), String::new()),
            };
            rows.push(image_row(&store, name, tag, &desc, &tag_key)?);
        }
        for desc in store.dangling_images()? {
            let digest = desc.digest().to_string();
            rows.push(image_row(&store, "<none>".into(), "<none>".into(), &desc, &digest)?);
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<40} {:<16} {:<14} {:>10}  PLATFORMS",
        "REPOSITORY", "TAG", "IMAGE ID", "SIZE"
    )?;
    for r in rows {
        let id = r.digest.strip_prefix("sha256:").unwrap_or(&r.digest);
        if r.missing.is_empty() {
            writeln!(
                out,
                "{:<40} {:<16} {:<14} {:>10}  {}",
                r.name,
                r.tag,
                &id[..12],
                human(r.size),
                r.platforms.join(",")
            )?;
        } else {
            let n = r.missing.len();
            writeln!(
                out,
                "{:<40} {:<16} {:<14} {:>10}  DAMAGED: {n} blob{} missing, run `strata fsck --repair`",
                r.name,
                r.tag,
                &id[..12],
                "?",
                if n == 1 { "" } else { "s" }
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `strata image ...`: Docker's image management commands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// List images (as `strata images`).
    #[command(alias = "list")]
    Ls(ImagesArgs),
    /// Remove dangling images (untagged builds), then free their blobs.
    Prune(PruneArgs),
}

/// `strata image prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Do not prompt (strata never prompts; accepted for Docker habits).
    #[arg(short = 'f', long)]
    pub force: bool,
}

pub fn image_command(store: Option<&Path>, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Ls(args) => images(store, args),
        ImageCommand::Prune(args) => {
            let _ = args.force;
            gc(store, GcArgs { dangling: true })
        }
    }
}

/// `strata inspect IMAGE`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// An image: `name[:tag]`, a digest or prefix, `oci:DIR[:REF]`, `docker-archive:FILE`.
    pub image: String,
    /// Print JSON: `{name, digest, manifest, config, efficiency}` with the OCI documents as
    /// stored; for a multi-platform image also `index` (its digest and document) and
    /// `platforms`, the image fields then being the chosen platform's (null when the index
    /// has none for the host and no --platform was given).
    #[arg(long)]
    pub json: bool,
    /// The platform's image of a multi-platform image (`OS/ARCH[/VARIANT]`); without it, an
    /// index is shown with its platforms and the host's image (if it has one).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
    /// Skip the efficiency line (it reads every layer).
    #[arg(long)]
    pub no_efficiency: bool,
    /// How many of the paths wasting most space to list.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub worst: usize,
}

pub fn inspect(store: Option<&Path>, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let location: ImageLocation = args.image.parse()?;
    // Foreign sources (oci:, docker-archive:) need no local store.
    let local = match &location {
        ImageLocation::Store(_) => Some(open_store(store)?),
        _ => None,
    };
    let opened = match &args.platform {
        Some(p) => {
            image::open_local_platform(local.as_ref(), &location, Some(p)).map(image::Opened::Image)
        }
        None => image::open_local_any(local.as_ref(), &location),
    }
    .with_context(|| format!("cannot read image {location}"))?;
    let (index, source) = match opened {
        image::Opened::Image(source) => (None, Some(source)),
        image::Opened::Index(index) => {
            // The host's image when the index has one, as `docker image inspect` does.
            let host = index.find(&Platform::host()).is_some();
            let source = match host {
                true => Some(
                    index.image(None).with_context(|| format!("cannot read image {location}"))?,
                ),
                false => None,
            };
            (Some(index), source)
        }
    };
    let mut out = std::io::stdout().lock();
    if let Some(index) = &index {
        let platforms = index_platforms(index)
            .with_context(|| format!("cannot read the images of {location}"))?;
        if args.json && source.is_none() {
            let doc = serde_json::json!({
                "name": index.name,
                "index": {"digest": index.descriptor.digest().to_string(), "document": index.index},
                "platforms": platforms,
                "digest": null,
                "manifest": null,
                "config": null,
                "efficiency": null,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            return Ok(ExitCode::SUCCESS);
        }
        if !args.json {
            writeln!(out, "Image:        {}", location)?;
            writeln!(out, "Index:        {}", index.descriptor.digest())?;
            writeln!(out, "Platforms:")?;
            for p in &platforms {
                writeln!(out, "  {:<16} {}  {:>10}", p.platform, p.manifest, human(p.size))?;
            }
            match &source {
                Some(_) => writeln!(
                    out,
                    "Showing:      {} (choose another with --platform)",
                    Platform::host()
                )?,
                None => {
                    writeln!(
                        out,
                        "(no image for this host, {}: choose one with --platform)",
                        Platform::host()
                    )?;
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
    let Some(source) = source else { return Ok(ExitCode::SUCCESS) };
    let image = &source.image;
    // Wasted space: bytes a layer ships that a later layer overwrites or deletes.
    let efficiency = (!args.no_efficiency).then(|| {
        strata::diff::efficiency(strata::diff::StoredImage::from(&source), args.worst)
            .with_context(|| format!("cannot read the layers of {location}"))
    });
    // As stored: Docker's Healthcheck, Shell and OnBuild are in it.
    let raw_config =
        source.raw_config().with_context(|| format!("cannot read the config of {location}"))?;
    if args.json {
        let efficiency = efficiency.transpose()?;
        let mut doc = serde_json::json!({
            "name": source.name,
            "digest": image.manifest_descriptor.digest().to_string(),
            "manifest": image.manifest,
            "config": raw_config,
            "efficiency": efficiency,
        });
        if let Some(index) = &index {
            doc["index"] = serde_json::json!({
                "digest": index.descriptor.digest().to_string(),
                "document": index.index,
            });
            doc["platforms"] = serde_json::to_value(index_platforms(index)?)?;
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let c = &image.config;
    if index.is_none() {
        writeln!(out, "Image:        {}", location)?;
    }
    writeln!(out, "Digest:       {}", image.manifest_descriptor.digest())?;
    writeln!(out, "Created:      {}", c.created().as_deref().unwrap_or("-"))?;
    writeln!(out, "Platform:     {}/{}", c.os(), c.architecture())?;
    if let Some(cfg) = c.config() {
        if let Some(env) = cfg.env() {
            writeln!(out, "Env:          {}", env.join(" "))?;
        }
        if let Some(e) = cfg.entrypoint() {
            writeln!(out, "Entrypoint:   {}", serde_json::to_string(e)?)?;
        }
        if let Some(cmd) = cfg.cmd() {
            writeln!(out, "Cmd:          {}", serde_json::to_string(cmd)?)?;
        }
        if let Some(w) = cfg.working_dir() {
            writeln!(out, "WorkingDir:   {w}")?;
        }
        if let Some(u) = cfg.user() {
            writeln!(out, "User:         {u}")?;
        }
        if let Some(ports) = cfg.exposed_ports().as_ref().filter(|p| !p.is_empty()) {
            let mut ports = ports.clone();
            ports.sort();
            writeln!(out, "ExposedPorts: {}", ports.join(" "))?;
        }
        if let Some(volumes) = cfg.volumes().as_ref().filter(|v| !v.is_empty()) {
            let mut volumes = volumes.clone();
            volumes.sort();
            writeln!(out, "Volumes:      {}", volumes.join(" "))?;
        }
        if let Some(s) = cfg.stop_signal() {
            writeln!(out, "StopSignal:   {s}")?;
        }
        if let Some(labels) = cfg.labels().as_ref().filter(|l| !l.is_empty()) {
            let mut labels: Vec<_> = labels.iter().collect();
            labels.sort();
            writeln!(out, "Labels:")?;
            for (k, v) in labels {
                writeln!(out, "  {k}={v}")?;
            }
        }
    }
    let run = image::config::RunConfig::from_json(&raw_config["config"]);
    if let Some(h) = &run.healthcheck {
        writeln!(out, "Healthcheck:  {}", serde_json::to_string(h)?)?;
    }
    if let Some(sh) = &run.shell {
        writeln!(out, "Shell:        {}", serde_json::to_string(sh)?)?;
    }
    for trigger in &run.on_build {
        writeln!(out, "OnBuild:      {trigger}")?;
    }
    let layers = image.manifest.layers();
    let total: u64 = layers.iter().map(|l| l.size()).sum();
    writeln!(out, "Layers:       {} ({})", layers.len(), human(total))?;
    let diff_ids = c.rootfs().diff_ids();
    for (i, l) in layers.iter().enumerate() {
        writeln!(
            out,
            "  {i:>3}  {}  {:>10}  {}  diffID {}",
            l.digest(),
            human(l.size()),
            l.media_type(),
            diff_ids.get(i).map(String::as_str).unwrap_or("?")
        )?;
    }
    if let Some(efficiency) = efficiency {
        let e = efficiency?;
        writeln!(
            out,
            "Efficiency:   {:.1}% ({} of {} shipped in files is overwritten or deleted later)",
            (e.score * 1000.0).floor() / 10.0,
            human(e.wasted_bytes),
            human(e.total_bytes)
        )?;
        for w in &e.worst {
            let layers: Vec<String> = w.layers.iter().map(ToString::to_string).collect();
            writeln!(
                out,
                "  {:>10}  /{}  (layers {})",
                human(w.wasted_bytes),
                w.path,
                layers.join(", ")
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One platform of an index as `inspect` shows it.
#[derive(Serialize)]
struct PlatformRow {
    platform: String,
    manifest: String,
    /// Config and layers.
    size: u64,
}

fn index_platforms(index: &image::OpenedIndex) -> anyhow::Result<Vec<PlatformRow>> {
    index
        .platforms
        .iter()
        .map(|p| {
            Ok(PlatformRow {
                platform: p.platform.to_string(),
                manifest: p.manifest.digest().to_string(),
                size: image::image_size(&index.store, &p.manifest)?,
            })
        })
        .collect()
}

/// `strata tag SRC DST`.
#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// Existing image (`name[:tag]`, digest or prefix).
    pub source: String,
    /// New name (`name[:tag]`).
    pub target: String,
}

pub fn tag(store: Option<&Path>, args: TagArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(store)?;
    let desc = store.resolve(&args.source)?;
    let target: strata::types::Reference = args.target.parse()?;
    store.retag(&target.tag_key(), &desc)?;
    Ok(ExitCode::SUCCESS)
}

/// `strata rmi IMAGE...`.
#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// Images to remove: a tag (`name[:tag]`) removes that tag; an ID (the `IMAGE ID` of
    /// `strata images`, any unique prefix, or `sha256:...`) removes the image. Blobs are freed
    /// by `strata gc`.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Remove an image given by ID even when several tags name it (all of them go).
    #[arg(short = 'f', long)]
    pub force: bool,
}

pub fn rmi(store: Option<&Path>, args: RmiArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(store)?;
    let mut out = std::io::stdout().lock();
    for image in &args.images {
        let removed = store
            .remove_image(image, args.force)
            .with_context(|| format!("cannot remove {image}"))?;
        for tag in &removed.untagged {
            writeln!(out, "Untagged: {tag}")?;
        }
        if removed.deleted {
            writeln!(out, "Deleted: {}", removed.digest)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `strata export IMAGE DEST`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The image to export.
    pub image: String,
    /// `oci:DIR[:TAG]`, `docker-archive:FILE[:TAG]` or `dir:PATH`.
    pub dest: String,
    /// For oci: destinations, recompress layers (e.g. gzip for tools without zstd support).
    #[arg(long, value_enum)]
    pub compression: Option<CompressionArg>,
    /// For dir: destinations, create the image's device nodes (root only); skipped otherwise.
    #[arg(long)]
    pub devices: bool,
    /// Export this platform's image of a multi-platform image (`OS/ARCH[/VARIANT]`). Without
    /// it an index goes to oci: whole (every platform) and cannot go to docker-archive: or
    /// dir:.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
}

pub fn export(store: Option<&Path>, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let dest: ImageLocation = args.dest.parse()?;
    if matches!(dest, ImageLocation::Store(_) | ImageLocation::Registry(_)) {
        bail!("export destination must be oci:DIR[:TAG], docker-archive:FILE[:TAG] or dir:PATH, not {dest}");
    }
    let store = open_store(store)?;
    let location: ImageLocation = args.image.parse()?;
    let source = match &args.platform {
        Some(p) => {
            image::open_local_platform(Some(&store), &location, Some(p)).map(image::Opened::Image)
        }
        None => image::open_local_any(Some(&store), &location),
    }
    .with_context(|| format!("cannot read image {location}"))?;
    let opts = image::ExportOptions::default()
        .compression(args.compression.map(Into::into))
        .devices(args.devices);
    let report = image::export_opened(&source, &dest, &opts)
        .with_context(|| format!("cannot export to {dest}"))?;
    if report.devices_skipped > 0 {
        writeln!(
            std::io::stderr().lock(),
            "skipped {} device node(s) of the image: pass --devices to create them",
            report.devices_skipped
        )?;
    }
    writeln!(
        std::io::stdout().lock(),
        "exported {} to {dest}: {} items, {}",
        args.image,
        report.items,
        human(report.bytes)
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `strata gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// First remove dangling images (untagged builds, listed as `<none>`), as
    /// `strata image prune`; without it they are kept, as Docker keeps them until a prune.
    #[arg(long)]
    pub dangling: bool,
}

pub fn gc(store: Option<&Path>, args: GcArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(store)?;
    let mut out = std::io::stdout().lock();
    if args.dangling {
        let pruned = store.prune_dangling()?;
        for d in &pruned {
            writeln!(out, "Deleted: {d}")?;
        }
        let s = if pruned.len() == 1 { "" } else { "s" };
        writeln!(out, "removed {} dangling image{s}", pruned.len())?;
    }
    let report = store.gc(&[])?;
    writeln!(
        out,
        "removed {} blobs ({}), {} snapshots, {} temp entries, {} dead leases; kept {} blobs \
         ({} live leases)",
        report.removed.len(),
        human(report.bytes_freed),
        report.snapshots_removed,
        report.temp_entries_removed,
        report.leases_removed,
        report.blobs_kept,
        report.leases_live
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `strata fsck`.
#[derive(Debug, clap::Args)]
pub struct FsckArgs {
    /// Repair: remove corrupt blobs, untag images whose blobs are gone (into lost+found),
    /// rebuild a damaged index.json from the tag records.
    #[arg(long)]
    pub repair: bool,
}

pub fn fsck(store: Option<&Path>, args: FsckArgs) -> anyhow::Result<ExitCode> {
    let root = store_root(store)?;
    // fsck is what mends a damaged index.json, so it must open a store that `open` refuses.
    let store = Store::open_for_repair(&root)
        .with_context(|| format!("cannot open store {}", root.display()))?;
    let report = store.fsck(args.repair)?;
    let mut out = std::io::stdout().lock();
    for p in &report.problems {
        writeln!(out, "problem: {p}")?;
    }
    for d in &report.removed {
        writeln!(out, "removed corrupt blob {d}")?;
    }
    if let Some(n) = report.index_rebuilt {
        writeln!(out, "rebuilt index.json from {n} tag records")?;
    }
    if let Some(kept) = &report.damaged_index_kept {
        writeln!(out, "kept the damaged index.json as {}", kept.display())?;
    }
    if report.tag_records_written > 0 {
        writeln!(out, "wrote {} tag records to match index.json", report.tag_records_written)?;
    }
    for lost in &report.damaged_images {
        let name = lost.name.as_deref().unwrap_or("<untagged>");
        let missing: Vec<String> = lost.missing.iter().map(ToString::to_string).collect();
        let verb = if args.repair { "untagged into lost+found" } else { "damaged" };
        writeln!(
            out,
            "{verb}: {name} ({}): missing {}",
            lost.descriptor.digest(),
            missing.join(", ")
        )?;
    }
    // What earlier repairs untagged stays listed until removed by hand.
    let earlier = store.lost_and_found().unwrap_or_default();
    if !earlier.is_empty() {
        writeln!(out, "lost+found ({} images):", earlier.len())?;
        for lost in &earlier {
            writeln!(
                out,
                "  {} {} ({} blobs missing)",
                lost.name.as_deref().unwrap_or("<untagged>"),
                lost.descriptor.digest(),
                lost.missing.len()
            )?;
        }
    }
    writeln!(
        out,
        "checked {} blobs ({}): {}",
        report.blobs_checked,
        human(report.bytes_checked),
        if report.is_clean() {
            "clean".to_string()
        } else {
            format!("{} problems", report.problems.len())
        }
    )?;
    // Exit 3, store damage (super::EXIT_CODES).
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(999), "999B");
        assert_eq!(human(1000), "1kB");
        assert_eq!(human(1_234_567), "1.235MB");
    }
}
