"""What a file in a managed folder is: pure rules from reference/backup-files.md.

`classify(relpath)` names the file's family, chain, level and its place in the chain, or
returns None for files that are never replicated (excluded folders, temporary, hidden and
unknown files). Nothing here touches the disk or the clock.
"""
from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from pathlib import PurePosixPath


class Level(enum.IntEnum):
    """ShadowProtect image levels in chain order; a sidecar carries its image's level."""

    BASE = 0
    INTRA = 1  # an original incremental or differential, not consolidated
    DAILY = 2
    WEEKLY = 3
    MONTHLY = 4
    ROLLING = 5


class Role(enum.IntEnum):
    """What the file is to its image; the value orders files of one image."""

    KEY = -1  # .spk, needed before the chain's first image
    IMAGE = 0  # .spf, .spi, .sp<n>
    MD5 = 1  # the "image complete" sidecar: always after its image
    BITMAP = 2
    MACRIUM = 3


@dataclass(frozen=True)
class BackupFile:
    path: str  # relative to the job's source, '/'-separated
    family: str  # "shadowprotect" | "macrium"
    chain: tuple  # identity of the chain (or Macrium set) inside the job
    key: tuple  # order inside the chain
    role: Role
    level: Level | None = None  # ShadowProtect only
    point: tuple[int, int] = (0, 0)  # (diff, inc); Macrium: (increment, file number)
    stem: str = ""  # casefolded name without extension: ties a sidecar to its image
    group: tuple = ()  # the volume (ShadowProtect) or backup definition folder (Macrium): its chains

    @property
    def name(self) -> str:
        return self.path[self.path.rfind("/") + 1:]


_SP = re.compile(
    r"^(?P<vol>.+)-b(?P<base>\d+)(?:-d(?P<diff>\d+))?(?:-i(?P<inc>\d+))?"
    r"(?P<suffixes>(?:-c[dwmr])*)\.(?P<ext>spf|spi|spk|sp\d+|md5|bitmap)$",
    re.IGNORECASE,
)
_SUFFIX_LEVEL = {"cd": Level.DAILY, "cw": Level.WEEKLY, "cm": Level.MONTHLY, "cr": Level.ROLLING}
_MACRIUM = re.compile(
    r"^(?P<prefix>.+)-(?P<inc>\d{2,})-(?P<num>\d{2,})\.(?P<ext>mrimgx?|mrbakx?)$", re.IGNORECASE
)

# Folders whose content is never replicated, compared casefolded.
EXCLUDED_FOLDERS = frozenset(
    {"incrementals", "$recycle.bin", "system volume information", ".zfs", ".snapshot", "#snapshot"}
)
REPOSITORY_INFO = "Macrium Repository Information.txt"
EXCLUDED_SUFFIXES = (".spwb", ".tmp", ".temp", ".part", ".partial", ".crdownload")


def is_excluded(relpath: str) -> bool:
    """Never replicated: excluded folders, hidden, temporary and write-back files."""
    # Plain string work, not PurePosixPath: this runs for every file of every scan.
    parts = [p for p in relpath.split("/") if p and p != "."]
    for part in parts[:-1]:
        if part.casefold() in EXCLUDED_FOLDERS or part.startswith("."):
            return True
    name = parts[-1] if parts else ""
    low = name.casefold()
    return (
        not name
        or name.startswith((".", "~"))
        or name.endswith("~")
        or low.endswith(EXCLUDED_SUFFIXES)
        or low == "thumbs.db"
        or low == "desktop.ini"
    )


@functools.lru_cache(maxsize=200_000)
def classify(relpath: str, family: str = "auto") -> BackupFile | None:
    """The backup file at `relpath`, or None when it is not one the agent replicates.
    Pure, so cached: the agent classifies the same names on every replan."""
    if is_excluded(relpath):
        return None
    cut = relpath.rfind("/")
    name = relpath[cut + 1:]
    folder = relpath[:cut].casefold() if cut > 0 else "."
    stem = name[: name.rfind(".")] if "." in name[1:] else name
    if family in ("auto", "shadowprotect"):
        m = _SP.match(name)
        if m:
            return _shadowprotect(relpath, folder, m)
    if family in ("auto", "macrium"):
        if name.casefold() == REPOSITORY_INFO.casefold():
            # Site Manager's map of definition GUIDs to names: a restore needs it, and it
            # changes in place like a Macrium file (reference/backup-files.md section 3).
            return BackupFile(path=relpath, family="macrium", chain=("macrium", folder, ""), key=(0, 0),
                              role=Role.MACRIUM, stem=stem.casefold(), group=("macrium", folder))
        m = _MACRIUM.match(name)
        if m:
            inc, num = int(m.group("inc")), int(m.group("num"))
            return BackupFile(
                path=relpath, family="macrium",
                chain=("macrium", folder, m.group("prefix").casefold()),
                key=(inc, num), role=Role.MACRIUM, point=(inc, num),
                stem=stem.casefold(), group=("macrium", folder),
            )
    return None


def _shadowprotect(relpath: str, folder: str, m: re.Match) -> BackupFile:
    ext = m.group("ext").lower()
    diff, inc = int(m.group("diff") or 0), int(m.group("inc") or 0)
    suffixes = [s for s in m.group("suffixes").lower().split("-") if s]
    if suffixes:
        level = _SUFFIX_LEVEL[suffixes[-1]]  # the LAST suffix is the file's level
    elif (diff, inc) == (0, 0):  # old releases wrote -d000-i000 for the base
        level = Level.BASE
    else:
        level = Level.INTRA
    piece = 0
    if ext == "spk":
        role = Role.KEY
    elif ext == "md5":
        role = Role.MD5
    elif ext == "bitmap":
        role = Role.BITMAP
    else:
        role = Role.IMAGE
        if ext not in ("spf", "spi"):
            piece = int(ext[2:])  # a piece of a spanned image: after the first piece
    chain = ("shadowprotect", folder, m.group("vol").casefold(), int(m.group("base")))
    if role is Role.KEY:
        key: tuple = (-1, -1, -1, int(role), 0)
    else:
        key = (diff, inc, int(level), int(role), piece)
    name = relpath[relpath.rfind("/") + 1:]
    return BackupFile(
        path=relpath, family="shadowprotect", chain=chain, key=key, role=role, level=level,
        point=(diff, inc), stem=name[: name.rfind(".")].casefold(), group=chain[:3],
    )


MACRIUM_TRAILER = b"MACRIUM_FILE"


def needs_macrium_trailer(relpath: str) -> bool:
    """Reflect X files (.mrimgx, .mrbakx) end with a trailer once they are finished."""
    return relpath.casefold().endswith(("mrimgx", "mrbakx"))


def sidecar_md5(text: bytes, image_name: str) -> str | None:
    """The MD5 (lower-case hex) a sidecar's first line gives for `image_name`, or None when
    the line is not `<32 hex> *<image name>`."""
    line = text.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    digest, sep, name = line.partition(" *")
    if not sep or len(digest) != 32 or name != image_name:
        return None
    try:
        int(digest, 16)
    except ValueError:
        return None
    return digest.lower()


def md5_sidecar(f: BackupFile) -> str | None:
    """The relative path of a ShadowProtect image's .md5 sidecar."""
    if f.family != "shadowprotect" or f.role is not Role.IMAGE:
        return None
    p = PurePosixPath(f.path)
    return str(p.with_name(p.name[: p.name.rfind(".")] + ".md5"))
