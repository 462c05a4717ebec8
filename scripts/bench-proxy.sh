#!/usr/bin/env bash
# Compares the broker's proxy with a plain reverse proxy that injects a fixed
# token, on loopback: first with Go clients in the test process
# (BenchmarkProxy), then with wrk (BenchmarkProxyWrk) under a CPU profile,
# and prints the top of the broker's share of that profile.
#
#   scripts/bench-proxy.sh [BENCHTIME]    BENCHTIME for BenchmarkProxy, default 5s
#
# Needs redis-server and wrk in PATH (apt-get install redis-server wrk);
# without wrk the second benchmark is skipped. WRK_DURATION (default 10s)
# sets the length of each measured wrk run.
set -euo pipefail

# The test IdP logs each of its requests; those lines say nothing here.
quiet() { grep -Ev '^[0-9/]{10} [0-9:]{8} INFO http request ' || true; }

cd "$(dirname "$0")/.."
benchtime=${1:-5s}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

go test -c -o "$out/broker.test" ./cmd/broker/
cd cmd/broker

echo "== BenchmarkProxy (Go clients, -benchtime=$benchtime)"
"$out/broker.test" -test.run='^$' -test.bench='^BenchmarkProxy$' -test.benchtime="$benchtime" 2>&1 | quiet

echo "== BenchmarkProxyWrk (wrk, ${WRK_DURATION:-10s} per target)"
"$out/broker.test" -test.run='^$' -test.bench='^BenchmarkProxyWrk$' -test.benchtime=1x \
	-test.cpuprofile="$out/cpu.out" -wrk.duration="${WRK_DURATION:-10s}" 2>&1 | quiet

if [ -s "$out/cpu.out" ]; then
	echo "== CPU by role"
	go tool pprof -tags "$out/broker.test" "$out/cpu.out" 2>/dev/null | sed -n '1,6p'
	echo "== broker's CPU profile, by cumulative time"
	go tool pprof -top -cum -nodecount=40 -tagfocus=role=broker "$out/broker.test" "$out/cpu.out" 2>/dev/null | sed -n '6,50p'
fi
