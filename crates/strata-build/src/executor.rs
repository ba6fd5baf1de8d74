//! The build loop: stages in dependency order, each step applied to the stage's image.
//!
//! A stage starts from its base's [`ImageState`], runs the base's ONBUILD triggers, then walks
//! its steps with the values each can see (the recipe crate's expansion with the base image's
//! `Env`). Metadata steps edit the config and add an `empty_layer` history entry; RUN, COPY,
//! ADD and a WORKDIR that has to create its directory write one layer each, then unpack it as
//! a snapshot so later steps and stages can see it. Nothing is tagged until every stage the
//! target needs has finished, so a failed build leaves at most unreferenced blobs (gc
//! removes them).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use strata_layer::{write_layer, Change, Changeset, LayerWriter};
use strata_recipe::instruction::ArgDecl;
use strata_recipe::stage::resolve_stage_ref;
use strata_recipe::{
    Base, BuildArgs, Command, CopySpec, DockerIgnore, Instruction, Plan, Recipe, Scope, Source,
    Step,
};
use strata_store::{CacheEntry, CacheKey, Store};
use strata_types::{Digest, Platform};

use crate::cache;
use crate::context_hash::{ContextHashes, FileCount};
use crate::copy::{ensure_dir, source_inputs, stage_copy, CopyEnv, Fetched, Scratch, SourceTree};
use crate::engine::{ImageSource, StepRunner};
use crate::error::{BuildError, Result};
use crate::image::{
    expose_ports, go_quote_list, healthcheck, healthcheck_history, join_workdir, ImageState,
    LayerRef,
};
use crate::options::{BuildOptions, NamedContext, StepReport};
use crate::progress::{BuildEvent, ProgressSink, StepPhase};
use crate::rootfs::{adopt_snapshot, adopt_upper, ensure_snapshot, resolve_owner, view_of_chain};
use strata_layer::overlay::MergedView;
use strata_store::WorkDir;

/// One build in progress, by job: where it reads and writes and its two side effects
/// ([`Io`]), what it builds ([`Stages`]), what its cache keys depend on ([`StepCache`]), and
/// what is finished ([`Done`]).
pub(crate) struct Builder<'a> {
    pub io: Io<'a>,
    pub stages: Stages<'a>,
    /// Shared by the builders of every platform.
    pub cache: &'a StepCache,
    pub done: Done,
    pub platform: ForPlatform<'a>,
}

/// The platform one builder builds for, and the stages builders of several platforms share.
pub(crate) struct ForPlatform<'a> {
    /// The build's target platform (`TARGETPLATFORM`).
    pub target: Platform,
    /// Whether `--platform` asked for it: a build that names no platform takes a local
    /// single-platform base as it is.
    pub explicit: bool,
    /// `--build-arg` values, with the builtin platform args for this target.
    pub args: BuildArgs,
    /// Finished stages by [`ForPlatform::stage_key`], across platforms: a stage whose
    /// platform and inputs are the same for two targets (a `FROM --platform=$BUILDPLATFORM`
    /// stage that does not read `TARGET*`) is built once.
    pub shared: &'a SharedStages,
    /// The key of each stage this builder has started, for its dependents' keys.
    pub keys: Mutex<HashMap<usize, String>>,
}

/// Stage results shared between the builders of a multi-platform build, and the jobs their
/// stages take turns on.
pub(crate) struct SharedStages {
    /// One slot per stage key; its lock is held while that stage is being built.
    slots: Mutex<HashMap<String, Arc<Mutex<Option<ImageState>>>>>,
    /// Stages building now, and how many may (`--jobs`; `None`: no bound).
    jobs: (Mutex<usize>, std::sync::Condvar, Option<usize>),
}

/// A job held by one stage while it builds; dropping it lets a waiting stage start.
struct Job<'a>(&'a SharedStages);

impl Drop for Job<'_> {
    fn drop(&mut self) {
        let (running, freed, _) = &self.0.jobs;
        *running.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        freed.notify_one();
    }
}

impl SharedStages {
    pub fn new(jobs: Option<std::num::NonZeroUsize>) -> SharedStages {
        SharedStages {
            slots: Mutex::default(),
            jobs: (Mutex::new(0), std::sync::Condvar::new(), jobs.map(usize::from)),
        }
    }

    /// Waits for a free job. Only a stage that is about to build takes one, after it owns
    /// its slot: a stage waiting for another platform's identical stage holds no job, so
    /// the builder of that stage can always get one (no deadlock at `--jobs 1`).
    fn job(&self) -> Job<'_> {
        let (running, freed, bound) = &self.jobs;
        let mut n = running.lock().unwrap_or_else(|p| p.into_inner());
        while bound.is_some_and(|b| *n >= b) {
            n = freed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        Job(self)
    }

    fn slot(&self, key: &str) -> Arc<Mutex<Option<ImageState>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(slots.entry(key.to_string()).or_default())
    }
}

/// The builtin args that name the target platform: a stage that declares one builds
/// differently for each target.
const TARGET_ARGS: [&str; 4] = ["TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT"];

