#!/usr/bin/env bash
# Context switches and CPU time per tools/call of the gateway, per thread (issue 7: on these
# VMs a context switch costs tens of microseconds of CPU, and it is what the audit's share of a
# call mostly is; bench/RESULTS.md, seventh session).
#
#   bench/switches.sh SETUP CONCURRENCY [NAME=VALUE ...]
#   bench/switches.sh b 1
#   bench/switches.sh b 1 PORTCULLIS_AUDIT__SQLITE_SYNCHRONOUS=normal
#
# SETUP is a portcullis-bench set-up with a gateway (b, c or e); NAME=VALUE pairs go to the
# gateway's environment. Runs the echo payload for 10 s, counts over 4 s of it with
# `perf stat --per-thread` (Debian: linux-perf) and the gateway's own tools/call counter, and
# prints the audit commits per call and their mean duration (the commit histogram's sum over
# its count), by committer (the writer thread, or a leader).
# Needs the release build (`cargo build --release --bins --examples`); honours
# CARGO_TARGET_DIR. PORTCULLIS=path runs another gateway binary (A/B comparisons).
set -euo pipefail

setup=${1:?usage: bench/switches.sh SETUP CONCURRENCY [NAME=VALUE ...]}
concurrency=${2:?usage: bench/switches.sh SETUP CONCURRENCY [NAME=VALUE ...]}
shift 2
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}/release
gateway=${PORTCULLIS:-$target/portcullis}
command -v perf >/dev/null || { echo "error: perf not found (apt-get install linux-perf)" >&2; exit 1; }
env_args=()
for pair in "$@"; do env_args+=(--gateway-env "$pair"); done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$target/portcullis-bench" --portcullis "$gateway" --fixture "$target/examples/conformance_fixture" \
    --setups "$setup" --payloads echo --concurrency "$concurrency" --duration 10s --rounds 1 --no-scale \
    "${env_args[@]}" >"$work/bench.out" 2>&1 &
bench=$!
sleep 5
pid=$(pgrep -f "^$gateway serve" | head -1)
port=$(ss -ltnp | grep "pid=$pid," | head -1 | awk '{print $4}' | sed 's/.*://')
calls() { curl -s "127.0.0.1:$port/metrics" | awk '/^portcullis_requests_total\{.*tools\/call/ {s += $2} END {print s + 0}'; }
# Audit commits so far and their summed duration (seconds), by committer (`writer`, or
# `leader`: a request that committed its own intent): "WRITER_N WRITER_S LEADER_N LEADER_S".
commits() {
    curl -s "127.0.0.1:$port/metrics" | awk '
        /^portcullis_audit_commit_duration_seconds_count\{committer="writer"\}/ { w = $2 }
        /^portcullis_audit_commit_duration_seconds_sum\{committer="writer"\}/ { ws = $2 }
        /^portcullis_audit_commit_duration_seconds_count\{committer="leader"\}/ { l = $2 }
        /^portcullis_audit_commit_duration_seconds_sum\{committer="leader"\}/ { ls = $2 }
        END { print w + 0, ws + 0, l + 0, ls + 0 }'
}
before=$(calls)
read -r writer_before writer_s_before leader_before leader_s_before < <(commits)
perf stat --per-thread -e context-switches,task-clock -p "$pid" -o "$work/stat" -- sleep 4
after=$(calls)
read -r writer_after writer_s_after leader_after leader_s_after < <(commits)
wait "$bench"
n=$((after - before))
echo "set-up ($setup), echo, c=$concurrency ${*}: $n calls in 4 s"
if ((n > 0)); then
    awk -v n="$n" -v w=$((writer_after - writer_before)) -v l=$((leader_after - leader_before)) \
        -v ws="$writer_s_before" -v ws2="$writer_s_after" -v ls="$leader_s_before" -v ls2="$leader_s_after" '
        function mean(count, s1, s2) { return count > 0 ? sprintf("%.0f µs", (s2 - s1) * 1e6 / count) : "–" }
        BEGIN {
            printf "  audit commits per call: writer %.2f, leader %.2f\n", w / n, l / n
            printf "  mean commit time: writer %s, leader %s\n", mean(w, ws, ws2), mean(l, ls, ls2)
        }'
fi
awk -v n="$n" '
    $3 == "context-switches" { gsub(",", "", $2); cs[$1] = $2 / n }
    $3 == "msec" { gsub(",", "", $2); cpu[$1] = $2 * 1000 / n }
    END {
        printf "  %-28s %14s %14s\n", "thread", "switches/call", "CPU µs/call"
        for (t in cs) { printf "  %-28s %14.2f %14.1f\n", t, cs[t], cpu[t]; tcs += cs[t]; tcpu += cpu[t] }
        printf "  %-28s %14.2f %14.1f\n", "all", tcs, tcpu
    }' "$work/stat"
