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
# present, an empty $work directory (after unmounting what a killed earlier run left mounted).
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
