#!/usr/bin/env bash
# Run a verbose pip command, keep its whole output in a log file, and show only what tells a
# person how far it got: the packages it builds, the compiler's progress lines ("[ 42%] Building
# CXX object ..." from make, "[57/180] ..." from ninja) and the outcome. On failure, the end of
# the log. Used by `make install` for llama-cpp-python, which compiles llama.cpp from source.
#
#   scripts/pip-progress.sh LOG pip install -v ...
set -euo pipefail

log=${1:?usage: pip-progress.sh LOG COMMAND...}
shift
mkdir -p "$(dirname "$log")"
started=$(date +%s)

# A compiler progress line becomes "[57/140] ggml-cpu.c.o" (the file it makes, from -o); pip's
# lines about building a wheel, the outcome and any error line pass as they are.
show() {
  awk '
    match($0, /\[ *[0-9]+(%|\/[0-9]+)\]/) && RSTART <= 3 {
      step = substr($0, RSTART, RLENGTH); what = ""
      for (i = 1; i < NF; i++) if ($i == "-o") what = $(i + 1)
      if (what != "") { n = split(what, part, "/"); what = part[n] }
      else { what = substr($0, RSTART + RLENGTH + 1, 100) }
      print "  " step " " what; fflush(); next
    }
    /Building wheel for|Created wheel for|Successfully installed|CMake Error|ERROR|[Ee]rror[: ]/ {
      sub(/^ +/, ""); print "  " $0; fflush()
    }'
}

set +e
"$@" 2>&1 | tee "$log" | show
status=${PIPESTATUS[0]}
set -e

elapsed=$(( $(date +%s) - started ))
if [ "$status" -ne 0 ]; then
  echo "pip failed after $((elapsed / 60))m$((elapsed % 60))s; the end of $log:" >&2
  tail -n 60 "$log" >&2
  exit "$status"
fi
echo "  done in $((elapsed / 60))m$((elapsed % 60))s (full log: $log)"
