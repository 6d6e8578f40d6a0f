"""`offsite verify`: the offsite copy read back on every target type and compared with the
MD5 recorded when it was sent, and images with their .md5 sidecar."""
from __future__ import annotations

import hashlib
import json

import pytest
from conftest import finished_file, wait_until

MiB = 1024 * 1024
KINDS = ["local", "sftp", "smb", "ftp", "s3-seaweedfs", "ftp-proftpd", "sftp-proftpd"]
HASHING = {"ftp-proftpd", "sftp-proftpd"}  # servers that compute a file's MD5 when asked


def corrupt(server, loc, name: str) -> None:
    """Flip one byte of a published file, on the server's side."""
    if server.name.startswith("s3"):
        c, key = server.client(), f"{loc['prefix']}/job1/{name}"
        data = bytearray(c.get_object(Bucket=loc["bucket"], Key=key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        c.put_object(Bucket=loc["bucket"], Key=key, Body=bytes(data))
        return
    path = server._top(loc, "job1") / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", KINDS)
def test_verify_finds_exactly_the_corrupted_copy(kind, servers, site):
    server = servers.get("local" if kind == "local" else kind)
    loc = server.new_location()
    site.config(target=loc)
    image = finished_file(site.source / "C_VOL-b001.spf", 3 * MiB)
    md5 = hashlib.md5(image.read_bytes()).hexdigest().encode()
    finished_file(site.source / "C_VOL-b001.md5", data=md5 + b" *C_VOL-b001.spf\r\n")
    finished_file(site.source / "C_VOL-b001-i001-cd.spi", 200_000)
    r = site.offsite("sync", "job1")
    assert r.returncode == 0, r.stderr
    r = site.offsite("verify", "job1")
    assert r.returncode == 0 and "3 file(s) checked" in r.stdout and "0 bad" in r.stdout, r.stdout + r.stderr
    corrupt(server, loc, "C_VOL-b001-i001-cd.spi")
    r = site.offsite("verify", "job1", "--json")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["files_checked"] == 3
    if kind in HASHING:  # the server was asked; nothing was read back
        assert out["hashed_by_server"] == 3 and out["bytes_read"] == 0, out
    else:
        assert out["hashed_by_server"] == 0 and out["bytes_read"] >= 3 * MiB, out
    assert out["mismatches"] == [{"path": "C_VOL-b001-i001-cd.spi",
                                  "problem": "does not match the MD5 recorded when it was sent"}]
    assert server.files(loc, "job1")["C_VOL-b001-i001-cd.spi"] != (site.source / "C_VOL-b001-i001-cd.spi").read_bytes()
    r = site.offsite("verify", "job1")  # never changes the target: still bad, one line for it
    assert r.returncode == 1 and r.stdout.count("BAD ") == 1
    assert "job1: BAD C_VOL-b001-i001-cd.spi: does not match the MD5 recorded when it was sent" in r.stdout


def test_an_image_is_also_checked_against_its_sidecar_on_the_target(site):
    site.config()
    image = finished_file(site.source / "C_VOL-b001.spf", MiB)
    md5 = hashlib.md5(image.read_bytes()).hexdigest().encode()
    finished_file(site.source / "C_VOL-b001.md5", data=md5 + b" *C_VOL-b001.spf\r\n")
    assert site.offsite("sync", "job1").returncode == 0
    (site.state / "hashes.db").unlink()  # as if sent by a version that recorded no hashes
    for extra in ("hashes.db-wal", "hashes.db-shm"):
        (site.state / extra).unlink(missing_ok=True)
    r = site.offsite("verify", "job1")
    assert r.returncode == 0 and "2 sent before hashes were recorded" in r.stdout, r.stdout + r.stderr
    copy = site.target / "C_VOL-b001.spf"
    data = bytearray(copy.read_bytes())
    data[10] ^= 1
    copy.write_bytes(bytes(data))
    r = site.offsite("verify", "job1")
    assert r.returncode == 1 and "BAD C_VOL-b001.spf: does not match its .md5 sidecar on the target" in r.stdout


def test_verify_samples_and_filters_by_age(site):
    site.config()
    for i in range(1, 11):
        finished_file(site.source / f"C_VOL-b001-i{i:03d}-cd.spi", 1000)
    finished_file(site.source / "C_VOL-b001.spf", 1000)
    assert site.offsite("sync", "job1").returncode == 0
    r = site.offsite("verify", "job1", "--sample", "30", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["files_checked"] == 4  # ceil(11 * 30%)
    r = site.offsite("verify", "job1", "--since", "1h", "--json")
    assert json.loads(r.stdout)["files_checked"] == 11
    assert site.status()["jobs"][0]["last_verify"]["files_checked"] == 11
    r = site.offsite("verify", "job1", "--sample", "0")
    assert r.returncode == 2 and "--sample must be a percentage" in r.stderr


def test_verify_every_runs_in_the_agent_and_raises_verify_failed(site, start_agent):
    site.config(job='verify_every = "1h"')
    finished_file(site.source / "C_VOL-b001.spf", 300_000)
    assert site.offsite("sync", "job1").returncode == 0
    copy = site.target / "C_VOL-b001.spf"
    data = bytearray(copy.read_bytes())
    data[1234] ^= 0xFF
    copy.write_bytes(bytes(data))  # damaged on the target, same size: nothing else notices
    agent = start_agent()
    alerts = wait_until(lambda: site.job_status()["alerts"], what="the verify-failed alert")
    assert [a["name"] for a in alerts] == ["verify-failed"] and "C_VOL-b001.spf" in alerts[0]["message"]
    last = site.job_status()["last_verify"]
    assert last["files_checked"] == 1 and last["mismatches"][0]["path"] == "C_VOL-b001.spf"
    assert "verified 1 file(s) on the target" in agent.output()
    assert agent.stop() == 0
