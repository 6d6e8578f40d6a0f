"""The target contract: one suite that every target type passes against a real server.

A new target is one entry in KINDS and one server in servers.py. Differences between
targets come from what each target declares (resumable, keeps_mtime), never from test
branches on the type.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from conftest import toml_value

from offsite import config
from offsite.errors import Interrupted, PermanentError, TransientError
from offsite.targets import make_target
from offsite.targets.base import Binned, Target

KINDS = ["local", "sftp", "ftp", "ftps", "smb", "s3", "s3-seaweedfs", "ftp-proftpd", "sftp-proftpd"]
MiB = 1024 * 1024


class Remote:
    """One target kind at one test: builds targets and looks at the server side directly."""

    def __init__(self, kind: str, servers, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp = tmp_path
        self.server = servers.get(kind)
        self.location = self.server.new_location()
        self.src = tmp_path / "src"
        self.src.mkdir(exist_ok=True)

    def job(self, folder: str = "job", location: dict | None = None):
        opts = location or self.location
        lines = "\n".join(f"{k} = {toml_value(v)}" for k, v in opts.items())
        cfg = self.tmp / "agent.toml"
        cfg.write_text(f"[locations.t]\n{lines}\n\n[[jobs]]\nname = 'j'\nsource = '{self.src}'\n"
                       f"location = 't'\nfolder = '{folder}'\nmode = 'all'\n")
        os.chmod(cfg, 0o600)
        return config.load(cfg).jobs[0]

    def target(self, folder: str = "job") -> Target:
        t = make_target(self.job(folder))
        t.open()
        return t

    def server_files(self, folder: str = "job") -> dict[str, bytes]:
        """Everything under the job folder on the server, the agent's folder included."""
        return self.server.files(self.location, folder)


@pytest.fixture(params=KINDS)
def remote(request, servers, tmp_path) -> Remote:
    return Remote(request.param, servers, tmp_path)


def source(tmp_path: Path, size: int, name: str = "src.bin") -> tuple[Path, int, int]:
    p = tmp_path / name
    p.write_bytes(os.urandom(size))
    st = p.stat()
    return p, st.st_size, st.st_mtime_ns


def send(t: Target, relpath: str, path: Path, progress=lambda n: None) -> int:
    st = path.stat()
    with open(path, "rb") as f:
        sent = t.upload(relpath, f, st.st_size, st.st_mtime_ns, progress)
    t.publish(relpath, st.st_size, st.st_mtime_ns, hashlib.md5(path.read_bytes()).hexdigest())
    return sent


def stage_half(remote: Remote, tmp_path: Path) -> tuple[Path, int, int]:
    """A source big enough to resume, uploaded as "a/b.spf" until half of it was sent, then
    interrupted (a window closing) and the connection closed."""
    t = remote.target()
    p, size, mtime = source(tmp_path, max(12 * MiB, 2 * t.resume_min_size + 8 * MiB))
    done = []

    def stop_half_way(n):
        done.append(n)
        if sum(done) >= size // 2:
            raise Interrupted("window closed")

    with open(p, "rb") as f, pytest.raises(Interrupted):
        t.upload("a/b.spf", f, size, mtime, stop_half_way)
    t.close()
    return p, size, mtime


def test_upload_is_invisible_until_published_then_complete(remote, tmp_path):
    t = remote.target()
    p, size, mtime = source(tmp_path, 3 * MiB + 17)
    with open(p, "rb") as f:
        assert t.upload("C_VOL-b001.spf", f, size, mtime, lambda n: None) == size
    assert t.list() == {}
    assert "C_VOL-b001.spf" not in remote.server_files()
    t.publish("C_VOL-b001.spf", size, mtime)
    listed = t.list()
    assert set(listed) == {"C_VOL-b001.spf"} and listed["C_VOL-b001.spf"].size == size
    if t.keeps_mtime:
        assert abs(listed["C_VOL-b001.spf"].mtime_ns - mtime) < 2e9
    files = remote.server_files()
    assert files["C_VOL-b001.spf"] == p.read_bytes()
    assert not [f for f in files if f.startswith(".offsite/staging/")]  # nothing left staged
    t.close()


def test_an_interrupted_upload_resumes_or_starts_over(remote, tmp_path):
    p, size, mtime = stage_half(remote, tmp_path)
    t = remote.target()  # a new connection, as after a restart
    assert t.list() == {}
    sent = send(t, "a/b.spf", p)
    if t.resumable:
        # What the server had stored is kept (an abort loses what was still in flight:
        # over TLS that can be a few MiB).
        assert sent <= size - MiB
    else:
        assert sent == size
    assert remote.server_files()["a/b.spf"] == p.read_bytes()
    t.close()


