#!/usr/bin/env bash
# Cold CI runners (issue #13): a PHP edit rebuilt and pushed by a runner that starts empty and
# has only the registry (its build cache and the base image), strata vs buildah vs BuildKit.
#
#   bash benches/ci.sh     # needs root, buildah, skopeo, curl, python3, docker-registry; dockerd for BuildKit
#
# The image is LAMP-shaped and small (~40 MB: the benchmarks' busybox base plus ~20 MB of
# /usr/lib, then ~10 MB of /usr/share and ~8 MB of /usr/lib in two COPYs each followed by a RUN,
# then `COPY app/` of 21 PHP files). The base is in the registry (`HOST/bench-base:1`, gzip
# layers, which every tool reads). Each
# tool's runner A builds v1, exports its cache and pushes once (not timed); then every timed
# run is runner B on an empty store: one PHP file edited (a new edit each run, so the new layer
# is new to the registry), build with the cache imported, push, export the cache again:
#   strata   build --cache-from/--cache-to type=registry,ref=HOST/s/cache:c,mode=max --push -t HOST/s/lamp:v2
#   buildah  bud --layers --cache-from/--cache-to HOST/b/cache, then buildah push (empty --root)
#   BuildKit docker build --cache-from HOST/k/lamp:v1 (inline cache: the cache docker's
#            built-in BuildKit can import) + docker push, after `docker system prune -af` and
#            `docker builder prune -af` (dockerd from benches/lib.sh; skipped when missing)
# Every request goes through a byte-counting TCP proxy in front of the registry, so "down" and
# "up" are what crossed the wire (HTTP headers included), base image pull included; "new blob
# bytes" is what the registry's blob storage grew by (uploads of blobs it lacked). Runs
# alternate (strata, buildah, BuildKit, strata, ...). Prints each run, then medians of time,
# bytes down and bytes up, ratios to strata, and the issue's goals: >= 5x faster than buildah,
# down < 10% of the image, up within 10% of the new layer plus metadata.
# STRATA defaults to cargo's release build (built here); RUNS (default 5), BENCH_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${RUNS:-5}
work=${BENCH_DIR:-/var/tmp/strata-bench-ci}
source benches/lib.sh  # the script has cd-ed to the repository root
command -v docker-registry >/dev/null || { echo "benches/ci.sh: docker-registry is required" >&2; exit 2; }
bench_setup ci.sh buildah skopeo curl python3

# --- base and context ------------------------------------------------------------------------
echo "== preparing the base (~25 MB) and the context (~18 MB) in $work"
STRATA="$STRATA" STRATA_STORE="$work/base-store" examples/lamp/make-base.sh >/dev/null
mkdir -p "$work/base-extra/usr/lib"
take /usr/lib/x86_64-linux-gnu "$work/base-extra/usr/lib" $((20 * 1000 * 1000)) 100000
cat > "$work/base.Dockerfile" <<'RECIPE'
FROM lamp-base:latest
COPY usr/ /usr/
RECIPE
"$STRATA" --store "$work/base-store" build --progress plain -f "$work/base.Dockerfile" \
  -t bench-base:1 "$work/base-extra" >/dev/null 2>"$work/base-build.log"
ctx=$work/ctx
mkdir -p "$ctx/share" "$ctx/lib" "$ctx/app"
take /usr/share "$ctx/share" $((10 * 1000 * 1000)) 2000
take /usr/lib "$ctx/lib" $((8 * 1000 * 1000)) 500
for i in $(seq 1 20); do printf '<?php echo "page %s, version 1";\n' "$i" > "$ctx/app/page$i.php"; done
printf '<?php echo "index, version 1";\n' > "$ctx/app/index.php"
cat > "$ctx/Dockerfile" <<'RECIPE'
ARG BASE
FROM ${BASE}
COPY share/ /srv/share/
RUN mkdir -p /var/log/apache2 /var/www/html && echo ready > /var/log/apache2/state
COPY lib/ /srv/lib/
RUN mkdir -p /var/lib/mysql && ls -R /srv/share | wc -l > /var/lib/mysql/count
COPY app/ /var/www/html/
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/var/www/html"]
RECIPE

# --- the registry, behind a byte counter -------------------------------------------------------
rport=${REGISTRY_PORT:-5056}
port=${PROXY_PORT:-5057}
host=127.0.0.1:$port
cat > "$work/registry.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry-data
http:
  addr: 127.0.0.1:$rport
