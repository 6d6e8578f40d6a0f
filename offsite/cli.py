"""The `offsite` command: argument parsing, one top-level error handler, the commands.

Every user error is an OffsiteError and prints as one line with its exit code; only an
unexpected error prints a traceback. JSON goes to stdout, messages to stderr.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import __version__, logs, notify
from . import config as config_mod
from .agent import control
from .agent.job import JobRunner, Request
from .agent.service import Agent
from .agent.throttle import Throttle
from .alerts import Book
from .config import Config, Job
from .errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, LockedError, OffsiteError, UsageError
from .queue import WorkQueue, read_items, summary
from .selection import Rules, Sent, plan, without_dropped
from .state import Hashes, StateDir
from .targets import make_target
from .units import format_bytes, format_duration, parse_duration
from .verify import verify
from .watchers import SourceView
from .windows import next_opening

log = logging.getLogger("offsite")


def main(argv: list[str] | None = None) -> int:
    # Everything offsite creates (state, logs, the queue database, local copies of backup
    # images) is readable by its owner only.
    os.umask(0o077)
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except OffsiteError as e:
        print(f"offsite: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("offsite: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (offsite status | head): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _usage(p: argparse.ArgumentParser):
    """A command group given no action: its help, exit 2."""
    def show(_args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return EXIT_USAGE

    return show


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="offsite", description="Replicate backup images offsite.")
    p.add_argument("--version", action="version", version=f"offsite {__version__}")
    p.add_argument("-c", "--config", metavar="PATH", help="agent.toml (default: $OFFSITE_CONFIG, ./agent.toml, system location)")
    sub = p.add_subparsers(metavar="COMMAND")

    def cmd(name: str, func, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    cmd("run", cmd_run, "run the agent in the foreground")
    sp = cmd("check", cmd_check, "validate the config and test each job's target")
    sp.add_argument("jobs", nargs="*", metavar="JOB")
    sp.add_argument("--json", action="store_true")
    sp = cmd("status", cmd_status, "is the agent running, and how is each job doing")
    sp.add_argument("--json", action="store_true")
    sp = cmd("sync", cmd_sync, "run a job now, ignoring its window; returns when it is idle")
    sp.add_argument("job", metavar="JOB")
    sp.add_argument("--allow-deletes", action="store_true", help="apply deletions held back for confirmation")
    sp.add_argument("--accept-changes", action="store_true",
                    help="send files changed at the source after they were sent (source-changed); their offsite "
                         "copies go to the bin")
    sp.add_argument("--json", action="store_true")
    sp = cmd("plan", cmd_plan, "show what would be sent and deleted, without doing it")
    sp.add_argument("job", metavar="JOB")
    sp.add_argument("--json", action="store_true")
    sp = cmd("reinit", cmd_reinit, "take over a target folder whose owner ID belongs to someone else")
    sp.add_argument("job", metavar="JOB")
    sp = cmd("deleted", cmd_deleted, "list the bin: files deleted or replaced on the target, kept for keep_deleted")
    sp.add_argument("job", metavar="JOB")
    sp.add_argument("--json", action="store_true")
    sp = cmd("undelete", cmd_undelete, "put files of the bin back under their names on the target (never over a "
             "file that is there)")
    sp.add_argument("job", metavar="JOB")
    sp.add_argument("paths", nargs="+", metavar="PATH", help="relative paths, as 'offsite deleted' lists them")
    sp.add_argument("--date", metavar="YYYY-MM-DD", help="the day the file went to the bin (default: the newest)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("verify", cmd_verify, "read the offsite copy back and compare it with the hashes recorded when it was "
             "sent, and images with their .md5; changes nothing")
    sp.add_argument("job", metavar="JOB")
    sp.add_argument("--sample", type=float, default=100.0, metavar="PERCENT", help="check this share of the files")
    sp.add_argument("--since", metavar="AGE", help="only files published within this long (30m, 12h, 7d)")
    sp.add_argument("--json", action="store_true")

    sv = sub.add_parser("service", help="install offsite as a system service (systemd, Windows)",
                        description="install offsite as a system service (systemd, Windows)")
    svs = sv.add_subparsers(metavar="ACTION")
    sv.set_defaults(func=_usage(sv))
    sp = svs.add_parser("install", help="install, enable and start the service")
    sp.set_defaults(func=cmd_service_install)
    sp.add_argument("--dry-run", action="store_true", help="print every file and command instead")
    sp.add_argument("--account", help="Windows: the account the service runs as (default LocalSystem)")
    sp.add_argument("--password", help="Windows: that account's password")
    sp = svs.add_parser("uninstall", help="stop and remove the service (the state and config stay)")
    sp.set_defaults(func=cmd_service_uninstall)
    sp.add_argument("--purge", action="store_true", help="also remove the state directory and agent.toml")
    sp = svs.add_parser("status", help="the service manager's view of the service")
    sp.set_defaults(func=cmd_service_status)
    sp = svs.add_parser("run", help="Windows: what the service manager starts (not run by hand)")
    sp.set_defaults(func=cmd_service_run)

    n = sub.add_parser("notify", help="notifications", description="notifications")
    ns = n.add_subparsers(metavar="ACTION")
    n.set_defaults(func=_usage(n))
    sp = ns.add_parser("test", help="send a test message to every destination and ping the heartbeat")
    sp.set_defaults(func=cmd_notify_test)

    q = sub.add_parser("queue", help="inspect and steer the queue", description="inspect and steer the queue")
    qs = q.add_subparsers(metavar="ACTION")
    q.set_defaults(func=_usage(q))
    sp = qs.add_parser("list", help="list queued items")
    sp.set_defaults(func=cmd_queue_list)
    sp.add_argument("--job")
    sp.add_argument("--state", choices=("ready", "in-flight", "failed"))
    sp.add_argument("--json", action="store_true")
    sp = qs.add_parser("show", help="show one item")
    sp.set_defaults(func=cmd_queue_show)
    sp.add_argument("id", type=int, metavar="ID")
    sp.add_argument("--json", action="store_true")
    sp = qs.add_parser("retry", help="make an item, or every failed item, ready now")
    sp.set_defaults(func=cmd_queue_retry)
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("id", type=int, nargs="?", metavar="ID")
    g.add_argument("--failed", action="store_true")
    sp = qs.add_parser("drop", help="remove an item and do not queue that operation again")
    sp.set_defaults(func=cmd_queue_drop)
    sp.add_argument("id", type=int, metavar="ID")
    return p


# ------------------------------------------------------------------ helpers


def _config(args: argparse.Namespace, check_sources: bool = True) -> Config:
    path = Path(args.config) if args.config else config_mod.default_config_path()
    return config_mod.load(path, check_sources)


def _job(cfg: Config, name: str) -> Job:
    job = cfg.job(name)
    if job is None:
        raise UsageError(f"no job named {name!r} in {cfg.path} (jobs: {', '.join(j.name for j in cfg.jobs)})")
    return job


def _state(cfg: Config) -> StateDir:
    """The state directory, refused in one line when a newer offsite wrote it."""
    state = StateDir(cfg.agent.state_dir)
    state.format(write=False)
    return state


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _ask_agent(state: StateDir, request: dict) -> dict:
    rid = state.submit(request)
    return state.wait_reply(rid)


class _Writer:
    """Hold the state directory's lock for a command that changes state without an agent."""

    def __init__(self, cfg: Config) -> None:
        self.state = _state(cfg)
        self.queue: WorkQueue | None = None

    def __enter__(self) -> "_Writer":
        self.state.ensure()
        if not self.state.take_lock("sync"):
            holder = self.state.holder()
            raise LockedError(
                f"another offsite process (pid {holder.get('pid', '?')}) holds the state directory "
                f"{self.state.root}; try again when it is done"
            )
        self.queue = WorkQueue(self.state.queue_dir)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.queue is not None:
            self.queue.close()
        self.state.lock.release()


