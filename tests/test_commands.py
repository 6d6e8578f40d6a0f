"""The queue, plan and check commands, with and without a running agent."""
from __future__ import annotations

import json
import os

from conftest import finished_file, wait_until

from offsite.queue import WorkQueue

CLOSED = 'windows = [{ days = ["mon"], start = "00:00", end = "00:01" }]'


def items(site):
    r = site.offsite("queue", "list", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def reconciliations(agent) -> int:
    """How many full looks (source walked, target listed, every group planned) the agent
    has logged so far."""
    return agent.output().count("job job1: reconciled: ")


def test_queue_commands_with_the_agent_running(site, start_agent):
    site.config(job=CLOSED, agent='rescan = "1s"')  # a full replan every second
    finished_file(site.source / "C_VOL-b001.spf", 100)
    finished_file(site.source / "C_VOL-b001-i001-cd.spi", 100)
    agent = start_agent()
    queued = wait_until(lambda: len(i := items(site)) == 2 and i, what="two queued items")
    assert {i["state"] for i in queued} == {"ready"} and {i["op"] for i in queued} == {"upload"}
    daily = next(i for i in queued if i["path"] == "C_VOL-b001-i001-cd.spi")

    r = site.offsite("queue", "show", str(daily["id"]), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["path"] == "C_VOL-b001-i001-cd.spi"
    assert site.offsite("queue", "list", "--state", "failed", "--json").stdout.strip() == "[]"

    r = site.offsite("queue", "drop", str(daily["id"]))
    assert r.returncode == 0 and "dropped item" in r.stderr
    # Replans do not bring it back: two full reconciliations logged after the drop (the
    # first may have been under way when the drop was made), each planning the volume anew.
    after_drop = reconciliations(agent)
    wait_until(lambda: reconciliations(agent) >= after_drop + 2, what="two replans after the drop")
    assert [i["path"] for i in items(site)] == ["C_VOL-b001.spf"]
    plan = json.loads(site.offsite("plan", "job1", "--json").stdout)
    assert [u["path"] for u in plan["uploads"]] == ["C_VOL-b001.spf"]

    base = items(site)[0]
    r = site.offsite("queue", "retry", str(base["id"]))
    assert r.returncode == 0 and "1 item(s) ready" in r.stderr
    r = site.offsite("queue", "retry", "999999")
    assert r.returncode == 2 and "no queue item with ID 999999" in r.stderr
    r = site.offsite("queue", "drop", "999999")
    assert r.returncode == 2 and "no queue item with ID 999999" in r.stderr
    assert agent.stop() == 0


def test_queue_commands_without_an_agent(site):
    site.config()
    site.state.mkdir()
    q = WorkQueue(site.state / "queue")
    a = q.put("job1", "upload", "C_VOL-b001.spf", 100, 1)
    q.lease(a.id)
    q.fail(a.id, "cannot read /x/C_VOL-b001.spf (Permission denied)")
    q.close()
    failed = json.loads(site.offsite("queue", "list", "--state", "failed", "--json").stdout)
    assert [(i["id"], i["last_error"]) for i in failed] == [(a.id, "cannot read /x/C_VOL-b001.spf (Permission denied)")]
    r = site.offsite("status", "--json")
    assert json.loads(r.stdout)["jobs"][0]["failed_files"] == 1
    r = site.offsite("queue", "retry", "--failed")
    assert r.returncode == 0 and "1 item(s) ready" in r.stderr
    assert [i["state"] for i in items(site)] == ["ready"]
    r = site.offsite("queue", "drop", str(a.id))
    assert r.returncode == 0 and items(site) == []


def test_plan_shows_uploads_and_deletions_without_doing_them(site):
    # settle 30 s: a process start on a loaded machine takes longer than the tests' usual 1 s
    site.config(job="include_intra_daily = true", agent='settle = "30s"')
    finished_file(site.source / "C_VOL-b001.spf", 1000)
    (site.source / "C_VOL-b001-i002-cd.spi").write_bytes(b"growing")  # not settled
    (site.target).mkdir()
    (site.target / "C_VOL-b001-i001.spi").write_bytes(b"old")  # gone at the source...
    for name in ("C_VOL-b001-i001-cd.spi", "C_VOL-b001-i001-cd.md5"):  # ...consolidated into a daily
        finished_file(site.source / name, data=b"daily")
        (site.target / name).write_bytes(b"daily")
    r = site.offsite("plan", "job1", "--json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["uploads"] == [{"path": "C_VOL-b001.spf", "size": 1000}]
    assert p["deletes"] == [{"path": "C_VOL-b001-i001.spi", "size": 3}]
    assert p["waiting"] == ["C_VOL-b001-i002-cd.spi"] and p["held"] is None
    r = site.offsite("plan", "job1")
    assert "upload C_VOL-b001.spf" in r.stdout and "delete C_VOL-b001-i001.spi" in r.stdout
    assert sorted(x.name for x in site.target.iterdir()) == ["C_VOL-b001-i001-cd.md5", "C_VOL-b001-i001-cd.spi",
                                                             "C_VOL-b001-i001.spi"]  # nothing done
    assert not site.state.exists()
    # A deletion no consolidation or retention explains is held, with its reason.
    (site.target / "C_VOL-b001-i009-cd.spi").write_bytes(b"x")
    p = json.loads(site.offsite("plan", "job1", "--json").stdout)
    assert p["deletes"] == [{"path": "C_VOL-b001-i001.spi", "size": 3}] and p["held_deletes"] == 1
    assert "C_VOL-b001-i009-cd is the newest restore point of its chain" in p["held"]


def test_check_reports_each_job_in_one_line(site):
    site.config(extra=f"""
[[jobs]]
name = "unplugged"
source = "{site.source}"
target = {{ type = "local", path = "{site.root / 'usb-not-mounted'}" }}
""")
    r = site.offsite("check")
    assert r.returncode == 1
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("job1: ok: local ") and "owner ID not written yet" in lines[0]
    assert lines[1].startswith("unplugged: FAILED: local ") and "usb-not-mounted does not exist" in lines[1]
    assert not (site.root / "usb-not-mounted").exists()
    r = site.offsite("check", "job1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["ok"] is True
    assert not list((site.target / ".offsite").glob("probe*"))  # the probe cleaned up after itself


def test_a_file_that_vanishes_before_it_is_sent_is_skipped_and_counted(site, start_agent):
    site.config(job=CLOSED)
    finished_file(site.source / "C_VOL-b001.spf", 100)
    finished_file(site.source / "C_VOL-b001-i001-cd.spi", 100)
    agent = start_agent()
    wait_until(lambda: len(items(site)) == 2, what="two queued items")
    (site.source / "C_VOL-b001-i001-cd.spi").unlink()  # ImageManager's retention got there first
    r = site.offsite("sync", "job1", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)["result"]
    assert (result["files_sent"], result["files_skipped"]) == (1, 1)
    assert site.target_files() == {"C_VOL-b001.spf": 100} and items(site) == []
    assert agent.stop() == 0


def test_a_dropped_upload_comes_back_in_the_plan_when_the_file_changes(site, start_agent):
    site.config(job=CLOSED)
    f = finished_file(site.source / "C_VOL-b001.spf", 100)
    agent = start_agent()
    item = wait_until(lambda: (i := items(site)) and i[0], what="the queued upload")
    assert site.offsite("queue", "drop", str(item["id"])).returncode == 0
    assert agent.stop() == 0
    uploads = lambda: [u["path"] for u in json.loads(site.offsite("plan", "job1", "--json").stdout)["uploads"]]  # noqa: E731
    assert uploads() == []  # dropped: the same version is not planned again
    finished_file(f, 200)  # a new version of the file
    assert uploads() == ["C_VOL-b001.spf"]


def test_sync_shows_a_progress_bar_on_a_terminal(site):
    import pty
    import subprocess
    import sys

    site.config()
    finished_file(site.source / "C_VOL-b001.spf", 3 * 1024 * 1024)
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "offsite", "-c", str(site.cfg), "sync", "job1"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        out += chunk
    assert p.wait(30) == 0
    os.close(master)
    text = out.decode("utf-8", "replace")
    assert "100% 3.0 MiB of 3.0 MiB C_VOL-b001.spf" in text and "[####################]" in text
    assert "job1: ok: 1 sent" in text