YAML
setsid docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 < /dev/null &
echo $! > "$work/registry.pid"
bench_on_exit 'kill "$(cat "$work/registry.pid")" 2>/dev/null || true'
cat > "$work/count-proxy.py" <<'PY'
# A TCP forwarder that counts the bytes each way and keeps "DOWN UP" (registry -> clients,
# clients -> registry, cumulative) in a file, rewritten at most every 50 ms.
import asyncio, os, sys
listen, upstream, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
count = {"down": 0, "up": 0}
dirty = True

async def pipe(r, w, way):
    global dirty
    try:
        while data := await r.read(1 << 16):
            count[way] += len(data)
            dirty = True
            w.write(data)
            await w.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        w.close()

async def handle(cr, cw):
    try:
        ur, uw = await asyncio.open_connection("127.0.0.1", upstream)
    except OSError:
        cw.close()
        return
    await asyncio.gather(pipe(cr, uw, "up"), pipe(ur, cw, "down"))

async def flush():
    global dirty
    while True:
        if dirty:
            dirty = False
            with open(out + ".tmp", "w") as f:
                f.write(f"{count['down']} {count['up']}\n")
            os.replace(out + ".tmp", out)
        await asyncio.sleep(0.05)

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    asyncio.create_task(flush())
    async with server:
        await server.serve_forever()

asyncio.run(main())
PY
setsid python3 "$work/count-proxy.py" "$port" "$rport" "$work/bytes" >"$work/proxy.log" 2>&1 < /dev/null &
echo $! > "$work/proxy.pid"
bench_on_exit 'kill "$(cat "$work/proxy.pid")" 2>/dev/null || true'
for _ in $(seq 100); do curl -fs "http://$host/v2/" >/dev/null && break; sleep 0.1; done
curl -fs "http://$host/v2/" >/dev/null || { echo "benches/ci.sh: the registry did not start" >&2; exit 1; }
# gzip layers: docker 20.10 reads no zstd.
"$STRATA" --store "$work/base-store" export --compression gzip bench-base:1 "oci:$work/base-oci:bench-base" >/dev/null
skopeo copy -q --dest-tls-verify=false "oci:$work/base-oci:bench-base" "docker://$host/bench-base:1" >/dev/null
base=$host/bench-base:1

# --- the runners ------------------------------------------------------------------------------
edit="sed -i \"s/version [0-9]*/version \$(date +%s%N)/\" $ctx/app/index.php"
s_cache="type=registry,ref=$host/s/cache:c,mode=max"
strata_b() { # store tag
  echo "$STRATA --store $1 build --progress plain --build-arg BASE=$base --cache-from $s_cache --cache-to $s_cache --push -t $host/s/lamp:$2 $ctx"
}
bah() { echo "buildah --root $1/root --runroot $1/run --storage-driver overlay"; }
buildah_b() { # dir tag
  echo "$(bah "$1") bud --layers --isolation chroot --tls-verify=false --build-arg BASE=$base --cache-from $host/b/cache --cache-to $host/b/cache -t $host/b/lamp:$2 $ctx && $(bah "$1") push --tls-verify=false $host/b/lamp:$2"
}
wipe() { # dir: an empty runner
  echo "bash -c 'source benches/lib.sh; work=$work; bench_umount_under $1; rm -rf $1'"
}

echo "== runner A of each tool: v1, its cache exported, pushed (not timed)"
eval "$(strata_b "$work/s-a" v1)" >/dev/null 2>"$work/a-strata.log"
eval "$(buildah_b "$work/b-a" v1)" >/dev/null 2>"$work/a-buildah.log"
tools=(strata "$(wipe "$work/s-b") && $edit" "$(strata_b "$work/s-b" v2)"
       buildah "$(wipe "$work/b-b") && $edit" "$(buildah_b "$work/b-b" v2)")
if bench_docker_start; then
  # buildah reads DOCKER_CONFIG's config.json for credentials and wants it to exist.
  mkdir -p "$DOCKER_CONFIG" && [ -f "$DOCKER_CONFIG/config.json" ] || echo '{}' > "$DOCKER_CONFIG/config.json"
  k_build="$docker_cli build --network host --build-arg BASE=$base --build-arg BUILDKIT_INLINE_CACHE=1"
  eval "$k_build -t $host/k/lamp:v1 $ctx" >/dev/null 2>"$work/a-buildkit.log"
  eval "$docker_cli push $host/k/lamp:v1" >/dev/null 2>>"$work/a-buildkit.log"
  k_wipe="$docker_cli system prune -af >/dev/null && $docker_cli builder prune -af >/dev/null"
  tools+=(buildkit "$k_wipe && $edit"
    "$k_build --cache-from $host/k/lamp:v1 -t $host/k/lamp:v2 $ctx && $docker_cli push $host/k/lamp:v2")
