"""The commands that act: `run`, `sync`, the `queue` actions, `undelete`, `reinit` and
`notify test`. A change goes to the running agent through its mailbox when one runs, and
is made here under the state directory's lock when none does."""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import socket
import sys
import threading

from .. import logs
from ..agent import control, report
from ..agent.alone import sync_once
from ..agent.job import JobRunner
from ..config import Config
from ..errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    OffsiteError,
    UsageError,
)
from ..owner import take_over
from ..queue import CHANGED, read_items
from ..targets import make_target
from ..units import format_bytes
from .common import (
    ProgressBar,
    Writer,
    agent_answers,
    ask_agent,
    config_of,
    job_of,
    print_json,
    state_of,
)

log = logging.getLogger("offsite")


def cmd_run(args: argparse.Namespace) -> int:
    from ..agent.service import Agent  # here: `offsite sync` needs neither it nor psutil

    cfg = config_of(args)
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


def _print_sync(job: str, reply: dict, as_json: bool) -> int:
    if as_json:
        print_json(reply)
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
    cfg = config_of(args)
    job = job_of(cfg, args.job)
    state = state_of(cfg)
    if agent_answers(state):
        reply = ask_agent(state, {"op": "sync", "job": job.name, "allow_deletes": args.allow_deletes,
                                   "accept_changes": args.accept_changes})
        return _print_sync(job.name, reply, args.json)
    logs.to_stderr("warning" if cfg.agent.log_level == "info" else cfg.agent.log_level)
    with Writer(cfg) as w:
        assert w.queue is not None
        runner = JobRunner(job, cfg.agent, w.queue, w.state,
                           threading.BoundedSemaphore(cfg.agent.max_connections))
        if sys.stderr.isatty():
            runner.on_progress = ProgressBar().update
        previous = {s: signal.signal(s, lambda *_: runner.stop()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            result = sync_once(runner, args.allow_deletes, args.accept_changes, cfg.agent.settle)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            if sys.stderr.isatty():
                sys.stderr.write("\n")
    return _print_sync(job.name, result, args.json)


def cmd_queue_list(args: argparse.Namespace) -> int:
    cfg = config_of(args, check_sources=False)  # works while a source disk is unplugged
    if args.job:
        job_of(cfg, args.job)
    items = [i for i in read_items(state_of(cfg).queue_dir)
             if (not args.job or i.job == args.job) and (not args.state or i.state == args.state)]
    if args.json:
        print_json([i.to_json() for i in items])
        return EXIT_OK
    for i in items:
        err = f"  last error: {i.last_error}" if i.last_error else ""
        print(f"{i.id:>6} {i.job} {i.op:<6} {i.state:<9} {i.attempts} {i.path}{err}")
    if not items:
        print("the queue is empty", file=sys.stderr)
    return EXIT_OK


def cmd_queue_show(args: argparse.Namespace) -> int:
    cfg = config_of(args, check_sources=False)  # works while a source disk is unplugged
    item = next((i for i in read_items(state_of(cfg).queue_dir) if i.id == args.id), None)
    if item is None:
        raise UsageError(f"no queue item with ID {args.id}")
    if args.json:
        print_json(item.to_json())
    else:
        for k, v in item.to_json().items():
            print(f"{k}: {v}")
    return EXIT_OK


def _queue_change(cfg: Config, request: dict) -> dict:
    state = state_of(cfg)
    if agent_answers(state):
        reply = ask_agent(state, request)
        if not reply.get("ok"):
            raise UsageError(reply.get("error") or "the agent refused")
        return reply
    with Writer(cfg) as w:
        assert w.queue is not None
        if request["op"] == "retry":
            return {"ok": True, "items": [i.id for i in control.retry(w.queue, w.state, request["ids"])]}
        return {"ok": True, "item": control.drop(w.queue, w.state, request["id"]).to_json()}


def cmd_queue_retry(args: argparse.Namespace) -> int:
    cfg = config_of(args, check_sources=False)  # works while a source disk is unplugged
    reply = _queue_change(cfg, {"op": "retry", "ids": None if args.failed else [args.id]})
    print(f"{len(reply['items'])} item(s) ready to run again", file=sys.stderr)
    if args.failed:
        changed = [i for i in read_items(state_of(cfg).queue_dir) if i.cause == CHANGED]
        if changed:
            print(f"{len(changed)} file(s) changed at the source after they were sent were left as they are "
                  f"(source-changed): 'offsite queue retry ID' or 'offsite sync JOB --accept-changes' sends them",
                  file=sys.stderr)
    return EXIT_OK


def cmd_queue_drop(args: argparse.Namespace) -> int:
    cfg = config_of(args, check_sources=False)  # works while a source disk is unplugged
    reply = _queue_change(cfg, {"op": "drop", "id": args.id})
    it = reply["item"]
    print(f"dropped item {it['id']}: {it['op']} {it['path']} (job {it['job']})", file=sys.stderr)
    return EXIT_OK


def cmd_undelete(args: argparse.Namespace) -> int:
    cfg = config_of(args, check_sources=False)
    job = job_of(cfg, args.job)
    if args.date is not None:
        try:
            dt.date.fromisoformat(args.date)
        except ValueError:
            raise UsageError(f"--date must be a day written YYYY-MM-DD (got {args.date!r})") from None
    state = state_of(cfg)
    if agent_answers(state):
        reply = ask_agent(state, {"op": "undelete", "job": job.name, "paths": args.paths, "day": args.date})
        if reply.get("error"):
            raise OffsiteError(reply["error"])
        done = reply["files"]
    else:
        with Writer(cfg) as w:
            target = make_target(job)
            target.open()
            try:
                done = control.undelete(target, w.state, job, args.paths, args.date)
            finally:
                target.close()
    if args.json:
        print_json(done)
    else:
        for d in done:
            if d["ok"]:
                print(f"{job.name}: {d['path']} is back on the target (from the bin's {d['day']}); it is not "
                      f"deleted again", file=sys.stderr)
            else:
                print(f"{job.name}: {d['path']}: {d['error']}", file=sys.stderr)
    return EXIT_OK if all(d["ok"] for d in done) else EXIT_FAILED


def cmd_reinit(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    job = job_of(cfg, args.job)
    state = state_of(cfg)
    if agent_answers(state):
        reply = ask_agent(state, {"op": "reinit", "job": job.name})
        if not reply.get("ok"):
            raise OffsiteError(reply.get("error") or "the agent refused")
        where = reply.get("target")
    else:
        with Writer(cfg) as w:
            where = take_over(job, w.state)
            report.taken_over(w.state, job.name)
    print(f"{job.name}: this job now owns {where}", file=sys.stderr)
    return EXIT_OK


def cmd_notify_test(args: argparse.Namespace) -> int:
    from .. import notify  # here: only this command sends

    cfg = config_of(args, check_sources=False)
    n = cfg.notify
    if not n.urls and n.heartbeat_url is None:
        print(f"offsite: {cfg.path}: no [notify] urls or heartbeat_url to test", file=sys.stderr)
        return EXIT_USAGE
    failed = False
    for what, why in notify.test_all(n, socket.gethostname()):
        print(f"{what}: ok" if why is None else f"{what}: FAILED: {why}")
        failed |= why is not None
    return EXIT_FAILED if failed else EXIT_OK
