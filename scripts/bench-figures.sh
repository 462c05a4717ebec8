#!/usr/bin/env bash
# Runs the benchmarks behind the README's performance figures, one after
# another, and prints the machine's load average before and after each (the
# figures of a loaded machine are worth less; compare the ratios).
#
#   scripts/bench-figures.sh [compare|revocation|rate|memory]...   default: all
#
#   compare     broker vs plain proxy vs oauth2-proxy (Redis session store)
#               under wrk -t2 -c64, interleaved rounds, medians
#               (BenchmarkProxyVsOAuth2ProxyWrk; CMP_ROUNDS, default 5;
#               WRK_DURATION, default 10s)
#   revocation  revoke on replica A, time until loaded replica B answers 401,
#               over REVOCATIONS revocations, default 200
#               (BenchmarkRevocationLatency)
#   rate        open-loop latency at RATE req/s, default 2000, added by the
#               broker over the plain proxy (BenchmarkProxyFixedRate;
#               RATE_ROUNDS, default 5)
#   memory      bytes per cached session in process, and Redis used_memory
#               per stored session (BenchmarkSessionCacheMemory,
#               BenchmarkSessionMemory)
#
# Needs redis-server; compare also needs wrk (apt-get install wrk) and
# oauth2-proxy (go install github.com/oauth2-proxy/oauth2-proxy/v7@v7.15.6),
# and is skipped without them.
set -euo pipefail

# The test IdP logs each of its requests; those lines say nothing here.
quiet() { grep -Ev '^[0-9/]{10} [0-9:]{8} INFO http request ' || true; }
load() { echo "load average $1: $(cut -d' ' -f1-3 /proc/loadavg)"; }

cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
go test -c -o "$out/broker.test" ./cmd/broker/
cd cmd/broker

run() {
	local name=$1
	shift
	echo "== $name: broker.test $*"
	load before
	"$out/broker.test" -test.run='^$' "$@" 2>&1 | quiet
	load after
}

[ $# -gt 0 ] || set -- compare revocation rate memory
for what in "$@"; do
	case $what in
	compare)
		run compare -test.bench='^BenchmarkProxyVsOAuth2ProxyWrk$' -test.benchtime=1x \
			-cmp.rounds="${CMP_ROUNDS:-5}" -wrk.duration="${WRK_DURATION:-10s}" ;;
	revocation)
		run revocation -test.bench='^BenchmarkRevocationLatency$' -test.benchtime="${REVOCATIONS:-200}x" ;;
	rate)
		run rate -test.bench='^BenchmarkProxyFixedRate$' -test.benchtime=1x \
			-rate.rps="${RATE:-2000}" -rate.rounds="${RATE_ROUNDS:-5}" ;;
	memory)
		run memory -test.bench='^(BenchmarkSessionCacheMemory|BenchmarkSessionMemory)$' -test.benchtime=1x ;;
	*)
		echo "unknown figure $what: want compare, revocation, rate or memory" >&2
		exit 2 ;;
	esac
done
