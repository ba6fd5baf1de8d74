//! RUN: layers from the overlay upperdir, whiteouts, failures, env/args, mounts, heredocs.

mod common;

use std::fs;

use common::{can_run, env, history};
use strata_build::{BuildError, BuildOptions, SecretSource, SecretSpec};

#[test]
fn run_writes_a_file_into_one_layer() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context("ctx", &[("Dockerfile", "FROM base:1\nRUN echo hi > /hello\n")]);
    let out = e.build(&ctx, &["run:1"]).unwrap();
    let layers = out.image.layer_digests().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(e.layer_paths(&layers[1]), ["hello"], "no mountpoint stubs in the layer");
    let root = e.flatten(&out);
    assert_eq!(fs::read_to_string(root.path().join("hello")).unwrap(), "hi\n");
    let h = history(&out);
    assert_eq!(
        h.last().unwrap(),
        &("RUN /bin/sh -c echo hi > /hello # buildkit".to_string(), false)
    );
}

#[test]
fn run_deleting_a_base_file_writes_a_whiteout() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "ctx",
        &[("Dockerfile", "FROM base:1\nRUN rm /etc/motd\nRUN test ! -e /etc/motd\n")],
    );
    let out = e.build(&ctx, &[]).unwrap();
    let layers = out.image.layer_digests().unwrap();
    assert!(e.layer_paths(&layers[1]).contains(&"etc/.wh.motd".to_string()));
    let root = e.flatten(&out);
    assert!(!root.path().join("etc/motd").exists());
    assert!(root.path().join("etc/passwd").exists());
}

#[test]
fn failing_run_reports_exit_code_and_output_and_tags_nothing() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "ctx",
        &[("Dockerfile", "FROM base:1 AS build\nRUN echo first\nRUN echo boom-output; exit 3\n")],
    );
    let err = e.build(&ctx, &["broken:1"]).unwrap_err();
    match &err {
        BuildError::Step { stage, line, instruction, .. } => {
            assert_eq!(stage, "build");
            assert_eq!(*line, 3);
            assert!(instruction.contains("exit 3"));
        }
        other => panic!("unexpected {other:?}"),
    }
    match err.root_cause() {
        BuildError::RunFailed { exit_code, tail, .. } => {
            assert_eq!(*exit_code, 3);
            assert!(tail.iter().any(|l| l.contains("boom-output")), "{tail:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let text = strata_types::chain(&err);
    assert!(text.contains("line 3") && text.contains("status 3"), "{text}");
    assert!(e.store.resolve("broken:1").is_err());
}

#[test]
fn args_are_visible_to_run_but_not_stored() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1\nARG A=1\nENV B=2\nRUN echo \"$A $B\" > /out\n";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let mut opts = BuildOptions::new(&ctx);
    opts.build_args.set("A", "from-cli");
    let out = e.build_with(&opts).0.unwrap();
    let root = e.flatten(&out);
    assert_eq!(fs::read_to_string(root.path().join("out")).unwrap(), "from-cli 2\n");
    let cfg = common::config_json(&out);
    let env: Vec<String> = serde_json::from_value(cfg["config"]["Env"].clone()).unwrap();
    assert!(env.contains(&"B=2".to_string()));
    assert!(!env.iter().any(|v| v.starts_with("A=")), "{env:?}");
    let h = history(&out);
    assert_eq!(
        h.last().unwrap().0,
        "RUN |1 A=from-cli /bin/sh -c echo \"$A $B\" > /out # buildkit"
    );
}

#[test]
fn secrets_never_reach_a_blob() {
    if !can_run() {
        return;
    }
    let e = env();
    let secret = "TOPSECRET-4f1c9a";
    let file = e.dir.path().join("token");
    fs::write(&file, secret).unwrap();
    let recipe = format!(
        "FROM base:1
RUN --mount=type=secret,id=tok grep -q ^TOPSECRET- /run/secrets/tok && test $(wc -c < /run/secrets/tok) -eq {len} && echo ok > /ok
RUN --mount=type=secret,id=tok,env=TOK test \"${{#TOK}}\" -eq {len} && echo ok > /ok2
RUN --mount=type=secret,id=tok,target=/etc/tok cat /etc/tok > /dev/null
",
        len = secret.len()
    );
    assert!(!recipe.contains(secret));
    let ctx = e.context("ctx", &[("Dockerfile", &recipe)]);
    let mut opts = BuildOptions::new(&ctx);
    opts.tags = vec!["sec:1".into()];
    opts.secrets = vec![SecretSpec { id: "tok".into(), source: SecretSource::File(file) }];
    let (out, events) = e.build_with(&opts);
    let out = out.unwrap();
    let root = e.flatten(&out);
    assert!(root.path().join("ok").exists() && root.path().join("ok2").exists());
    // Not in any event (the log), nor in any file of the store: blobs, index, cache index
    // and every side table (cache keys are digests of what they name, and of no secret).
    assert!(!format!("{events:?}").contains(secret), "a progress event holds the secret");
    for entry in walkdir::WalkDir::new(e.dir.path().join("store")) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let bytes = fs::read(entry.path()).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret",
                entry.path().display()
            );
        }
    }
    assert!(!root.path().join("run/secrets/tok").exists());
    assert!(!root.path().join("etc/tok").exists());
    for blob in e.all_blob_bytes() {
        assert!(!blob.windows(secret.len()).any(|w| w == secret.as_bytes()), "secret leaked");
    }
    // A required secret that is not given fails.
    let ctx = e.context(
        "ctx2",
        &[(
            "Dockerfile",
            "FROM base:1\nRUN --mount=type=secret,id=x,required cat /run/secrets/x\n",
        )],
    );
    let err = e.build(&ctx, &[]).unwrap_err();
    assert!(matches!(err.root_cause(), BuildError::MissingSecret { id } if id == "x"), "{err}");
}

