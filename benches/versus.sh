#!/usr/bin/env bash
# One strata against another: the same layer, build and rebuild work, runs alternating, so a
# refactor can show it costs nothing (issue 12: "within noise of before").
#
#   OLD=/path/to/old/strata NEW=/path/to/new/strata bash benches/versus.sh   # needs root
#
# NEW defaults to cargo's release build (built here). Each binary gets its own store, made
# from the same base. Scenarios, each with RUNS (default 5) alternating runs:
#   layer   `strata import` of the ~500 MB / ~20,000-file context (one layer: walk, tar, zstd, hash)
#   cold    a cold build of the build bench's recipe (benches/build.sh) from a fresh store copy
#   noop    a warm no-op rebuild of it
#   php     a warm rebuild after one small file of the last COPY changed
# Prints each run, the medians and NEW's median / OLD's for each scenario.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${RUNS:-5}
work=${BENCH_DIR:-/var/tmp/strata-bench-versus}
: "${OLD:?OLD=path to the strata binary to compare against}"
STRATA=${NEW:-}
source benches/lib.sh  # the script has cd-ed to the repository root
bench_setup versus.sh
NEW=$STRATA
bench_base_files
bench_context_files "$work/ctx/app/share" "$work/ctx/app/lib"
mkdir -p "$work/ctx/php"
for i in $(seq 1 20); do printf '<?php echo "page %s";\n' "$i" > "$work/ctx/php/page$i.php"; done
cat > "$work/ctx/Dockerfile" <<'RECIPE'
FROM lamp-base:latest
COPY app/ /app/
RUN mkdir -p /var/cache/app && echo ready > /var/cache/app/state
RUN find /app/share -name '*.txt' -o -name '*.gz' | wc -l > /app/count
COPY php/ /var/www/html/
RECIPE
echo "context: $(du -sh "$work/ctx/app" | cut -f1) in $(find "$work/ctx/app" -type f | wc -l) files"
settle="sync"
[ "${BENCH_DROP_CACHES:-1}" = 0 ] || settle="sync; echo 3 > /proc/sys/vm/drop_caches"
settle="$settle; tar -C $work/ctx -cf - . | cat > /dev/null"

fresh() { echo "rm -rf $work/store-$1 && cp -a $work/base-store $work/store-$1"; }
build() { echo "${!1} --store $work/store-$1 build --progress plain -t out:1 $work/ctx"; }

echo "== layer: import of the context, $runs alternating runs"
bench_alternate layer "$runs" 0 \
  old "$(fresh OLD); $settle" "$OLD --store $work/store-OLD import $work/ctx/app ctx:1" \
  new "$(fresh NEW); $settle" "$NEW --store $work/store-NEW import $work/ctx/app ctx:1"

echo "== cold build, $runs alternating runs"
bench_alternate cold "$runs" 0 \
  old "$(fresh OLD); $settle" "$(build OLD)" \
  new "$(fresh NEW); $settle" "$(build NEW)"

echo "== no-op rebuild, $runs alternating runs (after one warm-up each)"
bench_alternate noop "$runs" 1 old "" "$(build OLD)" new "" "$(build NEW)"

echo "== one PHP file changed, $runs alternating runs"
edit="date +%s%N > $work/ctx/php/page1.php"
bench_alternate php "$runs" 1 old "$edit" "$(build OLD)" new "$edit" "$(build NEW)"

python3 - "$work" <<'PY'
import json, sys
print("== NEW / OLD, medians")
for s in ["layer", "cold", "noop", "php"]:
    r = {x["command"]: x["median"] for x in json.load(open(f"{sys.argv[1]}/{s}.json"))["results"]}
    print(f"  {s:<6} old {r['old']:.3f} s  new {r['new']:.3f} s  new/old {r['new'] / r['old']:.2f}x")
PY
