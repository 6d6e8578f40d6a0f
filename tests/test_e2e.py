"""End to end: the real `offsite run` process against real folders.

Backups arrive in the source, the agent is watched, stopped, killed and restarted, and the
target is checked: what the mode selects arrives, nothing half-written shows under a final
name, chains become visible in order, and nothing is lost or duplicated.
"""
from __future__ import annotations

import datetime as dt
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

from conftest import Site, TargetWatcher, wait_until
from imagemanager import ImageManager, write_events

from offsite.selection import Rules, SourceFile, plan
from offsite.state import StateDir

MiB = 1024 * 1024


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def staged(site: Site) -> list[Path]:
    d = site.target / ".offsite" / "staging"
    return sorted(d.glob("*.part")) if d.exists() else []


def staged_size(site: Site) -> int:
    return sum(p.stat().st_size for p in staged(site))


def same_tree(site: Site, paths) -> bool:
    return all((site.target / p).is_file() and sha(site.target / p) == sha(site.source / p) for p in paths)


def expected_selection(site: Site, rules: Rules) -> list[str]:
    source = {p.relative_to(site.source).as_posix(): SourceFile(p.stat().st_size, 0)
              for p in site.source.rglob("*") if p.is_file()}
    return plan(source, {}, rules).uploads


def test_a_day_of_backups_arrives_complete_and_in_chain_order(site, start_agent):
    site.config(job='include_intra_daily = true\nmax_deletes = 1000')
    im = ImageManager(volumes=("C_VOL", "D_VOL"), base_size=6 * MiB, inc_size=96 * 1024)
    events = im.start() + im.run(dt.timedelta(days=1))
    final_sizes = {e.path: e.size for e in events if e.op == "create"}
    agent = start_agent()
    watcher = TargetWatcher(site.target_files, final_sizes)
    watcher.start()
    try:
        # A day of 15-minute backups, compressed: each image written in two halves.
        for i in range(0, len(events), 8):
            write_events(site.source, events[i:i + 8], pause=0.005)
        expected = expected_selection(site, Rules(mode="all", include_intra_daily=True))
        assert len(expected) == len(final_sizes) > 350
        wait_until(lambda: set(site.target_files()) == set(expected), timeout=120,
                   what="the target to hold the whole day")
    finally:
        watcher.stop.set()
        watcher.join()
    assert watcher.snapshots > 20
    assert watcher.problems == []
    assert same_tree(site, expected)
    assert agent.stop() == 0
    assert staged(site) == []


RECONCILED = re.compile(r"job job1: reconciled: (\d+) backup file\(s\) at the source, (\d+) on the target")


def looks(agent, since: int = 0) -> list[tuple[int, int]]:
    """The agent's full looks logged after the first `since` characters of its output: (backup
    files at the source, files on the target) for each."""
    return [(int(a), int(b)) for a, b in RECONCILED.findall(agent.output()[since:])]


def test_daily_only_mode_ends_with_base_and_dailies(site, start_agent):
    site.config(job='mode = "daily-only"', agent='rescan = "1s"')
    im = ImageManager(inc_size=1000)
    events = im.start() + im.run(dt.timedelta(days=3))
    write_events(site.source, events)
    agent = start_agent()
    expected = expected_selection(site, Rules(mode="daily-only"))
    assert set(expected) == {p for p in final_paths(events) if p.endswith("-cd.spi") or p.endswith("-cd.md5")
                             or p.startswith("C_VOL-b001.")}
    at_source = len(final_paths(events))
    assert at_source > len(expected)  # the intra-dailies the mode leaves alone are there too
    wait_until(lambda: set(site.target_files()) >= set(expected), what="dailies on the target")
    # Nothing else follows: a full look made after the last daily landed, that walked every
    # file at the source (intra-dailies included) and listed the target, planned every
    # group afresh and queued nothing.
    mark = len(agent.output())
    wait_until(lambda: looks(agent, mark), what="a full look after the dailies landed")
    assert looks(agent, mark)[0] == (at_source, len(expected))
    assert json.loads(site.offsite("queue", "list", "--json").stdout) == []
    assert set(site.target_files()) == set(expected)
    assert agent.stop() == 0


