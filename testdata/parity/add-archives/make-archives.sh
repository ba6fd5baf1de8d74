#!/bin/sh
# Regenerates the archives of this parity case (committed, so the case needs no tools to set
# up). Hardlinks and the fifo of hl/ cannot live in git; buildah_parity.rs creates them.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir -p app/bin app/conf tools/share/doc
printf 'main program\n' > app/main.txt
ln app/main.txt app/main-link.txt
printf '#!/bin/sh\necho tool\n' > app/bin/tool
chmod 4755 app/bin/tool
ln -s ../main.txt app/bin/main
printf 'key=value\n' > app/conf/app.conf
chmod 0750 app/conf
chmod 0640 app/conf/app.conf
printf 'tool docs\n' > tools/share/doc/README
printf 'extra\n' > tools/extra.txt
opts="--sort=name --mtime=@1700000000 --owner=1000 --group=1000 --numeric-owner --format=gnu"
# shellcheck disable=SC2086
tar $opts -C app -czf "$here/app.tar.gz" .
# shellcheck disable=SC2086
tar $opts -cJf "$here/tools.tar.xz" tools
# shellcheck disable=SC2086
tar $opts -C tools -cjf "$here/extra.bin" .
printf 'notes, gzipped but not a tar\n' | gzip -n > "$here/notes.txt.gz"
