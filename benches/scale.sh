#!/usr/bin/env bash
# Scale (#17 point 5): warm rebuilds of a 200,000-file, 5 GB context, strata vs BuildKit
# (`docker build`), time and peak memory, in one run.
#
#   bash benches/scale.sh            # needs root, python3, GNU time; dockerd for BuildKit;
#                                    # ~24 GB free in BENCH_DIR at full scale (checked); ~25 minutes
#   SCALE_FILES=2000 SCALE_BYTES=50000000 RUNS=1 bash benches/scale.sh   # smoke test
#
# The context is generated (seeded, so the same on every run) and deleted on exit (BENCH_KEEP=1
# keeps BENCH_DIR): SCALE_FILES files (default 200,000) totalling SCALE_BYTES (default 5e9) in a
# source-like tree of directories of 10-60 files, 2-7 levels deep, under tree/; file sizes
# log-normal (median ~3 KB at full scale, capped at 4 MB); content from a 64 MB pool of 4 KB
# blocks, half random and half source-like text (zstd -3 makes it ~65% of its size), each file
# starting with its own path. The recipe is LAMP-shaped: FROM the small busybox base of the LAMP
# example, COPY tree/ (the big one), a RUN, COPY app/ (20 PHP files). Every builder builds it
# once (warm cache), then runs alternate (strata, BuildKit, stat walk, strata, ...) for:
#   1. a no-op rebuild, beside the stat floor `find CONTEXT -printf '%s %T@ %C@ %i\n'`;
#   2. a one-file edit deep in tree/ (a prepare step overwrites 19 bytes of one file, 6 levels
#      down): the big COPY, the RUN and the small COPY re-run, so this is the cost of writing a
#      5 GB layer again, not of finding the change;
#   3. a PHP edit in app/: only the last COPY re-runs (the walk of the whole context remains).
# Before each edit run the prepare step also drops what only the previous run's image held
# (`strata rmi` + `strata gc --dangling`; `docker rmi` + `docker image prune` + `docker builder
# prune --filter type=regular`, which keeps its copy of the context), since two copies of a 5 GB layer per
# builder do not fit on a development disk; neither builder reuses an earlier version of a
# layer it writes again, so the work timed is the same.
# Peak memory is measured for every timed run by benches' wrapper $BENCH_DIR/peak-rss: strata's
# is the max RSS of the `strata build` process (GNU time %M, which is the largest of it and
# the children it waited for: the RUN sandbox); BuildKit runs inside dockerd, so its figure is
# dockerd's peak RSS during the build (VmHWM after resetting it with `echo 5 >
# /proc/PID/clear_refs` just before), shown with its RSS before the build, and the docker CLI's
# own max RSS (it walks the context and sends it) beside it. RSS, not a cgroup's peak: a v1
# memory cgroup's peak counts the page cache, which a 5 GB copy fills whatever the builder.
# BuildKit runs in a private dockerd (benches/lib.sh; BENCH_BUILDKIT=0 skips it); buildah is
# skipped unless BENCH_BUILDAH=1 (it hashes the whole context on every build: hours here).
# Prints each run, the medians, the ratios of medians and the load average. STRATA defaults to
# cargo's release build (built here); RUNS (default 3), BENCH_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${RUNS:-3}
files=${SCALE_FILES:-200000}
bytes=${SCALE_BYTES:-5000000000}
work=${BENCH_DIR:-/var/tmp/strata-bench-scale}
source benches/lib.sh  # the script has cd-ed to the repository root
bench_setup scale.sh python3
[ -x /usr/bin/time ] || { echo "benches/scale.sh: GNU time (/usr/bin/time) is required" >&2; exit 2; }
[ "${BENCH_KEEP:-0}" = 1 ] || bench_on_exit "bench_umount_under $work; rm -rf $work"
# Room for the context, strata's store (the layer compressed, and unpacked for the RUN) and
# BuildKit's (its copy of the context and the layer): about 4.5x the context, plus a margin.
need=$((bytes * 9 / 2 / 1000000 + 1000))
[ "${BENCH_BUILDKIT:-1}" != 0 ] || need=$((bytes * 5 / 2 / 1000000 + 1000))
free=$(($(df --output=avail -k "$work" | tail -n 1) / 1000))
[ "$free" -ge "$need" ] ||
  { echo "benches/scale.sh: needs ~$need MB free in $work, has $free MB (lower SCALE_BYTES)" >&2; exit 2; }

