"""Several streams for one big file (offsite/agent/streams.py, offsite/targets/ranged.py), as
the real agent does it against real servers: ranges written over several sessions publish
exactly the source's bytes; a SIGKILL with several streams in flight resumes with the blocks
the target's record names, never sending them again; every stream's bytes pass through the
job's one throttle; chain order holds when a later file's streams finish first. Counted in
bytes, blocks and sessions, never in seconds."""
from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest
from conftest import finished_file, opened_target, wait_until

from offsite.targets.ranged import BLOCK, HEAD, RANGED_FROM, blocks

MiB = 1024 * 1024
IMAGE, SIDECAR = "C_VOL-b001.spf", "C_VOL-b001.md5"


def a_pair(site, size: int, name: str = IMAGE) -> tuple[bytes, bytes]:
    image = finished_file(site.source / name, size).read_bytes()
    md5 = hashlib.md5(image).hexdigest().encode()
    sidecar = name.rsplit(".", 1)[0] + ".md5"
    finished_file(site.source / sidecar, data=md5 + f" *{name}\r\n".encode())
    return image, md5 + f" *{name}\r\n".encode()


def published(server, loc) -> dict[str, bytes]:
    return {p: b for p, b in server.files(loc, "job1").items() if not p.startswith(".offsite/")}


def record(server, loc) -> set[int]:
    """The blocks the target's record says it holds, for the one file staged over ranges."""
    files = server.files(loc, "job1")
    names = [p for p in files if p.endswith(".ranges.json")]
    if not names:
        return set()
    r = json.loads(files[names[0]])
    return {i for a, b in r["done"] for i in range(a, b + 1)}


def test_the_layout_of_ranges():
    size = RANGED_FROM + 12345
    got = blocks(size)
    assert got[0] == (0, HEAD) and got[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(got, got[1:]))  # no gap, no overlap
    assert all(e - s == BLOCK for s, e in got[1:-1])


# Whether a server takes ranges (targets/ranged.py's probe): OpenSSH's sftp-server, ProFTPD's
# mod_sftp and Samba do; pyftpdlib and ProFTPD (AllowStoreRestart on) refuse a REST past the
# end of the file, so their files go over one stream (whose data connection alone fills a link).
RANGES = {"sftp": True, "sftp-proftpd": True, "smb": True, "ftp": False, "ftp-proftpd": False}


