//! strata-build: executes a recipe into a layered OCI image in the store.
//!
//! [`build`] reads the recipe, plans the stages the target needs (`strata_recipe`), and builds
//! them in dependency order. Each stage starts from its base (scratch, an image in the store,
//! an `oci:`/`docker-archive:` image loaded into the store, a registry image pulled on demand
//! as [`BuildOptions::pull`] says, or an earlier stage's result),
//! and each step either edits the image config (ENV, LABEL, CMD, ...: an `empty_layer`
//! history entry) or changes the filesystem and becomes exactly one layer: RUN executes in the
//! sandbox on an overlay of the chain's unpacked snapshots and keeps the upperdir; COPY and ADD
//! stage their files at the destination paths and need no sandbox (DESIGN.md decisions 4, 5).
//! The semantics are Docker's/BuildKit's, checked against buildah. The result is written with
//! [`Store::put_image`](strata_store::Store::put_image) and tagged only once every step has
//! succeeded. Progress is reported as typed events to a [`ProgressSink`]; nothing is printed.
//!
//! A build can be stopped from another thread through [`BuildOptions::cancel`] (the CLI's
//! Ctrl-C handler does this): it is checked before every step and once more before tagging,
//! and a running RUN is killed with its whole pid namespace, so the build ends promptly with
//! [`BuildError::Cancelled`], its scratch directories dropped and nothing tagged. A COPY or
//! ADD stops too, between files and between chunks of a big file, whether it is hashing
//! the context, staging its files or writing the layer (whose unfinished blob is dropped).
//!
//! Rebuilds are incremental: every RUN, COPY, ADD and directory-creating WORKDIR has a cache
//! key computed from content (the parent chain's diffIDs, the expanded instruction, what it can
//! see, and for context sources a digest of their paths, modes, link targets and bytes; see
//! the `cache` module docs). A step whose key was seen before reuses its layer and history
//! entry without running or copying anything ([`BuildEvent::StepCached`]);
//! [`BuildOptions::no_cache`] and [`BuildOptions::no_cache_filter`] turn that off for all or
//! some stages. Context file digests are remembered by stat stamp (path, device, inode, size,
//! mtime and ctime in ns) under `<store>/strata/v1/hashes-v1/`, so a no-op rebuild costs a
//! metadata walk of the context, not a read of it.
//!
//! The cache can travel between stores ([`BuildOptions::cache_from`], [`BuildOptions::cache_to`],
//! [`CacheSpec`]): as an OCI artifact in a registry or an OCI layout, imported entry by entry
//! when a step's key matches and its layer has been fetched and verified, exported after the
//! build; [`BuildOptions::push`] pushes the result to its tags first. See the `remote_cache`
//! module.
//!
//! Before any step, the build runs the recipe's build checks (BuildKit's lint rules and
//! strata's, see [`check`]) on the stages it builds and reports each warning as a
//! [`BuildEvent::CheckWarning`]; with `# check=error=true` a warning fails the build
//! ([`BuildError::CheckFailed`]) before anything is written. [`check`] alone is
//! `docker build --check`.
//!
//! Decisions where BuildKit and buildah differ, or where neither is obvious:
//! - WORKDIR writes a layer only when it has to create the directory (owned by the current
//!   USER, as BuildKit does); an existing directory gives an `empty_layer` history entry.
//!   BuildKit always writes one, buildah never does (its directory lands in the next layer).
//! - A COPY destination directory that does not exist is created 0755 and owned by the
//!   `--chown` user, like any missing parent (buildah); existing ones keep their mode and
//!   owner. `--chown=name` takes the user's primary group (buildah); `--chown=N` uses N as gid
//!   (Docker's documented rule). Without `--chown`, context files are owned 0:0 and `--from`
//!   files keep their owner.
//! - RUN layers record deletions as explicit whiteouts, never opaque directories (BuildKit's
//!   differ), so the overlay path and the copy fallback give the same bytes; mountpoint stubs
//!   the sandbox had to create are not in layers (BuildKit; buildah leaves them).
//! - A scratch stage's config has the default `PATH` (both).
//! - ADD `--chown` owns everything an archive unpacks to (BuildKit); buildah 1.28 keeps the
//!   archive's owners. The archive's `./` entry gives the destination its mode (and owner,
//!   without `--chown`), as buildah and Docker's classic builder do; recent BuildKit skips it.
//! - Hardlinks within one COPY/ADD source stay hardlinks, fifos stay fifos (both).
//! - `--no-cache-filter` naming no stage of the recipe is an error, like `--target`.
//! - `RUN --mount=type=bind` without `target` mounts on the working directory (BuildKit);
//!   buildah's mount options are read too: `z`, `Z` and `relabel=` (nothing to relabel
//!   without SELinux), `U` on cache mounts (the directory is handed to the step's user) and
//!   `tmpcopyup`/`notmpcopyup` on tmpfs mounts (with `tmpcopyup` the step sees a throwaway
//!   copy of what the image holds at the target, without a size limit).
//! - `RUN --mount=type=ssh` reaches the agent `--ssh` forwards ([`SshSpec`]) at
//!   `/run/buildkit/ssh_agent.N`, `SSH_AUTH_SOCK` set, as BuildKit does: through a socket of
//!   the step's own that relays to the agent, owned and moded as `uid=`, `gid=`, `mode=` say
//!   (0:0 0600 by default). An optional mount whose id no `--ssh` gives is left out.
//! - A cache mount's `from=` (a stage or an image) with `source=` seeds the cache directory
//!   when it is created (BuildKit); later builds see what the cache holds.
//!
//! - HEALTHCHECK, SHELL and ONBUILD go where Docker and BuildKit put them, in the config's
//!   `Healthcheck`, `Shell` and `OnBuild` fields, for OCI images too (buildah drops them from
//!   OCI images with a warning). A base's ONBUILD triggers run right after FROM, also when the
//!   base is an earlier stage, and are not passed on to the child.
//! - `RUN --security=insecure` needs [`BuildOptions::allow_insecure`] (BuildKit's
//!   `security.insecure` entitlement) and then keeps every capability of the sandbox's root.
//! - ADD of a git URL (and a git URL as the context, [`GitContext`]) gives every file the
//!   commit's time as its mtime, BuildKit's `git.mtime=commit`: BuildKit's default, the
//!   checkout time, would make no two builds alike. The step is keyed on the resolved commit.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bases;
mod cache;
mod check;
mod context_hash;
mod copy;
mod engine;
mod error;
mod executor;
mod git;
mod image;
mod lazy;
mod mount_cache;
mod options;
mod progress;
mod remote_cache;
mod rootfs;
mod run;
mod squash;
mod ssh;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use strata_layer::LayerWriter;
use strata_recipe::DockerIgnore;
use strata_store::Store;
use strata_types::{ImageLocation, Platform};

