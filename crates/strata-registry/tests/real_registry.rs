//! Push and pull against a real registry (distribution's `docker-registry`), on 127.0.0.1.

mod common;

use common::registry::{registry_available, Registry, RegistryOptions};
use common::{
    client, make_image, random_bytes, reference, skopeo_ok, small_image, started_registry,
    tar_layer, Recorder,
};
use strata_registry::{
    pull, push, BlobOutcome, Client, ClientOptions, NoTransferProgress, PullOptions, PushOptions,
    Reference, RegistryError, TransferEvent,
};
use strata_store::Store;

#[test]
fn push_pull_round_trip_skips_present_and_mounts_across_repositories() {
    let Some((reg, dir, store)) = started_registry() else { return };
    let image = small_image(&store, 1, 3);
    let client = client();
    let dest = reference(&reg, "team/app:v1");

    let report =
        push(&client, &store, &image, &dest, &PushOptions::default(), &NoTransferProgress).unwrap();
    assert_eq!((report.uploaded, report.present, report.mounted), (4, 0, 0), "{report:?}");
    assert_eq!(report.manifest, Some(image.digest().unwrap()));
    assert_eq!(reg.uploads("team/app").len(), 4, "{}", reg.log());

    // Second push: everything is there.
    let again =
        push(&client, &store, &image, &dest, &PushOptions::default(), &NoTransferProgress).unwrap();
    assert_eq!((again.uploaded, again.present, again.bytes), (0, 4, 0), "{again:?}");
    assert_eq!(reg.uploads("team/app").len(), 4);

    // Dry run to another repository predicts mounts and writes nothing.
    let other = reference(&reg, "other:v1");
    let dry = PushOptions { dry_run: true, ..Default::default() };
    let predicted = push(&client, &store, &image, &other, &dry, &NoTransferProgress).unwrap();
    assert!(predicted.dry_run);
    assert_eq!(predicted.mounted, 4, "{predicted:?}");
    assert!(reg.mounts("other").is_empty());

    // Another repository of the same registry: blobs are mounted, not uploaded.
    let events = Recorder::default();
    let mounted = push(&client, &store, &image, &other, &PushOptions::default(), &events).unwrap();
    assert_eq!((mounted.mounted, mounted.uploaded, mounted.bytes), (4, 0, 0), "{mounted:?}");
    assert!(mounted
        .blobs
        .iter()
        .all(|b| b.outcome == BlobOutcome::Mounted { from: "team/app".to_owned() }));
    assert_eq!(reg.mounts("other").len(), 4, "{}", reg.log());
    assert!(reg.uploads("other").is_empty() && reg.patches("other").is_empty());
    assert!(events.0.lock().unwrap().iter().any(|e| matches!(e, TransferEvent::Manifest { .. })));

    // Pull into a fresh store: same manifest digest, tagged with the full reference, fsck clean.
    let fresh = Store::init(dir.path().join("b")).unwrap();
    let pulled =
        pull(&client, &fresh, &dest, &PullOptions::default(), &NoTransferProgress).unwrap();
    assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap());
    assert_eq!(pulled.source_digest, image.digest().unwrap());
    assert_eq!(pulled.report.downloaded, 4);
    assert_eq!(
        fresh.load_image(&dest.to_string()).unwrap().digest().unwrap(),
        image.digest().unwrap()
    );
    assert!(fresh.fsck(false).unwrap().is_clean());
    // Pull again: nothing moves.
    let twice = pull(&client, &fresh, &dest, &PullOptions::default(), &NoTransferProgress).unwrap();
    assert_eq!((twice.report.present, twice.report.downloaded), (4, 0));
    // By digest, too.
    let by_digest: Reference =
        format!("{}/team/app@{}", reg.host(), image.digest().unwrap()).parse().unwrap();
    let third = Store::init(dir.path().join("c")).unwrap();
    pull(&client, &third, &by_digest, &PullOptions::default(), &NoTransferProgress).unwrap();
    assert!(third.load_image(&by_digest.to_string()).is_ok());
}

