#!/usr/bin/env bash
# Run plugbus's benchmark (issue 7) and write docs/benchmarks.md.
#   bench/run.sh            the full benchmark (about 10-15 minutes on 2 cores)
#   bench/run.sh --quick    shorter workloads, 1k connections only (about 5 minutes)
#   bench/run.sh --smoke    a tiny configuration (what tests/test_bench_smoke.py runs)
# Other options: --servers plugbus,bare,node  --only A100,A1000,B,C1k,C5k,C10k,D,cluster  --profile
#                --out PATH (docs/benchmarks.md; '-' for none)  --json PATH  --no-pin
#                --merge RESULTS.json (add this run's workloads to an earlier run's report)
# Needs: the project's .venv (scripts/test.sh makes it) and, for the Node server,
#        `npm ci` in bench/servers/node (done here when node_modules is missing); for the
#        cluster workloads, redis-server; for --profile, py-spy (the `bench` extra,
#        installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
# 10,000 connections need 10,000+ descriptors in the server and in the load generator.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 20000 ]; then
  echo "bench/run.sh: warning: only $(ulimit -n) file descriptors; 10k connections may fail" >&2
fi
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
   && { [ ! -d bench/servers/node/node_modules/socket.io ] \
        || [ bench/servers/node/package-lock.json -nt bench/servers/node/node_modules/.package-lock.json ]; }; then
  (cd bench/servers/node && npm ci --no-audit --no-fund --loglevel=error)
fi
# --profile needs py-spy in the interpreter's environment: the `bench` extra, pinned.
case " $* " in
  *" --profile "*)
    if [ ! -x "$(dirname "$PY")/py-spy" ] && ! command -v py-spy >/dev/null 2>&1; then
      "$PY" -m pip install -q -c constraints.txt -e ".[bench]"
    fi ;;
esac
export BENCH_COMMAND="bench/run.sh $*"
exec "$PY" bench/run.py "$@"
