"""S3 requests and round trips, counted (not timed) over a whole sync of small files: on a
WAN each round trip costs tens of milliseconds, and on a short run the session set-up is
most of them (issue 17).

A sync of N small files costs one PUT per file, in one round trip (no `Expect:
100-continue`), plus a fixed set-up however many sessions the transfers open: the bucket
is asked about once per process, and one listing of the job folder answers for the staging
records, the tidy and the bin. A later round of the same process does not ask again what
the first learnt. Counted with botocore's own events on the client the target makes.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import threading
import time
from collections import Counter
from pathlib import Path

import botocore.session
import pytest
import urllib3.connection
from test_targets import Remote, send, stage_half

from offsite import config
from offsite.agent.job import JobRunner, Request
from offsite.errors import TransientError
from offsite.queue import WorkQueue
from offsite.state import StateDir
from offsite.targets import s3_bucket

UNSIGNED = b"UNSIGNED-PAYLOAD"
# What a sync asks besides its files' PUTs, at most: the bucket (once per process), the
# owner ID (read; written when the folder is new), one listing of the job folder, and the
# multipart uploads left open (the tidy's look for strays).
FIRST_SETUP = {"HeadBucket": 1, "GetObject": 1, "PutObject": 1, "ListObjectsV2": 1, "ListMultipartUploads": 1}
LATER_SETUP = {"GetObject": 1, "ListObjectsV2": 1, "ListMultipartUploads": 1}  # the owner, once per round


class Requests:
    """Every request the offsite process sends to S3 from now on: operation, key, headers;
    and the TCP connections it opens."""

    def __init__(self, monkeypatch) -> None:
        self.sent: list[tuple[str, str, dict]] = []
        self.connections = 0
        self._lock = threading.Lock()
        # A fresh process as far as S3 goes: no client, nothing learnt yet.
        monkeypatch.setattr(s3_bucket, "_CLIENTS", {})
        monkeypatch.setattr(s3_bucket, "_CHECKED", set(), raising=False)
        monkeypatch.setattr(s3_bucket, "_FOLDERS", {}, raising=False)
        real_client, real_connect = botocore.session.Session.create_client, urllib3.connection.HTTPConnection.connect

        def client(*a, **kw):
            c = real_client(*a, **kw)
            c.meta.events.register("before-send.s3", self._record)
            return c

        def connect(conn, *a, **kw):
            with self._lock:
                self.connections += 1
            return real_connect(conn, *a, **kw)

        monkeypatch.setattr(botocore.session.Session, "create_client", client)
        monkeypatch.setattr(urllib3.connection.HTTPConnection, "connect", connect)

    def _record(self, request, event_name: str, **_) -> None:
        headers = {k.lower(): (v.encode() if isinstance(v, str) else v) for k, v in request.headers.items()}
        with self._lock:
            self.sent.append((event_name.rsplit(".", 1)[-1], request.url.split("?")[0], headers))

    def take(self) -> list[tuple[str, str, dict]]:
        with self._lock:
            out, self.sent = self.sent, []
            self.connections = 0
        return out


def round_trips(sent) -> int:
    """A request is a round trip; one with `Expect: 100-continue` is two (the client waits
    for the server's 100 before it sends the body)."""
    return sum(2 if h.get("expect") == b"100-continue" else 1 for _, _, h in sent)


def files(folder: Path, names: list[str]) -> dict[str, bytes]:
    out = {}
    for i, name in enumerate(names):
        out[name] = os.urandom(20_000 + 997 * i)
        (folder / name).write_bytes(out[name])
        os.utime(folder / name, (time.time() - 60, time.time() - 60))
    return out


def sync(runner: JobRunner) -> dict:
    reply: dict = {}
    runner.request(Request("sync", reply=reply.update))
    runner.step()
    return reply


def file_puts(sent, data: dict[str, bytes]) -> dict[str, list[dict]]:
    """The PUTs of each backup file, by name."""
    out: dict[str, list[dict]] = {}
    for op, url, headers in sent:
        name = url.rsplit("/", 1)[-1]
        if op == "PutObject" and name in data and "/.offsite/" not in url:
            out.setdefault(name, []).append(headers)
    return out


def test_a_sync_of_small_files_costs_one_put_each_after_a_fixed_setup(site, servers, monkeypatch):
    # SeaweedFS: moto's server closes each connection after one request.
    site.config(target=servers.get("s3-seaweedfs").new_location(), job='mode = "all"\ninclude_intra_daily = true')
    count = Requests(monkeypatch)
    vols = ("C_VOL", "D_VOL", "E_VOL", "F_VOL")
    first = files(site.source, [f"{v}-b001.spf" for v in vols] + [f"{v}-b001-i00{k}.spi" for v in vols for k in (1, 2)])
    cfg = config.load(site.cfg)
    state = StateDir(cfg.agent.state_dir)
    state.ensure()
    queue = WorkQueue(state.queue_dir)
    runner = JobRunner(cfg.jobs[0], cfg.agent, queue, state, threading.BoundedSemaphore(cfg.agent.max_connections))
    try:
        assert sync(runner)["result"]["files_sent"] == len(first)
        sent, connections = count.sent, count.connections
        count.take()
        puts = file_puts(sent, first)
        ops = Counter(op for op, _, _ in sent)
        report = f"{len(sent)} requests, {round_trips(sent)} round trips, {connections} connections, " \
                 f"{runner.sessions.opened} sessions: {dict(ops)}"
        print(report)
        assert runner.sessions.opened > 1, "one session only: nothing to learn from this count"
        assert {n: len(p) for n, p in puts.items()} == {n: 1 for n in first}, report  # one PUT each
        setup = ops - Counter(PutObject=len(first))
        assert not setup - Counter(FIRST_SETUP), report  # whatever the number of sessions
        assert round_trips(sent) == len(sent), "a request waited for 100-continue: " + report
        assert connections <= runner.transfers + 1, report  # one pool, reused from file to file
        for name, (headers,) in puts.items():
            assert headers["content-md5"] == base64.b64encode(hashlib.md5(first[name]).digest())
            assert headers["x-amz-content-sha256"] == UNSIGNED, "the body was hashed again to sign it"

        # The agent's next round, in the same process: what the first learnt is not asked again.
        later = files(site.source, [f"{v}-b001-i003.spi" for v in vols])
        assert sync(runner)["result"]["files_sent"] == len(later)
        sent = count.sent
        ops = Counter(op for op, _, _ in sent)
        report = f"{len(sent)} requests: {dict(ops)}"
        print("later round:", report)
        assert {n: len(p) for n, p in file_puts(sent, later).items()} == {n: 1 for n in later}, report
        assert not ops - Counter(PutObject=len(later)) - Counter(LATER_SETUP), report
    finally:
        runner.close()
        queue.close()


def test_a_listing_stands_in_for_the_bin_and_the_tidy_only_while_nothing_changed_there(servers, tmp_path,
                                                                                     monkeypatch):
    """list() sees the agent folder too; the tidy and the bin use what it saw, but never once
    this process changed the staging records or the bin since (another session included)."""
    remote = Remote("s3", servers, tmp_path)
    count = Requests(monkeypatch)
    t = remote.target()
    p = tmp_path / "a.spf"
    p.write_bytes(b"a" * 1000)
    send(t, "a.spf", p)
    day = dt.date.today().isoformat()

    t.list()
    count.take()
    assert t.bin_list() == []
    assert count.take() == [], "the bin was listed again although the listing just made shows it"
    t.to_bin("a.spf", day)
    count.take()
    assert [b.path for b in t.bin_list()] == ["a.spf"]  # changed since the listing: asked again
    assert [op for op, _, _ in count.take()] == ["ListObjectsV2"]

    # A record written by another session after the listing: the tidy must see it, or it
    # would take the upload it names for a stray and abort it.
    t.list()
    stage_half(remote, tmp_path)
    staged = remote.server.staged_bytes(remote.location, "job")
    assert staged > 0
    t.tidy({"a/b.spf"})
    assert remote.server.staged_bytes(remote.location, "job") == staged
    t.close()


@pytest.mark.parametrize("kind", ["s3", "s3-seaweedfs"])
def test_a_small_file_is_hashed_once_and_only_bodies_proven_by_their_md5_go_unsigned(kind, servers, tmp_path,
                                                                                     monkeypatch):
    """The PUT of a small file carries the MD5 publish() is given (of the bytes read from the
    source: the target hashes nothing again); a part does too; the completion of a multipart
    upload, which has no Content-MD5, is signed with its body's SHA-256 as before."""
    remote = Remote(kind, servers, tmp_path)
    count = Requests(monkeypatch)
    hashed = []
    real_md5 = hashlib.md5

    class CountingMd5:
        @staticmethod
        def md5(data=b"", **kw):
            hashed.append(len(data))
            return real_md5(data, **kw)

    monkeypatch.setattr(s3_bucket, "hashlib", CountingMd5)
    t = remote.target()
    small = tmp_path / "C_VOL-b001.spf"
    small.write_bytes(os.urandom(300_000))
    t.list()  # the staging records, as a sync's reconciliation lists them first
    count.take()
    send(t, small.name, small)
    assert sum(hashed) == 0, "the target hashed the file's bytes again"
    ((op, _, headers),) = count.take()
    assert op == "PutObject" and headers["x-amz-content-sha256"] == UNSIGNED and "expect" not in headers

    big = tmp_path / "D_VOL-b001.spf"
    big.write_bytes(os.urandom(t.resume_min_size))  # two parts
    send(t, big.name, big)
    by_op = {op: headers for op, _, headers in count.take()}
    assert by_op["UploadPart"]["x-amz-content-sha256"] == UNSIGNED and "content-md5" in by_op["UploadPart"]
    assert len(by_op["CompleteMultipartUpload"]["x-amz-content-sha256"]) == 64  # a SHA-256: signed
    assert remote.server_files()[big.name] == big.read_bytes()
    t.close()


def test_a_small_file_whose_bytes_do_not_match_the_md5_given_is_refused_and_sent_again(servers, tmp_path):
    """SeaweedFS checks the Content-MD5 (as AWS does; moto does not): bytes that are not
    those whose MD5 publish() was given are never published, and the next attempt sends them
    again (TransientError)."""
    remote = Remote("s3-seaweedfs", servers, tmp_path)
    t = remote.target()
    p = tmp_path / "C_VOL-b001.spf"
    p.write_bytes(os.urandom(5000))
    with open(p, "rb") as f:
        t.upload(p.name, f, 5000, 1, lambda n: None)
    with pytest.raises(TransientError):
        t.publish(p.name, 5000, 1, hashlib.md5(b"other bytes").hexdigest())
    assert t.list() == {}
    t.close()
