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

# Common start: a release strata in $STRATA (built here unless given), the anchor tools present,
# an empty $work directory.
bench_setup() { # script-name
  if [ -z "${STRATA:-}" ]; then
    cargo build --release -q -p strata-cli
    STRATA=$PWD/target/release/strata
  fi
  for tool in buildah skopeo hyperfine; do
    command -v "$tool" >/dev/null || { echo "benches/$1: $tool is required" >&2; exit 2; }
  done
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
