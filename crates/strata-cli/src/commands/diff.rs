//! Image comparison commands: `diff`, `history`, `ls`. The work is in `strata::diff`; this
//! module opens the images (registry operands pulled into a scratch layout, see
//! [`open_image`]), renders the reports and maps "different" to exit status 1.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use strata::diff::{
    Attribute, ChangeKind, ContentDiff, DiffOptions, FileChange, FileKind, FileMeta, ImageDiff,
    LsOptions, Sections, StoredImage,
};
use strata::image::{self, OpenedImage};
use strata::registry::{Client, NoTransferProgress};
use strata::types::{ImageLocation, Platform};

use super::registry::RegistryArgs;
use super::store::{human, open_store};

/// Opens an image by any name strata accepts, resolved by strata-image's one rule
/// (`image::resolve`, `--pull=missing`): a registry image (`docker://HOST/REPO:TAG` or a
/// plain `HOST/REPO:TAG`) the local store holds a copy of is read from the store, else
/// pulled into a scratch OCI layout in the temp directory ([`image::open`]), with blobs the
/// local store already has copied from it, not downloaded. The local store is only read (the
/// registry client may record where downloaded blobs live, as every pull does). A
/// multi-platform image resolves to `platform`'s image, the host's when `None`.
pub fn open_image(
    store: Option<&Path>,
    name: &str,
    platform: Option<&Platform>,
    registry: &RegistryArgs,
) -> anyhow::Result<OpenedImage> {
    let location: ImageLocation =
        name.parse().with_context(|| format!("invalid image name {name:?}"))?;
    if let ImageLocation::Dir(_) = location {
        bail!("{name}: dir: is an export destination, not an image");
    }
    let local = match &location {
        ImageLocation::Oci { .. } | ImageLocation::DockerArchive { .. } => None,
        _ => Some(open_store(store)),
    };
    let held = local.as_ref().and_then(|l| l.as_ref().ok());
    let resolved = image::resolve(held, &location, image::PullPolicy::Missing)
        .with_context(|| format!("cannot read image {name}"))?;
    let reference = match resolved {
        image::Resolved::Local(location) => {
            // Local images need no registry client (which loads the system's CA roots).
            let store = match (&location, local) {
                (ImageLocation::Store(_), Some(local)) => Some(local?),
                _ => None,
            };
            return image::open_local_platform(store.as_ref(), &location, platform)
                .with_context(|| format!("cannot read image {name}"));
        }
        image::Resolved::Registry(reference) => reference,
    };
    let mut client = Client::new(registry.client_options(reference.domain()))
        .context("cannot set up the registry client")?;
    if let Some(local) = held {
        client = client.with_blob_hints(local.clone());
    }
    let location = ImageLocation::Registry(reference);
    let (opened, _) = image::open_platform(&client, held, &location, platform, &NoTransferProgress)
        .with_context(|| format!("cannot pull {name}"))?;
    Ok(opened)
}

/// `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnlyArg {
    /// Config fields.
    Config,
    /// Layers and transfer cost.
    Layers,
    /// Files.
    Files,
}

/// `strata diff --help` examples.
pub const DIFF_EXAMPLES: &str = "\
Examples:
  strata diff app:v1 app:v2                   config, layers, files and push cost
  strata diff --semantic --only files app:v1 app:v2
  strata diff --file etc/app.conf app:v1 app:v2 && echo same";

/// `strata diff A B`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The old image: `name[:tag]`, a digest, `oci:DIR[:REF]`, `docker-archive:FILE[:REF]`,
    /// `docker://HOST/REPO:TAG` (or `HOST/REPO:TAG` when the store has no such image).
    pub a: String,
    /// The new image.
    pub b: String,
    /// Print the report as JSON (`"version": 1`; see the README).
    #[arg(long)]
    pub json: bool,
    /// Ignore timestamps (config `created`, file mtimes); nothing else.
    #[arg(long)]
    pub semantic: bool,
    /// Show a unified diff of this file's content (sizes and digests when binary).
    #[arg(long, value_name = "PATH")]
    pub file: Option<String>,
    /// Compute and show one section only.
    #[arg(long, value_enum)]
    pub only: Option<OnlyArg>,
    /// Compare this platform's images of multi-platform images, on both sides
    /// (`OS/ARCH[/VARIANT]`); the host's by default.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Exit status 0 when the images are the same, 1 when they differ (2 on errors, from `main`).