#[test]
fn cache_mount_persists_across_builds_but_not_in_layers() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1\nRUN --mount=type=cache,target=/var/cache/app echo x >> /var/cache/app/log && wc -l < /var/cache/app/log > /seen\n";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let first = e.build(&ctx, &[]).unwrap();
    let mut opts = BuildOptions::new(&ctx);
    opts.no_cache = true;
    let second = e.build_with(&opts).0.unwrap();
    let seen = |out| fs::read_to_string(e.flatten(out).path().join("seen")).unwrap();
    assert_eq!(seen(&first).trim(), "1");
    assert_eq!(seen(&second).trim(), "2");
    for d in second.image.layer_digests().unwrap() {
        assert!(!e.layer_paths(&d).iter().any(|p| p.contains("var/cache/app")), "cache in a layer");
    }
}

#[test]
fn heredoc_runs_like_buildkit() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1
RUN <<EOF
echo a > /h1
echo b >> /h1
EOF
RUN <<EOF
#!/bin/sh
echo script > /h2
EOF
RUN cat <<EOF > /h3
from stdin
EOF
";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    let read = |p: &str| fs::read_to_string(root.path().join(p)).unwrap();
    assert_eq!(read("h1"), "a\nb\n");
    assert_eq!(read("h2"), "script\n");
    assert_eq!(read("h3"), "from stdin\n");
    assert!(!root.path().join("dev/pipes").exists());
}

#[test]
fn workdir_makes_a_layer_only_when_it_creates_the_directory() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1\nWORKDIR /etc\nUSER app\nWORKDIR /srv/app\nRUN pwd > /tmp/pwd && id -u > /tmp/uid\n";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let out = e.build(&ctx, &[]).unwrap();
    let h = history(&out);
    assert_eq!(h[1], ("WORKDIR /etc".to_string(), true));
    assert_eq!(h[3], ("WORKDIR /srv/app".to_string(), false));
    let root = e.flatten(&out);
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(root.path().join("srv/app")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1001), "created for the current USER");
    assert_eq!(fs::read_to_string(root.path().join("tmp/pwd")).unwrap(), "/srv/app\n");
    assert_eq!(fs::read_to_string(root.path().join("tmp/uid")).unwrap(), "1000\n");
}

#[test]
fn multi_stage_with_run_and_copy_from() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1 AS builder
RUN mkdir -p /out && echo built > /out/artifact
FROM base:1 AS other
RUN exit 1
FROM scratch
COPY --from=builder /out/artifact /artifact
";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let out = e.build(&ctx, &[]).unwrap();
    assert_eq!(out.image.manifest.layers().len(), 1);
    let root = e.flatten(&out);
    assert_eq!(fs::read_to_string(root.path().join("artifact")).unwrap(), "built\n");
}

#[test]
fn copy_fallback_gives_the_same_layers_as_overlay() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1
RUN echo new > /etc/new && rm /etc/motd && mkdir -p /usr/share/doc && echo d > /usr/share/doc/x
RUN rm -r /usr/share/doc && mkdir /usr/share/doc && echo y > /usr/share/doc/y && chmod 700 /home/app
";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let overlay = e.build(&ctx, &[]).unwrap();
    let mut opts = BuildOptions::new(&ctx);
    opts.run_rootfs = strata_build::RunRootfs::Copy;
    opts.no_cache = true;
    let copy = e.build_with(&opts).0.unwrap();
    let a = overlay.image.layer_digests().unwrap();
    let b = copy.image.layer_digests().unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(e.layer_paths(x), e.layer_paths(y));
    }
    assert_eq!(a, b);
}