def _agent_answers(state: StateDir) -> bool:
    """An agent (not a standalone sync) holds the lock and reads the mailbox."""
    return state.agent_running() and state.holder().get("kind") == "agent"


# ------------------------------------------------------------------ commands


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    logs.to_stderr(cfg.agent.log_level)
    agent = Agent(cfg)
    code = agent.run()
    if agent.watch is not None and agent.watch.delivering():
        # A destination still holds a delivery open: Python would wait for Apprise's worker
        # threads at exit (concurrent.futures joins them), and a hanging server must never
        # hold up the agent's stop. Everything of ours is closed and logged by now.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _config(args)
    state = _state(cfg)
    jobs = [_job(cfg, n) for n in args.jobs] if args.jobs else list(cfg.jobs)
    results, failed = [], False
    for job in jobs:
        line = {"job": job.name, "target": job.location.describe() + f" folder {job.folder}",
                "ok": False, "owner": "unknown", "error": None}
        try:
            target = make_target(job)
            target.open()
            try:
                target.probe()
                theirs, mine = target.read_owner(), state.owner_id(job.name)
            finally:
                target.close()
            if theirs is None:
                line["owner"] = "unset"
            elif theirs == mine:
                line["owner"] = "ok"
            else:
                line["owner"] = "mismatch"
                raise OffsiteError(
                    f"target folder is owned by another job; run 'offsite reinit {job.name}' to take it over"
                )
            line["ok"] = True
        except OffsiteError as e:
            line["error"] = str(e)
            failed = True
        results.append(line)
        if not args.json:
            if line["ok"]:
                owner = {"ok": "owner ID ok", "unset": "owner ID not written yet"}[str(line["owner"])]
                print(f"{job.name}: ok: {line['target']} ({owner})")
            else:
                print(f"{job.name}: FAILED: {line['target']}: {line['error']}")
    if args.json:
        _print_json(results)
    return EXIT_FAILED if failed else EXIT_OK


