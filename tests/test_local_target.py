"""The local target against a real folder."""
from __future__ import annotations

import io
import os

import pytest

from offsite.errors import Interrupted, PermanentError, TransientError
from offsite.targets import local
from offsite.targets.local import LocalTarget


@pytest.fixture
def target(tmp_path):
    (tmp_path / "drive").mkdir()
    t = LocalTarget(tmp_path / "drive", "jobs/fs")
    t.open()
    return t


def src_file(tmp_path, size: int, name="src.bin"):
    p = tmp_path / name
    p.write_bytes(os.urandom(size))
    return p


def test_upload_is_invisible_until_published(tmp_path, target):
    p = src_file(tmp_path, 3 * local.CHUNK + 5)
    st = p.stat()
    with open(p, "rb") as f:
        sent = target.upload("sub dir/C_VOL-b001.spf", f, st.st_size, st.st_mtime_ns, lambda n: None)
    assert sent == st.st_size
    assert target.list() == {}
    target.publish("sub dir/C_VOL-b001.spf", st.st_size, st.st_mtime_ns)
    listed = target.list()
    assert listed["sub dir/C_VOL-b001.spf"].size == st.st_size
    assert listed["sub dir/C_VOL-b001.spf"].mtime_ns == st.st_mtime_ns
    assert (target.root / "sub dir/C_VOL-b001.spf").read_bytes() == p.read_bytes()
    assert not list(target.staging.iterdir())  # no leftovers


def test_interrupted_upload_resumes_from_its_checkpoint(tmp_path, target, monkeypatch):
    monkeypatch.setattr(local, "CHECKPOINT", 2 * local.CHUNK)
    p = src_file(tmp_path, 7 * local.CHUNK)
    st = p.stat()
    seen = []

    def stop_after_five(n):
        seen.append(n)
        if len(seen) == 5:
            raise Interrupted("window closed")

    with open(p, "rb") as f, pytest.raises(Interrupted):
        target.upload("a.spf", f, st.st_size, st.st_mtime_ns, stop_after_five)
    with open(p, "rb") as f:
        sent = target.upload("a.spf", f, st.st_size, st.st_mtime_ns, lambda n: None)
    assert sent == 2 * local.CHUNK  # the five chunks written were made durable on the way out
    target.publish("a.spf", st.st_size, st.st_mtime_ns)
    assert (target.root / "a.spf").read_bytes() == p.read_bytes()


def test_resume_never_trusts_bytes_past_the_checkpoint(tmp_path, target, monkeypatch):
    monkeypatch.setattr(local, "CHECKPOINT", 2 * local.CHUNK)
    p = src_file(tmp_path, 6 * local.CHUNK)
    st = p.stat()
    part, ckpt = target._staged("a.spf", st.st_size, st.st_mtime_ns)
    part.write_bytes(p.read_bytes()[: 3 * local.CHUNK] + b"\0" * local.CHUNK)  # garbage after a power loss
    ckpt.write_text(str(2 * local.CHUNK))
    with open(p, "rb") as f:
        assert target.upload("a.spf", f, st.st_size, st.st_mtime_ns, lambda n: None) == 4 * local.CHUNK
    target.publish("a.spf", st.st_size, st.st_mtime_ns)
    assert (target.root / "a.spf").read_bytes() == p.read_bytes()


def test_a_changed_source_version_starts_over(tmp_path, target):
    p = src_file(tmp_path, local.CHUNK * 2)
    st = p.stat()
    with open(p, "rb") as f:
        target.upload("a.spf", f, st.st_size, st.st_mtime_ns, lambda n: None)
    with open(p, "rb") as f:
        assert target.upload("a.spf", f, st.st_size, st.st_mtime_ns + 1, lambda n: None) == st.st_size
    assert len(list(target.staging.glob("*.part"))) == 1  # the old version's staging is gone


def test_publish_checks_the_size(tmp_path, target):
    p = src_file(tmp_path, 100)
    st = p.stat()
    with open(p, "rb") as f:
        target.upload("a.spf", f, 100, st.st_mtime_ns, lambda n: None)
    with pytest.raises(TransientError):
        target.publish("a.spf", 101, st.st_mtime_ns)
    assert target.list() == {}


def test_delete_of_a_missing_file_succeeds_and_empty_folders_go(tmp_path, target):
    p = src_file(tmp_path, 10)
    st = p.stat()
    with open(p, "rb") as f:
        target.upload("PC/{guid}/x-00-00.mrimg", f, 10, st.st_mtime_ns, lambda n: None)
    target.publish("PC/{guid}/x-00-00.mrimg", 10, st.st_mtime_ns)
    target.delete("PC/{guid}/x-00-00.mrimg")
    target.delete("PC/{guid}/x-00-00.mrimg")
    assert not (target.root / "PC").exists() and target.root.exists()


def test_owner_id_and_probe(target):
    assert target.read_owner() is None
    target.write_owner("job:abc")
    assert target.read_owner() == "job:abc"
    target.probe()
    assert target.list() == {}


def test_missing_location_is_a_permanent_error(tmp_path):
    t = LocalTarget(tmp_path / "not-mounted", "fs")
    with pytest.raises(PermanentError, match="location path .*not-mounted does not exist"):
        t.open()
    assert not (tmp_path / "not-mounted").exists()  # never created


@pytest.mark.parametrize("bad", ["../x.spf", "/etc/x.spf", "a/../../x.spf", ".offsite/owner", "a//b.spf", ""])
def test_unsafe_paths_are_refused(target, bad):
    with pytest.raises(PermanentError):
        target.upload(bad, io.BytesIO(b"x"), 1, 0, lambda n: None)
    with pytest.raises(PermanentError):
        target.delete(bad)


def test_plan_opening_writes_nothing(tmp_path):
    (tmp_path / "drive").mkdir()
    t = LocalTarget(tmp_path / "drive", "fs")
    t.open(create=False)
    assert t.list() == {} and not (tmp_path / "drive" / "fs").exists()


@pytest.mark.parametrize("size", [10, 2 * local.CHUNK + 100])
def test_every_byte_is_on_disk_before_the_fsync_that_lets_it_publish(tmp_path, target, monkeypatch, size):
    """A power loss never leaves a short file under a final name: the bytes of a file under
    CHECKPOINT are written before its fsync, the tail that a buffer would hold included."""
    from offsite.agent.hashing import HashingReader

    p = src_file(tmp_path, size)
    st = p.stat()
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_size), fsync(fd))[-1])
    with open(p, "rb") as f:  # through the hashing reader, as the transfers send it
        target.upload("a.spi", HashingReader(f, size), size, st.st_mtime_ns, lambda n: None)
    assert synced and synced[-1] == size
    target.publish("a.spi", size, st.st_mtime_ns)
    assert (target.root / "a.spi").read_bytes() == p.read_bytes()