def test_publish_refuses_an_incomplete_upload(remote, tmp_path):
    t = remote.target()
    p, size, mtime = source(tmp_path, 1000)
    with open(p, "rb") as f:
        t.upload("x.spf", f, size, mtime, lambda n: None)
    with pytest.raises(TransientError):
        t.publish("x.spf", size + 1, mtime)  # the size the agent expects is not what was staged
    assert t.list() == {}
    t.close()


def test_a_new_version_replaces_the_old_one(remote, tmp_path):
    t = remote.target()
    p, _, _ = source(tmp_path, 5000)
    send(t, "x.mrimg", p)
    p.write_bytes(os.urandom(7000))
    send(t, "x.mrimg", p)
    assert t.list()["x.mrimg"].size == 7000
    assert remote.server_files()["x.mrimg"] == p.read_bytes()
    t.close()


def test_delete_and_a_delete_that_finds_nothing(remote, tmp_path):
    t = remote.target()
    p, _, _ = source(tmp_path, 10)
    send(t, "d/x.spi", p)
    t.delete("d/x.spi")
    assert t.list() == {}
    t.delete("d/x.spi")  # a retried delete that finds nothing succeeded
    t.delete("never/was.spi")
    t.close()


def test_owner_id_create_read_replace(remote):
    t = remote.target()
    assert t.read_owner() is None
    t.write_owner("job-a:1")
    assert t.read_owner() == "job-a:1"
    t2 = remote.target()
    assert t2.read_owner() == "job-a:1"  # another connection sees it
    t2.write_owner("job-b:2")  # reinit
    assert t.read_owner() == "job-b:2"
    assert t.list() == {}  # the agent's folder is never listed
    t.close()
    t2.close()


def test_the_job_folder_is_created_under_an_existing_location(remote):
    t = remote.target(folder="deep/er/job")
    t.probe()
    t.write_owner("x")
    assert ".offsite/owner" in remote.server_files("deep/er/job")
    t.close()


def test_a_missing_location_is_reported_as_such(remote):
    t = make_target(remote.job(location=remote.server.missing_location(remote.location)))
    with pytest.raises(PermanentError, match="not-there does not exist"):
        t.open()
    t.close()


AWKWARD = [
    "with space/C_VOL-b001.spf",
    "Système Réservé_VOL-b001.spf",
    "O'Brien's PC/C_VOL-b001.spf",
    "日本語/データ-b001.spf",
    "a/b/c/d/e/f/C_VOL-b001-i001.spi",
    "L" * 200 + "-b001.spf",
    "semi;colon & amp/x-b001.spf",
]


@pytest.mark.parametrize("name", AWKWARD, ids=range(len(AWKWARD)))
def test_awkward_names(remote, tmp_path, name):
    t = remote.target()
    p, size, _ = source(tmp_path, 2048)
    send(t, name, p)
    assert set(t.list()) == {name}
    assert remote.server_files()[name] == p.read_bytes()
    t.delete(name)
    assert t.list() == {}
    t.close()


@pytest.mark.parametrize("bad", ["../escape.spf", "/abs.spf", ".offsite/owner", "a/../../x.spf"])
def test_nothing_is_written_outside_the_job_folder(remote, bad):
    t = remote.target()
    with pytest.raises(PermanentError):
        t.upload(bad, io.BytesIO(b"x"), 1, 0, lambda n: None)
    with pytest.raises(PermanentError):
        t.delete(bad)
    everything = remote.server.files(remote.location, "")  # the whole location, not just the job folder
    assert not [f for f in everything if "escape" in f or f == "abs.spf"]
    t.close()


def test_free_space_is_reported_where_the_protocol_tells(remote):
    t = remote.target()
    try:
        free = t.free_space()
    finally:
        t.close()
    if remote.kind in ("local", "sftp", "sftp-proftpd", "smb"):  # statvfs; statvfs@openssh.com; SMB volume query
        assert isinstance(free, int) and free > 0
    else:  # FTP and S3 have no such query: unknown, and the target-space alert stays quiet
        assert free is None


# Servers that report the MD5 of what they store: FTP HASH (ProFTPD mod_digest), SFTP
# check-file (ProFTPD mod_sftp), S3 part ETags. OpenSSH, pyftpdlib and Samba have no such
# command: on them publish proves the size only (README, the table of what is proven).
PROVING = ["ftp-proftpd", "sftp-proftpd", "s3", "s3-seaweedfs"]


