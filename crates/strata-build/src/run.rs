//! RUN: executing a command on the image's filesystem and keeping what it changed.
//!
//! The command runs in the sandbox on an overlay whose lowerdirs are the chain's snapshot
//! dirs and whose upperdir starts empty; afterwards the upperdir is the changeset
//! (DESIGN.md decision 4), so the cost is proportional to what the command wrote. Where
//! overlayfs is not available the chain is unpacked into a directory, scanned before and
//! after, and diffed: same layer bytes, more work.
//!
//! The command line follows BuildKit: shell form through SHELL, exec form as is; a heredoc
//! that is the whole command (`RUN <<EOF`) runs its body with `SHELL -c`, or, when the body
//! starts with `#!`, as an executable file mounted read-only under `/dev/pipes/`; any other
//! heredoc use (`RUN python3 <<EOF`) is handed to the shell as a heredoc. The environment is
//! the config's `Env` plus the ARGs in scope (never stored in the image). `--mount` types:
//! `cache` (a directory per id in the store's cache-mount table, kept between builds,
//! never in a layer), `bind` (context, stage or image; `source` resolved inside that root as
//! BuildKit does, a symlink to `/` meaning the root itself; read-only unless `rw`, and then
//! seen through an overlay whose writes are thrown away), `tmpfs`, `secret` (a file mounted
//! read-only, or `env=`; the value is never written to a layer, the config or the history).
//! Targets are resolved in the image, following its symlinks without leaving it.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use strata_layer::{apply_blob, diff, scan, ApplyOptions, Change, Changeset, EntryKind, Scan};
use strata_recipe::instruction::{CacheSharing, MountType, NetworkMode, RunSpec, SecurityMode};
use strata_recipe::stage::resolve_stage_ref;
use strata_recipe::{Command, Heredoc, Scope, Step};
use strata_sandbox::{Access, BindSource, Mount, RootFs, RunRequest, Stream};
use strata_types::Digest;

use crate::cache;
use crate::context_hash::{FileCount, SourceWalk};
use crate::error::{BuildError, Result};
use crate::executor::{Builder, Phases, StepResult};
use crate::image::{ImageState, LayerRef, DEFAULT_PATH};
use crate::options::{Network, RunRootfs, SecretSource};
use crate::progress::{BuildEvent, OutputStream};
use crate::rootfs::set_mode;
use strata_layer::overlay::{self, MergedView};
use strata_store::WorkDir;

/// Is `cmd` exactly one heredoc opener (`<<EOF`, `<<-"EOF"`) naming `h`?
fn is_lone_heredoc(cmd: &str, h: &Heredoc) -> bool {
    let rest = cmd.trim().strip_prefix("<<").map(|r| r.strip_prefix('-').unwrap_or(r));
    match rest {
        Some(r) => r.trim_matches(|c| c == '"' || c == '\'') == h.name,
        None => false,
    }
}

