//! Protocol rules checked against a recording fake registry (tests/common/fake.rs): auth
//! flows, chunking, retries, resumption, and registries that lie.

mod common;

use std::path::Path;
use std::time::Duration;

use common::fake::{Fake, FakeAuth};
use common::{make_image, random_bytes, small_image, tar_layer};
use strata_registry::{
    pull, pull_platform, push, Client, ClientOptions, NoTransferProgress, PullOptions, PushOptions,
    Reference, RegistryError,
};
use strata_store::{Image, Store};
use strata_types::Platform;
use strata_types::MEDIA_TYPE_MANIFEST;

fn client_with(auth_file: Option<&Path>, retries: u32) -> Client {
    Client::new(ClientOptions {
        retries,
        auth_file: auth_file.map(Path::to_owned),
        ..Default::default()
    })
    .unwrap()
    .with_backoff(Duration::from_millis(1))
    .with_timeout(Duration::from_secs(5))
}

fn client() -> Client {
    let none = std::env::temp_dir().join("strata-registry-test-no-credentials.json");
    client_with(Some(&none), 3)
}

fn auth_file(dir: &Path, registry: &str, user: &str, pass: &str) -> std::path::PathBuf {
    let file = dir.join("auth.json");
    strata_registry::credentials::login(registry, user, pass, Some(&file)).unwrap();
    file
}

fn at(fake: &Fake, repo_tag: &str) -> Reference {
    format!("{}/{repo_tag}", fake.host()).parse().unwrap()
}

fn store(dir: &Path, name: &str) -> Store {
    Store::init(dir.join(name)).unwrap()
}

fn push_image(client: &Client, store: &Store, image: &Image, dest: &Reference) {
    push(client, store, image, dest, &PushOptions::default(), &NoTransferProgress).unwrap();
}

/// The store holds no blob, no tag, and is consistent.
fn assert_untouched(store: &Store) {
    assert!(store.list_blobs().unwrap().is_empty(), "{:?}", store.list_blobs());
    assert!(store.tags().unwrap().is_empty());
    assert!(store.fsck(false).unwrap().is_clean());
}

#[test]
fn bearer_tokens_are_fetched_with_scope_and_credentials_then_refetched() {
    let fake = Fake::start(FakeAuth::Bearer {
        user: Some(("alice".into(), "s3cret".into())),
        expires_in: 300,
    });
    let dir = tempfile::tempdir().unwrap();
    let file = auth_file(dir.path(), &fake.host(), "alice", "s3cret");
    let client = client_with(Some(&file), 3);
    let s = store(dir.path(), "a");
    let image = small_image(&s, 1, 3);
    push_image(&client, &s, &image, &at(&fake, "team/app:v1"));

    let tokens = fake.with(|st| st.token_requests.clone());
    assert_eq!(tokens.len(), 1, "one token for the whole push: {tokens:#?}");
    let t = &tokens[0];
    assert!(t.target.contains("service=fake"), "{}", t.target);
    assert!(t.target.contains("scope=repository:team/app:pull,push"), "{}", t.target);
    assert!(t.header("authorization").is_some_and(|a| a.starts_with("Basic ")));
    // Every registry request after the first carried the token.
    let seen = fake.seen();
    let token = format!("Bearer {}", fake.with(|st| st.issued[0].clone()));
    assert!(seen[1..].iter().all(|r| r.header("authorization") == Some(token.as_str())));

    // The registry revokes (expires) the token: 401 again -> a new token, once.
    fake.expire_tokens();
    let fresh = store(dir.path(), "b");
    let pulled = pull(
        &client,
        &fresh,
        &at(&fake, "team/app:v1"),
        &PullOptions { jobs: 1, ..Default::default() },
        &NoTransferProgress,
    )
    .unwrap();
    assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap());
    let tokens = fake.with(|st| st.token_requests.clone());
    assert_eq!(tokens.len(), 2, "{tokens:#?}");
    assert!(tokens[1].target.contains("scope=repository:team/app:pull"), "{}", tokens[1].target);
    assert!(!tokens[1].target.contains("push"), "a pull asks for pull only: {}", tokens[1].target);
}

#[test]
fn tokens_are_refreshed_when_expires_in_runs_out() {
    let fake = Fake::start(FakeAuth::Bearer { user: None, expires_in: 1 });
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    let s = store(dir.path(), "a");
    let image = small_image(&s, 2, 1);
    push_image(&client, &s, &image, &at(&fake, "app:v1"));
    // Anonymous token requests carry no credentials.
    assert!(fake.with(|st| st.token_requests[0].header("authorization").is_none()));
    let before = fake.with(|st| st.token_requests.len());
    // The fake would keep accepting the old token: only the client's clock can replace it.
    std::thread::sleep(Duration::from_millis(1100));
    push_image(&client, &s, &image, &at(&fake, "app:v1"));
    let after = fake.with(|st| st.token_requests.len());
    assert!(after > before, "expired token must be replaced ({before} -> {after})");
    let newest = format!("Bearer {}", fake.with(|st| st.issued.last().cloned().unwrap()));
    assert_eq!(fake.seen().last().unwrap().header("authorization"), Some(newest.as_str()));
}

