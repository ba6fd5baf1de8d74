#!/bin/sh
# Makes the LAMP example's OS base, lamp-base:latest, offline: a minimal root filesystem from
# this machine's own binaries (a static busybox when there is one, else sh and a few tools
# with the shared libraries they need), imported into the store as one layer.
set -eu
strata=${STRATA:-strata}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$root/var/www" "$root/usr/bin"
chmod 1777 "$root/tmp"
busybox=$(command -v busybox || true)
if [ -n "$busybox" ] && ! ldd "$busybox" >/dev/null 2>&1; then
    # Static busybox: one file, every tool a symlink to it.
    cp "$busybox" "$root/bin/busybox"
    for tool in sh ash mkdir ln cat ls rm cp mv echo chmod chown touch id env sleep httpd wc; do
        ln -s busybox "$root/bin/$tool"
    done
else
    for tool in sh mkdir ln cat ls rm cp mv chmod chown touch id env sleep wc; do
        src=$(command -v "$tool")
        cp -L "$src" "$root/bin/$tool"
        ldd "$src" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
            mkdir -p "$root$(dirname "$lib")"
            cp -L -n "$lib" "$root$lib"
        done
    done
fi
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
www-data:x:33:33:www-data:/var/www:/bin/sh
mysql:x:101:101:MySQL Server:/var/lib/mysql:/bin/false
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
www-data:x:33:
mysql:x:101:
GROUP
"$strata" import "$root" lamp-base:latest
