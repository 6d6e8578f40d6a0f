"""Reading a managed folder: the walk every scan makes, and the words for what failed.

The walk never follows a symbolic link, never enters an excluded or hidden folder, nor an
offsite job folder nested in the source (one holding `.offsite/owner`: never copied into
itself). What fails to read is recorded, never raised: a folder that cannot be listed, a
file that cannot be looked at, a name listed that is not there when looked at (a share can
list what it cannot open), a backup file's name that is a symbolic link. The source view
(scan.py) keeps everything under such a path unknown until it reads again.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Container, Iterator

from ..backupfiles import EXCLUDED_FOLDERS, classify

log = logging.getLogger(__name__)

AGENT_DIR, OWNER_FILE = ".offsite", "owner"  # an offsite job folder's mark (targets/base.py)


def walk(top: Path, rel_top: str, family: str, errors: dict[str, str], folders: set[str],
         warned: Container[str]) -> Iterator[tuple[str, os.stat_result]]:
    """Every regular file under `top` (relative path `rel_top`) with its lstat. Fills `errors`
    (relative path -> what failed) and `folders` (the casefolded relative paths listed, "."
    for the top); a folder that fails to read is logged unless it is in `warned` already."""
    try:
        it = list(os.scandir(top))
    except FileNotFoundError:
        return
    except OSError as e:
        errors[rel_top] = describe_error(e)
        if rel_top not in warned:
            log.warning("%s: cannot be read (%s); nothing under it is deleted offsite until it reads again",
                        top, errors[rel_top])
        return
    folders.add(rel_top.casefold() or ".")
    for de in it:
        rel = f"{rel_top}/{de.name}" if rel_top else de.name
        try:
            st = de.stat(follow_symlinks=False)
        except FileNotFoundError:
            # Gone between the listing and the look, as files do while ImageManager cleans
            # up; unless the folder still lists it: a share that lists what it cannot open.
            try:
                still = de.name in os.listdir(top)
            except OSError:
                still = True
            if still:
                errors[rel] = "listed by its folder, but no such file when looked at (ENOENT)"
            continue
        except OSError as e:
            errors[rel] = describe_error(e)
            continue
        if stat.S_ISDIR(st.st_mode):
            if de.name.casefold() in EXCLUDED_FOLDERS or de.name.startswith("."):
                continue
            if os.path.lexists(os.path.join(de.path, AGENT_DIR, OWNER_FILE)):
                continue  # an offsite target folder inside the source: never copied into itself
            yield from walk(Path(de.path), rel, family, errors, folders, warned)
        elif stat.S_ISREG(st.st_mode):
            yield rel, st
        elif classify(rel, family) is not None:
            # A backup file's name that is a symbolic link (or a device): never followed
            # nor sent, and not the file's absence either.
            errors[rel] = "not a regular file (a symbolic link?)"


def listed(root: Path, rel: str) -> bool:
    """Does the listing of `rel`'s folder (under `root`) show its name? (An error counts as yes.)"""
    folder, _, name = rel.rpartition("/")
    try:
        return name in os.listdir(root.joinpath(*folder.split("/")) if folder else root)
    except FileNotFoundError:
        return False
    except OSError:
        return True


def describe_error(e: OSError) -> str:
    """'Input/output error (EIO)': the words and the code an administrator searches for."""
    code = errno.errorcode.get(e.errno or 0)
    return f"{e.strerror or e}" + (f" ({code})" if code else "")
