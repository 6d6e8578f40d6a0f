"""A small sample ImageManager managed folder for the README's first command.

`python -m offsite.sample FOLDER` (packaging/install.sh runs it on example/source) writes two
synthetic ShadowProtect chains, `C_VOL` and `D_VOL`, the way ShadowProtect and ImageManager
lay them out in a managed folder (reference/backup-files.md sections 1 and 4): per volume a
base image, yesterday's intra-daily incrementals, last night's daily consolidation and the
weekly one made from it, and an intra-daily of an hour ago; each image a few KB, followed by
its real `.md5` sidecar. Modification times are in the past and in chain order, so the agent
sends everything at once (a complete `.md5` makes its image ready); all are less than a day
old, so no `max_lag` alert fires before they are sent.

The images are not real ShadowProtect images (they say so in their first bytes): their
content depends on their names only, so it is the same on every run. A folder that already
holds anything is left alone.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HEADER = b"offsite sample: not a real ShadowProtect image\r\n"
KB = 1024

# Per volume: (name after "<volume>-b001", extension, size, hours before now). Chain order,
# as ShadowProtect and ImageManager write them.
CHAIN = (
    ("", "spf", 16 * KB, 20.0),               # the base (full) image
    ("-i001", "spi", 2 * KB, 19.0),           # intra-daily incrementals
    ("-i002", "spi", 2 * KB, 18.0),
    ("-i002-cd", "spi", 4 * KB, 14.0),        # the nightly daily: absorbs i001 and i002
    ("-i002-cd-cw", "spi", 4 * KB, 13.9),     # the weekly made from that daily
    ("-i003", "spi", 2 * KB, 1.0),            # today's intra-daily
)
VOLUMES = (("C_VOL", 0.0), ("D_VOL", 0.05))  # D_VOL is backed up three minutes after C_VOL
SIDECAR_AFTER = 2.0  # seconds between an image's last write and its .md5


@dataclass(frozen=True)
class SampleFile:
    name: str
    data: bytes
    mtime: float  # epoch seconds


def content(name: str, size: int) -> bytes:
    """`size` bytes that depend on `name` only: the header, then a SHA-256 stream."""
    out = bytearray(HEADER)
    n = 0
    while len(out) < size:
        out += hashlib.sha256(f"{name}:{n}".encode()).digest()
        n += 1
    return bytes(out[:size])


def sidecar(image: str, data: bytes, written: float, volume: str) -> bytes:
    """A `.md5` sidecar as ShadowProtect writes it: `<md5> *<image>`, then `;<guid>;<date>`."""
    guid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"offsite-sample/{volume}")).upper()
    day = dt.datetime.fromtimestamp(written).strftime("%Y/%m/%d")
    return f"{hashlib.md5(data).hexdigest()} *{image}\r\n;{{{guid}}};{day}\r\n".encode()


def plan(now: float) -> list[SampleFile]:
    """The sample's files in the order they are written, images each before their .md5."""
    now = now - now % 60
    out: list[SampleFile] = []
    for volume, later in VOLUMES:
        for tail, ext, size, hours in CHAIN:
            name = f"{volume}-b001{tail}"
            image = f"{name}.{ext}"
            data = content(image, size)
            written = now - (hours - later) * 3600
            out.append(SampleFile(image, data, written))
            out.append(SampleFile(f"{name}.md5", sidecar(image, data, written, volume), written + SIDECAR_AFTER))
    return out


def write(folder: Path, now: float | None = None) -> list[Path] | None:
    """Write the sample into `folder` (created if absent). None, and nothing written, when the
    folder already holds anything."""
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        return None
    written: list[Path] = []
    for f in plan(time.time() if now is None else now):
        path = folder / f.name
        with open(path, "xb") as out:
            out.write(f.data)
        os.utime(path, (f.mtime, f.mtime))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m offsite.sample FOLDER   (writes a sample managed folder into FOLDER)",
              file=sys.stderr)
        return 2
    folder = Path(args[0])
    try:
        files = write(folder)
    except OSError as e:
        print(f"offsite sample: {e}", file=sys.stderr)
        return 1
    if files is None:
        print(f"offsite sample: {folder} already holds files: left as it is", file=sys.stderr)
        return 0
    size = sum(p.stat().st_size for p in files)
    print(f"offsite sample: wrote {len(files)} files ({size // KB} KB) of two ShadowProtect chains "
          f"into {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
