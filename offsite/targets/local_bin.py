"""The `local` target's bin (SPEC section 8): `<folder>/.offsite/deleted/<day>/<path>`.

A file goes into the bin, and back, by a rename on the same disk: one step, never a copy. A
restore never replaces a file that appeared meanwhile: it links the file under its final
name (which fails when the name is taken) before removing it from the bin, and renames only
where the disk has no hard links (FAT, exFAT), where Windows' rename does not replace either.
"""
from __future__ import annotations

import abc
import builtins
import errno
import os
import shutil
from pathlib import Path

from ..errors import PermanentError
from .base import Binned, Target, binned, binned_name, check_day, check_relpath


class LocalBin(Target):
    """The bin's half of the Target contract, for LocalTarget: raises what `_error` makes of
    an OSError (PermanentError, TransientError, TargetFull), and PermanentError for an
    unsafe path or day."""

    root: Path  # the job folder
    bin: Path  # <job folder>/.offsite/deleted

    @abc.abstractmethod
    def _error(self, e: OSError, what: str) -> Exception:
        """An OSError as offsite's error (the target's one translation)."""

    @abc.abstractmethod
    def _prune(self, folder: Path) -> None:
        """Remove the folders a deletion emptied, up to the job folder."""

    def _binned(self, relpath: str, day: str, version: int = 1) -> Path:
        return self.bin.joinpath(check_day(day), *binned_name(check_relpath(relpath), version).split("/"))

    def to_bin(self, relpath: str, day: str) -> None:
        final = self.root.joinpath(*check_relpath(relpath).split("/"))
        try:
            if not os.path.lexists(final):
                return  # gone already
            version = 1
            while os.path.lexists(dest := self._binned(relpath, day, version)):
                version += 1  # the day's earlier copies stay; this one goes beside them
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(final, dest)
            except FileNotFoundError:
                return
            self._prune(final.parent)
        except OSError as e:
            raise self._error(e, relpath) from None

    def bin_list(self) -> builtins.list[Binned]:
        out: builtins.list[Binned] = []
        if not self.bin.is_dir():
            return out
        try:
            for day in sorted(os.listdir(self.bin)):
                top = self.bin / day
                for dirpath, _dirs, files in os.walk(top, onerror=_raise):
                    rel = Path(dirpath).relative_to(top).as_posix()
                    for name in files:
                        path = f"{rel}/{name}" if rel != "." else name
                        out.append(binned(day, path, os.lstat(os.path.join(dirpath, name)).st_size))
        except OSError as e:
            raise self._error(e, "the bin") from None
        return out

    def from_bin(self, relpath: str, day: str, version: int = 1) -> None:
        src = self._binned(relpath, day, version)
        final = self.root.joinpath(*relpath.split("/"))
        try:
            if not src.is_file():
                raise PermanentError(f"the bin holds no {relpath} of {day}")
            if os.path.lexists(final):
                raise PermanentError(f"{relpath} is on the target already: it is not overwritten")
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, final)  # fails, rather than replace, when a file appeared meanwhile
                src.unlink()
            except OSError as e:
                if e.errno == errno.EEXIST:
                    raise PermanentError(f"{relpath} is on the target already: it is not overwritten") from None
                os.rename(src, final)  # no hard links (FAT, exFAT); Windows' rename never replaces
        except OSError as e:
            raise self._error(e, relpath) from None

    def purge_bin(self, day: str) -> None:
        try:
            shutil.rmtree(self.bin / check_day(day))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._error(e, f"the bin's {day}") from None


def _raise(e: OSError) -> None:
    raise e