def _status_data(cfg: Config) -> dict:
    state = _state(cfg)
    if _agent_answers(state):
        for _ in range(20):  # just started: the first status.json is a moment away
            data = state.read_json("status.json", None)
            if data and data.get("agent", {}).get("running"):
                return data
            time.sleep(0.1)
    queue_error = None
    try:
        items = read_items(state.queue_dir)
    except OffsiteError as e:  # status must still answer when the queue is unreadable
        items, queue_error = [], str(e)
    results = state.read_json("results.json", {})
    book = Book.of(state.read_json("alerts.json", {}))
    verified = state.read_json("verify.json", {})
    now = dt.datetime.now().astimezone()
    jobs = []
    for job in cfg.jobs:
        last = results.get(job.name)
        next_window = next_opening(job.windows, now)
        mine = [i for i in items if i.job == job.name]
        oldest = min((i.mtime_ns for i in mine if i.op == "upload" and i.mtime_ns), default=None)
        jobs.append({
            "name": job.name,
            "state": "error" if last and not last.get("ok") else "idle",
            **summary(mine),
            "next_window": next_window.isoformat(timespec="seconds") if next_window else None,
            "owner": "ok" if state.owner_id(job.name) else "unset",
            "error": queue_error,
            "last_sync": last,
            "lag_seconds": round(max(0.0, now.timestamp() - oldest / 1e9), 1) if oldest else 0.0,
            "transfer": None,
            "alerts": book.of_job(job.name),
            "last_verify": verified.get(job.name) if isinstance(verified, dict) else None,
        })
        if queue_error:
            jobs[-1]["state"] = "error"
    return {"agent": {"running": False, "pid": None, "started": None, "rss_bytes": None,
                      "alerts": book.of_job(""), "state_bytes": state.size_bytes()},
            "jobs": jobs, "queue_error": queue_error}


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _config(args, check_sources=False)  # works while a source disk is unplugged
    data = _status_data(cfg)
    bad = any(j["state"] == "error" for j in data["jobs"])
    if args.json:
        _print_json(data)
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


