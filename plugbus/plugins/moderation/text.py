"""Text helpers for matching and masking: folding case, accents and substitutions while
remembering where each folded character came from, and masking spans of the original."""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable


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
