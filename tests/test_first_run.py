"""The README's first command on a fresh clone (issue 18): packaging/install.sh puts a sample
managed folder in example/source (offsite/sample.py), and `offsite -c agent.toml run` on the
shipped agent.toml sends all of it at once and reports both chains restorable."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import wait_until

from offsite import sample
from offsite.backupfiles import Level, Role, classify, sidecar_md5

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0


def test_the_sample_is_two_shadowprotect_chains_with_real_sidecars(tmp_path):
    files = sample.write(tmp_path / "source", now=NOW)
    assert files is not None and len(files) == 24
    by_name = {p.name: p for p in files}
    levels: dict[str, list[Level]] = {}
    last_mtime: dict[str, float] = {}
    for p in files:  # in the order written: chain order, each image before its .md5
        f = classify(p.name, "auto")
        assert f is not None and f.family == "shadowprotect", p.name
        volume = p.name.split("-b001")[0]
        mtime = p.stat().st_mtime
        assert mtime >= last_mtime.get(volume, 0.0) and mtime < NOW - 3000, p.name  # settled, in order
        assert NOW - mtime < 26 * 3600, p.name  # younger than the example's max_lag: no alert
        last_mtime[volume] = mtime
        if f.role is Role.IMAGE:
            assert f.level is not None
            levels.setdefault(volume, []).append(f.level)
            assert 1024 <= p.stat().st_size <= 16 * 1024
            side = by_name[p.name[: p.name.rfind(".")] + ".md5"]
            text = side.read_bytes()
            assert sidecar_md5(text, p.name) == hashlib.md5(p.read_bytes()).hexdigest()
            assert re.fullmatch(rb"[0-9a-f]{32} \*\S+\r\n;\{[0-9A-F-]{36}\};\d{4}/\d\d/\d\d\r\n", text), text
            assert side.stat().st_mtime > mtime
    assert set(levels) == {"C_VOL", "D_VOL"}
    for lv in levels.values():
        assert lv == [Level.BASE, Level.INTRA, Level.INTRA, Level.DAILY, Level.WEEKLY, Level.INTRA]
    assert sum(p.stat().st_size for p in files) < 100 * 1024  # the first command stays instant


def test_the_sample_is_made_by_code_the_same_each_time_and_never_over_a_filled_folder(tmp_path):
    a, b = sample.plan(NOW), sample.plan(NOW + 86400 * 30)
    assert [(f.name, f.data) for f in a if not f.name.endswith(".md5")] == \
        [(f.name, f.data) for f in b if not f.name.endswith(".md5")]  # images: by name only
    assert sample.plan(NOW) == a
    folder = tmp_path / "source"
    folder.mkdir()
    (folder / "mine.txt").write_text("a user's file")
    assert sample.write(folder, now=NOW) is None
    assert [p.name for p in folder.iterdir()] == ["mine.txt"]
    r = subprocess.run([sys.executable, "-m", "offsite.sample", str(folder)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "already holds files: left as it is" in r.stderr
    if (ROOT / ".git").exists() and shutil.which("git"):
        r = subprocess.run(["git", "-C", str(ROOT), "ls-files", "example"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout == ""  # no sample committed: install.sh makes it


def _checkout(tmp_path: Path) -> Path:
    """What packaging/install.sh leaves in a fresh clone, less the venv: the shipped agent.toml,
    example/offsite-drive, and the sample written by the command install.sh runs."""
    here = tmp_path / "clone"
    here.mkdir()
    shutil.copy(ROOT / "agent.toml", here / "agent.toml")
    install = (ROOT / "packaging" / "install.sh").read_text()
    assert "mkdir -p example/offsite-drive" in install and "-m offsite.sample example/source" in install
    (here / "example" / "offsite-drive").mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "offsite.sample", "example/source"], cwd=here, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "wrote 24 files" in r.stderr, r.stderr
    return here


def test_the_first_command_sends_the_sample_at_once_and_both_chains_are_restorable(tmp_path):
    here = _checkout(tmp_path)
    source, target = here / "example" / "source", here / "example" / "offsite-drive" / "fileserver"
    log = open(tmp_path / "agent.log", "w")
    started = time.monotonic()
    agent = subprocess.Popen([sys.executable, "-m", "offsite", "-c", "agent.toml", "run"], cwd=here, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def status() -> dict:
            r = subprocess.run([sys.executable, "-m", "offsite", "-c", "agent.toml", "status", "--json"], cwd=here,
                               capture_output=True, text=True, timeout=60)
            return json.loads(r.stdout) if r.returncode == 0 else {}

        def restorable() -> list | None:
            jobs = status().get("jobs") or [{}]
            points = jobs[0].get("restorable") or []
            return points if len(points) == 2 and all(p["point"] for p in points) else None

        points = wait_until(restorable, timeout=30, interval=0.2, what="both chains restorable")
        took = time.monotonic() - started
        assert {p["chain"]: p["point"] for p in points} == {"C_VOL": "C_VOL-b001-i003.spi",
                                                             "D_VOL": "D_VOL-b001-i003.spi"}
        assert all(p["missing"] is None and p["base_offsite"] for p in points)
        assert all(3000 < p["age_seconds"] < 4000 for p in points)  # today's intra-daily, an hour old
        for p in source.iterdir():  # every sample file, intra-dailies included, byte for byte
            assert (target / p.name).read_bytes() == p.read_bytes(), p.name
        assert sorted(p.name for p in target.iterdir() if p.is_file()) == sorted(p.name for p in source.iterdir())
        r = subprocess.run([sys.executable, "-m", "offsite", "-c", "agent.toml", "status"], cwd=here,
                           capture_output=True, text=True, timeout=60)
        assert re.search(r"^  restorable C_VOL: C_VOL-b001-i003\.spi of \S+, 1h 0\dm old$", r.stdout, re.M), r.stdout
        assert "agent: running" in r.stdout and "ALERT" not in r.stdout
        agent.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
        assert agent.wait(20) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
        log.close()
    out = (tmp_path / "agent.log").read_text()
    assert "reconciled: 24 backup file(s) at the source, 0 on the target" in out, out
    assert "sync ok: 24 sent" in out and "sent C_VOL-b001.spf (16384 bytes)" in out, out
    assert " WARNING " not in out and " ERROR " not in out, out
    assert took < 20, f"{took:.1f} s to a restorable sample"


def test_the_readme_shows_what_the_sample_run_prints():
    """The walkthrough under the README's two commands quotes this sample's names."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = readme[: readme.index("## What offsite does")]
    assert first.splitlines()[2:6] == ["```sh", "bash packaging/install.sh && .venv/bin/offsite -c agent.toml run",
                                       "bash tests/run", "```"]
    names = {f.name for f in sample.plan(NOW)}
    quoted = set(re.findall(r"[CD]_VOL-b001[\w-]*\.(?:spf|spi|md5)", first))
    assert quoted and quoted <= names, quoted - names
    assert "restorable C_VOL:" in first and "offsite -c agent.toml check" in first


def test_the_first_command_from_a_fresh_clone(tmp_path):
    """The README's first command itself, `run` replaced by a bounded `sync`, on a clone of HEAD
    (about 2 minutes: install.sh makes a venv and installs from the package index; the suite's
    other workers go on meanwhile)."""
    clone = tmp_path / "clone"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the clone's own code only
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    r = subprocess.run(["bash", "packaging/install.sh"], cwd=clone, capture_output=True, text=True, timeout=900,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 24 files" in r.stderr
    r = subprocess.run([".venv/bin/offsite", "-c", "agent.toml", "sync", "fileserver"], cwd=clone,
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    source, target = clone / "example" / "source", clone / "example" / "offsite-drive" / "fileserver"
    assert len(list(source.iterdir())) == 24
    for p in source.iterdir():
        assert (target / p.name).read_bytes() == p.read_bytes(), p.name
    r = subprocess.run(["bash", "packaging/install.sh"], cwd=clone, capture_output=True, text=True, timeout=900,
                       env=env)
    assert r.returncode == 0 and "already holds files: left as it is" in r.stderr