#[test]
fn chunked_push_of_a_large_layer_round_trips() {
    let Some((reg, dir, store)) = started_registry() else { return };
    let big = tar_layer(&[("big", random_bytes(7, 3 << 20))]);
    let image = make_image(&store, &[big], "big");
    // 1 MiB chunks above 1 MiB: the 3 MiB layer goes in 4 PATCHes.
    let client = client().with_chunking(1 << 20, 1 << 20);
    let dest = reference(&reg, "big:v1");
    let report =
        push(&client, &store, &image, &dest, &PushOptions::default(), &NoTransferProgress).unwrap();
    assert_eq!(report.uploaded, 2);
    assert_eq!(reg.patches("big").len(), 4, "{}", reg.log());
    let fresh = Store::init(dir.path().join("b")).unwrap();
    let pulled =
        pull(&client, &fresh, &dest, &PullOptions::default(), &NoTransferProgress).unwrap();
    assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap());
    assert!(fresh.fsck(false).unwrap().is_clean());
}

#[test]
fn missing_manifest_and_unreachable_registry_are_clear_errors() {
    if !registry_available() {
        return;
    }
    let reg = Registry::start(RegistryOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let client = client();
    let err = pull(
        &client,
        &store,
        &reference(&reg, "nope:v1"),
        &PullOptions::default(),
        &NoTransferProgress,
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::ManifestNotFound { .. }), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    let host = reg.host();
    drop(reg);
    let gone: Reference = format!("{host}/app:v1").parse().unwrap();
    let err =
        pull(&client, &store, &gone, &PullOptions::default(), &NoTransferProgress).unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&host), "{err}");
    assert!(store.tags().unwrap().is_empty());
}

#[test]
fn htpasswd_basic_auth_good_and_bad_passwords() {
    if !registry_available() {
        return;
    }
    let reg =
        Registry::start(RegistryOptions { htpasswd: Some(("tester".into(), "good pw".into())) });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("a")).unwrap();
    let image = small_image(&store, 21, 2);
    let dest = reference(&reg, "private:v1");
    let with = |user: &str, pass: &str| {
        let file = dir.path().join(format!("{user}-{}.json", pass.len()));
        strata_registry::credentials::login(&reg.host(), user, pass, Some(&file)).unwrap();
        Client::new(ClientOptions { auth_file: Some(file), retries: 1, ..Default::default() })
            .unwrap()
    };
    let anonymous = Client::new(ClientOptions {
        auth_file: Some(dir.path().join("none.json")),
        ..Default::default()
    })
    .unwrap();

    let err = push(&anonymous, &store, &image, &dest, &PushOptions::default(), &NoTransferProgress)
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { credentials_sent: false, .. }), "{err}");
    let err = push(
        &with("tester", "bad"),
        &store,
        &image,
        &dest,
        &PushOptions::default(),
        &NoTransferProgress,
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { credentials_sent: true, .. }), "{err}");
    assert!(err.to_string().contains(&reg.host()) && err.to_string().contains("private"), "{err}");
    assert!(anonymous.check_login(&reg.host(), "tester", "bad").is_err());
    anonymous.check_login(&reg.host(), "tester", "good pw").unwrap();

    let good = with("tester", "good pw");
    let report =
        push(&good, &store, &image, &dest, &PushOptions::default(), &NoTransferProgress).unwrap();
    assert_eq!(report.uploaded, 3);

    let fresh = Store::init(dir.path().join("b")).unwrap();
    let err =
        pull(&with("tester", "bad"), &fresh, &dest, &PullOptions::default(), &NoTransferProgress)
            .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(fresh.tags().unwrap().is_empty() && fresh.list_blobs().unwrap().is_empty());
    let pulled = pull(&good, &fresh, &dest, &PullOptions::default(), &NoTransferProgress).unwrap();
    assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap());
}

#[test]
fn a_blob_corrupted_on_the_registrys_disk_is_refused_on_pull() {
    let Some((reg, dir, store)) = started_registry() else { return };
    let image = small_image(&store, 31, 2);
    let dest = reference(&reg, "app:v1");
    push(&client(), &store, &image, &dest, &PushOptions::default(), &NoTransferProgress).unwrap();

    let victim = image.layer_digests().unwrap()[1];
    let path = reg.blob_data_path(&victim.to_string());
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();

    let fresh = Store::init(dir.path().join("b")).unwrap();
    let err =
        pull(&client(), &fresh, &dest, &PullOptions::default(), &NoTransferProgress).unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { expected, .. } if expected == victim),
        "{err:?}"
    );
    assert!(err.to_string().contains(&victim.to_string()), "{err}");
    assert!(!fresh.has_blob(&victim));
    assert!(fresh.tags().unwrap().is_empty());
    assert!(fresh.fsck(false).unwrap().is_clean());
}

