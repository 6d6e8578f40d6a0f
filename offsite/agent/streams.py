"""Several streams for one big file (targets/ranged.py): the transfer thread that took the
file reads it from start to end for its MD5 while sessions of the job's pool each write the
next block the target lacks, at its own offset, from their own handle on the source.

How many streams: the job's `streams` (or the agent's), as many as blocks are left to write,
and only as many sessions as `max_connections` has free right now (a file never waits for
a session: it starts with the one it has). The bytes share the job's throttle through the
transfer's `progress`, which also stops every stream when the agent stops or the window
closes. The record of the blocks the target holds is saved every SAVE_EVERY blocks and when
the streams stop for any reason, so an interrupted upload resumes with the blocks it lacks.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from pathlib import Path
from typing import BinaryIO

from ..errors import Interrupted, PermanentError, TransientError
from ..targets import Target
from ..targets.base import Progress
from ..targets.ranged import RANGED_FROM, RangedTarget, blocks

log = logging.getLogger(__name__)

SAVE_EVERY = 4  # blocks written between two records of what the target holds
READ = 1024 * 1024


class _Stopped(Exception):
    """Another stream failed: this one stops where it is."""


def wanted(target: Target, streams: int, size: int) -> bool:
    """Does this file go over several streams? Big enough, several allowed, and a target
    whose sessions can write ranges of one file (FTP asks its server once)."""
    return streams > 1 and size >= RANGED_FROM and target.ranges()


def stage_ranged(target: Target, sessions, streams: int, src: Path, f: BinaryIO, relpath: str,
                 size: int, mtime_ns: int, progress: Progress) -> str:
    """Stage `relpath` (opened as `f`) over `target` and up to `streams - 1` more sessions of
    `sessions` (transfer.Sessions); return the MD5 of the file. Raises what the targets raise
    (the first failure of any stream), what `progress` raises, and OSError reading `src`."""
    assert isinstance(target, RangedTarget)
    done = target.begin_ranges(relpath, size, mtime_ns, f, progress)
    todo = deque(i for i in range(len(blocks(size))) if i not in done)
    extra: list[RangedTarget] = []  # the sessions that joined, each opened by its own thread
    lock = threading.Lock()
    saving = threading.Lock()  # one record written at a time (they share a temporary name)
    abort = threading.Event()
    failed: list[tuple[RangedTarget, BaseException]] = []
    total = len(todo) + len(done)
    unsaved = 0

    def guarded(n: int) -> None:
        if abort.is_set():
            raise _Stopped()
        progress(n)

    guarded.chunk = getattr(progress, "chunk", READ)  # type: ignore[attr-defined]

    def stream(t: RangedTarget) -> None:
        nonlocal unsaved
        try:
            with open(src, "rb") as own:
                while not abort.is_set():
                    with lock:
                        if not todo:
                            return
                        i = todo.popleft()
                    t.write_range(relpath, size, mtime_ns, i, own, guarded)
                    with lock:
                        done.add(i)
                        unsaved += 1
                        due = unsaved >= SAVE_EVERY and len(done) < total
                    if due:
                        with saving:
                            with lock:  # taken now: a later record never names fewer blocks
                                snapshot, unsaved = set(done), 0
                            t.save_ranges(relpath, size, mtime_ns, snapshot)
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the transfer thread, which reports it
            with lock:
                failed.append((t, e))
            abort.set()

    def join_in() -> None:
        """Open one more session and write blocks over it: the file does not wait for its
        handshake (a few round trips on a WAN), the streams already open write meanwhile."""
        try:
            t = sessions.spare()
        except (TransientError, PermanentError) as e:
            log.debug("%s: one stream fewer (%s)", relpath, e)
            return
        if t is None:
            return
        assert isinstance(t, RangedTarget)
        with lock:
            late = abort.is_set() or not todo
            if not late:
                extra.append(t)
        if late:
            sessions.checkin(t)
        else:
            stream(t)

    first = len(todo)
    threads = [threading.Thread(target=stream, args=(target,), name="stream-0", daemon=True)]
    threads += [threading.Thread(target=join_in, name=f"stream-{n}", daemon=True)
                for n in range(1, min(streams, first))]
    for th in threads:
        th.start()
    md5 = hashlib.md5()
    error: BaseException | None = None
    try:
        f.seek(0)
        left = size
        while left > 0 and not abort.is_set():
            data = f.read(min(READ, left))
            if not data:
                raise TransientError(f"the source ended at {size - left} of {size} bytes")
            md5.update(data)
            left -= len(data)
    except BaseException as e:  # noqa: BLE001 - raised below, once every stream stopped
        abort.set()
        error = e
    for th in threads:
        th.join()
    try:
        if error is not None or failed:
            _keep_record(target, extra, failed, relpath, size, mtime_ns, done)
    finally:
        _give_back(sessions, extra, failed)
    if error is not None:
        raise error
    if failed:
        raise failed[0][1]
    target.end_ranges(relpath, size, mtime_ns)
    log.info("%s over %d streams (%d of %d blocks written)", relpath, 1 + len(extra), first, total)
    return md5.hexdigest()


def _keep_record(target: RangedTarget, extra: list[RangedTarget], failed, relpath: str, size: int,
                 mtime_ns: int, done: set[int]) -> None:
    """Save what the target holds over a session that did not break (one stopped by the
    agent stopping or the window closing is whole), if any: best effort, the failure itself
    is what the caller reports."""
    broken = _broken(failed)
    for t in [target, *extra]:
        if id(t) not in broken:
            try:
                t.save_ranges(relpath, size, mtime_ns, done)
            except (TransientError, PermanentError) as e:
                log.debug("%s: the record of its blocks could not be saved (%s)", relpath, e)
            return


def _give_back(sessions, extra: list[RangedTarget], failed) -> None:
    """The extra sessions back to the pool (closed if they broke); the transfer's own
    session stays with the transfer thread."""
    broken = _broken(failed)
    for t in extra:
        if id(t) in broken:
            sessions.drop(t)
        else:
            sessions.checkin(t)


def _broken(failed) -> set[int]:
    """The sessions that failed on their own (not stopped by the agent or a closing window)."""
    return {id(t) for t, e in failed if not isinstance(e, Interrupted)}