def final_paths(events) -> set[str]:
    present: set[str] = set()
    for e in events:
        (present.add if e.op == "create" else present.discard)(e.path)
    return present


def test_a_file_still_being_written_is_not_sent_before_it_is_complete(site, start_agent):
    site.config(agent='settle = "2s"', job="include_intra_daily = true")
    (site.source / "C_VOL-b001.spf").write_bytes(os.urandom(1000))
    agent = start_agent()
    wait_until(lambda: "C_VOL-b001.spf" in site.target_files(), what="the base")
    growing = site.source / "C_VOL-b001-i001.spi"
    seen_early = []
    with open(growing, "wb") as f:
        for _ in range(16):  # about 5 seconds of writing
            f.write(os.urandom(256 * 1024))
            f.flush()
            time.sleep(0.3)
            if "C_VOL-b001-i001.spi" in site.target_files():
                seen_early.append(f.tell())
    finished = time.monotonic()
    assert seen_early == []
    wait_until(lambda: "C_VOL-b001-i001.spi" in site.target_files(), what="the finished file")
    assert time.monotonic() - finished >= 1.5  # it waited for the settle period
    assert sha(site.target / "C_VOL-b001-i001.spi") == sha(growing)
    assert agent.stop() == 0


def test_sigkill_in_the_middle_of_a_large_copy_loses_and_duplicates_nothing(site, start_agent):
    site.config(agent='bandwidth = "25MB/s"')
    big = site.source / "C_VOL-b001.spf"
    big.write_bytes(os.urandom(150 * MiB))
    md5 = hashlib.md5(big.read_bytes()).hexdigest().encode()  # the image's own checksum, checked on the way
    (site.source / "C_VOL-b001.md5").write_bytes(md5 + b" *C_VOL-b001.spf\r\n")
    agent = start_agent()
    wait_until(lambda: staged_size(site) > 60 * MiB, timeout=60, what="the copy to be well under way")
    agent.kill()
    at_kill = staged_size(site)
    assert at_kill < big.stat().st_size
    assert site.target_files() == {}  # nothing under its final name
    items = json.loads(site.offsite("queue", "list", "--json").stdout)
    # The sidecar went to staging beside the image (parallel transfers) and waits for it.
    assert [(i["path"], i["state"]) for i in items] == [("C_VOL-b001.spf", "in-flight"),
                                                        ("C_VOL-b001.md5", "in-flight")]

    agent = start_agent()
    wait_until(lambda: set(site.target_files()) == {"C_VOL-b001.spf", "C_VOL-b001.md5"}, timeout=60,
               what="the copy to finish after the restart")
    assert same_tree(site, ["C_VOL-b001.spf", "C_VOL-b001.md5"])
    assert staged(site) == []
    last = wait_until(lambda: (ls := site.job_status()["last_sync"]) and ls["files_sent"] >= 1 and ls,
                      what="the completed sync's result")
    # Resumed from the last checkpoint (every 16 MiB), not from zero.
    assert last["ok"] and last["bytes_on_wire"] <= big.stat().st_size - at_kill + 17 * MiB + 100
    assert json.loads(site.offsite("queue", "list", "--json").stdout) == []
    t0 = time.monotonic()
    assert agent.stop() == 0 and time.monotonic() - t0 < 5


