# Shared by the benchmark scripts (sourced, not run).

# Select whole files from a directory until a byte budget and a file budget are reached.
take() { # src dest max_bytes max_files
  (set +o pipefail; cd "$1" && find . -type f -size -4M -print0 | sort -z | head -z -n "$4" |
    python3 -c '
import os, sys
budget = int(sys.argv[1]); total = 0
for p in sys.stdin.buffer.read().split(b"\0"):
    if not p: continue
    s = os.lstat(p).st_size
    if total + s > budget: break
    total += s
    sys.stdout.buffer.write(p + b"\0")
' "$3" | tar --null -T - -cf - | tar -C "$2" -xf -)
}

# Cleanup run when the script exits (normally, on error, or on INT/TERM), last registered first.
bench_cleanup=()
bench_on_exit() { # shell-command
  bench_cleanup+=("$1")
  trap bench_run_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
bench_run_cleanup() {
  local i
  for ((i = ${#bench_cleanup[@]} - 1; i >= 0; i--)); do eval "${bench_cleanup[i]}" || true; done
}

bench_umount_under() { # dir: what a killed earlier run left mounted there (buildah, dockerd)
  local m
  for m in $(awk -v w="$1/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
    umount "$m" || umount -l "$m" || true
  done
}

# Common start: a release strata in $STRATA (built here unless given), the anchor tools
# present, an empty $work directory (after stopping a dockerd an earlier, killed run of this
# bench left behind, and unmounting what it left mounted).
bench_setup() { # script-name required-tool...
  local name=$1 tool
  shift
  if [ -z "${STRATA:-}" ]; then
    # Wherever cargo puts it (CARGO_TARGET_DIR, .cargo/config.toml): ask cargo.
    STRATA=$(cargo build --release -q -p strata-cli --message-format=json-render-diagnostics |
      python3 -c '
import json, sys
exe = [m["executable"] for m in map(json.loads, sys.stdin)
       if m.get("reason") == "compiler-artifact" and m.get("executable")]
print(exe[-1])')
  fi
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "benches/$name: $tool is required" >&2; exit 2; }
  done
  bench_docker_stop
  bench_umount_under "$work"
  rm -rf "$work" && mkdir -p "$work"
}

# The offline busybox base in $work/base-store and ~200 MB of extra base files in
# $work/base-extra, the same for every benchmark.
bench_base_files() {
  echo "== preparing base (~200 MB) and context (~500 MB, ~20,000 files) in $work"
  STRATA="$STRATA" STRATA_STORE="$work/base-store" examples/lamp/make-base.sh >/dev/null
  mkdir -p "$work/base-extra/usr/lib"
  take /usr/lib/x86_64-linux-gnu "$work/base-extra/usr/lib" $((200 * 1000 * 1000)) 100000
}

bench_context_files() { # share-dest lib-dest: the build benches' ~500 MB / ~20,000-file context
  mkdir -p "$1" "$2"
  take /usr/share "$1" $((280 * 1000 * 1000)) 16000
  take /usr/lib "$2" $((220 * 1000 * 1000)) 4500
}

# --- BuildKit, the anchor most users run ------------------------------------------------------
# A private dockerd for this run only: its own data root, exec root, socket, pid file, config
# file and key file under $work/docker, no iptables, bridge, IP forwarding or masquerading
# changes, started in its own session and stopped on exit. A system daemon, if any, is never
# touched; the one trace outside $work, an empty /run/docker/plugins, is removed again. The
# client is chosen by a probe build: a docker CLI of 23 or newer without the buildx plugin
# refuses DOCKER_BUILDKIT=1 builds, so the one that comes with dockerd is tried too.
# On success: $docker_cli is the client, DOCKER_HOST, DOCKER_CONFIG and DOCKER_BUILDKIT=1 are
# exported, $buildkit_storage names the storage driver. Otherwise it returns 1 with the reason in
# $buildkit_skipped (BENCH_BUILDKIT=0 skips on purpose). BENCH_DOCKER_STORAGE lists the drivers
# to try, in order (default: overlay2, then vfs, which copies whole layers and is unfair to
# BuildKit: the run says so).
bench_docker_start() {
  buildkit_skipped="" docker_cli="" buildkit_storage=""
  [ "${BENCH_BUILDKIT:-1}" != 0 ] || { buildkit_skipped="BENCH_BUILDKIT=0"; return 1; }
  command -v dockerd >/dev/null ||
    { buildkit_skipped="no dockerd (apt-get install docker.io)"; return 1; }
  command -v curl >/dev/null || { buildkit_skipped="no curl to wait for dockerd"; return 1; }
  local dir=$work/docker driver up="" c
  # dockerd 20.10 always creates /run/docker/plugins; remove it again if it was not there.
  [ -e /run/docker ] || bench_on_exit 'rmdir /run/docker/plugins /run/docker 2>/dev/null'
  bench_on_exit bench_docker_stop
  for driver in ${BENCH_DOCKER_STORAGE:-overlay2 vfs}; do
    bench_docker_stop
    mkdir -p "$dir"
    printf '{"deprecated-key-path": "%s/key.json"}\n' "$dir" > "$dir/daemon.json"
    setsid dockerd --config-file "$dir/daemon.json" --iptables=false --ip-forward=false \
      --ip-masq=false --bridge=none --storage-driver "$driver" --data-root "$dir/data" \
      --exec-root "$dir/exec" --pidfile "$dir/pid" -H "unix://$dir/docker.sock" \
      >"$dir/dockerd.log" 2>&1 < /dev/null &
    echo $! > "$dir/pid.started"
    for _ in $(seq 120); do
      if [ "$(curl -fsS --unix-socket "$dir/docker.sock" http://docker/_ping 2>/dev/null)" = OK ]; then
        up=1; break
      fi
      kill -0 "$(cat "$dir/pid.started")" 2>/dev/null || break
      sleep 0.5
    done
    [ -n "$up" ] && break
    echo "benches: dockerd did not start with --storage-driver $driver; its log ends:" >&2
    tail -n 5 "$dir/dockerd.log" >&2
  done
  if [ -z "$up" ]; then
    cp "$dir/dockerd.log" "$work/dockerd-failed.log" 2>/dev/null || true
    buildkit_skipped="dockerd did not start (log: $work/dockerd-failed.log)"
    bench_docker_stop
    return 1
  fi
  buildkit_storage=$driver
  [ "$driver" = overlay2 ] ||
    echo "benches: WARNING: dockerd runs on $driver, not overlay2: BuildKit's figures are pessimistic" >&2
  export DOCKER_HOST=unix://$dir/docker.sock DOCKER_CONFIG=$dir/client DOCKER_BUILDKIT=1
  for c in ${DOCKER_CLI:-} $(type -ap docker) /usr/bin/docker; do
    [ -x "$c" ] || continue
    if printf 'FROM scratch\nLABEL strata.bench=probe\n' |
        "$c" build -q --network host -t strata-bench-probe:1 - >/dev/null 2>&1; then
      docker_cli=$c
      break
    fi
  done
  if [ -z "$docker_cli" ]; then
    buildkit_skipped="no docker CLI that builds with BuildKit against dockerd (a CLI >= 23 needs buildx; set DOCKER_CLI)"
    bench_docker_stop
    return 1
  fi
  "$docker_cli" rmi -f strata-bench-probe:1 >/dev/null
  "$docker_cli" builder prune -af >/dev/null
  echo "BuildKit: $("$docker_cli" version --format 'dockerd {{.Server.Version}}, client {{.Client.Version}}') ($docker_cli), storage $driver, DOCKER_HOST=$DOCKER_HOST"
}

# Stops the bench's own dockerd (by the pid it wrote, or the one this script started) and
# removes its data root. Quiet when there is none.
bench_docker_stop() {
  local dir=$work/docker pid="" p
  [ -d "$dir" ] || return 0
  for p in "$dir/pid" "$dir/pid.started"; do
    [ -f "$p" ] && [ "$(cat "/proc/$(cat "$p")/comm" 2>/dev/null)" = dockerd ] && pid=$(cat "$p") && break
  done
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  bench_umount_under "$dir"
  rm -rf "$dir"
}

# Loads the store image NAME into the bench's dockerd (a docker-archive export, layers
# uncompressed) and checks that strata, docker and, if given, buildah's storage hold the same
# image: the same config digest, so the same diffIDs, so byte-identical layers.
bench_docker_load_base() { # name [buildah-command...]
  local name=$1 want got
  shift
  "$STRATA" --store "$work/base-store" export "$name" "docker-archive:$work/base-docker.tar:$name" >/dev/null
  "$docker_cli" load -q -i "$work/base-docker.tar" >/dev/null
  rm -f "$work/base-docker.tar"
  want=$("$STRATA" --store "$work/base-store" inspect --json --no-efficiency "$name" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["manifest"]["config"]["digest"])')
  got=$("$docker_cli" image inspect -f '{{.Id}}' "$name")
  [ "$got" = "$want" ] ||
    { echo "benches: docker holds $name as $got, strata as $want" >&2; exit 1; }
  if [ $# -gt 0 ]; then
    got=sha256:$("$@" images --no-trunc --format '{{.ID}}' "localhost/$name" | sed 's/^sha256://')
    [ "$got" = "$want" ] ||
      { echo "benches: buildah holds $name as $got, strata as $want" >&2; exit 1; }
  fi
  echo "base image $name: config $want in strata, docker${1:+ and buildah}"
}

# Alternating runs: run 1 of every command, then run 2 of every command, ..., each after its
# own prepare step (untimed, through bash), so load on a shared machine hits all of them alike
# (hyperfine runs all of one command's runs first). Commands are split like a shell would but
# run without one, stdout to /dev/null, stderr to $work/LABEL.NAME.log; a failure stops the bench.
# Writes JSON shaped like hyperfine's ({"results": [{"command", "times", "median", ...}]}) and
# prints each command's median, min and max and its ratio to the first command's median.
bench_alternate() { # label runs warmup name prepare command [name prepare command]...
  python3 - "$work" "$@" <<'PY'
import json, shlex, statistics, subprocess, sys, time
work, label, runs, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rest = sys.argv[5:]
assert len(rest) % 3 == 0 and rest, "bench_alternate: name prepare command triples"
cmds = [tuple(rest[i:i + 3]) for i in range(0, len(rest), 3)]
times = {name: [] for name, _, _ in cmds}

def run(name, prepare, command):
    log = f"{work}/{label}.{name}.log"
    if prepare and subprocess.run(["bash", "-c", prepare]).returncode != 0:
        sys.exit(f"{label}: the prepare step of {name} failed: {prepare}")
    with open(log, "ab") as err:
        t0 = time.perf_counter()
        rc = subprocess.run(shlex.split(command), stdout=subprocess.DEVNULL, stderr=err).returncode
        t = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"{label}: {name} exited with {rc}: {command} (stderr in {log})")
    return t

for i in range(warmup):
    for c in cmds:
        run(*c)
for i in range(runs):
    for c in cmds:
        times[c[0]].append(run(*c))
    print(f"  run {i + 1}/{runs}: " + ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items()), flush=True)

results = [{"command": n, "times": t, "median": statistics.median(t), "min": min(t), "max": max(t),
            "mean": statistics.mean(t)} for n, t in times.items()]
json.dump({"results": results, "order": "alternating", "warmup": warmup}, open(f"{work}/{label}.json", "w"), indent=1)
ref = results[0]
print(f"  {'command':<12} {'median':>9} {'min':>9} {'max':>9}  median / {ref['command']}'s")
for r in results:
    print(f"  {r['command']:<12} {r['median']:>8.3f}s {r['min']:>8.3f}s {r['max']:>8.3f}s  {r['median'] / ref['median']:.2f}x")
PY
}
