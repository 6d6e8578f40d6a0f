"""`offsite check` against real servers: each failure is one line that says which and where."""
from __future__ import annotations

from conftest import locations_config, run_offsite
from servers import PASSWORD, free_port


def test_each_failure_is_one_clear_line_and_no_secret_shows(servers, tmp_path):
    sftp, ftp, ftps, smb, s3 = (servers.get(k) for k in ("sftp", "ftp", "ftps", "smb", "s3"))
    (tmp_path / "src").mkdir()
    empty_known = tmp_path / "known_hosts_empty"
    empty_known.write_text("")
    ro = smb.options(smb.root)
    ro["path"] = "//127.0.0.1/readonly"
    locs = {
        "ok-sftp": sftp.new_location(),
        "ok-s3": s3.new_location(),
        "unknown-host-key": {**sftp.new_location(), "known_hosts": str(empty_known)},
        "refused": {**sftp.new_location(), "port": free_port()},
        "missing-path": sftp.missing_location(sftp.new_location()),
        "wrong-password-ftp": {**ftp.new_location(), "password": "Wrong-Pass9"},
        "wrong-password-smb": {**smb.new_location(), "password": "Wrong-Pass9"},
        "untrusted-cert": {k: v for k, v in ftps.new_location().items() if k != "ca_file"},
        "missing-bucket": s3.missing_location(s3.new_location()),
        "read-only": ro,
    }
    cfg = locations_config(tmp_path, locs)

    r = run_offsite(cfg, "check")
    print(r.stdout)  # shown in the test log: what a user sees
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.strip().splitlines())
    assert set(lines) == set(locs)
    assert lines["ok-sftp"].startswith("ok: sftp root@127.0.0.1:")
    assert lines["ok-s3"].startswith("ok: s3 bucket ")
    expect = {
        "unknown-host-key": "the host key of 127.0.0.1:%d is unknown" % locs["unknown-host-key"]["port"],
        "refused": "the connection to 127.0.0.1:%d was refused" % locs["refused"]["port"],
        "missing-path": "the location path %s does not exist on sftp root@127.0.0.1" % locs["missing-path"]["path"],
        "wrong-password-ftp": "authentication failed for srvtest@127.0.0.1:%d" % ftp.port,
        "wrong-password-smb": "authentication failed for srvtest@127.0.0.1:%d" % smb.port,
        "untrusted-cert": "the TLS certificate of 127.0.0.1:%d could not be verified" % ftps.port,
        "missing-bucket": "the location (bucket) %s does not exist" % locs["missing-bucket"]["bucket"],
        "read-only": "access to the share //127.0.0.1/readonly is denied",
    }
    for name, text in expect.items():
        assert lines[name].startswith("FAILED: ") and text in lines[name], (name, lines[name])
    everything = r.stdout + r.stderr
    assert PASSWORD not in everything and "Wrong-Pass9" not in everything
    assert s3.secret_key not in everything