else
  echo "BuildKit column skipped: $buildkit_skipped"
fi
sync

echo "== runner B, empty, after a PHP edit: build + push ($runs alternating runs)"
python3 - "$work" "$runs" "${tools[@]}" <<'PY'
import json, statistics, subprocess, sys, time
work, runs, rest = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
tools = [tuple(rest[i:i + 3]) for i in range(0, len(rest), 3)]
def counters():
    time.sleep(0.3)  # the proxy rewrites its file every 50 ms
    down, up = map(int, open(f"{work}/bytes").read().split())
    return down, up
def stored():
    # Blob bytes the registry holds: what a run adds is what it uploaded that was new (a
    # re-upload of a blob the registry has adds nothing; HTTP overhead is not counted).
    out = subprocess.run(["find", f"{work}/registry-data/docker/registry/v2/blobs", "-name", "data",
                          "-printf", "%s\n"], capture_output=True, text=True).stdout
    return sum(int(n) for n in out.split())
res = {name: {"time": [], "down": [], "up": [], "new": []} for name, _, _ in tools}
for i in range(runs):
    for name, prepare, command in tools:
        if subprocess.run(["bash", "-c", prepare], stdout=subprocess.DEVNULL).returncode:
            sys.exit(f"ci.sh: the prepare step of {name} failed: {prepare}")
        subprocess.run(["sync"])
        d0, u0 = counters()
        s0 = stored()
        with open(f"{work}/b-{name}.log", "ab") as log:
            t0 = time.perf_counter()
            rc = subprocess.run(["bash", "-c", command], stdout=subprocess.DEVNULL, stderr=log).returncode
            t = time.perf_counter() - t0
        if rc:
            sys.exit(f"ci.sh: {name} exited with {rc}: {command} (stderr in {work}/b-{name}.log)")
        d1, u1 = counters()
        r = res[name]
        r["time"].append(t); r["down"].append(d1 - d0); r["up"].append(u1 - u0)
        r["new"].append(stored() - s0)
    print(f"  run {i + 1}/{runs}: " + ", ".join(
        f"{n} {r['time'][-1]:.2f} s {r['down'][-1] / 1e6:.2f} MB down {r['up'][-1] / 1e6:.2f} MB up"
        for n, r in res.items()), flush=True)
json.dump(res, open(f"{work}/ci.json", "w"), indent=1)
PY

# The image and its new layer, as strata pushed the last v2 (read past the counter).
python3 - "$work" "127.0.0.1:$rport" "${buildkit_skipped:-}" <<'PY'
import json, statistics, sys, urllib.request
work, registry, skipped = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request(f"http://{registry}/v2/s/lamp/manifests/v2",
    headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
m = json.load(urllib.request.urlopen(req))
image = m["config"]["size"] + sum(l["size"] for l in m["layers"])
new_layer = m["layers"][-1]["size"]
res = json.load(open(f"{work}/ci.json"))
med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in res.items()}
s = med["strata"]
runs = len(res["strata"]["time"])
print(f"image (strata's v2): {image / 1e6:.2f} MB compressed; its new layer {new_layer / 1e3:.1f} kB")
print(f"medians of {runs} alternating runs each (down/up: bytes through the proxy, base pull included):")
for n, x in med.items():
    print(f"  {n:<9} {x['time']:7.2f} s ({x['time'] / s['time']:.2f}x strata)  "
          f"down {x['down'] / 1e6:7.2f} MB ({100 * x['down'] / image:5.1f}% of the image)  "
          f"up {x['up'] / 1e6:7.3f} MB (new blob bytes in the registry {x['new'] / 1e3:.1f} kB)")
if "buildkit" not in med:
    print(f"  BuildKit skipped ({skipped})")
print(f"goals: buildah/strata time {med['buildah']['time'] / s['time']:.2f}x (>= 5x); "
      f"strata down {100 * s['down'] / image:.1f}% of the image (< 10%); "
      f"strata up {s['up'] / 1e3:.1f} kB on the wire, {s['new'] / 1e3:.1f} kB of new blobs, vs new layer "
      f"{new_layer / 1e3:.1f} kB + config + cache index and tables of contents (within 10%)")
PY
