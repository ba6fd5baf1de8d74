#!/usr/bin/env bash
# Cold build: strata vs `buildah bud --layers` vs BuildKit (`docker build`), same recipe, same
# context, same base image, in one run.
#
#   bash benches/build.sh            # needs root, buildah, skopeo; dockerd for BuildKit; ~15 minutes
#
# The base image (~200 MB) is a busybox root filesystem plus files from /usr/lib; the context
# (~500 MB in ~20,000 files) is taken from /usr/share and /usr/lib; the recipe COPYs the context
# and runs three RUN steps. Every builder starts from an empty cache each run (the base image
# already imported), like a CI machine's first build: strata from a copy of the base store,
# buildah from fresh storage with the base copied in, BuildKit after removing the image and
# `docker builder prune -af`; then the page cache is dropped and the context read back (below).
# The base is built by strata and handed over byte for byte (skopeo to buildah, `docker load`
# to dockerd); the bench checks all three hold the same config digest.
# The floor for a COPY-heavy cold build (#17): `tar -cf - CONTEXT | zstd -T0 > /dev/null`, reading
# and compressing the context's bytes once, runs in the same alternation after the same settle
# step; strata should stay within 2x of it.
# BuildKit runs in a private dockerd started for the run (benches/lib.sh; its column is skipped,
# with the reason, when docker is missing; BENCH_BUILDKIT=0 skips it on purpose) with
# `DOCKER_BUILDKIT=1 docker build --network host`. Runs alternate (strata, buildah, BuildKit,
# strata, ...) so a noisy machine hits all alike; prints each run, the medians and the ratios
# of medians. STRATA defaults to cargo's release build (built here); RUNS (default 5), BENCH_DIR,
# BENCH_DROP_CACHES.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${RUNS:-5}
work=${BENCH_DIR:-/var/tmp/strata-bench-build}
source benches/lib.sh  # the script has cd-ed to the repository root
bench_setup build.sh buildah skopeo
bench_base_files
bench_context_files "$work/ctx/app/share" "$work/ctx/app/lib"
cat > "$work/ctx/Dockerfile" <<'RECIPE'
ARG BASE
FROM ${BASE}
COPY app/ /app/
RUN mkdir -p /var/cache/app && echo ready > /var/cache/app/state
RUN find /app/share -name '*.txt' -o -name '*.gz' | wc -l > /app/count
RUN rm -rf /app/lib && touch /app/done
RECIPE
# The base: busybox rootfs + extra files, one image for all builders.
cat > "$work/base.Dockerfile" <<'RECIPE'
FROM lamp-base:latest
COPY usr/ /usr/
RECIPE
"$STRATA" --store "$work/base-store" build --progress plain -f "$work/base.Dockerfile" \
  -t bench-base:1 "$work/base-extra" >/dev/null 2>"$work/base-build.log"
"$STRATA" --store "$work/base-store" export --compression gzip bench-base:1 "oci:$work/base-oci:bench-base" >/dev/null
echo "base: $(du -sh "$work/base-extra" | cut -f1) extra; context: $(du -sh "$work/ctx/app" | cut -f1) in $(find "$work/ctx/app" -type f | wc -l) files"

bah=(buildah --root "$work/bah-root" --runroot "$work/bah-run" --storage-driver overlay)
reset_buildah="${bah[*]} rm --all >/dev/null 2>&1; ${bah[*]} rmi --all --force >/dev/null 2>&1; rm -rf $work/bah-root $work/bah-run; skopeo copy -q oci:$work/base-oci:bench-base containers-storage:[overlay@$work/bah-root+$work/bah-run]localhost/bench-base:1 >/dev/null; sync"
reset_strata="rm -rf $work/store && cp -a $work/base-store $work/store && sync"
eval "$reset_buildah"
# Every run starts from the same memory state: each reset deletes tens of thousands of files,
# and on this kind of machine (ext4 without a journal) creating files while the inode-table
# blocks of freshly deleted ones sit in the buffer cache costs the next build seconds of kernel
# time (__ext4_new_inode -> recently_deleted); strata's cold build went 5 s -> 15 s -> 19 s
# run after run. So caches are dropped (BENCH_DROP_CACHES=0 keeps them), then the context is
# read back, as a fresh checkout would be in the page cache. (tar skips reading when it writes
# to /dev/null itself, hence the cat.)
settle="sync"
[ "${BENCH_DROP_CACHES:-1}" = 0 ] || settle="sync; echo 3 > /proc/sys/vm/drop_caches"
settle="$settle; tar -C $work/ctx -cf - . | cat > /dev/null"

command -v zstd >/dev/null || { echo "benches/build.sh: zstd is required (the tar | zstd floor)" >&2; exit 2; }
tools=(strata "$reset_strata; $settle"
  "$STRATA --store $work/store build --progress plain --build-arg BASE=bench-base:1 -t out:1 $work/ctx"
  "tar|zstd" "$settle" "bash -c 'tar -C $work/ctx -cf - . | zstd -q -T0 > /dev/null'"
  buildah "$reset_buildah; $settle"
  "${bah[*]} bud --layers --isolation chroot --build-arg BASE=localhost/bench-base:1 -t localhost/out:1 $work/ctx")
if bench_docker_start; then
  bench_docker_load_base bench-base:1 "${bah[@]}"
  tools+=(buildkit "$docker_cli rmi -f out:1 >/dev/null 2>&1; $docker_cli builder prune -af >/dev/null; $settle"
    "$docker_cli build --network host --build-arg BASE=bench-base:1 -t out:1 $work/ctx")
else
  echo "BuildKit column skipped: $buildkit_skipped"
fi

echo "== cold build, $runs alternating runs"
bench_alternate cold "$runs" 0 "${tools[@]}"

python3 - "$work/cold.json" "${buildkit_skipped:-}" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
n = len(json.load(open(sys.argv[1]))["results"][0]["times"])
s, b, f = r["strata"], r["buildah"], r["tar|zstd"]
line = f"cold build, median of {n} alternating runs: strata {s:.2f} s, buildah {b:.2f} s ({b/s:.2f}x strata)"
if "buildkit" in r:
    k = r["buildkit"]
    line += f", BuildKit {k:.2f} s ({k/s:.2f}x strata; target >= 3x)"
else:
    line += f", BuildKit skipped ({sys.argv[2]})"
print(line)
print(f"cold build vs its floor: tar -cf - CONTEXT | zstd -T0 {f:.2f} s, strata / floor = {s/f:.2f}x (target <= 2x)")
PY
eval "$reset_buildah" >/dev/null 2>&1 || true
"${bah[@]}" rmi --all --force >/dev/null 2>&1 || true
