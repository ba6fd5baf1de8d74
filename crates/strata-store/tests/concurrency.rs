//! Several processes writing blobs and tags into one store at once.
//!
//! The parent test re-executes this test binary, running only `child_writer` with the store
//! path in the environment; without that variable `child_writer` does nothing.

mod common;

use std::process::Command;

use common::{config, put_layer};
use strata_store::Store;

const ROOT_VAR: &str = "STRATA_STORE_TEST_CHILD_ROOT";
const ID_VAR: &str = "STRATA_STORE_TEST_CHILD_ID";
const CHILDREN: usize = 6;
const ROUNDS: usize = 15;

/// Shared content every child writes: a big-ish blob, so renames of the same digest overlap.
fn shared_blob() -> Vec<u8> {
    (0..2_000_000u32).map(|i| (i % 251) as u8).collect()
}

#[test]
fn child_writer() {
    let (Some(root), Some(id)) = (std::env::var_os(ROOT_VAR), std::env::var_os(ID_VAR)) else {
        return; // not a child: nothing to do
    };
    let id = id.to_str().unwrap();
    // Racing `init`s on a store that may not exist yet.
    let store = Store::init(&root).unwrap();
    let shared = shared_blob();
    for round in 0..ROUNDS {
        let put = store.put_blob(shared.as_slice()).unwrap();
        assert_eq!(put.size, shared.len() as u64);
        let (layer, diff_id) = put_layer(&store, format!("layer of {id} round {round}").as_bytes());
        let (common_layer, common_diff) = put_layer(&store, b"common layer");
        let manifest = store
            .put_image(
                &config(&[common_diff, diff_id], &format!("{id}-{round}")),
                &[common_layer, layer],
            )
            .unwrap();
        store.tag(&format!("child{id}:v{round}"), &manifest).unwrap();
        store.tag("shared:latest", &manifest).unwrap();
    }
}

#[test]
fn processes_write_the_same_store_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|i| {
            Command::new(&exe)
                .args(["--exact", "child_writer", "--test-threads=1", "--nocapture"])
                .env(ROOT_VAR, &root)
                .env(ID_VAR, i.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a child writer failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = Store::open(&root).unwrap();
    let report = store.fsck(false).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let tags: Vec<String> = store.tags().unwrap().into_iter().map(|(n, _)| n).collect();
    for i in 0..CHILDREN {
        for round in 0..ROUNDS {
            let name = format!("child{i}:v{round}");
            assert!(tags.contains(&name), "lost tag {name}");
        }
    }
    assert!(tags.contains(&"shared:latest".to_owned()));
    assert_eq!(tags.len(), CHILDREN * ROUNDS + 1, "duplicate tag entries: {tags:?}");
    // shared:latest is one of the children's last images.
    let last = store.load_image("shared").unwrap();
    assert!(last.config.config().as_ref().unwrap().cmd().as_ref().unwrap()[0]
        .ends_with(&format!("-{}", ROUNDS - 1)));
    // Every temp file was cleaned up; dedup kept one copy of the shared blobs:
    // per child and round: one layer, one config, one manifest; plus shared + common layer.
    assert_eq!(common::count(&common::layout::tmp_dir(&store)), 0);
    assert_eq!(store.list_blobs().unwrap().len(), CHILDREN * ROUNDS * 3 + 2);
}