/// The store, the options, where progress goes, and the side effects.
pub(crate) struct Io<'a> {
    pub store: &'a Store,
    pub opts: &'a BuildOptions,
    pub progress: &'a dyn ProgressSink,
    /// Runs RUN steps.
    pub runner: &'a dyn StepRunner,
    /// Finds FROM and `--from` images.
    pub images: &'a dyn ImageSource,
    /// The SSH agents `--ssh` forwards.
    pub ssh: &'a crate::ssh::Agents,
}

/// The recipe and what to build of it.
pub(crate) struct Stages<'a> {
    pub recipe: &'a Recipe,
    pub plan: &'a Plan,
    pub ignore: DockerIgnore,
    /// Stages `--no-cache-filter` names (resolved to indices).
    pub no_cache_stages: std::collections::BTreeSet<usize>,
}

/// The step cache's own inputs.
pub(crate) struct StepCache {
    /// The layer writer (its settings are part of every key).
    pub writer: LayerWriter,
    /// Digests of context files, remembered between builds.
    pub hashes: ContextHashes,
    /// What `--cache-from` imported.
    pub imported: crate::remote_cache::Imported,
    /// Directory named contexts already made into images, by name: each is imported once
    /// per build however many steps read it.
    pub named_dirs: Mutex<HashMap<String, strata_store::oci_spec::image::Descriptor>>,
    /// Stand-in trees of layers taken from an imported cache without their blob, made from
    /// their tables of contents, by diffID (each kept for the build).
    pub stubs: Mutex<HashMap<Digest, crate::lazy::StubDir>>,
}

/// Finished work.
#[derive(Default)]
pub(crate) struct Done {
    /// Finished stages. A stage reads only stages it depends on, which finished before it
    /// started, so the lock is never contended for long.
    pub results: RwLock<HashMap<usize, ImageState>>,
    /// Step reports by stage.
    pub reports: Mutex<BTreeMap<usize, Vec<StepReport>>>,
    pub layers_written: AtomicUsize,
    pub layers_reused: AtomicUsize,
    pub bytes_written: AtomicU64,
    /// Every cache entry a step used or recorded, by stage (what `--cache-to` exports).
    pub entries: Mutex<Vec<(usize, CacheKey, CacheEntry)>>,
    /// The ids of the cache mounts RUN steps used (what `--cache-to ...,mounts=true` exports).
    pub cache_mounts: Mutex<std::collections::BTreeSet<String>>,
}

/// What one step did to the filesystem.
pub(crate) struct StepResult {
    pub created_by: String,
    pub layer: Option<LayerRef>,
    pub layer_size: Option<u64>,
    /// The layer came from the cache.
    pub cached: bool,
    /// Where a step that ran spent its time.
    pub phases: Phases,
}

impl StepResult {
    fn meta(created_by: String) -> StepResult {
        StepResult {
            created_by,
            layer: None,
            layer_size: None,
            cached: false,
            phases: Phases::default(),
        }
    }

    /// A step that wrote `layer`, having spent its time as `phases` says.
    pub fn written(created_by: String, layer: LayerRef, size: u64, phases: Phases) -> StepResult {
        StepResult { created_by, layer: Some(layer), layer_size: Some(size), cached: false, phases }
    }
}

/// Wall time by phase of one step ([`BuildEvent::StepPhases`]): where a build's time goes,
/// without a profiler.
#[derive(Default)]
pub(crate) struct Phases(Vec<StepPhase>);

impl Phases {
    /// Runs `f`, adding its wall time to phase `name`.
    pub fn time<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.add(name, started.elapsed());
        out
    }

    /// Adds `d` to phase `name` (time measured elsewhere, e.g. by the layer writer).
    pub fn add(&mut self, name: &'static str, d: std::time::Duration) {
        let micros = d.as_micros() as u64;
        match self.0.iter_mut().find(|p| p.name == name) {
            Some(p) => p.micros += micros,
            None => self.0.push(StepPhase { name, micros }),
        }
    }
}

impl<'a> Builder<'a> {
    /// The result of a finished stage.
    pub fn result(&self, index: usize) -> Option<ImageState> {
        self.done.results.read().unwrap_or_else(|p| p.into_inner()).get(&index).cloned()
    }

    fn stage_label(&self, index: usize) -> String {
        match &self.stages.plan.stages[index].name {
            Some(n) => n.clone(),
            None => index.to_string(),
        }
    }

