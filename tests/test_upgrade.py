"""Upgrades: the previous release's agent stopped mid-transfer with items queued, then this
version on the same state; an older agent on a newer state; and the wheel users install."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

from conftest import finished_file, wait_until

import offsite
from offsite.state import FORMAT

ROOT = Path(__file__).resolve().parent.parent
PREVIOUS = "30378ba"  # offsite 0.1.0: the last commit before the state format was recorded
MiB = 1024 * 1024


def previous_release(into: Path) -> Path:
    """The previous release's package, from this repository's history."""
    r = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS, "offsite"], capture_output=True, check=False)
    assert r.returncode == 0, f"offsite {PREVIOUS} is not in this clone's history: {r.stderr.decode()[:200]}"
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as t:
        t.extractall(into, filter="data")
    return into


def staged(site) -> int:
    d = site.target / ".offsite" / "staging"
    return sum(p.stat().st_size for p in d.glob("*.part")) if d.exists() else 0


def test_the_new_version_finishes_what_the_previous_one_left_queued_and_half_sent(site, start_agent, tmp_path):
    old = previous_release(tmp_path / "previous")
    site.config(agent='bandwidth = "4MB/s"')
    image = finished_file(site.source / "C_VOL-b001.spf", 40 * MiB)
    finished_file(site.source / "C_VOL-b001-i001-cd.spi", 2 * MiB)
    finished_file(site.source / "D_VOL-b001.spf", 3 * MiB)
    env = {**os.environ, "PYTHONPATH": str(old)}
    proc = subprocess.Popen([sys.executable, "-m", "offsite", "-c", str(site.cfg), "run"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert subprocess.run([sys.executable, "-c", "import offsite; print(offsite.__version__)"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, check=False).stdout.strip() == "0.1.0"
        wait_until(lambda: staged(site) > 18 * MiB, timeout=60, what="the old agent past a checkpoint of the image")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert not (site.state / "format.json").exists()  # a state of the previous format
    sent_before = dict(site.target_files())
    left = json.loads(site.offsite("queue", "list", "--json").stdout)
    assert "C_VOL-b001.spf" in {i["path"] for i in left}  # queued, half sent

    agent = start_agent()  # this version, on that state
    wait_until(lambda: len(site.target_files()) == 3, timeout=90, what="everything sent")
    wait_until(lambda: site.job_status()["pending_files"] == 0, what="the queue empty")
    st = site.job_status()
    assert agent.stop() == 0
    assert json.loads((site.state / "format.json").read_text())["format"] == FORMAT  # migrated in place
    files = site.target_files()
    assert files == {"C_VOL-b001.spf": 40 * MiB, "C_VOL-b001-i001-cd.spi": 2 * MiB, "D_VOL-b001.spf": 3 * MiB}
    assert (site.target / "C_VOL-b001.spf").read_bytes() == image.read_bytes()
    assert staged(site) == 0
    # Resumed, not restarted: less than the whole image went over the wire after the upgrade.
    sent_after = {p for p in files if p not in sent_before}
    assert "C_VOL-b001.spf" in sent_after and st["last_sync"]["bytes_on_wire"] < 40 * MiB + 5 * MiB - 16 * MiB
    assert "sent C_VOL-b001.spf" in agent.output() and agent.output().count("sent C_VOL-b001.spf") == 1


def test_an_older_agent_refuses_a_newer_state_in_one_line(site):
    site.config()
    assert site.offsite("sync", "job1").returncode == 0
    (site.state / "format.json").write_text(json.dumps({"format": FORMAT + 1, "written_by": "offsite 9.9.9"}))
    for args in (["run"], ["status"], ["queue", "list"], ["sync", "job1"]):
        r = site.offsite(*args, timeout=30)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and "written by a newer offsite (offsite 9.9.9" in r.stderr
        assert "upgrade offsite" in r.stderr and "Traceback" not in r.stderr


def test_the_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--sdist", "--outdir", str(dist), str(ROOT)],
                       capture_output=True, text=True, check=False, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    [wheel] = dist.glob("*.whl")
    assert wheel.name.startswith(f"offsite-{offsite.__version__}-") and list(dist.glob("*.tar.gz"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # Without PYTHONPATH: pip would take a checkout on it for offsite already installed.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
                       capture_output=True, text=True, check=False, timeout=900, env=clean)
    assert r.returncode == 0, r.stderr[-2000:]
    exe = venv / "bin" / "offsite"
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"offsite {offsite.__version__}"
    (ROOT / "example" / "source").mkdir(parents=True, exist_ok=True)
    (ROOT / "example" / "offsite-drive").mkdir(parents=True, exist_ok=True)
    state = tmp_path / "state"
    cfg = tmp_path / "agent.toml"  # the README's example, with its folders, and a state of its own
    text = (ROOT / "agent.toml").read_text().replace('state_dir = "example/state"', f'state_dir = "{state}"')
    cfg.write_text(text.replace('"example/', f'"{ROOT}/example/'))
    r = subprocess.run([str(exe), "-c", str(cfg), "check"], capture_output=True, text=True, check=False, cwd=tmp_path)
    assert r.returncode == 0 and "fileserver: ok" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([str(exe), "service", "install", "--dry-run"], capture_output=True, text=True, check=False,
                       cwd=tmp_path)  # the packaged example reaches the installed package
    assert r.returncode == 0 and f"ExecStart={exe} -c /etc/offsite/agent.toml run" in r.stdout
    assert "[[jobs]]" in r.stdout



def test_a_state_of_offsite_0_2_is_read_and_its_hash_records_kept(site, start_agent):
    """Format 1 -> 2: hashes.db gains the modification time of each file sent (what tells a
    file changed at the source); the records written before keep their MD5 for verify."""
    import sqlite3

    site.config()
    finished_file(site.source / "C_VOL-b001.spf", 100)
    site.state.mkdir()
    (site.state / "format.json").write_text(json.dumps({"format": 1, "written_by": "offsite 0.2.0"}))
    db = sqlite3.connect(site.state / "hashes.db")
    db.execute("CREATE TABLE published (job TEXT, path TEXT, size INTEGER, md5 TEXT, at REAL, PRIMARY KEY (job, path))")
    db.execute("INSERT INTO published VALUES ('job1', 'old.spf', 5, 'aa', 1.0)")
    db.commit()
    db.close()
    agent = start_agent()
    wait_until(lambda: "C_VOL-b001.spf" in site.target_files(), what="the copy")
    assert agent.stop() == 0
    assert json.loads((site.state / "format.json").read_text())["format"] == FORMAT
    db = sqlite3.connect(site.state / "hashes.db")
    rows = dict(((p, (md5, mtime)) for p, md5, mtime in db.execute("SELECT path, md5, mtime_ns FROM published")))
    db.close()
    assert rows["old.spf"] == ("aa", None)  # kept
    assert rows["C_VOL-b001.spf"][1] == (site.source / "C_VOL-b001.spf").stat().st_mtime_ns
