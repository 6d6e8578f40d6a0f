"""The commands that look and change nothing: `check`, `status`, `plan`, `verify` and
`deleted`. Each parses nothing (cli/__init__.py did), calls what it needs, and prints."""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time

from ..agent import report
from ..agent.chains import preview
from ..agent.throttle import Throttle
from ..config import Config
from ..errors import (
    EXIT_FAILED,
    EXIT_OK,
    OffsiteError,
    OwnerMismatch,
    PermanentError,
    UsageError,
)
from ..owner import check_owner
from ..state import Hashes
from ..targets import make_target
from ..units import format_bytes, format_duration, parse_duration
from ..verify import record, verify
from ..watchers import SourceView
from .common import (
    ProgressBar,
    agent_answers,
    config_of,
    job_of,
    print_json,
    state_of,
)

log = logging.getLogger("offsite")


def cmd_check(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    state = state_of(cfg)
    jobs = [job_of(cfg, n) for n in args.jobs] if args.jobs else list(cfg.jobs)
    results, failed = [], False
    for job in jobs:
        line = {"job": job.name, "target": job.location.describe() + f" folder {job.folder}",
                "ok": False, "owner": "unknown", "error": None, "lock": None}
        try:
            target = make_target(job)
            target.open()
            try:
                target.probe()
                try:
                    line["owner"] = check_owner(target, state, job.name, claim=False)
                except OwnerMismatch:
                    line["owner"] = "mismatch"
                    raise
                if job.location.options.get("object_lock_days"):  # the lock canary (s3_lock.py)
                    problem = target.lock_canary()
                    line["lock"] = {"ok": problem is None, "problem": problem}
                    if problem:
                        raise PermanentError(f"the object lock does not hold (lock-not-enforced): {problem}")
            finally:
                target.close()
            line["ok"] = True
        except OffsiteError as e:
            line["error"] = str(e)
            failed = True
        results.append(line)
        if not args.json:
            if line["ok"]:
                owner = {"ok": "owner ID ok", "unset": "owner ID not written yet"}[str(line["owner"])]
                lock = ", object lock holds" if line["lock"] else ""
                print(f"{job.name}: ok: {line['target']} ({owner}{lock})")
            else:
                print(f"{job.name}: FAILED: {line['target']}: {line['error']}")
    if args.json:
        print_json(results)
    return EXIT_FAILED if failed else EXIT_OK


def _status_data(cfg: Config) -> dict:
    state = state_of(cfg)
    if agent_answers(state):
        for _ in range(20):  # just started: the first status.json is a moment away
            data = state.read_json("status.json", None)
            if data and data.get("agent", {}).get("running"):
                return data
            time.sleep(0.1)
    return report.offline(cfg, state, dt.datetime.now().astimezone())


def cmd_status(args: argparse.Namespace) -> int:
    cfg = config_of(args, check_sources=False)  # works while a source disk is unplugged
    data = _status_data(cfg)
    bad = any(j["state"] == "error" for j in data["jobs"])
    if args.json:
        print_json(data)
        return EXIT_FAILED if bad else EXIT_OK
    a = data["agent"]
    size = f", state {format_bytes(a['state_bytes'])}" if a.get("state_bytes") is not None else ""
    if a["running"]:
        print(f"agent: running, pid {a['pid']}, since {a['started']}, memory {format_bytes(a['rss_bytes'] or 0)}"
              f"{size}")
    else:
        print(f"agent: not running{size}")
    for x in a.get("alerts") or []:
        print(f"  ALERT {x['name']} since {x['since']}: {x['message']}")
    for j in data["jobs"]:
        extra = f", {j['failed_files']} failed" if j["failed_files"] else ""
        window = f", next window {j['next_window']}" if j.get("next_window") else ""
        lag = f", lag {format_duration(j['lag_seconds'])}" if j.get("lag_seconds") else ""
        print(f"{j['name']}: {j['state']}{lag}, {j['pending_files']} pending "
              f"({format_bytes(j['pending_bytes'])}){extra}{window}, owner {j['owner']}")
        t = j.get("transfer")
        if t:
            pct = 100 * t["done"] / t["total"] if t["total"] else 100
            rate = f", {format_bytes(t['rate'])}/s" if t.get("rate") else ""
            eta = f", {format_duration(t['eta'])} left" if t.get("eta") is not None else ""
            print(f"  sending {t['path']}: {format_bytes(t['done'])} of {format_bytes(t['total'])} "
                  f"({pct:.0f}%){rate}{eta}")
        b = j.get("backlog")
        if b and (b["pending_bytes"] or any(d["inflow_bytes"] or d["outflow_bytes"] for d in b["days"])):
            days = ", ".join(f"{d['date'][5:]} {format_bytes(d['inflow_bytes'])}/{format_bytes(d['outflow_bytes'])}"
                             for d in b["days"])
            print(f"  backlog: {b['forecast']}; in {format_bytes(b['inflow_bytes_per_day'])}/day (7 days), "
                  f"out {format_bytes(b['outflow_bytes_per_day'])}/day (24 h)")
            print(f"    in/out by day: {days}")
        for r in j.get("restorable") or []:
            when = ("nothing restorable offsite yet" if not r["point"] else f"{r['point']} (its time is not known)"
                    if r["time"] is None else f"{r['point']} of {r['time']}, {format_duration(r['age_seconds'])} old")
            base = "" if r.get("base_offsite", True) else " (its base is not replicated: taken as seeded)"
            missing = f"; the newest point at the source waits for {r['missing']}" if r.get("missing") else ""
            print(f"  restorable {r['chain']}: {when}{base}{missing}")
        lock = j.get("lock")
        if lock:
            print(f"  object lock: {'holds' if lock['ok'] else 'DOES NOT HOLD'} (lock canary of {lock['checked']})")
        for x in j.get("alerts") or []:
            print(f"  ALERT {x['name']} since {x['since']}: {x['message']}")
        if j.get("error"):
            print(f"  error: {j['error']}")
        if j.get("held_reason"):
            print(f"  held: {j['held_reason']}; run 'offsite sync {j['name']} --allow-deletes' to apply them")
        ls = j.get("last_sync")
        if ls:
            print(f"  last sync: {ls['started']} to {ls['finished']}: {'ok' if ls['ok'] else 'FAILED'}, "
                  f"{ls['files_sent']} sent ({format_bytes(ls['bytes_sent'])}), "
                  f"{ls['files_deleted']} deleted, {ls['files_skipped']} skipped")
            for err in ls.get("errors") or []:
                print(f"    {'retried after: ' if ls['ok'] else ''}{err}")
    return EXIT_FAILED if bad else EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    job = job_of(cfg, args.job)
    view = SourceView(job.source, cfg.agent.settle, job.family)
    view.scan(time.monotonic(), time.time_ns())
    target = make_target(job)
    target.open(create=False)
    try:
        listing = target.list()
    finally:
        target.close()
    p = preview(job, state_of(cfg), view, listing, target.foreign, target.keeps_mtime, target.case_sensitive)
    uploads, deletes = p.uploads, p.deletes
    sizes = {u: view.entries[u].size for u in uploads}
    if args.json:
        print_json({"job": job.name, "uploads": [{"path": u, "size": sizes[u]} for u in uploads],
                     "deletes": [{"path": d, "size": listing[d].size} for d in deletes],
                     "waiting": p.waiting, "held": p.held, "held_deletes": p.held_count,
                     "changed": p.changed})
        return EXIT_OK
    print(f"plan for job {job.name} ({target.describe()}):")
    for u in uploads:
        print(f"  upload {u} ({format_bytes(sizes[u])})")
    for d in deletes:
        print(f"  delete {d}")
    for w in p.waiting:
        print(f"  waiting {w} (still being written at the source)")
    for c in p.changed:
        print(f"  changed {c} (at the source since it was sent: not sent again; see source-changed)")
    if p.held:
        print(f"  held: {p.held}; 'offsite sync {job.name} --allow-deletes' applies them")
    print(f"{len(uploads)} upload(s), {format_bytes(sum(sizes.values()))}; {len(deletes)} deletion(s)")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    cfg = config_of(args, check_sources=False)
    job = job_of(cfg, args.job)
    state = state_of(cfg)
    if not 0 < args.sample <= 100:
        raise UsageError(f"--sample must be a percentage above 0 and at most 100 (got {args.sample:g})")
    try:
        since = parse_duration(args.since) if args.since else None
    except ValueError as e:
        raise UsageError(f"--since {e}") from None
    hashes = Hashes(state.root, readonly=True)
    recorded = hashes.of_job(job.name)
    hashes.close()
    target = make_target(job)
    target.open(create=False)
    throttle = Throttle(job.bandwidth or cfg.agent.bandwidth)
    bar = ProgressBar() if sys.stderr.isatty() and not args.json else None
    try:
        result = verify(target, job.family, recorded, args.sample, since, dt.datetime.now().astimezone(),
                        consume=throttle.consume, progress=bar.update if bar else None)
    finally:
        target.close()
        if bar:
            sys.stderr.write("\n")
    try:
        result = record(state, job.name, result)
    except OffsiteError:
        result = {"job": job.name, **result}  # a read-only state directory: the result is still printed
    bad, read, unrecorded = result["mismatches"], result["bytes_read"], result["unrecorded"]
    if args.json:
        print_json(result)
    else:
        for b in bad:
            print(f"{job.name}: BAD {b['path']}: {b['problem']}")
        by_server = result["hashed_by_server"]
        print(f"{job.name}: {result['files_checked']} file(s) checked, {format_bytes(read)} read"
              + (f", {by_server} hashed by the server" if by_server else "") + f", {len(bad)} bad"
              + (f", {unrecorded} sent before hashes were recorded (checked against sidecars only)" if unrecorded
                 else ""))
    return EXIT_FAILED if bad else EXIT_OK


def cmd_deleted(args: argparse.Namespace) -> int:
    cfg = config_of(args, check_sources=False)
    job = job_of(cfg, args.job)
    target = make_target(job)
    target.open(create=False)
    try:
        binned = sorted(target.bin_list(), key=lambda b: (b.day, b.path, b.version))
    finally:
        target.close()
    if args.json:
        print_json([{"path": b.path, "date": b.day, "size": b.size, "version": b.version} for b in binned])
        return EXIT_OK
    for b in binned:
        again = f"  (copy {b.version} of the day)" if b.version > 1 else ""
        print(f"{b.day}  {format_bytes(b.size):>10}  {b.path}{again}")
    print(f"{job.name}: {len(binned)} file(s) in the bin, {format_bytes(sum(b.size for b in binned))}; kept "
          f"{format_duration(job.keep_deleted) if job.keep_deleted is not None else 'not at all (keep_deleted off)'}",
          file=sys.stderr)
    return EXIT_OK