pub use check::check;
pub use copy::StreamContext;
pub use engine::{ImageSource, SandboxRunner, StepRunner, StoreImages};
pub use error::{BuildError, Result};
pub use git::{GitContext, GitUrl};
pub use options::{
    default_recipe_path, Annotation, AnnotationTarget, BuildOptions, BuildOutput, ExtraHost,
    NamedContext, Network, PullPolicy, RunRootfs, SecretSource, SecretSpec, Squash, StepReport,
};
pub use progress::{
    BuildEvent, EventRecord, NoProgress, OutputStream, ProgressSink, PullBlobKind, PullBlobOutcome,
    StepPhase, EVENT_VERSION,
};
pub use remote_cache::{CacheLocation, CacheMode, CacheSpec};
pub use ssh::{SshSource, SshSpec};
pub use strata_layer::Compression;
pub use strata_recipe::BuildArgs;
pub use strata_recipe::CheckReport;
/// strata-sandbox, whose request and outcome types a [`StepRunner`] speaks.
pub use strata_sandbox as sandbox;
/// Cancels a build ([`BuildOptions::cancel`]) or a single sandboxed run.
pub use strata_sandbox::CancelToken;

/// Builds the recipe of `opts` into `store`, tags the result with every `opts.tags` entry, and
/// returns it. On error nothing is tagged (blobs already written stay until `gc`).
pub fn build(
    store: &Store,
    opts: &BuildOptions,
    progress: &dyn ProgressSink,
) -> Result<BuildOutput> {
    build_with(store, opts, progress, &SandboxRunner, &StoreImages::new(opts))
}

