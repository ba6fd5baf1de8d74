//! Image config and history: metadata instructions, inheritance, bases from other transports.

mod common;

use std::collections::BTreeMap;

use common::{can_run, config_json, env, history};
use serde_json::{json, Value};
use strata_build::BuildError;
use strata_image::{export, open_local};
use strata_store::Store;

#[test]
fn metadata_instructions_set_config_and_history() {
    if !can_run() {
        return;
    }
    let e = env();
    let recipe = r#"FROM base:1
MAINTAINER Jane <jane@example.com>
ENV A=1 B="two words"
ENV A=3
LABEL org.example.tier=web version="1.0"
WORKDIR /app
USER app
EXPOSE 80 53/udp
VOLUME /data
STOPSIGNAL SIGQUIT
CMD ["serve"]
ENTRYPOINT ["/bin/sh", "-c"]
"#;
    let ctx = e.context("ctx", &[("Dockerfile", recipe)]);
    let out = e.build(&ctx, &[]).unwrap();
    let cfg = config_json(&out);
    let c = &cfg["config"];
    let env: Vec<String> = serde_json::from_value(c["Env"].clone()).unwrap();
    assert_eq!(env.last().unwrap(), "B=two words");
    assert!(env.contains(&"A=3".to_string()) && !env.contains(&"A=1".to_string()));
    assert_eq!(c["WorkingDir"], json!("/app"));
    assert_eq!(c["User"], json!("app"));
    assert_eq!(c["ExposedPorts"], json!({"53/udp": {}, "80/tcp": {}}));
    assert_eq!(c["Volumes"], json!({"/data": {}}));
    assert_eq!(c["StopSignal"], json!("SIGQUIT"));
    assert_eq!(c["Cmd"], json!(["serve"]), "CMD set in the same stage survives ENTRYPOINT");
    assert_eq!(c["Entrypoint"], json!(["/bin/sh", "-c"]));
    let labels: BTreeMap<String, String> = serde_json::from_value(c["Labels"].clone()).unwrap();
    assert_eq!(labels["org.example.tier"], "web");
    assert_eq!(labels["version"], "1.0");
    assert_eq!(cfg["author"], json!("Jane <jane@example.com>"));
    assert_eq!(cfg["created"], json!("1970-01-01T00:00:00Z"));
    let h = history(&out);
    let new: Vec<(String, bool)> = h[1..].to_vec();
    let expect = [
        ("MAINTAINER Jane <jane@example.com>", true),
        ("ENV A=1 B=two words", true),
        ("ENV A=3", true),
        ("LABEL org.example.tier=web version=1.0", true),
        ("WORKDIR /app", false),
        ("USER app", true),
        ("EXPOSE map[53/udp:{} 80/tcp:{}]", true),
        ("VOLUME [/data]", true),
        ("STOPSIGNAL SIGQUIT", true),
        (r#"CMD ["serve"]"#, true),
        (r#"ENTRYPOINT ["/bin/sh" "-c"]"#, true),
    ];
    let expect: Vec<(String, bool)> = expect.iter().map(|(s, b)| (s.to_string(), *b)).collect();
    assert_eq!(new, expect);
    // One layer for the base, one for WORKDIR /app.
    assert_eq!(out.image.manifest.layers().len(), 2);
    let diff_ids = cfg["rootfs"]["diff_ids"].as_array().unwrap().len();
    assert_eq!(diff_ids, 2);
}

#[test]
fn inherited_cmd_is_reset_by_entrypoint_and_shell_form_uses_shell() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx =
        e.context("a", &[("Dockerfile", "FROM base:1\nENV KEEP=yes\nCMD [\"x\"]\nLABEL a=b\n")]);
    e.build(&ctx, &["parent:1"]).unwrap();
    let ctx = e.context(
        "b",
        &[("Dockerfile", "FROM parent:1\nENTRYPOINT [\"y\"]\nSHELL [\"/bin/busybox\", \"sh\", \"-c\"]\nSTOPSIGNAL 9\n")],
    );
    let out = e.build(&ctx, &[]).unwrap();
    let c = config_json(&out)["config"].clone();
    assert_eq!(c["Cmd"], Value::Null);
    assert_eq!(c["Labels"], json!({"a": "b"}));
    assert!(c["Env"].as_array().unwrap().contains(&json!("KEEP=yes")));
    let ctx = e.context(
        "c",
        &[("Dockerfile", "FROM parent:1\nSHELL [\"/bin/busybox\", \"sh\", \"-c\"]\nCMD echo hi\n")],
    );
    let out = e.build(&ctx, &[]).unwrap();
    let c = config_json(&out)["config"].clone();
    assert_eq!(c["Cmd"], json!(["/bin/busybox", "sh", "-c", "echo hi"]));
    // Parent history is kept, then ours.
    let h = history(&out);
    assert_eq!(h.len(), 1 + 3 + 2);
}

#[test]
fn bases_from_oci_layouts_and_docker_archives() {
    if !can_run() {
        return;
    }
    let e = env();
    let source = open_local(Some(&e.store), &"base:1".parse().unwrap()).unwrap();
    let layout = e.dir.path().join("layout");
    let archive = e.dir.path().join("base.tar");
    let opts = strata_image::ExportOptions::default();
    export(&source, &format!("oci:{}:v1", layout.display()).parse().unwrap(), &opts).unwrap();
    export(
        &source,
        &format!("docker-archive:{}:base:1", archive.display()).parse().unwrap(),
        &opts,
    )
    .unwrap();
    let other = tempfile::tempdir().unwrap();
    let store = Store::init(other.path()).unwrap();
    for from in
        [format!("oci:{}:v1", layout.display()), format!("docker-archive:{}", archive.display())]
    {
        let ctx = e.context(
            &format!("ctx-{}", from.len()),
            &[("Dockerfile", &format!("FROM {from}\nRUN cat /etc/motd > /copy\n"))],
        );
        let opts = strata_build::BuildOptions::new(&ctx);
        let out = strata_build::build(&store, &opts, &strata_build::NoProgress).unwrap();
        assert_eq!(out.image.manifest.layers().len(), 2);
    }
}

#[test]
fn registry_base_not_in_store_is_a_clear_error() {
    if !can_run() {
        return;
    }
    let e = env();
    let ctx = e.context("ctx", &[("Dockerfile", "FROM docker.io/library/alpine:3.20\nRUN true\n")]);
    // --pull=never: the store is all there is, and no registry is contacted.
    let mut opts = strata_build::BuildOptions::new(&ctx);
    opts.pull = strata_build::PullPolicy::Never;
    let err = e.build_with(&opts).0.unwrap_err();
    assert!(
        matches!(err.root_cause(), BuildError::ImageNotInStore { reference, .. } if reference == "docker.io/library/alpine:3.20"),
        "{err}"
    );
    assert!(strata_types::chain(&err).contains("--pull=never forbids pulling it"), "{err}");
    // A name without a registry host is looked up in the store only.
    let ctx = e.context("ctx2", &[("Dockerfile", "FROM alpine:3.20\nRUN true\n")]);
    let err = e.build(&ctx, &[]).unwrap_err();
    assert!(strata_types::chain(&err).contains("names no registry"), "{err}");
}

#[test]
fn onbuild_triggers_of_the_base_run_after_from() {
    if !can_run() {
        return;
    }
    let e = env();
    // A Docker-format config with OnBuild (the OCI types drop it, so write the blob ourselves).
    let base = e.store.load_image("base:1").unwrap();
    let config_digest: strata_types::Digest = base.manifest.config().digest().try_into().unwrap();
    let mut raw: Value =
        serde_json::from_slice(&e.store.read_blob(&config_digest).unwrap()).unwrap();
    raw["config"]["OnBuild"] = json!(["RUN echo triggered > /onbuild", "ENV FROM_TRIGGER=1"]);
    let bytes = serde_json::to_vec(&raw).unwrap();
    let put = e.store.put_blob(&bytes[..]).unwrap();
    let manifest =
        e.store.put_image_with_config(&put.digest, put.size, base.manifest.layers()).unwrap();
    e.store.tag("onbuild:1", &manifest).unwrap();
    let ctx =
        e.context("ctx", &[("Dockerfile", "FROM onbuild:1\nRUN test \"$FROM_TRIGGER\" = 1\n")]);
    let out = e.build(&ctx, &[]).unwrap();
    let root = e.flatten(&out);
    assert_eq!(std::fs::read_to_string(root.path().join("onbuild")).unwrap(), "triggered\n");
    // Triggers do not carry over to the next image.
    assert!(!e
        .store
        .read_blob(&out.image.manifest.config().digest().try_into().unwrap())
        .unwrap()
        .windows(7)
        .any(|w| w == b"OnBuild"));
}