def test_queue_list_while_the_agent_works_does_not_disturb_it_and_sigterm_pauses(site, start_agent):
    # 12 s of transfer: five `queue list` processes fit in it on a loaded machine.
    site.config(agent='bandwidth = "4MB/s"')
    big = site.source / "C_VOL-b001.spf"
    big.write_bytes(os.urandom(48 * MiB))
    agent = start_agent()
    wait_until(lambda: staged_size(site) > 5 * MiB, what="the transfer to start")
    sizes = []
    for _ in range(5):
        r = site.offsite("queue", "list", "--json")
        assert r.returncode == 0
        items = json.loads(r.stdout)
        assert [(i["path"], i["state"], i["attempts"]) for i in items] == [("C_VOL-b001.spf", "in-flight", 1)]
        assert set(items[0]) >= {"id", "job", "op", "path", "size", "state", "attempts", "last_error",
                                 "enqueued", "next_attempt"}
        sizes.append(staged_size(site))
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # it went on, never restarted
    # SIGTERM: stop at a resumable point, quickly, exit 0
    t0 = time.monotonic()
    assert agent.stop() == 0
    assert time.monotonic() - t0 < 5
    paused_at = staged_size(site)
    assert 0 < paused_at < big.stat().st_size and site.target_files() == {}
    assert json.loads(site.offsite("queue", "list", "--json").stdout)[0]["state"] == "ready"
    agent = start_agent()
    wait_until(lambda: "C_VOL-b001.spf" in site.target_files(), what="the resumed transfer")
    last = wait_until(lambda: (ls := site.job_status()["last_sync"]) and ls["files_sent"] == 1 and ls,
                      what="the completed sync's result")  # not the interrupted one before it
    assert last["bytes_on_wire"] <= big.stat().st_size - paused_at + 1 * MiB
    assert sha(site.target / "C_VOL-b001.spf") == sha(big)
    assert agent.stop() == 0


def test_files_added_and_deleted_while_stopped_are_caught_up_at_start(site, start_agent):
    site.config()
    im = ImageManager(inc_size=2000)
    write_events(site.source, im.start() + im.run(dt.timedelta(days=2)))
    agent = start_agent()
    first = expected_selection(site, Rules())
    wait_until(lambda: set(site.target_files()) == set(first), what="the first sync")
    assert agent.stop() == 0
    # While the agent is down: two more days, and ImageManager deletes a daily.
    write_events(site.source, im.run(dt.timedelta(days=2)))
    gone = sorted(p for p in first if p.endswith("-cd.spi"))[0]
    (site.source / gone).unlink()
    (site.source / gone.replace(".spi", ".md5")).unlink()
    now_expected = expected_selection(site, Rules())
    assert set(now_expected) - set(first) and gone not in now_expected
    agent = start_agent()
    wait_until(lambda: set(site.target_files()) == set(now_expected), what="the catch-up at start")
    assert same_tree(site, now_expected)
    assert agent.stop() == 0


def test_a_target_owned_by_another_job_stops_the_job_until_reinit(site, start_agent):
    site.config()
    (site.source / "C_VOL-b001.spf").write_bytes(b"x" * 1000)
    agent = start_agent()
    wait_until(lambda: "C_VOL-b001.spf" in site.target_files(), what="the first file")
    assert agent.stop() == 0
    owner = site.target / ".offsite" / "owner"
    owner.write_text("someone-else:0123456789\n")
    (site.source / "C_VOL-b001-i001-cd.spi").write_bytes(b"y" * 1000)

    agent = start_agent()
    st = wait_until(lambda: (s := site.job_status())["state"] == "error" and s, what="the owner error")
    assert "target folder is owned by another job" in st["error"]
    assert "offsite reinit job1" in st["error"] and st["owner"] == "mismatch"
    r = site.offsite("status")
    assert r.returncode == 1 and "target folder is owned by another job" in r.stdout
    r = site.offsite("check")
    assert r.returncode == 1 and "job1: FAILED" in r.stdout and "owned by another job" in r.stdout
    time.sleep(1)
    assert "C_VOL-b001-i001-cd.spi" not in site.target_files()  # nothing written
    assert owner.read_text() == "someone-else:0123456789\n"  # nothing overwritten

    r = site.offsite("reinit", "job1")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: "C_VOL-b001-i001-cd.spi" in site.target_files(), what="the job to continue")
    assert site.job_status()["owner"] == "ok" and site.job_status()["error"] is None
    assert agent.stop() == 0


