"""bench/loadgen.py's counting clients (issue 16) count exactly what was delivered.

In fan-out only 1 client in ``--sample`` decodes deliveries; the event loop stops reading the
others and a periodic sweep reads their sockets in batches, counting frames without decoding
them. Against a real plugbus (the kit's pings: every 2 s, 5 s to answer), a ladder step longer
than a ping round must still count every delivery to every client: a counting client that
missed a ping would be dropped and its deliveries lost, one that counted a frame twice would
push the fraction above 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def test_counting_clients_count_every_delivery_across_pings(serve: Callable[..., Any]) -> None:
    server = serve({"server": {"limits": {"events_per_second": 0}}})
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "loadgen.py"),
            "fanout",
            "--url",
            server.url,
            "--server-pid",
            str(server.proc.pid),
            "--clients",
            "20",
            "--sample",
            "4",
            "--sweep-ms",
            "50",
            "--warmup",
            "0.2",
            "--duration",
            "1",
            "--window-deliveries",
            "200",
            # one open-loop step of 50 messages/s for 9 s: longer than a ping round (7 s)
            "--ladder",
            "1000",
            "--refine",
            "0",
            "--step-seconds",
            "9",
            "--grace",
            "3",
            "--deadline",
            "60",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["sampled_clients"] == 5, r  # clients 0, 4, 8, 12, 16 decode
    sat = r["saturation"]
    assert sat["stalled"] is False and sat["deliveries"] > 0, sat
    assert sat["delivered_frac"] == 1.0, sat
    assert sat["p99_ms"] is not None and sat["p99_ms"] > 0, sat  # the sample measured latency
    [step] = r["sustained"]["steps"]
    assert step["messages"] == 450, step
    assert step["delivered_frac"] == 1.0, step
    assert r["bad_payloads"] == 0 and r["refused"] == 0, r
