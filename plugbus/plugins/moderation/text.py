"""Text helpers for matching and masking: folding case, accents and substitutions while
remembering where each folded character came from, and masking spans of the original."""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel


class Normaliser:
    """Folds text for matching (case, accents, substitutions) and remembers, for every folded
    character, the index of the original character it came from, so that a match in the
    folded text maps back to a span of the original."""

    def __init__(self, substitutions: dict[str, str]) -> None:
        self._subs = {k: v.casefold() for k, v in substitutions.items()}
        self._fold_char = functools.lru_cache(maxsize=4096)(self._fold_one)

    def _fold_one(self, ch: str) -> str:
        if ch in self._subs:
            return self._subs[ch]
        decomposed = unicodedata.normalize("NFKD", ch)
        folded = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
        return "".join(self._subs.get(c, c) for c in folded)

    def fold(self, text: str) -> str:
        """``text`` folded (for the configured words)."""
        return "".join(self._fold_char(ch) for ch in text)

    def fold_mapped(self, text: str) -> tuple[str, list[int]]:
        """``text`` folded, and the original index of every folded character."""
        out: list[str] = []
        index: list[int] = []
        for i, ch in enumerate(text):
            folded = self._fold_char(ch)
            out.append(folded)
            index.extend([i] * len(folded))
        return "".join(out), index


def mask_spans(text: str, spans: Iterable[tuple[int, int]], char: str) -> str:
    """``text`` with every character inside ``spans`` replaced by ``char``."""
    chars = list(text)
    for start, end in spans:
        for i in range(max(start, 0), min(end, len(chars))):
            chars[i] = char
    return "".join(chars)


def strings_in(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """``(path, text)`` for every string inside ``value``: itself, the items of lists and
    tuples (``options.1``), the values of dicts (``labels.en``) and the fields of nested
    models (``answer.text``), depth first in order."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from strings_in(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from strings_in(item, f"{path}.{index}")


def replace_string(value: Any, path: str, at: str, new: str) -> Any:
    """``value`` (found at ``path``) with the string at path ``at`` replaced by ``new``; the
    containers on the way are copied, never changed in place."""
    if path == at:
        return new
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            inner = f"{path}.{name}"
            if at == inner or at.startswith(inner + "."):
                item = replace_string(getattr(value, name), inner, at, new)
                return value.model_copy(update={name: item})
    elif isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}"
            if at == inner or at.startswith(inner + "."):
                return {**value, key: replace_string(item, inner, at, new)}
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            inner = f"{path}.{index}"
            if at == inner or at.startswith(inner + "."):
                items = list(value)
                items[index] = replace_string(item, inner, at, new)
                return type(value)(items) if isinstance(value, tuple) else items
    return value
