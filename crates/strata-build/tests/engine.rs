//! The build engine without root: stage planning, the step cache and ONBUILD, driven through
//! a fake [`StepRunner`] that records each RUN and writes what a script says into the step's
//! root filesystem, and a fake [`ImageSource`] that serves images made in the test store.
//! These run as any user; the real sandbox is tested as root elsewhere.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Mutex;

use strata_build::sandbox::{RootFs, RunOutcome, RunRequest, SandboxError, Stream, User};
use strata_build::{
    build_with, BuildArgs, BuildError, BuildEvent, BuildOptions, CancelToken, ImageSource,
    ProgressSink, StepRunner,
};
use strata_image::{import_tree, ImportOptions};
use strata_store::oci_spec::image::{Descriptor, MediaType};
use strata_store::{Image, Store};
use strata_types::Digest;

/// A RUN as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ran {
    argv: Vec<String>,
    script: String,
    cwd: String,
    uid: u32,
    env: Vec<String>,
}

/// Runs nothing: records the request, writes `effects[script]` (path, content) into the
/// rootfs, and exits with `exits[script]` (0 by default).
#[derive(Default)]
struct FakeRunner {
    effects: BTreeMap<String, Vec<(String, String)>>,
    exits: BTreeMap<String, i32>,
    /// A script during which the build is cancelled (as by Ctrl-C while it runs).
    cancel_during: Option<String>,
    ran: Mutex<Vec<Ran>>,
    /// The platforms `prepare_platform` was asked for.
    prepared: Mutex<Vec<String>>,
    /// Platforms it cannot run (as a machine without qemu).
    no_emulation: Vec<String>,
    /// Each RUN waits up to this long for a second RUN to be running beside it.
    linger: Option<std::time::Duration>,
    /// RUNs running now, and the most that ever ran at once.
    running: Mutex<(usize, usize)>,
}

impl FakeRunner {
    fn effect(mut self, script: &str, files: &[(&str, &str)]) -> FakeRunner {
        let files = files.iter().map(|(p, c)| (p.to_string(), c.to_string())).collect();
        self.effects.insert(script.to_string(), files);
        self
    }
    fn scripts(&self) -> Vec<String> {
        self.ran.lock().unwrap().iter().map(|r| r.script.clone()).collect()
    }
    fn clear(&self) {
        self.ran.lock().unwrap().clear();
    }
}

impl StepRunner for FakeRunner {
    fn overlay_supported(&self, _scratch: &Path) -> bool {
        false
    }

    fn prepare_platform(&self, platform: &strata_types::Platform) -> Result<(), SandboxError> {
        self.prepared.lock().unwrap().push(platform.to_string());
        if self.no_emulation.contains(&platform.to_string()) {
            return Err(SandboxError::NoEmulation {
                platform: platform.to_string(),
                reason: "no binfmt_misc handler".into(),
                fix: "apt-get install qemu-user-static".into(),
            });
        }
        Ok(())
    }