#[test]
fn independent_stages_build_concurrently() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1 AS a
RUN sleep 0.5 && echo a > /a
FROM base:1 AS b
RUN sleep 0.5 && echo b > /b
FROM scratch
COPY --from=a /a /a
COPY --from=b /b /b
";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let (out, events) = e.build_with(&BuildOptions::new(&ctx));
    let out = out.unwrap();
    let pos = |f: &dyn Fn(&strata_build::BuildEvent) -> bool| events.iter().position(f).unwrap();
    use strata_build::BuildEvent::{StageStart, StepDone};
    let b_start = pos(&|ev| matches!(ev, StageStart { stage: 1, .. }));
    let a_done = pos(&|ev| matches!(ev, StepDone { stage: 0, .. }));
    assert!(b_start < a_done, "stage b waited for stage a: {events:?}");
    // Reports come in plan order whatever the timing.
    let stages: Vec<usize> = out.steps.iter().map(|s| s.stage).collect();
    assert_eq!(stages, [0, 1, 2, 2]);
    let root = e.flatten(&out);
    assert!(root.path().join("a").exists() && root.path().join("b").exists());
}

#[test]
fn bind_and_tmpfs_mounts_stay_out_of_layers_and_output_is_streamed() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1
RUN --mount=type=bind,source=data.txt,target=/mnt/data.txt cat /mnt/data.txt > /copy
RUN --mount=type=bind,target=/ctx,rw echo changed > /ctx/data.txt && cat /ctx/data.txt
RUN --mount=type=tmpfs,target=/scratch echo x > /scratch/f && echo visible-line
RUN --mount=type=bind,from=base:1,source=/etc,target=/base-etc cp /base-etc/motd /motd-copy
";
    let ctx = e.context("ctx", &[("data.txt", "payload\n"), ("Dockerfile", recipe)]);
    let (out, events) = e.build_with(&BuildOptions::new(&ctx));
    let out = out.unwrap();
    assert_eq!(fs::read_to_string(ctx.join("data.txt")).unwrap(), "payload\n", "rw bind is a copy");
    let root = e.flatten(&out);
    assert_eq!(fs::read_to_string(root.path().join("copy")).unwrap(), "payload\n");
    assert_eq!(fs::read_to_string(root.path().join("motd-copy")).unwrap(), "hello from base\n");
    for p in ["mnt/data.txt", "ctx", "scratch", "base-etc"] {
        assert!(!root.path().join(p).exists(), "{p} leaked into the image");
    }
    let lines: Vec<&str> = events
        .iter()
        .filter_map(|ev| match ev {
            strata_build::BuildEvent::StepOutput { line, .. } => Some(line.as_str()),
            _ => None,
        })
        .collect();
    assert!(lines.contains(&"visible-line") && lines.contains(&"changed"), "{lines:?}");
}

/// Two steps with identical changes put the same snapshot twice in the chain; overlayfs
/// refuses a repeated lowerdir (ELOOP), so the chain must be deduplicated.
#[test]
fn regression_same_layer_twice_in_chain() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1\nRUN true\nRUN true\nRUN echo ok > /ok\n";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let out = e.build(&ctx, &[]).unwrap();
    let layers = out.image.layer_digests().unwrap();
    assert_eq!(layers.len(), 4);
    assert_eq!(layers[1], layers[2]);
    assert!(e.flatten(&out).path().join("ok").exists());
}

#[test]
fn unchanged_run_steps_come_from_the_cache() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1\nARG V=1\nRUN echo $V > /v && echo ran\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b\n";
    let ctx = e.context("ctx", &[("a.txt", "one"), ("Dockerfile", recipe)]);
    let cached = |events: &[strata_build::BuildEvent]| {
        events.iter().filter(|ev| matches!(ev, strata_build::BuildEvent::StepCached { .. })).count()
    };
    let (first, events) = e.build_with(&BuildOptions::new(&ctx));
    let first = first.unwrap();
    assert_eq!(cached(&events), 0);
    let (second, events) = e.build_with(&BuildOptions::new(&ctx));
    let second = second.unwrap();
    assert_eq!(cached(&events), 3, "both RUNs and the COPY reused");
    assert_eq!(second.manifest.digest(), first.manifest.digest());
    assert!(!events.iter().any(|ev| matches!(ev, strata_build::BuildEvent::StepOutput { .. })));
    // A new ARG value or a changed COPY source invalidates what depends on it, nothing else.
    fs::write(ctx.join("a.txt"), "two").unwrap();
    let (third, events) = e.build_with(&BuildOptions::new(&ctx));
    let third = third.unwrap();
    assert_eq!(cached(&events), 1, "the first RUN is still valid");
    assert_eq!(fs::read_to_string(e.flatten(&third).path().join("b")).unwrap(), "two");
    let mut opts = BuildOptions::new(&ctx);
    opts.build_args.set("V", "2");
    let (fourth, events) = e.build_with(&opts);
    assert_eq!(cached(&events), 0, "V is in both RUNs' environment");
    assert_eq!(fs::read_to_string(e.flatten(&fourth.unwrap()).path().join("v")).unwrap(), "2\n");
}