@pytest.mark.parametrize("kind", sorted(RANGES))
def test_ranges_over_several_sessions_publish_exactly_the_source(kind, servers, site):
    server = servers.get(kind)
    loc = server.new_location()
    size = RANGED_FROM + 3 * BLOCK + 777  # the last block short
    site.config(target=loc, agent="streams = 4\nlog_level = \"debug\"", job='mode = "all"')
    image, sidecar = a_pair(site, size)
    r = site.offsite("sync", "job1", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    files = published(server, loc)
    assert files[IMAGE] == image and files[SIDECAR] == sidecar
    log = r.stdout + r.stderr
    assert (f"{IMAGE} over 4 streams" in log) is RANGES[kind], log[-3000:]
    last = site.job_status()["last_sync"]
    # Each byte went over the wire once: no range was written twice, none missed.
    assert last["bytes_on_wire"] == last["bytes_sent"] == size + len(sidecar), last
    staged = [p for p in server.files(loc, "job1") if p.startswith(".offsite/staging/")]
    assert staged == [], staged  # nothing left behind: no record, no probe


def test_the_probe_finds_a_server_that_cuts_the_file_at_its_offset_or_refuses_past_its_end(servers, tmp_path):
    """A server that truncates where a range starts, or refuses a range past the end of the
    file, is found by the probe, and its files go over one stream."""
    from offsite.targets.ranged import probe_ranges

    t = opened_target(tmp_path, servers.get("sftp").new_location())
    try:
        assert probe_ranges(t, t.staging + "/p") is True
        real = t._write_range

        def truncating(path, start, src, end, progress):
            t._put_small(path, (t._get_small(path) or b"").ljust(start, b"\0")[:start])
            real(path, start, src, end, progress)

        t._write_range = truncating  # what such a server does at REST
        assert probe_ranges(t, t.staging + "/p") is False
        assert t._size(t.staging + "/p") is None  # the probe leaves nothing behind
    finally:
        t.close()
    (tmp_path / "ftp").mkdir()
    t = opened_target(tmp_path / "ftp", servers.get("ftp").new_location())
    try:
        assert t.ranges() is False  # pyftpdlib: "554 REST position > file size"
    finally:
        t.close()


@pytest.mark.parametrize("kind", ["sftp", "smb"])
def test_a_sigkill_with_several_streams_in_flight_resumes_without_sending_the_recorded_blocks_again(
        kind, servers, site, start_agent):
    server = servers.get(kind)
    loc = server.new_location()
    size = RANGED_FROM + 6 * BLOCK + 4321
    site.config(target=loc, agent='streams = 3\nbandwidth = "40MB/s"', job='mode = "all"')
    image, sidecar = a_pair(site, size)
    agent = start_agent()
    wait_until(lambda: len(record(server, loc)) >= 5, timeout=120, what="a record of a few blocks")
    agent.kill()  # SIGKILL: streams in flight, the record as last saved
    held = record(server, loc)
    assert 0 < len(held) < len(blocks(size)), held
    recorded = sum(e - s for i, (s, e) in enumerate(blocks(size)) if i in held)
    site.config(target=loc, agent="streams = 3", job='mode = "all"')
    r = site.offsite("sync", "job1", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    files = published(server, loc)
    assert files[IMAGE] == image and files[SIDECAR] == sidecar
    last = site.job_status()["last_sync"]
    # Exactly the blocks the record did not name went again (and the sidecar, unless it was
    # staged whole before the kill, waiting for its image).
    assert size - recorded <= last["bytes_on_wire"] <= size - recorded + len(sidecar), (last, recorded)


def test_every_stream_of_a_file_draws_on_the_jobs_one_throttle(servers, site, monkeypatch):
    """Throttling holds across streams: all of them take their bytes from the job's bucket,
    whose rate is tested on its own (test_throttle.py); counted here by thread."""
    from offsite import config
    from offsite.agent import throttle
    from offsite.agent.job import JobRunner, Request
    from offsite.queue import WorkQueue
    from offsite.state import StateDir

    drawn: dict[str, int] = {}
    lock = threading.Lock()
    real = throttle.Throttle.consume

    def counted(self, n, stop=None):
        with lock:
            name = threading.current_thread().name
            drawn[name] = drawn.get(name, 0) + n
        return real(self, n, stop)

    monkeypatch.setattr(throttle.Throttle, "consume", counted)
    server = servers.get("sftp")
    loc = server.new_location()
    size = RANGED_FROM + 2 * BLOCK
    site.config(target=loc, agent='streams = 3\nbandwidth = "1GB/s"', job='mode = "all"')
    image, sidecar = a_pair(site, size)
    cfg = config.load(site.cfg)
    state = StateDir(cfg.agent.state_dir)
    state.ensure()
    queue = WorkQueue(state.queue_dir)
    runner = JobRunner(cfg.jobs[0], cfg.agent, queue, state, threading.BoundedSemaphore(8))
    reply: dict = {}
    runner.request(Request("sync", reply=reply.update))
    runner.step()
    queue.close()
    assert reply["result"]["files_sent"] == 2, reply
    streams = {k: v for k, v in drawn.items() if k.startswith("stream-")}
    assert len(streams) == 3, drawn  # three streams, each drawing on the one bucket
    assert sum(streams.values()) == size - HEAD, drawn  # every byte of every range
    assert published(server, loc)[IMAGE] == image


def test_chain_order_holds_when_a_later_files_streams_finish_first(servers, site, start_agent):
    server = servers.get("sftp")
    loc = server.new_location()
    # The base is bigger: with two files in flight and their streams sharing one throttle,
    # the incremental is staged whole long before the base.
    base, incr = "C_VOL-b001.spf", "C_VOL-b001-i001-cd.spi"
    site.config(target=loc, agent='streams = 2\ntransfers = 2\nbandwidth = "60MB/s"', job='mode = "all"')
    finished_file(site.source / base, RANGED_FROM + 6 * BLOCK)
    finished_file(site.source / incr, RANGED_FROM)
    agent = start_agent()
    staging = server._top(loc, "job1") / ".offsite" / "staging"

    def incr_staged_base_not() -> bool:
        names = os.listdir(staging) if staging.exists() else []
        return any(f"-{RANGED_FROM}-" in n and n.endswith(".part") for n in names) \
            and any(n.endswith(".ranges") for n in names)

    wait_until(incr_staged_base_not, timeout=120, interval=0.02, what="the incremental staged before the base")
    assert incr not in published(server, loc)  # staged whole, yet waiting for its base
    wait_until(lambda: incr in published(server, loc), timeout=180, what="both published")
    top = server._top(loc, "job1")
    assert os.stat(top / base).st_ctime_ns <= os.stat(top / incr).st_ctime_ns  # the base went first
    assert agent.stop() == 0


def test_a_record_is_believed_only_beside_its_file_and_discard_removes_both(servers, tmp_path):
    """The target's record names blocks of the file beside it only: without that file (or a
    shorter one) the upload starts over, and the record goes first. discard() removes the
    ranges another session staged after this one listed the staging folder."""
    import io

    server = servers.get("sftp")
    t = opened_target(tmp_path, server.new_location())
    size, path = RANGED_FROM + 1000, "C_VOL-b001.spf"
    data = os.urandom(size)
    src = io.BytesIO(data)
    try:
        assert t.begin_ranges(path, size, 1, src, lambda n: None) == {0}
        t.write_range(path, size, 1, 2, src, lambda n: None)
        t.save_ranges(path, size, 1, {0, 2})
        assert t.begin_ranges(path, size, 1, src, lambda n: None) == {0, 2}  # resumed: the record and its file
        staged = t._ranged(path, size, 1)
        t._remove(staged)  # the file gone (a tidy, a person): the record proves nothing
        assert t.begin_ranges(path, size, 1, src, lambda n: None) == {0}
        assert t._get_small(staged + ".json") is None
        for i in range(1, len(blocks(size))):
            t.write_range(path, size, 1, i, src, lambda n: None)
        t.save_ranges(path, size, 1, set(range(len(blocks(size)))))
        t.discard(path)  # listed afresh: the session's own listing predates the ranges
        assert [n for n in t._listdir(t.staging)] == []
        t.begin_ranges(path, size, 1, src, lambda n: None)
        for i in range(1, len(blocks(size))):
            t.write_range(path, size, 1, i, src, lambda n: None)
        t.end_ranges(path, size, 1)
        t.publish(path, size, 1, hashlib.md5(data).hexdigest())
        assert t._get_small(t._final(path)) == data
        assert [n for n in t._listdir(t.staging)] == []  # no record left behind
    finally:
        t.close()


class Pool:
    """The job's pool of sessions, as stage_ranged sees it (transfer.Sessions): spare sessions
    on the same location, and where each went back."""

    def __init__(self, tmp_path, loc, n: int) -> None:
        self.free = []
        for i in range(n):
            (tmp_path / f"s{i}").mkdir()
            self.free.append(opened_target(tmp_path / f"s{i}", loc))
        self.back, self.dropped = [], []

    def spare(self):
        return self.free.pop() if self.free else None

    def checkin(self, t):
        self.back.append(t)

    def drop(self, t):
        self.dropped.append(t)
        t.close()

    def close(self):
        for t in self.free + self.back:
            t.close()


def test_a_stop_keeps_the_record_of_the_blocks_written_and_the_sessions(servers, tmp_path):
    """Streams stopped by the agent stopping (Interrupted from the transfer's progress) are
    whole sessions: the record names every block written, and the sessions go back."""
    from offsite.agent.streams import stage_ranged
    from offsite.errors import Interrupted

    server = servers.get("sftp")
    loc = server.new_location()
    t = opened_target(tmp_path, loc)
    pool = Pool(tmp_path, loc, 2)
    size = HEAD + 8 * BLOCK
    src = tmp_path / "src" / IMAGE
    finished_file(src, size)
    sent = [0]

    def progress(n):
        sent[0] += n
        if sent[0] > 4 * BLOCK:
            raise Interrupted("the agent is stopping")

    try:
        with open(src, "rb") as f, pytest.raises(Interrupted):
            stage_ranged(t, pool, 3, src, f, IMAGE, size, 1, progress)
        held = t._read_record(t._ranged(IMAGE, size, 1) + ".json", size)
        assert len(held) >= 3, held  # the head and the blocks finished before the stop
        data, staged = src.read_bytes(), server._top(loc, "j") / ".offsite" / "staging"
        there = (staged / t._ranged(IMAGE, size, 1).rsplit("/", 1)[1]).read_bytes()
        for i in held:  # every block the record names holds the source's bytes
            s, e = blocks(size)[i]
            assert there[s:e] == data[s:e], i
        assert len(pool.back) == 2 and pool.dropped == []
    finally:
        t.close()
        pool.close()


def test_records_are_written_one_at_a_time(servers, tmp_path, monkeypatch):
    """Every stream may save the record; two at once would collide on its temporary name
    and fail the file (an attack found it). A slow save widens the window."""
    import time as _time

    from offsite.agent import streams
    from offsite.targets.ranged import RangedTarget

    monkeypatch.setattr(streams, "SAVE_EVERY", 1)
    real, inside, most = RangedTarget.save_ranges, [0], [0]

    def slow(self, *a, **kw):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        try:
            _time.sleep(0.2)
            return real(self, *a, **kw)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(RangedTarget, "save_ranges", slow)
    loc = servers.get("sftp").new_location()
    t = opened_target(tmp_path, loc)
    pool = Pool(tmp_path, loc, 3)
    size = HEAD + 6 * BLOCK
    src = tmp_path / "src" / IMAGE
    finished_file(src, size)
    try:
        with open(src, "rb") as f:
            md5 = streams.stage_ranged(t, pool, 4, src, f, IMAGE, size, 1, lambda n: None)
        assert md5 == hashlib.md5(src.read_bytes()).hexdigest()
        assert most[0] == 1
    finally:
        t.close()
        pool.close()


def test_a_write_the_server_refuses_is_never_taken_as_written(servers, tmp_path):
    """A full disk refuses writes: paramiko read the answers of pipelined writes only past
    100 outstanding and dropped the rest, so a block or a whole small file counted as
    written with zeros in it. Every answer is read now; one stream's staged file is removed
    after a refused write (its resume trusts the staged size, which may run past a hole)."""
    import errno
    import io
    import subprocess

    from offsite.errors import TargetFull

    server = servers.get("sftp")
    loc = server.new_location()
    top = server._top(loc, "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(top)], check=True)
    try:
        t = opened_target(tmp_path, loc)
        f = t.staging + "/file"
        t._put_small(f, b"x")
        with open(top / "ballast", "wb", buffering=0) as b:
            with pytest.raises(OSError) as full:
                while True:
                    b.write(b"\1" * (1 << 20))
            assert full.value.errno == errno.ENOSPC
        data = os.urandom(8 * MiB)
        with pytest.raises(TargetFull):
            t._write_range(f, MiB, io.BytesIO(bytes(MiB) + data), 9 * MiB, lambda n: None)
        with pytest.raises(TargetFull):
            t._put_small(t.staging + "/small", b"{}" * 1000)
        assert t._size(t.staging + "/small") is None  # not left to be resumed from
        t.close()
    finally:
        subprocess.run(["umount", "-l", str(top)], check=True)


def test_a_refused_write_answered_out_of_order_is_not_lost():
    """SFTP lets a server answer requests in any order. paramiko gives an answer that comes
    before the one waited for to its request's owner, and drops it when the owner is nobody
    (as the writes' owner was): a refused write answered early would have been lost. Here
    paramiko's own reading code runs on scripted answers: write 2 refused, answered first."""
    import threading

    from paramiko import SFTPClient
    from paramiko.message import Message
    from paramiko.sftp import CMD_STATUS, SFTP_FAILURE, SFTP_OK

    from offsite.targets.sftp_wire import Answers

    def status(number: int, code: int) -> tuple[int, bytes]:
        m = Message()
        m.add_int(number)
        m.add_int(code)
        m.add_string("refused" if code else "ok")
        m.add_string("")
        return CMD_STATUS, m.asbytes()

    class Server:
        _lock = threading.Lock()
        _expecting: dict = {}
        packets = [status(2, SFTP_FAILURE), status(1, SFTP_OK)]
        _read_response = SFTPClient._read_response
        _convert_status = SFTPClient._convert_status

        def _read_packet(self):
            return self.packets.pop(0)

        def _log(self, *args) -> None:
            pass

    sftp = Server()
    answers = Answers(sftp)  # type: ignore[arg-type]
    sftp._expecting.update({1: answers, 2: answers})
    assert answers.wait(1) == CMD_STATUS
    with pytest.raises(IOError, match="refused"):
        answers.wait(2)