def _service_config(args: argparse.Namespace) -> tuple[Path, Config | None, Path]:
    """(agent.toml of the service, its config when it reads, the state directory)."""
    path = Path(args.config) if args.config else config_mod.system_config_path()
    from .install import EXAMPLE

    try:  # a missing agent.toml is written from the example: the unit is made for that
        cfg = config_mod.load(path if path.exists() else EXAMPLE, check_sources=False)
    except OffsiteError:
        cfg = None  # the install's own check says what is wrong with it
    return path, cfg, Path(cfg.agent.state_dir) if cfg else config_mod.default_state_dir()


def cmd_service_install(args: argparse.Namespace) -> int:
    path, cfg, state_dir = _service_config(args)
    if os.name == "nt":  # pragma: no cover - exercised with fakes in tests/test_windows_service.py
        from .install import windows

        return windows.install(path, state_dir, args.account, args.password, args.dry_run)
    from .install import linux, offsite_command

    return linux.install(offsite_command(), path, cfg, state_dir, args.dry_run)


def cmd_service_uninstall(args: argparse.Namespace) -> int:
    path, _cfg, state_dir = _service_config(args)
    if os.name == "nt":  # pragma: no cover
        from .install import windows

        return windows.uninstall(args.purge, state_dir, path)
    from .install import linux

    return linux.uninstall(args.purge, state_dir, path)


def cmd_service_run(args: argparse.Namespace) -> int:
    if os.name != "nt":
        raise UsageError("'offsite service run' is what the Windows service manager starts; use 'offsite run'")
    from .install import windows  # pragma: no cover

    return windows.host(Path(args.config) if args.config else config_mod.system_config_path())  # pragma: no cover


def cmd_service_status(args: argparse.Namespace) -> int:
    if os.name == "nt":  # pragma: no cover
        from .install import windows

        return windows.status()
    from .install import linux

    return linux.status()


def cmd_verify(args: argparse.Namespace) -> int:
    cfg = _config(args, check_sources=False)
    job = _job(cfg, args.job)
    state = _state(cfg)
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
    bar = _ProgressBar() if sys.stderr.isatty() and not args.json else None
    try:
        result = verify(target, job.family, recorded, args.sample, since, dt.datetime.now().astimezone(),
                        consume=throttle.consume, progress=bar.update if bar else None)
    finally:
        target.close()
        if bar:
            sys.stderr.write("\n")
    result = {"job": job.name, **result}
    bad, read, unrecorded = result["mismatches"], result["bytes_read"], result["unrecorded"]
    try:
        state.update_json("verify.json", lambda d: d.__setitem__(job.name, result))
    except OffsiteError:
        pass  # a read-only state directory: the result is still printed
    if args.json:
        _print_json(result)
    else:
        for b in bad:
            print(f"{job.name}: BAD {b['path']}: {b['problem']}")
        by_server = result["hashed_by_server"]
        print(f"{job.name}: {result['files_checked']} file(s) checked, {format_bytes(read)} read"
              + (f", {by_server} hashed by the server" if by_server else "") + f", {len(bad)} bad"
              + (f", {unrecorded} sent before hashes were recorded (checked against sidecars only)" if unrecorded
                 else ""))
    return EXIT_FAILED if bad else EXIT_OK


def cmd_notify_test(args: argparse.Namespace) -> int:
    cfg = _config(args, check_sources=False)
    n = cfg.notify
    if not n.urls and n.heartbeat_url is None:
        print(f"offsite: {cfg.path}: no [notify] urls or heartbeat_url to test", file=sys.stderr)
        return EXIT_USAGE
    failed = False
    for what, why in notify.test_all(n, socket.gethostname()):
        print(f"{what}: ok" if why is None else f"{what}: FAILED: {why}")
        failed |= why is not None
    return EXIT_FAILED if failed else EXIT_OK


