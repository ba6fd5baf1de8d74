#!/usr/bin/env bash
# The real LAMP recipe (issue #17 point 6): a Debian base made by debootstrap from Debian's
# mirror, `apt-get install apache2 mariadb-server php`, the PHP app copied last. Cold build,
# no-op rebuild and PHP-edit rebuild, strata vs `buildah bud --layers` vs BuildKit, in one run,
# alternating.
#
#   bash benches/lamp-real.sh   # needs root, network to the mirror, debootstrap, buildah, skopeo;
#                               # dockerd for BuildKit; ~15 minutes at RUNS=3
#
# The base (debootstrap --variant=minbase bookworm, ~150 MB) is imported into a strata store
# once and handed to buildah (skopeo copy) and dockerd (docker load) as the same image (checked
# by config digest). A cold run starts from that base only: strata's store is reset to the
# base-only store, buildah's storage to the base alone, dockerd after `docker rmi` of the
# result and `docker builder prune -af`. The apt-get downloads hit the mirror in every cold
# run of every tool alike (no proxy cache), so the cold figures include the network. Without
# the mirror (DEBIAN_MIRROR, default http://deb.debian.org/debian) the bench says so and stops.
# STRATA defaults to cargo's release build (built here); RUNS (default 3), BENCH_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${RUNS:-3}
work=${BENCH_DIR:-/var/tmp/strata-bench-lamp-real}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
source benches/lib.sh  # the script has cd-ed to the repository root
if ! curl -fsI -m 15 "$mirror/dists/bookworm/Release" >/dev/null; then
  echo "benches/lamp-real.sh: Debian's mirror $mirror is not reachable: nothing measured" >&2
  exit 2
fi
bench_setup lamp-real.sh buildah skopeo debootstrap

echo "== debootstrap --variant=minbase bookworm from $mirror"
debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1
# As a registry image has it: no package lists, the host's resolver for RUN (each builder
# provides /etc/resolv.conf to RUN itself).
rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin
"$STRATA" --store "$work/base-store" import "$work/rootfs" debian-base:bookworm >/dev/null
rm -rf "$work/rootfs"
# Every builder starts with the base unpacked, as skopeo copy and docker load leave it for
# buildah and BuildKit: strata's import stores the layer blob only, so one RUN on the base
# unpacks its snapshot into the base store (its cache entry matches no step of the recipe).
mkdir -p "$work/warm"
printf 'FROM debian-base:bookworm\nRUN true\n' > "$work/warm/Dockerfile"
"$STRATA" --store "$work/base-store" build --progress plain "$work/warm" >/dev/null 2>"$work/warm.log"
"$STRATA" --store "$work/base-store" export --compression gzip debian-base:bookworm \
  "oci:$work/base-oci:debian-base" >/dev/null

ctx=$work/ctx
mkdir -p "$ctx/app"
for i in $(seq 1 20); do printf '<?php echo "page %s, version 1";\n' "$i" > "$ctx/app/page$i.php"; done
printf '<?php echo "index, version 1";\n' > "$ctx/app/index.php"
cat > "$ctx/Dockerfile" <<'RECIPE'
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      apache2 mariadb-server php libapache2-mod-php php-mysql \
 && rm -rf /var/lib/apt/lists/*
COPY app/ /var/www/html/
EXPOSE 80 3306
CMD ["apachectl", "-D", "FOREGROUND"]
RECIPE

bah=(buildah --root "$work/bah-root" --runroot "$work/bah-run" --storage-driver overlay)
bah_reset="source benches/lib.sh; work=$work; ${bah[*]} rmi --all --force >/dev/null 2>&1; bench_umount_under $work/bah-root; rm -rf $work/bah-root $work/bah-run; skopeo copy -q oci:$work/base-oci:debian-base 'containers-storage:[overlay@$work/bah-root+$work/bah-run]localhost/debian-base:bookworm' >/dev/null"
bash -c "$bah_reset"
strata_reset="rm -rf $work/store && cp -a $work/base-store $work/store"
strata_build="$STRATA --store $work/store build --progress plain --network host --build-arg BASE=debian-base:bookworm -t lamp:real $ctx"
buildah_build="${bah[*]} bud --layers --isolation chroot --network host --build-arg BASE=localhost/debian-base:bookworm -t localhost/lamp:real $ctx"
bash -c "$strata_reset"

cold=(strata "$strata_reset" "$strata_build" buildah "$bah_reset" "$buildah_build")
warm=(strata "" "$strata_build" buildah "" "$buildah_build")
if bench_docker_start; then
  bench_docker_load_base debian-base:bookworm "${bah[@]}"
  buildkit_build="$docker_cli build --network host --build-arg BASE=debian-base:bookworm -t lamp:real $ctx"
  cold+=(buildkit "$docker_cli rmi -f lamp:real >/dev/null 2>&1; $docker_cli builder prune -af >/dev/null" "$buildkit_build")
  warm+=(buildkit "" "$buildkit_build")
else
  echo "BuildKit column skipped: $buildkit_skipped"
fi

echo "== cold build ($runs alternating runs, apt-get from the mirror each time)"
bench_alternate cold "$runs" 0 "${cold[@]}"
# The last cold run of each tool left its cache warm; let the context's files age past the
# stat cache's racy window.
sleep 3
echo "== no-op rebuild ($runs alternating runs)"
bench_alternate noop "$runs" 1 "${warm[@]}"
echo "== PHP change rebuild, one file in app/ edited before each run ($runs alternating runs)"
edit="sed -i \"s/version [0-9]*/version \$(date +%s%N)/\" $ctx/app/index.php"
php=()
for ((i = 0; i < ${#warm[@]}; i += 3)); do php+=("${warm[i]}" "$edit" "${warm[i + 2]}"); done
bench_alternate php "$runs" 0 "${php[@]}"
"${bah[@]}" rmi --all --force >/dev/null 2>&1 || true