    /// The state of the image a FROM or `--from` names (its blobs in the store), for
    /// `platform` (see [`ImageSource::image`]).
    pub fn image_state(&self, reference: &str, platform: Option<&Platform>) -> Result<ImageState> {
        let (store, progress) = (self.io.store, self.io.progress);
        let image = match self.io.opts.named_contexts.get(&reference.to_ascii_lowercase()) {
            None => {
                // Base layers an imported cache keeps are not downloaded: they stand in by
                // their tables of contents until a step reads them.
                let skip = self.cache.imported.base_layers_to_skip(store);
                let image =
                    self.io.images.image_lazy(store, reference, platform, progress, skip)?;
                let config = image.config.rootfs().diff_ids().clone();
                for (layer, diff_id) in image.manifest.layers().iter().zip(&config) {
                    let digest =
                        Digest::try_from(layer.digest()).map_err(strata_store::StoreError::from)?;
                    let diff_id: Digest =
                        diff_id.parse().map_err(strata_store::StoreError::from)?;
                    if skip.contains(&digest)
                        && !store.has_blob(&digest)
                        && !self.cache.imported.take_base_layer(store, &digest, &diff_id)
                    {
                        return Err(BuildError::ImageNotInStore {
                            reference: reference.to_string(),
                            why: "a layer of it is neither in the store nor in the cache",
                        });
                    }
                }
                image
            }
            Some(NamedContext::Image(other)) => {
                self.io.images.image(store, other, platform, progress)?
            }
            Some(NamedContext::OciLayout(location)) => {
                crate::engine::load_for(store, location, platform)?
            }
            Some(NamedContext::Dir(dir)) => {
                // A directory is read as a one-layer image of it, made the way `strata import`
                // makes one (deterministic: the same files give the same layer and cache keys).
                let mut made = self.cache.named_dirs.lock().unwrap_or_else(|p| p.into_inner());
                let manifest = match made.get(reference) {
                    Some(m) => m.clone(),
                    None => {
                        let opts = strata_image::ImportOptions {
                            compression: self.io.opts.compression,
                            ..Default::default()
                        };
                        let m = strata_image::import_tree(self.io.store, dir, &opts)?.manifest;
                        made.insert(reference.to_string(), m.clone());
                        m
                    }
                };
                self.io.store.image(&manifest)?
            }
        };
        ImageState::from_image(self.io.store, &image, reference)
    }

    /// Builds stage `index` for this builder's platform, or takes the result another
    /// platform's builder made of the same stage (see [`ForPlatform::shared`]).
    pub fn build_stage(&self, index: usize) -> Result<ImageState> {
        let stage = &self.stages.plan.stages[index];
        let from_err = |e| self.wrap(index, stage.span.line, &stage_from(stage), e);
        let platform = self.stage_platform(stage).map_err(from_err)?;
        let key = self.stage_key(index, stage, platform.as_ref());
        self.platform.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(index, key.clone());
        let slot = self.platform.shared.slot(&key);
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(done) = slot.as_ref() {
            let shown = platform.clone().unwrap_or_else(Platform::host);
            self.io.progress.event(&BuildEvent::StageStart {
                stage: index,
                name: stage.name.clone(),
                base: format!("the same stage built for {shown}"),
                steps: 0,
                onbuild_steps: 0,
                platform: Some(self.platform.target.to_string()),
            });
            return Ok(done.clone());
        }
        let job = self.platform.shared.job();
        let state = self.build_stage_for(index, platform);
        drop(job);
        let state = state?;
        *slot = Some(state.clone());
        Ok(state)
    }