    fn run(
        &self,
        req: &RunRequest,
        cancel: &CancelToken,
        on_line: &mut dyn FnMut(Stream, &str),
    ) -> Result<RunOutcome, SandboxError> {
        let script = req.argv.last().cloned().unwrap_or_default();
        if self.cancel_during.as_deref() == Some(script.as_str()) {
            cancel.cancel();
            return Err(SandboxError::Cancelled);
        }
        let RootFs::Dir(root) = &req.rootfs else { panic!("the fake asks for a plain rootfs") };
        let User::Ids { uid, .. } = req.user else { panic!("the engine resolves users") };
        for (path, content) in self.effects.get(&script).into_iter().flatten() {
            let p = root.join(path.trim_start_matches('/'));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        if let Some(linger) = self.linger {
            let started = std::time::Instant::now();
            let mut running = self.running.lock().unwrap();
            running.0 += 1;
            running.1 = running.1.max(running.0);
            drop(running);
            while started.elapsed() < linger && self.running.lock().unwrap().1 < 2 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            self.running.lock().unwrap().0 -= 1;
        }
        on_line(Stream::Stdout, &format!("ran {script}"));
        self.ran.lock().unwrap().push(Ran {
            argv: req.argv.clone(),
            script: script.clone(),
            cwd: req.cwd.clone(),
            uid,
            env: req.env.clone(),
        });
        let exit_code = self.exits.get(&script).copied().unwrap_or(0);
        Ok(RunOutcome {
            exit_code,
            tail: vec![format!("ran {script}")],
            stubs: vec![],
            oom_killed: false,
        })
    }
}

/// Serves the images it holds by name, and records what it was asked for.
#[derive(Default)]
struct FakeImages {
    images: BTreeMap<String, Descriptor>,
    asked: Mutex<Vec<String>>,
    /// The platform each request named (`-` for none).
    platforms: Mutex<Vec<String>>,
}

impl ImageSource for FakeImages {
    fn image(
        &self,
        store: &Store,
        reference: &str,
        platform: Option<&strata_types::Platform>,
        _progress: &dyn ProgressSink,
    ) -> strata_build::Result<Image> {
        self.asked.lock().unwrap().push(reference.to_string());
        let shown = platform.map_or("-".to_string(), ToString::to_string);
        self.platforms.lock().unwrap().push(shown);
        let d = self.images.get(reference).ok_or_else(|| BuildError::ImageNotInStore {
            reference: reference.to_string(),
            why: "the fake does not have it",
        })?;
        Ok(store.image(d)?)
    }
}

struct Env {
    dir: tempfile::TempDir,
    store: Store,
    images: FakeImages,
}

/// A store with `base`: a tree with /etc/passwd (root and app 1000) and /etc/motd.
fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("store")).unwrap();
    let tree = dir.path().join("base");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n")
        .unwrap();
    fs::write(tree.join("etc/motd"), "base\n").unwrap();
    let imported = import_tree(&store, &tree, &ImportOptions::default()).unwrap();
    let mut images = FakeImages::default();
    images.images.insert("base".into(), imported.manifest);
    Env { dir, store, images }
}

impl Env {
    fn build(
        &self,
        recipe: &str,
        runner: &FakeRunner,
        tune: impl FnOnce(&mut BuildOptions),
    ) -> strata_build::Result<strata_build::BuildOutput> {
        let ctx = self.dir.path().join("ctx");
        fs::create_dir_all(&ctx).unwrap();
        fs::write(ctx.join("Dockerfile"), recipe).unwrap();
        let mut opts = BuildOptions::new(&ctx);
        tune(&mut opts);
        build_with(&self.store, &opts, &strata_build::NoProgress, runner, &self.images)
    }

    /// An image in the store whose config carries Docker's `OnBuild` triggers.
    fn onbuild_base(&mut self, name: &str, triggers: &[&str]) {
        let base = self.store.image(&self.images.images["base"]).unwrap();
        let mut config = serde_json::to_value(&base.config).unwrap();
        config["config"]["OnBuild"] = serde_json::json!(triggers);
        let put = self.store.put_json(&config).unwrap();
        let manifest = self
            .store
            .put_image_with_config(&put.digest, put.size, base.manifest.layers())
            .unwrap();
        self.images.images.insert(name.into(), manifest);
    }
}

fn file_in(store: &Store, image: &Image, path: &str) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    for layer in image.layer_digests().unwrap() {
        strata_layer::apply_blob(
            store,
            &layer,
            dir.path(),
            &strata_layer::ApplyOptions::unprivileged(),
        )
        .unwrap();
    }
    fs::read_to_string(dir.path().join(path)).ok()
}

