#!/usr/bin/env bash
# Registry transfers: strata vs skopeo vs buildah, to the same local docker-registry, in one run.
#
#   bash benches/push.sh            # needs root, buildah, skopeo, hyperfine, docker-registry
#
# The image is LAMP-shaped and ~1 GB of files: the benchmarks' busybox base plus ~200 MB of
# /usr/lib (one layer), an "apache" layer (~400 MB of /usr/share and Go's tree), a "mysql" layer
# (~400 MB of the Cloud SDK's files), two small RUN layers and a PHP app layer. v2 changes one PHP file, so
# it differs from v1 in the app layer (and config) only. Three measurements:
#   cold push    empty registry -> v1:    strata push | skopeo copy oci: docker:// | buildah push
#   incremental  registry has v1 -> v2:   same three tools (each pushed v1 itself beforehand)
#   pull         registry -> empty store: strata pull | skopeo copy docker:// oci:
# The registry (distribution, filesystem storage) is wiped and restarted before each cold and
# incremental run. skopeo copies the OCI layout strata exported (blobs as they are); buildah
# pushes from its containers-storage (where the same layout was copied once), recompressing
# as it does. Prints hyperfine's tables and the ratios of medians. STRATA defaults to
# cargo's release build (built here); RUNS (default 5), BENCH_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${RUNS:-5}
work=${BENCH_DIR:-/var/tmp/strata-bench-push}
source benches/lib.sh  # the script has cd-ed to the repository root
command -v docker-registry >/dev/null || { echo "benches/push.sh: docker-registry is required" >&2; exit 2; }
bench_setup push.sh buildah skopeo hyperfine
bench_base_files
port=${REGISTRY_PORT:-5055}
host=127.0.0.1:$port

# --- the image -------------------------------------------------------------------------------
mkdir -p "$work/ctx/apache/share" "$work/ctx/apache/go" "$work/ctx/mysql" "$work/ctx/app"
take /usr/share "$work/ctx/apache/share" $((250 * 1000 * 1000)) 100000
take /usr/lib/go-1.19 "$work/ctx/apache/go" $((150 * 1000 * 1000)) 100000
big=/usr/lib/google-cloud-sdk; [ -d "$big" ] || big=/usr/lib  # any ~400 MB of small files
take "$big" "$work/ctx/mysql" $((400 * 1000 * 1000)) 100000
cp -r examples/lamp/app/. "$work/ctx/app/"
cat > "$work/ctx/Dockerfile" <<'RECIPE'
FROM bench-base:1
COPY apache/ /usr/share/apache2/
RUN mkdir -p /var/log/apache2 /var/run/apache2 /var/www/html
COPY mysql/ /usr/lib/mysql/
RUN mkdir -p /var/lib/mysql && echo initialised > /var/lib/mysql/.initialised
COPY app/ /var/www/html/
CMD ["httpd", "-f", "-p", "80", "-h", "/var/www/html"]
RECIPE
cat > "$work/base.Dockerfile" <<'RECIPE'
FROM lamp-base:latest
COPY usr/ /usr/
RECIPE
store=$work/base-store
"$STRATA" --store "$store" build --progress plain -f "$work/base.Dockerfile" -t bench-base:1 \
  "$work/base-extra" >/dev/null 2>"$work/base-build.log"