#[test]
fn refused_credentials_say_whether_any_were_sent() {
    let fake = Fake::start(FakeAuth::Basic("bob".into(), "right".into()));
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let reference = at(&fake, "app:v1");

    let err =
        pull(&client(), &s, &reference, &PullOptions::default(), &NoTransferProgress).unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { credentials_sent: false, .. }), "{err:?}");
    assert!(err.to_string().contains(&fake.host()) && err.to_string().contains("app"), "{err}");

    let wrong = auth_file(dir.path(), &fake.host(), "bob", "wrong");
    let err = pull(
        &client_with(Some(&wrong), 3),
        &s,
        &reference,
        &PullOptions::default(),
        &NoTransferProgress,
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { credentials_sent: true, .. }), "{err:?}");
    assert!(err.to_string().contains("credentials were sent"), "{err}");
    assert_untouched(&s);

    // Good credentials: Basic works, and check_login agrees.
    let right = auth_file(dir.path(), &fake.host(), "bob", "right");
    let c = client_with(Some(&right), 3);
    let image = small_image(&s, 3, 1);
    push_image(&c, &s, &image, &reference);
    client().check_login(&fake.host(), "bob", "right").unwrap();
    let err = client().check_login(&fake.host(), "bob", "nope").unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");

    // Bearer whose token service refuses the credentials.
    let bearer = Fake::start(FakeAuth::Bearer {
        user: Some(("bob".into(), "right".into())),
        expires_in: 60,
    });
    let bad = auth_file(dir.path(), &bearer.host(), "bob", "wrong");
    let err = push(
        &client_with(Some(&bad), 3),
        &s,
        &image,
        &at(&bearer, "app:v1"),
        &PushOptions::default(),
        &NoTransferProgress,
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { credentials_sent: true, .. }), "{err:?}");
}