#[test]
fn only_the_stages_the_target_needs_run_in_dependency_order() {
    let e = env();
    let runner = FakeRunner::default()
        .effect("make a", &[("/a", "A")])
        .effect("make b", &[("/b", "B")])
        .effect("make c", &[("/c", "C")]);
    let recipe = "FROM base AS a\nRUN make a\n\
                  FROM base AS c\nRUN make c\n\
                  FROM a AS b\nRUN make b\n\
                  FROM base\nCOPY --from=b /b /b\n";
    let out = e.build(recipe, &runner, |o| o.target = Some("b".into())).unwrap();
    assert_eq!(runner.scripts(), ["make a", "make b"], "stage c is not needed for b");
    assert_eq!(file_in(&e.store, &out.image, "a").as_deref(), Some("A"));
    assert_eq!(file_in(&e.store, &out.image, "b").as_deref(), Some("B"));
    assert_eq!(file_in(&e.store, &out.image, "c"), None);
    assert_eq!(e.images.asked.lock().unwrap().as_slice(), ["base"]);
}

#[test]
fn unchanged_steps_come_from_the_cache_and_a_changed_arg_misses() {
    let e = env();
    let runner = FakeRunner::default()
        .effect("echo one", &[("/one", "1")])
        .effect("echo two", &[("/two", "2")]);
    let recipe = "FROM base\nRUN echo one\nARG V=1\nRUN echo two\n";
    let first = e.build(recipe, &runner, |_| {}).unwrap();
    assert_eq!(runner.scripts(), ["echo one", "echo two"]);
    assert_eq!((first.layers_written, first.layers_reused), (2, 0));

    runner.clear();
    let again = e.build(recipe, &runner, |_| {}).unwrap();
    assert!(runner.scripts().is_empty(), "{:?}", runner.scripts());
    assert_eq!((again.layers_written, again.layers_reused), (0, 2));
    assert_eq!(again.manifest.digest(), first.manifest.digest());

    // The ARG is in scope of the second RUN only: the first still hits.
    runner.clear();
    let other = e
        .build(recipe, &runner, |o| {
            o.build_args = BuildArgs::from_iter([("V", "2")]);
        })
        .unwrap();
    assert_eq!(runner.scripts(), ["echo two"]);
    assert_eq!((other.layers_written, other.layers_reused), (1, 1));
    let ran = runner.ran.lock().unwrap().clone();
    assert!(ran[0].env.contains(&"V=2".to_string()), "{:?}", ran[0].env);

    // --no-cache runs everything again, giving the same image.
    runner.clear();
    let forced = e.build(recipe, &runner, |o| o.no_cache = true).unwrap();
    assert_eq!(runner.scripts(), ["echo one", "echo two"]);
    assert_eq!(forced.manifest.digest(), first.manifest.digest());
}

#[test]
fn user_and_workdir_reach_the_runner_resolved() {
    let e = env();
    let runner = FakeRunner::default();
    // WORKDIR of an existing directory: creating one as app would need root to chown.
    e.build("FROM base\nUSER app\nWORKDIR /etc\nRUN whoami\n", &runner, |_| {}).unwrap();
    let ran = runner.ran.lock().unwrap().clone();
    assert_eq!((ran[0].uid, ran[0].cwd.as_str()), (1000, "/etc"));
}

#[test]
fn onbuild_triggers_run_once_in_the_child_only() {
    let mut e = env();
    e.onbuild_base("parent", &["RUN echo from-parent"]);
    let runner = FakeRunner::default()
        .effect("echo from-parent", &[("/triggered", "yes")])
        .effect("echo child", &[("/child", "c")]);
    let child = e.build("FROM parent\nRUN echo child\n", &runner, |_| {}).unwrap();
    assert_eq!(runner.scripts(), ["echo from-parent", "echo child"]);
    assert_eq!(file_in(&e.store, &child.image, "triggered").as_deref(), Some("yes"));
    // A grandchild does not inherit the trigger.
    let d: Digest = child.manifest.digest().to_string().parse().unwrap();
    e.images.images.insert(
        "child".into(),
        Descriptor::new(MediaType::ImageManifest, child.manifest.size(), d),
    );
    runner.clear();
    e.build("FROM child\nRUN echo child\n", &runner, |o| o.no_cache = true).unwrap();
    assert_eq!(runner.scripts(), ["echo child"]);
}

