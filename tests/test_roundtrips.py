"""Round trips per small file, counted per target type against the real servers: on a WAN
each one costs tens of milliseconds, so a session asks nothing it already knows.

Counted after the session is open (connect excluded) for the second file of a folder,
which is what a run of many files costs per file. For the remote file systems the count is
of protocol operations (stat, list, mkdir, write a file, set its time, rename, remove; a
write is open + pipelined writes + close); for S3 of API requests.
"""
from __future__ import annotations

import io
import time
from collections import Counter

import pytest
from test_targets import Remote

PRIMITIVES = ("_size", "_is_dir", "_listdir", "_mkdir", "_write", "_rename", "_remove", "_set_mtime",
              "_get_small", "_put_small")
# What one small file may cost, at most: write + stat (the size check) + set mtime + rename;
# FTP keeps no mtime; S3 is one PUT carrying its Content-MD5.
LIMIT = {"sftp": 4, "smb": 4, "ftp": 3, "ftps": 3, "s3": 1}


def counted(target, kind: str) -> Counter:
    calls: Counter = Counter()
    if kind == "s3":
        target.client.meta.events.register("before-call.s3", lambda model, **_: calls.update([model.name]))
        return calls
    for name in PRIMITIVES:
        real = getattr(target, name)

        def wrapper(*a, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*a, **kw)

        setattr(target, name, wrapper)
    return calls


@pytest.mark.parametrize("kind", ["sftp", "smb", "ftp", "ftps", "s3"])
def test_one_small_file_costs_a_few_round_trips(kind, servers, tmp_path):
    target = Remote(kind, servers, tmp_path).target()
    try:
        data = b"x" * 4096
        mtime = time.time_ns()
        for name in ("C_VOL-b001-i001.spi", "C_VOL-b001-i002.spi"):
            if name.endswith("2.spi"):
                calls = counted(target, kind)
            target.upload(name, io.BytesIO(data), len(data), mtime, lambda n: None)
            target.publish(name, len(data), mtime)
        total = sum(calls.values())
        print(f"{kind}: {total} round trips for one small file: {dict(calls)}")
        assert total <= LIMIT[kind], dict(calls)
        assert target.list()["C_VOL-b001-i002.spi"].size == len(data)
    finally:
        target.close()


@pytest.mark.parametrize("kind", ["sftp", "smb", "ftp"])
def test_an_upload_looks_at_its_own_staged_names_whatever_other_sessions_published(kind, servers, tmp_path):
    """A session stages files that another session publishes (the one that published the
    chain's previous file): the first session's listing keeps their names. Its next upload
    looks at its own file's names only, so a seeding of 100,000 files costs the same per
    file at the last as at the first (issue 17: that scan made seeding quadratic)."""
    remote = Remote(kind, servers, tmp_path)
    stager, publisher = remote.target(), remote.target()
    try:
        data, mtime = b"x" * 10, time.time_ns()

        def stage_and_hand_over(names: list[str]) -> int:
            before = stager._staged_sizes.looked
            for name in names:
                stager.upload(name, io.BytesIO(data), len(data), mtime, lambda n: None)
                publisher.publish(name, len(data), mtime)
            return stager._staged_sizes.looked - before

        first = stage_and_hand_over([f"C_VOL-b001-i{i:05d}.spi" for i in range(1, 21)])
        later = stage_and_hand_over([f"C_VOL-b001-i{i:05d}.spi" for i in range(21, 81)])
        assert len(stager._staged_sizes.names()) >= 80  # the names it staged and another published
        assert first == later == 0  # names looked at per upload: none but the file's own
        assert sorted(publisher.list()) == [f"C_VOL-b001-i{i:05d}.spi" for i in range(1, 81)]
    finally:
        stager.close()
        publisher.close()