@pytest.mark.parametrize("kind", PROVING)
def test_a_staged_part_that_no_longer_matches_the_source_is_never_published(kind, servers, tmp_path):
    remote = Remote(kind, servers, tmp_path)
    p, size, mtime = stage_half(remote, tmp_path)
    # The source changes where it was already staged, keeping its size and time (a damaged
    # disk, or a writer that restored the time): a resume sends only the rest.
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    os.utime(p, ns=(mtime, mtime))
    t = remote.target()
    with open(p, "rb") as f:
        sent = t.upload("a/b.spf", f, size, mtime, lambda n: None)
    assert sent < size  # it did resume from the stale staged bytes
    with pytest.raises(TransientError, match="does not match the bytes read from the source"):
        t.publish("a/b.spf", size, mtime, hashlib.md5(bytes(data)).hexdigest())
    assert t.list() == {}
    assert remote.server.staged_bytes(remote.location, "job") == 0  # the stale part is gone
    t.close()
    t = remote.target()  # the agent drops a session after a failed file
    assert send(t, "a/b.spf", p) == size  # the next attempt sends all of it
    assert remote.server_files()["a/b.spf"] == bytes(data)
    t.close()


@pytest.mark.parametrize("kind", ["ftp-proftpd", "sftp-proftpd"])
def test_the_server_reports_the_md5_of_a_published_file(kind, servers, tmp_path):
    remote = Remote(kind, servers, tmp_path)
    t = remote.target()
    p, _, _ = source(tmp_path, 5 * MiB + 3, "with space.spi")
    send(t, "d/with space.spi", p)
    assert t.remote_md5("d/with space.spi") == hashlib.md5(p.read_bytes()).hexdigest()
    assert t.remote_md5("d/none.spi") is None
    if kind == "ftp-proftpd":  # ProFTPD offers both: the older XMD5 (chosen where HASH is missing) too
        assert t._hash_cmd == "HASH"
        t._hash_cmd = "XMD5"
        send(t, "d/plain.spi", p)
        assert t.remote_md5("d/plain.spi") == hashlib.md5(p.read_bytes()).hexdigest()
        assert t.remote_md5("d/with space.spi") is None  # XMD5 cannot name it: not asked
        assert t.remote_md5("d/none.spi") is None
    t.close()


@pytest.mark.parametrize("kind", ["ftp", "sftp"])
def test_a_server_without_a_hash_command_proves_the_size_only(kind, servers, tmp_path):
    remote = Remote(kind, servers, tmp_path)
    t = remote.target()
    p, size, mtime = source(tmp_path, 1000)
    with open(p, "rb") as f:
        t.upload("x.spf", f, size, mtime, lambda n: None)
    t.publish("x.spf", size, mtime, "0" * 32)  # nothing can tell: published on its size
    assert t.remote_md5("x.spf") is None and t.list()["x.spf"].size == size
    t.close()


# ---------------------------------------------------------------- SPEC section 8 on every target

def test_the_bin_keeps_what_leaves_a_final_name_and_gives_it_back_never_over_a_file(remote, tmp_path):
    t = remote.target()
    first, _, _ = source(tmp_path, 3000, "first.bin")
    send(t, "a/x.spi", first)
    other, _, _ = source(tmp_path, 10, "other.bin")
    send(t, "y.spi", other)
    t.to_bin("a/x.spi", "2026-11-30")
    assert set(t.list()) == {"y.spi"}  # off its final name...
    assert t.bin_list() == [Binned("2026-11-30", "a/x.spi", 3000)]  # ...into the bin
    assert remote.server_files()[".offsite/deleted/2026-11-30/a/x.spi"] == first.read_bytes()
    t.to_bin("a/x.spi", "2026-11-30")  # a retried move that finds nothing succeeded
    # The same file binned again the same day: both copies are kept, the later as version 2.
    second, _, _ = source(tmp_path, 4000, "second.bin")
    send(t, "a/x.spi", second)
    t.to_bin("a/x.spi", "2026-11-30")
    assert sorted(t.bin_list(), key=lambda b: b.version) == [Binned("2026-11-30", "a/x.spi", 3000),
                                                             Binned("2026-11-30", "a/x.spi", 4000, 2)]
    assert "a/x.spi" not in t.list()
    # Undelete never overwrites a file that is there.
    send(t, "a/x.spi", second)
    with pytest.raises(PermanentError, match="not overwritten"):
        t.from_bin("a/x.spi", "2026-11-30")
    assert remote.server_files()["a/x.spi"] == second.read_bytes()
    t.delete("a/x.spi")
    t.from_bin("a/x.spi", "2026-11-30", 2)
    assert remote.server_files()["a/x.spi"] == second.read_bytes()
    t.delete("a/x.spi")
    t.from_bin("a/x.spi", "2026-11-30")
    assert remote.server_files()["a/x.spi"] == first.read_bytes() and t.bin_list() == []
    with pytest.raises(PermanentError, match="holds no"):
        t.from_bin("a/x.spi", "2026-11-30")
    # Purging a day removes it whole, and nothing else.
    t.to_bin("y.spi", "2026-11-01")
    t.to_bin("a/x.spi", "2026-11-02")
    t.purge_bin("2026-11-01")
    t.purge_bin("2026-11-01")  # already gone: fine
    assert t.bin_list() == [Binned("2026-11-02", "a/x.spi", 3000)]
    assert not [f for f in remote.server_files() if "2026-11-01" in f]
    with pytest.raises(PermanentError):
        t.purge_bin("../..")
    t.close()