#[test]
fn insecure_run_is_refused_without_allow_and_has_every_capability_with_it() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM base:1\nENV A=1\nRUN --security=insecure mkdir -p /mnt && mount -t tmpfs none /mnt && grep CapEff /proc/self/status > /caps\n",
        )],
    );
    let mut opts = BuildOptions::new(&ctx);
    let (r, events) = e.build_with(&opts);
    let err = r.unwrap_err();
    assert!(matches!(err.root_cause(), BuildError::InsecureRun), "{err:?}");
    let text = strata_types::chain(&err);
    assert!(text.contains("line 3") && text.contains("--allow security.insecure"), "{text}");
    assert!(
        !events.iter().any(|e| matches!(e, strata_build::BuildEvent::StepOutput { .. })),
        "the command never ran"
    );
    // With the entitlement the step may mount (CAP_SYS_ADMIN) and sees every capability.
    opts.allow_insecure = true;
    let (out, _) = e.build_with(&opts);
    let root = e.flatten(&out.unwrap());
    let caps = fs::read_to_string(root.path().join("caps")).unwrap();
    let eff = u64::from_str_radix(caps.trim().rsplit('\t').next().unwrap(), 16).unwrap();
    assert!(eff & (1 << 21) != 0, "{caps}");
}

#[test]
fn ulimits_and_shm_size_reach_run_steps_and_the_cache_key() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1\nRUN ulimit -n > /n; ulimit -Hn >> /n; grep ' /dev/shm ' /proc/mounts > /shm\n";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let mut opts = BuildOptions::new(&ctx);
    opts.run_resources.ulimits = vec!["nofile=321:654".parse().unwrap()];
    opts.run_resources.shm_size = Some(strata_build::sandbox::parse_size("16m").unwrap());
    let (out, _) = e.build_with(&opts);
    let root = e.flatten(&out.unwrap());
    assert_eq!(fs::read_to_string(root.path().join("n")).unwrap(), "321\n654\n");
    let shm = fs::read_to_string(root.path().join("shm")).unwrap();
    assert!(shm.contains("size=16384k"), "{shm}");
    // Other limits are another RUN: no stale hit, and the miss says why.
    opts.run_resources = Default::default();
    let (again, events) = e.build_with(&opts);
    let reason = events.iter().find_map(|e| match e {
        strata_build::BuildEvent::CacheMiss { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(reason.as_deref(), Some("--ulimit changed; --shm-size changed"));
    let root = e.flatten(&again.unwrap());
    assert_ne!(fs::read_to_string(root.path().join("n")).unwrap(), "321\n654\n");
    let shm = fs::read_to_string(root.path().join("shm")).unwrap();
    assert!(shm.contains("size=65536k"), "{shm}");
}

#[test]
fn a_bind_mount_without_target_is_the_workdir_and_u_gives_a_cache_to_the_user() {
    if !can_run() {
        return;
    }
    let e = env();
    // BuildKit mounts a bind without `target` on the working directory; buildah's `U` hands
    // a cache mount to the step's user, who could not write the root-owned directory otherwise.
    let recipe = "FROM base:1
WORKDIR /src
RUN --mount=type=bind,source=sub cat data.txt > /copy
USER app
RUN --mount=type=cache,id=u-test,target=/c,U touch /c/mine && stat -c %u:%g /c/mine > /tmp/owner
";
    let ctx = e.context("ctx", &[("sub/data.txt", "from sub\n"), ("Dockerfile", recipe)]);
    let (out, _) = e.build_with(&BuildOptions::new(&ctx));
    let root = e.flatten(&out.unwrap());
    assert_eq!(fs::read_to_string(root.path().join("copy")).unwrap(), "from sub\n");
    assert_eq!(fs::read_to_string(root.path().join("tmp/owner")).unwrap(), "1000:1001\n");
    assert!(!root.path().join("src/data.txt").exists(), "the mount leaked into the image");

    // Without `U` the same step cannot write there.
    let recipe = "FROM base:1\nUSER app\nRUN --mount=type=cache,id=plain,target=/c touch /c/mine\n";
    let ctx = e.context("ctx2", &[("Dockerfile", recipe)]);
    let (out, _) = e.build_with(&BuildOptions::new(&ctx));
    assert!(out.is_err(), "a root-owned cache dir is not writable by app");
}

#[test]
fn a_cache_mount_from_a_stage_starts_with_its_content() {
    if !can_run() {
        return;
    }
    let e = env();
    // BuildKit: `from=` (and `source=`) is the base of a new cache mount; later builds see
    // what the cache holds, not the stage again.
    let recipe = "FROM base:1 AS seed
RUN mkdir -p /deps/sub && echo seeded > /deps/sub/pkg && ln -s sub/pkg /deps/link
FROM base:1
RUN --mount=type=cache,id=seeded,target=/cache,from=seed,source=/deps cat /cache/sub/pkg /cache/link > /got && echo more > /cache/extra
RUN --mount=type=cache,id=seeded,target=/cache ls /cache > /listing
";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let (out, _) = e.build_with(&BuildOptions::new(&ctx));
    let root = e.flatten(&out.unwrap());
    assert_eq!(fs::read_to_string(root.path().join("got")).unwrap(), "seeded\nseeded\n");
    assert_eq!(fs::read_to_string(root.path().join("listing")).unwrap(), "extra\nlink\nsub\n");
    assert!(!root.path().join("cache/sub").exists(), "the cache stays out of the image");
}

#[test]
fn add_host_reaches_run_steps_and_the_cache_key() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = "FROM base:1\nRUN grep db.internal /etc/hosts > /hosts\n";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let mut opts = BuildOptions::new(&ctx);
    opts.extra_hosts = vec!["db.internal:10.1.2.3".parse().unwrap()];
    let (out, _) = e.build_with(&opts);
    let out = out.unwrap();
    let root = e.flatten(&out);
    assert_eq!(fs::read_to_string(root.path().join("hosts")).unwrap(), "10.1.2.3\tdb.internal\n");
    // Another address is another RUN: no stale hit.
    opts.extra_hosts = vec!["db.internal=fd00::7".parse().unwrap()];
    let (again, _) = e.build_with(&opts);
    let root = e.flatten(&again.unwrap());
    assert_eq!(fs::read_to_string(root.path().join("hosts")).unwrap(), "fd00::7\tdb.internal\n");
    for bad in ["nocolon", ":1.2.3.4", "db:not-an-ip", "db:host-gateway"] {
        let err = bad.parse::<strata_build::ExtraHost>().unwrap_err();
        assert!(err.to_string().starts_with("--add-host"), "{bad}: {err}");
    }
}

#[test]
fn tmpcopyup_starts_a_tmpfs_with_the_image_content_and_keeps_none_of_the_writes() {
    if !can_run() {
        return;
    }
    let e = env();
    // buildah's tmpcopyup: the tmpfs over /etc starts with the image's /etc; what the step
    // writes there is gone after it. Without it (notmpcopyup, the default) /etc is empty.
    let recipe = "FROM base:1
RUN --mount=type=tmpfs,target=/etc,tmpcopyup cat /etc/motd > /tmp/seen && echo changed > /etc/motd
RUN --mount=type=tmpfs,target=/etc,notmpcopyup ls -A /etc > /tmp/empty
";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let (out, _) = e.build_with(&BuildOptions::new(&ctx));
    let root = e.flatten(&out.unwrap());
    assert_eq!(fs::read_to_string(root.path().join("tmp/seen")).unwrap(), "hello from base\n");
    assert_eq!(fs::read_to_string(root.path().join("etc/motd")).unwrap(), "hello from base\n");
    assert_eq!(fs::read_to_string(root.path().join("tmp/empty")).unwrap(), "");
}

/// The host's `ssh-add` with the libraries `ldd` names, as context files (so a busybox
/// image can run it); `None` (after a skip message) without OpenSSH.
fn ssh_add_files() -> Option<Vec<(String, Vec<u8>)>> {
    let ldd = std::process::Command::new("ldd").arg("/usr/bin/ssh-add").output().ok()?;
    if !ldd.status.success() || !common::have_tool("ssh-agent") {
        return None;
    }
    let mut files = vec![("usr/bin/ssh-add".to_string(), fs::read("/usr/bin/ssh-add").ok()?)];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) else { continue };
        let real = fs::canonicalize(path).ok()?;
        files.push((path.trim_start_matches('/').to_string(), fs::read(real).ok()?));
    }
    Some(files)
}