#[test]
fn chunked_uploads_honour_the_minimum_chunk_length_and_manifest_comes_last() {
    let fake = Fake::start(FakeAuth::None);
    fake.with(|st| st.chunk_min = Some(300_000));
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let layer = random_bytes(5, 1_000_000);
    let image = make_image(&s, std::slice::from_ref(&layer), "x");
    let client = client().with_chunking(100_000, 100_000);
    push_image(&client, &s, &image, &at(&fake, "app:v1"));

    let seen = fake.seen();
    let patches: Vec<_> = seen.iter().filter(|r| r.method == "PATCH").collect();
    let ranges: Vec<_> = patches.iter().map(|r| r.header("content-range").unwrap()).collect();
    assert_eq!(ranges, ["0-299999", "300000-599999", "600000-899999", "900000-999999"]);
    assert_eq!(
        patches.iter().map(|r| r.body_len).collect::<Vec<_>>(),
        [300_000, 300_000, 300_000, 100_000]
    );
    assert!(patches.iter().all(|r| r.header("content-type") == Some("application/octet-stream")));
    // The closing PUT carries the digest and no body; the config went monolithically.
    let layer_digest = strata_types::Digest::of_bytes(&layer);
    let puts: Vec<_> =
        seen.iter().filter(|r| r.method == "PUT" && r.target.contains("/blobs/uploads/")).collect();
    assert_eq!(puts.len(), 2);
    assert!(puts
        .iter()
        .any(|r| r.target.contains(&format!("digest={layer_digest}")) && r.body_len == 0));
    assert!(puts.iter().any(|r| r.body_len > 0 && !r.target.contains(&layer_digest.to_string())));
    assert_eq!(fake.with(|st| st.blobs.get(&layer_digest.to_string()).cloned()), Some(layer));
    // The manifest PUT is the last request, with the OCI manifest type.
    let last = seen.last().unwrap();
    assert_eq!(last.method, "PUT");
    assert!(last.target.ends_with("/manifests/v1"), "{}", last.target);
    assert_eq!(last.header("content-type"), Some(MEDIA_TYPE_MANIFEST));
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times() {
    let fake = Fake::start(FakeAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let image = small_image(&s, 4, 2);
    // Two 503s are absorbed by retries.
    fake.with(|st| st.faults.unavailable = 2);
    push_image(&client(), &s, &image, &at(&fake, "app:v1"));

    // A registry that stays down: retries (3) then a clear error; 1 + 3 requests in all.
    let before = fake.seen().len();
    fake.with(|st| st.faults.unavailable = 1000);
    let fresh = store(dir.path(), "b");
    let err =
        pull(&client(), &fresh, &at(&fake, "app:v1"), &PullOptions::default(), &NoTransferProgress)
            .unwrap_err();
    assert!(matches!(err, RegistryError::UnexpectedStatus { status: 503, .. }), "{err:?}");
    assert_eq!(fake.seen().len() - before, 4);
    assert_untouched(&fresh);
}

#[test]
fn a_broken_chunked_upload_resumes_from_the_registrys_range() {
    let fake = Fake::start(FakeAuth::None);
    fake.with(|st| st.faults.break_patch = 1);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let layer = random_bytes(6, 350_000);
    let image = make_image(&s, std::slice::from_ref(&layer), "x");
    let client = client().with_chunking(100_000, 100_000);
    push_image(&client, &s, &image, &at(&fake, "app:v1"));

    let seen = fake.seen();
    let ranges: Vec<_> = seen
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.header("content-range").unwrap().to_owned())
        .collect();
    // The first PATCH broke after half its body reached the registry; the status GET said
    // 0-49999, so the next chunk starts at 50000.
    assert_eq!(ranges, ["0-99999", "50000-149999", "150000-249999", "250000-349999"]);
    assert_eq!(fake.count("GET", "/blobs/uploads/"), 1);
    let d = strata_types::Digest::of_bytes(&layer);
    assert_eq!(fake.with(|st| st.blobs.get(&d.to_string()).cloned()), Some(layer));
    // A session the registry forgot (404 on the status GET) starts over.
    let fake2 = Fake::start(FakeAuth::None);
    fake2.with(|st| st.faults.break_patch = 1);
    let image2 = make_image(&s, &[random_bytes(7, 250_000)], "y");
    let forget = std::thread::spawn({
        let state = fake2.state.clone();
        move || {
            // Drop sessions as soon as a PATCH broke.
            for _ in 0..200 {
                {
                    let mut st = state.lock().unwrap();
                    if st.faults.break_patch == 0 {
                        st.uploads.clear();
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let slow = client_with(Some(&dir.path().join("none.json")), 3)
        .with_chunking(100_000, 100_000)
        .with_backoff(Duration::from_millis(300));
    push_image(&slow, &s, &image2, &at(&fake2, "app:v2"));
    forget.join().unwrap();
    assert!(fake2.count("POST", "/blobs/uploads/") >= 2, "a new session was opened");
}

#[test]
fn a_broken_download_resumes_with_range() {
    let fake = Fake::start(FakeAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let image = make_image(&s, &[random_bytes(8, 500_000)], "x");
    push_image(&client(), &s, &image, &at(&fake, "app:v1"));

    fake.with(|st| st.faults.break_blob_get_at = Some(123_456));
    let fresh = store(dir.path(), "b");
    let opts = PullOptions { jobs: 1, ..Default::default() };
    let pulled = pull(&client(), &fresh, &at(&fake, "app:v1"), &opts, &NoTransferProgress).unwrap();
    assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap());
    let ranged: Vec<_> = fake.seen().into_iter().filter(|r| r.header("range").is_some()).collect();
    assert_eq!(ranged.len(), 1, "{ranged:#?}");
    assert_eq!(ranged[0].header("range"), Some("bytes=123456-"));
    assert!(fresh.fsck(false).unwrap().is_clean());

    // A registry that ignores Range: the download restarts from zero and still verifies.
    fake.with(|st| {
        st.faults.break_blob_get_at = Some(1000);
        st.faults.ignore_range = true;
    });
    let third = store(dir.path(), "c");
    let pulled = pull(&client(), &third, &at(&fake, "app:v1"), &opts, &NoTransferProgress).unwrap();
    assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap());
    assert!(third.fsck(false).unwrap().is_clean());
}

#[test]
fn a_lying_registry_is_refused_and_nothing_is_stored() {
    let fake = Fake::start(FakeAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let image = small_image(&s, 9, 2);
    push_image(&client(), &s, &image, &at(&fake, "app:v1"));

    // Wrong bytes for every blob.
    fake.with(|st| st.faults.corrupt_blobs = true);
    let fresh = store(dir.path(), "b");
    let err =
        pull(&client(), &fresh, &at(&fake, "app:v1"), &PullOptions::default(), &NoTransferProgress)
            .unwrap_err();
    let RegistryError::DigestMismatch { expected, .. } = &err else { panic!("{err:?}") };
    assert!(err.to_string().contains(&expected.to_string()), "{err}");
    assert_untouched(&fresh);

    // A Content-Length that is not the descriptor's size.
    fake.with(|st| {
        st.faults.corrupt_blobs = false;
        st.faults.wrong_blob_length = Some(10);
    });
    let err =
        pull(&client(), &fresh, &at(&fake, "app:v1"), &PullOptions::default(), &NoTransferProgress)
            .unwrap_err();
    assert!(matches!(err, RegistryError::SizeMismatch { found: 10, .. }), "{err:?}");
    assert_untouched(&fresh);

    // A manifest served under a digest it does not have.
    let digest = image.digest().unwrap();
    fake.with(|st| {
        st.faults.wrong_blob_length = None;
        let other = b"{\"schemaVersion\":2}".to_vec();
        st.manifests
            .insert(("app".into(), digest.to_string()), (MEDIA_TYPE_MANIFEST.into(), other));
    });
    let by_digest: Reference = format!("{}/app@{digest}", fake.host()).parse().unwrap();
    let err = pull(&client(), &fresh, &by_digest, &PullOptions::default(), &NoTransferProgress)
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { expected, .. } if expected == digest),
        "{err:?}"
    );
    assert_untouched(&fresh);
}

#[test]
fn malformed_missing_and_oversized_manifests_are_errors() {
    let fake = Fake::start(FakeAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    fake.put_manifest("app", "bad", MEDIA_TYPE_MANIFEST, b"{\"schemaVersion\":2, \"config\": ");
    let err =
        pull(&client(), &s, &at(&fake, "app:bad"), &PullOptions::default(), &NoTransferProgress)
            .unwrap_err();
    assert!(matches!(err, RegistryError::InvalidManifest { .. }), "{err:?}");

    let err = pull(
        &client(),
        &s,
        &at(&fake, "app:missing"),
        &PullOptions::default(),
        &NoTransferProgress,
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::ManifestNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("missing"), "{err}");

    let huge = format!("{{\"schemaVersion\":2,\"x\":\"{}\"}}", "a".repeat(5 << 20));
    fake.put_manifest("app", "huge", MEDIA_TYPE_MANIFEST, huge.as_bytes());
    let err =
        pull(&client(), &s, &at(&fake, "app:huge"), &PullOptions::default(), &NoTransferProgress)
            .unwrap_err();
    assert!(matches!(err, RegistryError::ManifestTooLarge { .. }), "{err:?}");
    assert_untouched(&s);
}

#[test]
fn docker_manifest_lists_resolve_to_the_platform_and_convert_to_oci() {
    let fake = Fake::start(FakeAuth::None);
    let config = br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]},"config":{},"docker_version":"24"}"#;
    let cfg = fake.put_blob("lib/app", config);
    let layer = fake.put_blob("lib/app", &random_bytes(10, 2000));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{cfg}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":2000,"digest":"{layer}"}}]}}"#,
        config.len()
    );
    let m = fake.put_manifest(
        "lib/app",
        "arm",
        "application/vnd.docker.distribution.manifest.v2+json",
        manifest.as_bytes(),
    );
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
        {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":{},"digest":"{m}","platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
        {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"sha256:{}","platform":{{"os":"windows","architecture":"amd64"}}}}]}}"#,
        manifest.len(),
        "1".repeat(64)
    );
    let list_digest = fake.put_manifest(
        "lib/app",
        "multi",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        list.as_bytes(),
    );
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let arm =
        Platform { os: "linux".into(), architecture: "arm64".into(), variant: Some("v8".into()) };
    let reference = at(&fake, "lib/app:multi");
    let pulled = pull_platform(
        &client(),
        &s,
        &reference,
        &arm,
        &PullOptions::default(),
        &NoTransferProgress,
    )
    .unwrap();
    assert_eq!(pulled.source_digest, list_digest);
    assert_ne!(pulled.image.digest().unwrap(), m, "converted manifest has its own digest");
    assert_eq!(pulled.image.manifest.config().digest().to_string(), cfg.to_string());
    assert_eq!(
        pulled.image.manifest.layers()[0].media_type().to_string(),
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(s.read_blob(&cfg).unwrap(), config.to_vec(), "config kept byte for byte");
    assert!(s.load_image(&reference.to_string()).is_ok());
    assert!(s.fsck(false).unwrap().is_clean());

    let mips = Platform { os: "linux".into(), architecture: "mips64".into(), variant: None };
    let other = store(dir.path(), "b");
    let err = pull_platform(
        &client(),
        &other,
        &reference,
        &mips,
        &PullOptions::default(),
        &NoTransferProgress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("linux/arm64/v8"), "{err}");
}