pub fn diff(store: Option<&Path>, args: DiffArgs) -> anyhow::Result<ExitCode> {
    let a = open_image(store, &args.a, args.platform.as_ref(), &args.registry)?;
    let b = open_image(store, &args.b, args.platform.as_ref(), &args.registry)?;
    let sections = match (args.only, &args.file) {
        (Some(only), _) => Sections {
            config: only == OnlyArg::Config,
            layers: only == OnlyArg::Layers,
            files: only == OnlyArg::Files,
        },
        (None, Some(_)) => Sections { config: false, layers: false, files: true },
        (None, None) => Sections::default(),
    };
    let mut opts = DiffOptions::default().semantic(args.semantic).sections(sections);
    if let Some(f) = &args.file {
        opts = opts.file(f.clone());
    }
    let sa = StoredImage::from(&a).named(&args.a);
    let sb = StoredImage::from(&b).named(&args.b);
    let report = strata::diff::diff(sa, sb, &opts)
        .with_context(|| format!("cannot compare {} and {}", args.a, args.b))?;
    if let (Some(path), Some(c)) = (&args.file, &report.file_content) {
        let listed = report.files.as_ref().is_some_and(|f| !f.changes.is_empty());
        if c.a.is_none() && c.b.is_none() && !listed {
            bail!("{path}: no regular file at this path in {} or {}", args.a, args.b);
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        render(&mut out, &report, args.file.is_some())?;
    }
    Ok(if report.identical { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn short(d: &impl std::fmt::Display) -> String {
    let s = d.to_string();
    s.strip_prefix("sha256:").map_or(s.clone(), |h| h[..12.min(h.len())].to_string())
}

fn json_short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}...", &s[..57])
    } else {
        s
    }
}

fn render(out: &mut impl Write, r: &ImageDiff, file_mode: bool) -> anyhow::Result<()> {
    if file_mode {
        if let Some(files) = &r.files {
            for c in files.changes.iter().filter(|c| c.change == ChangeKind::Modified) {
                let rest: Vec<String> = c
                    .changed
                    .iter()
                    .filter(|a| !matches!(a, Attribute::Content | Attribute::Size))
                    .map(|&a| detail(a, c))
                    .collect();
                if !rest.is_empty() {
                    writeln!(out, "{}: {}", c.path, rest.join(", "))?;
                }
            }
        }
        if let Some(content) = &r.file_content {
            render_content(out, content)?;
        }
        return Ok(());
    }
    for (sign, s) in [("---", &r.a), ("+++", &r.b)] {
        writeln!(
            out,
            "{sign} {} ({}, {} layers, {})",
            s.name.as_deref().unwrap_or("-"),
            short(&s.digest),
            s.layers,
            human(s.size)
        )?;
    }
    if let Some(config) = &r.config {
        if !config.is_empty() {
            writeln!(out, "config:")?;
        }
        for c in config {
            writeln!(out, "  {}: {} -> {}", c.field, json_short(&c.a), json_short(&c.b))?;
        }
    }
    if let Some(l) = &r.layers {
        let diverge =
            l.first_divergence.map_or(String::new(), |i| format!("; diverge at layer {i}"));
        writeln!(
            out,
            "layers: {} shared, {} only in a, {} only in b{diverge}",
            l.shared.len(),
            l.only_in_a.len(),
            l.only_in_b.len()
        )?;
        for (sign, list) in [('-', &l.only_in_a), ('+', &l.only_in_b)] {
            for info in list {
                let unc = info.uncompressed_size.map_or("?".to_string(), human);
                writeln!(
                    out,
                    "  {sign} {:>3} {} {:>9} ({unc})  {}",
                    info.index,
                    short(&info.digest),
                    human(info.size),
                    info.created_by.as_deref().unwrap_or("")
                )?;
            }
        }
    }
    if let Some(t) = &r.transfer {
        writeln!(
            out,
            "transfer: {} blob{}, {} ({} layer{}, {})",
            t.blobs,
            if t.blobs == 1 { "" } else { "s" },
            human(t.bytes),
            t.layers,
            if t.layers == 1 { "" } else { "s" },
            human(t.layer_bytes)
        )?;
    }
    if let Some(files) = &r.files {
        if !files.changes.is_empty() {
            writeln!(out, "files:")?;
        }
        for c in &files.changes {
            writeln!(out, "  {}", file_line(c))?;
        }
        let t = &files.totals;
        writeln!(
            out,
            "files: {} added ({}), {} removed ({}), {} modified",
            t.added,
            human(t.added_bytes),
            t.removed,
            human(t.removed_bytes),
            t.modified
        )?;
    }
    if let Some(content) = &r.file_content {
        render_content(out, content)?;
    }
    writeln!(
        out,
        "{}; read {} of {} layers ({})",
        if r.identical { "identical" } else { "different" },
        r.stats.layers_read,
        r.stats.layers_total,
        human(r.stats.bytes_read)
    )?;
    Ok(())
}

fn owner(m: &FileMeta) -> String {
    format!("{}:{}", m.uid, m.gid)
}

fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::File => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        FileKind::CharDevice => "char device",
        FileKind::BlockDevice => "block device",
        FileKind::Fifo => "fifo",
        _ => "other",
    }
}

