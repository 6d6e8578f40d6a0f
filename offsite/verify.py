"""Verifying the offsite copy: the MD5 of each file as the target stores it, compared with
the MD5 recorded when it was sent and, for ShadowProtect images, with their .md5 sidecar on
the target. Where the server computes an MD5 itself (FTP HASH/XMD5, SFTP check-file) it is
asked, and nothing crosses the wire; otherwise the file is read back. Used by `offsite
verify` and by the agent's `verify_every`; never changes the target."""
from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
from typing import Callable

from .backupfiles import classify, md5_sidecar, sidecar_md5
from .state import StateDir
from .targets import Target

MISSING = "missing on the target"
NOT_AS_SENT = "does not match the MD5 recorded when it was sent"
NOT_AS_SIDECAR = "does not match its .md5 sidecar on the target"


def verify(target: Target, family: str, recorded: dict[str, tuple[int, str, float]], sample: float,
           since: float | None, now: dt.datetime, consume: Callable[[int], None] = lambda n: None,
           progress: Callable[[str, int, int], None] | None = None,
           rng: random.Random | None = None) -> dict:
    """Check `sample` percent of the target's files (those published within `since` seconds
    when given); the result as `last_verify` shows it."""
    started = now
    listed = target.list()
    cutoff = now.timestamp() - since if since is not None else None
    paths = sorted(p for p in listed if cutoff is None or (p in recorded and recorded[p][2] >= cutoff))
    if sample < 100 and paths:
        paths = sorted((rng or random).sample(paths, max(1, math.ceil(len(paths) * sample / 100))))
    total = sum(listed[p].size for p in paths)
    bad: list[dict] = []
    unrecorded = read = by_server = done = 0
    for path in paths:
        digest = target.remote_md5(path)
        if digest is not None:
            by_server += 1
        else:
            md5 = hashlib.md5()

            def sink(chunk: bytes, md5=md5) -> None:
                nonlocal read
                md5.update(chunk)
                read += len(chunk)
                consume(len(chunk))

            if not target.read_back(path, sink):
                bad.append({"path": path, "problem": MISSING})
                continue
            digest = md5.hexdigest()
        done += listed[path].size
        if progress:
            progress(path, done, total)
        problem = None
        if path in recorded:
            if recorded[path][1] != digest:
                problem = NOT_AS_SENT
        else:
            unrecorded += 1
        f = classify(path, family)
        sidecar = md5_sidecar(f) if f is not None else None
        if problem is None and sidecar is not None and sidecar in listed:
            buf = bytearray()
            if target.read_back(sidecar, buf.extend):
                expected = sidecar_md5(bytes(buf[:4096]), path.rsplit("/", 1)[-1])
                if expected is not None and expected != digest:
                    problem = NOT_AS_SIDECAR
        if problem:
            bad.append({"path": path, "problem": problem})
    return {"started": started.isoformat(timespec="seconds"),
            "finished": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "files_checked": len(paths), "bytes_read": read, "hashed_by_server": by_server, "unrecorded": unrecorded,
            "mismatches": bad}


def record(state: StateDir, job: str, result: dict) -> dict:
    """Keep a verify's result as the job's `last_verify` (verify.json), whoever ran it: the
    agent's `verify_every` or `offsite verify`. Returns it as kept, with the job's name."""
    kept = {"job": job, **result}
    state.update_json("verify.json", lambda d: d.__setitem__(job, kept))
    return kept


def last(state: StateDir, job: str) -> dict | None:
    """The job's `last_verify`, as `record` kept it."""
    kept = state.read_json("verify.json", {})
    found = kept.get(job) if isinstance(kept, dict) else None
    return found if isinstance(found, dict) else None
