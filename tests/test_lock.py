"""The lock canary (issue 18): with `object_lock_days`, `offsite check` and the agent prove the
store holds the lock, against moto and SeaweedFS: a store that lets the canary be destroyed,
or will not lock it at all, fails `check` in one line and raises `lock-not-enforced`."""
from __future__ import annotations

import json
import signal

from conftest import locations_config, run_offsite, wait_until

CANARY = ".offsite/lock-canary"


def lock_location(server, lock: bool) -> dict:
    return server.new_location(lock=lock) | {"object_lock_days": 1}


def canary_versions(server, loc: dict, folder: str) -> list[dict]:
    key = f"{loc['prefix']}/{folder}/{CANARY}"
    listed = server.client().list_object_versions(Bucket=loc["bucket"], Prefix=key)
    return [v for v in listed.get("Versions", []) if v["Key"] == key]


def test_check_proves_the_lock_where_it_holds_and_fails_in_one_line_where_it_does_not(servers, tmp_path):
    moto, weed = servers.get("s3"), servers.get("s3-seaweedfs")
    (tmp_path / "src").mkdir()
    locs = {
        "weed-locked": lock_location(weed, True),
        "moto-locked": lock_location(moto, True),  # moto lets a COMPLIANCE retention be shortened
        "weed-unlocked": lock_location(weed, False),  # object_lock_days on a bucket made without lock
        "moto-unlocked": lock_location(moto, False),
        "moto-no-lock-asked": moto.new_location(),  # no object_lock_days: no canary
    }
    cfg = locations_config(tmp_path, locs)

    r = run_offsite(cfg, "check")
    print(r.stdout)  # what a user sees
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.strip().splitlines())
    assert set(lines) == set(locs)
    assert lines["weed-locked"].startswith("ok: ") and lines["weed-locked"].endswith(", object lock holds)")
    assert lines["moto-no-lock-asked"].startswith("ok: ") and "object lock" not in lines["moto-no-lock-asked"]
    store = {n: f"s3://{o['bucket']}/backups/{n}/ at {o['endpoint']}" for n, o in locs.items()}
    expect = {
        "moto-locked": f"{store['moto-locked']} allowed shortening a locked version's COMPLIANCE retention "
                       f"(the lock canary {CANARY})",
        "weed-unlocked": f"{store['weed-unlocked']} does not lock objects: it refused the lock canary written "
                         f"with COMPLIANCE retention",
        "moto-unlocked": f"{store['moto-unlocked']} does not lock objects: it refused the lock canary written "
                         f"with COMPLIANCE retention",
    }
    for name, said in expect.items():
        assert lines[name].startswith("FAILED: ") and "(lock-not-enforced): " + said in lines[name], lines[name]
    everything = r.stdout + r.stderr
    assert moto.secret_key not in everything and weed.secret_key not in everything

    # What is left: the locked version only (the overwrite's own version was deleted).
    left = canary_versions(weed, locs["weed-locked"], "weed-locked")
    assert len(left) == 1 and left[0]["IsLatest"]
    head = weed.client().head_object(Bucket=locs["weed-locked"]["bucket"], Key=left[0]["Key"])
    assert head["ObjectLockMode"] == "COMPLIANCE"

    r = run_offsite(cfg, "check", "weed-locked", "moto-locked", "moto-no-lock-asked", "--json")
    got = {x["job"]: x for x in json.loads(r.stdout)}
    assert got["weed-locked"]["ok"] and got["weed-locked"]["lock"] == {"ok": True, "problem": None}
    assert not got["moto-locked"]["ok"] and got["moto-locked"]["lock"]["ok"] is False
    assert "shortening" in got["moto-locked"]["lock"]["problem"]
    assert got["moto-no-lock-asked"]["lock"] is None
    assert len(canary_versions(weed, locs["weed-locked"], "weed-locked")) == 2  # a day's canaries, both locked


def lock_alert(site) -> dict | None:
    return next((a for a in site.job_status()["alerts"] if a["name"] == "lock-not-enforced"), None)


