"""Target options against real servers: host keys, compression, UNC forms, S3 lock and classes."""
from __future__ import annotations

import datetime as dt
import io
import os

import pytest
from conftest import opened_target, toml_table

from offsite import config
from offsite.targets.s3 import MAX_PARTS, part_size
from offsite.targets.smb import parse_unc

MiB = 1024 * 1024


def target(tmp_path, opts: dict):
    return opened_target(tmp_path, opts, "mode = 'all'\n")


def roundtrip(t, name="C_VOL-b001.spf", data=b"x" * 1000):
    t.upload(name, io.BytesIO(data), len(data), 1_700_000_000_000_000_000, lambda n: None)
    t.publish(name, len(data), 1_700_000_000_000_000_000)
    assert t.list()[name].size == len(data)


def test_sftp_host_key_given_inline(servers, tmp_path):
    sftp = servers.get("sftp")
    loc = sftp.new_location()
    line = (sftp.base / "known_hosts").read_text().split()
    opts = {k: v for k, v in loc.items() if k != "known_hosts"} | {"host_key": f"{line[1]} {line[2]}"}
    t = target(tmp_path, opts)
    roundtrip(t)
    t.close()


def test_sftp_accept_new_host_key_remembers_it(servers, tmp_path):
    sftp = servers.get("sftp")
    known = tmp_path / "known_hosts"  # not there yet: a first run creates it
    t = target(tmp_path, sftp.new_location() | {"known_hosts": str(known), "accept_new_host_key": True})
    t.close()
    assert "ssh-ed25519" in known.read_text()
    t = target(tmp_path, sftp.new_location() | {"known_hosts": str(known)})  # now known: no flag needed
    t.close()


def test_sftp_with_compression(servers, tmp_path, monkeypatch):
    """compress = true: the SSH session agrees on zlib both ways, and what an upload writes
    goes through it (paramiko's compressor sees the file's bytes and sends far fewer);
    without the option, the session agrees on none."""
    from paramiko.compress import ZlibCompressor

    through = {"in": 0, "out": 0}
    compress = ZlibCompressor.__call__

    def counted(self, data: bytes) -> bytes:
        out = compress(self, data)
        through["in"] += len(data)
        through["out"] += len(out)
        return out

    monkeypatch.setattr(ZlibCompressor, "__call__", counted)
    sftp = servers.get("sftp")
    t = target(tmp_path, sftp.new_location() | {"compress": True})
    try:
        transport = t.client.get_transport()
        agreed = (transport.local_compression, transport.remote_compression)
        assert all(c in ("zlib@openssh.com", "zlib") for c in agreed), f"compress = true, yet the session agreed on {agreed}"
        roundtrip(t, data=b"x" * MiB)  # as compressible as a file gets
    finally:
        t.close()
    assert through["in"] >= MiB and through["out"] < through["in"] // 10, through
    plain = target(tmp_path, sftp.new_location())
    try:
        transport = plain.client.get_transport()
        assert (transport.local_compression, transport.remote_compression) == ("none", "none")
    finally:
        plain.close()


@pytest.mark.parametrize("user", ["WORKGROUP\\srvtest", "srvtest@WORKGROUP"])
def test_smb_backslash_unc_and_domain_forms(servers, tmp_path, user):
    smb = servers.get("smb")
    loc = smb.new_location()
    unc = loc["path"].replace("/", "\\")
    t = target(tmp_path, loc | {"path": unc, "username": user})
    roundtrip(t)
    t.close()


def test_unc_parsing():
    assert parse_unc(r"\\nas\backups\offsite\site1") == ("nas", "backups", "/offsite/site1")
    assert parse_unc("//nas/backups") == ("nas", "backups", "/")


def test_s3_object_lock_sets_retention_on_each_object(servers, tmp_path):
    weed = servers.get("s3-seaweedfs")
    loc = weed.new_location(lock=True) | {"object_lock_days": 3}
    t = target(tmp_path, loc)
    roundtrip(t, "small.spi")
    big = os.urandom(20 * MiB)  # a multipart upload
    roundtrip(t, "big.spf", big)
    c = weed.client()
    for key in ("small.spi", "big.spf"):
        head = c.head_object(Bucket=loc["bucket"], Key=f"backups/j/{key}")
        assert head["ObjectLockMode"] == "COMPLIANCE"
        until = head["ObjectLockRetainUntilDate"]
        assert dt.timedelta(days=2, hours=23) < until - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(days=3)
    t.close()