def test_a_mass_deletion_at_the_source_is_held_back_until_confirmed(site, start_agent):
    # Ten intra-dailies consolidated into a daily: deletions ImageManager explains, but more
    # of them than max_deletes (SPEC section 8 counts images, within 24 hours).
    site.config(job="max_deletes = 3\ninclude_intra_daily = true")
    intras = [f"C_VOL-b001-i{i:03d}" for i in range(1, 11)]
    (site.source / "C_VOL-b001.spf").write_bytes(b"b" * 100)
    for d in intras + ["C_VOL-b001-i010-cd"]:
        (site.source / f"{d}.spi").write_bytes(b"d" * 100)
        (site.source / f"{d}.md5").write_bytes(b"m" * 40)
    agent = start_agent()
    wait_until(lambda: len(site.target_files()) == 23, what="the first sync")
    for d in intras[:6]:
        (site.source / f"{d}.spi").unlink()
        (site.source / f"{d}.md5").unlink()
    st = wait_until(lambda: (s := site.job_status()).get("held_reason") and s, what="the deletions to be held")
    assert st["held_reason"] == "6 image deletions within 24 hours exceed max_deletes = 3" and st["state"] == "error"
    time.sleep(1.5)
    assert len(site.target_files()) == 23  # nothing deleted
    r = site.offsite("plan", "job1")
    assert "held: 6 image deletions within 24 hours exceed max_deletes = 3" in r.stdout

    r = site.offsite("sync", "job1", "--allow-deletes")
    assert r.returncode == 0, r.stderr
    assert "12 deleted" in r.stderr
    assert set(site.target_files()) == {p.name for p in site.source.iterdir()}
    assert site.job_status()["state"] == "idle"

    # A vanished source root is an error, never a mass deletion.
    shutil.rmtree(site.source)
    st = wait_until(lambda: (s := site.job_status())["state"] == "error" and s, what="the missing source")
    assert "source folder" in st["error"] and "missing" in st["error"]
    time.sleep(1.5)
    assert len(site.target_files()) == 11
    site.source.mkdir()
    st = wait_until(lambda: (s := site.job_status()).get("held_reason") and s, what="an empty source held")
    assert st["held_reason"] == "the source folder holds no backup files"
    assert len(site.target_files()) == 11
    assert agent.stop() == 0


def test_a_second_agent_on_the_same_state_directory_exits_3(site, start_agent):
    site.config()
    agent = start_agent()
    r = site.offsite("run", timeout=20)
    assert r.returncode == 3 and "another agent already holds the state directory" in r.stderr
    assert agent.stop() == 0


def test_status_and_sync_with_the_agent_running(site, start_agent):
    site.config(job='windows = [{ days = ["mon"], start = "00:00", end = "00:01" }]')
    (site.source / "C_VOL-b001.spf").write_bytes(b"x" * 5000)
    agent = start_agent()
    st = wait_until(lambda: (s := site.job_status())["pending_files"] == 1 and s, what="the item queued")
    assert st["state"] == "waiting" and st["next_window"] and st["pending_bytes"] == 5000
    assert site.target_files() == {}  # outside its window
    status = site.status()
    assert status["agent"]["running"] and status["agent"]["pid"] == agent.proc.pid
    assert status["agent"]["rss_bytes"] > 0 and status["agent"]["started"]
    r = site.offsite("sync", "job1")  # ignores the window; the agent does the work
    assert r.returncode == 0, r.stderr
    assert site.target_files() == {"C_VOL-b001.spf": 5000}
    last = site.job_status()["last_sync"]
    assert last["ok"] and last["files_sent"] == 1 and last["bytes_sent"] == 5000
    assert agent.stop() == 0
    r = site.offsite("status")
    assert r.returncode == 0 and "agent: not running" in r.stdout and "1 sent" in r.stdout


