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