#[test]
fn a_registry_killed_mid_push_then_restarted_takes_the_next_push() {
    let Some((reg, dir, store)) = started_registry() else { return };
    let big = tar_layer(&[("big.bin", random_bytes(41, 24 << 20))]);
    let image = make_image(&store, &[tar_layer(&[("small", b"x".to_vec())]), big], "big");
    let big_digest = image.layer_digests().unwrap()[1];
    let client = client().with_chunking(4 << 20, 4 << 20);
    let dest = reference(&reg, "app:v1");

    // Kill the registry from inside the upload, on the first progress of the big layer: the
    // request in flight cannot complete.
    struct KillOnProgress<'a>(&'a Registry, strata_types::Digest);
    impl strata_registry::TransferSink for KillOnProgress<'_> {
        fn event(&self, event: &TransferEvent) {
            if let TransferEvent::BlobProgress { digest, done } = event {
                if *digest == self.1 && *done > 0 {
                    self.0.kill();
                }
            }
        }
    }
    let err = push(
        &client,
        &store,
        &image,
        &dest,
        &PushOptions::default(),
        &KillOnProgress(&reg, big_digest),
    )
    .unwrap_err();
    assert!(err.to_string().contains(&reg.host()), "{err}");
    assert!(
        matches!(
            err,
            RegistryError::Unreachable { .. }
                | RegistryError::UploadFailed { .. }
                | RegistryError::Transport { .. }
        ),
        "{err:?}"
    );
    assert!(store.fsck(false).unwrap().is_clean());

    reg.restart();
    let report =
        push(&client, &store, &image, &dest, &PushOptions::default(), &NoTransferProgress).unwrap();
    assert_eq!(report.manifest, Some(image.digest().unwrap()));
    assert!(report
        .blobs
        .iter()
        .any(|b| b.digest == big_digest && b.outcome == BlobOutcome::Uploaded));
    let fresh = Store::init(dir.path().join("b")).unwrap();
    let pulled =
        pull(&client, &fresh, &dest, &PullOptions::default(), &NoTransferProgress).unwrap();
    assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap());
    assert!(fresh.fsck(false).unwrap().is_clean());
}

#[test]
fn skopeo_reads_what_we_push_and_we_pull_what_skopeo_pushes() {
    if !registry_available() || !common::have_tool("skopeo") {
        return;
    }
    let reg = Registry::start(RegistryOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("a")).unwrap();
    let image = small_image(&store, 51, 2);
    let digest = image.digest().unwrap();
    let dest = reference(&reg, "ours:v1");
    push(&client(), &store, &image, &dest, &PushOptions::default(), &NoTransferProgress).unwrap();

    let docker_ref = format!("docker://{dest}");
    let inspected = skopeo_ok(&["inspect", "--tls-verify=false", &docker_ref]);
    let json: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(json["Digest"], digest.to_string(), "{inspected}");
    assert_eq!(json["Layers"].as_array().unwrap().len(), 2);
    let layout = dir.path().join("skopeo-oci");
    let oci_ref = format!("oci:{}:copied", layout.display());
    skopeo_ok(&["copy", "--preserve-digests", "--src-tls-verify=false", &docker_ref, &oci_ref]);
    let index = std::fs::read_to_string(layout.join("index.json")).unwrap();
    assert!(index.contains(&digest.to_string()), "skopeo kept the manifest as is: {index}");
    let copied = skopeo_ok(&["inspect", &oci_ref]);
    for layer in image.layer_digests().unwrap() {
        assert!(copied.contains(&layer.to_string()), "{copied}");
    }

    // skopeo pushes from our store (an OCI layout) to the registry; we pull it back.
    store.tag("sk:v1", &image.manifest_descriptor).unwrap();
    let theirs = reference(&reg, "theirs:v1");
    let src = format!("oci:{}:sk:v1", store.root().display());
    skopeo_ok(&["copy", "--dest-tls-verify=false", &src, &format!("docker://{theirs}")]);
    let fresh = Store::init(dir.path().join("b")).unwrap();
    let pulled =
        pull(&client(), &fresh, &theirs, &PullOptions::default(), &NoTransferProgress).unwrap();
    let manifest_bytes = fresh.read_blob(&pulled.image.digest().unwrap()).unwrap();
    assert!(!manifest_bytes.is_empty());
    assert_eq!(pulled.image.layer_digests().unwrap(), image.layer_digests().unwrap());
    assert!(fresh.fsck(false).unwrap().is_clean());
}