impl Builder<'_> {
    pub(crate) fn run(
        &self,
        stage: usize,
        step_index: usize,
        state: &mut ImageState,
        run: &RunSpec,
        scope: &Scope,
        step: &Step,
    ) -> Result<StepResult> {
        let insecure = run.security == Some(SecurityMode::Insecure);
        if insecure && !self.io.opts.allow_insecure {
            return Err(BuildError::InsecureRun);
        }
        // Made before the cache check only when the command needs it (a script heredoc):
        // a RUN that hits the cache makes no directory.
        let mut early_scratch = None;
        let mut mounts = Vec::new();
        let argv = match &run.command {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => match run.heredocs.first() {
                Some(h) if run.heredocs.len() == 1 && is_lone_heredoc(s, h) => {
                    if h.content.starts_with("#!") {
                        let dir = early_scratch.insert(self.staging()?).path().join("pipes");
                        fs::create_dir(&dir).map_err(|e| BuildError::io("mkdir", &dir, e))?;
                        let file = dir.join(&h.name);
                        fs::write(&file, &h.content)
                            .map_err(|e| BuildError::io("write", &file, e))?;
                        set_mode(&file, 0o755)?;
                        mounts.push(Mount::Bind {
                            source: BindSource::Host(dir),
                            target: "/dev/pipes".to_string(),
                            access: Access::ReadOnly,
                        });
                        vec![format!("/dev/pipes/{}", h.name)]
                    } else {
                        state.with_shell(&h.content)
                    }
                }
                Some(_) => {
                    let mut full = s.clone();
                    for h in &run.heredocs {
                        full.push('\n');
                        full.push_str(&h.content);
                        full.push_str(&h.name);
                    }
                    state.with_shell(&full)
                }
                None => state.with_shell(s),
            },
        };
        // Environment: config Env, then ARGs not shadowed by it (BuildKit's rule).
        let mut env = state.run.env.clone();
        let mut shown_args = Vec::new();
        for (k, v) in scope.args() {
            let value = state.get_env(k).map(str::to_string).unwrap_or_else(|| v.clone());
            shown_args.push(format!("{k}={value}"));
            if state.get_env(k).is_none() {
                env.push(format!("{k}={v}"));
            }
        }
        if state.get_env("PATH").is_none() {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        let cwd = if state.run.working_dir.is_empty() {
            "/".to_string()
        } else {
            state.run.working_dir.clone()
        };
        let network = match run.network {
            Some(NetworkMode::None) => strata_sandbox::Network::None,
            Some(NetworkMode::Host) => strata_sandbox::Network::Host,
            Some(NetworkMode::Default) | None => match self.io.opts.network {
                Network::None => strata_sandbox::Network::None,
                _ => strata_sandbox::Network::Host,
            },
        };
        let mut created_by = String::from("RUN ");
        if !shown_args.is_empty() {
            created_by.push_str(&format!("|{} {} ", shown_args.len(), shown_args.join(" ")));
        }
        created_by.push_str(&argv.join(" "));
        created_by.push_str(" # buildkit");

        let platform = state.platform.clone();
        let at = StepAt { stage, step, owner: (0, 0), platform: platform.as_ref() };
        let process = Process { argv: &argv, env: &env, cwd: &cwd, network };
        let key = self.run_cache_key(&at, state, run, &process)?;
        let none = FileCount::default();
        let step_at = (stage, step_index);
        if let Some(hit) =
            self.cached(step_at, state, cache::Kind::Run, &key, &created_by, &none)?
        {
            return Ok(hit);
        }
        let scratch = match early_scratch {
            Some(s) => s,
            None => self.staging()?,
        };
        // A foreign platform's command runs through an emulator, which must be there first.
        if let Some(p) = &state.platform {
            self.io.runner.prepare_platform(p)?;
        }
        let mut phases = Phases::default();
        let view = phases.time("parent view", || self.view(state))?;
        // USER through the image's own passwd and group, read through the layers.
        let read =
            |f: &str| view.read(Path::new(f)).map(|b| String::from_utf8_lossy(&b).into_owned());
        let ids = strata_sandbox::resolve_user_in(
            &read("etc/passwd").unwrap_or_default(),
            &read("etc/group").unwrap_or_default(),
            &state.run.user,
        )?;
        let at = StepAt { owner: (ids.0, ids.1), ..at };
        let mut extra = RunMounts {
            mounts,
            env,
            keep_alive: Vec::new(),
            cache_mounts: Vec::new(),
            ssh_proxies: Vec::new(),
        };
        phases.time("mounts", || {
            run.mounts
                .iter()
                .try_for_each(|m| self.add_mount(&at, m, &cwd, scratch.path(), &view, &mut extra))
        })?;
        let RunMounts { mounts, env, keep_alive, cache_mounts, ssh_proxies } = extra;
        let overlay = self.io.opts.run_rootfs == RunRootfs::Overlay
            && self.io.runner.overlay_supported(scratch.path());
        let (rootfs, upper_or_root) = if overlay {
            let upper = scratch.path().join("upper");
            let work = scratch.path().join("work");
            for d in [&upper, &work] {
                fs::create_dir(d).map_err(|e| BuildError::io("mkdir", d, e))?;
            }
            (RootFs::Overlay { lowers: view.lowers(), upper: upper.clone(), work }, upper)
        } else {
            let root = scratch.path().join("rootfs");
            fs::create_dir(&root).map_err(|e| BuildError::io("mkdir", &root, e))?;
            set_mode(&root, 0o755)?;
            for l in &state.layers {
                apply_blob(self.io.store, &l.digest()?, &root, &ApplyOptions::default())?;
            }
            (RootFs::Dir(root.clone()), root)
        };
        let before = if overlay { None } else { Some(scan(&upper_or_root)?) };
        let req = RunRequest {
            rootfs,
            argv: argv.clone(),
            env,
            cwd,
            user: ids.into(),
            network,
            mounts,
            hostname: "buildkitsandbox".to_string(),
            extra_hosts: self
                .io
                .opts
                .extra_hosts
                .iter()
                .map(|h| (h.name.clone(), h.address.to_string()))
                .collect(),
            resources: self.io.opts.run_resources.clone(),
            insecure,
        };
        let progress = self.io.progress;
        let mut on_line = |stream: Stream, line: &str| {
            let stream = match stream {
                Stream::Stdout => OutputStream::Stdout,
                Stream::Stderr => OutputStream::Stderr,
            };
            progress.event(&BuildEvent::StepOutput {
                stage,
                step: step_index,
                stream,
                line: line.to_string(),
            });
        };
        let ran =
            phases.time("run", || self.io.runner.run(&req, &self.io.opts.cancel, &mut on_line));
        let outcome = match ran {
            Err(strata_sandbox::SandboxError::Cancelled) => return Err(BuildError::Cancelled),
            other => other?,
        };
        drop(keep_alive);
        drop(cache_mounts);
        drop(ssh_proxies);
        if let (true, Some(limit)) = (outcome.oom_killed, self.io.opts.run_resources.cgroup.memory)
        {
            return Err(BuildError::RunOutOfMemory {
                command: argv.join(" "),
                exit_code: outcome.exit_code,
                limit,
                tail: outcome.tail,
            });
        }
        if outcome.exit_code != 0 {
            return Err(BuildError::RunFailed {
                command: argv.join(" "),
                exit_code: outcome.exit_code,
                tail: outcome.tail,
            });
        }
        let changeset = phases.time("changes", || -> Result<_> {
            Ok(match before {
                None => {
                    overlay::drop_copy_ups(&upper_or_root, &view, &outcome.stubs);
                    explicit_whiteouts(overlay::changeset_from_upper(&upper_or_root)?, &view)?
                }
                Some(before) => {
                    restore_stub_parents(&before, &upper_or_root, &outcome.stubs)?;
                    diff(&before, &scan(&upper_or_root)?)?
                }
            })
        })?;
        let (layer, size): (LayerRef, u64) = if overlay {
            self.commit_upper(&changeset, &upper_or_root, &mut phases)?
        } else {
            self.commit(&changeset, &upper_or_root, &mut phases)?
        };
        self.record(step_at, state, cache::Kind::Run, &key, &layer);
        Ok(StepResult::written(created_by, layer, size, phases))
    }

    /// The cache key of a RUN (see [`crate::cache`]); `None` when the step cannot be cached.
    fn run_cache_key(
        &self,
        at: &StepAt<'_>,
        state: &ImageState,
        run: &RunSpec,
        process: &Process<'_>,
    ) -> Result<cache::StepKey> {
        let StepAt { stage, step, .. } = *at;
        let Process { argv, env, cwd, network } = *process;
        let mut bind_inputs = Vec::new();
        for m in &run.mounts {
            if m.kind != MountType::Bind {
                continue;
            }
            let Some(from) = &m.from else {
                bind_inputs
                    .push(serde_json::Value::String(self.context_bind_digest(m)?.to_string()));
                continue;
            };
            let chain = match resolve_stage_ref(&self.stages.plan.stages, from, stage, step.span)
                .map_err(|source| BuildError::Parse {
                    path: self.io.opts.recipe_path.clone(),
                    source: Box::new(source),
                })? {
                Some(j) => self.result(j).map(|s| s.layers).unwrap_or_default(),
                None => self.image_state(from, state.platform.as_ref())?.layers,
            };
            bind_inputs
                .push(chain.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>().into());
        }
        let mut doc = self.key_base("run", state);
        let fields = serde_json::json!({
            "argv": argv,
            "heredocs": run.heredocs,
            "env": env,
            "user": state.run.user,
            "cwd": cwd,
            "network": matches!(network, strata_sandbox::Network::None),
            "mounts": run.mounts,
            "bind_inputs": bind_inputs,
        });
        let hosts = &self.io.opts.extra_hosts;
        if !hosts.is_empty() {
            doc.insert("extra_hosts".into(), serde_json::json!(hosts));
        }
        // Limits can change what a step does or whether it fails; keys without them stay
        // as before.
        let res = &self.io.opts.run_resources;
        if !res.ulimits.is_empty() {
            let ulimits: Vec<String> = res.ulimits.iter().map(|u| u.to_string()).collect();
            doc.insert("ulimits".into(), serde_json::json!(ulimits));
        }
        if let Some(size) = res.shm_size {
            doc.insert("shm_size".into(), serde_json::json!(size));
        }
        if !res.cgroup.is_empty() {
            doc.insert("cgroup".into(), serde_json::json!(res.cgroup.to_string()));
        }
        if run.security == Some(SecurityMode::Insecure) {
            doc.insert("insecure".into(), serde_json::json!(true));
        }
        if let serde_json::Value::Object(f) = fields {
            doc.extend(f);
        }
        Ok(cache::StepKey::of(doc))
    }

    /// The digest of what a bind mount of the context shows the command: every entry below
    /// the source (the mount is not filtered by `.dockerignore`), with owners, never mtimes.
    fn context_bind_digest(&self, m: &strata_recipe::Mount) -> Result<Digest> {
        let (_, real, rel) = bind_source(&self.io.opts.context, m, "the build context")?;
        let walk = SourceWalk {
            ignore: None,
            exclude: None,
            owners: true,
            mtime_clamp: None,
            root_meta: true,
            cancel: Some(&self.io.opts.cancel),
        };
        walk.digest(&self.cache.hashes, &real, &rel, &mut FileCount::default())
    }

    /// The root filesystem a mount's `from=` names (a stage of the recipe or an image),
    /// unpacked into a staging directory kept alive for the step; and how to name it.
    fn mount_from(
        &self,
        from: &str,
        at: &StepAt<'_>,
        keep_alive: &mut Vec<WorkDir>,
    ) -> Result<(PathBuf, String)> {
        let (chain, location) =
            match resolve_stage_ref(&self.stages.plan.stages, from, at.stage, at.step.span)
                .map_err(|source| BuildError::Parse {
                    path: self.io.opts.recipe_path.clone(),
                    source: Box::new(source),
                })? {
                Some(j) => {
                    (self.result(j).map(|s| s.layers).unwrap_or_default(), format!("stage {from}"))
                }
                None => (self.image_state(from, at.platform)?.layers, format!("image {from}")),
            };
        self.realize(&chain)?;
        let dir = self.staging()?;
        for l in &chain {
            apply_blob(self.io.store, &l.digest()?, dir.path(), &ApplyOptions::default())?;
        }
        let p = dir.path().to_path_buf();
        keep_alive.push(dir);
        Ok((p, location))
    }

    fn add_mount(
        &self,
        at: &StepAt<'_>,
        m: &strata_recipe::Mount,
        cwd: &str,
        scratch: &Path,
        view: &MergedView,
        out: &mut RunMounts,
    ) -> Result<()> {
        let owner = at.owner;
        let RunMounts { mounts, env, keep_alive, cache_mounts, ssh_proxies } = out;
        // A target is resolved in the image the way runc resolves it inside the rootfs
        // (symlinks followed, never out of it), so that missing directories are created
        // where a link leads; the sandbox then mounts on it resolving inside the root again.
        let abs = |t: &str| -> Result<String> {
            let joined = if t.starts_with('/') {
                t.to_string()
            } else {
                format!("{}/{}", cwd.trim_end_matches('/'), t)
            };
            let resolved = view.resolve(Path::new(&joined), true)?;
            Ok(format!("/{}", resolved.display()))
        };
        match m.kind {
            MountType::Cache => {
                let target = m.target.clone().unwrap_or_default();
                let id = m.id.clone().filter(|i| !i.is_empty()).unwrap_or_else(|| target.clone());
                // BuildKit's sharing modes, across concurrent stages and builds alike.
                let sharing = match m.sharing.unwrap_or(CacheSharing::Shared) {
                    CacheSharing::Shared => strata_store::Sharing::Shared,
                    CacheSharing::Locked => strata_store::Sharing::Locked,
                    CacheSharing::Private => strata_store::Sharing::Private,
                };
                let lease = self.io.store.cache_mount(&id, sharing)?;
                let (dir, created) = (lease.path.clone(), lease.created);
                cache_mounts.push(lease);
                self.done.cache_mounts.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
                let mut seeded = false;
                if created {
                    // A directory made afresh starts from what `--cache-from` carries for its
                    // id (and is no longer what an earlier export of it recorded).
                    let store = self.io.store;
                    let _ = store.clear_cache_mount_state(&id);
                    seeded = self.cache.imported.seed_mount(store, &id, &dir, self.io.progress);
                }
                if created {
                    set_mode(&dir, m.mode.unwrap_or(0o755))?;
                    rustix::fs::chown(
                        &dir,
                        Some(rustix::fs::Uid::from_raw(m.uid.unwrap_or(0))),
                        Some(rustix::fs::Gid::from_raw(m.gid.unwrap_or(0))),
                    )
                    .map_err(|e| BuildError::io("chown", &dir, e.into()))?;
                }
                // `from=` (with `source=`) seeds a new cache directory, as BuildKit does.
                if let (true, false, Some(from)) = (created, seeded, &m.from) {
                    let (root, location) = self.mount_from(from, at, keep_alive)?;
                    let (_, _, rel) = bind_source(&root, m, &location)?;
                    copy_view_tree(&MergedView::new(vec![root]), &rel, &dir)?;
                }
                if m.chown_to_user {
                    chown_tree(&dir, owner)?;
                }
                let access = if m.read_only { Access::ReadOnly } else { Access::ReadWrite };
                mounts.push(Mount::Bind {
                    source: BindSource::Host(dir),
                    target: abs(&target)?,
                    access,
                });
            }
            MountType::Tmpfs if m.tmpcopyup => {
                // buildah's `tmpcopyup`: the tmpfs starts with what the image holds at the
                // target. A copy in the step's scratch space, mounted read-write and thrown
                // away with it, is that tmpfs (without its size limit).
                let target = abs(&m.target.clone().unwrap_or_default())?;
                let copy = scratch.join(format!("tmpcopyup-{}", mounts.len()));
                fs::create_dir(&copy).map_err(|e| BuildError::io("mkdir", &copy, e))?;
                let rel = Path::new(target.trim_start_matches('/'));
                if view.metadata(rel).is_some_and(|md| md.is_dir()) {
                    copy_view_tree(view, rel, &copy)?;
                }
                mounts.push(Mount::Bind {
                    source: BindSource::Host(copy),
                    target,
                    access: Access::ReadWrite,
                });
            }
            MountType::Tmpfs => {
                let target = m.target.clone().unwrap_or_default();
                mounts.push(Mount::Tmpfs { target: abs(&target)?, size: m.size });
            }
            MountType::Bind => {
                let target = m.target.clone().unwrap_or_default();
                let (root, location) = match &m.from {
                    None => (self.io.opts.context.clone(), "the build context".to_string()),
                    Some(from) => self.mount_from(from, at, keep_alive)?,
                };
                // Checked here for a clear error; the sandbox resolves it again, inside the
                // same root, and mounts exactly what it resolved.
                let (path, _, _) = bind_source(&root, m, &location)?;
                // Writes to a read-write bind are discarded (an overlay in the sandbox), as
                // BuildKit does: nothing is ever written to the context or a stage.
                let access = if m.read_only { Access::ReadOnly } else { Access::Discard };
                mounts.push(Mount::Bind {
                    source: BindSource::InRoot { root, path },
                    target: abs(&target)?,
                    access,
                });
            }
            MountType::Secret => {
                let id =
                    m.id.clone()
                        .or_else(|| {
                            m.target
                                .as_deref()
                                .and_then(|t| Path::new(t).file_name())
                                .map(|n| n.to_string_lossy().to_string())
                        })
                        .unwrap_or_default();
                let Some(spec) = self.io.opts.secrets.iter().find(|s| s.id == id) else {
                    if m.required {
                        return Err(BuildError::MissingSecret { id });
                    }
                    return Ok(());
                };
                let value = match &spec.source {
                    SecretSource::File(p) => fs::read(p)
                        .map_err(|source| BuildError::ReadSecret { id: id.clone(), source })?,
                    SecretSource::Env(var) => std::env::var_os(var)
                        .map(|v| std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec())
                        .ok_or_else(|| BuildError::ReadSecret {
                            id: id.clone(),
                            source: std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                format!("environment variable {var} is not set"),
                            ),
                        })?,
                };
                if let Some(var) = &m.env {
                    env.push(format!("{var}={}", String::from_utf8_lossy(&value)));
                    if m.target.is_none() {
                        return Ok(());
                    }
                }
                let dir = scratch.join("secrets");
                fs::create_dir_all(&dir).map_err(|e| BuildError::io("mkdir", &dir, e))?;
                set_mode(&dir, 0o700)?;
                let file = dir.join(format!("{}", mounts.len()));
                fs::write(&file, &value).map_err(|e| BuildError::io("write", &file, e))?;
                fs::set_permissions(&file, fs::Permissions::from_mode(m.mode.unwrap_or(0o400)))
                    .map_err(|e| BuildError::io("chmod", &file, e))?;
                rustix::fs::chown(
                    &file,
                    Some(rustix::fs::Uid::from_raw(m.uid.unwrap_or(0))),
                    Some(rustix::fs::Gid::from_raw(m.gid.unwrap_or(0))),
                )
                .map_err(|e| BuildError::io("chown", &file, e.into()))?;
                let target = m.target.clone().unwrap_or_else(|| format!("/run/secrets/{id}"));
                mounts.push(Mount::Bind {
                    source: BindSource::Host(file),
                    target: abs(&target)?,
                    access: Access::ReadOnly,
                });
            }
            MountType::Ssh => {
                let id = m.id.clone().filter(|i| !i.is_empty()).unwrap_or_else(|| "default".into());
                let Some(socket) = self.io.ssh.socket(&id) else {
                    if m.required {
                        return Err(BuildError::MissingSsh { id });
                    }
                    // BuildKit skips an optional ssh mount nobody forwards; say so.
                    self.warn(format!(
                        "line {}: RUN --mount=type=ssh,id={id}: no --ssh {id} given, the step runs without an agent",
                        at.step.span.line
                    ));
                    return Ok(());
                };
                // The step gets a socket of its own, owned and moded as the mount says.
                let proxy = crate::ssh::SshProxy::start(
                    &id,
                    socket,
                    m.uid.unwrap_or(0),
                    m.gid.unwrap_or(0),
                    m.mode.unwrap_or(0o600),
                )?;
                let socket = proxy.socket();
                ssh_proxies.push(proxy);
                let n = mounts
                    .iter()
                    .filter(|x| {
                        matches!(x, Mount::Bind { target, .. } if target.starts_with("/run/buildkit/ssh_agent."))
                    })
                    .count();
                let target =
                    m.target.clone().unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{n}"));
                let target = abs(&target)?;
                if !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                    env.push(format!("SSH_AUTH_SOCK={target}"));
                }
                mounts.push(Mount::Bind {
                    source: BindSource::Host(socket),
                    target,
                    access: Access::ReadOnly,
                });
            }
        }
        Ok(())
    }
}

