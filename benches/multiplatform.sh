#!/usr/bin/env bash
# A two-platform build (linux/amd64 + linux/arm64, an image index): strata vs
# `buildah bud --platform linux/amd64,linux/arm64 --manifest` vs BuildKit, cold, alternating,
# in one run (issue #14, point 6; #17 point 1).
#
#   bash benches/multiplatform.sh    # needs root, buildah, qemu-user-static; dockerd for
#                                    # BuildKit; ~5 minutes
#
# The recipe is small and starts FROM scratch, so no base is pulled: the platform's static
# busybox (`COPY busybox-$TARGETARCH`: the host's and Debian's busybox-static:arm64 from
# scripts/arm64-busybox.sh), a RUN that installs its applets, a RUN that does a little CPU
# work with them (seq | gzip -9 | sha256sum), and a COPY of ~400 small app files. The arm64
# RUNs execute through qemu-aarch64 registered in binfmt_misc with the F flag (strata
# registers it when missing; buildah needs it registered, and the warm-up strata run does so).
# Every run is cold: strata from an empty store, buildah from emptied storage, BuildKit after
# `docker rmi` of its results and `docker builder prune -af`. dockerd 20.10's built-in BuildKit
# (benches/lib.sh starts a private dockerd) cannot put an index into docker's image store, so
# its column is what a docker user does instead: one `docker build --platform P` per platform,
# one after the other, in one timed command (its column is skipped, with the reason, without
# docker; BENCH_BUILDKIT=0 skips it on purpose).
#
# Then RUNS more strata runs with `--progress json` give each RUN step's time per platform:
# the arm64 RUNs (emulated) against the same RUNs on amd64 (native), and the share of the
# two-platform build's wall time spent in emulated RUNs.
# STRATA defaults to cargo's release build (built here); RUNS (default 5), BENCH_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${RUNS:-5}
work=${BENCH_DIR:-/var/tmp/strata-bench-multiplatform}
source benches/lib.sh  # the script has cd-ed to the repository root
bench_setup multiplatform.sh buildah busybox qemu-aarch64-static
[ "$(uname -m)" = x86_64 ] || { echo "benches/multiplatform.sh: written for an amd64 host" >&2; exit 2; }
arm=$(bash scripts/arm64-busybox.sh)

ctx=$work/ctx
mkdir -p "$ctx/app"
cp "$(command -v busybox)" "$ctx/busybox-amd64"
cp "$arm" "$ctx/busybox-arm64"
for i in $(seq 1 400); do
  printf '<?php\n// page %s\necho "%s";\n' "$i" "$(head -c 600 /dev/urandom | base64 -w0)" > "$ctx/app/page$i.php"
done
cat > "$ctx/Dockerfile" <<'RECIPE'
FROM scratch
ARG TARGETARCH
COPY busybox-$TARGETARCH /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN seq 1 400000 | gzip -9 > /numbers.gz && sha256sum /numbers.gz > /sum && uname -m > /arch
COPY app/ /var/www/html/
CMD ["httpd", "-f", "-p", "80", "-h", "/var/www/html"]
RECIPE
echo "context: $(du -sh "$ctx" | cut -f1) in $(find "$ctx" -type f | wc -l) files"

bah=(buildah --root "$work/bah-root" --runroot "$work/bah-run" --storage-driver overlay)
bench_on_exit "${bah[*]} rm --all >/dev/null 2>&1; ${bah[*]} rmi --all --force >/dev/null 2>&1; bench_umount_under $work"
platforms=linux/amd64,linux/arm64
strata_build="$STRATA --store $work/store build --progress plain --platform $platforms -t mp:1 $ctx"
strata_reset="rm -rf $work/store"
buildah_build="${bah[*]} bud --isolation chroot --platform $platforms --manifest localhost/mp:1 $ctx"
buildah_reset="${bah[*]} rm --all >/dev/null 2>&1; ${bah[*]} rmi --all --force >/dev/null 2>&1; true"