#[test]
fn ssh_mounts_reach_a_forwarded_agent_and_an_agent_of_key_files() {
    if !can_run() {
        return;
    }
    let Some(files) = ssh_add_files() else {
        assert!(!common::strict(), "STRATA_TEST_STRICT=1 but ssh-add cannot be copied");
        return;
    };
    let e = env();
    let keydir = e.dir.path().join("keys");
    fs::create_dir_all(&keydir).unwrap();
    let key = keydir.join("id_test");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "strata-ssh-test-key", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    // An agent of the test's own, holding the key: what `--ssh default` forwards.
    let sock = keydir.join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !sock.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let st = std::process::Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &sock)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());

    let ctx = e.context("ctx", &[("Dockerfile", "FROM base:1\nCOPY tools/ /\nRUN --mount=type=ssh ssh-add -l > /keys && test \"$SSH_AUTH_SOCK\" = /run/buildkit/ssh_agent.0\nRUN --mount=type=ssh,id=deploy,required ssh-add -l > /deploy-keys\n")]);
    for (path, bytes) in &files {
        let p = ctx.join("tools").join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mut opts = BuildOptions::new(&ctx);
    opts.ssh = vec![
        strata_build::SshSpec {
            id: "default".into(),
            source: strata_build::SshSource::Socket(sock.clone()),
        },
        format!("deploy={}", key.display()).parse().unwrap(),
    ];
    let (out, _) = e.build_with(&opts);
    let _ = agent.kill();
    let _ = agent.wait();
    let out = out.unwrap();
    let root = e.flatten(&out);
    let keys = fs::read_to_string(root.path().join("keys")).unwrap();
    assert!(keys.contains("strata-ssh-test-key"), "{keys}");
    let deploy = fs::read_to_string(root.path().join("deploy-keys")).unwrap();
    assert!(deploy.contains("strata-ssh-test-key"), "the agent strata started: {deploy}");
    assert!(!root.path().join("run/buildkit/ssh_agent.0").exists());
    // The private key is in no blob.
    let private = fs::read(&key).unwrap();
    let marker = &private[40..80];
    for blob in e.all_blob_bytes() {
        assert!(!blob.windows(marker.len()).any(|w| w == marker), "the private key leaked");
    }

    // A required agent nobody forwards: an error naming the id and the flag.
    let ctx =
        e.context("ctx2", &[("Dockerfile", "FROM base:1\nRUN --mount=type=ssh,required true\n")]);
    let err = e.build(&ctx, &[]).unwrap_err();
    assert!(matches!(err.root_cause(), BuildError::MissingSsh { id } if id == "default"), "{err}");
    assert!(strata_types::chain(&err).contains("--ssh default"), "{err}");
}

