#!/usr/bin/env bash
# Image diff: `strata diff` vs extracting both images with `umoci unpack` and running `diff -r`
# (the do-it-yourself anchor), same two images, side by side in one hyperfine run.
#
#   bash benches/diff.sh             # needs root (builds), umoci, skopeo, hyperfine; ~10 minutes
#
# The base (~1 GB in 4 layers of files from /usr/lib) is built once; app:v1 and app:v2 add one
# small layer each on top of it (COPY of a ~2 MB, 200-file app whose v2 changes 3 files), and
# app:v3 is app:v1 plus one more small layer adding new files. Timed:
#   strata diff app:v1 app:v2     two ~1 GB images differing in their top layer
#   strata diff app:v1 app:v3     the second image adds one layer
#   the same two diffs from the exported oci: layouts, where no unpacked snapshots exist, so
#   a path only the new layer names is looked up in the base layers' tars
#   umoci unpack both + diff -r   (after `strata export --compression gzip`, untimed, as
#                                 Debian's umoci cannot read zstd)
# Prints hyperfine's table and the ratios of medians. STRATA defaults to cargo's
# release build (built here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${RUNS:-5}
work=${BENCH_DIR:-/var/tmp/strata-bench-diff}
source benches/lib.sh  # the script has cd-ed to the repository root
bench_setup diff.sh skopeo hyperfine
command -v umoci >/dev/null || { echo "benches/diff.sh: umoci is required" >&2; exit 2; }
store="$work/store"
S=("$STRATA" --store "$store")

echo "== preparing a ~1 GB base (4 layers) and three app images in $work"
for i in 1 2 3 4; do mkdir -p "$work/base/p$i"; done
# Whole files from /usr/lib, split over four COPY layers of ~250 MB.
mkdir -p "$work/all"
take /usr/lib "$work/all" $((1000 * 1000 * 1000)) 60000
( cd "$work/all" && find . -type f | sort | awk -v w="$work/base" '{ print > (w "/list" (NR % 4 + 1)) }' )
for i in 1 2 3 4; do
  ( cd "$work/all" && tar -cf - -T "$work/base/list$i" | tar -C "$work/base/p$i" -xf - )
done
rm -rf "$work/all"
mkdir -p "$work/empty"
"${S[@]}" import "$work/empty" scratch-root:1 >/dev/null
cat > "$work/base/Dockerfile" <<'RECIPE'
FROM scratch-root:1
COPY p1/ /usr/lib/
COPY p2/ /usr/lib/
COPY p3/ /usr/lib/
COPY p4/ /usr/lib/
RECIPE
"${S[@]}" build --progress plain -t bench-base:1 "$work/base" >/dev/null 2>"$work/base-build.log"

# The app: 200 files of ~10 kB; v2 changes three of them.
for v in v1 v2; do
  mkdir -p "$work/$v/app"
  printf 'FROM bench-base:1\nCOPY app/ /app/\n' > "$work/$v/Dockerfile"
done
for i in $(seq 1 200); do
  head -c 10000 /dev/urandom | base64 > "$work/v1/app/file$i.txt"
done
cp -a "$work/v1/app/." "$work/v2/app/"
for i in 7 70 170; do echo "changed in v2" >> "$work/v2/app/file$i.txt"; done
"${S[@]}" build --progress plain -t app:v1 "$work/v1" >/dev/null 2>&1
"${S[@]}" build --progress plain -t app:v2 "$work/v2" >/dev/null 2>&1
mkdir -p "$work/v3/extra"
for i in $(seq 1 50); do echo "extra $i" > "$work/v3/extra/e$i"; done
printf 'FROM app:v1\nCOPY extra/ /srv/extra/\n' > "$work/v3/Dockerfile"
"${S[@]}" build --progress plain -t app:v3 "$work/v3" >/dev/null 2>&1
"${S[@]}" images
for v in v1 v2 v3; do
  "${S[@]}" export --compression gzip "app:$v" "oci:$work/oci:$v" >/dev/null
done
echo "sizes: base $(du -sh "$work/base" | cut -f1) on disk; app:v1 vs app:v2:"
"${S[@]}" diff app:v1 app:v2 | tail -3 || true
echo "app:v1 vs app:v3:"
"${S[@]}" diff app:v1 app:v3 | tail -2 || true

unpack_diff() { # a b
  echo "bash -c 'rm -rf $work/ua $work/ub && umoci unpack --image $work/oci:$1 $work/ua >/dev/null && umoci unpack --image $work/oci:$2 $work/ub >/dev/null && diff -r --no-dereference $work/ua/rootfs $work/ub/rootfs >/dev/null; test \$? -le 1'"
}
# No intermediate shell (-N): strata's runs take milliseconds, less than hyperfine can correct
# a shell's startup for; the anchor runs its pipeline in its own bash.
hyperfine -N --runs "$runs" --warmup 1 -i --export-json "$work/result.json" \
  -n "strata diff v1 v2" "${S[*]} diff app:v1 app:v2" \
  -n "strata diff v1 v3" "${S[*]} diff app:v1 app:v3" \
  -n "strata diff --json v1 v2" "${S[*]} diff --json app:v1 app:v2" \
  -n "strata diff oci: v1 v2" "$STRATA diff oci:$work/oci:v1 oci:$work/oci:v2" \
  -n "strata diff oci: v1 v3 (no snapshots)" "$STRATA diff oci:$work/oci:v1 oci:$work/oci:v3" \
  -n "umoci unpack + diff -r v1 v2" "$(unpack_diff v1 v2)"
rm -rf "$work/ua" "$work/ub"

python3 - "$work/result.json" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
s, s3, u = r["strata diff v1 v2"], r["strata diff v1 v3"], r["umoci unpack + diff -r v1 v2"]
o2, o3 = r["strata diff oci: v1 v2"], r["strata diff oci: v1 v3 (no snapshots)"]
print(f"medians: strata diff v1 v2 {s*1000:.1f} ms, v1 v3 {s3*1000:.1f} ms; from oci: layouts "
      f"v1 v2 {o2*1000:.1f} ms, v1 v3 {o3:.2f} s (no snapshots: the base is read); "
      f"umoci unpack + diff -r {u:.2f} s; umoci/strata = {u/s:.0f}x")
PY
