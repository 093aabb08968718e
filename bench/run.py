"""Run plugbus's benchmark: three servers, the same workloads, one table.

    bench/run.sh [--quick | --smoke] [--servers plugbus,bare,node] [--only A100,B,cluster,...]
                 [--out docs/benchmarks.md] [--json PATH] [--profile] [--merge RESULTS.json]

For every workload, each server is started fresh (pinned to CPU 0 with ``taskset`` when the
machine has two or more cores), the load generator ``bench/loadgen.py`` runs against it
(pinned to CPU 1) as a subprocess with a time limit, and the server is stopped. Results go to
a JSON file (``bench/results/`` by default) and, as tables with ratios to Node and to the bare
python-socketio baseline, to ``docs/benchmarks.md`` (``--out``).

Servers:

* ``plugbus`` — ``python -m plugbus serve --port P`` with the embedded default config; only
  the log level (warning, as for the baseline) and installed entry-point plugins (off: the
  built-ins only) are changed, through the environment.
* ``bare`` — ``bench/servers/bare_socketio.py``: python-socketio on the same uvicorn.
* ``node`` — ``bench/servers/node/server.js``: socket.io 4.8 (``npm ci`` in that folder).

The ``cluster`` workloads (``--only cluster``) are plugbus only: fan-out to one room whose
clients are split evenly over two plugbus nodes sharing a fresh ``redis-server`` (started on a
free loopback port for each measurement and stopped by PID), against the same room on one node
with the memory backend, measured one after the other in the same run. Both nodes and Redis are
pinned to CPU 0 with the single node's core, the generator to CPU 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
NODE_DIR = BENCH / "servers" / "node"
SERVERS = ("plugbus", "bare", "node")
LABELS = {
    "plugbus": "plugbus (default plugins)",
    "bare": "bare python-socketio",
    "node": "Node socket.io",
}


# --------------------------------------------------------------------------------------------
# workloads per mode


@dataclass
class Workload:
    key: str
    title: str
    kind: str  # loadgen workload
    args: list[str]
    budget: float  # seconds the generator may take before it is stopped
    fresh_note: str = ""


GROUPS = {"cluster": "cluster"}  # --only NAME selects every workload of that kind


def cluster_workloads(mode: str) -> list[Workload]:
    """Fan-out to one room over two plugbus nodes + Redis, against one node (kind ``cluster``)."""
    if mode == "smoke":
        args = [
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--step-seconds",
            "0.5",
            "--grace",
            "0.5",
            "--ladder",
            "20,40",
            "--refine",
            "0",
            "--stall-timeout",
            "3",
            "--min-step-messages",
            "2",
            "--window-deliveries",
            "200",
            "--probe-timeout",
            "5",
        ]
        return [
            Workload(
                "cluster4",
                "fan-out over two nodes + Redis vs one node, 4 clients",
                "cluster",
                ["--clients", "4", *args],
                60,
            )
        ]
    quick = mode == "quick"
    # 25 handshakes in flight per node, not the 100 of the other workloads: with a Redis backend a
    # burst of ~100 handshakes on one node exhausts its Redis connection pool (redis-py's async
    # pool: 100 connections, then MaxConnectionsError) and plugbus refuses connections with
    # moderation_unavailable. The connect phase is not measured here; both set-ups use 25.
    args = [
        "--duration",
        "3" if quick else "5",
        "--warmup",
        "1",
        "--step-seconds",
        "1.5" if quick else "2",
        "--ladder",
        "1000,2000,5000,10000,20000,50000",
        "--refine",
        "0" if quick else "1",
        "--concurrency",
        "25",
    ]
    return [
        Workload(
            f"cluster{n}",
            f"fan-out to {n} clients: one room over two plugbus nodes + Redis vs one node",
            "cluster",
            ["--clients", str(n), *args],
            180 if n < 1000 else 240,
        )
        for n in ((100, 500) if quick else (100, 1000))
    ]


def workloads(mode: str) -> list[Workload]:
    if mode == "smoke":
        fan = [
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--step-seconds",
            "0.5",
            "--grace",
            "0.5",
            "--ladder",
            "20,40",
            "--refine",
            "0",
            "--stall-timeout",
            "3",
            "--min-step-messages",
            "2",
            "--window-deliveries",
            "200",
        ]
        return [
            Workload("A5", "fan-out, 5 clients", "fanout", ["--clients", "5", *fan], 60),
            Workload(
                "B",
                "echo, 3 clients",
                "echo",
                ["--clients", "3", "--duration", "1", "--warmup", "0.3"],
                60,
            ),
            Workload(
                "C20", "connections, 20", "connect", ["--clients", "20", "--settle", "0.3"], 60
            ),
            Workload(
                "D",
                "REST publish -> delivery, 5 clients",
                "rest",
                ["--clients", "5", "--messages", "3", "--stall-timeout", "3"],
                60,
            ),
            *cluster_workloads(mode),
        ]
    quick = mode == "quick"
    fan = [
        "--duration",
        "3" if quick else "5",
        "--warmup",
        "1",
        "--step-seconds",
        "1.5" if quick else "3",
        "--refine",
        "1" if quick else "2",
    ]
    sizes = [1000] if quick else [1000, 5000, 10000]
    out = [
        Workload(
            "A100", "fan-out, 100 clients in one room", "fanout", ["--clients", "100", *fan], 240
        ),
        Workload(
            "A1000", "fan-out, 1000 clients in one room", "fanout", ["--clients", "1000", *fan], 300
        ),
        Workload(
            "B",
            "echo, 100 clients, one acked event each in flight",
            "echo",
            ["--clients", "100", "--duration", "3" if quick else "5"],
            120,
        ),
    ]
    for n in sizes:
        out.append(
            Workload(
                f"C{n // 1000}k",
                f"connections, {n:,} websocket clients",
                "connect",
                ["--clients", str(n), "--settle", "1.5"],
                300,
            )
        )
    out.append(
        Workload(
            "D",
            "REST publish -> delivery to 1000 clients",
            "rest",
            ["--clients", "1000", "--messages", "10" if quick else "30"],
            180,
        )
    )
    return out + cluster_workloads(mode)


def report_workloads(keys: Any, first_mode: str = "full") -> list[Workload]:
    """The workloads whose results are in ``keys``, in report order (a merged results file may
    hold workloads of another mode than its own)."""
    seen: dict[str, Workload] = {}
    for mode in (first_mode, "full", "quick", "smoke"):
        for w in workloads(mode):
            seen.setdefault(w.key, w)
    order = [w.key for w in workloads(first_mode)]
    return sorted(
        (w for k, w in seen.items() if k in keys),
        key=lambda w: (
            order.index(w.key) if w.key in order else len(order),
            w.kind == "cluster",
            w.key,
        ),
    )


# --------------------------------------------------------------------------------------------
# servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []


def node_ready() -> str | None:
    """None when the Node server can run, else why not."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "socket.io" / "package.json").exists():
        return f"socket.io is not installed: run `npm ci` in {NODE_DIR.relative_to(ROOT)}"
    return None


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def plugbus_env() -> dict[str, str]:
    """The environment plugbus runs with: its embedded config, three keys changed.

    * ``server.log_level: warning`` — as the baseline (no log line per connection);
    * ``plugins.entry_points: false`` — the built-in plugins only, whatever else is installed;
    * ``server.limits.events_per_second: 0`` and ``server.limits.max_connections: 0`` (when the
      config has them) — the per-connection event rate limit would refuse the one publisher past
      100 events/s, and the connection cap would refuse the 10,000th connection; the baseline
      and Node have neither, and a benchmark measures capacity, not the protection limits;
      ``rest_publish_per_key`` and ``rest_publish_per_address`` likewise for the REST workload.
    """
    env = {"PLUGBUS_SERVER__LOG_LEVEL": "warning", "PLUGBUS_PLUGINS__ENTRY_POINTS": "false"}
    try:
        import yaml

        limits = (yaml.safe_load((ROOT / "config.yaml").read_text()).get("server") or {}).get(
            "limits"
        ) or {}
    except Exception:
        limits = {}
    for key in (
        "events_per_second",
        "max_connections",
        "rest_publish_per_key",
        "rest_publish_per_address",
    ):
        if key in limits:
            env[f"PLUGBUS_SERVER__LIMITS__{key.upper()}"] = "0"
    return env


def start_server(
    name: str,
    cpu: int | None,
    logdir: Path,
    extra_env: dict[str, str] | None = None,
    log_name: str | None = None,
) -> Server:
    port = free_port()
    env = dict(os.environ)
    if name == "plugbus":
        cmd = [sys.executable, "-m", "plugbus", "serve", "--port", str(port)]
        env.update(plugbus_env())
        env.update(extra_env or {})
    elif name == "bare":
        cmd = [sys.executable, str(BENCH / "servers" / "bare_socketio.py"), "--port", str(port)]
    elif name == "node":
        cmd = ["node", str(NODE_DIR / "server.js"), "--port", str(port)]
    else:
        raise ValueError(name)
    log = logdir / f"{log_name or name}-{port}.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            pin(cpu) + cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
    return wait_serving(Server(name, port, proc, log))