/// An ssh-agent of the test's own on `DIR/agent.sock`, holding a new key commented
/// `strata-ssh-test-key`.
fn test_agent(dir: &std::path::Path) -> std::process::Child {
    fs::create_dir_all(dir).unwrap();
    let key = dir.join("id_test");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "strata-ssh-test-key", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let sock = dir.join("agent.sock");
    let agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !sock.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let st = std::process::Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &sock)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    agent
}

#[test]
fn ssh_mount_mode_uid_gid_and_required_work_as_buildkit() {
    if !can_run() {
        return;
    }
    let Some(files) = ssh_add_files() else {
        assert!(!common::strict(), "STRATA_TEST_STRICT=1 but ssh-add cannot be copied");
        return;
    };
    let e = env();
    let keydir = e.dir.path().join("keys");
    let mut agent = test_agent(&keydir);
    // BuildKit's socket: 0600 root:root unless the mount says otherwise; a user the socket
    // is not given to cannot reach the agent. An optional mount nobody forwards is absent.
    let recipe = "FROM base:1
COPY tools/ /
RUN --mount=type=ssh stat -c '%a %u %g' $SSH_AUTH_SOCK > /default-mode
RUN --mount=type=ssh,mode=0660,uid=1000,gid=1001 stat -c '%a %u %g' $SSH_AUTH_SOCK > /mode
RUN --mount=type=ssh,id=nobody echo \"sock=${SSH_AUTH_SOCK:-none}\" > /optional
USER app
RUN --mount=type=ssh,uid=1000 ssh-add -l > /tmp/app-keys
RUN --mount=type=ssh ssh-add -l > /tmp/denied 2>&1 || echo refused >> /tmp/denied
";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    for (path, bytes) in &files {
        let p = ctx.join("tools").join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mut opts = BuildOptions::new(&ctx);
    opts.ssh = vec![strata_build::SshSpec {
        id: "default".into(),
        source: strata_build::SshSource::Socket(keydir.join("agent.sock")),
    }];
    let (out, _) = e.build_with(&opts);
    let root = e.flatten(&out.unwrap());
    let read = |p: &str| fs::read_to_string(root.path().join(p)).unwrap();
    assert_eq!(read("default-mode"), "600 0 0\n");
    assert_eq!(read("mode"), "660 1000 1001\n");
    assert_eq!(read("optional"), "sock=none\n");
    assert!(read("tmp/app-keys").contains("strata-ssh-test-key"), "{}", read("tmp/app-keys"));
    assert!(read("tmp/denied").contains("refused"), "{}", read("tmp/denied"));

    // required=true and an id no --ssh gives (another one is): the line and the flag.
    let ctx = e.context(
        "ctx2",
        &[(
            "Dockerfile",
            "FROM base:1\nRUN true\nRUN --mount=type=ssh,id=deploy,required=true true\n",
        )],
    );
    let mut opts = BuildOptions::new(&ctx);
    opts.ssh = vec![strata_build::SshSpec {
        id: "default".into(),
        source: strata_build::SshSource::Socket(keydir.join("agent.sock")),
    }];
    let (out, _) = e.build_with(&opts);
    let _ = agent.kill();
    let _ = agent.wait();
    let err = out.unwrap_err();
    let chain = strata_types::chain(&err);
    assert!(matches!(err.root_cause(), BuildError::MissingSsh { id } if id == "deploy"), "{chain}");
    assert!(chain.contains("line 3") && chain.contains("--ssh deploy"), "{chain}");
}