def cmd_queue_list(args: argparse.Namespace) -> int:
    cfg = _config(args, check_sources=False)  # works while a source disk is unplugged
    if args.job:
        _job(cfg, args.job)
    items = [i for i in read_items(_state(cfg).queue_dir)
             if (not args.job or i.job == args.job) and (not args.state or i.state == args.state)]
    if args.json:
        _print_json([i.to_json() for i in items])
        return EXIT_OK
    for i in items:
        err = f"  last error: {i.last_error}" if i.last_error else ""
        print(f"{i.id:>6} {i.job} {i.op:<6} {i.state:<9} {i.attempts} {i.path}{err}")
    if not items:
        print("the queue is empty", file=sys.stderr)
    return EXIT_OK


def cmd_queue_show(args: argparse.Namespace) -> int:
    cfg = _config(args, check_sources=False)  # works while a source disk is unplugged
    item = next((i for i in read_items(_state(cfg).queue_dir) if i.id == args.id), None)
    if item is None:
        raise UsageError(f"no queue item with ID {args.id}")
    if args.json:
        _print_json(item.to_json())
    else:
        for k, v in item.to_json().items():
            print(f"{k}: {v}")
    return EXIT_OK


def _queue_change(cfg: Config, request: dict) -> dict:
    state = _state(cfg)
    if _agent_answers(state):
        reply = _ask_agent(state, request)
        if not reply.get("ok"):
            raise UsageError(reply.get("error") or "the agent refused")
        return reply
    with _Writer(cfg) as w:
        assert w.queue is not None
        if request["op"] == "retry":
            return {"ok": True, "items": [i.id for i in control.retry(w.queue, w.state, request["ids"])]}
        return {"ok": True, "item": control.drop(w.queue, w.state, request["id"]).to_json()}


def cmd_queue_retry(args: argparse.Namespace) -> int:
    cfg = _config(args, check_sources=False)  # works while a source disk is unplugged
    reply = _queue_change(cfg, {"op": "retry", "ids": None if args.failed else [args.id]})
    print(f"{len(reply['items'])} item(s) ready to run again", file=sys.stderr)
    if args.failed:
        changed = [i for i in read_items(_state(cfg).queue_dir) if i.cause == "source-changed"]
        if changed:
            print(f"{len(changed)} file(s) changed at the source after they were sent were left as they are "
                  f"(source-changed): 'offsite queue retry ID' or 'offsite sync JOB --accept-changes' sends them",
                  file=sys.stderr)
    return EXIT_OK


def cmd_queue_drop(args: argparse.Namespace) -> int:
    cfg = _config(args, check_sources=False)  # works while a source disk is unplugged
    reply = _queue_change(cfg, {"op": "drop", "id": args.id})
    it = reply["item"]
    print(f"dropped item {it['id']}: {it['op']} {it['path']} (job {it['job']})", file=sys.stderr)
    return EXIT_OK


def _print_sync(job: str, reply: dict, as_json: bool) -> int:
    if as_json:
        _print_json(reply)
    else:
        r = reply.get("result")
        if r:
            print(f"{job}: {'ok' if r['ok'] else 'FAILED'}: {r['files_sent']} sent "
                  f"({format_bytes(r['bytes_sent'])}), {r['files_deleted']} deleted, "
                  f"{r['files_skipped']} skipped", file=sys.stderr)
            for err in r.get("errors") or []:
                print(f"  {err}", file=sys.stderr)
        if reply.get("error") and not (r and reply["error"] in (r.get("errors") or [])):
            print(f"{job}: {reply['error']}", file=sys.stderr)
        if reply.get("held"):
            print(f"{job}: held: {reply['held']}; run 'offsite sync {job} --allow-deletes' to apply them",
                  file=sys.stderr)
        if reply.get("changed"):
            n = len(reply["changed"])
            print(f"{job}: {n} file(s) changed at the source after they were sent are not sent again "
                  f"(source-changed): {', '.join(reply['changed'][:5])}{' ...' if n > 5 else ''}; restore them "
                  f"at the source, or run 'offsite sync {job} --accept-changes' if the change is intended",
                  file=sys.stderr)
        if reply.get("waiting_files"):
            print(f"{job}: {reply['waiting_files']} file(s) still being written at the source wait for a later sync",
                  file=sys.stderr)
    return EXIT_OK if reply.get("ok") else EXIT_FAILED