def test_s3_storage_class(servers, tmp_path):
    s3 = servers.get("s3")
    loc = s3.new_location() | {"storage_class": "STANDARD_IA"}
    t = target(tmp_path, loc)
    roundtrip(t)
    head = s3.client().head_object(Bucket=loc["bucket"], Key="backups/j/C_VOL-b001.spf")
    assert head["StorageClass"] == "STANDARD_IA"
    t.close()


def test_s3_stray_multipart_uploads_are_aborted(servers, tmp_path):
    s3 = servers.get("s3")
    loc = s3.new_location()
    c = s3.client()
    c.create_multipart_upload(Bucket=loc["bucket"], Key="backups/j/C_VOL-b001.spf")  # nobody's record
    c.create_multipart_upload(Bucket=loc["bucket"], Key="elsewhere/x")  # not this job's: left alone
    t = target(tmp_path, loc)
    t.tidy(set())  # at each reconciliation, with what is still queued to upload
    left = [u["Key"] for u in c.list_multipart_uploads(Bucket=loc["bucket"]).get("Uploads", [])]
    assert left == ["elsewhere/x"]
    t.close()


@pytest.mark.parametrize("size", [1, 16 * MiB, 100 * 1024**3, 2 * 1024**4, 5 * 1024**4])
def test_s3_parts_fit_the_largest_images(size):
    p = part_size(size)
    assert p >= 16 * MiB and p % MiB == 0 and -(-size // p) <= MAX_PARTS


def test_smb_one_job_closing_leaves_another_jobs_session_alone(servers, tmp_path):
    smb = servers.get("smb")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = target(tmp_path / "a", smb.new_location())
    b = target(tmp_path / "b", smb.new_location())
    a.close()
    roundtrip(b)  # b's session is still there
    b.close()


@pytest.mark.parametrize("kind, sse", [("s3", "AES256"), ("s3", "aws:kms"), ("s3-seaweedfs", "AES256")])
def test_s3_server_side_encryption_is_asked_for_on_every_object(servers, tmp_path, kind, sse):
    s3 = servers.get(kind)
    loc = s3.new_location() | {"sse": sse} | ({"sse_kms_key_id": "offsite-test-key"} if sse == "aws:kms" else {})
    t = target(tmp_path, loc)
    t.probe()  # what `offsite check` runs: the store must report the encryption asked for
    roundtrip(t, "C_VOL-b001-i001-cd.spi")
    roundtrip(t, "C_VOL-b001.spf", os.urandom(20 * MiB))  # a multipart upload
    t.write_owner("owner-1")
    t.close()
    c = s3.client()
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=loc["bucket"])["Contents"]]
    assert {"backups/j/C_VOL-b001.spf", "backups/j/C_VOL-b001-i001-cd.spi", "backups/j/.offsite/owner"} <= set(keys)
    for key in keys:  # every object offsite wrote, its own records included
        head = c.head_object(Bucket=loc["bucket"], Key=key)
        assert head.get("ServerSideEncryption") == sse, key
        if sse == "aws:kms":
            assert head.get("SSEKMSKeyId") == "offsite-test-key", key


def test_s3_a_store_that_refuses_the_encryption_fails_check_in_one_line(servers, tmp_path):
    weed = servers.get("s3-seaweedfs")
    loc = weed.new_location() | {"sse": "aws:kms", "sse_kms_key_id": "no-such-key"}
    (tmp_path / "src").mkdir()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(toml_table("t", loc) + f"\n[[jobs]]\nname = 'j'\nsource = '{tmp_path / 'src'}'\nlocation = 't'\n")
    os.chmod(cfg, 0o600)
    from conftest import run_offsite

    r = run_offsite(cfg, "check")
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("j: FAILED"))
    assert "aws:kms" in line and "no-such-key" in line


def test_s3_sse_kms_key_without_kms_is_a_config_error(servers, tmp_path):
    loc = servers.get("s3").new_location() | {"sse": "AES256", "sse_kms_key_id": "k"}
    with pytest.raises(config.ConfigError, match='sse_kms_key_id: applies to sse = "aws:kms" only'):
        target(tmp_path, loc)