/// A non-loopback IPv4 address of this host, if it has one.
fn outward_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connect() on UDP only picks the route and so the source address.
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn non_loopback_registries_get_https_unless_listed_as_insecure() {
    if !registry_available() {
        return;
    }
    let Some(ip) = outward_ip() else {
        eprintln!("skipping: this host has no non-loopback IPv4 address");
        return;
    };
    let reg = Registry::start_on(RegistryOptions::default(), ip);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("a")).unwrap();
    let image = small_image(&store, 61, 1);
    let dest = reference(&reg, "app:v1");

    // Not listed: the client speaks TLS to a plain-HTTP server and fails, quickly and clearly.
    let started = std::time::Instant::now();
    let err = push(&client(), &store, &image, &dest, &PushOptions::default(), &NoTransferProgress)
        .unwrap_err();
    assert!(matches!(err, RegistryError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("insecure"), "the error says what to do: {err}");
    let text = format!("{err}");
    assert!(text.contains(&reg.host()) && text.contains("https://"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(reg.log().lines().all(|l| !l.contains("\"PUT ")));

    // Listed as insecure (by host alone): the TLS probe fails, so plain HTTP; the round trip
    // works.
    let insecure = Client::new(ClientOptions {
        insecure: vec![ip.to_string()],
        retries: 1,
        ..Default::default()
    })
    .unwrap();
    push(&insecure, &store, &image, &dest, &PushOptions::default(), &NoTransferProgress).unwrap();
    let fresh = Store::init(dir.path().join("b")).unwrap();
    let pulled =
        pull(&insecure, &fresh, &dest, &PullOptions::default(), &NoTransferProgress).unwrap();
    assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap());

    // `*` lists every registry.
    let everything =
        Client::new(ClientOptions { insecure: vec!["*".into()], ..Default::default() }).unwrap();
    let again = Store::init(dir.path().join("c")).unwrap();
    pull(&everything, &again, &dest, &PullOptions::default(), &NoTransferProgress).unwrap();
}

#[test]
fn https_registries_are_verified_against_trusted_roots() {
    if !registry_available() {
        return;
    }
    let Some(ip) = outward_ip() else {
        eprintln!("skipping: this host has no non-loopback IPv4 address");
        return;
    };
    let Some(reg) = Registry::start_tls_on(RegistryOptions::default(), ip) else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("a")).unwrap();
    let image = small_image(&store, 71, 2);
    let dest = reference(&reg, "secure:v1");

    // The test CA is not trusted by default: a TLS error naming the registry, not retried.
    let err = push(&client(), &store, &image, &dest, &PushOptions::default(), &NoTransferProgress)
        .unwrap_err();
    assert!(matches!(err, RegistryError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains(&reg.host()), "{err}");
    let chain = format!("{:?}", std::error::Error::source(&err));
    assert!(chain.contains("UnknownIssuer"), "{chain}");

    // Trusting it: push and pull over HTTPS.
    let trusting = client().with_ca_file(&reg.ca_path()).unwrap();
    let report =
        push(&trusting, &store, &image, &dest, &PushOptions::default(), &NoTransferProgress)
            .unwrap();
    assert_eq!(report.uploaded, 3);
    let fresh = Store::init(dir.path().join("b")).unwrap();
    let pulled =
        pull(&trusting, &fresh, &dest, &PullOptions::default(), &NoTransferProgress).unwrap();
    assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap());
    assert_eq!(reg.uploads("secure").len(), 3, "{}", reg.log());

    // Listed as insecure: HTTPS without certificate checks (not plain HTTP, which this
    // registry does not speak).
    let insecure =
        Client::new(ClientOptions { insecure: vec![reg.host()], retries: 1, ..Default::default() })
            .unwrap();
    let other = reference(&reg, "unverified:v1");
    push(&insecure, &store, &image, &other, &PushOptions::default(), &NoTransferProgress).unwrap();
    let third = Store::init(dir.path().join("c")).unwrap();
    let pulled =
        pull(&insecure, &third, &other, &PullOptions::default(), &NoTransferProgress).unwrap();
    assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap());

    // A file without certificates is refused with its path.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let err = client().with_ca_file(&junk).unwrap_err();
    assert!(err.to_string().contains("junk.pem"), "{err}");
}
