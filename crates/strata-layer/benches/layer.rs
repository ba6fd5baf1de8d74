//! Layer throughput against the shell tools doing the same work, and diff of large trees.
//!
//! `cargo bench -p strata-layer` (release). Tree: `$STRATA_BENCH_TREE`, or a copy of /usr/lib
//! capped near 1 GiB made in a temp dir. Each measurement runs 5 times; medians are printed.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use strata_layer::{apply, diff, scan, ApplyOptions, Compression, LayerWriter};

const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(label: &str, mut f: impl FnMut() -> Option<Duration>) -> Duration {
    let mut v = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let inner = f();
        v.push(inner.unwrap_or_else(|| t.elapsed()));
    }
    let m = median(v);
    println!("{label:<48} {:>9.3} s", m.as_secs_f64());
    m
}

/// Runs `a` and `b` alternately RUNS times each; prints and returns both medians and the
/// median of the per-pair ratios a/b. Like [`time`], a closure may return the time of its
/// measured part itself (untimed setup before it).
fn time_pair(
    labels: (&str, &str),
    mut a: impl FnMut() -> Option<Duration>,
    mut b: impl FnMut() -> Option<Duration>,
) -> (Duration, Duration, f64) {
    let (mut ta, mut tb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        let inner = a();
        ta.push(inner.unwrap_or_else(|| t.elapsed()));
        let t = Instant::now();
        let inner = b();
        tb.push(inner.unwrap_or_else(|| t.elapsed()));
        ratios.push(ta[ta.len() - 1].as_secs_f64() / tb[tb.len() - 1].as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let (ma, mb) = (median(ta), median(tb));
    println!("{:<48} {:>9.3} s", labels.0, ma.as_secs_f64());
    println!("{:<48} {:>9.3} s", labels.1, mb.as_secs_f64());
    (ma, mb, ratios[ratios.len() / 2])
}

fn sh(dir: &Path, script: &str) {
    let st = Command::new("sh").arg("-c").arg(script).current_dir(dir).status().expect("sh");
    assert!(st.success(), "{script} failed");
}

/// Copies regular files, dirs and symlinks of `from` into `to` until `cap` bytes are copied.
fn copy_capped(from: &Path, to: &Path, cap: u64) -> u64 {
    let mut total = 0;
    for e in walkdir::WalkDir::new(from).sort_by_file_name() {
        let Ok(e) = e else { continue };
        let rel = e.path().strip_prefix(from).expect("prefix");
        let dst = to.join(rel);
        let ft = e.file_type();
        if ft.is_dir() {
            let _ = fs::create_dir_all(&dst);
        } else if ft.is_symlink() {
            if let Ok(t) = fs::read_link(e.path()) {
                let _ = std::os::unix::fs::symlink(t, &dst);
            }
        } else if ft.is_file() && total < cap {
            if let Ok(n) = fs::copy(e.path(), &dst) {
                total += n;
            }
        }
    }
    total
}

fn gen_tree(root: &Path, files: usize) {
    for i in 0..files {
        let d = root.join(format!("d{:03}", i % 1000));
        if i < 1000 {
            fs::create_dir_all(&d).expect("mkdir");
        }
        fs::write(d.join(format!("f{i:06}")), format!("file {i}\n").repeat(i % 7 + 1))
            .expect("write");
    }
}

fn main() -> io::Result<()> {
    let tmp = tempfile::tempdir_in(
        std::env::var_os("STRATA_BENCH_TMP").unwrap_or_else(|| "/tmp".into()),
    )?;
    let tree: PathBuf = match std::env::var_os("STRATA_BENCH_TREE") {
        Some(t) => PathBuf::from(t),
        None => {
            let t = tmp.path().join("tree");
            fs::create_dir(&t)?;
            let n = copy_capped(Path::new("/usr/lib"), &t, 1 << 30);
            println!("bench tree: copy of /usr/lib, {} MiB of file data", n >> 20);
            t
        }
    };
    let snap = scan(&tree).expect("scan");
    println!("bench tree: {} ({} entries)", tree.display(), snap.entries().len());
    let null = || fs::OpenOptions::new().write(true).open("/dev/null").expect("/dev/null");

    println!("\n-- build a layer --");
    // The headline pair alternates run by run, so load from other processes on this shared
    // machine falls on both sides alike; the ratio is the median of the per-pair ratios.
    let mut zstd_size = 0;
    let (zstd_ours, zstd_sh, zstd_ratio) = time_pair(
        ("strata zstd layer (scan+tar+zstd+2 sha256)", "tar -cf - . | zstd -3 -T0 > /dev/null"),
        || {
            zstd_size =
                LayerWriter::new(Compression::Zstd).write_dir(&tree, null()).expect("layer").size;
            None
        },
        || {
            sh(&tree, "tar -cf - . | zstd -q -3 -T0 > /dev/null");
            None
        },
    );
    // Speed at what ratio: strata's default zstd parameters are not zstd's level-3 table
    // (writer.rs module docs), so both outputs' sizes are shown (the anchor's measured once,
    // outside the timed runs).
    let anchor_size = Command::new("sh")
        .arg("-c")
        .arg("tar -cf - . | zstd -q -3 -T0 | wc -c")
        .current_dir(&tree)
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok())
        .unwrap_or(0);
    println!(
        "  compressed sizes: strata {} MB, zstd -3 {} MB (strata/zstd {:.3})",
        zstd_size / 1_000_000,
        anchor_size / 1_000_000,
        zstd_size as f64 / anchor_size.max(1) as f64
    );
    let plain_ours = time("strata uncompressed layer (scan+tar+sha256)", || {
        LayerWriter::new(Compression::None).write_dir(&tree, null()).expect("layer");
        None
    });
    let tar_read = time("tar -cf - . | cat > /dev/null", || {
        sh(&tree, "tar -cf - . | cat > /dev/null");
        None
    });
    let tar_sha = time("tar -cf - . | sha256sum", || {
        sh(&tree, "tar -cf - . | sha256sum > /dev/null");
        None
    });
    println!("\n-- apply a layer --");
    let plain = tmp.path().join("layer.tar");
    let zst = tmp.path().join("layer.tar.zst");
    LayerWriter::new(Compression::None).write_dir(&tree, fs::File::create(&plain)?).expect("layer");
    LayerWriter::new(Compression::Zstd).write_dir(&tree, fs::File::create(&zst)?).expect("layer");
    let fresh = |name: &str, input: &Path| {
        let d = tmp.path().join(name);
        if d.exists() {
            fs::remove_dir_all(&d).expect("rm");
        }
        fs::create_dir(&d).expect("mkdir");
        // Start each apply from the same memory state (not timed): no dirty pages from the
        // previous run, and, when root, an empty page cache holding only the input. Otherwise
        // each 1 GiB written makes the next run pay for reclaiming memory (sys time grows
        // 0.6 -> 3 s run after run on this machine), whichever side it is.
        rustix::fs::sync();
        let _ = fs::write("/proc/sys/vm/drop_caches", "3");
        let _ = io::copy(&mut fs::File::open(input).expect("input"), &mut io::sink());
        d
    };
    // strata's apply of `input` against `tool` (run in the fresh directory), alternating, each
    // run from the same memory state (see `fresh`).
    let apply_pair = |labels: (&str, &str), input: &Path, tool: &str| {
        time_pair(
            labels,
            || {
                let d = fresh("out", input);
                let t = Instant::now();
                apply(fs::File::open(input).expect("open"), &d, &ApplyOptions::default())
                    .expect("apply");
                Some(t.elapsed())
            },
            || {
                let d = fresh("out", input);
                let t = Instant::now();
                sh(&d, tool);
                Some(t.elapsed())
            },
        )
    };
    let (apply_ours, apply_tar, apply_ratio) = apply_pair(
        ("strata apply (uncompressed)", "tar -xpf layer.tar"),
        &plain,
        &format!("tar -xpf {}", plain.display()),
    );
    time("strata decompress+sha256 of the zstd layer only", || {
        use sha2::Digest as _;
        let mut r = strata_layer::decompress(fs::File::open(&zst).expect("open")).expect("zstd");
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = io::Read::read(&mut r, &mut buf).expect("read");
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        None
    });
    time("zstd -dc layer.tar.zst > /dev/null", || {
        sh(tmp.path(), &format!("zstd -qdc {} > /dev/null", zst.display()));
        None
    });
    let (apply_ours_z, apply_tar_z, apply_z_ratio) = apply_pair(
        ("strata apply (zstd)", "zstd -dc layer.tar.zst | tar -xpf -"),
        &zst,
        &format!("zstd -dc {} | tar -xpf -", zst.display()),
    );
    let _ = fs::remove_dir_all(tmp.path().join("out"));

    println!("\n-- diff two 100,000-file trees with 10 changes --");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir(&a)?;
    gen_tree(&a, 100_000);
    sh(tmp.path(), "cp -a a b");
    for i in 0..5 {
        fs::write(b.join(format!("d{:03}/f{:06}", i * 7, i * 7)), "changed, longer content\n")?;
    }
    for i in 0..3 {
        // Same bytes, new mtime: must be hashed, found equal.
        let p = b.join(format!("d{:03}/f{:06}", 100 + i, 100 + i));
        filetime::set_file_mtime(&p, filetime::FileTime::from_unix_time(1_234_567_890, 0))?;
    }
    for i in 0..2 {
        fs::remove_file(b.join(format!("d{:03}/f{:06}", 200 + i, 200 + i)))?;
    }
    let sa = scan(&a).expect("scan");
    let sb = scan(&b).expect("scan");
    let scan_t = time("scan of one 100k-file tree", || {
        scan(&b).expect("scan");
        None
    });
    let mut n = 0;
    let diff_t = time("diff of the two snapshots", || {
        n = diff(&sa, &sb).expect("diff").len();
        None
    });
    // 5 modified files, 2 deletions, and the 2 directories whose mtime the deletions changed;
    // the 3 touched-but-identical files are hashed and found unchanged.
    println!("changes found: {n} (expected 9)");
    assert_eq!(n, 9);

    let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("\n-- ratios (strata / tool; < 1 is faster) --");
    println!(
        "zstd layer vs tar|zstd -T0:             {:.2} (target <= 1.0; ratio of medians {:.2})",
        zstd_ratio,
        r(zstd_ours, zstd_sh)
    );
    let slower = tar_read.max(tar_sha);
    println!(
        "plain layer vs max(tar-read, tar|sha256): {:.2} (target <= 1.5)",
        r(plain_ours, slower)
    );
    println!(
        "apply vs tar -x:                        {:.2} (ratio of medians {:.2})",
        apply_ratio,
        r(apply_ours, apply_tar)
    );
    println!(
        "apply zstd vs zstd -d | tar -x:         {:.2} (ratio of medians {:.2})",
        apply_z_ratio,
        r(apply_ours_z, apply_tar_z)
    );
    println!(
        "diff of 100k-file snapshots:            {:.3} s (target < 1 s); scan+scan+diff {:.3} s",
        diff_t.as_secs_f64(),
        2.0 * scan_t.as_secs_f64() + diff_t.as_secs_f64()
    );
    Ok(())
}