#[test]
fn redirected_blob_downloads_never_carry_credentials() {
    let storage = Fake::start(FakeAuth::None);
    let fake = Fake::start(FakeAuth::Basic("u".into(), "p".into()));
    let dir = tempfile::tempdir().unwrap();
    let file = auth_file(dir.path(), &fake.host(), "u", "p");
    let client = client_with(Some(&file), 3);
    let s = store(dir.path(), "a");
    let image = small_image(&s, 11, 2);
    push_image(&client, &s, &image, &at(&fake, "app:v1"));
    // The storage service has the same blobs; the registry redirects blob GETs there.
    let (blobs, repo_blobs) = fake.with(|st| (st.blobs.clone(), st.repo_blobs.clone()));
    storage.with(|st| {
        st.blobs = blobs;
        st.repo_blobs = repo_blobs;
    });
    fake.with(|st| {
        st.faults.redirect_blobs_to = Some(format!("http://127.0.0.1:{}", storage.port))
    });
    let fresh = store(dir.path(), "b");
    let pulled =
        pull(&client, &fresh, &at(&fake, "app:v1"), &PullOptions::default(), &NoTransferProgress)
            .unwrap();
    assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap());
    let at_storage = storage.seen();
    assert_eq!(at_storage.len(), 3, "config and two layers came from storage");
    assert!(at_storage.iter().all(|r| r.header("authorization").is_none()), "{at_storage:#?}");
}

