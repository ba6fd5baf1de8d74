#!/usr/bin/env bash
# Runs the fuzz targets for a while each, one after the other, and fails on the first crash,
# timeout or out-of-memory (the input is left in fuzz/artifacts/<target>/).
#
#   fuzz/run.sh [TARGET...]        every target when none is named
#   FUZZ_SECONDS=600 fuzz/run.sh recipe
#
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them, and
# `-s none` builds without a sanitizer (the code is safe Rust: libFuzzer's coverage guidance and
# the targets' own assertions are what find bugs). `-a` keeps debug assertions, so an integer
# overflow panics instead of wrapping. New inputs go to a temporary directory: the committed
# corpus under fuzz/corpus/ is only read.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

seconds=${FUZZ_SECONDS:-30}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(recipe dockerignore tarread apply manifest registry)
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo fuzz build -s none -a
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${seconds}s"
  mkdir -p "$work/$t"
  # -timeout: an input taking 10 s is a hang; -rss_limit_mb: 2 GiB is a leak or a bomb.
  if ! cargo fuzz run -s none -a "$t" "$work/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>"$work/$t.log"; then
    tail -n 60 "$work/$t.log"
    echo "fuzz target $t failed: the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|Done)' "$work/$t.log" || true
done
