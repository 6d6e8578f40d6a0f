"""The `offsite` command: argument parsing, one top-level error handler, the commands.

Every user error is an OffsiteError and prints as one line with its exit code; only an
unexpected error prints a traceback. JSON goes to stdout, messages to stderr.
"""
from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
import threading
from typing import Callable, NoReturn

from .. import __version__
from ..errors import EXIT_OK, EXIT_USAGE, OffsiteError

Command = Callable[[argparse.Namespace], int]


def _lazy(module: str, name: str) -> Command:
    """The command `name` of `.module`, imported when it runs: a command loads only what it
    needs (`offsite sync` neither the agent's service nor verify's and status's modules)."""
    def run(args: argparse.Namespace) -> int:
        func: Command = getattr(importlib.import_module(f"{__package__}.{module}"), name)
        return func(args)

    run.__name__ = run.__qualname__ = name
    return run


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


def run() -> NoReturn:
    """The command line (`offsite`, `python -m offsite`): main(), then exit() at once."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """End the process without Python's finalization: tearing down ~100,000 objects (boto3's
    models, the config, the plan) cost a short `offsite sync` 0.15-0.25 s of CPU after its
    work was done. Only when nothing is left to finish: every other thread has ended (else
    Python's own exit waits for it, as usual), what Python would run at exit has run
    (logging.shutdown() flushes and closes every log handler) and stdout and stderr are
    flushed. Everything offsite writes is closed by then: the queue's database and the
    hashes by their owners (Writer, JobRunner.close), the state's JSON files as they are
    written; an object Python would only have freed does not write."""
    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a reader gone, a stream closed: Python's exit deals with it
        sys.exit(code)
    os._exit(code)


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

    cmd("run", _lazy("steer", "cmd_run"), "run the agent in the foreground")
    sp = cmd("check", _lazy("look", "cmd_check"), "validate the config and test each job's target")
    sp.add_argument("jobs", nargs="*", metavar="JOB")
    sp.add_argument("--json", action="store_true")
    sp = cmd("status", _lazy("look", "cmd_status"), "is the agent running, and how is each job doing")
    sp.add_argument("--json", action="store_true")
    sp = cmd("sync", _lazy("steer", "cmd_sync"), "run a job now, ignoring its window; returns when it is idle")
    sp.add_argument("job", metavar="JOB")
    sp.add_argument("--allow-deletes", action="store_true", help="apply deletions held back for confirmation")
    sp.add_argument("--accept-changes", action="store_true",
                    help="send files changed at the source after they were sent (source-changed); their offsite "
                         "copies go to the bin")
    sp.add_argument("--json", action="store_true")
    sp = cmd("plan", _lazy("look", "cmd_plan"), "show what would be sent and deleted, without doing it")
    sp.add_argument("job", metavar="JOB")
    sp.add_argument("--json", action="store_true")
    sp = cmd("reinit", _lazy("steer", "cmd_reinit"), "take over a target folder whose owner ID belongs to someone else")
    sp.add_argument("job", metavar="JOB")
    sp = cmd("deleted", _lazy("look", "cmd_deleted"), "list the bin: files deleted or replaced on the target, kept for keep_deleted")
    sp.add_argument("job", metavar="JOB")
    sp.add_argument("--json", action="store_true")
    sp = cmd("undelete", _lazy("steer", "cmd_undelete"), "put files of the bin back under their names on the target (never over a "
             "file that is there)")
    sp.add_argument("job", metavar="JOB")
    sp.add_argument("paths", nargs="+", metavar="PATH", help="relative paths, as 'offsite deleted' lists them")
    sp.add_argument("--date", metavar="YYYY-MM-DD", help="the day the file went to the bin (default: the newest)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("verify", _lazy("look", "cmd_verify"), "read the offsite copy back and compare it with the hashes recorded when it was "
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
    sp.set_defaults(func=_lazy("service", "cmd_service_install"))
    sp.add_argument("--dry-run", action="store_true", help="print every file and command instead")
    sp.add_argument("--account", help="Windows: the account the service runs as (default LocalSystem)")
    sp.add_argument("--password", help="Windows: that account's password")
    sp = svs.add_parser("uninstall", help="stop and remove the service (the state and config stay)")
    sp.set_defaults(func=_lazy("service", "cmd_service_uninstall"))
    sp.add_argument("--purge", action="store_true", help="also remove the state directory and agent.toml")
    sp = svs.add_parser("status", help="the service manager's view of the service")
    sp.set_defaults(func=_lazy("service", "cmd_service_status"))
    sp = svs.add_parser("run", help="Windows: what the service manager starts (not run by hand)")
    sp.set_defaults(func=_lazy("service", "cmd_service_run"))

    n = sub.add_parser("notify", help="notifications", description="notifications")
    ns = n.add_subparsers(metavar="ACTION")
    n.set_defaults(func=_usage(n))
    sp = ns.add_parser("test", help="send a test message to every destination and ping the heartbeat")
    sp.set_defaults(func=_lazy("steer", "cmd_notify_test"))

    q = sub.add_parser("queue", help="inspect and steer the queue", description="inspect and steer the queue")
    qs = q.add_subparsers(metavar="ACTION")
    q.set_defaults(func=_usage(q))
    sp = qs.add_parser("list", help="list queued items")
    sp.set_defaults(func=_lazy("steer", "cmd_queue_list"))
    sp.add_argument("--job")
    sp.add_argument("--state", choices=("ready", "in-flight", "failed"))
    sp.add_argument("--json", action="store_true")
    sp = qs.add_parser("show", help="show one item")
    sp.set_defaults(func=_lazy("steer", "cmd_queue_show"))
    sp.add_argument("id", type=int, metavar="ID")
    sp.add_argument("--json", action="store_true")
    sp = qs.add_parser("retry", help="make an item, or every failed item, ready now")
    sp.set_defaults(func=_lazy("steer", "cmd_queue_retry"))
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("id", type=int, nargs="?", metavar="ID")
    g.add_argument("--failed", action="store_true")
    sp = qs.add_parser("drop", help="remove an item and do not queue that operation again")
    sp.set_defaults(func=_lazy("steer", "cmd_queue_drop"))
    sp.add_argument("id", type=int, metavar="ID")
    return p