#[test]
fn dry_runs_move_nothing() {
    let fake = Fake::start(FakeAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let image = small_image(&s, 12, 2);
    let dry = PushOptions { dry_run: true, ..Default::default() };
    let report =
        push(&client(), &s, &image, &at(&fake, "app:v1"), &dry, &NoTransferProgress).unwrap();
    assert!(report.dry_run);
    assert_eq!((report.uploaded, report.present), (3, 0));
    assert_eq!(report.bytes, report.blobs.iter().map(|b| b.size).sum::<u64>());
    assert!(
        fake.seen().iter().all(|r| r.method == "HEAD" || r.target == "/v2/"),
        "{:#?}",
        fake.seen()
    );
    assert!(fake.with(|st| st.manifests.is_empty()));

    push_image(&client(), &s, &image, &at(&fake, "app:v1"));
    let fresh = store(dir.path(), "b");
    let opts = PullOptions { dry_run: true, ..Default::default() };
    let pulled = pull(&client(), &fresh, &at(&fake, "app:v1"), &opts, &NoTransferProgress).unwrap();
    assert_eq!(pulled.report.downloaded, 3);
    assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap());
    assert_untouched(&fresh);
}

#[test]
fn push_destination_needs_a_tag_or_the_images_digest() {
    let fake = Fake::start(FakeAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let image = make_image(&s, &[tar_layer(&[("a", b"a".to_vec())])], "x");
    let untagged: Reference = format!("{}/app", fake.host()).parse().unwrap();
    let err = push(&client(), &s, &image, &untagged, &PushOptions::default(), &NoTransferProgress)
        .unwrap_err();
    assert!(matches!(err, RegistryError::InvalidDestination { .. }), "{err:?}");
    let wrong: Reference =
        format!("{}/app@sha256:{}", fake.host(), "2".repeat(64)).parse().unwrap();
    let err = push(&client(), &s, &image, &wrong, &PushOptions::default(), &NoTransferProgress)
        .unwrap_err();
    assert!(matches!(err, RegistryError::InvalidDestination { .. }), "{err:?}");
    assert!(fake.seen().is_empty());
    let by_digest: Reference =
        format!("{}/app@{}", fake.host(), image.digest().unwrap()).parse().unwrap();
    push_image(&client(), &s, &image, &by_digest);
    assert!(fake.seen().last().unwrap().target.ends_with(&image.digest().unwrap().to_string()));
}

#[test]
fn a_registry_that_stops_answering_times_out_instead_of_hanging() {
    let fake = Fake::start(FakeAuth::None);
    fake.with(|st| st.faults.stall = Some(Duration::from_secs(20)));
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let client = client_with(Some(&dir.path().join("none.json")), 1)
        .with_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = pull(&client, &s, &at(&fake, "app:v1"), &PullOptions::default(), &NoTransferProgress)
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(matches!(err, RegistryError::Stalled { .. }), "{err:?}");
    assert!(err.to_string().contains(&fake.host()), "{err}");
    assert_eq!(fake.seen().len(), 1, "a stall is not retried");
    assert_untouched(&s);
}

#[test]
fn a_declined_mount_falls_back_to_uploading_in_the_session_it_opened() {
    let fake = Fake::start(FakeAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let image = small_image(&s, 13, 1);
    push_image(&client(), &s, &image, &at(&fake, "first:v1"));
    // The registry loses the blobs of "first": it declines mounts from there (202).
    fake.with(|st| st.repo_blobs.retain(|(repo, _)| repo != "first"));
    let report = push(
        &client(),
        &s,
        &image,
        &at(&fake, "second:v1"),
        &PushOptions::default(),
        &NoTransferProgress,
    )
    .unwrap();
    assert_eq!((report.uploaded, report.mounted), (2, 0), "{report:?}");
    let seen = fake.seen();
    let posts: Vec<_> = seen
        .iter()
        .filter(|r| r.method == "POST" && r.target.starts_with("/v2/second/blobs/uploads/"))
        .collect();
    assert_eq!(posts.len(), 2, "no second session per blob: {posts:#?}");
    assert!(posts
        .iter()
        .all(|r| r.target.contains("mount=sha256:") && r.target.contains("from=first")));
    assert_eq!(fake.count("PUT", "/v2/second/blobs/uploads/"), 2);

    // Now "second" has them: a third repository mounts from the newest place seen.
    let report = push(
        &client(),
        &s,
        &image,
        &at(&fake, "third:v1"),
        &PushOptions::default(),
        &NoTransferProgress,
    )
    .unwrap();
    assert_eq!(report.mounted, 2, "{report:?}");
    assert!(report
        .blobs
        .iter()
        .all(|b| b.outcome == strata_registry::BlobOutcome::Mounted { from: "second".into() }));
    assert_eq!(fake.count("PUT", "/v2/third/blobs/uploads/"), 0);
}

#[test]
fn mounts_ask_for_pull_access_to_the_source_repository() {
    let fake = Fake::start(FakeAuth::Bearer { user: None, expires_in: 300 });
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let image = small_image(&s, 14, 1);
    let client = client();
    push_image(&client, &s, &image, &at(&fake, "src/app:v1"));
    let report = push(
        &client,
        &s,
        &image,
        &at(&fake, "dst/app:v1"),
        &PushOptions::default(),
        &NoTransferProgress,
    )
    .unwrap();
    assert_eq!(report.mounted, 2);
    let tokens = fake.with(|st| st.token_requests.clone());
    assert!(
        tokens.iter().any(|t| t.target.contains("scope=repository:dst/app:pull,push")
            && t.target.contains("scope=repository:src/app:pull")),
        "{tokens:#?}"
    );
}

/// Flips the first byte of the blob file `digest` names (same size: only a re-hash tells).
fn rot(store: &Store, digest: &strata_types::Digest) {
    let path = store.root().join("blobs/sha256").join(digest.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn a_rotten_blob_is_refused_before_a_byte_of_it_is_sent() {
    let fake = Fake::start(FakeAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let image = make_image(&s, &[random_bytes(14, 5000), random_bytes(15, 5000)], "x");
    // The store's copy of the last layer rots after the image was written.
    let layer = image.layer_digests().unwrap()[1];
    rot(&s, &layer);
    let err = push(
        &client(),
        &s,
        &image,
        &at(&fake, "app:v1"),
        &PushOptions::default(),
        &NoTransferProgress,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            strata_registry::RegistryError::Store(strata_store::StoreError::DigestMismatch {
                expected,
                ..
            }) if expected == layer
        ),
        "{err}"
    );
    // Every blob to upload is verified before the first upload starts: not the config, not
    // the sound layer, not a session is opened (spec.md "Pushing blobs": POST, then PUT).
    assert_eq!(fake.count("POST", "/blobs/uploads/"), 0, "{:#?}", fake.seen());
    assert_eq!(fake.count("PUT", "/blobs/uploads/"), 0);
    assert!(fake.with(|st| st.blobs.is_empty()), "no blob of the image reached the registry");
    assert!(fake.with(|st| st.manifests.is_empty()), "no manifest without its blobs");
}

/// Flips the last byte of a blob at its first progress report: after the push verified it,
/// while its upload is under way (the bytes read so far were sound).
struct RotMidway<'a> {
    store: &'a Store,
    digest: strata_types::Digest,
    done: std::sync::atomic::AtomicBool,
}

impl strata_registry::TransferSink for RotMidway<'_> {
    fn event(&self, event: &strata_registry::TransferEvent) {
        use std::sync::atomic::Ordering;
        if let strata_registry::TransferEvent::BlobProgress { digest, .. } = event {
            if *digest == self.digest && !self.done.swap(true, Ordering::SeqCst) {
                let path = self.store.root().join("blobs/sha256").join(digest.hex());
                let mut bytes = std::fs::read(&path).unwrap();
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
                std::fs::write(&path, bytes).unwrap();
            }
        }
    }
}

#[test]
fn a_blob_that_changes_during_its_upload_is_never_committed() {
    // One monolithic PUT, or PATCH chunks and a closing PUT (spec.md "Pushing a blob in
    // chunks"): either way the bytes are hashed as they are read for sending, and the read
    // that would hand over the last of them fails instead, so no request that commits the
    // blob (`?digest=`) reaches the registry and the error names the blob.
    let size = 3 << 20; // progress is reported per MiB
    for (monolithic_max, chunk) in [(1 << 30, 1 << 30), (0, 256 << 10)] {
        let fake = Fake::start(FakeAuth::None);
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "a");
        let image = make_image(&s, &[random_bytes(16, size)], "x");
        let layer = image.layer_digests().unwrap()[0];
        let sink = RotMidway { store: &s, digest: layer, done: Default::default() };
        let client = client().with_chunking(monolithic_max, chunk);
        let err = push(&client, &s, &image, &at(&fake, "app:v1"), &PushOptions::default(), &sink)
            .unwrap_err();
        assert!(sink.done.load(std::sync::atomic::Ordering::SeqCst), "chunk {chunk}");
        assert!(
            matches!(
                err,
                strata_registry::RegistryError::Store(strata_store::StoreError::DigestMismatch {
                    expected,
                    ..
                }) if expected == layer
            ),
            "chunk {chunk}: {err}"
        );
        let committed = format!("digest={layer}");
        assert!(
            !fake.seen().iter().any(|r| r.target.contains(&committed)),
            "chunk {chunk}: the changed blob was committed: {:#?}",
            fake.seen().iter().map(|r| (&r.method, &r.target)).collect::<Vec<_>>()
        );
        assert!(!fake.with(|st| st.blobs.contains_key(&layer.to_string())), "chunk {chunk}");
        assert!(fake.with(|st| st.manifests.is_empty()), "chunk {chunk}");
    }
}

#[test]
fn a_blob_the_registry_has_is_not_read_so_its_rot_stops_nothing() {
    let fake = Fake::start(FakeAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let image = small_image(&s, 17, 2);
    push_image(&client(), &s, &image, &at(&fake, "app:v1"));
    let layer = image.layer_digests().unwrap()[0];
    rot(&s, &layer);
    // The registry holds the layer's true bytes (it checked them against the digest when
    // they were pushed): a push that sends nothing of it succeeds, as skopeo's would.
    let report = push(
        &client(),
        &s,
        &image,
        &at(&fake, "app:v2"),
        &PushOptions::default(),
        &NoTransferProgress,
    )
    .unwrap();
    assert_eq!((report.present, report.uploaded), (3, 0), "{report:?}");
    // Nor is a blob another repository of the registry holds: it is mounted, moving no bytes.
    let report = push(
        &client(),
        &s,
        &image,
        &at(&fake, "other:v1"),
        &PushOptions::default(),
        &NoTransferProgress,
    )
    .unwrap();
    assert_eq!((report.mounted, report.uploaded), (3, 0), "{report:?}");
    assert_eq!(fake.count("PUT", "/v2/other/blobs/uploads/"), 0);
    // A registry without it needs the bytes: refused before anything is sent there.
    let empty = Fake::start(FakeAuth::None);
    let err = push(
        &client(),
        &s,
        &image,
        &at(&empty, "app:v1"),
        &PushOptions::default(),
        &NoTransferProgress,
    )
    .unwrap_err();
    assert!(err.to_string().contains(&layer.to_string()), "{err}");
    assert!(empty.with(|st| st.blobs.is_empty()), "a blob was sent before the refusal");
}

#[test]
fn identity_tokens_are_exchanged_with_a_posted_form() {
    let fake = Fake::start(FakeAuth::Bearer { user: None, expires_in: 300 });
    fake.with(|st| st.refresh_token = Some("refresh-me".into()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    let config =
        format!(r#"{{"auths":{{"{}":{{"auth":"","identitytoken":"refresh-me"}}}}}}"#, fake.host());
    std::fs::write(&file, config).unwrap();
    let s = store(dir.path(), "a");
    let image = small_image(&s, 16, 1);
    push_image(&client_with(Some(&file), 3), &s, &image, &at(&fake, "app:v1"));
    let forms = fake.with(|st| st.token_forms.clone());
    assert_eq!(forms.len(), 1, "{forms:?}");
    assert!(forms[0].contains("scope=repository:app:pull,push"), "{}", forms[0]);
    assert!(
        forms[0].contains("service=fake") && forms[0].contains("client_id=strata"),
        "{}",
        forms[0]
    );
    assert!(fake.with(|st| st.token_requests.iter().all(|r| r.method == "POST")));
}

#[test]
fn an_upload_that_keeps_breaking_gives_up_and_cancels_its_session() {
    let fake = Fake::start(FakeAuth::None);
    fake.with(|st| st.faults.break_patch = 1000);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let image = make_image(&s, &[random_bytes(17, 300_000)], "x");
    let client =
        client_with(Some(&dir.path().join("none.json")), 2).with_chunking(100_000, 100_000);
    let err = push(
        &client,
        &s,
        &image,
        &at(&fake, "app:v1"),
        &PushOptions::default(),
        &NoTransferProgress,
    )
    .unwrap_err();
    let layer = image.layer_digests().unwrap()[0];
    assert!(
        matches!(&err, RegistryError::UploadFailed { attempts: 3, digest, .. } if *digest == layer),
        "{err:?}"
    );
    assert!(err.to_string().contains(&layer.to_string()), "{err}");
    assert_eq!(fake.count("PATCH", "/blobs/uploads/"), 3, "one try and two resumptions");
    assert_eq!(fake.count("DELETE", "/blobs/uploads/"), 1, "the session is cancelled");
    assert!(fake.with(|st| st.uploads.is_empty() && st.manifests.is_empty()));
}

#[test]
fn a_forbidden_push_names_the_repository_and_stops() {
    let fake = Fake::start(FakeAuth::None);
    fake.with(|st| st.faults.forbid_writes = true);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let image = small_image(&s, 18, 2);
    let err = push(
        &client(),
        &s,
        &image,
        &at(&fake, "team/locked:v1"),
        &PushOptions { jobs: 1, ..Default::default() },
        &NoTransferProgress,
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::Denied { credentials_sent: false, .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("team/locked") && text.contains(&fake.host()) && text.contains("403"),
        "{text}"
    );
    assert_eq!(fake.count("POST", "/blobs/uploads/"), 1, "no retries of a 403, no further blobs");
}

#[test]
fn chunk_boundaries_are_exact_for_every_size() {
    let fake = Fake::start(FakeAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let sizes = [0usize, 1, 99_999, 100_000, 100_001, 250_000];
    let layers: Vec<Vec<u8>> =
        sizes.iter().enumerate().map(|(i, n)| random_bytes(100 + i as u64, *n)).collect();
    let image = make_image(&s, &layers, "sizes");
    // Everything chunked (threshold 0), 100 kB chunks.
    let client = client().with_chunking(0, 100_000);
    push_image(&client, &s, &image, &at(&fake, "app:v1"));
    for layer in &layers {
        let d = strata_types::Digest::of_bytes(layer);
        assert_eq!(fake.with(|st| st.blobs.get(&d.to_string()).cloned()).as_ref(), Some(layer));
    }
    let patches: Vec<usize> =
        fake.seen().iter().filter(|r| r.method == "PATCH").map(|r| r.body_len).collect();
    let expected_chunks: usize = sizes.iter().map(|n| n.div_ceil(100_000)).sum::<usize>() + 1; // + config
    assert_eq!(patches.len(), expected_chunks, "{patches:?}");
    assert!(patches.iter().all(|n| *n > 0 && *n <= 100_000));
    let fresh = store(dir.path(), "b");
    let pulled =
        pull(&client, &fresh, &at(&fake, "app:v1"), &PullOptions::default(), &NoTransferProgress)
            .unwrap();
    assert_eq!(pulled.image.digest().unwrap(), image.digest().unwrap());
    assert!(fresh.fsck(false).unwrap().is_clean());
}

#[test]
fn a_gc_during_a_pull_cannot_sweep_the_blobs_it_downloaded() {
    let fake = Fake::start(FakeAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let image = small_image(&s, 19, 2);
    push_image(&client(), &s, &image, &at(&fake, "app:v1"));

    // A separate handle (another process, in effect) runs gc while the pull has downloaded
    // blobs that nothing references yet.
    struct GcOnFirstBlob {
        root: std::path::PathBuf,
        results: std::sync::Mutex<Vec<Result<strata_store::GcReport, strata_store::StoreError>>>,
    }
    impl strata_registry::TransferSink for GcOnFirstBlob {
        fn event(&self, event: &strata_registry::TransferEvent) {
            if let strata_registry::TransferEvent::BlobDone { .. } = event {
                let mut results = self.results.lock().unwrap();
                if results.is_empty() {
                    results.push(Store::open(&self.root).unwrap().gc(&[]));
                }
            }
        }
    }
    let root = dir.path().join("b");
    let fresh = Store::init(&root).unwrap();
    let sink = GcOnFirstBlob { root, results: Default::default() };
    let opts = PullOptions { jobs: 1, ..Default::default() };
    pull(&client(), &fresh, &at(&fake, "app:v1"), &opts, &sink).unwrap();
    let results = sink.results.into_inner().unwrap();
    // gc ran beside the pull (no "store in use") and kept what the pull's lease names.
    let [Ok(report)] = &results[..] else { panic!("{results:?}") };
    assert!(report.removed.is_empty() && report.leases_live == 1, "{report:?}");
    assert!(fresh.fsck(false).unwrap().is_clean());
    assert!(fresh.load_image(&at(&fake, "app:v1").to_string()).is_ok());
}

#[test]
fn blob_hints_live_in_the_main_store_and_feed_scratch_pulls() {
    let fake = Fake::start(FakeAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let main = store(dir.path(), "main");
    let image = small_image(&main, 20, 2);
    let client = client().with_blob_hints(main.clone());
    push_image(&client, &main, &image, &at(&fake, "app:v1"));

    // Pulling into a scratch layout copies what the main store has: nothing downloaded.
    let scratch = store(dir.path(), "scratch");
    let gets_before = fake.count("GET", "/blobs/sha256:");
    let pulled =
        pull(&client, &scratch, &at(&fake, "app:v1"), &PullOptions::default(), &NoTransferProgress)
            .unwrap();
    assert_eq!((pulled.report.present, pulled.report.downloaded), (3, 0), "{:?}", pulled.report);
    assert_eq!(fake.count("GET", "/blobs/sha256:"), gets_before);
    assert!(scratch.fsck(false).unwrap().is_clean());

    // Pushing from the scratch layout to another repository mounts, thanks to the main
    // store's records; the scratch layout itself learns nothing.
    let report = push(
        &client,
        &scratch,
        &pulled.image,
        &at(&fake, "other:v1"),
        &PushOptions::default(),
        &NoTransferProgress,
    )
    .unwrap();
    assert_eq!(report.mounted, 3, "{report:?}");
    for layer in image.layer_digests().unwrap() {
        assert!(scratch.blob_locations(&layer).is_empty());
        assert!(!main.blob_locations(&layer).is_empty());
    }
}