/// Where a step is: its stage index and the recipe step.
#[derive(Clone, Copy)]
struct StepAt<'s> {
    stage: usize,
    step: &'s Step,
    /// The uid and gid the step runs as (buildah's `U` mount option gives them the mount).
    owner: (u32, u32),
    /// The platform the stage builds for, when one was asked for (`from=` images resolve
    /// to it).
    platform: Option<&'s strata_types::Platform>,
}

/// The process a RUN starts, as its cache key sees it.
#[derive(Clone, Copy)]
struct Process<'s> {
    argv: &'s [String],
    env: &'s [String],
    cwd: &'s str,
    network: strata_sandbox::Network,
}

/// What a RUN's `--mount`s add: the mounts, environment (secrets as `env=`), and the work
/// directories that must outlive the step.
struct RunMounts {
    mounts: Vec<Mount>,
    env: Vec<String>,
    keep_alive: Vec<WorkDir>,
    /// Cache mounts in use by the step (their `sharing=` locks), held until it ends.
    cache_mounts: Vec<strata_store::CacheMount>,
    /// The sockets of its ssh mounts, relaying to the agents until it ends.
    ssh_proxies: Vec<crate::ssh::SshProxy>,
}

/// Rewrites overlay's opaque directories as explicit whiteouts of the lower entries they hide
/// (BuildKit's differ does the same), so a layer does not depend on how overlayfs chose to
/// record a `rm -r` + `mkdir`, and the copy fallback, which can only see deletions, gives the
/// same bytes.
fn explicit_whiteouts(changeset: Changeset, lower: &MergedView) -> Result<Changeset> {
    let changes = changeset.changes();
    if !changes.iter().any(|c| matches!(c, Change::Opaque(_))) {
        return Ok(changeset);
    }
    // Path -> whether the upper has a directory there.
    let in_upper: HashMap<&Path, bool> = changes
        .iter()
        .map(|c| (c.path(), c.entry().is_some_and(|e| e.kind == EntryKind::Dir)))
        .collect();
    let mut out = Vec::with_capacity(changes.len());
    let mut hidden = Vec::new();
    for c in changes {
        match c {
            Change::Opaque(e) => {
                out.push(Change::Modified(e.clone()));
                hide_lower(lower, &e.path, &in_upper, &mut hidden)?;
            }
            other => out.push(other.clone()),
        }
    }
    out.extend(hidden.into_iter().map(Change::Deleted));
    Ok(Changeset::from_changes(out))
}