#[test]
fn cache_mount_sharing_modes_hold_across_parallel_stages() {
    if !can_run() {
        return;
    }
    let e = env();
    // Two independent stages run at once; each marks the cache mount busy for 3 s and
    // notes whether it found the other's mark.
    let step = |mode: &str, name: &str| {
        format!(
            "FROM base:1 AS {name}\nRUN --mount=type=cache,id={mode}-test,target=/c,sharing={mode} \
             if [ -e /c/busy ]; then echo overlap > /seen; else echo alone > /seen; fi; \
             touch /c/busy /c/{name}; sleep 3; rm -f /c/busy; ls /c > /listing\n"
        )
    };
    let seen = |mode: &str| -> (String, String) {
        let recipe = format!(
            "{}{}FROM base:1\nCOPY --from=a /seen /a\nCOPY --from=b /seen /b\nCOPY --from=b /listing /b-listing\n",
            step(mode, "a"),
            step(mode, "b")
        );
        let ctx = e.context(&format!("ctx-{mode}"), &[("Dockerfile", &recipe)]);
        let (out, _) = e.build_with(&BuildOptions::new(&ctx));
        let root = e.flatten(&out.unwrap());
        let a = fs::read_to_string(root.path().join("a")).unwrap();
        let b = fs::read_to_string(root.path().join("b")).unwrap();
        (a + &b, fs::read_to_string(root.path().join("b-listing")).unwrap())
    };
    // shared: both at once in one directory (this is what proves the stages overlap).
    let (shared, _) = seen("shared");
    assert!(shared.contains("overlap"), "{shared}");
    // locked: one after the other in one directory.
    let (locked, listing) = seen("locked");
    assert_eq!(locked, "alone\nalone\n");
    assert!(listing.contains('a') || listing.contains('b'));
    // private: at once, each in an instance of its own.
    let (private, _) = seen("private");
    assert_eq!(private, "alone\nalone\n");
    let mounts = e.dir.path().join("store/strata/v1/cache-mounts");
    assert!(mounts.join("private-test").is_dir() && mounts.join("private-test@1").is_dir());
}

/// The description of one entry of a snapshot dir, with everything an overlay mount or a
/// later step can see: a whiteout is only a whiteout; hardlinks by the first path of their
/// inode.
fn snapshot_tree(dir: &std::path::Path) -> Vec<String> {
    use std::collections::HashMap;
    use std::os::unix::ffi::OsStrExt;
    let scan = strata_layer::scan_with_digests(dir).unwrap();
    let mut first: HashMap<u64, String> = HashMap::new();
    let mut out = Vec::new();
    for e in scan.entries() {
        let path = e.path.display().to_string();
        if e.kind == strata_layer::EntryKind::CharDevice && e.rdev == 0 {
            out.push(format!("{path} whiteout"));
            continue;
        }
        let group = first.entry(e.ino).or_insert_with(|| path.clone()).clone();
        let xattrs: Vec<String> = e
            .xattrs
            .iter()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), String::from_utf8_lossy(v)))
            .collect();
        let opaque = strata_layer::overlay::is_opaque(&dir.join(&e.path));
        out.push(format!(
            "{path} {:?} {:o} {}:{} size={} mtime={}.{} link={:?} rdev={} digest={:?} \
             nlink={} inode-of={group} xattrs={xattrs:?} opaque={opaque} name-bytes={}",
            e.kind,
            e.mode,
            e.uid,
            e.gid,
            e.size,
            e.mtime.secs,
            e.mtime.nanos,
            e.link_target,
            e.rdev,
            e.digest,
            e.nlink,
            e.path.as_os_str().as_bytes().len(),
        ));
    }
    out
}