/// The raw config blob of a built image (Docker's fields are not in the OCI types).
fn raw_config(e: &Env, out: &strata_build::BuildOutput) -> serde_json::Value {
    let d: Digest = out.image.manifest.config().digest().to_string().parse().unwrap();
    serde_json::from_slice(&e.store.read_blob(&d).unwrap()).unwrap()
}

#[test]
fn healthcheck_shell_and_onbuild_are_stored_where_docker_keeps_them() {
    let e = env();
    let recipe = r#"FROM base AS parent
ONBUILD RUN echo trig
HEALTHCHECK --interval=30s --retries=3 CMD curl -f localhost
SHELL ["/bin/bash", "-c"]
RUN echo parent
FROM parent
RUN echo child
"#;
    let runner = FakeRunner::default();
    let parent = e.build(recipe, &runner, |o| o.target = Some("parent".into())).unwrap();
    let c = raw_config(&e, &parent);
    assert_eq!(c["config"]["OnBuild"], serde_json::json!(["RUN echo trig"]));
    assert_eq!(c["config"]["Shell"], serde_json::json!(["/bin/bash", "-c"]));
    assert_eq!(
        c["config"]["Healthcheck"],
        serde_json::json!({"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 30_000_000_000u64, "Retries": 3})
    );
    let history: Vec<&str> =
        c["history"].as_array().unwrap().iter().filter_map(|h| h["created_by"].as_str()).collect();
    assert!(history.contains(&"ONBUILD RUN echo trig"), "{history:?}");
    assert!(history.contains(&"SHELL [\"/bin/bash\" \"-c\"]"), "{history:?}");
    assert!(
        history.contains(
            &"HEALTHCHECK &{[\"CMD-SHELL\" \"curl -f localhost\"] \"30s\" \"0s\" \"0s\" \"0s\" '\\x03'}"
        ),
        "{history:?}"
    );
    assert_eq!(runner.ran.lock().unwrap()[0].argv, ["/bin/bash", "-c", "echo parent"]);

    // A stage FROM that stage runs the trigger first, once, and does not pass it on; the
    // healthcheck and shell are inherited.
    runner.clear();
    let child = e.build(recipe, &runner, |o| o.no_cache = true).unwrap();
    assert_eq!(runner.scripts(), ["echo parent", "echo trig", "echo child"]);
    let c = raw_config(&e, &child);
    assert!(c["config"].get("OnBuild").is_none(), "{c}");
    assert_eq!(c["config"]["Shell"], serde_json::json!(["/bin/bash", "-c"]));
    assert_eq!(c["config"]["Healthcheck"]["Retries"], 3);

    // HEALTHCHECK NONE disables an inherited check.
    let none = e.build("FROM base\nHEALTHCHECK NONE\n", &runner, |_| {}).unwrap();
    assert_eq!(
        raw_config(&e, &none)["config"]["Healthcheck"],
        serde_json::json!({"Test": ["NONE"]})
    );
}

#[test]
fn a_failing_run_tags_nothing_and_names_the_step() {
    let e = env();
    let mut runner = FakeRunner::default();
    runner.exits.insert("exit 3".into(), 3);
    let err = e
        .build("FROM base\nRUN exit 3\n", &runner, |o| o.tags = vec!["broken:1".into()])
        .unwrap_err();
    assert!(matches!(err.root_cause(), BuildError::RunFailed { exit_code: 3, .. }), "{err}");
    assert!(e.store.load_image("broken:1").is_err());
}

#[test]
fn a_base_the_source_lacks_is_an_error_naming_it() {
    let e = env();
    let err = e.build("FROM nowhere:1\nRUN true\n", &FakeRunner::default(), |_| {}).unwrap_err();
    let text = format!("{err}");
    assert!(text.contains("nowhere:1"), "{text}");
}

#[test]
fn a_cancelled_build_stops_at_the_running_step_and_tags_nothing() {
    let e = env();
    let runner = FakeRunner { cancel_during: Some("long".into()), ..Default::default() };
    let recipe = "FROM base\nRUN first\nRUN long\nRUN never\n";
    let cancel = CancelToken::new();
    let err = e
        .build(recipe, &runner, |o| {
            o.tags = vec!["app:v1".into()];
            o.cancel = cancel.clone();
        })
        .unwrap_err();
    assert!(matches!(err, BuildError::Cancelled), "not wrapped as a step failure: {err:?}");
    assert_eq!(runner.scripts(), ["first"], "no step starts after the cancel");
    assert!(e.store.load_image("app:v1").is_err(), "a cancelled build tags nothing");

    // Cancelled before it starts: no step runs at all.
    let runner = FakeRunner::default();
    let err = e.build(recipe, &runner, |o| o.cancel.cancel()).unwrap_err();
    assert!(matches!(err, BuildError::Cancelled));
    assert!(runner.scripts().is_empty());
}

#[test]
fn events_count_steps_and_copied_files() {
    let e = env();
    let ctx = e.dir.path().join("ctx");
    fs::create_dir_all(ctx.join("src")).unwrap();
    fs::write(ctx.join("src/a"), "12345").unwrap();
    fs::write(ctx.join("src/b"), "678").unwrap();
    let events = Mutex::new(Vec::new());
    let sink = |ev: &BuildEvent| events.lock().unwrap().push(ev.clone());
    fs::write(ctx.join("Dockerfile"), "FROM base AS one\nENV A=1\nFROM base\nCOPY src /dst/\n")
        .unwrap();
    let opts = BuildOptions::new(&ctx);
    build_with(&e.store, &opts, &sink, &FakeRunner::default(), &e.images).unwrap();
    let events = events.into_inner().unwrap();
    let start = events.iter().find(|e| matches!(e, BuildEvent::BuildStart { .. })).unwrap();
    assert_eq!(*start, BuildEvent::BuildStart { stages: 1, steps: 1 }, "only the target stage");
    assert!(events.contains(&BuildEvent::ContextScanned { stage: 1, step: 0, files: 2, bytes: 8 }));
    assert!(events.contains(&BuildEvent::CopyStaged { stage: 1, step: 0, files: 2, bytes: 8 }));
    let json = serde_json::to_value(strata_build::EventRecord::new(start)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"version": 1, "event": "build_start", "stages": 1, "steps": 1})
    );
}

