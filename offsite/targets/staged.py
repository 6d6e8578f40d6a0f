"""What one session of a remote target knows of its staging folder: each staged file's name
and size, by file (the stem of a staged name is the hash of the file's path).

A session lists the staging folder once when it opens, then keeps the listing true for the
files it handles. A file staged by one session is often published by another (the one that
published its chain's previous file), so a session's listing keeps names that are gone; kept
by stem, they cost nothing: an upload looks only at its own file's names, never at every
staged name (that scan, on every upload, made a seeding quadratic).
"""
from __future__ import annotations

from typing import Iterable

from .base import staging_stem

STEM = len(staging_stem(""))  # a staged name starts with its file's stem


class StagedSizes:
    """name -> size, for the names of one staging folder, indexed by stem."""

    def __init__(self, sizes: Iterable[tuple[str, int]] = ()) -> None:
        self._by_stem: dict[str, dict[str, int]] = {}
        self.looked = 0  # names an upload looked at, for tests
        for name, size in sizes:
            self[name] = size

    def __setitem__(self, name: str, size: int) -> None:
        self._by_stem.setdefault(name[:STEM], {})[name] = size

    def get(self, name: str, default: int | None = None) -> int | None:
        return self._by_stem.get(name[:STEM], {}).get(name, default)

    def pop(self, name: str, default: int | None = None) -> int | None:
        same = self._by_stem.get(name[:STEM])
        if same is None:
            return default
        size = same.pop(name, default)
        if not same:
            del self._by_stem[name[:STEM]]
        return size

    def of(self, stem: str) -> list[str]:
        """The names staged for the file whose stem this is."""
        names = list(self._by_stem.get(stem[:STEM], ()))
        self.looked += len(names)
        return names

    def names(self) -> list[str]:
        """Every name (for the tidy, at the start of a round)."""
        return [n for same in self._by_stem.values() for n in same]