fn detail(a: Attribute, c: &FileChange) -> String {
    let (Some(x), Some(y)) = (&c.a, &c.b) else { return a.name().to_string() };
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    match a {
        Attribute::Type => format!("type {} -> {}", kind_name(x.kind), kind_name(y.kind)),
        Attribute::Size => format!("size {} -> {}", x.size, y.size),
        Attribute::Mode => format!("mode {} -> {}", x.mode, y.mode),
        Attribute::Owner => format!("owner {} -> {}", owner(x), owner(y)),
        Attribute::LinkTarget => format!("link {} -> {}", opt(&x.link_target), opt(&y.link_target)),
        Attribute::Hardlink => format!("hardlink {} -> {}", opt(&x.hardlink), opt(&y.hardlink)),
        Attribute::Mtime => format!("mtime {} -> {}", x.mtime, y.mtime),
        other => other.name().to_string(),
    }
}

fn file_line(c: &FileChange) -> String {
    let (mark, what) = match c.change {
        ChangeKind::Added => {
            let m = c.b.as_ref();
            let what = match m {
                Some(m) if m.kind == FileKind::File => match &m.hardlink {
                    Some(t) => format!("hardlink to {t}"),
                    None => human(m.size),
                },
                Some(m) if m.kind == FileKind::Symlink => {
                    format!("-> {}", m.link_target.as_deref().unwrap_or(""))
                }
                Some(m) => kind_name(m.kind).to_string(),
                None => String::new(),
            };
            ('A', what)
        }
        ChangeKind::Removed => ('D', String::new()),
        ChangeKind::Modified => {
            let parts: Vec<String> = c.changed.iter().map(|&a| detail(a, c)).collect();
            ('M', parts.join(", "))
        }
    };
    let layer = match (c.layer, &c.created_by) {
        (Some(l), Some(by)) => format!("  [layer {l}: {}]", truncate(by, 50)),
        (Some(l), None) => format!("  [layer {l}]"),
        (None, _) => String::new(),
    };
    let what = if what.is_empty() { String::new() } else { format!("  {what}") };
    format!("{mark} /{}{what}{layer}", c.path)
}

fn truncate(s: &str, n: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n - 3).collect::<String>())
    }
}

fn render_content(out: &mut impl Write, c: &ContentDiff) -> anyhow::Result<()> {
    if c.identical {
        return Ok(());
    }
    match (&c.a, &c.b, &c.unified) {
        (_, _, Some(unified)) => write!(out, "{unified}")?,
        (Some(a), Some(b), None) => writeln!(
            out,
            "Binary files a/{p} and b/{p} differ: {} {} -> {} {}",
            human(a.size),
            a.digest.map(|d| short(&d)).unwrap_or_default(),
            human(b.size),
            b.digest.map(|d| short(&d)).unwrap_or_default(),
            p = c.path
        )?,
        (None, Some(_), None) => writeln!(out, "Only in b: {}", c.path)?,
        (Some(_), None, None) => writeln!(out, "Only in a: {}", c.path)?,
        (None, None, None) => {}
    }
    Ok(())
}