#[test]
fn each_platform_asks_for_its_base_and_emulation_and_gets_its_own_image() {
    let e = env();
    let runner = FakeRunner::default().effect("true", &[("/ran", "yes")]);
    let out = e
        .build("FROM base\nARG TARGETARCH\nRUN true\nLABEL arch=$TARGETARCH\n", &runner, |o| {
            o.tags = vec!["multi:1".into()];
            o.platforms = vec!["linux/arm64".parse().unwrap(), "linux/amd64".parse().unwrap()];
        })
        .unwrap();
    let mut asked = e.images.platforms.lock().unwrap().clone();
    asked.sort();
    assert_eq!(asked, ["linux/amd64", "linux/arm64"]);
    let mut prepared = runner.prepared.lock().unwrap().clone();
    prepared.sort();
    assert_eq!(prepared, ["linux/amd64", "linux/arm64"]);
    // An index in --platform order, each image's config for its platform, TARGETARCH its own.
    let listed: Vec<String> = out.platforms.iter().map(|p| p.platform.to_string()).collect();
    assert_eq!(listed, ["linux/arm64", "linux/amd64"]);
    assert_eq!(e.store.resolve("multi:1").unwrap().digest(), out.manifest.digest());
    for p in &out.platforms {
        let image = e.store.image(&p.manifest).unwrap();
        assert_eq!(image.config.architecture().to_string(), p.platform.architecture);
        let labels = image.config.config().as_ref().unwrap().labels().clone().unwrap();
        assert_eq!(labels["arch"], p.platform.architecture);
    }
    // The same RUN for two platforms has two cache keys: nothing was shared.
    assert_eq!(runner.scripts(), ["true", "true"]);
}