ctx=$work/ctx
mkdir -p "$ctx/tree" "$ctx/app"
echo "== generating the context: $files files, $bytes bytes, in $ctx"
start=$(date +%s)
deep=$(python3 - "$ctx/tree" "$files" "$bytes" <<'PY'
import os, random, sys
root, nfiles, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(17)
# Sizes: log-normal, capped at 4 MB, scaled until they add up to the total (within 0.1%).
cap = min(4 << 20, max(total // 4, 1))
sizes = [rng.lognormvariate(0, 2) for _ in range(nfiles)]
for _ in range(30):
    s = sum(sizes)
    if abs(s - total) <= total // 1000:
        break
    sizes = [min(cap, x * total / s) for x in sizes]
sizes = [max(1, int(x)) for x in sizes]
# Directories of 10-60 files, each under a recent directory (mostly) or any earlier one.
names = ["src", "lib", "include", "test", "doc", "core", "util", "net", "io", "fs", "mem",
         "sched", "drivers", "arch", "crypto", "block", "sound", "tools", "scripts", "share"]
exts = [".c", ".h", ".rs", ".py", ".js", ".txt", ".json", ".so", ".png", ".bin", ".md", ".o"]
dirs, parents, left = [], [""], nfiles
while left > 0:
    parent = rng.choice(parents[-200:] if rng.random() < 0.7 else parents)
    d = f"{parent}{rng.choice(names)}{len(dirs):05d}/"
    if d.count("/") < 7:
        parents.append(d)
    n = min(left, rng.randint(10, 60))
    dirs.append((d, n))
    left -= n
# The pool: 4 KB blocks, half random (like compressed data or code), half source-like text.
words = [w.encode() for w in ("int void return struct const static if else for while the of "
         "and to in a is fn let mut self impl pub use match Some None Ok Err u32 u64 usize "
         "0 1 2 16 255 4096 { } ( ) ; , = == -> :: // /* */ # include define").split()]
blocks = [os.urandom(4096) if i % 2 else
          b" ".join(rng.choices(words, k=1200))[:4096].ljust(4096, b"\n") for i in range(16384)]
rng.shuffle(blocks)
pool = memoryview(b"".join(blocks))
i = written = 0
deep = ""
for d, n in dirs:
    os.makedirs(os.path.join(root, d), exist_ok=True)
    for _ in range(n):
        size = sizes[i]
        rel = f"{d}f{i:06d}{exts[i % len(exts)]}"
        head = f"// {rel}\n".encode()[:size]
        off = rng.randrange(0, len(pool) - size) if size < len(pool) else 0
        with open(os.path.join(root, rel), "wb") as f:
            f.write(head)
            f.write(pool[off:off + size - len(head)])
        if size >= 64 and rel.count("/") > deep.count("/"):
            deep = rel
        written += size
        i += 1
print(deep)
print(f"tree/: {i} files, {written} bytes, {len(dirs)} directories", file=sys.stderr)
PY
)
for i in $(seq 1 20); do printf '<?php echo "page %s, version 1";\n' "$i" > "$ctx/app/page$i.php"; done
printf '<?php echo "index, version 1";\n' > "$ctx/app/index.php"
cat > "$ctx/Dockerfile" <<'RECIPE'
ARG BASE
FROM ${BASE}
COPY tree/ /srv/tree/
RUN mkdir -p /var/log/apache2 /var/www/html && echo ready > /var/log/apache2/state
COPY app/ /var/www/html/
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/var/www/html"]
RECIPE
echo "generated in $(($(date +%s) - start)) s: $(du -sh "$ctx" | cut -f1) on disk; edited file: tree/$deep"

STRATA="$STRATA" STRATA_STORE="$work/base-store" examples/lamp/make-base.sh >/dev/null
cp -a "$work/base-store" "$work/store"

# peak-rss OUT PIDFILE|- COMMAND...: runs COMMAND under GNU time and appends a line to OUT:
# the command's max RSS in kB, then (with a pid file) the daemon's peak RSS during the command
# and its RSS just before, in kB ("-" without one).
cat > "$work/peak-rss" <<'SH'
#!/usr/bin/env bash
out=$1 pidfile=$2
shift 2
pid="" before=- peak=- rc=0
if [ "$pidfile" != - ]; then
  pid=$(cat "$pidfile")
  echo 5 > "/proc/$pid/clear_refs"
  before=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
fi
/usr/bin/time -f %M -o "$out.last" "$@" || rc=$?
[ -z "$pid" ] || peak=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
echo "$(tail -n 1 "$out.last") $peak $before" >> "$out"
exit "$rc"
SH
chmod +x "$work/peak-rss"
measure() { # label name pidfile|-: the wrapper's words, for bench_alternate's command
  echo "$work/peak-rss $work/$1.$2.rss $3"
}

strata_build="$STRATA --store $work/store build --progress plain --build-arg BASE=lamp-base:latest -t out:1 $ctx"
strata_reclaim="$STRATA --store $work/store rmi out:1 >/dev/null && $STRATA --store $work/store gc --dangling >/dev/null"
tools=(strata "$strata_build")
reclaim=("$strata_reclaim")
if [ "${BENCH_BUILDAH:-0}" = 1 ]; then
  for t in buildah skopeo; do
    command -v $t >/dev/null || { echo "benches/scale.sh: BENCH_BUILDAH=1 needs $t" >&2; exit 2; }
  done
  bah=(buildah --root "$work/bah-root" --runroot "$work/bah-run" --storage-driver overlay)
  bench_on_exit "${bah[*]} rm --all >/dev/null 2>&1; ${bah[*]} rmi --all --force >/dev/null 2>&1"
  "$STRATA" --store "$work/base-store" export --compression gzip lamp-base:latest "oci:$work/base-oci:lamp-base" >/dev/null
  skopeo copy -q "oci:$work/base-oci:lamp-base" \
    "containers-storage:[overlay@$work/bah-root+$work/bah-run]localhost/lamp-base:latest" >/dev/null
  tools+=(buildah "${bah[*]} bud --layers --isolation chroot --build-arg BASE=localhost/lamp-base:latest -t localhost/out:1 $ctx")
  reclaim+=("${bah[*]} rmi -f localhost/out:1 >/dev/null 2>&1; ${bah[*]} rmi --prune >/dev/null 2>&1 || true")
fi
if bench_docker_start; then
  bench_docker_load_base lamp-base:latest ${bah:+"${bah[@]}"}
  tools+=(buildkit "$docker_cli build --network host --build-arg BASE=lamp-base:latest -t out:1 $ctx")
  reclaim+=("$docker_cli rmi -f out:1 >/dev/null 2>&1; $docker_cli image prune -f >/dev/null && $docker_cli builder prune -f --filter type=regular >/dev/null")
else
  echo "BuildKit column skipped: $buildkit_skipped"
fi
pidfile_of() { if [ "$1" = buildkit ]; then echo "$work/docker/pid"; else echo -; fi; }

echo "== warming the caches"
for ((i = 0; i < ${#tools[@]}; i += 2)); do
  start=$(date +%s.%N)
  $(measure warm "${tools[i]}" "$(pidfile_of "${tools[i]}")") ${tools[i + 1]} \
    >/dev/null 2>"$work/warm-${tools[i]}.log"
  echo "  ${tools[i]}: $(python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$start") s"
done
# The stat cache keeps no entry for a file changed in the last 2 s; let the files age.
sleep 3
$strata_build >/dev/null 2>>"$work/warm-strata.log"
sync
echo "disk: context $(du -sh "$ctx" | cut -f1), strata store $(du -sh "$work/store" | cut -f1)${docker_cli:+, dockerd data root $(du -sh "$work/docker/data" | cut -f1)}; $(df -h --output=avail "$work" | tail -n 1 | tr -d ' ') free"

walk="find $ctx -printf '%s %T@ %C@ %i\n'"
series() { # label none|edit|reclaim-edit: bench_alternate's name prepare command triples
  local label=$1 kind=$2 i prep
  for ((i = 0; i < ${#tools[@]}; i += 2)); do
    case $kind in
      none) prep="" ;;
      edit) prep=$edit ;;
      reclaim-edit) prep="${reclaim[i / 2]}; $edit" ;;
    esac
    triples+=("${tools[i]}" "$prep" "$(measure "$label" "${tools[i]}" "$(pidfile_of "${tools[i]}")") ${tools[i + 1]}")
  done
  [ "$kind" != none ] || triples+=(stat-walk "" "$(measure "$label" stat-walk -) $walk")
}
loads=()
load() { loads+=("$1: $(cut -d' ' -f1-3 /proc/loadavg)"); }

echo "== no-op rebuild, beside the stat floor ($runs alternating runs)"
triples=()
edit="" series noop none
load "before no-op"
bench_alternate noop "$runs" 1 "${triples[@]}"

echo "== one-file edit deep in tree/ (tree/$deep) before each run ($runs alternating runs)"
triples=()
edit="date +%s%N | dd of=$ctx/tree/$deep bs=1 seek=3 conv=notrunc status=none"
series edit reclaim-edit
load "before edit"
bench_alternate edit "$runs" 0 "${triples[@]}"

echo "== PHP edit in app/ before each run ($runs alternating runs)"
triples=()
edit="sed -i \"s/version [0-9]*/version \$(date +%s%N)/\" $ctx/app/index.php"
series php edit
load "before PHP edit"
bench_alternate php "$runs" 1 "${triples[@]}"
load "end"

python3 - "$work" "$files" "$bytes" "${buildkit_skipped:-}" "${loads[@]}" <<'PY'
import json, os, statistics, sys
w, files, size, skipped, loads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
def med(label):
    return {x["command"]: x["median"] for x in json.load(open(f"{w}/{label}.json"))["results"]}
def rss(label, tool):  # per run: (command max RSS, daemon peak, daemon before), kB
    rows = [l.split() for l in open(f"{w}/{label}.{tool}.rss") if l.strip()]
    return [tuple(None if v == "-" else int(v) for v in r) for r in rows]
runs = len(json.load(open(f"{w}/noop.json"))["results"][0]["times"])
n, e, p = med("noop"), med("edit"), med("php")
tools = [t for t in n if t != "stat-walk"]
print(f"context: {files} files, {size / 1e9:.2f} GB; medians of {runs} alternating runs each")
print(f"  {'':<10} {'no-op':>9} {'one-file edit':>14} {'PHP edit':>9}")
for t in tools:
    print(f"  {t:<10} {n[t]:>8.3f}s {e[t]:>13.3f}s {p[t]:>8.3f}s")
print(f"  {'stat-walk':<10} {n['stat-walk']:>8.3f}s   (find -printf, one stat per file)")
for t in tools[1:]:
    print(f"  {t}/strata: no-op {n[t] / n['strata']:.1f}x, one-file edit {e[t] / e['strata']:.1f}x, PHP edit {p[t] / p['strata']:.1f}x")
if "buildkit" not in tools:
    print(f"  BuildKit skipped ({skipped})")
print(f"  strata no-op / stat walk: {n['strata'] / n['stat-walk']:.2f}x")
print("peak RSS, max over the runs of each kind (MB; BuildKit: dockerd's peak, its growth over its RSS")
print("before the run, and the docker CLI's own):")
print(f"  {'':<10} {'first build':>24} {'no-op':>24} {'one-file edit':>24} {'PHP edit':>24}")
for t in tools:
    cells = []
    for label in ("warm", "noop", "edit", "php"):
        rows = rss(label, t)
        if rows[0][1] is None:
            cells.append(f"{max(r[0] for r in rows) / 1024:.0f}")
        else:
            cells.append(f"{max(r[1] for r in rows) / 1024:.0f} (+{max(r[1] - r[2] for r in rows) / 1024:.0f}), CLI {max(r[0] for r in rows) / 1024:.0f}")
    print(f"  {t:<10} " + " ".join(f"{c:>24}" for c in cells))
peak = max(r[0] for label in ("noop", "edit", "php") for r in rss(label, "strata"))
print(f"  strata peak RSS, max over all timed runs: {peak / 1024:.0f} MB (#17 limit: < 300 MB)")
print("  load average (1, 5, 15 min): " + "; ".join(loads))
PY