def wait_serving(server: Server, timeout: float = 30) -> Server:
    """``server`` once it answers ``GET /health`` with 200; stopped, and a RuntimeError with
    its log's end, when it exits or does not answer within ``timeout`` seconds."""
    proc, log = server.proc, server.log
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {proc.returncode}:\n{log.read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=1) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(
        f"{server.name} did not serve /health within {timeout:g} s:\n{log.read_text()[-2000:]}"
    )


@dataclass
class Redis:
    """A redis-server of our own on a free loopback port: no persistence, stopped by its PID."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis-server shuts down (nothing to save)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def redis_ready() -> str | None:
    """None when redis-server can be started, else why not."""
    return (
        None
        if shutil.which("redis-server")
        else "redis-server is not installed (apt-get install redis-server)"
    )


def redis_version() -> str | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip() or None


REDIS_ARGS = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def start_redis(cpu: int | None, logdir: Path) -> Redis:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError(redis_ready())
    port = free_port()
    log = logdir / f"redis-{port}.log"
    data = logdir / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as f:
        proc = subprocess.Popen(
            pin(cpu) + [exe, "--port", str(port), *REDIS_ARGS, "--dir", str(data)],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    redis = Redis(port, proc, log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"redis-server exited with {proc.returncode}:\n{log.read_text()[-1000:]}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return redis
        except OSError:
            pass
        time.sleep(0.05)
    redis.stop()
    raise RuntimeError(f"redis-server did not answer PING on port {port} within 10 s")


def git_state() -> dict[str, Any]:
    """The commit measured and the files that differed from it (read-only git commands)."""

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", "--no-optional-locks", *a],
                capture_output=True,
                text=True,
                timeout=10,
                cwd=ROOT,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if len(line) > 3]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None, "changed": changed}


CLUSTER_LABELS = {"single": "one node (memory backend)", "cluster": "two nodes + Redis"}


def run_cluster(
    w: Workload, cpus: tuple[int | None, int | None], logdir: Path, ws: str, time_left: Any
) -> dict[str, dict[str, Any]]:
    """One room's fan-out on one plugbus node, then split over two nodes sharing a fresh Redis.

    Node A (the publisher's), node B and redis-server all run on ``cpus[0]`` (the one node's
    core), the generator on ``cpus[1]``: the cluster gets no more CPU than the single node, so
    the comparison shows what the Redis hop and a second process cost, not what a second core
    would buy. ``time_left()`` is False once --max-minutes is spent.
    """
    out: dict[str, dict[str, Any]] = {}
    # -- the single node, memory backend ------------------------------------------------------
    if not time_left():
        out["single"] = {"error": "skipped: --max-minutes reached"}
    else:
        print(f"bench: {w.key} one node ...", file=sys.stderr, flush=True)
        try:
            server = start_server("plugbus", cpus[0], logdir, log_name=f"{w.key}-single")
        except RuntimeError as exc:
            out["single"] = {"error": str(exc)[:500]}
        else:
            try:
                out["single"] = run_loadgen(w, server, cpus[1], ws)
            finally:
                server.stop()
        print(
            f"bench: {w.key} one node: {headline('fanout', out['single'])}",
            file=sys.stderr,
            flush=True,
        )
    # -- two nodes and Redis -------------------------------------------------------------------
    if not time_left():
        out["cluster"] = {"error": "skipped: --max-minutes reached"}
        return out
    if why := redis_ready():
        out["cluster"] = {"error": why}
        return out
    print(f"bench: {w.key} two nodes + Redis ...", file=sys.stderr, flush=True)
    started: list[Server | Redis] = []
    try:
        redis = start_redis(cpus[0], logdir)
        started.append(redis)
        env = {"PLUGBUS_SERVER__BACKEND": redis.url}
        a = start_server("plugbus", cpus[0], logdir, env, log_name=f"{w.key}-nodeA")
        started.append(a)
        b = start_server("plugbus", cpus[0], logdir, env, log_name=f"{w.key}-nodeB")
        started.append(b)
        r = run_loadgen(
            w,
            a,
            cpus[1],
            ws,
            [
                "--url-b",
                b.url,
                "--cpu-pid",
                f"node B={b.proc.pid}",
                "--cpu-pid",
                f"redis={redis.proc.pid}",
            ],
        )
        if "error" not in r:
            r["backend"] = "redis://127.0.0.1:PORT/0"
        out["cluster"] = r
    except RuntimeError as exc:
        out["cluster"] = {"error": str(exc)[:500]}
    finally:
        for proc in reversed(started):  # the nodes first, then Redis
            proc.stop()
    print(
        f"bench: {w.key} two nodes + Redis: {headline('fanout', out['cluster'])}",
        file=sys.stderr,
        flush=True,
    )
    return out


# --------------------------------------------------------------------------------------------
# machine and versions


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gib": mem_gb,
        "kernel": platform.release(),
        "os": platform.platform(terse=True),
    }


def versions() -> dict[str, str | None]:
    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in (
        "plugbus",
        "python-socketio",
        "python-engineio",
        "uvicorn",
        "uvloop",
        "httptools",
        "websockets",
        "fastapi",
        "pydantic",
        "pluggy",
    ):
        out[name] = dist(name)
    node = shutil.which("node")
    out["node"] = (
        subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        if node
        else None
    )
    for pkg in ("socket.io", "engine.io", "ws"):
        pj = NODE_DIR / "node_modules" / pkg / "package.json"
        out[f"npm {pkg}"] = json.loads(pj.read_text())["version"] if pj.exists() else None
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------------------------
# running


@dataclass
class Run:
    mode: str
    servers: list[str]
    command: str
    started: str
    machine: dict[str, Any]
    versions: dict[str, Any]
    pinning: str
    ws: str
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> server -> result
    loads: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None
    profile_echo: dict[str, Any] | None = None
    plugbus_env: dict[str, str] = field(default_factory=dict)
    load_start: list[float] = field(default_factory=list)
    load_end: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    # per workload key: how it was run when that differs from the rest (cluster setup; and for
    # workloads merged in from a later run with --merge, that run's command, date and load)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_loadgen(
    w: Workload, server: Server, cpu: int | None, ws: str, extra: list[str] | None = None
) -> dict[str, Any]:
    kind = "fanout" if w.kind == "cluster" else w.kind
    cmd = pin(cpu) + [
        sys.executable,
        str(BENCH / "loadgen.py"),
        kind,
        "--url",
        server.url,
        "--ws",
        ws,
        "--server-pid",
        str(server.proc.pid),
        "--deadline",
        str(w.budget),
        *w.args,
        *(extra or []),
    ]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=w.budget + 30, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"load generator exceeded {w.budget + 30:.0f} s"}
    if p.returncode != 0:
        said = [line for line in p.stderr.splitlines() if line.startswith("loadgen: error: ")]
        tail = said[-1:] or (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"error": f"load generator exited {p.returncode}: " + " | ".join(tail)}
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"unreadable output: {p.stdout[-300:]!r}"}


def profile_plugbus(
    cpus: tuple[int | None, int | None], logdir: Path, ws: str, mode: str, kind: str = "fanout"
) -> dict[str, Any]:
    """py-spy record of plugbus while fan-out to 1000 clients runs at saturation
    (``kind="fanout"``), or while 100 echo clients keep one acked event each in flight
    (``kind="echo"``)."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        return {"error": "py-spy is not installed (pip install -c constraints.txt -e '.[bench]')"}
    version = subprocess.run([pyspy, "--version"], capture_output=True, text=True).stdout.strip()
    clients = ("1000" if kind == "fanout" else "100") if mode != "smoke" else "5"
    seconds = 8 if mode != "smoke" else 2
    server = start_server("plugbus", cpus[0], logdir)
    raw = logdir / f"pyspy-plugbus-{kind}.txt"
    try:
        args = ["--clients", clients, "--duration", str(seconds + 6), "--warmup", "1"]
        if kind == "fanout":
            args += ["--ladder", "1", "--refine", "0"]
        w = Workload("P", "profile", kind, args, 180)
        gen = subprocess.Popen(
            pin(cpus[1])
            + [
                sys.executable,
                str(BENCH / "loadgen.py"),
                kind,
                "--url",
                server.url,
                "--ws",
                ws,
                "--server-pid",
                str(server.proc.pid),
                *w.args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        # wait until the clients are connected and the publisher runs: the server's CPU climbs
        deadline = time.monotonic() + 120
        time.sleep(2)
        while time.monotonic() < deadline and gen.poll() is None:
            if _connected(server) >= int(clients):
                break
            time.sleep(0.5)
        time.sleep(2)
        # native unwinding first; where it cannot be had here, Python frames only
        for how in (["--native"], ["--nonblocking"]):
            spy = subprocess.run(
                pin(cpus[1])
                + [
                    pyspy,
                    "record",
                    "-p",
                    str(server.proc.pid),
                    "-d",
                    str(seconds),
                    "-r",
                    "100",
                    "-f",
                    "raw",
                    "-o",
                    str(raw),
                    *how,
                ],
                capture_output=True,
                text=True,
                timeout=seconds + 60,
            )
            if spy.returncode == 0 and raw.exists():
                break
        try:
            out, _ = gen.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            gen.kill()
            out, _ = gen.communicate()
        if spy.returncode != 0 or not raw.exists():
            return {"error": f"py-spy failed: {spy.stderr.strip()[-300:]}", "version": version}
        summary = summarise_profile(raw.read_text())
        summary.update(
            version=version,
            seconds=seconds,
            rate_hz=100,
            clients=int(clients),
            options=how,
            kind=kind,
            raw=str(raw.relative_to(ROOT)) if raw.is_relative_to(ROOT) else str(raw),
        )
        try:
            result = json.loads(out.strip().splitlines()[-1])
            summary[kind] = result.get("saturation") if kind == "fanout" else result
        except (ValueError, IndexError):
            pass
        return summary
    finally:
        server.stop()


def _connected(server: Server) -> int:
    try:
        with urllib.request.urlopen(server.url + "/health", timeout=2) as r:
            return int(json.loads(r.read()).get("connections", 0))
    except (OSError, ValueError):
        return 0


PY_PACKAGES = [  # (label, first component of a Python frame's file path)
    ("plugbus (api, core, plugins)", ("api", "core", "plugins", "plugbus")),
    ("python-socketio", ("socketio",)),
    ("python-engineio", ("engineio",)),
    ("uvicorn", ("uvicorn",)),
    ("websockets", ("websockets",)),
    ("asyncio (tasks, queues, futures; Python and C)", ("asyncio",)),
    ("pydantic", ("pydantic", "pydantic_core")),
    ("pluggy", ("pluggy",)),
]
#: The pipeline's entry and the emit inside it, as py-spy names their frames (the pipeline's
#: own cost is the samples in the first and not in the second).
PIPELINE_FRAME = "Bus.dispatch_args (plugbus/core/bus.py"
EMIT_FRAME = "Bus.emit (plugbus/core/bus.py"
HIGHLIGHTS = [  # (label, substring of a frame) -> inclusive share
    ("plugbus pipeline and delivery (`Bus.dispatch_args`)", PIPELINE_FRAME),
    ("delivery to this node's connections (`deliver_here`)", "deliver_here (plugbus/api/"),
    ("the wire's direct websocket writes (`DirectWriter`)", "DirectWriter."),
    (
        "uvicorn's websocket read (`WebSocketsSansIOProtocol.data_received`)",
        "WebSocketsSansIOProtocol.data_received (",
    ),
    ("CPython's cyclic garbage collector (`gc_collect_main`)", "gc_collect_main"),
    ("`write()` system calls (socket writes)", "write (libc"),
    ("`getpid()` system calls (Python 3.11's `asyncio.get_running_loop`)", "getpid (libc"),
]


def _frame_file(frame: str) -> str:
    i = frame.rfind("(")
    return frame[i + 1 :].rsplit(":", 1)[0].rstrip(")") if i >= 0 else ""


def _category(frames: list[str]) -> str:
    """Where one sample's time goes: GC and system calls first, else the innermost Python package."""
    if any("gc_collect" in f for f in frames):
        return "CPython garbage collector"
    leaf = frames[-1]
    if leaf.startswith(("write (", "writev (", "send (", "sendmsg (")):
        return "system calls: socket writes"
    if leaf.startswith("getpid ("):
        return "system calls: getpid()"
    if leaf.startswith(("epoll_wait (", "read (", "recv (", "readv (")):
        return "system calls: reads and epoll"
    for f in reversed(frames):
        path = _frame_file(f)
        if not path.endswith(".py"):
            continue
        top = path.split("/", 1)[0]
        for label, tops in PY_PACKAGES:
            if top in tops:
                return label
        return "other Python (stdlib)"
    return "native code outside Python frames (uvloop, interpreter)"


def summarise_profile(text: str) -> dict[str, Any]:
    """Collapsed stacks (``frame;frame;... count``) -> shares of where the time goes."""
    total = 0
    self_fn: dict[str, int] = {}
    incl_fn: dict[str, int] = {}
    cats: dict[str, int] = {}
    hl = {label: 0 for label, _ in HIGHLIGHTS}
    pipeline_only = 0
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        self_fn[frames[-1]] = self_fn.get(frames[-1], 0) + count
        for f in set(frames):
            incl_fn[f] = incl_fn.get(f, 0) + count
        cat = _category(frames)
        cats[cat] = cats.get(cat, 0) + count
        for label, needle in HIGHLIGHTS:
            if any(needle in f for f in frames):
                hl[label] += count
        if any(PIPELINE_FRAME in f for f in frames) and not any(EMIT_FRAME in f for f in frames):
            pipeline_only += count
    if not total:
        return {"samples": 0}

    def share(c: int) -> float:
        return round(100 * c / total, 1)

    root = max(incl_fn.values())
    inclusive = [
        (f, share(c))
        for f, c in sorted(incl_fn.items(), key=lambda x: (-x[1], x[0]))
        if c < 0.95 * root
    ][:25]
    highlights = [(label, share(c)) for label, c in hl.items()]
    highlights.insert(
        1,
        (
            "plugbus pipeline without the delivery (`Bus.dispatch_args` minus `Bus.emit`)",
            share(pipeline_only),
        ),
    )
    return {
        "samples": total,
        "by_category": [(k, share(c)) for k, c in sorted(cats.items(), key=lambda x: -x[1])],
        "highlights": highlights,
        "self_top": [
            (f, share(c)) for f, c in sorted(self_fn.items(), key=lambda x: (-x[1], x[0]))[:15]
        ],
        "inclusive_top": inclusive,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="shorter runs, 1k connections only")
    mode.add_argument(
        "--smoke", action="store_true", help="a tiny, fast configuration (the test suite's)"
    )
    ap.add_argument(
        "--servers", default=",".join(SERVERS), help="comma-separated: plugbus,bare,node"
    )
    ap.add_argument(
        "--only",
        help="comma-separated workload keys (A100,A1000,B,C1k,C5k,C10k,D,"
        "cluster100,cluster1000) or 'cluster' for every cluster workload",
    )
    ap.add_argument(
        "--out", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown report ('-': none)"
    )
    ap.add_argument("--json", help="JSON results (default bench/results/bench-<time>.json)")
    ap.add_argument(
        "--logs",
        help="folder for server logs and py-spy output (default bench/results/logs-<time>)",
    )
    ap.add_argument(
        "--ws",
        choices=["raw", "websockets"],
        default="raw",
        help="load generator's websocket layer",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also py-spy plugbus under fan-out to 1000 clients and under echo",
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and generator to CPUs")
    ap.add_argument(
        "--max-minutes", type=float, default=20.0, help="skip what is left after this long"
    )
    ap.add_argument(
        "--render", metavar="JSON", help="only write the report again from a results file"
    )
    ap.add_argument(
        "--merge",
        metavar="JSON",
        help="add this run's workloads to an earlier results file (its other workloads, "
        "header and notes kept; these sections say when and how they were measured) "
        "and write the merged JSON and report",
    )
    args = ap.parse_args(argv)
    if args.render:
        data = json.loads(Path(args.render).read_text())
        run = Run(**data)
        for prof in (run.profile, run.profile_echo):
            if prof and prof.get("raw") and (ROOT / prof["raw"]).exists():
                prof.update(summarise_profile((ROOT / prof["raw"]).read_text()))
        Path(args.out).write_text(render(run, report_workloads(run.results, run.mode)))
        print(f"bench: report in {args.out}", file=sys.stderr)
        return 0
    base: Run | None = None
    if args.merge:
        base = Run(**json.loads(Path(args.merge).read_text()))

    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in SERVERS:
            ap.error(f"unknown server {s!r} (known: {', '.join(SERVERS)})")
    selected = workloads(mode_name)
    if args.only:
        keys = {k.strip() for k in args.only.split(",") if k.strip()}
        known = {w.key for w in selected} | set(GROUPS)
        if unknown := keys - known:
            ap.error(
                f"unknown workload {', '.join(sorted(unknown))} in {mode_name} mode "
                f"(known: {', '.join(sorted(known))})"
            )
        selected = [
            w
            for w in selected
            if w.key in keys or any(GROUPS[g] == w.kind for g in keys & set(GROUPS))
        ]
    if "plugbus" not in servers:  # the cluster workloads measure plugbus only
        selected = [w for w in selected if w.kind != "cluster"]
    if not selected:
        ap.error("nothing to run (the cluster workloads need plugbus in --servers)")
    needs_node = any(w.kind != "cluster" for w in selected) or args.profile
    if "node" in servers and needs_node and (why := node_ready()):
        print(f"bench: {why}", file=sys.stderr)
        return 3
    cores = os.cpu_count() or 1
    cpus: tuple[int | None, int | None] = (None, None) if args.no_pin or cores < 2 else (0, 1)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = BENCH / "results"
    logdir = Path(args.logs) if args.logs else results_dir / f"logs-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else results_dir / f"bench-{stamp}.json"

    cmdline = os.environ.get("BENCH_COMMAND") or "bench/run.sh " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )
    run = Run(
        mode=mode_name,
        servers=servers,
        command=cmdline.strip(),
        started=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine(),
        versions=versions(),
        pinning=(
            f"server on CPU {cpus[0]}, load generator on CPU {cpus[1]} (taskset)"
            if cpus[0] is not None
            else "none (fewer than 2 cores, or --no-pin)"
        ),
        ws=args.ws,
        load_start=loadavg(),
        plugbus_env=plugbus_env(),
    )
    t_start = time.monotonic()

    def time_left() -> bool:
        return time.monotonic() - t_start <= args.max_minutes * 60

    for w in selected:
        run.results[w.key] = {}
        run.loads[w.key] = loadavg()
        if w.kind == "cluster":
            run.sections[w.key] = {
                "pinning": (
                    f"node A, node B and redis-server on CPU {cpus[0]}, load generator on CPU "
                    f"{cpus[1]} (taskset); the one node on CPU {cpus[0]}"
                    if cpus[0] is not None
                    else "none (fewer than 2 cores, or --no-pin)"
                ),
                "redis": {"version": redis_version(), "args": REDIS_ARGS},
                "git": git_state(),
            }
            run.results[w.key] = run_cluster(w, cpus, logdir, args.ws, time_left)
            continue
        for name in servers:
            if time.monotonic() - t_start > args.max_minutes * 60:
                run.results[w.key][name] = {"error": "skipped: --max-minutes reached"}
                continue
            print(f"bench: {w.key} {name} ...", file=sys.stderr, flush=True)
            try:
                server = start_server(name, cpus[0], logdir)
            except RuntimeError as exc:
                run.results[w.key][name] = {"error": str(exc)[:500]}
                continue
            try:
                r = run_loadgen(w, server, cpus[1], args.ws)
            finally:
                server.stop()
            run.results[w.key][name] = r
            print(f"bench: {w.key} {name}: {headline(w.kind, r)}", file=sys.stderr, flush=True)
    if args.profile:
        print("bench: py-spy profile of plugbus under fan-out ...", file=sys.stderr, flush=True)
        run.profile = profile_plugbus(cpus, logdir, args.ws, mode_name)
        print("bench: py-spy profile of plugbus under echo ...", file=sys.stderr, flush=True)
        run.profile_echo = profile_plugbus(cpus, logdir, args.ws, mode_name, kind="echo")
    run.load_end = loadavg()
    run.wall_s = round(time.monotonic() - t_start, 1)
    if base is not None:  # these workloads join the earlier run's report, each saying how it ran
        for key in run.results:
            base.results[key] = run.results[key]
            base.loads[key] = run.loads[key]
            base.sections[key] = {
                **run.sections.get(key, {}),
                "merged": {
                    "command": run.command,
                    "mode": run.mode,
                    "started": run.started,
                    "load_start": run.load_start,
                    "load_end": run.load_end,
                    "wall_s": run.wall_s,
                    "pinning": run.pinning,
                    "ws": run.ws,
                    "plugbus_env": run.plugbus_env,
                    "versions": run.versions,
                    "machine": run.machine,
                },
            }
        run = base
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(run.__dict__, indent=1, default=str))
    print(f"bench: results in {json_path}", file=sys.stderr)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(render(run, report_workloads(run.results, run.mode)))
        print(f"bench: report in {args.out}", file=sys.stderr)
    errors = [
        (w.key, s, r["error"])
        for w in selected
        for s, r in run.results.get(w.key, {}).items()
        if "error" in r
    ]
    for k, s, e in errors:
        print(f"bench: {k} {s}: {e}", file=sys.stderr)
    return 1 if errors else 0


# --------------------------------------------------------------------------------------------
# the report


def headline(kind: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return "ERROR " + r["error"]
    if kind in ("fanout", "cluster"):
        sat = r["saturation"]
        return (
            f"{sat['deliveries_per_s']:,.0f} deliveries/s at saturation (p50 {sat.get('p50_ms')}, "
            f"p99 {sat.get('p99_ms')} ms); sustained {r['sustained']['best_per_s']:,.0f}/s; "
            f"server CPU {sat.get('server_cpu')}; gen CPU {sat['gen_cpu']}"
        )
    if kind == "echo":
        return f"{r['acks_per_s']:,.0f} acks/s, p99 {r['rtt_p99_ms']} ms; gen CPU {r['gen_cpu']}"
    if kind == "connect":
        return f"{r['clients']} in {r['connect_s']} s, {r.get('rss_per_conn_kb')} KB/conn"
    if kind == "rest":
        return f"delivery p50 {r['delivery_p50_ms']} p99 {r['delivery_p99_ms']} ms"
    return json.dumps(r)[:200]


def fmt(x: Any, digits: int = 0) -> str:
    if x is None:
        return "—"
    if isinstance(x, float | int):
        return f"{x:,.{digits}f}"
    return str(x)


def ratio(a: float | None, b: float | None, gen_bound: float | None = None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    if gen_bound is not None:
        return f"invalid: gen CPU {gen_bound:.2f}"
    return f"{a / b:.2f}×"


# A measurement taken while the load generator used this much of its core or more measured the
# generator as much as the server: ratios built on it are marked invalid and no target counts it.
GEN_CPU_LIMIT = 0.80


def gen_cpu_for(r: dict[str, Any], path: str) -> float | None:
    """The generator's CPU share during the measurement that the figure at ``path`` comes from.

    Saturation figures: the saturation window's; the sustained rate: the highest of the ladder's
    steps (any step may decide it); everything else: the workload's own window.
    """
    if path.startswith("saturation."):
        v = get(r, "saturation.gen_cpu")
    elif path.startswith("sustained."):
        steps = [s.get("gen_cpu") for s in get(r, "sustained.steps") or []]
        vals = [x for x in steps if isinstance(x, int | float)]
        v = max(vals) if vals else None
    else:
        v = r.get("gen_cpu")
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def gen_bound(path: str, *results: dict[str, Any]) -> float | None:
    """The highest generator CPU share ≥ GEN_CPU_LIMIT among these measurements, else None."""
    bad = [g for r in results if (g := gen_cpu_for(r, path)) is not None and g >= GEN_CPU_LIMIT]
    return max(bad) if bad else None


GEN_BOUND_NOTE = (
    f"*invalid: gen CPU x* — the load generator used ≥ {GEN_CPU_LIMIT:.2f} of its core while this "
    "figure or the one it is divided by was measured, so the generator may have set the pace: the "
    "ratio says nothing about the servers and no target counts it."
)


def get(r: dict[str, Any], path: str) -> Any:
    cur: Any = r
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def table(run: Run, key: str, cols: list[tuple[str, str, int, bool]]) -> list[str]:
    """Rows per server; ``cols``: (heading, json path, digits, with ratios)."""
    rs = run.results.get(key, {})
    head = ["server"]
    for h, _, _, rat in cols:
        head.append(h)
        if rat:
            head += ["÷ Node", "÷ bare"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    invalid = False
    for name in run.servers:
        r = rs.get(name, {})
        if "error" in r:
            lines.append(f"| {LABELS[name]} | error: {r['error'][:150]} |" + " |" * (len(head) - 2))
            continue
        row = [LABELS[name]]
        for _, path, digits, rat in cols:
            v = get(r, path)
            row.append(fmt(v, digits))
            if rat:
                for base in ("node", "bare"):
                    if base not in run.servers:
                        row.append("—")
                        continue
                    other = rs.get(base, {})
                    bound = gen_bound(path, r, other)
                    cell = ratio(v, get(other, path), bound)
                    invalid = invalid or cell.startswith("invalid")
                    row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    if invalid:
        lines += ["", GEN_BOUND_NOTE]
    return lines


def render(run: Run, selected: list[Workload]) -> str:
    m, v = run.machine, run.versions
    out = [
        "# plugbus benchmarks",
        "",
        "Produced by `bench/run.sh` (issue 7): plugbus with its default plugins, bare python-socketio on",
        "the same uvicorn doing the same work (the baseline), and Node's socket.io 4.8 server, measured",
        "side by side in one run by one load generator. Higher is better for rates, lower for latency,",
        "CPU and memory. **Ratios are this run's figure divided by Node's (÷ Node) and by the bare",
        "baseline's (÷ bare).** Regenerate with the command below; how it works: `bench/README.md`.",
        "",
    ]
    if run.mode != "full":
        out += [
            f"> **{run.mode} run** — shorter workloads than the full benchmark; figures are indicative only.",
            "",
        ]
    # Only the load before the first workload says whether other work was running: once the
    # benchmark runs, its own pinned server and generator keep the load average near 2.
    lstart = run.load_start[0] if run.load_start else 0
    cores = m.get("cores") or 1
    if lstart > 0.5 * cores:
        out += [
            f"> **Provisional figures.** The machine was not idle: the 1-minute load average was "
            f"{lstart} on {cores} cores before the first workload started (later readings include the "
            "benchmark's own server and load generator), so other work ran beside the benchmark. "
            "Throughput and latency suffer most; the *server CPU per delivery/ack* columns (CPU time the "
            "server process actually got, read from /proc) and the *server CPU share* column show how "
            "much of its core each server obtained, and are the fairer comparison under contention. "
            "Re-run on an idle machine before drawing conclusions.",
            "",
        ]
    out += [
        "## Run",
        "",
        f"- command: `{run.command}` ({run.mode} mode, {run.wall_s:.0f} s)",
        f"- date: {run.started}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Linux {m['kernel']}",
        f"- load average (1, 5, 15 min): {run.load_start} at start, {run.load_end} at end",
        f"- pinning: {run.pinning}",
        "- plugbus: `python -m plugbus serve --port P`, embedded config and default plugins, with "
        + ", ".join(f"`{k}={val}`" for k, val in run.plugbus_env.items())
        + " (log level as the baseline's; built-ins only; the per-connection event rate limit and the "
        "connection cap off, as the baseline and Node have none)",
        f"- load generator: `bench/loadgen.py` (Python {v['python']}, uvloop {v['uvloop']}, "
        f"websocket layer `{run.ws}`); its CPU use is the *gen CPU* column (1.00 = its core saturated); "
        "in fan-out 1 client in 20 (at least 5) decodes deliveries for latency and the others only count "
        f"frames; a ratio measured with gen CPU ≥ {GEN_CPU_LIMIT:.2f} reads *invalid*",
        f"- versions: plugbus {v['plugbus']}, python-socketio {v['python-socketio']}, python-engineio "
        f"{v['python-engineio']}, uvicorn {v['uvicorn']} (uvloop {v['uvloop']}, httptools {v['httptools']}, "
        f"websockets {v['websockets']}), FastAPI {v['fastapi']}, pydantic {v['pydantic']}, pluggy {v['pluggy']}; "
        f"Node {v['node']}, socket.io {v['npm socket.io']} (engine.io {v['npm engine.io']}, ws {v['npm ws']})",
    ]
    merged = {
        k: sec["merged"] for k, sec in run.sections.items() if "merged" in sec and k in run.results
    }
    for cmd in dict.fromkeys(m["command"] for m in merged.values()):
        keys = [k for k, m in merged.items() if m["command"] == cmd]
        m = merged[keys[0]]
        out.append(
            f"- measured later and merged in (`--merge`): {', '.join(keys)}, by `{cmd}` ({m['mode']} mode, "
            f"{m['wall_s']:.0f} s) on {m['started']}, load average {m['load_start']} at its start and "
            f"{m['load_end']} at its end; their sections say how they ran"
        )
    out.append("")
    for w in selected:
        key = w.key
        if key not in run.results:
            continue
        if w.kind == "cluster":
            out += cluster_section(run, w)
            continue
        out += [
            f"## {key} — {w.title}",
            "",
            f"Load average at the start of this workload: {run.loads.get(key)}.",
            "",
        ]
        if w.kind == "fanout":
            out += table(
                run,
                key,
                [
                    ("deliveries/s at saturation", "saturation.deliveries_per_s", 0, True),
                    (
                        "sustained deliveries/s (≥97 %, p99 ≤ 50 ms)",
                        "sustained.best_per_s",
                        0,
                        True,
                    ),
                    ("server CPU µs / delivery", "saturation.server_cpu_us_per_delivery", 1, True),
                    ("server CPU share", "saturation.server_cpu", 2, False),
                    ("gen CPU", "saturation.gen_cpu", 2, False),
                    ("clients connect+join s", "connect_s", 2, False),
                ],
            )
            out += [
                "",
                "Ladder of offered rates (deliveries/s → delivered fraction, p99 ms; ✓ = sustained):",
                "",
            ]
            for name in run.servers:
                steps = get(run.results[key].get(name, {}), "sustained.steps") or []
                cells = []
                for s in steps:
                    if s.get("skipped"):
                        cells.append(f"{s['offered_per_s']:,.0f}: skipped ({s['skipped']})")
                        continue
                    cells.append(
                        f"{s['offered_per_s']:,.0f} → {s['delivered_frac']:.3f}, "
                        f"{fmt(s['p99_ms'], 1)} {'✓' if s['ok'] else '✗'}"
                    )
                out.append(f"- {LABELS[name]}: " + ("; ".join(cells) if cells else "—"))
        elif w.kind == "echo":
            out += table(
                run,
                key,
                [
                    ("acks/s", "acks_per_s", 0, True),
                    ("RTT p50 ms", "rtt_p50_ms", 2, False),
                    ("RTT p99 ms", "rtt_p99_ms", 2, False),
                    ("server CPU µs / ack", "server_cpu_us_per_ack", 1, True),
                    ("server CPU share", "server_cpu", 2, False),
                    ("gen CPU", "gen_cpu", 2, False),
                ],
            )
        elif w.kind == "connect":
            out += table(
                run,
                key,
                [
                    ("connected", "alive", 0, False),
                    ("time to connect s", "connect_s", 2, True),
                    ("connections/s", "connects_per_s", 0, False),
                    ("handshake p50 ms", "handshake_p50_ms", 1, False),
                    ("handshake p99 ms", "handshake_p99_ms", 1, True),
                    ("server RSS per connection KB", "rss_per_conn_kb", 1, True),
                    ("server CPU µs / connection", "server_cpu_us_per_connection", 0, False),
                    ("RSS before MB", "rss_before_kb", 0, False),
                    ("RSS after MB", "rss_after_kb", 0, False),
                    ("gen CPU", "gen_cpu", 2, False),
                ],
            )
            out[-len(run.servers) :] = [_kb_to_mb(line) for line in out[-len(run.servers) :]]
        elif w.kind == "rest":
            out += table(
                run,
                key,
                [
                    ("delivery p50 ms", "delivery_p50_ms", 2, True),
                    ("delivery p99 ms", "delivery_p99_ms", 2, True),
                    ("last of the room p50 ms", "last_p50_ms", 2, False),
                    ("last of the room p99 ms", "last_p99_ms", 2, False),
                    ("POST p50 ms", "post_p50_ms", 2, False),
                    ("delivered", "delivered_frac", 3, False),
                    ("server CPU µs / delivery", "server_cpu_us_per_delivery", 1, True),
                ],
            )
        out.append("")
    out += targets(run)
    out += targets_16(run)
    if run.notes:
        out += ["## Notes on this run", ""] + [f"- {n}" for n in run.notes] + [""]
    if run.profile is not None:
        out += profile_section(run.profile)
    if run.profile_echo is not None:
        out += profile_section(run.profile_echo)
    out += [
        "## How each figure is measured",
        "",
        "- **Fan-out (A):** C clients join one room (acked `join-room`), one more client publishes "
        "`send-message` `{message, roomID}` and is not in the room, so each message makes C deliveries of "
        "`receive-message`. *Saturation*: a closed loop keeps a window of messages not yet delivered to every "
        "sampled client (10,000 deliveries' worth; 1 client in 20, at least 5, decodes deliveries and "
        "measures latency, the others are counted without decoding) and counts deliveries to every "
        "client over the measured seconds. *Sustained*: an "
        "open-loop ladder of offered rates (deliveries/s; messages/s = rate ÷ C, at least 3 messages a step); a "
        "rate is sustained when ≥ 97 % of its deliveries arrive within the step plus 1 s and the p99 of "
        "publish → receive latency (the send time travels in the message text) is ≤ 50 ms; after the first "
        "failure the generator bisects between the last success and the failure.",
        "- **Echo (B):** K clients each keep one acked `send-message` in flight to a room nobody is in (so the "
        "ack is the only reply: validation, moderation, handling and the ack, no delivery); the next one is "
        "sent when the ack arrives.",
        "- **Connections (C):** N websocket clients connect (100 handshakes in flight), each to the Socket.IO "
        "connected state; the greeting each server sends is received. Server RSS is `VmRSS` from "
        "`/proc/PID/status` before the first and 1.5 s after the last connection; per connection = the "
        "difference ÷ N. Clients answer pings, so they stay connected. *Handshake* is each client's "
        "time from its TCP connect to Socket.IO connected (not the time it waited for one of the 100 "
        "slots).",
        "- **REST (D):** 1000 clients in one room; `POST /rooms/bench/messages` over one keep-alive HTTP/1.1 "
        "connection, the next after every client received the previous one (+20 ms); latency from just "
        "before the request is written to each delivery.",
        "- **Server CPU:** user + system time of the server process over the measured window "
        "(`/proc/PID/stat`); *share* = CPU seconds per wall second (1.00 = its pinned core).",
        "- **Cluster (cluster100, cluster1000):** plugbus only, against itself. The fan-out workload (A) is "
        "run twice in a row: on one plugbus node with the memory backend, then with the room's clients split "
        "evenly over two plugbus nodes sharing a fresh `redis-server` (`server.backend: "
        "redis://127.0.0.1:PORT/0`: every event is appended once to Redis's feed stream, which each node "
        "reads (`XREAD`) and delivers to its own members; the publisher is on node A). Both nodes and Redis "
        "share the single node's core, so the cluster has no more CPU than the one node; its *server CPU* "
        "is the sum of the three processes'. Before measuring, probe messages are published until one "
        "reaches every client (so that both nodes are reading the feed and every client has joined). Clients "
        "connect 25 handshakes at a time per node, in both set-ups (more at once exhausted a node's Redis connection pool). "
        "*p50 / p99 at saturation* is the publish → receive latency of the deliveries counted in the "
        "saturation window: with a closed loop of ~10,000 deliveries in flight it is mostly queueing "
        "(≈ window ÷ rate, Little's law), so it compares the two set-ups at the same window, not the "
        "latency of a lightly loaded server — the ladder's first rung (1,000 deliveries/s) shows that.",
        "- Every server is started fresh for every workload and stopped after it (the cluster's Redis too, "
        "by PID). Every step is bounded in time and in count (see `bench/loadgen.py --help`).",
        "",
        "### Why this load generator",
        "",
        "Measured on this machine (2026-11-25, against the Node server, closed-loop fan-out saturation, "
        "generator pinned to its own core; CPU per delivery is the generator's user + system time):",
        "",
        "| generator | 100 clients: µs CPU / delivery | 1000 clients: µs CPU / delivery |",
        "|---|---|---|",
        "| `bench/loadgen.py --ws raw` (asyncio Protocol on uvloop, framing by hand) | 4.8 | 6.9 |",
        "| `bench/loadgen.py --ws websockets` (websockets 17 asyncio client) | 13.3 | 22.2 |",
        "| official socket.io-client 4.8 in Node (`bench/compare_node_client.mjs`) | 8.2 | 18.0 |",
        "",
        "The raw generator is the cheapest by 1.7–3×, so it is the default: one core of it absorbs about "
        "140,000 deliveries/s at 1000 clients and 200,000 at 100 — above the Python servers by far, and "
        "above Node on this machine so far, though Node at 1000 clients on an idle machine comes near it. "
        "About half of its cost is the kernel's (one read per delivery per socket). Since issue 16 only a "
        "sample of the fan-out clients decodes; the others' sockets are read in batches and their "
        "deliveries counted from frame headers (`bench/README.md` has the cost per delivery). Its *gen "
        "CPU* column says how close each run came to its ceiling; a ratio measured with it at 0.80 or "
        "more reads *invalid*, since the generator, not the server, may have set the pace.",
        "",
    ]
    return "\n".join(out) + "\n"


def cluster_section(run: Run, w: Workload) -> list[str]:
    """Fan-out over two nodes + Redis next to the same room on one node, with the ratio."""
    key = w.key
    res = run.results.get(key, {})
    sec = run.sections.get(key, {})
    one, two = res.get("single", {}), res.get("cluster", {})
    out = [f"## {key} — {w.title}", ""]
    m = sec.get("merged")
    if m:
        lmax = max(m["load_start"][0], m["load_end"][0], (run.loads.get(key) or [0])[0])
        cores = (m.get("machine") or {}).get("cores") or 1
        out += [
            f"Measured after the rest of this report and merged in: `{m['command']}` ({m['mode']} mode, "
            f"{m['wall_s']:.0f} s for all its workloads) on {m['started']}; load average (1, 5, 15 min) "
            f"{m['load_start']} at its start, {m['load_end']} at its end."
            + (
                f" **Provisional:** the machine was busy (1-minute load up to {lmax} on {cores} cores, "
                "the benchmark's own processes included)."
                if lmax > 0.5 * cores
                else ""
            ),
            "",
        ]
    out += [f"Load average at the start of this workload: {run.loads.get(key)}.", ""]
    split = two.get("clients_by_node") or ["?", "?"]
    redis = sec.get("redis") or {}
    env = ", ".join(
        f"`{k}={v}`" for k, v in ((m or {}).get("plugbus_env") or run.plugbus_env).items()
    )
    out += [
        f"Set-up: {get(two, 'clients') or get(one, 'clients') or '?'} clients in one room, split "
        f"{split[0]} on node A and {split[1]} on node B; one publisher on node A (not in the room) sends "
        "`send-message`. Each node is `python -m plugbus serve` with the harness's settings "
        f"({env}) plus `PLUGBUS_SERVER__BACKEND=redis://127.0.0.1:PORT/0`; the two share a fresh "
        f"redis-server {redis.get('version') or '?'} on a free loopback port "
        f"(`{' '.join(a if a else chr(34) * 2 for a in redis.get('args', REDIS_ARGS))}`), stopped by PID "
        "afterwards. *One node* is the same workload on one plugbus with the memory backend, measured just "
        f"before. Pinning: {sec.get('pinning', run.pinning)}."
    ]
    g = sec.get("git") or {}
    if g.get("commit"):
        changed = g.get("changed") or []
        code = [c for c in changed if not c.startswith(("bench/", "docs/", "tests/"))]
        out[-1] += (
            f" Code measured: commit {g['commit']}"
            + (f" plus uncommitted changes to {', '.join(f'`{c}`' for c in code)}" if code else "")
            + "."
        )
    out.append("")
    cols = [
        ("deliveries/s at saturation", "saturation.deliveries_per_s", 0, True),
        ("messages/s", "saturation.messages_per_s", 0, False),
        ("p50 ms at saturation", "saturation.p50_ms", 1, True),
        ("p99 ms at saturation", "saturation.p99_ms", 1, True),
        ("sustained deliveries/s (≥97 %, p99 ≤ 50 ms)", "sustained.best_per_s", 0, False),
        (
            "server CPU µs / delivery (all server processes)",
            "saturation.server_cpu_us_per_delivery",
            1,
            True,
        ),
        ("server CPU share", "saturation.server_cpu", 2, False),
        ("gen CPU", "saturation.gen_cpu", 2, False),
        ("clients connect+join s", "connect_s", 2, False),
    ]
    head = ["configuration"]
    for h, _, _, rat in cols:
        head += [h] + (["÷ one node"] if rat else [])
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    invalid = False
    for name, r in (("single", one), ("cluster", two)):
        if "error" in r or not r:
            out.append(
                f"| {CLUSTER_LABELS[name]} | error: {(r.get('error') or 'not run')[:150]} |"
                + " |" * (len(head) - 2)
            )
            continue
        row = [CLUSTER_LABELS[name]]
        for _, path, digits, rat in cols:
            v = get(r, path)
            row.append(fmt(v, digits))
            if rat:
                cell = (
                    ratio(v, get(one, path), gen_bound(path, r, one)) if "error" not in one else "—"
                )
                invalid = invalid or cell.startswith("invalid")
                row.append(cell)
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    if invalid:
        out += [GEN_BOUND_NOTE, ""]
    sat = two.get("saturation") or {}
    if "error" not in two and sat:
        by = sat.get("deliveries_per_s_by_node") or [None, None]
        p50 = sat.get("p50_ms_by_node") or [None, None]
        p99 = sat.get("p99_ms_by_node") or [None, None]
        cpu = sat.get("cpu_by_process") or {}
        cpu_s = ", ".join(f"{'node A' if k == 'server' else k} {v:.2f}" for k, v in cpu.items())
        out += [
            f"Two nodes + Redis at saturation, per node: node A ({split[0]} clients, the publisher's) "
            f"{fmt(by[0])} deliveries/s, p50 {fmt(p50[0], 1)} / p99 {fmt(p99[0], 1)} ms; node B "
            f"({split[1]} clients) {fmt(by[1])} deliveries/s, p50 {fmt(p50[1], 1)} / p99 {fmt(p99[1], 1)} ms. "
            f"CPU share by process (CPU seconds per second; they share one core when pinned): "
            f"{cpu_s or '—'}.",
            "",
        ]
        if "error" not in one:
            parts = []
            for label, path in (
                ("deliveries/s", "saturation.deliveries_per_s"),
                ("p50", "saturation.p50_ms"),
                ("p99", "saturation.p99_ms"),
                ("server CPU per delivery", "saturation.server_cpu_us_per_delivery"),
            ):
                parts.append(
                    f"{label} {ratio(get(two, path), get(one, path), gen_bound(path, two, one))}"
                )
            out += [
                "**Two nodes + Redis ÷ one node:** " + ", ".join(parts) + ".",
                "",
                "Events cross nodes through Redis Streams (issue #18: nothing acknowledged is lost "
                "when Redis restarts or a node dies); what that path costs against the Redis "
                "pub/sub path it replaced, and what the encode-once feed entries saved since, is "
                'measured in `bench/README.md` ("Cross-node fan-out").',
                "",
            ]
    out += [
        "Ladder of offered rates (deliveries/s → delivered fraction, p50 / p99 ms; ✓ = sustained; "
        "for two nodes also node A / node B p99):",
        "",
    ]
    for name, r in (("single", one), ("cluster", two)):
        cells = []
        for s in get(r, "sustained.steps") or []:
            if s.get("skipped"):
                cells.append(f"{s['offered_per_s']:,.0f}: skipped ({s['skipped']})")
                continue
            node = s.get("p99_ms_by_node")
            cells.append(
                f"{s['offered_per_s']:,.0f} → {s['delivered_frac']:.3f}, {fmt(s['p50_ms'], 1)} / "
                f"{fmt(s['p99_ms'], 1)} {'✓' if s['ok'] else '✗'}"
                + (f" (A {fmt(node[0], 1)}, B {fmt(node[1], 1)})" if node else "")
            )
        out.append(f"- {CLUSTER_LABELS[name]}: " + ("; ".join(cells) if cells else "—"))
    return out + [""]


def _kb_to_mb(line: str) -> str:
    """RSS columns are recorded in kB; show MB in the table."""
    cells = line.split(" | ")
    if len(cells) < 8:
        return line
    for i in (-3, -2):
        try:
            cells[i] = f"{float(cells[i].replace(',', '')) / 1024:,.1f}"
        except ValueError:
            pass
    return " | ".join(cells)


def targets(run: Run) -> list[str]:
    """Issue 7's targets. Ratios of throughput depend on how much CPU each server got on a busy
    machine, so each target is judged on CPU-normalised throughput (operations per second of
    server CPU = 1 / CPU per operation), which on an idle machine equals the throughput ratio;
    the raw throughput ratio is shown beside it."""
    res = run.results

    def val(key: str, server: str, path: str) -> float | None:
        v = get(res.get(key, {}).get(server, {}), path)
        return float(v) if isinstance(v, int | float) else None

    def mark(ok: bool | None, g: float | None = None) -> str:
        """A target measured with the generator saturated is never met, whatever its figure."""
        if g is not None:
            return f"**invalid: gen CPU {g:.2f}**"
        return "—" if ok is None else ("met" if ok else "**not met**")

    def bound(key: str, servers: tuple[str, ...], *paths: str) -> float | None:
        rs = [res.get(key, {}).get(s, {}) for s in servers]
        gs = [g for p in paths if (g := gen_bound(p, *rs)) is not None]
        return max(gs) if gs else None

    def eff(key: str, a: str, b: str, path: str) -> float | None:
        """CPU-normalised throughput of server a over server b (b's CPU per op / a's)."""
        x, y = val(key, a, path), val(key, b, path)
        return y / x if x and y else None

    def thr(key: str, a: str, b: str, path: str) -> float | None:
        x, y = val(key, a, path), val(key, b, path)
        return x / y if x is not None and y else None

    def both(e: float | None, t: float | None) -> str:
        return f"{'—' if e is None else f'{e:.2f}×'} per CPU second (raw throughput {'—' if t is None else f'{t:.2f}×'})"

    fan_cpu, fan_thr = "saturation.server_cpu_us_per_delivery", "saturation.deliveries_per_s"
    rows = []
    parts, effs = [], []
    pipeline_bound: list[float] = []
    for key, cpu_path, thr_path, label in (
        ("B", "server_cpu_us_per_ack", "acks_per_s", "echo"),
        ("A100", fan_cpu, fan_thr, "fan-out 100"),
        ("A1000", fan_cpu, fan_thr, "fan-out 1000"),
    ):
        e, t = eff(key, "plugbus", "bare", cpu_path), thr(key, "plugbus", "bare", thr_path)
        if e is not None or t is not None:
            g = bound(key, ("plugbus", "bare"), cpu_path, thr_path)
            parts.append(
                f"{label}: plugbus = {both(e, t)} bare"
                + (f" (invalid: gen CPU {g:.2f})" if g is not None else "")
            )
            if g is not None:
                pipeline_bound.append(g)
            elif e is not None:
                effs.append(e)
    prof = run.profile_echo or {}
    share = dict(prof.get("highlights") or []).get(
        "plugbus pipeline without the delivery (`Bus.dispatch_args` minus `Bus.emit`)"
    )
    if share is not None:
        parts.append(
            f"under echo, the pipeline itself (`Bus.dispatch_args` minus the delivery) takes {share} % "
            "of plugbus's samples (py-spy, below): plugbus is faster than bare because its Socket.IO "
            "transport does less, not because the pipeline is free"
        )
    if parts:
        # a valid part that misses decides; otherwise an invalid part leaves the target open
        if effs and min(effs) < 1 / 1.10:
            status = mark(False)
        elif pipeline_bound:
            status = mark(None, max(pipeline_bound))
        else:
            status = mark(min(effs) >= 1 / 1.10) if effs else "—"
        rows.append(
            (
                "The plugin pipeline costs ≤ 10 % against bare python-socketio doing the same work "
                "(plugbus ≥ 0.91× bare)",
                "; ".join(parts),
                status,
            )
        )
    e, t = eff("A1000", "plugbus", "bare", fan_cpu), thr("A1000", "plugbus", "bare", fan_thr)
    if e is not None or t is not None:
        rows.append(
            (
                "Fan-out at 1000: ≥ 3× bare python-socketio at saturation",
                f"{fmt(val('A1000', 'plugbus', fan_thr))} deliveries/s; plugbus = {both(e, t)} bare",
                mark(e >= 3, bound("A1000", ("plugbus", "bare"), fan_cpu, fan_thr))
                if e is not None
                else "—",
            )
        )
    e, t = eff("A1000", "plugbus", "node", fan_cpu), thr("A1000", "plugbus", "node", fan_thr)
    if e is not None or t is not None:
        rows.append(
            (
                "Fan-out at 1000: ≈ 0.5× Node at saturation",
                f"plugbus = {both(e, t)} Node ({fmt(val('A1000', 'node', fan_thr))} deliveries/s)",
                mark(e >= 0.5, bound("A1000", ("plugbus", "node"), fan_cpu, fan_thr))
                if e is not None
                else "—",
            )
        )
    sus = val("A1000", "plugbus", "sustained.best_per_s")
    if sus is not None:
        rows.append(
            (
                "Fan-out at 1000: sustained ≥ 20,000 deliveries/s at p99 ≤ 50 ms",
                f"{fmt(sus)} deliveries/s (bare {fmt(val('A1000', 'bare', 'sustained.best_per_s'))}, "
                f"Node {fmt(val('A1000', 'node', 'sustained.best_per_s'))}; 0 = not even the lowest "
                "rung, 1 message/s)",
                mark(sus >= 20000, bound("A1000", ("plugbus",), "sustained.best_per_s")),
            )
        )
    e, t = (
        eff("B", "plugbus", "bare", "server_cpu_us_per_ack"),
        thr("B", "plugbus", "bare", "acks_per_s"),
    )
    if e is not None or t is not None:
        rows.append(
            (
                "Echo ≥ 1.5× bare python-socketio",
                f"{fmt(val('B', 'plugbus', 'acks_per_s'))} acks/s; plugbus = {both(e, t)} bare",
                mark(
                    e >= 1.5,
                    bound("B", ("plugbus", "bare"), "server_cpu_us_per_ack", "acks_per_s"),
                )
                if e is not None
                else "—",
            )
        )
    for key in ("C10k", "C5k", "C1k", "C20"):
        kb = val(key, "plugbus", "rss_per_conn_kb")
        if kb is not None:
            rows.append(
                (
                    f"Memory per idle websocket connection ≤ 25 KB ({key})",
                    f"{kb:.1f} KB (bare {fmt(val(key, 'bare', 'rss_per_conn_kb'), 1)}, "
                    f"Node {fmt(val(key, 'node', 'rss_per_conn_kb'), 1)})",
                    mark(kb <= 25, bound(key, ("plugbus",), "rss_per_conn_kb")),
                )
            )
            break
    if not rows:
        return []
    out = [
        "## Issue 7 targets, this run",
        "",
        "Each target is judged on CPU-normalised throughput — operations per second of server CPU, "
        "i.e. the inverse of *server CPU µs per delivery/ack* — because on a busy machine the raw "
        "throughput ratio mostly says how much of its core each server happened to get. On an idle "
        "machine, where every server saturates its core, the two ratios are the same.",
        "",
        "| target | figure | status |",
        "|---|---|---|",
    ]
    out += [f"| {t} | {f} | {s} |" for t, f, s in rows]
    return out + [""]


def targets_16(run: Run) -> list[str]:
    """Issue 16's targets (performance, round 2), each against Node's socket.io in the same run.
    A figure measured while the generator used ≥ GEN_CPU_LIMIT of its core is invalid and is
    never counted as met."""
    res = run.results
    if "node" not in run.servers:
        return []

    def r(key: str, server: str) -> dict[str, Any]:
        got = res.get(key, {}).get(server, {})
        return got if isinstance(got, dict) else {}

    def val(key: str, server: str, path: str) -> float | None:
        v = get(r(key, server), path)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    def judged(ok: bool | None, *bounds: float | None) -> str:
        bad = [b for b in bounds if b is not None]
        if bad:
            return f"**invalid: gen CPU {max(bad):.2f}**"
        return "—" if ok is None else ("met" if ok else "**not met**")

    def vs_node(key: str, path: str, *, lower_is_better: bool) -> tuple[float | None, str]:
        """(plugbus ÷ Node as a 'how much better' factor, the figures as text)."""
        a, b = val(key, "plugbus", path), val(key, "node", path)
        if a is None or b is None or not a or not b:
            return None, "not measured"
        ratio = b / a if lower_is_better else a / b
        return ratio, f"plugbus {fmt(a, 1)}, Node {fmt(b, 1)}: {ratio:.2f}×"

    rows: list[tuple[str, str, str]] = []
    # 1. the generator
    worst: tuple[float, str] | None = None
    for key, by_server in res.items():
        for server, result in by_server.items():
            if not isinstance(result, dict) or "error" in result:
                continue
            for path in ("saturation.x", "sustained.x", "x"):
                g = gen_cpu_for(result, path)
                if g is not None and (worst is None or g > worst[0]):
                    worst = (g, f"{key} {server}")
    if worst is not None:
        rows.append(
            (
                f"The load generator stays below {GEN_CPU_LIMIT:.2f} of its core at every workload",
                f"highest gen CPU {worst[0]:.2f} ({worst[1]})",
                "met" if worst[0] < GEN_CPU_LIMIT else "**not met**",
            )
        )
    # 2. echo
    ratio, text = vs_node("B", "acks_per_s", lower_is_better=False)
    _, cpu_text = vs_node("B", "server_cpu_us_per_ack", lower_is_better=True)
    if ratio is not None:
        g = gen_bound("acks_per_s", r("B", "plugbus"), r("B", "node"))
        rows.append(
            (
                "Echo ≥ 0.6× Node, default plugins on",
                f"acks/s {text}; server CPU µs per ack {cpu_text}",
                judged(ratio >= 0.6, g),
            )
        )
    # 3. connections at the largest count measured
    for key in ("C10k", "C5k", "C1k", "C20"):
        if key not in res:
            continue
        rate, rate_text = vs_node(key, "connects_per_s", lower_is_better=False)
        g = gen_bound("connects_per_s", r(key, "plugbus"), r(key, "node"))
        if rate is not None:
            rows.append(
                (
                    f"Connect rate ≥ Node's ({key})",
                    f"connections/s {rate_text}",
                    judged(rate >= 1, g),
                )
            )
        mem, mem_text = vs_node(key, "rss_per_conn_kb", lower_is_better=True)
        if mem is not None:
            rows.append(
                (
                    f"Memory per idle connection ≤ Node's ({key})",
                    f"KB per connection {mem_text}",
                    judged(mem >= 1, g),
                )
            )
        p99, p99_text = vs_node(key, "handshake_p99_ms", lower_is_better=True)
        rows.append(
            (
                f"Handshake p99 ≤ 2× Node's while the clients connect ({key})",
                f"p99 ms {p99_text}" + (" (Node's ÷ plugbus's)" if p99 is not None else ""),
                judged(p99 >= 0.5 if p99 is not None else None, g),
            )
        )
        break
    # 4. the cluster path
    for key in ("cluster100", "cluster1000", "cluster500"):
        one = val(key, "single", "saturation.server_cpu_us_per_delivery")
        two = val(key, "cluster", "saturation.server_cpu_us_per_delivery")
        if one and two:
            g = gen_bound(
                "saturation.server_cpu_us_per_delivery", r(key, "single"), r(key, "cluster")
            )
            rows.append(
                (
                    f"Two nodes + Redis ≤ 1.3× one node's CPU per delivery ({key})",
                    f"{fmt(two, 1)} against {fmt(one, 1)} µs: {two / one:.2f}×",
                    judged(two / one <= 1.3, g),
                )
            )
    # 5. sustained fan-out at 1000
    ratio, text = vs_node("A1000", "sustained.best_per_s", lower_is_better=False)
    if ratio is not None:
        g = gen_bound("sustained.best_per_s", r("A1000", "plugbus"), r("A1000", "node"))
        rows.append(
            (
                "Sustained fan-out at 1000 clients (≥ 97 % delivered, p99 ≤ 50 ms) ≥ 1.2× Node's",
                f"deliveries/s {text}",
                judged(ratio >= 1.2, g),
            )
        )
    if not rows:
        return []
    out = [
        "## Issue 16 targets, this run",
        "",
        "Each against Node's socket.io measured in this run by the same generator. Ratios are "
        "raw throughput (or memory, or latency) here: with the generator below saturation every "
        "server had its own core.",
        "",
        "| target | figure | status |",
        "|---|---|---|",
    ]
    out += [f"| {t} | {f} | {s} |" for t, f, s in rows]
    return out + [""]


def profile_section(p: dict[str, Any]) -> list[str]:
    echo = p.get("kind") == "echo"
    out = [f"## Where plugbus spends its time (py-spy, {'echo' if echo else 'fan-out'})", ""]
    if "error" in p:
        return out + [f"Not profiled: {p['error']}", ""]
    opts = " ".join(p.get("options", []))
    native = "--native" in opts
    if echo:
        r = p.get("echo") or {}
        during = (
            f"{p['clients']} echo clients each kept one acked `send-message` in flight (that run: "
            f"{fmt(r.get('acks_per_s'))} acks/s, {fmt(r.get('server_cpu_us_per_ack'), 1)} µs of server "
            f"CPU per ack, server CPU share {fmt(r.get('server_cpu'), 2)}"
        )
    else:
        sat = p.get("fanout") or {}
        during = (
            f"fan-out to {p['clients']} clients ran at saturation (that run: "
            f"{fmt(sat.get('deliveries_per_s'))} deliveries/s, {fmt(sat.get('server_cpu_us_per_delivery'), 1)} "
            f"µs of server CPU per delivery, server CPU share {fmt(sat.get('server_cpu'), 2)}"
        )
    out += [
        f"{p['version']}, `py-spy record {opts} -r {p['rate_hz']} -f raw` for {p['seconds']} s on the plugbus "
        f"server while {during}; py-spy's sampling slows it). "
        f"{p['samples']} samples; shares are of the samples. "
        + (
            "Native frames are included, so the garbage collector and system calls show as themselves. "
            if native
            else "Python frames only: native time is charged to the Python frame that called it. "
        )
        + f"Raw stacks: `{p.get('raw')}` (not committed)."
        + (f" {p['note']}" if p.get("note") else ""),
        "",
        "| where the time goes (each sample counted once) | share % |",
        "|---|---|",
    ]
    out += [f"| {name} | {share} |" for name, share in p.get("by_category", [])]
    out += [
        "",
        "| selected functions (inclusive: the function and what it calls) | share % |",
        "|---|---|",
    ]
    out += [f"| {name} | {share} |" for name, share in p.get("highlights", [])]
    out += ["", "Top frames by self time:", "", "| frame | self % |", "|---|---|"]
    out += [f"| `{name}` | {share} |" for name, share in p.get("self_top", [])[:12]]
    out += [
        "",
        "Top frames by inclusive time (below the common root):",
        "",
        "| frame | inclusive % |",
        "|---|---|",
    ]
    out += [f"| `{name}` | {share} |" for name, share in p.get("inclusive_top", [])[:15]]
    return out + [""]


if __name__ == "__main__":
    sys.exit(main())