/// The most RUNs that ran at once in a two-platform build whose RUNs each wait up to
/// `linger` for a peer, with `--jobs` at `jobs`.
fn most_at_once(jobs: usize, linger_ms: u64) -> usize {
    let e = env();
    let runner = FakeRunner {
        linger: Some(std::time::Duration::from_millis(linger_ms)),
        ..Default::default()
    };
    e.build("FROM base\nARG TARGETARCH\nRUN echo $TARGETARCH\n", &runner, |o| {
        o.platforms = vec!["linux/arm64".parse().unwrap(), "linux/amd64".parse().unwrap()];
        o.jobs = std::num::NonZeroUsize::new(jobs);
    })
    .unwrap();
    assert_eq!(runner.scripts().len(), 2);
    let most = runner.running.lock().unwrap().1;
    most
}

#[test]
fn platforms_build_side_by_side_without_a_jobs_bound() {
    // Each RUN waits up to 10 s for the other: they overlap unless something serializes them.
    assert_eq!(most_at_once(0, 10_000), 2);
}

#[test]
fn jobs_bounds_the_stages_building_at_once_across_platforms() {
    // With one job, the second platform's RUN starts only after the first's stage is done,
    // however long the first waits for a peer.
    assert_eq!(most_at_once(1, 300), 1);
    assert_eq!(most_at_once(2, 10_000), 2);
}

#[test]
fn one_job_still_shares_the_build_platform_stage_without_deadlock() {
    // The arm64 builder waits for the amd64 builder's identical `$BUILDPLATFORM` stage while
    // holding no job, so one job is enough for both targets.
    let e = env();
    let runner = FakeRunner::default().effect("make", &[("/out/app", "built")]);
    let recipe = "FROM --platform=$BUILDPLATFORM base AS build\nRUN make\n\
                  FROM base\nCOPY --from=build /out/app /app\n";
    let out = e
        .build(recipe, &runner, |o| {
            o.platforms = vec!["linux/amd64".parse().unwrap(), "linux/arm64".parse().unwrap()];
            o.jobs = std::num::NonZeroUsize::new(1);
        })
        .unwrap();
    assert_eq!(runner.scripts(), ["make"], "the build-platform stage ran once");
    for p in &out.platforms {
        let image = e.store.image(&p.manifest).unwrap();
        assert_eq!(file_in(&e.store, &image, "app").as_deref(), Some("built"));
    }
}

#[test]
fn a_build_naming_no_platform_asks_for_none() {
    let e = env();
    let runner = FakeRunner::default();
    e.build("FROM base\nRUN true\n", &runner, |_| {}).unwrap();
    assert_eq!(*e.images.platforms.lock().unwrap(), ["-"]);
    assert!(runner.prepared.lock().unwrap().is_empty());
}

#[test]
fn without_emulation_the_step_fails_naming_the_platform_and_the_fix() {
    let e = env();
    let runner = FakeRunner { no_emulation: vec!["linux/riscv64".into()], ..Default::default() };
    let err = e
        .build("FROM base\nRUN true\n", &runner, |o| {
            o.tags = vec!["never:1".into()];
            o.platforms = vec!["linux/amd64".parse().unwrap(), "linux/riscv64".parse().unwrap()];
        })
        .unwrap_err();
    let text = strata_types::chain(&err);
    assert!(text.contains("line 2: RUN true"), "{text}");
    assert!(
        text.contains("cannot run linux/riscv64 steps") && text.contains("qemu-user-static"),
        "{text}"
    );
    assert!(e.store.load_image("never:1").is_err());
}
