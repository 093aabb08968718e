"""Tables in the docs that are generated from the code, and the command that regenerates them.

A generated table sits between two HTML comments, invisible on the rendered page::

    <!-- generated: settings rooms -->
    | key | default | meaning |
    ...
    <!-- end generated -->

``settings NAME`` is the settings model of the built-in plugin NAME: one row per key (nested
models flattened to ``flood.burst``), the default as it would be written in config.yaml (YAML
flow style) and the field's description as its meaning — so the page shows what the model
declares, and a key added to the model shows up on the page. tests/test_docs.py fails when a
page differs from what this module renders. Regenerate every page with::

    .venv/bin/python tests/doc_tables.py
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from plugbus.core.loader import BUILTINS

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(
    r"^<!-- generated: (?P<kind>[\w-]+) (?P<arg>[\w-]+) -->\n(?P<body>.*?)^<!-- end generated -->$",
    re.M | re.S,
)


def settings_model(plugin: str) -> type[BaseModel]:
    """The settings model of a built-in plugin, by its name in ``plugins.builtins``."""
    module, _, attr = BUILTINS[plugin].partition(":")
    model = getattr(importlib.import_module(module), attr).Settings
    assert isinstance(model, type) and issubclass(model, BaseModel), plugin
    return model


def yaml_value(value: Any) -> str:
    """``value`` as config.yaml would spell it, on one line."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def default_of(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None if field.default is PydanticUndefined else field.default


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(value: Any) -> str:
    return f"`{yaml_value(value)}`".replace("|", "\\|")


def settings_rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """``(key, default, meaning)`` for every key of ``model``, nested models flattened."""
    for name, field in model.model_fields.items():
        key = prefix + name
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            if kind.model_config.get("extra") == "allow":
                yield from _switch_rows(kind, key)
            else:
                yield from settings_rows(kind, key + ".")
            continue
        meaning = _cell(field.description or "")
        bounds = _bounds(field)
        yield key, _code(default_of(field)), f"{meaning} ({bounds})" if bounds else meaning


def _bounds(field: FieldInfo) -> str:
    """The field's declared limits, in words (``≥ 1``, ``non-empty``)."""
    found: dict[str, Any] = {}
    for item in field.metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            if getattr(item, attr, None) is not None:
                found[attr] = getattr(item, attr)
    if "min_length" in found and found["min_length"] == found.get("max_length"):
        words = [f"exactly {found.pop('min_length')} character"]
        found.pop("max_length")
    elif found.get("min_length") == 1:
        words = ["non-empty"]
        found.pop("min_length")
    else:
        words = []
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥"}
    signs["max_length"] = "length ≤"
    words += [f"{signs[attr]} {value}" for attr, value in found.items()]
    return ", ".join(words)


def _switch_rows(model: type[BaseModel], key: str) -> Iterator[tuple[str, str, str]]:
    """A model whose fields are named entries of one switch model (``rules.<name>``), and that
    takes more names: one row per key of the switch, the defaults that differ named."""
    entries = {name: default_of(field) for name, field in model.model_fields.items()}
    switch = {type(value) for value in entries.values()}
    base = min(switch, key=lambda cls: len(cls.__mro__))
    for sub, field in base.model_fields.items():
        usual = default_of(field)
        odd = [name for name, entry in entries.items() if getattr(entry, sub) != usual]
        default = _code(usual) + "".join(
            f"; `{name}`: {_code(getattr(entries[name], sub))}" for name in odd
        )
        yield f"{key}.<name>.{sub}", default, _cell(field.description or "")


def settings_table(plugin: str) -> str:
    """The markdown settings table of a built-in plugin."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{k}` | {d} | {m} |" for k, d, m in settings_rows(settings_model(plugin))]
    return "\n".join(lines) + "\n"


GENERATORS: dict[str, Callable[[str], str]] = {"settings": settings_table}


def generated_blocks(text: str) -> Iterator[tuple[str, str, str, str]]:
    """``(kind, argument, text on the page, text generated)`` for each generated block."""
    for m in BLOCK.finditer(text):
        yield m["kind"], m["arg"], m["body"], GENERATORS[m["kind"]](m["arg"])


def regenerate(text: str) -> str:
    return BLOCK.sub(
        lambda m: (
            f"<!-- generated: {m['kind']} {m['arg']} -->\n"
            f"{GENERATORS[m['kind']](m['arg'])}<!-- end generated -->"
        ),
        text,
    )


def pages() -> list[Path]:
    return sorted(
        [ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").rglob("*.md")]
    )


def main() -> int:
    for page in pages():
        text = page.read_text(encoding="utf-8")
        new = regenerate(text)
        if new != text:
            page.write_text(new, encoding="utf-8")
            print(f"regenerated {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
