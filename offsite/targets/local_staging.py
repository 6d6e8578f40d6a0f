"""The `local` target's staging folder, as this process's sessions share it.

`StagedNames`: the staging folder's names by file (the stem of a staged name is the hash of
the file's path), so that an upload finds its file's other versions without scanning every
staged name, whatever the folder holds.
"""
from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from typing import Iterable

from .base import staging_stem

STEM = len(staging_stem(""))  # a staged name starts with its file's stem


class StagedNames:
    """The names in one staging folder, by stem (the first STEM characters: the hash of the
    file's path), shared by this process's sessions on the folder. A file's other versions
    are found among its own names, never by scanning every staged name (that scan, per
    upload, made a seeding quadratic); and a file one session staged and another published
    leaves no name behind in the first. A name some other way removed is only unlinked in
    vain (missing_ok)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_stem: dict[str, set[str]] = {}

    def add(self, names: Iterable[str]) -> None:
        with self._lock:
            for n in names:
                self._by_stem.setdefault(n[:STEM], set()).add(n)

    def drop(self, names: Iterable[str]) -> None:
        with self._lock:
            for n in names:
                same = self._by_stem.get(n[:STEM])
                if same is not None:
                    same.discard(n)
                    if not same:
                        del self._by_stem[n[:STEM]]

    def of(self, stem: str) -> list[str]:
        with self._lock:
            return list(self._by_stem.get(stem, ()))


_FOLDERS: weakref.WeakValueDictionary[str, StagedNames] = weakref.WeakValueDictionary()
_FOLDERS_LOCK = threading.Lock()


def staged_names(staging: Path) -> StagedNames:
    """The names of a staging folder, one object while any session of this process uses it
    (then forgotten: the next session lists the folder afresh)."""
    key = os.path.normcase(os.path.abspath(staging))
    with _FOLDERS_LOCK:
        names = _FOLDERS.get(key)
        if names is None:
            names = _FOLDERS[key] = StagedNames()
        return names
