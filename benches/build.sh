#!/usr/bin/env bash
# Cold build: strata vs `buildah bud --layers`, same recipe, same context, same base, in one run.
#
#   bash benches/build.sh            # needs root, buildah, skopeo, hyperfine; ~10 minutes
#
# The base image (~200 MB) is a busybox root filesystem plus files from /usr/lib; the context
# (~500 MB in ~20,000 files) is taken from /usr/share and /usr/lib; the recipe COPYs the context
# and runs three RUN steps. Both builders start from an empty cache each run (the base image
# already imported), like a CI machine's first build. Prints hyperfine's table and the ratio of
# medians. STRATA defaults to cargo's release build (built here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${RUNS:-5}
work=${BENCH_DIR:-/var/tmp/strata-bench-build}
source benches/lib.sh  # the script has cd-ed to the repository root
bench_setup build.sh buildah skopeo hyperfine
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
# The base: busybox rootfs + extra files, one image for both builders.
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

hyperfine --runs "$runs" --export-json "$work/result.json" \
  --prepare "$reset_strata" -n strata \
  "$STRATA --store $work/store build --progress plain --build-arg BASE=bench-base:1 -t out:1 $work/ctx" \
  --prepare "$reset_buildah" -n buildah \
  "${bah[*]} bud --layers --isolation chroot --build-arg BASE=localhost/bench-base:1 -t localhost/out:1 $work/ctx"

python3 - "$work/result.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
s, b = r["strata"]["median"], r["buildah"]["median"]
print(f"cold build, median of {len(r['strata']['times'])} runs: strata {s:.2f} s, buildah {b:.2f} s, buildah/strata = {b/s:.2f}x")
PY
eval "$reset_buildah" >/dev/null 2>&1 || true
"${bah[@]}" rmi --all --force >/dev/null 2>&1 || true