"$STRATA" --store "$store" build --progress plain -t lamp:v1 "$work/ctx" >/dev/null 2>"$work/v1.log"
sed -i 's/version 1/version 2/' "$work/ctx/app/index.php"
"$STRATA" --store "$store" build --progress plain -t lamp:v2 "$work/ctx" >/dev/null 2>"$work/v2.log"
"$STRATA" --store "$store" export lamp:v1 "oci:$work/oci:v1" >/dev/null
"$STRATA" --store "$store" export lamp:v2 "oci:$work/oci:v2" >/dev/null
size=$("$STRATA" --store "$store" images --json | python3 -c '
import json, sys
print(next(i["size"] for i in json.load(sys.stdin) if i["name"] == "lamp" and i["tag"] == "v1"))')
unpacked=$(du -sb "$work/ctx" "$work/base-extra" | awk '{s += $1} END {print s}')
echo "image lamp:v1: $((size / 1000000)) MB compressed (zstd), ~$((unpacked / 1000000)) MB of files; v2 differs in the app layer"

# buildah's storage gets the same images once (not timed).
bah=(buildah --root "$work/bah-root" --runroot "$work/bah-run" --storage-driver overlay)
cs="containers-storage:[overlay@$work/bah-root+$work/bah-run]"
rm -rf "$work/bah-root" "$work/bah-run"
skopeo copy -q "oci:$work/oci:v1" "${cs}localhost/lamp:v1" >/dev/null
skopeo copy -q "oci:$work/oci:v2" "${cs}localhost/lamp:v2" >/dev/null

# --- the registry ----------------------------------------------------------------------------
cat > "$work/registry.yml" <<YAML
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $work/registry-data
  delete:
    enabled: true
http:
  addr: $host
YAML
cat > "$work/reset-registry.sh" <<SCRIPT
#!/usr/bin/env bash
# Stops the registry, wipes its storage, starts it again and waits until it answers.
set -eu
[ -f "$work/registry.pid" ] && kill "\$(cat "$work/registry.pid")" 2>/dev/null && sleep 0.3 || true
rm -rf "$work/registry-data"
setsid docker-registry serve "$work/registry.yml" >>"$work/registry.log" 2>&1 < /dev/null &
echo \$! > "$work/registry.pid"
for _ in \$(seq 100); do
  curl -fs "http://$host/v2/" >/dev/null && exit 0
  sleep 0.1
done
echo "registry did not start" >&2; exit 1
SCRIPT
chmod +x "$work/reset-registry.sh"
bench_on_exit '[ -f "$work/registry.pid" ] && kill "$(cat "$work/registry.pid")" 2>/dev/null || true'
"$work/reset-registry.sh"
sync

strata_push() { echo "$STRATA --store $store push --jobs 3 lamp:$1 docker://$host/s/lamp:$1"; }
skopeo_push() { echo "skopeo copy -q --dest-tls-verify=false oci:$work/oci:$1 docker://$host/k/lamp:$1"; }
buildah_push() { echo "${bah[*]} push -q --tls-verify=false localhost/lamp:$1 docker://$host/b/lamp:$1"; }

ratio() { # json-file label
  python3 - "$1" "$2" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
s = r["strata"]["median"]
others = ", ".join(f"{k} {v['median']:.2f} s ({v['median']/s:.2f}x strata)" for k, v in r.items() if k != "strata")
print(f"{sys.argv[2]}, median of {len(r['strata']['times'])} runs: strata {s:.2f} s, {others}")
PY
}

echo "== cold push of lamp:v1 to an empty registry"
hyperfine --runs "$runs" --export-json "$work/cold.json" \
  --prepare "$work/reset-registry.sh" \
  -n strata "$(strata_push v1)" \
  -n skopeo "$(skopeo_push v1)" \
  -n buildah "$(buildah_push v1)"

echo "== incremental push of lamp:v2 (the registry has v1, pushed by the same tool)"
mark_log() { wc -l < "$work/registry.log"; }
hyperfine --runs "$runs" --export-json "$work/incremental.json" \
  --prepare "$work/reset-registry.sh && $(strata_push v1) >/dev/null 2>&1" \
  -n strata "$(strata_push v2)" \
  --prepare "$work/reset-registry.sh && $(skopeo_push v1) >/dev/null" \
  -n skopeo "$(skopeo_push v2)" \
  --prepare "$work/reset-registry.sh && $(buildah_push v1) >/dev/null" \
  -n buildah "$(buildah_push v2)"

# What the last strata incremental push cost on the wire, from the registry's own log.
"$work/reset-registry.sh"
eval "$(strata_push v1)" >/dev/null 2>&1
before=$(mark_log)
eval "$(strata_push v2)" >/dev/null 2>&1
sleep 0.3
tail -n +"$((before + 1))" "$work/registry.log" | grep -o '"[A-Z]* /v2/[^ ]*' | awk '{print $1}' | sort | uniq -c |
  sed 's/^/  strata incremental push requests: /'

echo "== pull of lamp:v1 into an empty store"
"$work/reset-registry.sh"
eval "$(strata_push v1)" >/dev/null 2>&1
hyperfine --runs "$runs" --export-json "$work/pull.json" \
  --prepare "rm -rf $work/pull-store $work/pull-oci; sync" \
  -n strata "$STRATA --store $work/pull-store pull --jobs 3 $host/s/lamp:v1" \
  -n skopeo "skopeo copy -q --src-tls-verify=false docker://$host/s/lamp:v1 oci:$work/pull-oci:v1"

ratio "$work/cold.json" "cold push"
ratio "$work/incremental.json" "incremental push"
ratio "$work/pull.json" "pull"
"${bah[@]}" rmi --all --force >/dev/null 2>&1 || true