#[test]
fn a_run_snapshot_adopted_from_the_upper_equals_the_one_unpacked_from_its_blob() {
    if !can_run() {
        return;
    }
    let e = env();
    // A base whose files carry an xattr, so that copy-ups carry it (and overlay's origin).
    let plain = e.context("plain", &[("Dockerfile", "FROM base:1\n")]);
    let base = e.flatten(&e.build(&plain, &[]).unwrap());
    let motd = base.path().join("etc/motd");
    for (path, value) in [(&motd, "note"), (&base.path().join("usr/share"), "dir")] {
        let flags = rustix::fs::XattrFlags::empty();
        if rustix::fs::lsetxattr(path, "user.strata-test", value.as_bytes(), flags).is_err() {
            eprintln!("skipping: no user xattrs on {}", path.display());
            return;
        }
    }
    fs::write(base.path().join("etc/keep"), "kept\n").unwrap();
    fs::create_dir_all(base.path().join("usr/share/doc/pkg")).unwrap();
    fs::write(base.path().join("usr/share/doc/pkg/a"), "a").unwrap();
    fs::write(base.path().join("usr/share/doc/pkg/b"), "b").unwrap();
    fs::write(base.path().join("usr/share/doc/top"), "t").unwrap();
    let imported = strata_image::import_tree(&e.store, base.path(), &Default::default()).unwrap();
    e.store.tag("xbase:1", &imported.manifest).unwrap();
    let recipe = "FROM xbase:1
RUN echo new > /etc/new && echo more >> /etc/keep \
 && chmod 640 /etc/motd && ln /etc/new /etc/new-link && ln -s ../new /etc/rel-link \
 && mkdir -p /opt/app/bin && echo '#!/bin/sh' > /opt/app/bin/run && busybox chown 7:8 /opt/app/bin/run \
 && chmod 4755 /opt/app/bin/run && busybox chown -h 9:10 /etc/rel-link \
 && busybox mkfifo /opt/app/fifo && busybox mknod /opt/app/null c 1 3 \
 && busybox touch -t 199001010000 /opt/app/old && busybox touch -t 203001010000 /opt/app/future
RUN rm -r /usr/share/doc && mkdir -p /usr/share/doc/pkg && echo y > /usr/share/doc/pkg/y \
 && rm /etc/new-link && mkdir /etc/new-link && echo x > /etc/new-link/x \
 && rm -r /home/app && echo f > /home/app && echo again >> /etc/new && rm /etc/keep
RUN rm -r /opt/app && mkdir /opt/app && touch /opt/app/fresh
";
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let mut opts = BuildOptions::new(&ctx);
    opts.timestamp = 1_000_000_000;
    let (out, events) = e.build_with(&opts);
    let out = out.unwrap();
    for ev in &events {
        if let strata_build::BuildEvent::StepPhases { phases, .. } = ev {
            assert!(
                phases.iter().all(|p| p.name != "snapshot unpack"),
                "every RUN adopted its upper: {phases:?}"
            );
        }
    }
    let digests = out.image.layer_digests().unwrap();
    let diff_ids = out.image.config.rootfs().diff_ids().clone();
    assert_eq!(digests.len(), 4);
    for (digest, diff_id) in digests.iter().zip(&diff_ids).skip(1) {
        let diff_id: strata_types::Digest = diff_id.parse().unwrap();
        let adopted = e.store.snapshots().get(&diff_id).unwrap();
        let unpacked = tempfile::tempdir_in(e.dir.path()).unwrap();
        strata_layer::apply_blob(
            &e.store,
            digest,
            unpacked.path(),
            &strata_layer::ApplyOptions::default().overlay_whiteouts(),
        )
        .unwrap();
        let (a, u) = (snapshot_tree(&adopted), snapshot_tree(unpacked.path()));
        assert!(!u.is_empty());
        assert_eq!(a, u, "layer {digest}: adopted (left) vs unpacked (right)");
    }
    // What the steps did is there (the comparison above would pass on two empty trees).
    let all: Vec<String> = diff_ids[1..]
        .iter()
        .flat_map(|d| snapshot_tree(&e.store.snapshots().get(&d.parse().unwrap()).unwrap()))
        .collect();
    for want in [
        "etc/motd File 640 0:0",
        "etc/new-link File",
        "etc/rel-link Symlink 777 9:10",
        "opt/app/bin/run File 4755 7:8",
        "opt/app/fifo Fifo",
        "opt/app/null CharDevice",
        "opt/app/old File 644 0:0 size=0 mtime=631152000.0",
        "opt/app/future File 644 0:0 size=0 mtime=1000000000.0",
        "usr/share/doc/pkg/a whiteout",
        "usr/share/doc/top whiteout",
        "etc/new-link/x File",
        "home/app File",
        "etc/keep whiteout",
        "opt/app/bin whiteout",
    ] {
        assert!(all.iter().any(|l| l.starts_with(want)), "{want} in {all:#?}");
    }
    assert!(all.iter().any(|l| l.starts_with("etc/motd") && l.contains("user.strata-test=note")));
}