def test_the_agent_raises_lock_not_enforced_at_its_first_look_and_clears_it_when_the_lock_holds(
        site, start_agent, servers):
    moto, weed = servers.get("s3"), servers.get("s3-seaweedfs")
    loose = lock_location(moto, True)
    site.config(target=loose)
    agent = start_agent()
    alert = wait_until(lambda: lock_alert(site), timeout=60, what="lock-not-enforced")
    print(alert["message"])
    assert alert["message"].startswith(f"s3://{loose['bucket']}/backups/job1/ at {moto.endpoint} allowed shortening "
                                       f"a locked version's COMPLIANCE retention (the lock canary {CANARY}). ")
    lock = site.job_status()["lock"]
    assert lock["ok"] is False and lock["problem"] in alert["message"] and lock["checked"]
    assert moto.secret_key not in json.dumps(site.status())

    # A restart keeps the alert (the canary's result is in the state directory): not cleared
    # and raised again, and no second canary within the hour.
    assert agent.stop() == 0
    assert "ERROR job job1: the object lock does not hold: s3://" in agent.output()
    agent = start_agent()
    wait_until(lambda: site.job_status()["state"] == "idle", timeout=60, what="the agent idle")
    assert lock_alert(site) is not None and site.job_status()["lock"]["checked"] == lock["checked"]
    events = [e["kind"] for e in json.loads((site.state / "alerts.json").read_text())["history"]
              if e["alert"] == "lock-not-enforced"]
    assert events == ["start"]

    # The bucket replaced by one whose store holds the lock: its canary runs at once (the
    # last one proved another bucket), holds, and the alert clears.
    tight = lock_location(weed, True)
    site.config(target=tight)
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: (site.job_status().get("lock") or {}).get("ok") is True and lock_alert(site) is None,
               timeout=60, what="the lock proven and the alert cleared")
    assert len(canary_versions(weed, tight, "job1")) == 1
    assert agent.stop() == 0
    assert "the object lock does not hold" not in agent.output() and "the object lock holds" in agent.output()

    # Without an agent, status shows the last canary; a new agent does not make another
    # before its day is over.
    assert site.job_status()["lock"]["ok"] is True
    agent = start_agent()
    wait_until(lambda: site.job_status()["state"] == "idle", timeout=60, what="the agent idle")
    assert agent.stop() == 0
    assert len(canary_versions(weed, tight, "job1")) == 1


def strip_lock(request, **_) -> None:
    """A store that takes the lock headers and ignores them (as some S3-compatible stores do)."""
    for h in ("x-amz-object-lock-mode", "x-amz-object-lock-retain-until-date"):
        if h in request.headers:
            del request.headers[h]


def test_a_store_that_ignores_the_lock_headers_is_caught_by_what_it_allows(servers, tmp_path):
    from conftest import opened_target

    moto = servers.get("s3")
    versioned, plain = lock_location(moto, False), lock_location(moto, False)
    moto.client().put_bucket_versioning(Bucket=versioned["bucket"], VersioningConfiguration={"Status": "Enabled"})
    said = {}
    for name, loc in (("versioned", versioned), ("plain", plain)):
        (tmp_path / name).mkdir()
        t = opened_target(tmp_path / name, loc)
        t.client.meta.events.register_first("before-sign.s3.PutObject", strip_lock)
        try:
            said[name] = t.lock_canary()
        finally:
            t.client.meta.events.unregister("before-sign.s3.PutObject", strip_lock)
            t.close()
    where = f"s3://{versioned['bucket']}/backups/j/ at {moto.endpoint}"
    assert said["versioned"] == (f"{where} allowed an object written with COMPLIANCE retention to be kept without "
                                 f"it (it reports no retention) and deleting a locked version (the lock canary "
                                 f"{CANARY})")
    assert said["plain"] == (f"s3://{plain['bucket']}/backups/j/ at {moto.endpoint} allowed an overwrite of the "
                             f"lock canary ({CANARY}): it keeps no versions of an object written with COMPLIANCE "
                             f"retention, so nothing there can hold a lock")
    assert canary_versions(moto, versioned, "j") == []  # deleted: by the canary's own attempt
    assert moto.files(plain, "j") == {}  # unversioned: the canary removed
