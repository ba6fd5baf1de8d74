# Shared by the benchmark scripts (sourced, not run).

# Select whole files from a directory until a byte budget and a file budget are reached.
take() { # src dest max_bytes max_files
  (set +o pipefail; cd "$1" && find . -type f -size -4M -print0 | sort -z | head -z -n "$4" |
    python3 -c '
import os, sys
budget = int(sys.argv[1]); total = 0
for p in sys.stdin.buffer.read().split(b"\0"):
    if not p: continue
    s = os.lstat(p).st_size
    if total + s > budget: break
    total += s
    sys.stdout.buffer.write(p + b"\0")
' "$3" | tar --null -T - -cf - | tar -C "$2" -xf -)
}