/// Deletions for every lower entry below `dir` that the upper does not have; directories the
/// upper recreated hide their lower contents too.
fn hide_lower(
    lower: &MergedView,
    dir: &Path,
    in_upper: &HashMap<&Path, bool>,
    out: &mut Vec<PathBuf>,
) -> Result<()> {
    if !lower.metadata(dir).is_some_and(|m| m.is_dir()) {
        return Ok(());
    }
    for (name, real) in lower.list(dir)? {
        let child = dir.join(&name);
        match in_upper.get(child.as_path()) {
            None => out.push(child),
            Some(true) if fs::symlink_metadata(&real).is_ok_and(|m| m.is_dir()) => {
                hide_lower(lower, &child, in_upper, out)?
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The sandbox removes the mountpoint stubs it created, but their parent directories keep
/// a new mtime; put the old one back so the copy fallback does not see a change that the
/// command did not make (overlay drops such copied-up parents itself).
fn restore_stub_parents(before: &Scan, root: &Path, stubs: &[String]) -> Result<()> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let root_fd =
        rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| BuildError::io("open", root, e.into()))?;
    for stub in stubs {
        let rel = Path::new(stub.trim_start_matches('/'));
        let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) else { continue };
        let Some(entry) = before.get(parent) else { continue };
        // The step may have replaced any directory on the way with a symlink: follow none.
        let Ok(dir) = rustix::fs::openat2(
            &root_fd,
            parent,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
        ) else {
            continue;
        };
        let t = rustix::fs::Timespec { tv_sec: entry.mtime.secs, tv_nsec: entry.mtime.nanos as _ };
        rustix::fs::utimensat(
            &dir,
            "",
            &rustix::fs::Timestamps { last_access: t, last_modification: t },
            rustix::fs::AtFlags::EMPTY_PATH,
        )
        .map_err(|e| BuildError::io("utimensat", root.join(parent), e.into()))?;
    }
    Ok(())
}

/// A bind mount's `source` checked inside `root` the way the sandbox resolves it (a symlink
/// to `/` is `root`, `/etc` is `root/etc`): the path as written, where it is on the host,
/// and where it is relative to `root`. A source that is not there is an error naming it, and
/// the symlink that pointed out of the root when there is one.
fn bind_source(
    root: &Path,
    m: &strata_recipe::Mount,
    location: &str,
) -> Result<(String, PathBuf, PathBuf)> {
    let written = m.source.clone().unwrap_or_else(|| ".".to_string());
    let view = MergedView::new(vec![root.to_path_buf()]);
    let resolved = view.resolve_traced(Path::new(&written), true)?;
    match view.find(&resolved.path) {
        Some(real) => Ok((written, real, resolved.path)),
        None => Err(match resolved.escaped {
            Some((link, target)) => BuildError::MountSourceLeavesRoot {
                path: written,
                link: link.display().to_string(),
                target: target.display().to_string(),
                location: location.to_string(),
            },
            None => BuildError::SourceNotFound { path: written, location: location.to_string() },
        }),
    }
}

/// Copies the directory `rel` of `view` (an image's layers, or one directory strata
/// unpacked) into `dst`, an existing directory: files, directories and symlinks with their
/// modes and owners, the upper layer's entry where layers overlap; links are copied as links,
/// never followed.
fn copy_view_tree(view: &MergedView, rel: &Path, dst: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for (name, real) in view.list(rel)? {
        let to = dst.join(&name);
        let md = fs::symlink_metadata(&real).map_err(|e| BuildError::io("lstat", &real, e))?;
        let ft = md.file_type();
        if ft.is_dir() {
            fs::create_dir(&to).map_err(|e| BuildError::io("mkdir", &to, e))?;
            copy_view_tree(view, &rel.join(&name), &to)?;
        } else if ft.is_file() {
            fs::copy(&real, &to).map_err(|e| BuildError::io("copy", &to, e))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&real).map_err(|e| BuildError::io("readlink", &real, e))?;
            std::os::unix::fs::symlink(&target, &to)
                .map_err(|e| BuildError::io("symlink", &to, e))?;
        } else {
            continue;
        }
        rustix::fs::chownat(
            rustix::fs::CWD,
            &to,
            Some(rustix::fs::Uid::from_raw(md.uid())),
            Some(rustix::fs::Gid::from_raw(md.gid())),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| BuildError::io("chown", &to, e.into()))?;
        if !ft.is_symlink() {
            fs::set_permissions(&to, fs::Permissions::from_mode(md.mode() & 0o7777))
                .map_err(|e| BuildError::io("chmod", &to, e))?;
        }
    }
    Ok(())
}

/// buildah's `U` mount option: everything in `dir` (a cache-mount directory the store keeps,
/// never a path the recipe names) comes to belong to the step's user. Symlinks are changed
/// themselves, never followed.
fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            BuildError::io("walk", &path, e.into())
        })?;
        rustix::fs::chownat(
            rustix::fs::CWD,
            entry.path(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| BuildError::io("chown", entry.path(), e.into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_heredoc_detection() {
        let h =
            Heredoc { name: "EOF".into(), content: "echo\n".into(), expand: true, chomp: false };
        assert!(is_lone_heredoc("<<EOF", &h));
        assert!(is_lone_heredoc("<<-'EOF'", &h));
        assert!(!is_lone_heredoc("python3 <<EOF", &h));
    }
}
