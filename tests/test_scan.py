"""Source readiness: sidecars, settling, Reflect X trailers, exclusions, symlinks."""
from __future__ import annotations

import os
import time

import pytest

from offsite.watchers import SourceView

NOW = time.time_ns()


def view(tmp_path, settle=30.0):
    return SourceView(tmp_path, settle)


def write(path, data=b"x" * 100, age=0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    t = time.time() - age
    os.utime(path, (t, t))


def test_old_files_are_ready_at_first_sight_new_ones_settle(tmp_path):
    write(tmp_path / "C_VOL-b001.spf", age=120)
    write(tmp_path / "C_VOL-b001-i001-cd.spi")
    v = view(tmp_path)
    v.scan(1000.0, time.time_ns())
    snap = v.snapshot()
    assert snap["C_VOL-b001.spf"].ready and not snap["C_VOL-b001-i001-cd.spi"].ready
    v.refresh(1029.0, time.time_ns())
    assert not v.snapshot()["C_VOL-b001-i001-cd.spi"].ready
    v.refresh(1030.5, time.time_ns())
    assert v.snapshot()["C_VOL-b001-i001-cd.spi"].ready


def test_a_changing_file_starts_settling_again(tmp_path):
    f = tmp_path / "C_VOL-b001-i001-cd.spi"
    write(f)
    v = view(tmp_path)
    v.scan(0.0, time.time_ns())
    with open(f, "ab") as fh:
        fh.write(b"more")
    v.refresh(29.0, time.time_ns())
    v.refresh(58.0, time.time_ns())
    assert not v.snapshot()[f.name].ready
    v.refresh(59.5, time.time_ns())
    assert v.snapshot()[f.name].ready and v.snapshot()[f.name].size == 104


def test_a_complete_md5_sidecar_makes_it_and_its_image_complete_at_once(tmp_path):
    write(tmp_path / "C_VOL-b001-i005.spi")
    v = view(tmp_path)
    v.scan(0.0, time.time_ns())
    assert not v.snapshot()["C_VOL-b001-i005.spi"].ready
    assert v.take_changed() == {"C_VOL-b001-i005.spi"}
    write(tmp_path / "C_VOL-b001-i005.md5", b"0" * 32 + b" *C_VOL-b001-i005.spi\r\n;{guid};2026/11/24\r\n")
    v.touch({"C_VOL-b001-i005.md5"}, 1.0, time.time_ns())  # one second later: no quiet period
    snap = v.snapshot()
    assert snap["C_VOL-b001-i005.spi"].ready and snap["C_VOL-b001-i005.md5"].ready
    assert v.take_changed() == {"C_VOL-b001-i005.spi", "C_VOL-b001-i005.md5"}


@pytest.mark.parametrize("sidecar", [
    b"0" * 32 + b" *C_VOL-b001-i005.spi",  # the line end is not written yet
    b"0" * 31,  # half the hash
    b"0" * 32 + b" *C_VOL-b001-i006.spi\r\n",  # names another image
    b"",
])
def test_an_incomplete_sidecar_waits_for_the_quiet_period(tmp_path, sidecar):
    write(tmp_path / "C_VOL-b001-i005.spi")
    write(tmp_path / "C_VOL-b001-i005.md5", sidecar)
    v = view(tmp_path)
    v.scan(0.0, time.time_ns())
    snap = v.snapshot()
    assert not snap["C_VOL-b001-i005.spi"].ready and not snap["C_VOL-b001-i005.md5"].ready
    v.refresh(31.0, time.time_ns())  # settled: both complete by the quiet period
    snap = v.snapshot()
    assert snap["C_VOL-b001-i005.md5"].ready


def test_reflect_x_files_need_their_trailer(tmp_path):
    write(tmp_path / "pc/{g}/ABC-00-00.mrimgx", b"data" * 10, age=120)
    write(tmp_path / "pc/{g}/ABC-01-01.mrimgx", b"data" * 10 + b"\0" * 8 + b"MACRIUM_FILE", age=120)
    v = view(tmp_path)
    v.scan(0.0, time.time_ns())
    snap = v.snapshot()
    assert not snap["pc/{g}/ABC-00-00.mrimgx"].ready and snap["pc/{g}/ABC-01-01.mrimgx"].ready


def test_excluded_unknown_and_linked_files_are_not_seen(tmp_path):
    write(tmp_path / "Incrementals/C_VOL-b001-i001-cd.spi", age=120)
    write(tmp_path / "readme.txt", age=120)
    write(tmp_path / ".hidden/C_VOL-b001.spf", age=120)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    write(outside / "C_VOL-b009.spf", age=120)
    os.symlink(outside, tmp_path / "linked-folder")
    os.symlink(outside / "C_VOL-b009.spf", tmp_path / "C_VOL-b009.spf")
    write(tmp_path / "sub/C_VOL-b001.spf", age=120)
    v = view(tmp_path)
    v.scan(0.0, time.time_ns())
    assert list(v.snapshot()) == ["sub/C_VOL-b001.spf"]


def test_touch_forgets_vanished_files_and_folders(tmp_path):
    write(tmp_path / "a/C_VOL-b001.spf", age=120)
    write(tmp_path / "a/C_VOL-b001.md5", age=120)
    write(tmp_path / "C_VOL-b002.spf", age=120)
    v = view(tmp_path)
    v.scan(0.0, time.time_ns())
    (tmp_path / "a/C_VOL-b001.spf").unlink()
    (tmp_path / "a/C_VOL-b001.md5").unlink()
    (tmp_path / "a").rmdir()
    assert v.touch({"a"}, 1.0, time.time_ns())
    assert list(v.snapshot()) == ["C_VOL-b002.spf"]


def test_a_vanished_file_is_gone_only_when_a_listing_settle_later_confirms_it(tmp_path):
    # Absence is not evidence: one listing that misses a file makes it unknown (neither sent
    # nor deleted); a second, error-free listing of its folder `settle` later confirms it gone.
    for name in ("C_VOL-b001-i001-cd.spi", "C_VOL-b001-i002-cd.spi"):
        write(tmp_path / name, age=120)
    v = view(tmp_path, settle=30.0)
    v.scan(0.0, time.time_ns())
    v.take_changed()
    (tmp_path / "C_VOL-b001-i001-cd.spi").unlink()
    v.touch({"C_VOL-b001-i001-cd.spi"}, 10.0, time.time_ns())
    assert "C_VOL-b001-i001-cd.spi" not in v.entries
    assert v.is_unknown("C_VOL-b001-i001-cd.spi") and not v.is_unknown("C_VOL-b001-i002-cd.spi")
    v.take_changed()
    v.refresh(39.0, time.time_ns())
    assert v.is_unknown("C_VOL-b001-i001-cd.spi") and v.take_changed() == set()
    v.refresh(40.5, time.time_ns())
    assert not v.is_unknown("C_VOL-b001-i001-cd.spi") and v.take_changed() == {"C_VOL-b001-i001-cd.spi"}


def test_a_file_back_before_it_was_confirmed_gone_was_never_gone(tmp_path):
    write(tmp_path / "C_VOL-b001.spf", age=120)
    v = view(tmp_path, settle=5.0)
    v.scan(0.0, time.time_ns())
    (tmp_path / "C_VOL-b001.spf").rename(tmp_path / "C_VOL-b001.spf.moving")
    v.scan(1.0, time.time_ns())
    assert v.is_unknown("C_VOL-b001.spf")
    (tmp_path / "C_VOL-b001.spf.moving").rename(tmp_path / "C_VOL-b001.spf")
    v.refresh(7.0, time.time_ns())
    assert "C_VOL-b001.spf" in v.entries and not v.is_unknown("C_VOL-b001.spf")
