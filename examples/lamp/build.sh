#!/bin/sh
# The main job: make the offline OS base and build the LAMP example as lamp:v1.
# Uses `strata` from PATH (cargo install --path crates/strata-cli), or $STRATA.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
strata=${STRATA:-strata}
STRATA="$strata" "$here/make-base.sh"
"$strata" build -t lamp:v1 "$here"
"$strata" images
