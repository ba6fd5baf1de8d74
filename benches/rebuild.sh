#!/usr/bin/env bash
# Incremental rebuilds: strata vs `buildah bud --layers` vs BuildKit (`docker build`), all warm,
# same recipe, same context, same base, in one run.
#
#   bash benches/rebuild.sh          # needs root, buildah, skopeo; dockerd for BuildKit; ~20 minutes
#
# The base image (~200 MB) is a busybox root filesystem plus files from /usr/lib; the context
# (~500 MB in ~20,000 files, from /usr/share and /usr/lib, as in benches/build.sh) is laid out
# like the LAMP example: two big COPYs each followed by a RUN, then a small `COPY app/` of PHP
# files. Every builder builds it once (warm cache), then runs alternate (strata, buildah,
# BuildKit, ..., strata, ...) for:
#   1. a no-op rebuild (nothing changed), beside the stat floor: `find CONTEXT -printf '%s %T@
#      %C@ %i\n'`, one single-threaded stat per file of the same context (#17: a no-op rebuild
#      should cost within 1.5x of it);
#   2. a PHP change (a prepare step edits one file in app/): only the last COPY re-runs;
#   3. strata's no-op rebuild of the same context with 2x the files vs 2x the bytes, to show
#      that a no-op rebuild costs a metadata walk (grows with files), not a read (bytes).
# BuildKit runs in a private dockerd started for the run (benches/lib.sh; its column is skipped,
# with the reason, when docker is missing; BENCH_BUILDKIT=0 skips it on purpose) with
# `DOCKER_BUILDKIT=1 docker build --network host`, from the same base image (checked by config
# digest). Prints each run, the medians and the ratios of medians. STRATA defaults to
# cargo's release build (built here); RUNS (default 5), BENCH_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${RUNS:-5}
work=${BENCH_DIR:-/var/tmp/strata-bench-rebuild}
source benches/lib.sh  # the script has cd-ed to the repository root
bench_setup rebuild.sh buildah skopeo
bench_base_files
ctx=$work/ctx
mkdir -p "$ctx/app"
bench_context_files "$ctx/share" "$ctx/lib"
for i in $(seq 1 20); do printf '<?php echo "page %s, version 1";\n' "$i" > "$ctx/app/page$i.php"; done
printf '<?php echo "index, version 1";\n' > "$ctx/app/index.php"
cat > "$ctx/Dockerfile" <<'RECIPE'
ARG BASE
FROM ${BASE}
COPY share/ /srv/share/
RUN mkdir -p /var/log/apache2 /var/www/html && echo ready > /var/log/apache2/state
COPY lib/ /srv/lib/
RUN mkdir -p /var/lib/mysql && find /srv/share -name '*.gz' | wc -l > /var/lib/mysql/count
COPY app/ /var/www/html/
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/var/www/html"]
RECIPE
# The same context with 2x the files (a 1-byte sibling per file: ~1x the bytes), and with
# 2x the bytes (one extra file as big as the whole context: ~1x the files).
cp -a "$ctx" "$work/ctx-files"
(cd "$work/ctx-files/share" && find . -type f -print0 | while IFS= read -r -d '' f; do
  printf x > "$f.extra"; done)
(cd "$work/ctx-files/lib" && find . -type f -print0 | while IFS= read -r -d '' f; do
  printf x > "$f.extra"; done)
cp -a "$ctx" "$work/ctx-bytes"
bytes=$(du -sb "$ctx" | cut -f1)
head -c "$bytes" /dev/urandom > "$work/ctx-bytes/share/big.bin"

cat > "$work/base.Dockerfile" <<'RECIPE'
FROM lamp-base:latest
COPY usr/ /usr/
RECIPE
"$STRATA" --store "$work/base-store" build --progress plain -f "$work/base.Dockerfile" \
  -t bench-base:1 "$work/base-extra" >/dev/null 2>"$work/base-build.log"
"$STRATA" --store "$work/base-store" export --compression gzip bench-base:1 "oci:$work/base-oci:bench-base" >/dev/null
for c in ctx ctx-files ctx-bytes; do
  echo "$c: $(du -sh "$work/$c" | cut -f1) in $(find "$work/$c" -type f | wc -l) files"
done

bah=(buildah --root "$work/bah-root" --runroot "$work/bah-run" --storage-driver overlay)
skopeo copy -q "oci:$work/base-oci:bench-base" \
  "containers-storage:[overlay@$work/bah-root+$work/bah-run]localhost/bench-base:1" >/dev/null
