#!/usr/bin/env bash
# The profile of BENCHMARKS.md: callgrind instruction counts and massif heap peak of
# `convert` on the 2.5 MB feed, for a binary built with symbols (scripts/bench --profile does).
#
#   bench/profile.sh BINARY [FEED.pb]
#
# Writes target/bench/callgrind.convert.out, target/bench/massif.convert.out and their readable
# forms (*.txt); prints the top functions, exclusive and inclusive.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1
feed=${2:-tests/fixtures/gtfs-rt/ovapi-nl-tu-1.pb}
out=target/bench
mkdir -p "$out"
command -v valgrind >/dev/null || { echo "bench/profile.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }

valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.convert.out" "$bin" convert "$feed" >/dev/null 2>"$out/callgrind.log"
callgrind_annotate "$out/callgrind.convert.out" >"$out/callgrind.exclusive.txt"
callgrind_annotate --inclusive=yes "$out/callgrind.convert.out" >"$out/callgrind.inclusive.txt"
callgrind_annotate --tree=caller "$out/callgrind.convert.out" >"$out/callgrind.callers.txt"
callgrind_annotate --auto=yes "$out/callgrind.convert.out" >"$out/callgrind.lines.txt"
valgrind --tool=massif --massif-out-file="$out/massif.convert.out" "$bin" convert "$feed" >/dev/null 2>"$out/massif.log"
ms_print "$out/massif.convert.out" >"$out/massif.convert.txt"

echo "== $(grep -o 'Collected : [0-9]*' "$out/callgrind.log") instructions, convert $(basename "$feed")"
echo "== exclusive (self) top 25"
grep -E '^ *[0-9,]+ \(' "$out/callgrind.exclusive.txt" | sed -n '2,26p' | cut -c1-200
echo "== inclusive top 40"
grep -E '^ *[0-9,]+ \(' "$out/callgrind.inclusive.txt" | sed -n '2,41p' | cut -c1-200
echo "== heap peak (massif)"
grep -E '^ +[0-9]+ +[0-9,]+ +[0-9,]+ ' "$out/massif.convert.txt" | sort -t' ' -k3 | awk '{print $3}' | tr -d , | sort -n | tail -1 | awk '{printf "%.1f MiB\n", $1/1048576}'
echo "(full listings in $out/)"