def test_sync_without_an_agent_and_sighup_reload(site, start_agent):
    # settle 30 s: a process start on a loaded machine takes longer than the tests' usual 1 s.
    site.config(job='windows = [{ days = ["mon"], start = "00:00", end = "00:01" }]',
                agent='rescan = "1s"\nsettle = "30s"')
    fresh = site.source / "C_VOL-b001.spf"
    fresh.write_bytes(b"x" * 5000)
    r = site.offsite("sync", "job1", "--json")  # written a moment ago: not settled yet
    assert r.returncode == 0 and json.loads(r.stdout)["waiting_files"] == 1
    assert "waiting_files" in r.stdout and site.target_files() == {}
    os.utime(fresh, (time.time() - 60, time.time() - 60))  # a finished backup
    r = site.offsite("sync", "job1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"]["files_sent"] == 1
    (site.source / "C_VOL-b001-i001-cd.spi").write_bytes(b"y" * 10)
    os.utime(site.source / "C_VOL-b001-i001-cd.spi", (time.time() - 60, time.time() - 60))  # finished
    agent = start_agent()

    def held_for_the_window() -> bool:
        # The agent (its own status) saw the new file settle and queued it, and it waits.
        assert "C_VOL-b001-i001-cd.spi" not in site.target_files(), "sent while its window is closed"
        st = site.status()
        job = st["jobs"][0]
        return st["agent"]["pid"] == agent.proc.pid and job["state"] == "waiting" and job["pending_files"] == 1

    wait_until(held_for_the_window, what="the new file queued and held for the window")
    mark = len(agent.output())
    wait_until(lambda: len(looks(agent, mark)) >= 2, what="two more full looks with the window closed")
    assert "C_VOL-b001-i001-cd.spi" not in site.target_files()  # window closed
    queued = json.loads(site.offsite("queue", "list", "--json").stdout)
    assert [(i["path"], i["state"], i["attempts"]) for i in queued] == [("C_VOL-b001-i001-cd.spi", "ready", 0)]
    site.config()  # no windows now
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "C_VOL-b001-i001-cd.spi" in site.target_files(), what="the reloaded config to apply")
    assert agent.stop() == 0
    assert "reloading the configuration" in agent.output()


def test_a_file_changed_while_it_is_sent_is_not_published_and_is_sent_again(site, start_agent):
    site.config(agent='bandwidth = "20MB/s"', job="include_intra_daily = true")
    f = site.source / "C_VOL-b001-i001.spi"
    f.write_bytes(os.urandom(40 * MiB))
    os.utime(f, (time.time() - 60, time.time() - 60))
    agent = start_agent()
    wait_until(lambda: staged_size(site) > 5 * MiB, what="the transfer to start")
    with open(f, "ab") as fh:
        fh.write(os.urandom(MiB))  # the writer was not done after all
    changed_at = time.monotonic()
    while time.monotonic() - changed_at < 2.5:
        assert site.target_files() == {}  # the copy in flight is never published
        time.sleep(0.05)
    wait_until(lambda: site.target_files().get("C_VOL-b001-i001.spi") == 41 * MiB, timeout=30,
               what="the settled file to be sent again")
    assert sha(site.target / "C_VOL-b001-i001.spi") == sha(f)
    assert "changed while it was sent" in agent.output()
    assert agent.stop() == 0


def test_status_probing_the_lock_never_turns_a_starting_agent_away(site, tmp_path):
    """`offsite status` tells whether an agent runs by taking the state lock for an instant;
    an agent starting at that instant waits for it (seen in the suite: exit 3 on a restart)."""
    site.config()
    state = site.state
    state.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from pathlib import Path
from offsite.system import FileLock
lock = FileLock(Path({str(state / 'agent.lock')!r}))
assert lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[1]))
""", "0.8"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    mine = StateDir(state)
    assert mine.take_lock("sync")  # held by the other process for 0.8 s more: waited for
    assert holder.wait(10) == 0
    assert mine.holder() == {"kind": "sync", "pid": os.getpid()}
    mine.lock.release()