/// `strata history IMAGE`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The image: any name `diff` accepts, `docker://HOST/REPO:TAG` included.
    pub image: String,
    /// Print JSON: `{"version": 1, "image": ..., "history": [...]}`.
    #[arg(long)]
    pub json: bool,
    /// The platform's image of a multi-platform image (`OS/ARCH[/VARIANT]`); the host's by
    /// default.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn history(store: Option<&Path>, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let image = open_image(store, &args.image, args.platform.as_ref(), &args.registry)?;
    let rows = strata::diff::history(StoredImage::from(&image))
        .with_context(|| format!("cannot read the history of {}", args.image))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = serde_json::json!({
            "version": strata::diff::FORMAT_VERSION,
            "image": args.image,
            "digest": image.image.manifest_descriptor.digest().to_string(),
            "history": rows,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:>5}  {:<12}  {:>10}  {:>10}  CREATED BY",
        "LAYER", "DIGEST", "SIZE", "UNPACKED"
    )?;
    for h in &rows {
        let by = h.created_by.as_deref().unwrap_or("").trim();
        match &h.layer {
            Some(l) => writeln!(
                out,
                "{:>5}  {:<12}  {:>10}  {:>10}  {}",
                l.index,
                short(&l.digest),
                human(l.size),
                l.uncompressed_size.map_or("?".into(), human),
                truncate(by, 80)
            )?,
            None => writeln!(
                out,
                "{:>5}  {:<12}  {:>10}  {:>10}  {}",
                "-",
                "(empty)",
                "0B",
                "-",
                truncate(by, 80)
            )?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `strata ls IMAGE [PATH]`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// The image: any name `diff` accepts, `docker://HOST/REPO:TAG` included.
    pub image: String,
    /// Only this path and what is below it.
    pub path: Option<String>,
    /// The filesystem as it is after layer N (0-based), as a container of the image built up
    /// to that step sees it; entries set by layer N are marked with `*`.
    #[arg(long, value_name = "N")]
    pub layer: Option<usize>,
    /// Print JSON: `{"version": 1, "layer": N|null, "entries": [{path, meta, layer}]}`.
    #[arg(long)]
    pub json: bool,
    /// The platform's image of a multi-platform image (`OS/ARCH[/VARIANT]`); the host's by
    /// default.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `drwxr-xr-x` from a kind and an octal mode string.
fn mode_string(m: &FileMeta) -> String {
    let bits = u32::from_str_radix(&m.mode, 8).unwrap_or(0);
    let mut s = String::with_capacity(10);
    s.push(m.kind.letter());
    for (i, who) in [(6u32, 0o4000u32), (3, 0o2000), (0, 0o1000)].iter().enumerate() {
        let (shift, special) = *who;
        let r = bits >> shift & 4 != 0;
        let w = bits >> shift & 2 != 0;
        let x = bits >> shift & 1 != 0;
        s.push(if r { 'r' } else { '-' });
        s.push(if w { 'w' } else { '-' });
        let sp = bits & special != 0;
        s.push(match (i, sp, x) {
            (2, true, true) => 't',
            (2, true, false) => 'T',
            (_, true, true) => 's',
            (_, true, false) => 'S',
            (_, false, true) => 'x',
            (_, false, false) => '-',
        });
    }
    s
}

pub fn ls(store: Option<&Path>, args: LsArgs) -> anyhow::Result<ExitCode> {
    let image = open_image(store, &args.image, args.platform.as_ref(), &args.registry)?;
    let mut opts = LsOptions::default();
    if let Some(p) = &args.path {
        opts = opts.path(p.clone());
    }
    if let Some(n) = args.layer {
        opts = opts.layer(n);
    }
    let entries = strata::diff::ls(StoredImage::from(&image), &opts)
        .with_context(|| format!("cannot list {}", args.image))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = serde_json::json!({
            "version": strata::diff::FORMAT_VERSION,
            "image": args.image,
            "layer": args.layer,
            "entries": entries,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    for e in &entries {
        let m = &e.meta;
        let mark = if args.layer == Some(e.layer) { '*' } else { ' ' };
        let target = match (&m.link_target, &m.hardlink) {
            (Some(t), _) => format!(" -> {t}"),
            (None, Some(t)) => format!(" => /{t}"),
            _ => String::new(),
        };
        writeln!(
            out,
            "{} {:>11} {:>10}  L{:<3}{mark} /{}{target}",
            mode_string(m),
            owner(m),
            if m.kind == FileKind::File { human(m.size) } else { "-".into() },
            e.layer,
            e.path
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings() {
        let mut m = FileMeta {
            kind: FileKind::Dir,
            mode: "1777".into(),
            uid: 0,
            gid: 0,
            size: 0,
            digest: None,
            link_target: None,
            hardlink: None,
            mtime: 0,
            xattrs: Default::default(),
            device: None,
        };
        assert_eq!(mode_string(&m), "drwxrwxrwt");
        m.kind = FileKind::File;
        m.mode = "4755".into();
        assert_eq!(mode_string(&m), "-rwsr-xr-x");
        m.mode = "0640".into();
        assert_eq!(mode_string(&m), "-rw-r-----");
    }
}