def cmd_sync(args: argparse.Namespace) -> int:
    cfg = _config(args)
    job = _job(cfg, args.job)
    state = _state(cfg)
    if _agent_answers(state):
        reply = _ask_agent(state, {"op": "sync", "job": job.name, "allow_deletes": args.allow_deletes,
                                   "accept_changes": args.accept_changes})
        return _print_sync(job.name, reply, args.json)
    logs.to_stderr("warning" if cfg.agent.log_level == "info" else cfg.agent.log_level)
    with _Writer(cfg) as w:
        assert w.queue is not None
        runner = JobRunner(job, cfg.agent, w.queue, w.state,
                           threading.BoundedSemaphore(cfg.agent.max_connections))
        if sys.stderr.isatty():
            runner.on_progress = _ProgressBar().update
        result: dict = {}
        runner.request(Request("sync", args.allow_deletes, result.update, accept_changes=args.accept_changes))
        previous = {s: signal.signal(s, lambda *_: runner.stop()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            runner.step()
            # Absence is not evidence: a file the target holds and this one listing missed is
            # gone only when a listing `settle` later misses it too. Look again, then, once.
            due = runner.view.first_missed([p for p in runner.view.unknown_paths()
                                            if p in (runner.plan.target_files or {})])
            if due is not None and not runner.stopping.is_set():
                runner.stopping.wait(max(0.0, due + cfg.agent.settle - time.monotonic()))
                if not runner.stopping.is_set():
                    runner.request(Request("sync", args.allow_deletes, result.update,
                                           accept_changes=args.accept_changes))
                    runner.step()
        finally:
            runner.close()
            for s, h in previous.items():
                signal.signal(s, h)
            if sys.stderr.isatty():
                sys.stderr.write("\n")
    if runner.stopping.is_set():
        result["ok"] = False
        result["error"] = "interrupted; the transfer resumes at the next sync"
    return _print_sync(job.name, result, args.json)


class _ProgressBar:
    def __init__(self) -> None:
        self._last = 0.0

    def update(self, path: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.2 and done < total:
            return
        self._last = now
        pct = 100 * done // total if total else 100
        bar = "#" * (pct // 5)
        name = path if len(path) <= 40 else "..." + path[-37:]
        sys.stderr.write(f"\r[{bar:<20}] {pct:3d}% {format_bytes(done)} of {format_bytes(total)} {name}\x1b[K")
        sys.stderr.flush()


def cmd_plan(args: argparse.Namespace) -> int:
    cfg = _config(args)
    job = _job(cfg, args.job)
    view = SourceView(job.source, cfg.agent.settle, job.family)
    view.scan(time.monotonic(), time.time_ns())
    target = make_target(job)
    target.open(create=False)
    try:
        listing = target.list()
    finally:
        target.close()
    state = _state(cfg)
    dropped = state.read_json("dropped.json", {}).get(job.name, {})
    # What the agent knows besides the source and the target: what it sent (the versions a
    # changed file is told apart by), what a person accepted, and its recent deletions.
    hashes = Hashes(state.root, readonly=True)
    sent = {p: Sent(*v) for p, v in hashes.versions(job.name).items()}
    hashes.close()
    accepted = {p: tuple(v) for p, v in state.read_json("accepted.json", {}).get(job.name, {}).items()}
    recent_ = state.read_json("mirrored.json", {}).get(job.name, {})
    # As the agent plans: nothing under a folder that fails to read, nothing into another
    # job's folder on the target, names compared as the target compares them.
    foreign = tuple(f + "/" for f in target.foreign)
    source = {k: v for k, v in view.snapshot().items() if not (foreign and k.startswith(foreign))}
    unknown = {k for k in (*listing, *source) if view.is_unknown(k)}
    p = without_dropped(plan(source, listing, Rules.of(job), target.keeps_mtime, sent=sent,
                                     recent=recent_ if isinstance(recent_, dict) else {}, accepted=accepted,
                                     unknown=unknown, folders=view.folders, fold_case=not target.case_sensitive,
                                     now=time.time()),
                                dropped, view.entries)
    uploads, deletes = p.uploads, p.deletes
    sizes = {u: view.entries[u].size for u in uploads}
    if args.json:
        _print_json({"job": job.name, "uploads": [{"path": u, "size": sizes[u]} for u in uploads],
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


def _bin_target(cfg: Config, job: Job):
    target = make_target(job)
    target.open(create=False)
    return target


def cmd_deleted(args: argparse.Namespace) -> int:
    cfg = _config(args, check_sources=False)
    job = _job(cfg, args.job)
    target = _bin_target(cfg, job)
    try:
        binned = sorted(target.bin_list(), key=lambda b: (b.day, b.path, b.version))
    finally:
        target.close()
    if args.json:
        _print_json([{"path": b.path, "date": b.day, "size": b.size, "version": b.version} for b in binned])
        return EXIT_OK
    for b in binned:
        again = f"  (copy {b.version} of the day)" if b.version > 1 else ""
        print(f"{b.day}  {format_bytes(b.size):>10}  {b.path}{again}")
    print(f"{job.name}: {len(binned)} file(s) in the bin, {format_bytes(sum(b.size for b in binned))}; kept "
          f"{format_duration(job.keep_deleted) if job.keep_deleted is not None else 'not at all (keep_deleted off)'}",
          file=sys.stderr)
    return EXIT_OK


def cmd_undelete(args: argparse.Namespace) -> int:
    cfg = _config(args, check_sources=False)
    job = _job(cfg, args.job)
    if args.date is not None:
        try:
            dt.date.fromisoformat(args.date)
        except ValueError:
            raise UsageError(f"--date must be a day written YYYY-MM-DD (got {args.date!r})") from None
    state = _state(cfg)
    if _agent_answers(state):
        reply = _ask_agent(state, {"op": "undelete", "job": job.name, "paths": args.paths, "day": args.date})
        if reply.get("error"):
            raise OffsiteError(reply["error"])
        done = reply["files"]
    else:
        with _Writer(cfg) as w:
            target = make_target(job)
            target.open()
            try:
                done = control.undelete(target, w.state, job, args.paths, args.date)
            finally:
                target.close()
    if args.json:
        _print_json(done)
    else:
        for d in done:
            if d["ok"]:
                print(f"{job.name}: {d['path']} is back on the target (from the bin's {d['day']}); it is not "
                      f"deleted again", file=sys.stderr)
            else:
                print(f"{job.name}: {d['path']}: {d['error']}", file=sys.stderr)
    return EXIT_OK if all(d["ok"] for d in done) else EXIT_FAILED


def cmd_reinit(args: argparse.Namespace) -> int:
    cfg = _config(args)
    job = _job(cfg, args.job)
    state = _state(cfg)
    if _agent_answers(state):
        reply = _ask_agent(state, {"op": "reinit", "job": job.name})
        if not reply.get("ok"):
            raise OffsiteError(reply.get("error") or "the agent refused")
        where = reply.get("target")
    else:
        with _Writer(cfg) as w:
            where = control.take_over(job, w.state)
    print(f"{job.name}: this job now owns {where}", file=sys.stderr)
    return EXIT_OK
