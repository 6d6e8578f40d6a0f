"""Images are checked against their own .md5 sidecar while they are sent: a damaged backup
at the source is never published, and says so."""
from __future__ import annotations

import hashlib
import io
import json
import os

import pytest
from conftest import finished_file, wait_until

from offsite.agent.hashing import HashingReader
from offsite.agent.transfer import CORRUPT
from offsite.backupfiles import sidecar_md5

MiB = 1024 * 1024
DATA = os.urandom(5 * MiB + 123)
MD5 = hashlib.md5(DATA).hexdigest()


def test_a_whole_read_is_hashed_once_without_reading_twice():
    r = HashingReader(io.BytesIO(DATA), len(DATA))
    while r.read(1 << 20):
        pass
    assert r.hexdigest() == MD5 and r.bytes_reread == 0


def test_a_resumed_upload_hashes_the_part_it_resumes_from_once():
    r = HashingReader(io.BytesIO(DATA), len(DATA))
    r.seek(3 * MiB)  # the target had 3 MiB staged
    while r.read(1 << 20):
        pass
    assert r.hexdigest() == MD5 and r.bytes_reread == 3 * MiB


def test_parts_read_out_of_order_and_read_again_still_give_the_files_md5():
    r = HashingReader(io.BytesIO(DATA), len(DATA))
    for start in (2 * MiB, 0, 1 * MiB, 2 * MiB, 4 * MiB):  # S3 parts in any order, one resent
        r.seek(start)
        r.read(MiB)
    assert r.hexdigest() == MD5


def test_a_file_cut_short_is_not_its_md5():
    r = HashingReader(io.BytesIO(DATA[:-1]), len(DATA))
    assert r.hexdigest() != MD5


@pytest.mark.parametrize("line, expected", [
    (f"{MD5} *C_VOL-b001.spf\r\n;{{guid}};2026/11/24\r\n".encode(), MD5),
    (f"{MD5.upper()} *C_VOL-b001.spf\r\n".encode(), MD5),
    (f"{MD5} *C_VOL-b002.spf\r\n".encode(), None),  # names another image
    (b"not a checksum *C_VOL-b001.spf\r\n", None),
    (b"", None),
], ids=["with-guid-and-date", "upper-case", "names-another-image", "not-a-checksum", "empty"])
def test_sidecar_md5(line, expected):
    assert sidecar_md5(line, "C_VOL-b001.spf") == expected


def test_an_image_that_no_longer_matches_its_sidecar_is_not_published_and_raises_source_corrupt(site, start_agent):
    site.config(agent='rescan = "3s"')
    image = finished_file(site.source / "C_VOL-b001.spf", 3 * MiB)
    good = image.read_bytes()
    finished_file(site.source / "C_VOL-b001.md5", data=hashlib.md5(good).hexdigest().encode() + b" *C_VOL-b001.spf\r\n")
    st = image.stat()
    with open(image, "r+b") as f:  # bit rot after ShadowProtect wrote the sidecar: one byte flipped
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and time: only the bytes differ
    finished_file(site.source / "D_VOL-b001.spf", 1000)  # another chain goes on
    agent = start_agent()
    wait_until(lambda: "D_VOL-b001.spf" in site.target_files(), what="the other chain")
    items = wait_until(lambda: [i for i in json.loads(site.offsite("queue", "list", "--json").stdout)
                                if i["state"] == "failed"], what="the failed image")
    assert [(i["path"], i["last_error"]) for i in items] == [("C_VOL-b001.spf", CORRUPT)]
    assert set(site.target_files()) == {"D_VOL-b001.spf"}  # neither the image nor its sidecar
    staging = site.target / ".offsite" / "staging"
    # Nothing of the image is kept to resume from (its sidecar, staged meanwhile, waits behind it).
    assert sum(p.stat().st_size for p in staging.glob("*.part")) < 1000
    alerts = wait_until(lambda: site.job_status()["alerts"], what="the alert")
    assert [a["name"] for a in alerts] == ["source-corrupt"] and "C_VOL-b001.spf" in alerts[0]["message"]
    assert f"C_VOL-b001.spf: {CORRUPT}" in agent.output()
    # Restored from elsewhere (same bytes, size and time as the sidecar says) while the agent
    # is stopped: with it running, the write is itself a new version that it picks up alone.
    assert agent.stop() == 0
    image.write_bytes(good)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    agent = start_agent()
    wait_until(lambda: site.job_status()["state"] != "starting", what="the agent's first look")
    failed = [i["path"] for i in json.loads(site.offsite("queue", "list", "--json").stdout) if i["state"] == "failed"]
    assert failed == ["C_VOL-b001.spf"] and "C_VOL-b001.spf" not in site.target_files()  # waits for the retry
    r = site.offsite("queue", "retry", str(items[0]["id"]))
    assert r.returncode == 0, r.stderr
    wait_until(lambda: set(site.target_files()) == {"C_VOL-b001.spf", "C_VOL-b001.md5", "D_VOL-b001.spf"},
               what="the image sent after the retry")
    assert (site.target / "C_VOL-b001.spf").read_bytes() == good
    wait_until(lambda: site.job_status()["alerts"] == [], what="the alert to clear")
    assert agent.stop() == 0