tools=(strata "$strata_reset" "$strata_build" buildah "$buildah_reset" "$buildah_build")
if bench_docker_start; then
  buildkit_build="bash -c '$docker_cli build -q --network host --platform linux/amd64 -t mp:amd64 $ctx >/dev/null && $docker_cli build -q --network host --platform linux/arm64 -t mp:arm64 $ctx >/dev/null'"
  buildkit_reset="$docker_cli rmi -f mp:amd64 mp:arm64 >/dev/null 2>&1; $docker_cli builder prune -af >/dev/null"
  tools+=(buildkit "$buildkit_reset" "$buildkit_build")
else
  echo "BuildKit column skipped: $buildkit_skipped"
fi

echo "== two-platform cold build ($runs alternating runs; strata first warms binfmt_misc)"
bench_alternate multi "$runs" 1 "${tools[@]}"
if [ -n "$docker_cli" ]; then
  for p in amd64 arm64; do
    echo "BuildKit linux/$p: /arch = $($docker_cli run --rm --network host --platform "linux/$p" "mp:$p" cat /arch)"
  done
fi

# Both results hold what each platform's RUN printed (checked once, after the timed runs).
"${bah[@]}" manifest inspect localhost/mp:1 | python3 -c '
import json, sys
archs = sorted(m["platform"]["architecture"] for m in json.load(sys.stdin)["manifests"])
assert archs == ["amd64", "arm64"], archs'
for p in linux/amd64 linux/arm64; do
  rm -rf "$work/check"
  "$STRATA" --store "$work/store" export --platform "$p" mp:1 "dir:$work/check" >/dev/null
  echo "strata $p: /arch = $(cat "$work/check/arch")"
done

echo "== where strata's time goes: RUN steps per platform (--progress json, $runs cold runs)"
for i in $(seq 1 "$runs"); do
  rm -rf "$work/store"
  start=$(date +%s.%N)
  "$STRATA" --store "$work/store" build --progress json --platform "$platforms" -t mp:1 "$ctx" \
    > "$work/events.$i.json" 2>>"$work/events.log"
  echo "$start $(date +%s.%N)" > "$work/events.$i.wall"
done

python3 - "$work" "$runs" <<'PY'
import json, statistics, sys
w, runs = sys.argv[1], int(sys.argv[2])
med = {x["command"]: x["median"] for x in json.load(open(f"{w}/multi.json"))["results"]}
line = (f"medians of {runs} alternating cold runs: strata {med['strata']:.3f} s, "
        f"buildah {med['buildah']:.3f} s ({med['buildah'] / med['strata']:.2f}x strata)")
if "buildkit" in med:
    line += f", BuildKit (one build per platform) {med['buildkit']:.3f} s ({med['buildkit'] / med['strata']:.2f}x strata)"
print(line)
native, emulated, share = [], [], []
for i in range(1, runs + 1):
    platform, text, run_ms = {}, {}, {}
    for line in open(f"{w}/events.{i}.json"):
        e = json.loads(line)
        if e["event"] == "stage_start":
            platform[e["stage"]] = e.get("platform")
        elif e["event"] == "step_start":
            text[(e["stage"], e["step"])] = e["text"]
        elif e["event"] == "step_done" and text.get((e["stage"], e["step"]), "").startswith("RUN"):
            p = platform[e["stage"]]
            run_ms[p] = run_ms.get(p, 0) + e["duration_ms"]
    start, end = map(float, open(f"{w}/events.{i}.wall").read().split())
    native.append(run_ms["linux/amd64"] / 1000)
    emulated.append(run_ms["linux/arm64"] / 1000)
    share.append(run_ms["linux/arm64"] / 1000 / (end - start))
n, e = statistics.median(native), statistics.median(emulated)
print(f"strata RUN steps (medians of {runs}): amd64 (native) {n:.3f} s, arm64 (qemu) {e:.3f} s "
      f"({e / n:.1f}x native); emulated RUNs are {100 * statistics.median(share):.0f}% of the "
      f"two-platform build's wall time (the platforms build in parallel)")
PY