    /// The platform stage `stage` builds for, when one is asked for: its `FROM --platform`
    /// (expanded), else the build's `--platform`; `None` in a build that names neither.
    fn stage_platform(&self, stage: &strata_recipe::Stage) -> Result<Option<Platform>> {
        match stage.platform.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => p
                .parse()
                .map(Some)
                .map_err(|_| BuildError::InvalidStagePlatform { value: p.to_string() }),
            None if self.platform.explicit => Ok(Some(self.platform.target.clone())),
            None => Ok(None),
        }
    }

    /// What decides a stage's result besides the options every platform shares: its
    /// index, platform, base, the target platform when the stage reads a `TARGET*` arg or
    /// builds for the target, and the keys of the stages it reads.
    fn stage_key(
        &self,
        index: usize,
        stage: &strata_recipe::Stage,
        platform: Option<&Platform>,
    ) -> String {
        let reads_target = stage.platform.as_deref().is_none_or(str::is_empty)
            || stage.steps.iter().any(|s| match &s.instruction {
                Instruction::Arg(decls) => {
                    decls.iter().any(|d| TARGET_ARGS.contains(&d.name.as_str()))
                }
                _ => false,
            });
        let mut key = format!(
            "{index}|{}|{:?}",
            platform.map(ToString::to_string).unwrap_or_default(),
            stage.base
        );
        if reads_target {
            key.push_str(&format!("|target={}", self.platform.target));
        }
        let keys = self.platform.keys.lock().unwrap_or_else(|p| p.into_inner());
        for d in self.stages.plan.dependencies.get(&index).into_iter().flatten() {
            key.push_str(&format!("|{d}:{}", keys.get(d).map(String::as_str).unwrap_or("")));
        }
        key
    }

    fn build_stage_for(&self, index: usize, platform: Option<Platform>) -> Result<ImageState> {
        let stage = &self.stages.plan.stages[index];
        let (mut state, base) = match &stage.base {
            Base::Scratch => (ImageState::scratch(), "scratch".to_string()),
            Base::Image(r) => {
                let s = self
                    .image_state(r, platform.as_ref())
                    .map_err(|e| self.wrap(index, stage.span.line, &stage_from(stage), e))?;
                (s, r.clone())
            }
            Base::Stage(j) => {
                let s = self.result(*j).map(|s| s.for_child()).unwrap_or_else(ImageState::scratch);
                (s, format!("stage {}", self.stage_label(*j)))
            }
        };
        state.platform = platform;
        state.base_layers = state.layers.len();
        state.base_history = state.history.len();
        let onbuild_steps = state.base_onbuild.len();
        self.io.progress.event(&BuildEvent::StageStart {
            stage: index,
            name: stage.name.clone(),
            base,
            steps: stage.steps.len() + onbuild_steps,
            onbuild_steps,
            platform: state.platform.as_ref().map(ToString::to_string),
        });
        let mut step_index = 0;
        // ONBUILD triggers of the base run first, as if written right after FROM.
        for trigger in std::mem::take(&mut state.base_onbuild) {
            let text = format!("FROM scratch\n{trigger}\n");
            let parse_err = |source: strata_recipe::ParseError| BuildError::Parse {
                path: PathBuf::from("ONBUILD trigger"),
                source: Box::new(source),
            };
            let sub = strata_recipe::parse(&text).map_err(parse_err)?;
            let stages = sub.stages(&self.platform.args).map_err(parse_err)?;
            let Some(first) = stages.into_iter().next() else { continue };
            let mut steps = Vec::new();
            first
                .expand_with(&state.env_pairs(), &self.platform.args, sub.escape(), &mut |s, sc| {
                    steps.push((s.clone(), sc.clone()))
                })
                .map_err(parse_err)?;
            for (mut step, scope) in steps {
                step.span = stage.span;
                self.exec_step(index, step_index, &mut state, &step, &scope)?;
                step_index += 1;
            }
        }
        let mut steps = Vec::new();
        stage
            .expand_with(
                &state.env_pairs(),
                &self.platform.args,
                self.stages.recipe.escape(),
                &mut |s, sc| steps.push((s.clone(), sc.clone())),
            )
            .map_err(|source| BuildError::Parse {
                path: self.io.opts.recipe_path.clone(),
                source: Box::new(source),
            })?;
        for (step, scope) in steps {
            self.exec_step(index, step_index, &mut state, &step, &scope)?;
            step_index += 1;
        }
        Ok(state)
    }

    fn wrap(&self, stage: usize, line: usize, text: &str, e: BuildError) -> BuildError {
        BuildError::Step {
            stage: self.stage_label(stage),
            line,
            // A 1 MB line is named, not echoed; a URL's password not at all.
            instruction: strata_types::elide(&crate::git::redact_text(text), 200).into_owned(),
            source: Box::new(e),
        }
    }

    fn exec_step(
        &self,
        stage: usize,
        step_index: usize,
        state: &mut ImageState,
        step: &Step,
        scope: &Scope,
    ) -> Result<()> {
        let line = step.span.line;
        // Between steps is where a cancelled build stops; within one, a running RUN is killed
        // by the sandbox and a COPY stops between files (and chunks of a big one), as does
        // the layer write.
        if self.io.opts.cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        self.io.progress.event(&BuildEvent::StepStart {
            stage,
            step: step_index,
            line,
            // A URL's password is not shown.
            text: crate::git::redact_text(&step.original),
        });
        let started = Instant::now();
        let result = self.dispatch(stage, step_index, state, step, scope).map_err(|e| {
            if e.is_cancel() {
                BuildError::Cancelled
            } else {
                self.wrap(stage, line, &step.original, e)
            }
        })?;
        let empty = result.layer.is_none();
        if result.cached {
            self.done.layers_reused.fetch_add(1, Ordering::Relaxed);
            self.io.progress.event(&BuildEvent::StepCached { stage, step: step_index });
        }
        let layer_digest = match &result.layer {
            Some(l) => Some(l.digest()?),
            None => None,
        };
        if let Some(l) = result.layer {
            state.layers.push(l);
        }
        state.push_history(result.created_by.clone(), empty, self.io.opts.timestamp);
        if !result.phases.0.is_empty() {
            let phases = result.phases.0;
            self.io.progress.event(&BuildEvent::StepPhases { stage, step: step_index, phases });
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        self.io.progress.event(&BuildEvent::StepDone {
            stage,
            step: step_index,
            duration_ms,
            layer: layer_digest.map(|d| d.to_string()),
            layer_size: result.layer_size,
            empty_layer: empty,
        });
        let mut reports = self.done.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports.entry(stage).or_default().push(StepReport {
            stage,
            line,
            created_by: result.created_by,
            layer: layer_digest,
            duration_ms,
            cached: result.cached,
        });
        Ok(())
    }

    pub(crate) fn warn(&self, message: String) {
        self.io.progress.event(&BuildEvent::Warning { message });
    }

    fn dispatch(
        &self,
        stage: usize,
        step_index: usize,
        state: &mut ImageState,
        step: &Step,
        scope: &Scope,
    ) -> Result<StepResult> {
        Ok(match &step.instruction {
            Instruction::Env(kvs) => {
                let mut msg = String::from("ENV");
                for kv in kvs {
                    state.set_env(&kv.key, &kv.value);
                    msg.push_str(&format!(" {}={}", kv.key, kv.value));
                }
                StepResult::meta(msg)
            }
            Instruction::Label(kvs) => {
                let mut msg = String::from("LABEL");
                for kv in kvs {
                    state.run.labels.insert(kv.key.clone(), kv.value.clone());
                    msg.push_str(&format!(" {}={}", kv.key, kv.value));
                }
                StepResult::meta(msg)
            }
            Instruction::Maintainer(m) => {
                state.author = Some(m.clone());
                StepResult::meta(format!("MAINTAINER {m}"))
            }
            Instruction::Expose(words) => {
                let mut ports = expose_ports(words);
                ports.sort();
                ports.dedup();
                state.run.exposed_ports.extend(ports.iter().cloned());
                let shown: Vec<String> = ports.iter().map(|p| format!("{p}:{{}}")).collect();
                StepResult::meta(format!("EXPOSE map[{}]", shown.join(" ")))
            }
            Instruction::Cmd(c) => {
                let cmd = self.command(state, c);
                let msg = format!("CMD {}", go_quote_list(&cmd));
                state.run.cmd = Some(cmd);
                state.cmd_set = true;
                StepResult::meta(msg)
            }
            Instruction::Entrypoint(c) => {
                let ep = self.command(state, c);
                let msg = format!("ENTRYPOINT {}", go_quote_list(&ep));
                state.run.entrypoint = Some(ep);
                if !state.cmd_set {
                    state.run.cmd = None;
                }
                StepResult::meta(msg)
            }
            Instruction::Volume(v) => {
                state.run.volumes.extend(v.iter().cloned());
                StepResult::meta(format!("VOLUME [{}]", v.join(" ")))
            }
            Instruction::User(u) => {
                state.run.user = u.clone();
                StepResult::meta(format!("USER {u}"))
            }
            Instruction::Stopsignal(s) => {
                state.run.stop_signal = Some(s.clone());
                StepResult::meta(format!("STOPSIGNAL {s}"))
            }
            Instruction::Arg(decls) => {
                let shown: Vec<String> = decls
                    .iter()
                    .map(|ArgDecl { name, default }| {
                        match self
                            .io
                            .opts
                            .build_args
                            .get(name)
                            .map(str::to_string)
                            .or(default.clone())
                        {
                            Some(v) => format!("{name}={v}"),
                            None => name.clone(),
                        }
                    })
                    .collect();
                StepResult::meta(format!("ARG {}", shown.join(" ")))
            }
            Instruction::Healthcheck(h) => {
                state.run.healthcheck = Some(healthcheck(h));
                StepResult::meta(healthcheck_history(h))
            }
            Instruction::Shell(sh) => {
                state.run.shell = Some(sh.clone());
                StepResult::meta(format!("SHELL {}", go_quote_list(sh)))
            }
            Instruction::Onbuild { expression, .. } => {
                state.run.on_build.push(expression.clone());
                StepResult::meta(format!("ONBUILD {expression}"))
            }
            Instruction::Workdir(p) => self.workdir((stage, step_index), state, p)?,
            Instruction::Copy(spec) => self.copy((stage, step_index), state, spec, false, step)?,
            Instruction::Add(spec) => self.copy((stage, step_index), state, spec, true, step)?,
            Instruction::Run(run) => self.run(stage, step_index, state, run, scope, step)?,
            Instruction::From { .. } => StepResult::meta(step.original.clone()),
        })
    }

    fn command(&self, state: &ImageState, c: &Command) -> Vec<String> {
        match c {
            Command::Shell(s) => state.with_shell(s),
            Command::Exec(v) => v.clone(),
        }
    }

    /// The image `state` as a merged view of its layers' snapshots, every layer in the store
    /// (fetched first where a cache hit was taken without it).
    pub fn view(&self, state: &ImageState) -> Result<MergedView> {
        self.realize(&state.layers)?;
        view_of_chain(self.io.store, &state.layers)
    }

    /// Fetches the layers of `chain` that were taken from an imported cache without their
    /// blob: a step is about to read their files.
    pub fn realize(&self, chain: &[LayerRef]) -> Result<()> {
        chain.iter().try_for_each(|l| self.cache.imported.fetch_pending(self.io.store, &l.diff_id))
    }

    /// [`Builder::view`] for a step that only resolves paths and reads directory metadata in
    /// the image (a COPY or WORKDIR that resolves no user name): a layer taken from a cache
    /// without its blob stands in as the tree its table of contents lists (directories,
    /// symlinks and whiteouts exact, files present but empty, their metadata not the
    /// image's), so nothing is downloaded. Where no stand-in can be made (no table of contents, no root
    /// for its whiteouts), the layer is fetched.
    pub fn shallow_view(&self, state: &ImageState) -> Result<MergedView> {
        let mut dirs = Vec::with_capacity(state.layers.len());
        for l in &state.layers {
            if self.cache.imported.is_pending(&l.diff_id) {
                if let Some(tree) = self.stub(l) {
                    dirs.push(tree);
                    continue;
                }
                self.cache.imported.fetch_pending(self.io.store, &l.diff_id)?;
            }
            dirs.push(ensure_snapshot(self.io.store, l)?);
        }
        Ok(MergedView::new(dirs))
    }

    /// The stand-in tree of pending layer `l` (see [`Builder::shallow_view`]).
    fn stub(&self, l: &LayerRef) -> Option<PathBuf> {
        let mut stubs = self.cache.stubs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = stubs.get(&l.diff_id) {
            return Some(w.path().join("tree"));
        }
        let store = self.io.store;
        let toc = self.cache.imported.toc(store, &l.diff_id)?;
        let entries = crate::lazy::read_toc(store, &toc).ok()?;
        let work = crate::lazy::StubDir::new(store).ok()?;
        let tree = work.path().join("tree");
        std::fs::create_dir(&tree).ok()?;
        // COPY and WORKDIR read directories' metadata and files' existence only.
        let empty = work.path().join("empty");
        std::fs::write(&empty, b"").ok()?;
        strata_layer::listing::materialize_shape(&entries, &tree, &empty).ok()?;
        stubs.insert(l.diff_id, work);
        Some(tree)
    }

    /// A locked work directory in the store's tmp.
    pub fn staging(&self) -> Result<WorkDir> {
        Ok(self.io.store.work_dir("step-")?)
    }

    /// Whether steps of `stage` may take their result from the cache (`--no-cache`,
    /// `--no-cache-filter` by name or index).
    pub fn cache_enabled(&self, stage: usize) -> bool {
        !self.io.opts.no_cache && !self.stages.no_cache_stages.contains(&stage)
    }

    /// Where step `step` of `stage` is, for the cache's step pointers (see
    /// [`cache::locator`]).
    pub fn locator(&self, (stage, step): (usize, usize), state: &ImageState) -> Digest {
        let platform = state.platform.clone().unwrap_or_else(Platform::host);
        let at = format!("{platform}\0{stage}\0{step}");
        cache::locator(&self.io.opts.context, &self.io.opts.recipe_path, &at)
    }

    /// The cached result of `key`, when allowed for `stage` and its blob is still stored:
    /// the snapshot is made sure of and nothing else happens. A miss is explained in a
    /// [`BuildEvent::CacheMiss`] (`changed`: the context files the step's sources saw
    /// change).
    pub fn cached(
        &self,
        at: (usize, usize),
        state: &ImageState,
        kind: cache::Kind,
        key: &cache::StepKey,
        created_by: &str,
        changed: &FileCount,
    ) -> Result<Option<StepResult>> {
        let (stage, step) = at;
        let miss = |reason: String| {
            self.io.progress.event(&BuildEvent::CacheMiss { stage, step, reason });
            Ok(None)
        };
        if !self.cache_enabled(stage) {
            return miss(if self.io.opts.no_cache {
                "--no-cache".into()
            } else {
                "--no-cache-filter names this stage".into()
            });
        }
        let locator = self.locator(at, state);
        let Some(digest) = key.digest else {
            return miss(cache::explain_miss(self.io.store, &locator, key, kind, changed));
        };
        let found = cache::lookup(self.io.store, kind, &digest).or_else(|| {
            let key = CacheKey { kind, digest };
            let e = self.cache.imported.take(self.io.store, &key, self.io.progress)?;
            let size = e.layer.size();
            Some((LayerRef { descriptor: e.layer, diff_id: e.diff_id, image: None }, size))
        });
        let Some((layer, size)) = found else {
            return miss(cache::explain_miss(self.io.store, &locator, key, kind, changed));
        };
        // A layer taken without its blob gets its snapshot when a step reads it.
        if !self.cache.imported.is_pending(&layer.diff_id) {
            ensure_snapshot(self.io.store, &layer)?;
        }
        // The step's pointer follows what it last used (only written when it moves, so a
        // no-op rebuild writes nothing).
        let hit = CacheKey { kind, digest };
        if self.io.store.cache_step(&locator) != Some(hit) {
            let _ = self.io.store.cache_note_step(&locator, &hit);
        }
        // Last use, for `strata cache ls` and pruning by age and size.
        self.io.store.cache_touch(&hit);
        let key = &digest;
        self.used(stage, kind, key, &layer);
        Ok(Some(StepResult {
            created_by: created_by.to_string(),
            layer: Some(layer),
            layer_size: Some(size),
            cached: true,
            phases: Phases::default(),
        }))
    }

    /// Records that `stage` used `layer` as the result of `key` (for `--cache-to`).
    fn used(&self, stage: usize, kind: cache::Kind, key: &Digest, layer: &LayerRef) {
        let entry = CacheEntry { layer: layer.descriptor.clone(), diff_id: layer.diff_id };
        let mut entries = self.done.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.push((stage, CacheKey { kind, digest: *key }, entry));
    }

    /// Remembers `layer` as the result of `key` in the store's cache (best effort), with
    /// the step at `at` as its maker, and as used by its stage.
    pub fn record(
        &self,
        at: (usize, usize),
        state: &ImageState,
        kind: cache::Kind,
        key: &cache::StepKey,
        layer: &LayerRef,
    ) {
        let Some(digest) = key.digest else { return };
        cache::record(self.io.store, kind, key, &self.locator(at, state), layer);
        self.used(at.0, kind, &digest, layer);
    }

    /// The key fields every step shares: kind, parent chain, writer settings.
    pub fn key_base(
        &self,
        kind: &str,
        state: &ImageState,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("kind".into(), kind.into());
        m.insert(
            "parent".into(),
            state.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>().into(),
        );
        m.insert("timestamp".into(), self.io.opts.timestamp.into());
        // The same inputs run for another platform give another result (an emulated RUN).
        let platform = state.platform.clone().unwrap_or_else(Platform::host);
        m.insert("platform".into(), platform.to_string().into());
        // The compression and its parameters, not only the media type: a layer compressed
        // with other parameters has other bytes, so it must not be reused as this build's.
        m.insert("compression".into(), self.cache.writer.compression_id().into());
        m
    }

    /// Writes `changeset` (bytes from `source`) as a layer and unpacks its snapshot.
    pub fn commit(
        &self,
        changeset: &Changeset,
        source: &Path,
        phases: &mut Phases,
    ) -> Result<(LayerRef, u64)> {
        let layer = self.write(changeset, source, phases)?;
        phases.time("snapshot", || ensure_snapshot(self.io.store, &layer.0))?;
        Ok(layer)
    }

    /// Like [`Builder::commit`] for a staging tree that holds exactly the layer's files: the
    /// tree itself becomes the snapshot instead of unpacking the blob again.
    pub fn commit_staged(
        &self,
        changeset: &Changeset,
        tree: &Path,
        phases: &mut Phases,
    ) -> Result<(LayerRef, u64)> {
        // The tree's mtimes are clamped for its snapshot while the layer is written from it
        // (the writer reads contents, and metadata from the changeset): two cores, one wait.
        let epoch = self.io.opts.timestamp;
        let (layer, clamped) = std::thread::scope(|scope| {
            let clamp = scope.spawn(|| strata_layer::overlay::clamp_mtimes(tree, epoch));
            let layer = self.write(changeset, tree, phases);
            let clamped = phases.time("snapshot", || clamp.join());
            (layer, clamped)
        });
        let layer = layer?;
        clamped.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        phases.time("snapshot", || adopt_snapshot(self.io.store, &layer.0, tree))?;
        Ok(layer)
    }

    /// Like [`Builder::commit`] for a RUN whose `changeset` was read from the overlay
    /// upperdir `upper`: the upper becomes the snapshot where it can be made exactly what
    /// unpacking the blob gives (phase `snapshot`); else the blob is unpacked (phase
    /// `snapshot unpack`, which `--progress plain` then shows).
    pub fn commit_upper(
        &self,
        changeset: &Changeset,
        upper: &Path,
        phases: &mut Phases,
    ) -> Result<(LayerRef, u64)> {
        let layer = self.write(changeset, upper, phases)?;
        let epoch = self.io.opts.timestamp;
        let store = self.io.store;
        let adopted =
            phases.time("snapshot", || adopt_upper(store, &layer.0, upper, changeset, epoch))?;
        if adopted.is_none() {
            phases.time("snapshot unpack", || ensure_snapshot(store, &layer.0))?;
        }
        Ok(layer)
    }

    fn write(
        &self,
        changeset: &Changeset,
        source: &Path,
        phases: &mut Phases,
    ) -> Result<(LayerRef, u64)> {
        let writer = &self.cache.writer;
        let desc =
            phases.time("layer write", || write_layer(self.io.store, writer, changeset, source))?;
        // Its stages overlap (pipelined threads): shown within `layer write`, not added to it.
        phases.add("layer write: tar", desc.times.tar);
        phases.add("layer write: compress", desc.times.compress);
        phases.add("layer write: store write", desc.times.store);
        self.done.layers_written.fetch_add(1, Ordering::Relaxed);
        self.done.bytes_written.fetch_add(desc.size, Ordering::Relaxed);
        let layer = LayerRef { descriptor: desc.descriptor(), diff_id: desc.diff_id, image: None };
        Ok((layer, desc.size))
    }

    fn workdir(
        &self,
        at: (usize, usize),
        state: &mut ImageState,
        path: &str,
    ) -> Result<StepResult> {
        let wd = join_workdir(&state.run.working_dir, path);
        state.run.working_dir = wd.clone();
        let created_by = format!("WORKDIR {wd}");
        if wd == "/" {
            return Ok(StepResult::meta(created_by));
        }
        let mut phases = Phases::default();
        // Only a user name needs the image's files (its passwd).
        let shallow = state.run.user.split(':').all(|p| p.parse::<u32>().is_ok())
            || state.run.user.is_empty();
        let view = phases.time("parent view", || match shallow {
            true => self.shallow_view(state),
            false => self.view(state),
        })?;
        let rel = view.resolve(Path::new(&wd), true)?;
        if view.metadata(&rel).is_some_and(|m| m.is_dir()) {
            return Ok(StepResult::meta(created_by));
        }
        // BuildKit creates a missing WORKDIR owned by the current USER.
        let owner = if state.run.user.is_empty() {
            (0, 0)
        } else {
            resolve_owner(&view, &state.run.user).unwrap_or((0, 0))
        };
        let mut doc = self.key_base("workdir", state);
        doc.insert("path".into(), wd.clone().into());
        doc.insert("owner".into(), vec![owner.0, owner.1].into());
        let key = cache::StepKey::of(doc);
        let none = FileCount::default();
        let kind = cache::Kind::Workdir;
        if let Some(hit) = self.cached(at, state, kind, &key, &created_by, &none)? {
            return Ok(hit);
        }
        let staging = self.staging()?;
        ensure_dir(&view, staging.path(), &rel, owner)?;
        let cs = Changeset::of_dir(staging.path())?;
        let (layer, size) = self.commit(&cs, staging.path(), &mut phases)?;
        self.record(at, state, kind, &key, &layer);
        Ok(StepResult::written(created_by, layer, size, phases))
    }

    fn copy(
        &self,
        (stage, step_index): (usize, usize),
        state: &mut ImageState,
        spec: &CopySpec,
        is_add: bool,
        step: &Step,
    ) -> Result<StepResult> {
        let mut created_by = String::from(if is_add { "ADD" } else { "COPY" });
        for s in &spec.sources {
            created_by.push(' ');
            match s {
                Source::Path { path } => created_by.push_str(path),
                // A URL's password never lands in the image's history.
                Source::Url { url } => created_by.push_str(&crate::git::redact_text(url)),
                Source::Heredoc { name, .. } => created_by.push_str(&format!("<<{name}")),
            }
        }
        created_by.push_str(&format!(" {} # buildkit", spec.dest));
        let mut from_chain: Option<Vec<String>> = None;
        let tree = match &spec.from {
            None => SourceTree {
                view: MergedView::new(vec![self.io.opts.context.clone()]),
                ignore: Some(self.stages.ignore.clone()),
                label: "the build context".to_string(),
                keep_owner: false,
            },
            Some(from) => {
                let (chain, label) =
                    match resolve_stage_ref(&self.stages.plan.stages, from, stage, step.span)
                        .map_err(|source| BuildError::Parse {
                            path: self.io.opts.recipe_path.clone(),
                            source: Box::new(source),
                        })? {
                        Some(j) => {
                            let s = self.result(j).unwrap_or_else(ImageState::scratch);
                            (s.layers, format!("stage {from}"))
                        }
                        None => (
                            self.image_state(from, state.platform.as_ref())?.layers,
                            format!("image {from}"),
                        ),
                    };
                from_chain = Some(chain.iter().map(|l| l.diff_id.to_string()).collect());
                self.realize(&chain)?;
                SourceTree {
                    view: view_of_chain(self.io.store, &chain)?,
                    ignore: None,
                    label,
                    keep_owner: true,
                }
            }
        };
        let mut phases = Phases::default();
        // Only a `--chown` by name needs the image's files (its passwd and group).
        let numeric = |c: &str| c.split(':').all(|p| p.parse::<u32>().is_ok());
        let shallow = spec.chown.as_deref().is_none_or(numeric);
        // The key needs nothing of the parent image: it is looked at only on a miss (a cold
        // runner's hit then unpacks or stands in nothing).
        let no_parent = MergedView::default();
        let scratch = Scratch::new(self.io.store);
        let key_env = CopyEnv {
            image: &no_parent,
            workdir: &state.run.working_dir,
            is_add,
            scratch: &scratch,
            cancel: &self.io.opts.cancel,
        };
        let mut fetched = Fetched::default();
        let mut scanned = FileCount::default();
        let inputs = phases.time("context scan+hash", || {
            source_inputs(
                &key_env,
                spec,
                &tree,
                &self.cache.hashes,
                self.io.opts.timestamp,
                &mut fetched,
                &mut scanned,
            )
        })?;
        if spec.from.is_none() {
            self.io.progress.event(&BuildEvent::ContextScanned {
                stage,
                step: step_index,
                files: scanned.files,
                bytes: scanned.bytes,
            });
        }
        let mut doc = self.key_base(if is_add { "add" } else { "copy" }, state);
        doc.insert("sources".into(), inputs);
        let commits = fetched.git_commits();
        if !commits.is_empty() {
            doc.insert("git".into(), commits.into());
        }
        doc.insert("from".into(), from_chain.into());
        if !spec.dest.starts_with('/') {
            doc.insert("workdir".into(), state.run.working_dir.clone().into());
        }
        // A spec that cannot be serialized is not cached (never a key without it).
        let key = match serde_json::to_value(spec) {
            Ok(v) => {
                doc.insert("spec".into(), v);
                cache::StepKey::of(doc)
            }
            Err(_) => cache::StepKey { digest: None, inputs: Default::default() },
        };
        let at = (stage, step_index);
        let kind = cache::Kind::Copy;
        if let Some(hit) = self.cached(at, state, kind, &key, &created_by, &scanned)? {
            return Ok(hit);
        }
        let image = phases.time("parent view", || match shallow {
            true => self.shallow_view(state),
            false => self.view(state),
        })?;
        let env = CopyEnv { image: &image, ..key_env };
        let staging = self.staging()?;
        let root = staging.path().join("rootfs");
        std::fs::create_dir(&root).map_err(|e| BuildError::io("mkdir", &root, e))?;
        phases.time("copy to staging", || stage_copy(&env, spec, &tree, &root, &mut fetched))?;
        let cs = phases.time("scan staging", || Changeset::of_dir(&root))?;
        let files = cs.changes().iter().filter_map(|c| match c {
            Change::Added(e) if e.kind == strata_layer::EntryKind::File => Some(e.size),
            _ => None,
        });
        let (files, bytes) = files.fold((0, 0), |(n, b), size| (n + 1, b + size));
        self.io.progress.event(&BuildEvent::CopyStaged { stage, step: step_index, files, bytes });
        let (layer, size) = self.commit_staged(&cs, &root, &mut phases)?;
        self.record(at, state, kind, &key, &layer);
        Ok(StepResult::written(created_by, layer, size, phases))
    }
}

fn stage_from(stage: &strata_recipe::Stage) -> String {
    match &stage.base {
        Base::Image(r) => format!("FROM {r}"),
        _ => "FROM".to_string(),
    }
}