cp -a "$work/base-store" "$work/store"
strata_build="$STRATA --store $work/store build --progress plain --build-arg BASE=bench-base:1 -t out:1"
buildah_build="${bah[*]} bud --layers --isolation chroot --build-arg BASE=localhost/bench-base:1 -t localhost/out:1 $ctx"

tools=(strata "" "$strata_build $ctx" buildah "" "$buildah_build")
if bench_docker_start; then
  bench_docker_load_base bench-base:1 "${bah[@]}"
  buildkit_build="$docker_cli build --network host --build-arg BASE=bench-base:1 -t out:1 $ctx"
  tools+=(buildkit "" "$buildkit_build")
else
  echo "BuildKit column skipped: $buildkit_skipped"
fi

echo "== warming the caches"
$strata_build "$ctx" >/dev/null 2>"$work/warm-strata.log"
$buildah_build >/dev/null 2>"$work/warm-buildah.log"
[ -z "$docker_cli" ] || $buildkit_build >/dev/null 2>"$work/warm-buildkit.log"
for c in ctx-files ctx-bytes; do $strata_build "$work/$c" >/dev/null 2>>"$work/warm-strata.log"; done
# The stat cache keeps no entry for a file changed in the last 2 s; let the files age.
sleep 3
$strata_build "$ctx" >/dev/null 2>>"$work/warm-strata.log"
for c in ctx-files ctx-bytes; do $strata_build "$work/$c" >/dev/null 2>>"$work/warm-strata.log"; done
sync

echo "== no-op rebuild, beside the stat floor ($runs alternating runs)"
bench_alternate noop "$runs" 1 "${tools[@]}" stat-walk "" "find $ctx -printf '%s %T@ %C@ %i\n'"

echo "== PHP change rebuild, one file in app/ edited before each run ($runs alternating runs)"
edit="sed -i \"s/version [0-9]*/version \$(date +%s%N)/\" $ctx/app/index.php"
php=()
for ((i = 0; i < ${#tools[@]}; i += 3)); do php+=("${tools[i]}" "$edit" "${tools[i + 2]}"); done
bench_alternate php "$runs" 1 "${php[@]}"

echo "== strata no-op rebuild: 1x, 2x the files, 2x the bytes ($runs alternating runs)"
bench_alternate scale "$runs" 1 1x "" "$strata_build $ctx" \
  2x-files "" "$strata_build $work/ctx-files" 2x-bytes "" "$strata_build $work/ctx-bytes"

python3 - "$work" "${buildkit_skipped:-}" <<'PY'
import json, sys
w, skipped = sys.argv[1], sys.argv[2]
def med(name):
    return {x["command"]: x["median"] for x in json.load(open(f"{w}/{name}.json"))["results"]}
runs = len(json.load(open(f"{w}/noop.json"))["results"][0]["times"])
n, p, s = med("noop"), med("php"), med("scale")
def anchors(m, buildah_target, buildkit_target):
    out = f"buildah {m['buildah']:.3f} s ({m['buildah']/m['strata']:.1f}x strata; target >= {buildah_target}x)"
    if "buildkit" in m:
        out += f", BuildKit {m['buildkit']:.3f} s ({m['buildkit']/m['strata']:.1f}x strata; target >= {buildkit_target}x)"
    else:
        out += f", BuildKit skipped ({skipped})"
    return out
print(f"medians of {runs} alternating runs each:")
print(f"no-op rebuild: strata {n['strata']:.3f} s, {anchors(n, 10, 10)}")
print(f"no-op rebuild vs stat floor: stat walk {n['stat-walk']:.3f} s, strata/stat walk = {n['strata']/n['stat-walk']:.2f}x (target <= 1.5x)")
print(f"PHP change rebuild: strata {p['strata']:.3f} s, {anchors(p, 5, 10)}")
print(f"strata no-op: 1x {s['1x']:.3f} s, 2x files {s['2x-files']:.3f} s ({s['2x-files']/s['1x']:.2f}x), 2x bytes {s['2x-bytes']:.3f} s ({s['2x-bytes']/s['1x']:.2f}x)")
PY
"${bah[@]}" rm --all >/dev/null 2>&1 || true
"${bah[@]}" rmi --all --force >/dev/null 2>&1 || true
