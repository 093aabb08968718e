#!/usr/bin/env bash
# plugbus under different ASGI servers / websocket implementations: fan-out to 1000 clients
# (saturation and sustained, as workload A --quick) and echo (100 clients), server pinned to
# CPU 0 and generator to CPU 1. Prints a markdown table. Only uvicorn's websockets-sansio gets
# plugbus's direct write path; the others run python-engineio's writer (api/direct_websocket.py).
#   bench/compare_servers.sh [uvicorn:websockets-sansio uvicorn:websockets uvicorn:wsproto hypercorn]
# hypercorn is not a plugbus dependency: pip install hypercorn into .venv first to include it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HOWS=("$@")
[ ${#HOWS[@]} -eq 0 ] && HOWS=(uvicorn:websockets-sansio uvicorn:websockets uvicorn:wsproto)
echo "| server | fan-out 1000 deliveries/s | server CPU µs/delivery | sustained/s (p99 ≤ 50 ms) | echo acks/s | server CPU µs/ack |"
echo "|---|---|---|---|---|---|"
for how in "${HOWS[@]}"; do
  port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  log=$(mktemp)
  taskset -c 0 $PY bench/servers/plugbus_on.py "$port" "$how" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 150); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; kill -0 $pid 2>/dev/null || break; sleep 0.2; done
  if ! kill -0 $pid 2>/dev/null; then echo "| $how | did not start: $(tail -1 "$log") | | | | |"; continue; fi
  fan=$(taskset -c 1 $PY bench/loadgen.py fanout --url "http://127.0.0.1:$port" --server-pid $pid --clients 1000 \
        --duration 3 --warmup 1 --step-seconds 1.5 --refine 1 --deadline 200 2>/dev/null | tail -1)
  echo_=$(taskset -c 1 $PY bench/loadgen.py echo --url "http://127.0.0.1:$port" --server-pid $pid --clients 100 \
        --duration 3 --deadline 100 2>/dev/null | tail -1)
  kill $pid; wait $pid 2>/dev/null || true
  $PY - "$how" "$fan" "$echo_" <<'PY'
import json, sys
how, fan, echo = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
sat = fan["saturation"]
print(f"| {how} | {sat['deliveries_per_s']:,.0f} | {sat['server_cpu_us_per_delivery']} | "
      f"{fan['sustained']['best_per_s']:,.0f} | {echo['acks_per_s']:,.0f} | {echo['server_cpu_us_per_ack']} |")
PY
done