def test_a_folder_that_holds_another_jobs_owner_is_never_listed(remote, tmp_path):
    outer = remote.target()
    p, _, _ = source(tmp_path, 10)
    send(outer, "mine.spf", p)
    inner = remote.target(folder="job/site")  # another job's folder inside this one
    inner.write_owner("other-job:1")
    send(inner, "theirs.spf", p)
    inner.close()
    assert set(outer.list()) == {"mine.spf"}  # so never deleted, never moved to the bin
    assert outer.foreign == {"site"}  # and the agent sends nothing there (SPEC section 8)
    outer.close()


def test_tidy_removes_what_is_staged_for_files_no_longer_queued(remote, tmp_path):
    stage_half(remote, tmp_path)
    assert remote.server.staged_bytes(remote.location, "job") > 0
    t = remote.target()
    t.tidy({"a/b.spf", "other.spf"})  # still queued: kept, to resume
    assert remote.server.staged_bytes(remote.location, "job") > 0
    t.tidy({"other.spf"})  # a/b.spf vanished at the source: its staged bytes go
    assert remote.server.staged_bytes(remote.location, "job") == 0
    assert not [f for f in remote.server_files() if f.startswith(".offsite/staging/")]
    if remote.kind.startswith("s3"):  # and no multipart upload is left open (and billed)
        s3 = remote.server.client()
        assert s3.list_multipart_uploads(Bucket=remote.location["bucket"]).get("Uploads", []) == []
    t.close()


FILE_SYSTEMS = ["sftp", "ftp", "ftps", "smb", "ftp-proftpd", "sftp-proftpd"]


@pytest.mark.parametrize("kind", FILE_SYSTEMS)
def test_a_publish_that_fails_keeps_the_copy_it_was_to_replace(kind, servers, tmp_path, monkeypatch):
    """The staged copy vanishes between publish's size check and its rename (a server that
    answers wrongly): the published copy stays, and the error is a retry, not a traceback."""
    remote = Remote(kind, servers, tmp_path)
    t = remote.target()
    old, _, _ = source(tmp_path, 5000, "old.bin")
    send(t, "x.mrimg", old)
    new, size, mtime = source(tmp_path, 7000, "new.bin")
    with open(new, "rb") as f:
        t.upload("x.mrimg", f, size, mtime, lambda n: None)
    staged_dir = remote.server._top(remote.location, "job") / ".offsite" / "staging"
    makedirs = t._makedirs

    def vanish_then_makedirs(path):
        for p in staged_dir.glob("*.part"):
            p.unlink()  # on the server's side, behind the session's back
        return makedirs(path)

    monkeypatch.setattr(t, "_makedirs", vanish_then_makedirs)
    with pytest.raises(TransientError, match="nothing is staged"):
        t.publish("x.mrimg", size, mtime)
    assert remote.server_files()["x.mrimg"] == old.read_bytes()
    t.close()


@pytest.mark.parametrize("kind", ["s3", "s3-seaweedfs"])
def test_a_file_published_by_another_session_is_still_proven_part_by_part(kind, servers, tmp_path):
    """With several transfers, the session that publishes a file (after an earlier file of
    its chain) is not always the one that uploaded it: the parts' proof goes with the upload."""
    remote = Remote(kind, servers, tmp_path)
    p, size, mtime = stage_half(remote, tmp_path)
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF  # the staged first half no longer matches the source
    p.write_bytes(bytes(data))
    os.utime(p, ns=(mtime, mtime))
    uploader, publisher = remote.target(), remote.target()
    with open(p, "rb") as f:
        assert uploader.upload("a/b.spf", f, size, mtime, lambda n: None) < size
    with pytest.raises(TransientError, match="does not match the bytes read from the source"):
        publisher.publish("a/b.spf", size, mtime, hashlib.md5(bytes(data)).hexdigest())
    assert publisher.list() == {}
    uploader.close()
    publisher.close()