/// [`build`] with the two side effects supplied: `runner` executes RUN steps and `images`
/// finds FROM and `--from` images (see [`engine`](crate::StepRunner)); tests and embedders
/// replace them, production uses [`SandboxRunner`] and [`StoreImages`].
pub fn build_with(
    store: &Store,
    opts: &BuildOptions,
    progress: &dyn ProgressSink,
    runner: &dyn StepRunner,
    images: &dyn ImageSource,
) -> Result<BuildOutput> {
    // Bad tags and outputs fail before any work, not after.
    opts.validate()?;
    // Held until the caller drops the store: a concurrent `gc` cannot sweep the untagged
    // layers, snapshots and cache entries this build writes or relies on, or the base it
    // reads (taking it also sweeps dead processes' leftovers from the store's tmp).
    store.lease()?;
    // And the RUN scratch directories of killed builds (locked while their run lives).
    strata_sandbox::sweep_scratch_dirs();
    let text = options::read_recipe(opts)?;
    let parse_err = |source: strata_recipe::ParseError| BuildError::Parse {
        path: opts.recipe_path.clone(),
        source: Box::new(source),
    };
    let recipe = strata_recipe::parse(&text).map_err(parse_err)?;
    let overridden: BTreeSet<String> = opts.named_contexts.keys().cloned().collect();
    // One plan per target platform: the builtin TARGET* args differ, and so may what the
    // FROM lines expand to.
    let explicit = !opts.platforms.is_empty();
    let mut plans = Vec::new();
    for target in opts.target_platforms() {
        let args = match explicit {
            true => opts.build_args.for_platforms(Platform::host(), target.clone()),
            false => opts.build_args.clone(),
        };
        let plan = recipe
            .plan_overridden(&args, opts.target.as_deref(), &overridden)
            .map_err(parse_err)?;
        plans.push((target, args, plan));
    }
    let no_cache_stages = resolve_stage_filter(&plans[0].2, &opts.no_cache_filter)?;
    let ignore = load_dockerignore(opts)?;
    // BuildKit lints the stages it builds on every build; `# check=error=true` stops it here.
    let checks = check::check_recipe(
        Some(store),
        opts,
        &recipe,
        &ignore,
        Some(plans[0].2.target.to_string()),
    )?;
    for w in &checks.warnings {
        progress.event(&BuildEvent::CheckWarning {
            rule: w.rule.to_string(),
            message: w.message.clone(),
            line: w.span.line,
            url: w.url.map(str::to_string),
        });
    }
    if checks.fails_build() {
        let rules = checks.rules_violated().into_iter().map(str::to_string).collect();
        return Err(BuildError::CheckFailed { rules });
    }
    // Agents live as long as the build (a private one is stopped when it ends).
    let ssh = ssh::Agents::start(&opts.ssh)?;
    progress.event(&BuildEvent::BuildStart {
        stages: plans.iter().map(|(.., plan)| plan.order.len()).sum(),
        steps: plans
            .iter()
            .flat_map(|(.., plan)| plan.order.iter().map(|&i| plan.stages[i].steps.len()))
            .sum(),
    });
    let cache = executor::StepCache {
        writer: LayerWriter::new(opts.compression)
            .epoch(opts.timestamp)
            .cancel_on(opts.cancel.clone()),
        hashes: context_hash::ContextHashes::load(store, &opts.context),
        imported: remote_cache::Imported::load(opts, progress),
        named_dirs: Default::default(),
        stubs: Default::default(),
    };
    let shared = executor::SharedStages::new(opts.jobs);
    let n_stages = recipe_stage_count(&plans);
    // In a build for several platforms, each platform's stage numbers count on from the
    // last platform's (progress events stay unique per stage and step).
    let sinks: Vec<progress::StageOffset<'_>> = (0..plans.len())
        .map(|k| progress::StageOffset { inner: progress, offset: k * n_stages })
        .collect();
    let builders: Vec<executor::Builder<'_>> = plans
        .iter()
        .zip(&sinks)
        .map(|((target, args, plan), sink)| executor::Builder {
            io: executor::Io { store, opts, progress: sink, runner, images, ssh: &ssh },
            stages: executor::Stages {
                recipe: &recipe,
                plan,
                ignore: ignore.clone(),
                no_cache_stages: no_cache_stages.clone(),
            },
            cache: &cache,
            done: executor::Done::default(),
            platform: executor::ForPlatform {
                target: target.clone(),
                explicit,
                args: args.clone(),
                shared: &shared,
                keys: Default::default(),
            },
        })
        .collect();
    // Platforms build side by side, at most `--jobs` stages at once; their stages share the
    // cache and, where identical, the stage itself.
    let built: Vec<Result<()>> = if builders.len() == 1 {
        vec![build_stages(&builders[0], builders[0].stages.plan)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = builders
                .iter()
                .map(|b| scope.spawn(move || build_stages(b, b.stages.plan)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        })
    };
    // Digests learnt are valid whether or not the build succeeded.
    cache.hashes.save();
    built.into_iter().collect::<Result<Vec<()>>>()?;
    // A cancel that came while the last step finished still tags nothing.
    if opts.cancel.is_cancelled() {
        return Err(BuildError::Cancelled);
    }
    // A build whose result only goes to a registry leaves there the layers no step read
    // (the push mounts them); any other result is stored whole.
    let pushes = (opts.push && !opts.tags.is_empty())
        || matches!(opts.output, Some(strata_types::ImageLocation::Registry(_)));
    let local_output = opts
        .output
        .as_ref()
        .is_some_and(|o| !matches!(o, strata_types::ImageLocation::Registry(_)));
    // (An index is pushed from the store whole.)
    // (A squash reads every layer.)
    let only_pushed =
        pushes && !local_output && builders.len() == 1 && opts.squash == options::Squash::Off;
    let mut left_in_registry = BTreeSet::new();
    let mut images = Vec::new();
    for b in &builders {
        let plan = b.stages.plan;
        let state = b.result(plan.target).unwrap_or_else(image::ImageState::scratch);
        if only_pushed {
            left_in_registry.extend(
                state
                    .layers
                    .iter()
                    .filter(|l| b.cache.imported.is_pending(&l.diff_id))
                    .map(|l| l.diff_id),
            );
        } else {
            b.realize(&state.layers)?;
        }
        let (mut state, squashed) =
            squash::squash_image(store, &cache.writer, opts.squash, state, opts.timestamp)?;
        if let Some(size) = squashed {
            b.done.layers_written.fetch_add(1, Ordering::Relaxed);
            b.done.bytes_written.fetch_add(size, Ordering::Relaxed);
        }
        state.run.labels.extend(opts.labels.clone());
        if explicit {
            // The image is for the build's platform even when its last stage was built
            // elsewhere (`FROM --platform=$BUILDPLATFORM` as the target): BuildKit's rule.
            state.platform = Some(b.platform.target.clone());
        }
        let config = state.to_config(opts.timestamp)?;
        let remote: BTreeSet<strata_types::Digest> = state
            .layers
            .iter()
            .filter(|l| left_in_registry.contains(&l.diff_id))
            .map(|l| l.digest())
            .collect::<Result<_>>()?;
        let manifest = config.put_with_remote_layers(store, &state.layer_descriptors(), &remote)?;
        let manifest = strata_image::annotate(
            store,
            &manifest,
            &annotations_of(opts, AnnotationTarget::Manifest, Some(&b.platform.target)),
        )?;
        images.push(strata_image::PlatformImage { platform: b.platform.target.clone(), manifest });
    }
    // Several platforms make an index (image-index.md), one its image.
    let index_annotations = annotations_of(opts, AnnotationTarget::Index, None);
    let manifest = match images.as_slice() {
        [one] => {
            if !index_annotations.is_empty() {
                progress.event(&BuildEvent::Warning {
                    message:
                        "index annotations are ignored: a build for one platform makes no index"
                            .to_string(),
                });
            }
            one.manifest.clone()
        }
        _ => {
            let index = strata_image::put_index(store, &images)?;
            strata_image::annotate(store, &index, &index_annotations)?
        }
    };
    for tag in opts.tags.iter().filter(|_| left_in_registry.is_empty()) {
        // Docker's rule: the image a tag moves away from stays, as `<none>`, until pruned.
        store.retag(tag, &manifest)?;
    }
    if opts.tags.is_empty() && left_in_registry.is_empty() {
        // As `docker build` without `-t`: a `<none>` image, kept until pruned.
        let digest = strata_types::Digest::try_from(manifest.digest())
            .map_err(strata_store::StoreError::from)?;
        store.keep_dangling(&digest)?;
    }
    // The image of the host's platform when built, else the first.
    let host = Platform::host();
    let main = images.iter().find(|p| p.platform.satisfies(&host)).unwrap_or(&images[0]);
    let image = store.image(&main.manifest)?;
    let exported = match &opts.output {
        // `docker://...` is a push (below), not an export.
        Some(strata_types::ImageLocation::Registry(_)) => None,
        Some(dest) => {
            // An index is written whole (every platform's image), an image as it is.
            let opened = open_result(store, opts, &manifest)?;
            // Recorded under the digest unless the destination names a ref (the name only
            // tells messages which image a corrupt blob belongs to).
            let digest = Some(manifest.digest().to_string());
            let dest = match dest.clone() {
                ImageLocation::Oci { dir, reference: None } => {
                    ImageLocation::Oci { dir, reference: digest }
                }
                ImageLocation::DockerArchive { path, reference: None } => {
                    ImageLocation::DockerArchive { path, reference: digest }
                }
                other => other,
            };
            Some(strata_image::export_opened(&opened, &dest, &Default::default())?)
        }
        None => None,
    };
    let pushed = push_result(store, opts, &manifest, &builders[0].cache.imported)?;
    let cache_exported = export_cache(store, opts, &builders, progress)?;
    let sum = |f: &dyn Fn(&executor::Done) -> u64| builders.iter().map(|b| f(&b.done)).sum::<u64>();
    let layers_reused = sum(&|d| d.layers_reused.load(Ordering::Relaxed) as u64) as usize;
    let layers_written = sum(&|d| d.layers_written.load(Ordering::Relaxed) as u64) as usize;
    let bytes_written = sum(&|d| d.bytes_written.load(Ordering::Relaxed));
    progress.event(&BuildEvent::BuildDone {
        digest: manifest.digest().to_string(),
        layers_reused,
        layers_written,
        bytes_written,
    });
    let mut steps = Vec::new();
    for b in builders {
        let plan = b.stages.plan;
        let mut by_stage = b.done.reports.into_inner().unwrap_or_else(|p| p.into_inner());
        steps.extend(plan.order.iter().flat_map(|i| by_stage.remove(i).unwrap_or_default()));
    }
    let platforms = match images.len() {
        1 => Vec::new(),
        _ => images,
    };
    Ok(BuildOutput {
        manifest,
        image,
        platforms,
        steps,
        layers_written,
        layers_reused,
        context_files_hashed: cache.hashes.files_hashed(),
        bytes_written,
        exported,
        pushed,
        cache_exported,
        layers_left_in_registry: left_in_registry.len(),
    })
}

/// The chains of every cache mount the build's RUN steps used (mount_cache's export), by id;
/// an error is one line naming the mount.
fn export_cache_mounts(
    store: &Store,
    build_writer: &LayerWriter,
    builders: &[executor::Builder<'_>],
) -> std::result::Result<BTreeMap<String, Vec<strata_store::CacheEntry>>, String> {
    let ids: BTreeSet<String> = builders
        .iter()
        .flat_map(|b| b.done.cache_mounts.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .collect();
    let writer = mount_cache::writer(build_writer);
    let mut out = BTreeMap::new();
    for id in ids {
        let chain = (|| -> Result<_> {
            // Shared, as a RUN of another build may use it at the same time: what is exported
            // is the content as this scan finds it.
            let mount = store.cache_mount(&id, strata_store::Sharing::Shared)?;
            mount_cache::export(store, &id, &mount.path, &writer)
        })()
        .map_err(|e| format!("cache mount {id:?}: {}", strata_types::chain(&e)))?;
        out.insert(id, chain);
    }
    Ok(out)
}

/// The `--annotation`s for `target` (of `platform`'s manifest), later ones winning.
fn annotations_of(
    opts: &BuildOptions,
    target: AnnotationTarget,
    platform: Option<&Platform>,
) -> std::collections::BTreeMap<String, String> {
    opts.annotations
        .iter()
        .filter(|a| a.target == target)
        .filter(|a| match (&a.platform, platform) {
            (Some(want), Some(p)) => p.satisfies(want),
            (Some(_), None) => false,
            (None, _) => true,
        })
        .map(|a| (a.key.clone(), a.value.clone()))
        .collect()
}

/// The number of stages the recipe has (the same in every platform's plan).
fn recipe_stage_count(plans: &[(Platform, BuildArgs, strata_recipe::Plan)]) -> usize {
    plans.iter().map(|(.., p)| p.stages.len()).max().unwrap_or(0)
}

/// The built image (or index), opened from the store under the build's first tag (so that
/// messages name it so), else its digest.
fn open_result(
    store: &Store,
    opts: &BuildOptions,
    manifest: &strata_store::oci_spec::image::Descriptor,
) -> Result<strata_image::Opened> {
    let digest = manifest.digest().to_string();
    let mut opened =
        strata_image::open_local_any(Some(store), &ImageLocation::Store(digest.clone()))?;
    let name = opts.tags.first().cloned().unwrap_or(digest);
    match &mut opened {
        strata_image::Opened::Image(i) => i.name = Some(name),
        strata_image::Opened::Index(i) => i.name = Some(name),
    }
    Ok(opened)
}

/// `--push`: the image (or index, children first) to every tag, then `--output
/// docker://...`; blobs the registry has are not sent again (strata-registry's push: HEAD,
/// else mount, else upload), and every blob to upload is verified before the first is sent.
fn push_result(
    store: &Store,
    opts: &BuildOptions,
    manifest: &strata_store::oci_spec::image::Descriptor,
    imported: &remote_cache::Imported,
) -> Result<Vec<(String, strata_registry::TransferReport)>> {
    let mut targets: Vec<strata_types::Reference> = Vec::new();
    if opts.push {
        for tag in &opts.tags {
            targets.push(tag.parse().map_err(strata_store::StoreError::from)?);
        }
    }
    if let Some(ImageLocation::Registry(r)) = &opts.output {
        targets.push(r.clone());
    }
    let mut pushed = Vec::new();
    if targets.is_empty() {
        return Ok(pushed);
    }
    let opened = open_result(store, opts, manifest)?;
    for r in targets {
        let err = |e| BuildError::Push { reference: r.to_string(), source: Box::new(e) };
        let client = remote_cache::client_for(opts, &r).map_err(err)?;
        let events = &strata_registry::NoTransferProgress;
        // Layers a lazy hit left in the cache's repository are mounted from there, never
        // read (or fetched, for another registry).
        let fetch = |d: &strata_types::Digest| imported.fetch_pending_blob(store, d);
        let push = &Default::default();
        let report =
            strata_image::push_opened_fetching(&client, &opened, &r, push, events, Some(&fetch))
                .map_err(err)?;
        pushed.push((r.to_string(), report));
    }
    Ok(pushed)
}

/// `--cache-to`: the entries the build used, by each destination's mode, every platform's
/// in one cache. `mode=min` keeps the stages the final image is made of: the target and the
/// stages it is `FROM`.
fn export_cache(
    store: &Store,
    opts: &BuildOptions,
    builders: &[executor::Builder<'_>],
    progress: &dyn ProgressSink,
) -> Result<Vec<(String, usize)>> {
    if opts.cache_to.is_empty() {
        return Ok(Vec::new());
    }
    let mut all = Vec::new();
    // The layers the exported steps stand on, base layers included, for their tables of
    // contents (lazy hits on the importing side).
    let mut layers: Vec<(bool, image::LayerRef)> = Vec::new();
    for b in builders {
        let plan = b.stages.plan;
        let mut chain = BTreeSet::from([plan.target]);
        let mut at = plan.target;
        while let strata_recipe::Base::Stage(j) = &plan.stages[at].base {
            if !chain.insert(*j) {
                break;
            }
            at = *j;
        }
        let entries = b.done.entries.lock().unwrap_or_else(|p| p.into_inner()).clone();
        all.extend(entries.into_iter().map(|(stage, k, e)| (chain.contains(&stage), k, e)));
        for stage in 0..plan.stages.len() {
            if let Some(state) = b.result(stage) {
                let in_chain = chain.contains(&stage);
                layers.extend(state.layers.into_iter().map(|l| (in_chain, l)));
            }
        }
    }
    let any_max = opts.cache_to.iter().any(|s| s.mode == CacheMode::Max);
    let mut tocs: BTreeMap<strata_types::Digest, (bool, _, _)> = BTreeMap::new();
    for (in_chain, layer) in &layers {
        if !(*in_chain || any_max) {
            continue;
        }
        if let Some((seen_in_chain, ..)) = tocs.get_mut(&layer.diff_id) {
            *seen_in_chain |= *in_chain;
            continue;
        }
        // Best effort: a layer without a table of contents is only fetched when hit.
        if let Ok(Some(toc)) = lazy::toc_of(store, &builders[0].cache.imported, layer) {
            tocs.insert(layer.diff_id, (*in_chain, toc, layer.descriptor.clone()));
        }
    }
    // `mounts=true`: every cache mount a RUN of the build used, as its chain of layers.
    let mounts = match opts.cache_to.iter().any(|s| s.mounts) {
        true => export_cache_mounts(store, &builders[0].cache.writer, builders),
        false => Ok(Default::default()),
    };
    let mut exported = Vec::new();
    for spec in &opts.cache_to {
        let index = match (&mounts, spec.mounts) {
            (Err(e), true) if spec.ignore_error => {
                progress.event(&BuildEvent::Warning {
                    message: format!("cache {spec} not exported (ignore-error=true): {e}"),
                });
                continue;
            }
            (Err(e), true) => {
                return Err(BuildError::CacheMountExport {
                    cache: spec.to_string(),
                    why: e.clone(),
                })
            }
            (Ok(m), true) => m.clone(),
            (_, false) => Default::default(),
        };
        let mut index = strata_store::CacheIndex {
            entries: all
                .iter()
                .filter(|(in_chain, ..)| spec.mode == CacheMode::Max || *in_chain)
                .map(|(_, k, e)| (*k, e.clone()))
                .collect(),
            mounts: index,
            tocs: tocs
                .iter()
                .filter(|(_, (in_chain, ..))| spec.mode == CacheMode::Max || *in_chain)
                .map(|(d, (_, toc, _))| (*d, toc.clone()))
                .collect(),
            base_layers: Default::default(),
        };
        let produced: BTreeSet<_> = index.entries.values().map(|e| e.diff_id).collect();
        index.base_layers = tocs
            .iter()
            .filter(|(d, (in_chain, ..))| {
                !produced.contains(d) && (spec.mode == CacheMode::Max || *in_chain)
            })
            .map(|(d, (_, _, layer))| (*d, layer.clone()))
            .collect();
        let imported = &builders[0].cache.imported;
        match remote_cache::export(store, opts, &index, spec, imported) {
            Ok(()) => exported.push((spec.to_string(), index.entries.len())),
            Err(e) if spec.ignore_error => progress.event(&BuildEvent::Warning {
                message: format!("cache {spec} not exported (ignore-error=true): {e}"),
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(exported)
}

/// The stage indices `--no-cache-filter` values name: a stage name (case-insensitive, as
/// `--target`; every stage of that name when several share it) or index. A value naming no
/// stage is an error, not a filter that never matches.
fn resolve_stage_filter(plan: &strata_recipe::Plan, filter: &[String]) -> Result<BTreeSet<usize>> {
    let mut out = BTreeSet::new();
    for f in filter {
        let lower = f.to_ascii_lowercase();
        let mut indices: Vec<usize> = plan
            .stages
            .iter()
            .filter(|s| s.name.as_deref() == Some(lower.as_str()))
            .map(|s| s.index)
            .collect();
        if indices.is_empty() {
            indices.extend(f.parse::<usize>().ok().filter(|i| *i < plan.stages.len()));
        }
        if indices.is_empty() {
            let stages = plan
                .stages
                .iter()
                .map(|s| s.name.clone().unwrap_or_else(|| s.index.to_string()))
                .collect();
            return Err(BuildError::UnknownStageFilter { name: f.clone(), stages });
        }
        out.extend(indices);
    }
    Ok(out)
}

/// Builds the stages of `plan.order` in waves: every stage whose dependencies are done starts,
/// on its own thread when there are several. The first error (in plan order) wins, after the
/// other stages of its wave have finished.
fn build_stages(builder: &executor::Builder<'_>, plan: &strata_recipe::Plan) -> Result<()> {
    let mut done: BTreeSet<usize> = BTreeSet::new();
    let mut remaining: Vec<usize> = plan.order.clone();
    while !remaining.is_empty() {
        let (mut ready, rest): (Vec<usize>, Vec<usize>) = remaining.iter().partition(|i| {
            plan.dependencies.get(i).is_none_or(|deps| deps.iter().all(|d| done.contains(d)))
        });
        if ready.is_empty() {
            // Cannot happen for a plan from `Recipe::plan`; build in order rather than spin.
            ready = remaining[..1].to_vec();
        }
        let rest: Vec<usize> = rest.into_iter().filter(|i| !ready.contains(i)).collect();
        let outcomes: Vec<(usize, Result<image::ImageState>)> = if ready.len() == 1 {
            ready.iter().map(|&i| (i, builder.build_stage(i))).collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = ready
                    .iter()
                    .map(|&i| (i, scope.spawn(move || builder.build_stage(i))))
                    .collect();
                handles
                    .into_iter()
                    .map(|(i, h)| match h.join() {
                        Ok(r) => (i, r),
                        Err(panic) => std::panic::resume_unwind(panic),
                    })
                    .collect()
            })
        };
        for (i, outcome) in outcomes {
            let state = outcome?;
            builder.done.results.write().unwrap_or_else(|p| p.into_inner()).insert(i, state);
            done.insert(i);
        }
        remaining = rest;
    }
    Ok(())
}

/// `<recipe>.dockerignore` next to the recipe, else `CONTEXT/.dockerignore`.
pub(crate) fn load_dockerignore(opts: &BuildOptions) -> Result<DockerIgnore> {
    let name = opts.recipe_path.file_name().map(|n| n.to_string_lossy().to_string());
    let candidates = DockerIgnore::candidate_files(name.as_deref().unwrap_or("Dockerfile"));
    let recipe_dir = opts.recipe_path.parent().unwrap_or(&opts.context);
    let mut paths = vec![recipe_dir.join(&candidates[0]), opts.context.join(&candidates[1])];
    if opts.recipe.is_some() {
        // A recipe from no file has no `<recipe>.dockerignore` beside it.
        paths.remove(0);
    }
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return DockerIgnore::parse(&text).map_err(|source| BuildError::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BuildError::io("read", &path, e)),
        }
    }
    Ok(DockerIgnore::default())
}