def test_status_without_an_agent_shows_the_damaged_image_a_standalone_sync_met(site):
    """One status builder: `offsite status --json` with no agent running lists the
    source-corrupt alert the agent would raise, from what the standalone sync recorded."""
    site.config()
    image = finished_file(site.source / "C_VOL-b001.spf", 300_000)
    finished_file(site.source / "C_VOL-b001.md5", data=b"0" * 32 + b" *C_VOL-b001.spf\r\n")  # not its MD5
    finished_file(site.source / "D_VOL-b001.spf", 1000)
    r = site.offsite("sync", "job1")
    assert r.returncode == 1 and CORRUPT in r.stderr, r.stderr
    st = site.offsite("status", "--json")
    assert st.returncode == 1  # the last sync failed
    job = json.loads(st.stdout)["jobs"][0]
    assert [a["name"] for a in job["alerts"]] == ["source-corrupt"], job["alerts"]
    assert "C_VOL-b001.spf" in job["alerts"][0]["message"] and job["failed_files"] == 1
    assert image.exists() and set(site.target_files()) == {"D_VOL-b001.spf"}
    plain = site.offsite("status")
    assert "ALERT source-corrupt" in plain.stdout, plain.stdout


def test_a_big_file_is_hashed_on_its_own_thread_with_the_same_result():
    big = os.urandom(HashingReader.PIPELINE_FROM + 5 * MiB + 7)
    for start in (0, 3 * MiB):  # whole, and resumed
        r = HashingReader(io.BytesIO(big), len(big))
        assert r._hasher is not None
        r.seek(start)
        while r.read(1 << 20):
            pass
        assert r.hexdigest() == hashlib.md5(big).hexdigest()
        assert not r._hasher.is_alive()


@pytest.mark.parametrize("kind", ["sftp-proftpd", "s3"])
def test_a_staged_part_that_no_longer_matches_the_source_is_sent_again_not_published(kind, servers, site,
                                                                                     start_agent):
    """The server's own MD5 (SFTP check-file, S3 part ETags) against the bytes read from the
    source: an incremental (no sidecar) changed where it was already staged, keeping its size
    and time, is resumed by the agent, refused at publish and sent again whole."""
    server = servers.get(kind)
    loc = server.new_location()
    site.config(target=loc, agent='bandwidth = "4MB/s"', job='mode = "all"')
    name = "C_VOL-b001-i001-cd.spi"
    src = finished_file(site.source / name, 40 * MiB)
    agent = start_agent()
    wait_until(lambda: server.staged_bytes(loc) >= 16 * MiB, timeout=60, what="a part of the upload staged")
    assert agent.stop() == 0
    st = src.stat()
    data = bytearray(src.read_bytes())
    data[100] ^= 0xFF
    src.write_bytes(bytes(data))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    agent = start_agent()
    wait_until(lambda: name in server.listing(loc), timeout=120, what="the file published")
    assert agent.stop() == 0
    assert server.files(loc, "job1")[name] == bytes(data)
    log = (site.state / "logs" / "offsite.log").read_text()
    assert "does not match the bytes read from the source" in log and "Traceback" not in log
    last = site.job_status()["last_sync"]
    assert last["ok"] and last["files_sent"] == 1 and last["bytes_on_wire"] >= 40 * MiB  # sent whole again
