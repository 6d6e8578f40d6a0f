"""Where each job writes, and the refusal of jobs that would share or nest target folders.

`target_folder` normalises a job's target folder so that two jobs writing to the same place
compare equal, `nested` says how two of them meet, and `clash` finds the first pair of jobs
(or a job and a source) that must not meet: the parser (load.py) refuses such a config.
"""
from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from .model import Job

Where = tuple[tuple, tuple[str, ...]]  # (the namespace a folder lives in, its path as parts)


def target_folder(job: Job) -> Where:
    """Where a job's target folder is: (the namespace it lives in, its path as parts),
    normalised so that two jobs writing to the same place compare equal: the same drive or
    server, and the path with `.`, `..` and doubled separators resolved, casefolded where
    the target compares names without case (SMB; a local drive on Windows)."""
    o, kind = job.location.options, job.location.type

    def parts(path: str, fold: bool) -> tuple[str, ...]:
        norm = posixpath.normpath("/" + path.replace("\\", "/")).strip("/")
        return tuple(p.casefold() if fold else p for p in norm.split("/") if p)

    folder = job.folder
    if kind == "local":
        return ("local",), local_parts(os.path.join(str(o["path"]), *folder.split("/")))
    if kind == "smb":
        unc = [p for p in re.split(r"[\\/]", o["path"]) if p]
        return ("smb", _server(unc[0]), o["port"]), parts("/".join(unc[1:] + [folder]), True)
    if kind in ("sftp", "ftp", "ftps"):
        family = "sftp" if kind == "sftp" else "ftp"  # FTP and FTPS on one port are one server
        return (family, _server(str(o["host"])), o["port"]), parts(f"{o['path']}/{folder}", False)
    # S3: bucket names are global on AWS (whatever the region or endpoint written); elsewhere
    # the endpoint's host and port, with the default port and loopback names made one.
    endpoint = o.get("endpoint") or ""
    url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if not endpoint or (url.hostname or "").casefold().endswith("amazonaws.com"):
        store = "aws"
    else:
        store = f"{_server(url.hostname or '')}:{url.port or (80 if url.scheme == 'http' else 443)}"
    return ("s3", store, o["bucket"]), parts(f"{o.get('prefix') or ''}/{folder}", False)


def _server(name: str) -> str:
    """A host name as one server is known by: casefolded, the loopback names made one."""
    name = name.strip("[]").rstrip(".").casefold()  # "host." is the same host
    return "127.0.0.1" if name in ("localhost", "::1", "127.0.0.1") else name


def local_parts(path: str) -> tuple[str, ...]:
    norm = Path(os.path.realpath(path)).as_posix()
    return tuple(p.casefold() if os.name == "nt" else p for p in norm.split("/") if p)


def nested(a: Where, b: Where) -> str | None:
    """How target folder `a` meets `b`: "is the same as", "lies inside", "holds", or None."""
    if a[0] != b[0]:
        return None
    if a[1] == b[1]:
        return "is the same as"
    if a[1][: len(b[1])] == b[1]:
        return "lies inside"
    if b[1][: len(a[1])] == a[1]:
        return "holds"
    return None


def clash(jobs: Sequence[Job]) -> tuple[str, str] | None:
    """The first place where jobs share or nest target folders, or a target folder meets a
    source: (the key to blame, what is wrong), or None when every job writes apart."""
    for i, job in enumerate(jobs):
        for other in jobs[:i]:
            how = nested(target_folder(job), target_folder(other))
            if how:
                return (f"jobs.{job.name}.folder",
                        f"its target folder {job.location.describe()} folder {job.folder} {how} the target folder "
                        f"of job {other.name!r}; jobs never share or nest target folders (give each its own folder)")
        for other in jobs:  # a local target in a source would be copied into itself, and back
            source = (("local",), local_parts(str(other.source)))
            how = nested(target_folder(job), source)
            if how and how != "holds":
                return (f"jobs.{job.name}.folder", f"its target folder {how} the source of job "
                        f"{other.name!r}: it would be copied into itself (give it a folder elsewhere)")
            if how:
                return (f"jobs.{other.name}.source", f"{other.source} lies inside the target folder of "
                        f"job {job.name!r}: a source must not be where offsite writes")
    return None
