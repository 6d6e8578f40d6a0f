"""What a standalone `offsite sync` costs before and after its work (issue 17), counted, not
timed: the modules it imports, and that its fast exit (os._exit once everything is written
and flushed, sparing Python's teardown of ~100,000 objects) loses nothing.

A short sync through a WAN spent more time starting and ending its process than moving its
files: the interpreter and imports 0.45 s, boto3's first client 0.1 s, the teardown after
main() 0.15-0.2 s.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Loaded by `offsite sync` to S3 before issue 17's start-up work, needed by none of it:
# boto3 and s3transfer (botocore is what the target uses), pyOpenSSL and cryptography
# (through urllib3.contrib.pyopenssl, which botocore imports only for a class name), the
# agent's service and psutil, notifications, the modules of the other commands.
NOT_NEEDED = ("boto3", "s3transfer", "OpenSSL", "cryptography", "urllib3.contrib.pyopenssl", "psutil",
              "offsite.agent.service", "offsite.notify", "offsite.cli.look", "offsite.cli.service")

# The command line as `python -m offsite` runs it, telling on stderr whether it ended by
# the fast exit, and (given a path) which modules it had loaded by then.
CHILD = """
import os, sys
real = os._exit
def fast(code, real=real):
    if os.environ.get("MODULES_TO"):
        with open(os.environ["MODULES_TO"], "w") as f:
            f.write("\\n".join(sorted(sys.modules)))
    sys.stderr.write("fast exit\\n")
    sys.stderr.flush()
    real(code)
os._exit = fast
sys.argv = ["offsite", *sys.argv[1:]]
import runpy
runpy.run_module("offsite", run_name="__main__")
"""


def offsite(cfg: Path, *args: str, modules: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODULES_TO": str(modules or "")}
    return subprocess.run([sys.executable, "-c", CHILD, "-c", str(cfg), *args], capture_output=True, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)


def small_files(folder: Path, n: int) -> dict[str, bytes]:
    out = {}
    for i in range(n):
        name = f"{('C_VOL', 'D_VOL')[i % 2]}-b001" + (f"-i{i // 2:03d}.spi" if i > 1 else ".spf")
        out[name] = os.urandom(10_000 + 1_000 * i)
        (folder / name).write_bytes(out[name])
        os.utime(folder / name, (time.time() - 60, time.time() - 60))
    return out


def test_a_standalone_sync_loads_only_what_it_needs_and_its_fast_exit_loses_nothing(site, servers, tmp_path):
    s3 = servers.get("s3-seaweedfs")
    location = s3.new_location()
    site.config(target=location, job='mode = "all"\ninclude_intra_daily = true', agent='log_level = "debug"')
    data = small_files(site.source, 12)

    loaded = tmp_path / "modules"
    r = offsite(site.cfg, "sync", "job1", "--json", modules=loaded)
    assert r.returncode == 0, r.stderr[-3000:]
    # Everything written and flushed before the exit: the answer on stdout (a pipe, so
    # block-buffered), the log (debug, to stderr) up to its last line, and the files.
    reply = json.loads(r.stdout)
    assert reply["ok"] and reply["result"]["files_sent"] == 12, reply
    assert r.stderr.endswith("fast exit\n"), r.stderr[-3000:]
    assert "reconciled" in r.stderr
    assert s3.listing(location) == {name: len(body) for name, body in data.items()}
    assert {k: v for k, v in s3.files(location, "job1").items() if not k.startswith(".offsite/")} == data

    modules = set(loaded.read_text().split())
    assert "botocore.client" in modules and "offsite.targets.s3" in modules  # it did run the sync
    assert not [m for m in NOT_NEEDED if m in modules]

    # The queue's state is durable: the next sync finds nothing to do, the queue is empty.
    again = offsite(site.cfg, "sync", "job1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "job1: ok: 0 sent" in again.stderr and again.stderr.endswith("fast exit\n")
    listed = offsite(site.cfg, "queue", "list", "--json")
    assert json.loads(listed.stdout) == []


def test_the_exit_waits_for_a_thread_still_at_work(tmp_path):
    """With a thread of its own still running, the command ends as Python ends: after it."""
    out = tmp_path / "done"
    code = f"""
import threading, time
from offsite.cli import exit_now
def late():
    time.sleep(0.3)
    open({str(out)!r}, "w").write("written")
threading.Thread(target=late).start()
exit_now(3)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr
    assert out.read_text() == "written"
