#!/usr/bin/env bash
# Prints the absolute path of a static arm64 busybox, the fixture of every test and bench that
# runs foreign (emulated) steps. Downloaded once with `apt-get download busybox-static:arm64`
# into ${STRATA_FIXTURES:-/var/tmp/strata-fixtures}/arm64/; STRATA_ARM64_BUSYBOX=/path skips
# all that. Needs `dpkg --add-architecture arm64 && apt-get update` to have been run; exits
# non-zero saying so otherwise. Safe to run from several tests at once (flock).
set -euo pipefail

if [[ -n "${STRATA_ARM64_BUSYBOX:-}" ]]; then
  if [[ ! -f "$STRATA_ARM64_BUSYBOX" ]]; then
    echo "arm64-busybox.sh: STRATA_ARM64_BUSYBOX=$STRATA_ARM64_BUSYBOX is not a file" >&2
    exit 1
  fi
  realpath "$STRATA_ARM64_BUSYBOX"
  exit 0
fi

cache="${STRATA_FIXTURES:-/var/tmp/strata-fixtures}/arm64"
busybox="$cache/busybox-static/bin/busybox"
mkdir -p "$cache"
cache=$(realpath "$cache")
busybox="$cache/busybox-static/bin/busybox"

if [[ ! -x "$busybox" ]]; then
  exec 9>"$cache/.lock"
  flock 9
  # Another run may have fetched it while we waited.
  if [[ ! -x "$busybox" ]]; then
    tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    # apt-get download writes into the current directory; as root it drops to the _apt user,
    # which must be able to write there.
    chmod 0777 "$tmp"
    if ! (cd "$tmp" && apt-get download -qq busybox-static:arm64 >"$tmp/apt.log" 2>&1); then
      cat "$tmp/apt.log" >&2
      echo "arm64-busybox.sh: 'apt-get download busybox-static:arm64' failed; run as root:" \
        "dpkg --add-architecture arm64 && apt-get update" >&2
      exit 1
    fi
    mkdir "$tmp/root"
    dpkg-deb -x "$tmp"/busybox-static_*_arm64.deb "$tmp/root"
    mkdir "$tmp/busybox-static"
    mv "$tmp/root/bin" "$tmp/busybox-static/bin"
    if ! head -c 20 "$tmp/busybox-static/bin/busybox" | od -An -tx1 | tr -d ' \n' | grep -q '^7f454c460201.*b700$'; then
      echo "arm64-busybox.sh: $tmp/busybox-static/bin/busybox from busybox-static:arm64 is not an arm64 ELF file" >&2
      exit 1
    fi
    # A half-fetched cache is never visible: the directory appears whole or not at all.
    rm -rf "$cache/busybox-static"
    mv -T "$tmp/busybox-static" "$cache/busybox-static"
  fi
fi
echo "$busybox"
