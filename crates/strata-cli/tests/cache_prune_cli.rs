//! `strata cache ls|prune` and `strata gc --keep-storage`: the local build cache listed,
//! trimmed by age and by an exact byte cap (issue #13 point 5). COPY-only recipes: no root.

mod common;

use std::fs;
use std::path::Path;

use common::{counts, strata, TempRoot};

fn ok(store: &Path, args: &[&str]) -> String {
    let out = strata(store, args);
    assert!(
        out.status.success(),
        "strata {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn usage(store: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(store, &["cache", "ls", "--json"])).unwrap()
}

/// Pseudo-random bytes (incompressible, so a layer is about as big as its file).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn cache_ls_prune_and_gc_keep_storage() {
    let dir = TempRoot::new();
    let store = dir.path("store");
    // A fresh machine has an empty cache, not an error.
    let empty = usage(&store);
    assert_eq!(empty["entries"], serde_json::json!([]));

    let ctx = dir.path("ctx");
    fs::create_dir_all(&ctx).unwrap();
    for (i, name) in ["a.bin", "b.bin", "c.bin"].iter().enumerate() {
        fs::write(ctx.join(name), noise(i as u64 + 1, 300 * 1024)).unwrap();
    }
    fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY a.bin /\nCOPY b.bin /\nCOPY c.bin /\n")
        .unwrap();
    let c = ctx.to_str().unwrap();
    let out = ok(&store, &["build", "--progress", "plain", "-t", "app:1", c]);
    assert_eq!(counts(&out), (0, 3), "{out}");

    // Three entries, every layer held by app:1: nothing to free.
    let u = usage(&store);
    let entries = u["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{u:#}");
    assert!(entries.iter().all(|e| e["in_image"] == true && e["kind"] == "copy"), "{u:#}");
    assert_eq!(u["cache_only_bytes"], 0);
    let text = ok(&store, &["cache", "ls"]);
    assert!(text.starts_with("KIND") && text.contains("3 entries; 0B in layers"), "{text}");

    // Untagged, the layers are the cache's alone; most recently used first (c, b, a).
    ok(&store, &["rmi", "app:1"]);
    let u = usage(&store);
    let entries = u["entries"].as_array().unwrap().clone();
    assert!(entries.iter().all(|e| e["in_image"] == false), "{u:#}");
    let size = |e: &serde_json::Value| e["size"].as_u64().unwrap();
    let total: u64 = entries.iter().map(size).sum();
    assert_eq!(u["cache_only_bytes"].as_u64().unwrap(), total);

    // gc keeps the newest layers up to the cap, exactly: c and b fit in 700 KiB, a does not.
    let cap = 700 * 1024;
    assert!(size(&entries[0]) + size(&entries[1]) <= cap && total > cap, "{u:#}");
    ok(&store, &["gc", "--keep-storage", "700KiB"]);
    let after = usage(&store);
    let kept = after["entries"].as_array().unwrap();
    assert_eq!(kept.len(), 2, "{after:#}");
    assert_eq!(after["cache_only_bytes"].as_u64().unwrap(), size(&entries[0]) + size(&entries[1]));
    assert!(after["cache_only_bytes"].as_u64().unwrap() <= cap);
    assert!(ok(&store, &["fsck"]).contains("clean"));

    // The kept entries still hit: only the COPY of a.bin runs again (same bytes, same layer).
    let out = ok(&store, &["build", "--progress", "plain", "-t", "app:1", c]);
    assert_eq!(counts(&out), (2, 1), "{out}");

    // Pruning by age spares what was used within the hour; `prune` without --all spares
    // what images hold; --all removes the entries, never the image's layers.
    let out = ok(&store, &["cache", "prune", "--filter", "until=1h"]);
    assert!(out.contains("removed 0 cache entries"), "{out}");
    let out = ok(&store, &["cache", "prune", "-f"]);
    assert!(out.contains("removed 0 cache entries"), "{out}");
    let out = ok(&store, &["cache", "prune", "--all"]);
    assert!(out.contains("removed 3 cache entries"), "{out}");
    assert_eq!(usage(&store)["entries"], serde_json::json!([]));
    ok(&store, &["export", "app:1", &format!("dir:{}", dir.path("out").display())]);
    assert_eq!(fs::read(dir.path("out/c.bin")).unwrap(), noise(3, 300 * 1024));
    let out = ok(&store, &["build", "--progress", "plain", "-t", "app:1", c]);
    assert_eq!(counts(&out), (0, 3), "{out}");

    // Bad values: one clear usage error each, exit 2.
    for args in [
        &["gc", "--keep-storage", "5XB"][..],
        &["cache", "prune", "--filter", "label=x"][..],
        &["cache", "prune", "--filter", "until=soon"][..],
    ] {
        let out = strata(&store, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.lines().count() <= 4 && (err.contains("size") || err.contains("until")),
            "{err}"
        );
    }
}
