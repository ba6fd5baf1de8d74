//! Push and pull against a real registry (distribution's `docker-registry`), on 127.0.0.1.

mod common;

use common::registry::{registry_available, Registry, RegistryOptions};
use common::{make_image, random_bytes, small_image, tar_layer, Recorder};
use strata_registry::{
    pull, push, BlobOutcome, Client, ClientOptions, NoProgress, PullOptions, PushOptions,
    Reference, RegistryError, TransferEvent,
};
use strata_store::Store;

fn client() -> Client {
    Client::new(ClientOptions { retries: 2, ..Default::default() })
        .unwrap()
        .with_backoff(std::time::Duration::from_millis(20))
}

fn reference(reg: &Registry, repo_tag: &str) -> Reference {
    format!("{}/{repo_tag}", reg.host()).parse().unwrap()
}

#[test]
fn push_pull_round_trip_skips_present_and_mounts_across_repositories() {
    if !registry_available() {
        return;
    }
    let reg = Registry::start(RegistryOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("a")).unwrap();
    let image = small_image(&store, 1, 3);
    let client = client();
    let dest = reference(&reg, "team/app:v1");

    let report =
        push(&client, &store, &image, &dest, &PushOptions::default(), &NoProgress).unwrap();
    assert_eq!((report.uploaded, report.present, report.mounted), (4, 0, 0), "{report:?}");
    assert_eq!(report.manifest, Some(image.digest().unwrap()));
    assert_eq!(reg.uploads("team/app").len(), 4, "{}", reg.log());

    // Second push: everything is there.
    let again = push(&client, &store, &image, &dest, &PushOptions::default(), &NoProgress).unwrap();
    assert_eq!((again.uploaded, again.present, again.bytes), (0, 4, 0), "{again:?}");
    assert_eq!(reg.uploads("team/app").len(), 4);

    // Dry run to another repository predicts mounts and writes nothing.
    let other = reference(&reg, "other:v1");
    let dry = PushOptions { dry_run: true, ..Default::default() };
    let predicted = push(&client, &store, &image, &other, &dry, &NoProgress).unwrap();
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
    let pulled = pull(&client, &fresh, &dest, &PullOptions::default(), &NoProgress).unwrap();
    assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap());
    assert_eq!(pulled.source_digest, image.digest().unwrap());
    assert_eq!(pulled.report.downloaded, 4);
    assert_eq!(
        fresh.load_image(&dest.to_string()).unwrap().digest().unwrap(),
        image.digest().unwrap()
    );
    assert!(fresh.fsck(false).unwrap().is_clean());
    // Pull again: nothing moves.
    let twice = pull(&client, &fresh, &dest, &PullOptions::default(), &NoProgress).unwrap();
    assert_eq!((twice.report.present, twice.report.downloaded), (4, 0));
    // By digest, too.
    let by_digest: Reference =
        format!("{}/team/app@{}", reg.host(), image.digest().unwrap()).parse().unwrap();
    let third = Store::init(dir.path().join("c")).unwrap();
    pull(&client, &third, &by_digest, &PullOptions::default(), &NoProgress).unwrap();
    assert!(third.load_image(&by_digest.to_string()).is_ok());
}

#[test]
fn chunked_push_of_a_large_layer_round_trips() {
    if !registry_available() {
        return;
    }
    let reg = Registry::start(RegistryOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("a")).unwrap();
    let big = tar_layer(&[("big", random_bytes(7, 3 << 20))]);
    let image = make_image(&store, &[big], "big");
    // 1 MiB chunks above 1 MiB: the 3 MiB layer goes in 4 PATCHes.
    let client = client().with_chunking(1 << 20, 1 << 20);
    let dest = reference(&reg, "big:v1");
    let report =
        push(&client, &store, &image, &dest, &PushOptions::default(), &NoProgress).unwrap();
    assert_eq!(report.uploaded, 2);
    assert_eq!(reg.patches("big").len(), 4, "{}", reg.log());
    let fresh = Store::init(dir.path().join("b")).unwrap();
    let pulled = pull(&client, &fresh, &dest, &PullOptions::default(), &NoProgress).unwrap();
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
    let err =
        pull(&client, &store, &reference(&reg, "nope:v1"), &PullOptions::default(), &NoProgress)
            .unwrap_err();
    assert!(matches!(err, RegistryError::ManifestNotFound { .. }), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    let host = reg.host();
    drop(reg);
    let gone: Reference = format!("{host}/app:v1").parse().unwrap();
    let err = pull(&client, &store, &gone, &PullOptions::default(), &NoProgress).unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&host), "{err}");
    assert!(store.tags().unwrap().is_empty());
}
