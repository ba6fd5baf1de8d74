//! `strata build` end to end on the LAMP example (as root: RUN needs namespaces and overlay).

use std::path::Path;
use std::process::{Command, Output};

mod common;

use common::{lamp, strata};

fn ok(store: &Path, args: &[&str]) -> String {
    let out = strata(store, args);
    assert!(out.status.success(), "strata {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Running RUN steps needs root (namespaces, overlay mounts).
#[allow(clippy::print_stderr)] // the skip message is the point
fn is_root() -> bool {
    let root = rustix_free_geteuid() == 0;
    if !root {
        if std::env::var_os("STRATA_TEST_STRICT").is_some_and(|v| v == "1") {
            panic!("build tests need root and STRATA_TEST_STRICT=1");
        }
        eprintln!("skipping: build tests need root");
    }
    root
}

fn rustix_free_geteuid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn layers(store: &Path, image: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&ok(store, &["inspect", "--json", image])).unwrap();
    v["manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn lamp_builds_and_a_php_change_makes_one_new_layer() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let dir = lamp(tmp.path(), &store);
    let out =
        strata(&store, &["build", "--progress", "plain", "-t", "lamp:v1", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("#5 [stage 0, line 17] COPY app/ /var/www/html/"), "{log}");
    // Where each step's time went, by phase, in the order the phases ran; the layer write's
    // stages in parentheses after it.
    let names = |list: &str| -> Vec<String> {
        list.split(", ").map(|p| p.rsplit_once(' ').map_or("", |(name, _)| name).into()).collect()
    };
    let phases = |n: usize| -> (Vec<String>, Vec<String>) {
        let prefix = format!("#{n} phases: ");
        let line = log.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_default();
        let (head, rest) = line.split_once(" (").unwrap_or((line, ")"));
        let (inner, tail) = rest.split_once(')').unwrap_or_default();
        (names(&format!("{head}{tail}")), names(inner))
    };
    let stages = ["tar", "compress", "store write"].map(String::from).to_vec();
    let copy = ["context scan+hash", "parent view", "copy to staging", "scan staging"];
    let copy: Vec<&str> = copy.into_iter().chain(["layer write", "snapshot"]).collect();
    assert_eq!(phases(5), (copy.iter().map(|s| s.to_string()).collect(), stages.clone()), "{log}");
    let run = ["parent view", "mounts", "run", "changes", "layer write", "snapshot"];
    assert_eq!(phases(2), (run.iter().map(|s| s.to_string()).collect(), stages), "{log}");
    assert!(String::from_utf8_lossy(&out.stdout).trim().starts_with("sha256:"));
    let v1 = layers(&store, "lamp:v1");
    assert_eq!(v1.len(), 6, "base + apache copy/run + mysql copy/run + app");

    let php = dir.join("app/index.php");
    let text = std::fs::read_to_string(&php).unwrap().replace("version 1", "version 2");
    std::fs::write(&php, text).unwrap();
    let out =
        strata(&store, &["build", "--progress", "plain", "-t", "lamp:v2", dir.to_str().unwrap()]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    // Only the step that ran has phases.
    let timed: Vec<&str> = log.lines().filter(|l| l.contains(" phases: ")).collect();
    assert!(timed.len() == 1 && timed[0].starts_with("#5 phases: context scan+hash"), "{log}");
    let v2 = layers(&store, "lamp:v2");
    assert_eq!(v1[..5], v2[..5], "everything below the app layer is byte-identical");
    assert_ne!(v1[5], v2[5]);

    // The flattened v2 has the new code.
    let flat = tmp.path().join("flat");
    ok(&store, &["export", "lamp:v2", &format!("dir:{}", flat.display())]);
    let served = std::fs::read_to_string(flat.join("var/www/html/index.php")).unwrap();
    assert!(served.contains("version 2"));
    assert!(flat.join("var/lib/mysql/.initialised").exists());
    assert!(ok(&store, &["fsck"]).contains("clean"));
}

#[test]
fn builds_reproduce_across_stores_and_directories() {
    if !is_root() {
        return;
    }
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (sa, sb) = (a.path().join("store"), b.path().join("store"));
    let (da, db) = (lamp(a.path(), &sa), lamp(b.path(), &sb));
    // Different mtimes in the two contexts must not matter.
    let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_234_567);
    std::fs::File::options()
        .write(true)
        .open(db.join("app/index.php"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    let ia = ok(&sa, &["build", "--progress", "plain", da.to_str().unwrap()]);
    let ib = ok(&sb, &["build", "--progress", "plain", db.to_str().unwrap()]);
    assert_eq!(ia, ib);
    // A timestamp changes `created` and so the digest, reproducibly (it is below every
    // context mtime, so every mtime clamps to it).
    let ta =
        ok(&sa, &["build", "--progress", "plain", "--timestamp", "1000000", da.to_str().unwrap()]);
    let tb = ok(
        &sb,
        &[
            "build",
            "--progress",
            "plain",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1000000",
            db.to_str().unwrap(),
        ],
    );
    assert_eq!(ta, tb);
    assert_ne!(ta, ia);
}

#[test]
fn a_failing_run_exits_1_with_its_output_and_tags_nothing() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let dir = lamp(tmp.path(), &store);
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM lamp-base:latest\nRUN echo about to fail && exit 7\n",
    )
    .unwrap();
    let out =
        strata(&store, &["build", "--progress", "plain", "-t", "bad:1", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("about to fail"), "{err}");
    assert!(err.contains('7'), "{err}");
    // The error once (issue 16 point 1): one `strata: error:` line, each cause in it once.
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("strata: error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(errors[0].matches("status 7").count(), 1, "{err}");
    assert_eq!(errors[0].matches("line 2").count(), 1, "{err}");
    assert!(!ok(&store, &["images"]).contains("bad"));
    assert!(ok(&store, &["fsck"]).contains("clean"));
}

#[test]
fn json_progress_is_one_event_per_line() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let dir = lamp(tmp.path(), &store);
    let out = ok(&store, &["build", "--progress", "json", dir.to_str().unwrap()]);
    let events: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events[0]["event"], "build_start");
    assert_eq!(events[1]["event"], "stage_start");
    assert!(events.iter().all(|e| e["version"] == 1));
    assert!(events.iter().any(|e| e["event"] == "step_done" && e["layer"].is_string()));
    let phases = events.iter().find(|e| e["event"] == "step_phases").expect("step_phases");
    let first = &phases["phases"][0];
    assert!(first["name"].is_string() && first["micros"].is_u64(), "{phases}");
    assert_eq!(events.iter().filter(|e| e["event"] == "build_done").count(), 1);
}

/// The texts of the steps a JSON-progress build took from the cache, and its build_done event.
fn cached_steps(json: &str) -> (Vec<String>, serde_json::Value) {
    let events: Vec<serde_json::Value> =
        json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut texts = std::collections::HashMap::new();
    let mut cached = Vec::new();
    let mut done = serde_json::Value::Null;
    for e in events {
        let id = (e["stage"].as_u64(), e["step"].as_u64());
        match e["event"].as_str().unwrap() {
            "step_start" => {
                texts.insert(id, e["text"].as_str().unwrap().to_string());
            }
            "step_cached" => cached.push(texts[&id].clone()),
            "build_done" => done = e,
            _ => {}
        }
    }
    (cached, done)
}

#[test]
fn a_php_change_reruns_only_the_app_copy_and_after() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let dir = lamp(tmp.path(), &store);
    let ctx = dir.to_str().unwrap();
    let (cached, done) = cached_steps(&ok(&store, &["build", "--progress", "json", ctx]));
    assert!(cached.is_empty());
    assert_eq!(done["layers_written"], 5);
    assert_eq!(done["layers_reused"], 0);

    // A no-op rebuild: every layer step cached, the report says so. (After the racy window,
    // so the stat-hash cache remembers the files' content from here on.)
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = strata(&store, &["build", "--progress", "plain", "-t", "lamp:v1", ctx]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches(" CACHED").count(), 5 * 2, "progress line + report line: {log}");
    assert!(log.contains("5 layers reused, 0 written, 0 bytes written"), "{log}");
    assert!(log.contains("CACHED  [stage 0, line 17] COPY app/ /var/www/html/"), "{log}");

    let php = dir.join("app/index.php");
    let text = std::fs::read_to_string(&php).unwrap().replace("version 1", "version 2");
    std::fs::write(&php, text).unwrap();
    let json = ok(&store, &["build", "--progress", "json", ctx]);
    // The miss says why: the PHP file's content.
    let miss = serde_json::json!({"version": 1, "event": "cache_miss", "stage": 0, "step": 4,
        "reason": "source files changed: app/index.php"});
    assert!(
        json.lines()
            .any(|l| serde_json::from_str::<serde_json::Value>(l).ok() == Some(miss.clone())),
        "{json}"
    );
    let (cached, done) = cached_steps(&json);
    assert_eq!(
        cached,
        [
            "COPY apache/ /etc/apache2/",
            "RUN mkdir -p /var/log/apache2 /var/run/apache2 /var/www/html  && ln -s /etc/apache2/httpd.conf /etc/httpd.conf",
            "COPY mysql/ /etc/mysql/",
            "RUN mkdir -p /var/lib/mysql /var/run/mysqld  && echo \"initialised\" > /var/lib/mysql/.initialised",
        ]
    );
    assert_eq!(done["layers_reused"], 4);
    assert_eq!(done["layers_written"], 1);

    // --no-cache runs everything; --no-cache-filter only the named stage (here the only one).
    let out = strata(&store, &["build", "--progress", "plain", "--no-cache", ctx]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("cache miss: --no-cache").count(), 5, "{log}");
    let (cached, done) =
        cached_steps(&ok(&store, &["build", "--progress", "json", "--no-cache", ctx]));
    assert!(cached.is_empty());
    assert_eq!(done["layers_written"], 5);
    let (cached, _) =
        cached_steps(&ok(&store, &["build", "--progress", "json", "--no-cache-filter", "0", ctx]));
    assert!(cached.is_empty());
    // A stage the recipe lacks is an error naming it, like --target.
    let out = strata(&store, &["build", "--progress", "json", "--no-cache-filter", "other", ctx]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--no-cache-filter other"), "{stderr}");
}

/// CVE-2019-5736 class: a script whose interpreter is `/proc/self/exe` makes the kernel run
/// the process that execs it (the builder) inside the step. strata's sandbox child is
/// the only process of the step's pid namespace when it execs, so no process of the step can
/// hold the builder's binary open and write it later; the binary runs as the step's PID 1,
/// finds nothing it can do there, and the step fails.
#[test]
fn a_step_running_the_builder_binary_cannot_rewrite_it() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let dir = lamp(tmp.path(), &store);
    let exe = std::fs::read(env!("CARGO_BIN_EXE_strata")).unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM lamp-base:latest\n\
         RUN printf '#!/proc/self/exe build\\n' > /evil && chmod 755 /evil && \
         printf '#!/proc/self/exe\\n' > /evil2 && chmod 755 /evil2\n\
         RUN [\"/evil\", \"-t\", \"x\"]\n",
    )
    .unwrap();
    let out = strata(&store, &["build", "--progress", "plain", ctx.to_str().unwrap()]);
    assert!(!out.status.success());
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM lamp-base:latest\n\
         RUN printf '#!/proc/self/exe\\n' > /evil2 && chmod 755 /evil2\n\
         RUN sh -c '/evil2 & sleep 0.3; for p in /proc/[0-9]*; do echo x >> $p/exe; done; true'\n",
    )
    .unwrap();
    let _ = strata(&store, &["build", "--progress", "plain", ctx.to_str().unwrap()]);
    assert_eq!(std::fs::read(env!("CARGO_BIN_EXE_strata")).unwrap(), exe, "the binary changed");
    drop(dir);
}

#[test]
fn an_error_names_each_cause_once() {
    // No root needed: these fail before any RUN.
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let cases: [(&str, Vec<&str>, &str); 3] = [
        ("FROM scratch\nCOPY nope /x\n", vec![], "nope: not found"),
        ("FROM nobase:1\nRUN true\n", vec![], "nobase:1 is not in the store"),
        ("FROM scratch\n", vec!["-f", "/nonexistent/Dockerfile"], "No such file"),
    ];
    for (recipe, flags, cause) in cases {
        std::fs::write(ctx.join("Dockerfile"), recipe).unwrap();
        let mut args = vec!["build"];
        args.extend(flags);
        args.push(ctx.to_str().unwrap());
        let out = strata(&store, &args);
        assert_ne!(out.status.code(), Some(0));
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().find(|l| l.starts_with("strata: error:")).unwrap();
        assert_eq!(line.matches(cause).count(), 1, "{cause} once in: {line}");
    }
}

#[test]
fn a_truncated_archive_is_one_line_naming_it_and_no_temp_path() {
    // Issue 15 point 9: a truncated tar was "failed to write entire file", with the store's
    // internal step-XXXX paths. No root needed: ADD of a local tar runs no sandbox.
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let mut tar = Vec::new();
    let mut header = [0u8; 512];
    header[..7].copy_from_slice(b"payload");
    header[100..108].copy_from_slice(b"0000644\0");
    header[124..136].copy_from_slice(b"00000200000\0"); // 64 KiB announced
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    tar.extend_from_slice(&header);
    tar.extend_from_slice(&[7u8; 1000]); // ... and 1000 bytes of it
    std::fs::write(ctx.join("evil.tar"), &tar).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nADD evil.tar /x/\n").unwrap();
    let out = strata(&store, &["build", "--progress", "plain", ctx.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("strata: error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    let line = lines[0];
    assert!(line.contains("evil.tar") && line.contains("unexpected end of file"), "{line}");
    assert!(line.contains("line 2"), "{line}");
    for internal in ["step-", "strata/v1/tmp", "failed to write entire file"] {
        assert!(!err.contains(internal), "{internal:?} in: {err}");
    }
    // `import` reads it with the same reader, and says the same.
    let out = strata(&store, &["import", ctx.join("evil.tar").to_str().unwrap(), "t:1"]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("evil.tar") && err.contains("unexpected end of file"), "{err}");
    assert!(!err.contains("step-"), "{err}");
}

#[test]
fn healthcheck_shell_and_onbuild_show_in_inspect() {
    // Metadata only: no RUN, so no root needed.
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nHEALTHCHECK --timeout=3s CMD [\"/probe\", \"-q\"]\nSHELL [\"/bin/ash\", \"-c\"]\nONBUILD COPY . /src\n",
    )
    .unwrap();
    ok(&store, &["build", "-t", "meta:1", ctx.to_str().unwrap()]);
    let text = ok(&store, &["inspect", "meta:1"]);
    assert!(
        text.contains(r#"Healthcheck:  {"Test":["CMD","/probe","-q"],"Timeout":3000000000}"#),
        "{text}"
    );
    assert!(text.contains(r#"Shell:        ["/bin/ash","-c"]"#), "{text}");
    assert!(text.contains("OnBuild:      COPY . /src"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&store, &["inspect", "--json", "meta:1"])).unwrap();
    assert_eq!(v["config"]["config"]["OnBuild"], serde_json::json!(["COPY . /src"]));
    assert_eq!(v["config"]["config"]["Healthcheck"]["Test"][0], "CMD");
}

#[test]
fn label_and_iidfile_as_docker_build_has_them() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nLABEL a=recipe b=kept\n").unwrap();
    let iid = tmp.path().join("iid");
    let stdout = ok(
        &store,
        &[
            "build",
            "--label",
            "a=flag",
            "--label",
            "empty",
            "--iidfile",
            iid.to_str().unwrap(),
            "-t",
            "labelled:1",
            ctx.to_str().unwrap(),
        ],
    );
    let id = std::fs::read_to_string(&iid).unwrap();
    assert_eq!(stdout.trim(), id, "the iidfile holds the ID printed on stdout");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&store, &["inspect", "--json", "labelled:1"])).unwrap();
    assert_eq!(v["digest"], id.as_str());
    assert_eq!(
        v["config"]["config"]["Labels"],
        serde_json::json!({"a": "flag", "b": "kept", "empty": ""})
    );
    let out = strata(&store, &["build", "--add-host", "db:nowhere", ctx.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--add-host") && err.contains("not an IP address"), "{err}");
}

/// `strata` with stdin fed from `input`.
fn strata_stdin(store: &Path, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses its input early (a usage error, a hostile tar) may exit
    // before reading all of it: a broken pipe here is its answer, not the test's failure.
    match child.stdin.take().unwrap().write_all(input) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_context_or_a_recipe_on_stdin_as_docker_build_takes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY hello.txt /\n").unwrap();
    std::fs::write(ctx.join("hello.txt"), "hi from the tar\n").unwrap();
    let tarball = tmp.path().join("ctx.tar.gz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&ctx)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let flat = |tag: &str, name: &str| {
        let dir = tmp.path().join(format!("flat-{name}"));
        ok(&store, &["export", tag, &format!("dir:{}", dir.display())]);
        dir
    };

    // `strata build -`: a (gzipped) tar is the context, its Dockerfile the recipe.
    let out =
        strata_stdin(&store, &["build", "-t", "fromtar:1", "-"], &std::fs::read(&tarball).unwrap());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = flat("fromtar:1", "tar");
    assert_eq!(std::fs::read_to_string(dir.join("hello.txt")).unwrap(), "hi from the tar\n");

    // `strata build -` with a recipe: an empty context.
    let out =
        strata_stdin(&store, &["build", "-t", "lone:1", "-"], b"FROM scratch\nLABEL from=stdin\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(&ok(&store, &["inspect", "--json", "lone:1"])).unwrap();
    assert_eq!(v["config"]["config"]["Labels"]["from"], "stdin");

    // `-f -`: the recipe from stdin, the context a directory.
    let out = strata_stdin(
        &store,
        &["build", "-f", "-", "-t", "piped:1", ctx.to_str().unwrap()],
        b"FROM scratch\nCOPY hello.txt /copied.txt\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = flat("piped:1", "piped");
    assert_eq!(std::fs::read_to_string(dir.join("copied.txt")).unwrap(), "hi from the tar\n");

    // Both from stdin: a usage error. A tar entry escaping the context: an error naming it.
    let out = strata_stdin(&store, &["build", "-f", "-", "-"], b"FROM scratch\n");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let evil = tmp.path().join("evil.tar");
    let script = format!(
        "import tarfile, io\nwith tarfile.open('{}', 'w') as t:\n    i = tarfile.TarInfo('../escape'); i.size = 1; t.addfile(i, io.BytesIO(b'x'))\n",
        evil.display()
    );
    assert!(Command::new("python3").arg("-c").arg(script).status().unwrap().success());
    let out = strata_stdin(&store, &["build", "-"], &std::fs::read(&evil).unwrap());
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("../escape"), "{err}");
    assert!(!tmp.path().join("escape").exists());
}

#[test]
fn named_build_contexts_replace_stages_and_images_of_their_name() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let w = |p: &str, text: &str| {
        let p = tmp.path().join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("ctx/from-stage.txt", "stage\n");
    w("ctx/Dockerfile", "FROM scratch AS src\nCOPY from-stage.txt /\nFROM base2\nCOPY --from=src . /got/\nCOPY --from=other /o.txt /\n");
    w("named/named.txt", "named dir\n");
    w("img/i.txt", "image\n");
    w("lay/o.txt", "layout\n");
    let p = |s: &str| tmp.path().join(s).to_str().unwrap().to_string();
    ok(&store, &["import", &p("img"), "img:1"]);
    ok(&store, &["import", &p("lay"), "lay:1"]);
    ok(&store, &["export", "lay:1", &format!("oci:{}:v1", p("layout"))]);
    ok(&store, &["rmi", "lay:1"]);
    ok(
        &store,
        &[
            "build",
            "-t",
            "named:1",
            "--build-context",
            &format!("src={}", p("named")),
            "--build-context",
            "base2=docker-image://img:1",
            "--build-context",
            &format!("other=oci-layout://{}:v1", p("layout")),
            &p("ctx"),
        ],
    );
    let flat = tmp.path().join("flat");
    ok(&store, &["export", "named:1", &format!("dir:{}", flat.display())]);
    assert_eq!(std::fs::read_to_string(flat.join("i.txt")).unwrap(), "image\n", "FROM base2");
    assert_eq!(std::fs::read_to_string(flat.join("got/named.txt")).unwrap(), "named dir\n");
    assert!(!flat.join("got/from-stage.txt").exists(), "the context replaces the stage");
    assert_eq!(std::fs::read_to_string(flat.join("o.txt")).unwrap(), "layout\n");

    for bad in ["x=git://example.invalid/r.git", "x=/nonexistent/dir", "novalue"] {
        let out = strata(&store, &["build", "--build-context", bad, &p("ctx")]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--build-context"), "{bad}: {err}");
    }
}

#[test]
fn ulimit_shm_size_and_allow_security_insecure_as_docker_build_has_them() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    lamp(tmp.path(), &store);
    let ctx = tmp.path().join("limits");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM lamp-base:latest\n\
         RUN ulimit -n > /n && ulimit -Hn >> /n && cat /proc/mounts > /mounts\n\
         RUN --security=insecure cat /proc/self/status > /status\n",
    )
    .unwrap();
    let ctx = ctx.to_str().unwrap();
    // Without the entitlement the insecure step is refused, naming the flag.
    let out = strata(&store, &["build", "--ulimit", "nofile=111:222", ctx]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("--allow security.insecure"), "{err}");
    let args = [
        "build",
        "--ulimit",
        "nofile=111:222",
        "--shm-size",
        "8m",
        "--allow",
        "security.insecure",
        "-t",
        "limits:1",
        ctx,
    ];
    ok(&store, &args);
    let flat = tmp.path().join("flat");
    ok(&store, &["export", "limits:1", &format!("dir:{}", flat.display())]);
    assert_eq!(std::fs::read_to_string(flat.join("n")).unwrap(), "111\n222\n");
    let mounts = std::fs::read_to_string(flat.join("mounts")).unwrap();
    let shm = mounts.lines().find(|l| l.contains(" /dev/shm ")).unwrap();
    assert!(shm.contains("size=8192k"), "{shm}");
    let status = std::fs::read_to_string(flat.join("status")).unwrap();
    let eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    let eff = u64::from_str_radix(eff.rsplit('\t').next().unwrap(), 16).unwrap();
    assert!(eff & (1 << 21) != 0, "CAP_SYS_ADMIN: {status}");
    for (flag, value) in [("--ulimit", "nofile=9:1"), ("--shm-size", "lots")] {
        let out = strata(&store, &["build", flag, value, ctx]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(flag));
    }
}

#[test]
fn annotations_go_on_manifests_and_the_index_as_buildx_puts_them() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n").unwrap();
    let ctx = ctx.to_str().unwrap();
    let inspect = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["inspect", "--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&ok(&store, &all)).unwrap()
    };
    let one = ["build", "-t", "ann:1", "--annotation", "org.opencontainers.image.title=t"];
    ok(&store, &[&one[..], &["--annotation", "manifest:a=b", ctx]].concat());
    assert_eq!(
        inspect(&["ann:1"])["manifest"]["annotations"],
        serde_json::json!({"org.opencontainers.image.title": "t", "a": "b"})
    );
    // Two platforms: plain keys on every manifest, `manifest[PLATFORM]:` on one, `index:` on
    // the index.
    let args = [
        "build",
        "-t",
        "ann:2",
        "--platform",
        "linux/amd64,linux/arm64",
        "--annotation",
        "k=v",
        "--annotation",
        "manifest[linux/arm64]:only=arm",
        "--annotation",
        "index:i=j",
        ctx,
    ];
    ok(&store, &args);
    let arm = inspect(&["--platform", "linux/arm64", "ann:2"]);
    assert_eq!(arm["manifest"]["annotations"], serde_json::json!({"k": "v", "only": "arm"}));
    let index = inspect(&["ann:2"]);
    assert_eq!(index["index"]["document"]["annotations"], serde_json::json!({"i": "j"}));
    let amd = inspect(&["--platform", "linux/amd64", "ann:2"]);
    assert_eq!(amd["manifest"]["annotations"], serde_json::json!({"k": "v"}));
    for bad in ["novalue", "foo:k=v", "manifest-descriptor:k=v", "index[linux/amd64]:k=v"] {
        let out = strata(&store, &["build", "--annotation", bad, ctx]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--annotation"), "{bad}");
    }
}
