"""Every page of the docs is tested: what it names exists, and the defaults it states hold.

``PAGES`` maps each page (README.md and every ``*.md`` under docs/) to the checks of its own;
a page without an entry fails ``test_every_page_has_an_entry``, so a new page comes with one
(often a few lines: ``"docs/new.md": Entry()``). Every page also gets the common checks, which
read the page and compare it with a real application built in-process from the embedded
config:

- every REST route named (``GET /rooms/{room}``, a ``curl`` example) is mounted, and a
  route table's ``scope`` column is the scope the route asks for;
- every event in an event table is registered (sent by clients) or declared (sent by plugins);
- every config key named (``server.limits.send_buffer_bytes``, ``relay.envelope``,
  ``PLUGBUS_SERVER__PORT``) exists in the config or a plugin's settings model;
- every repository path and relative link exists (anchors included);
- every hook, ``bus.<attribute>``, ``plugbus.<Name>`` and error code named exists;
- every YAML example is a valid config (or a valid ``plugins.settings`` section);
- every ``plugbus ...`` command line uses commands and options the CLI has;
- every generated table (tests/doc_tables.py) is what its generator prints.

Each common check is shown to refuse a page that gets its subject wrong (``PROOFS``). Beyond
them: a page's ``states(...)`` claims tie a default stated in prose to the code; pages with
``curl_examples_run`` have their ``curl`` examples sent to a real server (the test kit's) and
answered as shown; the OpenAPI text says which scope each route needs and calls nothing per
node that is cluster-wide. hooks.md and writing.md are checked in more depth by
tests/test_plugin_docs.py; most behaviour the pages describe is tested where it lives
(tests/test_rooms.py, test_cluster.py, ...).
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import inspect
import json
import os
import re
import shutil
import tempfile
import types
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import doc_tables
import pytest
import yaml
from pydantic import BaseModel
from starlette.routing import Match

import plugbus
from plugbus.api import cli
from plugbus.api.app import Application, create_app
from plugbus.api.rest_door import scope_note
from plugbus.core import Bus, Event, PlugbusError, Plugin, hookspecs, load_config, load_plugins
from plugbus.core.config import Config
from plugbus.core.loader import BUILTINS
from plugbus.testing import ClientRefused, PlugbusServerFactory

ROOT = Path(__file__).resolve().parent.parent
METHODS = "GET|POST|PUT|DELETE|PATCH"
FENCE = re.compile(r"^```([\w+-]*)\n(.*?)^```$", re.M | re.S)


# -- the page ---------------------------------------------------------------------------------


@dataclass
class Page:
    """One markdown page: its text, its code blocks, its prose and its tables."""

    path: Path

    @property
    def name(self) -> str:
        return (
            self.path.relative_to(ROOT).as_posix()
            if self.path.is_relative_to(ROOT)
            else self.path.name
        )

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def blocks(self, *langs: str) -> list[str]:
        return [m[2] for m in FENCE.finditer(self.text) if not langs or m[1] in langs]

    @property
    def prose(self) -> str:
        """The page without its fenced code blocks and HTML comments."""
        return re.sub(r"<!--.*?-->", "", FENCE.sub("", self.text), flags=re.S)

    def inline_code(self) -> list[str]:
        """Every `code span` of the prose and tables, whitespace folded."""
        return [" ".join(m.split()) for m in re.findall(r"`([^`]+)`", self.prose)]

    def tables(self) -> Iterator[tuple[list[str], list[list[str]]]]:
        """``(header, rows)`` of every table, cells stripped (escaped pipes kept whole)."""
        lines = self.prose.split("\n")
        i = 0
        while i < len(lines):
            if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|--"):
                header = _cells(lines[i])
                rows = []
                i += 2
                while i < len(lines) and lines[i].startswith("|"):
                    rows.append(_cells(lines[i]))
                    i += 1
                yield header, rows
            i += 1


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


# -- the application the pages describe ------------------------------------------------------


@dataclass
class World:
    """What a page may name, read from an application built from the embedded config with
    the optional events on (so that they are registered and can be looked up)."""

    app: Application
    #: (method, path template) -> the API-key scope it asks for (None: none)
    scopes: dict[tuple[str, str], str | None] = field(default_factory=dict)

    @property
    def bus(self) -> Bus:
        return self.app.bus

    def events(self) -> set[str]:
        names: set[str] = set()
        for ns in self.bus.config.server.namespaces:
            names.update(self.bus.events.names(ns))
            names.update(event.name for _, event in self.bus.events.server_events(ns))
        return names

    def mounted(self, method: str, path: str) -> bool:
        """True when the REST door serves ``method path`` (a template or a concrete path)."""
        scope = {"type": "http", "path": path, "method": method, "root_path": "", "headers": []}
        return any(route.matches(scope)[0] is Match.FULL for route in self.app.rest.routes)

    def scope_of(self, method: str, path: str) -> tuple[bool, str | None]:
        """``(known, scope)``: the API-key scope the route for ``method path`` asks for."""
        for (m, template), scope in self.scopes.items():
            if m == method and (
                _normal(template) == _normal(path) or re.fullmatch(_template_regex(template), path)
            ):
                return True, scope
        return False, None


def _normal(template: str) -> str:
    return re.sub(r"\{[^}/]*\}", "{}", template)


def _template_regex(template: str) -> str:
    return re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    config = tmp_path_factory.mktemp("docs") / "config.yaml"
    config.write_text(
        yaml.safe_dump({"plugins": {"settings": {"rooms": {"notify_membership": True}}}})
    )
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.upper().startswith("PLUGBUS_")]:
            mp.delenv(name)
        app = create_app(load_config(config))
    out = World(app)
    # What each route asks for: plugins declare it on their Route; the core routes here.
    out.scopes[("GET", "/plugins")] = "read"
    for _plugin, route in app.bus.hooks.routes(app.bus):
        out.scopes[(route.method.upper(), route.path)] = route.scope
    return out


# -- common checks ------------------------------------------------------------------------------

Check = Callable[[Page, World, "Entry"], None]


def routes_are_mounted(page: Page, world: World, entry: Entry) -> None:
    """``GET /path`` in prose, tables and code, and every ``curl`` example."""
    named: list[tuple[str, str]] = []
    # Code in python, js or yaml blocks is an example's own (a plugin declaring `GET /stats`).
    text = "\n".join([page.prose, *page.blocks("sh", "bash", "", "nginx")])
    for m in re.finditer(rf"\b((?:{METHODS})(?:\|(?:{METHODS}))*) (/[^\s`),;?]*)", text):
        path = m[2].rstrip(".:")
        if "..." in path or "…" in path:
            continue  # "/moderation/..." stands for a family of routes
        named += [(method, path) for method in m[1].split("|")]
    named += [(c.method, c.path) for c in curl_examples(page)]
    missing = [
        f"{m} {p}"
        for m, p in named
        if not world.mounted(m, p) and f"{m} {p}" not in entry.elsewhere
    ]
    assert not missing, f"{page.name} names routes that are not mounted: {missing}"


@dataclass
class Curl:
    """A ``curl`` example and the answer the page shows under it (``# ...`` lines)."""

    method: str
    path: str
    headers: dict[str, str]
    body: str | None
    answer: str


def curl_examples(page: Page) -> list[Curl]:
    out: list[Curl] = []
    for block in page.blocks("sh", "bash", ""):
        for chunk in re.split(r"\n(?=curl )", block.replace("\\\n", " ")):
            command, _, rest = chunk.partition("\n")
            url = re.search(
                r"^curl\b.*?\s(?:https?://)?(?:localhost|127\.0\.0\.1)(?::\d+)?(/[^\s'\"]*)",
                command,
            )
            if url is None:
                continue
            method = re.search(r"-X (\w+)", command)
            body = re.search(r"-d '([^']*)'", command)
            answer = " ".join(
                line.strip()[1:].strip()
                for line in rest.split("\n")
                if line.strip().startswith("#")
            )
            out.append(
                Curl(
                    method=method[1] if method else ("POST" if body else "GET"),
                    path=url[1],
                    headers=dict(h.split(": ", 1) for h in re.findall(r"-H '([^']*)'", command)),
                    body=body[1] if body else None,
                    answer=answer,
                )
            )
    return out


def route_tables_name_the_scopes(page: Page, world: World, entry: Entry) -> None:
    """A table with ``route`` and ``scope`` columns says each route's API-key scope."""
    for header, rows in page.tables():
        if "route" not in header:
            continue
        assert "scope" in header, f"{page.name}: a route table needs a scope column: {header}"
        r, s = header.index("route"), header.index("scope")
        for row in rows:
            method, path = row[r].strip("`").split("?")[0].split(" ", 1)
            known, scope = world.scope_of(method, path)
            assert known, f"{page.name}: {row[r]} is no route with a declared scope"
            stated = None if row[s] == "none" else row[s].strip("`")
            assert stated == scope, f"{page.name}: {row[r]} needs scope {scope!r}, not {row[s]}"


def events_exist(page: Page, world: World, entry: Entry) -> None:
    """The first column of every table headed ``event ...`` names a registered event, and so
    does every ``POST /events/<name>``."""
    known = world.events() | page_events(page) | entry.example_events()
    named = [
        m[1]
        for header, rows in page.tables()
        if header[0].startswith("event")
        for row in rows
        if (m := re.match(r"`([^`]+)`", row[0]))
    ]
    named += re.findall(r"POST /events/([\w-]+)", page.text)
    unknown = sorted(set(named) - known - set(entry.elsewhere))
    assert not unknown, f"{page.name} names events nobody registers: {unknown}"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _resolve(model: type[BaseModel] | None, parts: list[str], where: str) -> None:
    """Walk ``parts`` down ``model``'s fields; ``<placeholder>`` and ``*`` match any key."""
    for i, part in enumerate(parts):
        if part.startswith("<") or model is None:
            return  # a placeholder, or the inside of a mapping: any key
        if part.endswith("*"):
            assert any(n.startswith(part[:-1]) for n in model.model_fields), where
            return
        if part not in model.model_fields and model.model_config.get("extra") == "allow":
            return
        assert part in model.model_fields, f"{where}: {part!r} is not a key of {model.__name__}"
        annotation = model.model_fields[part].annotation
        model = _model_of(annotation)
        if parts[: i + 1] == ["plugins", "settings"] and len(parts) > i + 1:
            plugin = parts[i + 1]
            assert plugin in BUILTINS, f"{where}: no built-in plugin {plugin!r}"
            _resolve(doc_tables.settings_model(plugin), parts[i + 2 :], where)
            return


def settings_exist(page: Page, world: World, entry: Entry) -> None:
    """``server.x.y``, ``plugins.x``, ``<plugin>.<key>`` and ``PLUGBUS_...`` name real keys."""
    plugins = "|".join(BUILTINS)
    for span in page.inline_code():
        key = span.split(":")[0].split(" ")[0].split("=")[0]
        if re.fullmatch(r"server\.\w+", key) and key[7:] in _kit_server_attributes():
            continue  # the test kit's `server` fixture, not the config's server section
        if re.fullmatch(r"plugins\.settings\.\w+(\.[\w*<>]+)*", key):
            plugin, *rest = key.split(".")[2:]
            if plugin in entry.examples:
                _resolve(entry.example_settings(plugin), rest, f"{page.name}: `{span}`")
                continue
        if re.fullmatch(r"(server|plugins)(\.[\w*<>]+)+", key):
            _resolve(Config, key.split("."), f"{page.name}: `{span}`")
        elif re.fullmatch(rf"({plugins})(\.[\w*<>]+)+", key):
            plugin, *rest = key.split(".")
            _resolve(doc_tables.settings_model(plugin), rest, f"{page.name}: `{span}`")
    # `$env:PLUGBUS_BACKEND_KEY` names a secret's variable, not a config key
    for var in set(re.findall(r"(?<!env:)\bPLUGBUS_([A-Z0-9_]+)", page.text)):
        if f"PLUGBUS_{var}" in entry.elsewhere:
            continue
        parts = var.lower().split("__")
        _resolve(Config, parts, f"{page.name}: PLUGBUS_{var}")


#: Top-level folders and root files a page may name by path.
TOP = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}
PACKAGE = {p.name for p in (ROOT / "plugbus").iterdir()}


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = "".join(c for c in text if c in " -" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def paths_and_links_exist(page: Page, world: World, entry: Entry) -> None:
    """Repository paths in code spans, and relative links with their anchors."""
    missing = []
    for span in page.inline_code():
        if not re.fullmatch(r"[\w.-]+(/[\w.*-]+)*/?", span) or "/" not in span + ".":
            continue
        first = span.split("/")[0]
        if "/" not in span and not re.search(r"\.(md|py|yaml|toml|sh|json)$", span):
            continue
        if any(span.startswith(p) for p in entry.ignore_paths):
            continue
        if first in TOP:
            target = ROOT / span
        elif first in PACKAGE and "/" in span:
            target = ROOT / "plugbus" / span  # "core/bus.py": a module inside the package
        else:
            continue
        if not target.exists():
            missing.append(span)
    for _text, link in re.findall(r"\[([^\]]+)\]\(([^)\s]+)\)", page.prose):
        if re.match(r"[a-z]+:", link):
            continue
        file, _, anchor = link.partition("#")
        target = (page.path.parent / file).resolve() if file else page.path
        if not target.exists():
            missing.append(link)
        elif anchor and target.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", target.read_text("utf-8")), re.M)
            if anchor not in {_slug(h) for h in headings}:
                missing.append(link)
    assert not missing, f"{page.name} names paths or links that do not exist: {missing}"


def _not_hooks() -> set[str]:
    """Names that start with ``plugbus_`` without being hooks: the kit's fixtures, packages."""
    import plugbus.testing

    fixtures = {
        name
        for name, obj in vars(plugbus.testing).items()
        if type(obj).__name__ == "FixtureFunctionDefinition"
    }
    packages = {p.name for p in (ROOT / "examples").glob("*/plugbus_*")}
    return fixtures | packages


def _metric_names(world: World) -> set[str]:
    return {metric.name for metric in world.app.metrics.registry.collect()} | _started_metrics()


@functools.cache
def _started_metrics() -> frozenset[str]:
    """The families of a started node's scrape (plugins make their counters at start-up)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = _started_scrape()
    return frozenset(family.name for family in text_string_to_metric_families(text))


def hooks_exist(page: Page, world: World, entry: Entry) -> None:
    text = "\n".join([page.prose, *page.blocks("python")])  # an nginx upstream is no hook
    # a file name (bench/servers/plugbus_on.py) is no hook
    named = set(re.findall(r"(?<![\w/])plugbus_[a-z_]+\b(?!\.py)", text)) - _not_hooks()
    # Prometheus metric names share the prefix; metrics_table_matches_a_scrape checks them
    named = {n for n in named if n.removesuffix("_total") not in _metric_names(world)}
    unknown = sorted(n for n in named if not hasattr(hookspecs, n))
    assert not unknown, f"{page.name} names hooks that do not exist: {unknown}"


def bus_and_surface_names_exist(page: Page, world: World, entry: Entry) -> None:
    """``bus.<name>`` is an attribute of the Bus; ``plugbus.<Name>`` of the author surface."""
    missing = []
    for span in page.inline_code():
        for attr in re.findall(r"(?<![\w./])(?:ctx\.|request\.)?bus\.(\w+)", span):
            if not hasattr(world.bus, attr):
                missing.append(f"bus.{attr}")
        for name in re.findall(r"(?<![\w.])plugbus\.(\w+)", span):
            if (
                not hasattr(plugbus, name)
                and name not in ("core", "api", "testing", "plugins")
                and f"plugbus.{name}" not in entry.elsewhere
            ):
                missing.append(f"plugbus.{name}")
    assert not missing, f"{page.name} names what does not exist: {missing}"


def _error_codes() -> dict[str, int | None]:
    """Every error code plugbus can answer with: the PlugbusError classes' (with their HTTP
    status) and the codes raised with ``code="..."`` anywhere in the package."""
    codes: dict[str, int | None] = {}
    todo: list[type[PlugbusError]] = [PlugbusError]
    while todo:
        cls = todo.pop()
        codes[cls.code] = cls.status
        todo += cls.__subclasses__()
    for path in (ROOT / "plugbus").rglob("*.py"):
        for code in re.findall(r"\bcode=\"([a-z_]+)\"", path.read_text(encoding="utf-8")):
            codes.setdefault(code, None)
    return codes


def error_codes_exist(page: Page, world: World, entry: Entry) -> None:
    """Codes in a ``code`` or ``refusal`` column, and every ``403 not_allowed``-style pair
    (whose status must be the class's)."""
    codes = _error_codes()
    wrong = []
    for header, rows in page.tables():
        cols = [i for i, h in enumerate(header) if h in ("code", "refusal")]
        for row in rows:
            for i in cols:
                for code in re.findall(r"`([a-z]+(?:_[a-z]+)+)`", row[i]):
                    if code not in codes:
                        wrong.append(code)
    for status, code in re.findall(r"`?\b([45]\d\d)`? `?([a-z]+(?:_[a-z]+)+)\b", page.prose):
        if code not in codes:
            wrong.append(f"{status} {code}")
        elif codes[code] is not None and codes[code] != int(status):
            wrong.append(f"{status} {code} (it is {codes[code]})")
    assert not wrong, f"{page.name} names error codes that do not exist: {wrong}"


def _secrets(data: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(data, dict):
        for value in data.values():
            found |= _secrets(value)
    elif isinstance(data, list):
        for value in data:
            found |= _secrets(value)
    elif isinstance(data, str) and data.startswith("$env:"):
        found.add(data.removeprefix("$env:"))
    return found


def yaml_examples_are_valid_config(page: Page, world: World, entry: Entry) -> None:
    """Each YAML block loads as a config (``server:``/``plugins:`` at the top) or as plugin
    settings (plugin names at the top), with its plugins, as ``plugbus config check`` would."""
    for i, block in enumerate(page.blocks("yaml")):
        data = yaml.safe_load(block)
        assert isinstance(data, dict), f"{page.name}: YAML example {i + 1} is not a mapping"
        if "spec" in data:
            continue  # a Kubernetes manifest: kubernetes_example_fits_the_drain checks it
        if not set(data) <= {"server", "plugins"}:
            assert set(data) <= set(BUILTINS), (
                f"{page.name}: YAML example {i + 1} is neither a config nor plugin settings"
            )
            data = {"plugins": {"settings": data}}
        named = set(data.get("plugins", {}).get("settings", {})) & set(entry.examples)
        modules = {name: entry.examples[name].split(":", 1)[1] for name in named}
        if modules:
            data = copy.deepcopy(data)
            data["plugins"].setdefault("modules", {}).update(modules)
        paths = [str(ROOT / entry.examples[name].split(":")[0]) for name in named]
        _load(data, f"{page.name}: YAML example {i + 1}", entry.yaml_env, paths)


def _load(data: dict[str, Any], where: str, env: dict[str, str], paths: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        path = Path(tmp) / "config.yaml"
        for entry in paths:
            mp.syspath_prepend(entry)
        for name in [k for k in os.environ if k.upper().startswith("PLUGBUS_")]:
            mp.delenv(name)
        for name in _secrets(data):
            mp.setenv(name, env.get(name, "a-secret-for-the-docs-test"))
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        try:
            loaded = load_config(path)
            Bus(loaded.config, load_plugins(loaded))
        except Exception as exc:
            pytest.fail(f"{where} is not a valid config: {exc}\n{yaml.safe_dump(data)}")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def kubernetes_example_fits_the_drain(page: Page, world: World, entry: Entry) -> None:
    """The pod spec's probes ask routes that exist on the default port, readiness is /ready and
    liveness /health, and the grace period outlasts the drain and the shutdown that follows."""
    manifests = [d for d in map(yaml.safe_load, page.blocks("yaml")) if "spec" in d]
    assert manifests, f"{page.name}: no Kubernetes example"
    server = world.bus.config.server
    for manifest in manifests:
        spec = manifest["spec"]
        grace = spec["terminationGracePeriodSeconds"]
        assert grace > server.drain_seconds + server.shutdown_timeout, (
            grace,
            server.drain_seconds,
            server.shutdown_timeout,
        )
        (container,) = spec["containers"]
        probes = {kind: container[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")}
        assert probes["readinessProbe"]["path"] == "/ready"
        assert probes["livenessProbe"]["path"] == "/health"
        for probe in probes.values():
            assert probe["port"] == server.port
            assert world.mounted("GET", probe["path"]), probe


async def _scrape_a_started_node() -> str:
    """``/metrics`` of a started node running every built-in plugin, the optional ones too
    (their counters are made at start-up)."""
    from plugbus.core.config import DEFAULT_BUILTINS
    from plugbus.testing.inprocess import PlugbusAppFactory

    with tempfile.TemporaryDirectory() as tmp:
        factory = PlugbusAppFactory(lambda: Path(tempfile.mkdtemp(dir=tmp)))
        try:
            app = await factory(
                builtins=[*DEFAULT_BUILTINS, *(n for n in BUILTINS if n not in DEFAULT_BUILTINS)],
                # nobody listens there: no event is sent, the plugin only has to start
                settings={"webhooks": {"urls": ["http://127.0.0.1:9/hooks"], "secret": "s"}},
            )
            resp = await app.http.get("/metrics")
            assert resp.status_code == 200, resp.text
            return resp.text
        finally:
            await factory.aclose()


@functools.cache
def _started_scrape() -> str:
    import asyncio

    return asyncio.run(_scrape_a_started_node())


def metrics_table_matches_a_scrape(page: Page, world: World, entry: Entry) -> None:
    """The metrics table names exactly the families a scrape of a started node (with every
    built-in plugin) exposes, each with its type and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    scraped = {}
    for family in text_string_to_metric_families(_started_scrape()):
        labels = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        scraped[family.name] = (family.type, labels)
    rows = [r for _, rs in page.tables() for r in rs if r and r[0].startswith("`plugbus_")]
    documented = {}
    for row in rows:
        name = row[0].strip("`").removesuffix("_total")
        labels = set(re.findall(r"`([a-z_]+)`", row[2]))
        documented[name] = (row[1].strip(), labels)
    # a family with no samples yet (labelled counters before any traffic) shows no labels
    for name, (kind, labels) in documented.items():
        assert name in scraped, f"{page.name} documents {name}, which the node does not expose"
        assert scraped[name][0] == kind, (name, scraped[name][0], kind)
        assert scraped[name][1] <= labels, (name, scraped[name][1], labels)
    assert set(scraped) <= set(documented), f"undocumented: {set(scraped) - set(documented)}"


def grafana_dashboard_queries_real_metrics(page: Page, world: World, entry: Entry) -> None:
    """docs/grafana-dashboard.json, which the page links, is a dashboard whose every query
    names only metrics a started node exposes (a histogram by its _bucket, _sum or _count
    series, a counter by its _total one)."""
    assert "grafana-dashboard.json" in page.text
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text("utf-8"))
    families = {}
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(_started_scrape()):
        families[family.name] = family.type
    series = set()
    for name, kind in families.items():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        series |= {name + suffix for suffix in suffixes.get(kind, ("",))}
    panels = dashboard["panels"]
    assert panels and len({p["id"] for p in panels}) == len(panels)
    named: set[str] = set()
    for panel in panels:
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"]["type"] == "prometheus"
        for target in panel["targets"]:
            names = set(re.findall(r"\bplugbus_[a-z_]+\b", target["expr"]))
            assert names, f"{panel['title']}: a query that names no plugbus metric"
            unknown = names - series
            assert not unknown, f"{panel['title']}: the node exposes no {sorted(unknown)}"
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            named |= names
    # and it shows every family the node exposes
    shown = {n for n in families if any(s.startswith(n) for s in named)}
    assert shown == set(families), f"not on the dashboard: {set(families) - shown}"


def elsewhere_is_real(page: Page, world: World, entry: Entry) -> None:
    """What a page names from elsewhere is defined where its entry says, and the page names
    it (an entry for a name the page dropped is stale)."""
    for name, (path, defined_by) in entry.elsewhere.items():
        assert name in page.text, f"{page.name}: its entry excuses {name!r}, which it never names"
        source = (ROOT / path).read_text(encoding="utf-8")
        assert defined_by in source, f"{page.name}: {name!r} is not defined in {path}"


def cli_lines_are_real(page: Page, world: World, entry: Entry) -> None:
    """Each ``plugbus ...`` command line (in code blocks and code spans) uses subcommands and
    options that ``plugbus`` has."""
    lines = [line for block in page.blocks() for line in block.split("\n")]
    lines += page.inline_code()
    for line in lines:
        # the command starts the line or follows `&&`, `;`, `(`, `$ ` or `python -m`; a bare
        # "plugbus" elsewhere is an argument (`bench/run.sh --servers plugbus --out -`)
        m = re.search(
            r"(?:^|[&;(]\s*|-m\s+|\$\s+)plugbus ((?:[a-z-]+\s?)+.*?)(?:\s+#.*)?$", line.strip()
        )
        if m is None or "plugbus[" in line:
            continue
        words = re.sub(r"[\[\]]", " ", m[1]).split()
        parser = cli._parser()
        while words and words[0] in _subcommands(parser):
            parser = _subcommands(parser)[words.pop(0)]
        assert parser is not cli._parser() or not words or not words[0].isalpha(), (
            f"{page.name}: `plugbus {m[1]}`: {words[0]!r} is no plugbus command"
        )
        options = {o for a in parser._actions for o in a.option_strings}
        for word in words:
            if word.startswith("-"):
                assert word.split("=")[0] in options, (
                    f"{page.name}: `plugbus {m[1]}`: no option {word}"
                )


def generated_tables_match(page: Page, world: World, entry: Entry) -> None:
    for kind, arg, shown, generated in doc_tables.generated_blocks(page.text):
        assert shown == generated, (
            f"{page.name}: the generated {kind} table for {arg} is out of date; run "
            f"`.venv/bin/python tests/doc_tables.py`\n--- page\n{shown}--- code\n{generated}"
        )
    for plugin in entry.settings_tables:
        assert f"<!-- generated: settings {plugin} -->" in page.text, (
            f"{page.name} should show the generated settings table of {plugin}"
        )


COMMON: tuple[Check, ...] = (
    routes_are_mounted,
    route_tables_name_the_scopes,
    events_exist,
    settings_exist,
    paths_and_links_exist,
    hooks_exist,
    bus_and_surface_names_exist,
    error_codes_exist,
    yaml_examples_are_valid_config,
    cli_lines_are_real,
    generated_tables_match,
)


# -- page-specific checks -------------------------------------------------------------------


def _default(dotted: str) -> Any:
    """The default of a config key (``server.limits.send_buffer_bytes``) or of a plugin
    setting (``moderation.flood.rate``)."""
    head, *parts = dotted.split(".")
    model: Any = doc_tables.settings_model(head) if head in BUILTINS else Config
    parts = parts if head in BUILTINS else [head, *parts]
    value: Any = None
    for part in parts:
        value = doc_tables.default_of(model.model_fields[part])
        model = type(value)
    return value


def states(*claims: tuple[str, str, Any]) -> Check:
    """The page says ``text``, and the default of ``key`` is ``value``: a default stated in
    prose, tied to the code (edit both together)."""

    def check(page: Page, world: World, entry: Entry) -> None:
        prose = " ".join(page.text.split())
        for text, key, value in claims:
            assert text in prose, f"{page.name} no longer says {text!r}; update this claim"
            assert _default(key) == value, (
                f"{page.name} says {text!r}, but the default of {key} is {_default(key)!r}"
            )

    check.__name__ = "states_" + "_".join(re.sub(r"\W", "", c[1]) for c in claims[:2])
    return check


def bench_commands_are_real(page: Page, world: World, entry: Entry) -> None:
    """``bench/<script> --option`` names options that script (or what it runs) parses."""
    for script, args in re.findall(r"`(bench/[\w.]+)((?: [^`]*)?)`", page.text):
        sources = [ROOT / script] + ([ROOT / "bench" / "run.py"] if script.endswith(".sh") else [])
        text = "".join(s.read_text(encoding="utf-8") for s in sources if s.exists())
        for option in set(re.findall(r"(--[\w-]+)", args)) - {"--help"}:
            assert f'"{option}"' in text, f"{page.name}: {script} has no option {option}"


def covered_elsewhere(test_file: str, *tests: str) -> Check:
    """The page's own tests live in ``test_file``: they must still be there."""

    def check(page: Page, world: World, entry: Entry) -> None:
        source = (ROOT / "tests" / test_file).read_text(encoding="utf-8")
        for test in tests:
            assert f"def {test}(" in source, f"{test_file} no longer has {test}"

    check.__name__ = f"covered_by_{Path(test_file).stem}"
    return check


def openapi_models_exist(*names: str) -> Check:
    """The OpenAPI models the page names are in the document."""

    def check(page: Page, world: World, entry: Entry) -> None:
        schemas = world.app.rest.openapi()["components"]["schemas"]
        for name in names:
            assert f"`{name}`" in page.text, f"{page.name} no longer names {name}"
            assert name in schemas, f"{page.name} names OpenAPI model {name}, which is not there"

    check.__name__ = "openapi_models_" + "_".join(names[:2])
    return check


# -- the registry ---------------------------------------------------------------------------------


@dataclass
class Entry:
    """What a page needs beyond the common checks."""

    checks: tuple[Check, ...] = ()
    #: built-in plugins whose generated settings table the page must show
    settings_tables: tuple[str, ...] = ()
    #: path prefixes the page names that are not in the repository, on purpose
    ignore_paths: tuple[str, ...] = ()
    #: values for the ``$env:NAME`` secrets of its YAML examples
    yaml_env: dict[str, str] = field(default_factory=dict)
    #: its ``curl`` examples run, in order, against one server and answer as the page shows
    #: (an exact JSON answer, a status, or else any 2xx)
    curl_examples_run: bool = False
    #: example plugins the page configures by name: "folder:module:Class" (folder on sys.path)
    examples: dict[str, str] = field(default_factory=dict)
    #: names the page uses that live elsewhere — an example plugin's route or event, a logger,
    #: an environment variable that is no config key — each with the file that defines it and
    #: the text there that does (checked by ``elsewhere_is_real``)
    elsewhere: dict[str, tuple[str, str]] = field(default_factory=dict)

    def _example(self, name: str) -> type[Plugin]:
        folder, module, attr = self.examples[name].split(":")
        spec = importlib.util.spec_from_file_location(
            f"docs_example_{name}", ROOT / folder / module / "__init__.py"
        )
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cls = getattr(mod, attr)
        assert issubclass(cls, Plugin)
        return cls

    def example_settings(self, name: str) -> type[BaseModel]:
        return self._example(name).Settings

    def example_events(self) -> set[str]:
        names: set[str] = set()
        for name in self.examples:
            cls = self._example(name)
            names |= {e.name for e in cls(cls.Settings()).plugbus_register_events()}
        return names


def page_events(page: Page) -> set[str]:
    """Events the page's own Python examples declare (an Event subclass with a ``name``)."""
    names: set[str] = set()
    for i, block in enumerate(page.blocks("python")):
        module = types.ModuleType(f"docs_page_example_{i}")
        try:
            exec(compile(block, f"{page.name} example {i + 1}", "exec"), module.__dict__)
        except Exception:
            continue  # a test file or a fragment: it declares nothing to look up
        names |= {
            obj.name
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, Event)
            and isinstance(getattr(obj, "name", None), str)
        }
    return names


def _kit_server_attributes() -> set[str]:
    """What the test kit's ``server`` offers: its attributes and documented instance
    variables."""
    from plugbus.testing import PlugbusServer

    doc = inspect.getdoc(PlugbusServer) or ""
    return set(dir(PlugbusServer)) | set(re.findall(r":ivar (\w+):", doc))


PAGES: dict[str, Entry] = {
    "bench/README.md": Entry(
        # the benchmark's output directory, made by its first run (not committed)
        ignore_paths=("bench/results/",),
        elsewhere={"plugbus.headers": ("plugbus/api/wire/engine.py", '"plugbus.headers"')},
    ),
    "README.md": Entry(
        curl_examples_run=True,
        checks=(
            states(
                ("anyone may connect (`auth.mode: none`", "auth.mode", "none"),
                ("`server.chat_page: false` turns it off", "server.chat_page", True),
                (
                    "plugins: builtins: [auth, welcome, rooms, relay, moderation]",
                    "plugins.builtins",
                    ["auth", "welcome", "rooms", "relay", "moderation"],
                ),
                ("entry_points: true", "plugins.entry_points", True),
                (
                    "moderation: {max_length: 2000, blocked_words: []}",
                    "moderation.max_length",
                    2000,
                ),
            ),
        ),
    ),
    "docs/deployment.md": Entry(
        checks=(
            states(
                (
                    "`server.limits.send_buffer_bytes` (16 MiB by default)",
                    "server.limits.send_buffer_bytes",
                    16 * 1024 * 1024,
                ),
                (
                    "**Compression is off by default** (`server.websocket_compression`)",
                    "server.websocket_compression",
                    False,
                ),
                (
                    "`server.websocket_writer` says what to do without it: `auto` (the default)",
                    "server.websocket_writer",
                    "auto",
                ),
                (
                    "One process is the embedded default (`server.backend: memory`)",
                    "server.backend",
                    "memory",
                ),
                (
                    "(with `plugins.settings.moderation.store: auto`, the default)",
                    "moderation.store",
                    "auto",
                ),
                (
                    "On SIGTERM a node drains before it stops (`server.drain_seconds`, 10 by default)",
                    "server.drain_seconds",
                    10,
                ),
            ),
            kubernetes_example_fits_the_drain,
        ),
        elsewhere={
            "PLUGBUS_TEST_REDIS_AOF": (
                "tests/conftest.py",
                'REDIS_AOF = os.environ.get("PLUGBUS_TEST_REDIS_AOF", "")',
            ),
        },
    ),
    "docs/operations.md": Entry(
        checks=(metrics_table_matches_a_scrape, grafana_dashboard_queries_real_metrics)
    ),
    "docs/recovery.md": Entry(
        checks=(
            states(
                (
                    "So the default 1000 messages per room",
                    "server.history.max_messages",
                    1000,
                ),
            ),
        ),
        # its bench figures name the run's result files, which stay on the machine measured
        ignore_paths=("bench/results/",),
    ),
    # every member and error class it names is checked by tests/test_bus_docs.py
    "docs/plugins/bus.md": Entry(
        elsewhere={
            "POST /counter/clicks": ("tests/fixture_plugins/counter.py", '"/counter/{name}"'),
            "vote": ("tests/fixture_plugins/polls.py", 'name: ClassVar[str] = "vote"'),
            "plugbus.text": ("plugbus/core/events.py", 'name: ClassVar[str] = "plugbus.text"'),
        }
    ),
    "docs/benchmarks.md": Entry(
        # A record of one run: its py-spy frames name files and lines of the commit measured
        # ("Code measured: commit ..."), and its raw stacks stayed on that machine.
        checks=(bench_commands_are_real,),
        ignore_paths=("bench/results/",),
    ),
    "docs/plugins/hooks.md": Entry(
        elsewhere={
            "PLUGBUS_TRACE_HOOKS": ("plugbus/core/hooks.py", 'TRACE_ENV = "PLUGBUS_TRACE_HOOKS"'),
            "plugbus.trace": ("plugbus/core/hooks.py", 'logging.getLogger("plugbus.trace")'),
        },
        checks=(
            covered_elsewhere(
                "test_plugin_docs.py",
                "test_every_hook_is_documented_with_the_hookspecs_argument_names",
                "test_every_documented_argument_is_described_and_the_call_kind_is_right",
                "test_the_hook_examples_are_valid_plugins",
            ),
        ),
    ),
    "docs/plugins/writing.md": Entry(
        examples={"echo": "examples/plugin-template:plugbus_echo:EchoPlugin"},
        # the in-process kit's base URL, a host name that never resolves
        elsewhere={"plugbus.test": ("plugbus/testing/inprocess.py", '"http://plugbus.test"')},
        checks=(
            covered_elsewhere(
                "test_plugin_docs.py",
                "test_every_file_shown_in_the_writing_guide_is_the_templates_file_byte_for_byte",
                "test_the_template_installs_and_its_own_tests_pass",
            ),
        ),
    ),
    "docs/plugins/rooms.md": Entry(
        checks=(openapi_models_exist("RoomList", "RoomMembers", "MemberJoined", "MemberLeft"),),
        settings_tables=("rooms",),
    ),
    # its verification snippet is run against real deliveries by tests/test_webhooks.py
    "docs/plugins/webhooks.md": Entry(settings_tables=("webhooks",)),
    "docs/plugins/welcome.md": Entry(
        curl_examples_run=True,
        checks=(openapi_models_exist("Greetings", "GreetingsUpdate"),),
        settings_tables=("welcome",),
    ),
    "docs/plugins/relay.md": Entry(
        checks=(
            openapi_models_exist(
                "RoomMessage",
                "DirectMessage",
                "BroadcastMessage",
                "Delivered",
                "DirectDelivered",
                "BroadcastDelivered",
            ),
        ),
        settings_tables=("relay",),
    ),
    "docs/plugins/moderation.md": Entry(
        curl_examples_run=True,
        checks=(
            states(
                (
                    "By default only `max_length` (2000 characters) limits anything",
                    "moderation.max_length",
                    2000,
                ),
                ("`flood` is off", "moderation.rules.flood.enabled", False),
                (
                    "(The server's own `server.limits` bucket, 100/s by default",
                    "server.limits.events_per_second",
                    100,
                ),
                (
                    "A duration over `max_sanction_seconds` (365 days by default)",
                    "moderation.max_sanction_seconds",
                    365 * 24 * 3600,
                ),
            ),
        ),
        settings_tables=("moderation",),
    ),
}


def all_pages() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in doc_tables.pages())


def test_every_page_has_an_entry() -> None:
    missing = sorted(set(all_pages()) - set(PAGES))
    gone = sorted(set(PAGES) - set(all_pages()))
    assert not missing, f"pages without an entry in PAGES (tests/test_docs.py): {missing}"
    assert not gone, f"entries in PAGES for pages that are gone: {gone}"


CASES = [
    pytest.param(page, check, id=f"{page}::{check.__name__}")
    for page, entry in PAGES.items()
    for check in (*COMMON, *((elsewhere_is_real,) if entry.elsewhere else ()), *entry.checks)
]


@pytest.mark.parametrize(("page", "check"), CASES)
def test_page(page: str, check: Check, world: World) -> None:
    check(Page(ROOT / page), world, PAGES[page])


# -- the OpenAPI text ---------------------------------------------------------------------------

#: The only per-node figures the REST door reports (docs/deployment.md, "What stays per node"):
#: a delivery's recipients and /health's counts. Presence is cluster-wide.
PER_NODE = {
    ("BroadcastDelivered", "recipients"),
    ("Delivered", "recipients"),
    ("DirectDelivered", "recipients"),
    ("Health", "connections"),
    ("Health", "sessions"),
    # the admin view's list of the answering node's own connections
    ("ConnectionList", "count"),
    ("ConnectionView", ""),
}


def test_every_operation_says_which_scope_it_needs(world: World) -> None:
    doc = world.app.rest.openapi()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            assert op.get("summary"), f"{where} has no summary"
            known, scope = world.scope_of(method.upper(), path)
            if known:
                assert scope_note(scope) in op.get("description", ""), (
                    f"{where}: its OpenAPI description does not say it needs {scope!r}"
                )
    text = json.dumps(doc).lower()
    for stale in ("not authorized", "authorization yet", "authorized yet"):
        assert stale not in text, f"the OpenAPI document still says {stale!r}"


def test_only_per_node_figures_are_described_as_per_node(world: World) -> None:
    schemas = world.app.rest.openapi()["components"]["schemas"]
    said = set()
    for name, schema in schemas.items():
        if re.search(r"this node|per node", schema.get("description") or ""):
            said.add((name, ""))
        for prop, spec in (schema.get("properties") or {}).items():
            if re.search(r"this node|per node", spec.get("description") or ""):
                said.add((name, prop))
    assert said == PER_NODE, f"described as per node: {sorted(said)}; expected {sorted(PER_NODE)}"


# -- what the pages show, run -----------------------------------------------------------------


@pytest.mark.parametrize("page", [p for p, e in PAGES.items() if e.curl_examples_run])
async def test_the_curl_examples_answer_as_shown(
    page: str, plugbus_server: PlugbusServerFactory
) -> None:
    examples = curl_examples(Page(ROOT / page))
    assert examples, f"{page} has no curl examples left; drop curl_examples_run"
    server = await plugbus_server()
    for curl in examples:
        where = f"{page}: curl -X {curl.method} {curl.path}"
        resp = await server.http.request(
            curl.method, curl.path, headers=curl.headers, content=curl.body
        )
        status = re.match(r"(\d{3}) ([\w/+-]+)", curl.answer)
        if status:
            assert resp.status_code == int(status[1]), f"{where}: {resp.status_code} {resp.text}"
            assert resp.headers["content-type"].startswith(status[2]), where
            continue
        assert resp.is_success, f"{where}: {resp.status_code} {resp.text}"
        if curl.answer:
            assert resp.json() == json.loads(curl.answer), where


async def test_behind_a_trusted_proxy_a_client_keeps_its_own_address(
    plugbus_server: PlugbusServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/deployment.md (Load balancing) and moderation.md: uvicorn trusts X-Forwarded-For
    from 127.0.0.1 and ::1 unless FORWARDED_ALLOW_IPS says otherwise, so an address ban
    behind a proxy on the same machine bans that client, not everyone."""
    import uvicorn

    prose = " ".join((ROOT / "docs" / "deployment.md").read_text(encoding="utf-8").split())
    assert "`127.0.0.1` and `::1` unless the environment variable `FORWARDED_ALLOW_IPS`" in prose
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    assert uvicorn.Config(app=None).forwarded_allow_ips == "127.0.0.1,::1"

    server = await plugbus_server()
    resp = await server.http.post(
        "/moderation/bans", json={"kind": "address", "value": "203.0.113.7", "reason": "test"}
    )
    assert resp.status_code == 201, resp.text
    with pytest.raises(ClientRefused) as refused:
        await server.client(headers={"X-Forwarded-For": "203.0.113.7"})
    assert refused.value.error["code"] == "connection_denied"
    assert refused.value.error["details"]["rule"] == "ban", refused.value.error
    other = await server.client(headers={"X-Forwarded-For": "198.51.100.4"})
    assert other.sid


# -- the checks can fail ----------------------------------------------------------------------

#: For each common check: a page it passes and one it must refuse, the second differing from
#: the first only in the name or value the check is about.
PROOFS: dict[Check, tuple[str, str]] = {
    routes_are_mounted: ("Call `GET /rooms/{room}`.", "Call `GET /rooms/{room}/everyone`."),
    route_tables_name_the_scopes: (
        "| route | scope |\n|---|---|\n| `GET /rooms` | `read` |\n",
        "| route | scope |\n|---|---|\n| `GET /rooms` | `admin` |\n",
    ),
    events_exist: (
        "| event | payload |\n|---|---|\n| `join-room` | `{room}` |\n",
        "| event | payload |\n|---|---|\n| `join-rooms` | `{room}` |\n",
    ),
    settings_exist: (
        "Set `server.limits.send_buffer_bytes` or `PLUGBUS_SERVER__PORT`.",
        "Set `server.limits.send_buffer_size` or `PLUGBUS_SERVER__PORT`.",
    ),
    paths_and_links_exist: (
        "See `bench/loadgen.py` and [hooks](hooks.md#call-semantics).",
        "See `bench/loadgen.py` and [hooks](hooks.md#call-semantic).",
    ),
    hooks_exist: ("Implement `plugbus_room_joined`.", "Implement `plugbus_room_entered`."),
    bus_and_surface_names_exist: ("Call `bus.join`.", "Call `bus.enter`."),
    error_codes_exist: ("It answers `403 not_allowed`.", "It answers `404 not_allowed`."),
    yaml_examples_are_valid_config: (
        "```yaml\nrooms:\n  max_name_length: 64\n```\n",
        "```yaml\nrooms:\n  max_name_length: 0\n```\n",
    ),
    cli_lines_are_real: (
        "Run `plugbus serve --port 8000`.",
        "Run `plugbus serve --ports 8000`.",
    ),
    generated_tables_match: (
        "<!-- generated: settings welcome -->\n"
        + doc_tables.settings_table("welcome")
        + "<!-- end generated -->\n",
        "<!-- generated: settings welcome -->\n"
        + doc_tables.settings_table("welcome").replace("`welcome`", "`hello`")
        + "<!-- end generated -->\n",
    ),
}


def test_every_common_check_has_a_proof() -> None:
    assert set(PROOFS) == set(COMMON)


@pytest.mark.parametrize("check", COMMON, ids=lambda c: c.__name__)
def test_a_check_passes_the_good_page_and_refuses_the_bad_one(
    check: Check, world: World, tmp_path: Path
) -> None:
    good, bad = PROOFS[check]
    page = tmp_path / "plugins" / "page.md"
    page.parent.mkdir()
    shutil.copy(ROOT / "docs" / "plugins" / "hooks.md", page.parent)
    page.write_text(good, encoding="utf-8")
    check(Page(page), world, Entry())
    page.write_text(bad, encoding="utf-8")
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        check(Page(page), world, Entry())


def test_elsewhere_refuses_a_name_not_defined_where_the_entry_says(
    world: World, tmp_path: Path
) -> None:
    page = tmp_path / "page.md"
    page.write_text("Set `PLUGBUS_TRACE_HOOKS=1`.", encoding="utf-8")
    where = ("plugbus/core/hooks.py", 'TRACE_ENV = "PLUGBUS_TRACE_HOOKS"')
    elsewhere_is_real(Page(page), world, Entry(elsewhere={"PLUGBUS_TRACE_HOOKS": where}))
    wrong = ("plugbus/core/hooks.py", 'TRACE_ENV = "PLUGBUS_TRACE_HOOK"')
    with pytest.raises(AssertionError):
        elsewhere_is_real(Page(page), world, Entry(elsewhere={"PLUGBUS_TRACE_HOOKS": wrong}))
    with pytest.raises(AssertionError):  # a stale excuse
        elsewhere_is_real(Page(page), world, Entry(elsewhere={"PLUGBUS_OTHER": where}))
