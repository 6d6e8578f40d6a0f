"""A job's plan, per group, and its queue kept in line with it.

A group is a volume's chains (ShadowProtect) or a backup definition's sets (Macrium): the
unit the deletion rules judge (deletions.py). The planner keeps, per group, the paths the
source or the target holds and the group's plan (selection.plan_group); when paths change
(at the source, or on the target by the job's own work) only their groups are planned again,
and the queue gets exactly what the plans want:
- uploads, and the deletions the job-wide decision lets go now;
- a failed item (cause "source-changed") for each ShadowProtect file changed at the source
  after it was sent, which stays until the file is restored or a person accepts it;
- nothing for a path whose presence at the source is unknown (its queued items wait).
Work is proportional to what changed: a finished upload plans nothing again, except where a
deletion waits for it (a consolidation) or daily-monthly retention may run.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Collection

from ..backlog import Flow
from ..backupfiles import Role, classify
from ..config import Job
from ..deletions import WINDOW, Decision
from ..queue import CHANGED, QueueItem, WorkQueue
from ..restorable import Point, points_of
from ..selection import (
    MONTHLY_LEVELS,
    Plan,
    RemoteFile,
    Rules,
    Sent,
    decide_plans,
    plan,
    plan_group,
    without_dropped,
)
from ..state import Hashes, StateDir
from ..watchers import SourceView
from ..windows import is_open
from . import control
from .dispatcher import Dispatch
from .points import Points

log = logging.getLogger(__name__)

# seconds between two computations of the restorable points while files go: a volume of 20,000
# files takes 0.3-0.75 s of the coordinator (measured by the attack on issue 18)
POINTS_EVERY = 30.0
FLOW_EVERY = 30.0  # seconds between two writes of flow.json while there is a backlog

CHANGED_ERROR = ("changed at the source after it was sent (a ShadowProtect file is written once and never "
                 "changed: damaged, or tampered with); the copy offsite is kept as it is. If the change is "
                 "intended, 'offsite queue retry {id}' sends it, the offsite copy going to the bin")


class Planner:
    def __init__(self, job: Job, queue: WorkQueue, view: SourceView, dispatch: Dispatch, state: StateDir,
                 hashes: Hashes, keeps_mtime: bool, fold_case: bool = False) -> None:
        self.job, self.queue, self.view, self.dispatch, self.state = job, queue, view, dispatch, state
        self.hashes, self.keeps_mtime, self.fold_case = hashes, keeps_mtime, fold_case
        self.foreign: tuple[str, ...] = ()  # folders of the target that another job owns ("a/b/")
        self.rules = Rules.of(job)
        self.target_files: dict[str, RemoteFile] | None = None
        self.sent: dict[str, Sent] = {}  # the versions the agent published (hashes.db)
        self.allow_deletes = False  # a person confirmed the deletions held (this sync only)
        self._members: dict[tuple, set[str]] = {}  # group -> its paths at the source or on the target
        self._plans: dict[tuple, Plan] = {}
        self._points = Points(self.rules)  # each group's restorable point, until the group changes
        # the latest restorable(), read by other threads (status); until the first look at the
        # target, what the last runner knew (an unreachable target must not make them vanish)
        known = state.read_json("known.json", {})
        self.points: list[Point] = points_of((known.get(job.name) or {}).get("restorable")
                                             if isinstance(known, dict) else None)
        self._points_at = float("-inf")
        # inflow, outflow and backlog by day, for the forecast (backlog.py); saved by refresh()
        self.flow = Flow.of(state.read_json("flow.json", {}).get(job.name), dt.datetime.now().astimezone())
        self._flow_saved = float("-inf")
        self.decision = Decision(frozenset(), 0, None)
        self.blockers: dict[tuple, tuple] = {}
        self.changed: list[str] = []  # files changed at the source after they were sent
        self.waiting = 0
        self.planned = 0  # groups planned, for tests: the work an event or a transfer costs
        self.skipped = 0  # vanished before sent, noticed between syncs
        self.newest_source: float | None = None  # epoch seconds of the newest backup file at the source
        self._stamps: dict[str, int | None] = {}
        self._docs: dict[str, dict] = {}
        recent_ = state.read_json("mirrored.json", {}).get(job.name, {})
        # path -> when its deletion was started, for max_deletes' 24 hours
        self._recent: dict[str, float] = recent_ if isinstance(recent_, dict) else {}

    # ------------------------------------------------------------ what the planner is told
    def rebuild(self, target_files: dict[str, RemoteFile], foreign: Collection[str] = ()) -> None:
        """After a full look at source and target: every group planned afresh, and the
        dispatcher's index rebuilt from the queue. `foreign`: folders of the target that hold
        another job's owner ID; what the source has there is never sent (nor anything there
        deleted: the target does not list them)."""
        self.target_files = target_files
        new = tuple(d.rstrip("/") + "/" for d in foreign)
        for d in set(new) - set(self.foreign):
            log.warning("job %s: the target folder %s belongs to another job (it holds its own owner ID): what the "
                        "source has under %s is not sent there", self.job.name, d, d)
        self.foreign = new
        # What the target holds and the source does not show, this process never saw vanish:
        # one listing is not evidence; a second, `settle` later, is (SPEC section 8).
        self.view.missed([p for p in target_files if classify(p, self.rules.family) is not None
                          and p not in self.view.entries], time.monotonic())
        self.sent = {p: Sent(*v) for p, v in self.hashes.versions(self.job.name).items()}
        self._members = {}
        newest = 0
        for path in (*self.view.entries, *self.target_files, *self.view.unknown_paths()):
            f = classify(path, self.rules.family)
            if f is not None:
                self._members.setdefault(f.group, set()).add(path)
                e = self.view.entries.get(path)
                if e is not None and e.mtime_ns > newest:
                    newest = e.mtime_ns
        self.newest_source = newest / 1e9 if newest else None
        self._plans = {}
        self._points.forget()
        self.replan(None)
        self.dispatch.clear()  # built afresh from the queue
        for it in self.queue.items(self.job.name):
            if it.cause != CHANGED:  # a changed file holds nothing back: its copy is offsite
                self.dispatch.add(it)

    def touched(self, paths: Collection[str]) -> None:
        """Paths that changed at the source or on the target: their groups are planned again."""
        groups = set()
        for path in paths:
            f = classify(path, self.rules.family)
            if f is None:
                continue
            members = self._members.setdefault(f.group, set())
            e = self.view.entries.get(path)
            if e is not None and (self.newest_source is None or e.mtime_ns / 1e9 > self.newest_source):
                self.newest_source = e.mtime_ns / 1e9
            if e is not None or self.view.is_unknown(path) or (self.target_files is not None
                                                                and path in self.target_files):
                members.add(path)
            else:
                members.discard(path)
            groups.add(f.group)
        if groups:
            self.replan(groups, extra=set(paths))

    def published(self, path: str, size: int, mtime_ns: int, md5: str | None) -> None:
        """A file is on the target under its final name."""
        assert self.target_files is not None
        self.target_files[path] = RemoteFile(size, mtime_ns if self.keeps_mtime else None)
        self.sent[path] = Sent(size, mtime_ns, time.time())
        self.flow.went(size, dt.datetime.now().astimezone())
        f = classify(path, self.rules.family)
        if f is not None:
            self._points.forget(f.group)
        if md5:
            self.hashes.record(self.job.name, path, size, md5, mtime_ns)
        if path in self._doc("accepted.json"):
            self.state.update_json("accepted.json", lambda d: d.get(self.job.name, {}).pop(path, None))
        f = classify(path, self.rules.family)
        plan = self._plans.get(f.group) if f is not None else None
        e = self.view.entries.get(path)
        if plan is not None and (plan.deletes_wait or e is None or (e.size, e.mtime_ns) != (size, mtime_ns)
                                 or (f is not None and f.level in MONTHLY_LEVELS and self.rules.mode == "daily-monthly"
                                     and f.role in (Role.IMAGE, Role.MD5))):
            # A deletion waited for it, the source moved on while it was sent, or a new monthly
            # on the target lets retention run: its group is planned again.
            self.touched({path})

    def removed(self, path: str) -> None:
        """A file left its final name on the target (to the bin, or deleted)."""
        assert self.target_files is not None
        self.target_files.pop(path, None)
        self.sent.pop(path, None)
        self.hashes.forget(self.job.name, path)
        self.view.done_with(path)
        self.touched({path})

    def undeleted(self, back: dict[str, int], asked: Collection[str]) -> None:
        """`offsite undelete` put these files (path -> size) back on the target."""
        if self.target_files is not None:
            for path, size in back.items():
                self.target_files[path] = self.target_files.get(path) or RemoteFile(size)
            self.touched(asked)

    def deleting(self, path: str) -> None:
        """A mirrored deletion is about to be made: an image counts toward max_deletes from now,
        recorded before the deletion, so a kill right after it cannot lose the count (a
        deletion retried is counted once: by path). What a person allowed does not count."""
        f = classify(path, self.rules.family)
        if self.allow_deletes or f is None or f.role not in (Role.IMAGE, Role.MACRIUM) or path in self._recent:
            return
        now = time.time()
        self._recent = {p: t for p, t in self._recent.items() if now - t < WINDOW}
        self._recent[path] = now
        self.state.update_json("mirrored.json", lambda d: d.__setitem__(self.job.name, self._recent))

    def accept_changes(self) -> int:
        """`offsite sync --accept-changes`: every file changed at the source goes, in its present
        version, its previous offsite copy to the bin. Returns how many."""
        versions = []
        for path in self.changed:
            e = self.view.entries.get(path)
            if e is not None:
                versions.append((self.job.name, path, e.size, e.mtime_ns))
        control.accept(self.state, versions)
        self.queue.retry(it.id for path in self.changed for it in self.queue.at(self.job.name, path)
                         if it.cause == CHANGED)
        self.touched({v[1] for v in versions})
        return len(versions)

    def is_mirrored(self, path: str) -> bool:
        """Is this deletion mirrored from the source (not daily-monthly retention)? Such a
        deletion is made only when the file is still missing at the source right before."""
        f = classify(path, self.rules.family)
        plan = self._plans.get(f.group) if f is not None else None
        return plan is not None and (path in plan.mirrored or path in plan.unexplained)

    def refresh(self, mono: float | None = None) -> list[Point]:
        """`points` computed again, and the backlog noted (saved when it moved): now, or
        (`mono` given, while files are published) at most every POINTS_EVERY seconds, so a
        seeding does not look at a volume per file."""
        if mono is None or mono - self._points_at >= POINTS_EVERY:
            if self.target_files is not None:
                self.points = self.restorable()
            self._points_at = time.monotonic() if mono is None else mono
            now, pending = dt.datetime.now().astimezone(), self.queue.summary(self.job.name)["pending_bytes"]
            self.flow.sending(pending > 0 and is_open(self.job.windows, now), now)
            self.flow.backlog(pending, now)
            if self.flow.dirty and (not pending or time.monotonic() - self._flow_saved >= FLOW_EVERY):
                self._flow_saved = time.monotonic()
                saved = self.flow.saved()
                self.state.update_json("flow.json", lambda d: d.__setitem__(self.job.name, saved))
        return self.points

    def restorable(self) -> list[Point]:
        """Per volume or backup definition, the newest point restorable offsite (points.py)."""
        return [] if self.target_files is None else self._points.of(self._members, self.target_files, self.view,
                                                                    self.sent)

    # ------------------------------------------------------------ planning
    def replan(self, groups: set[tuple] | None, extra: Collection[str] = ()) -> None:
        """Plan the given groups again (None: all) and bring the queue in line with them."""
        if self.target_files is None:
            return
        dropped = self._doc("dropped.json")
        accepted = {p: tuple(v) for p, v in self._doc("accepted.json").items() if isinstance(v, list)}
        for g in list(self._members) if groups is None else groups:
            self._points.forget(g)
            members = self._members.get(g, set())
            if not members:
                self._members.pop(g, None)
                self._plans.pop(g, None)
                continue
            unknown = {p for p in members if self.view.is_unknown(p)}
            tgt = {p: self.target_files[p] for p in members if p in self.target_files}
            src = self.view.snapshot(m for m in members if not (self.foreign and m.startswith(self.foreign)))
            p = plan_group(src, tgt, self.rules, self.keeps_mtime, unknown,
                           {x: self.sent[x] for x in tgt if x in self.sent}, accepted, self.view.folders,
                           self.fold_case, time.time())
            self._plans[g] = without_dropped(p, dropped, self.view.entries)
            self.planned += 1
        plans = self._plans.values()
        self.changed = [x for p in plans for x in p.changed]
        decision = decide_plans(plans, bool(self.view.entries), self.rules, self.allow_deletes,
                                self._recent, time.time())
        if decision.reason != self.decision.reason and decision.reason:
            log.warning("job %s: %d deletion(s) held back: %s; 'offsite sync %s --allow-deletes' applies them once "
                        "checked", self.job.name, decision.held, decision.reason, self.job.name)
        # Deletions come or go in other groups than those planned: when a hold starts or ends,
        # or a deletion elsewhere may go now. (One that was made, and left `go`, moves nothing.)
        own = {d for p in self._parts(groups) for d in (*p.deletes, *p.mirrored, *p.unexplained)}
        moved = decision.reason != self.decision.reason or not (decision.go - self.decision.go) <= own
        self.decision = decision
        self.blockers = {c: k for p in plans for c, k in p.blockers.items()}
        self.waiting = sum(len(p.waiting) for p in plans)
        self._enqueue(groups, extra)
        if moved and groups is not None:
            self._deletions_in_line()

    def _parts(self, groups: set[tuple] | None) -> list[Plan]:
        return list(self._plans.values()) if groups is None else [self._plans[g] for g in groups if g in self._plans]

    def _wanted(self, groups: set[tuple] | None) -> set[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for p in self._parts(groups):
            out.update(("upload", u) for u in (*p.uploads, *p.waiting, *p.changed, *p.unknown))
            out.update(("delete", d) for d in (*p.deletes, *p.mirrored, *p.unexplained) if d in self.decision.go)
        return out

    def _enqueue(self, groups: set[tuple] | None, extra: Collection[str]) -> None:
        assert self.target_files is not None
        rows: list[tuple[str, str, int | None, int | None]] = []
        now = dt.datetime.now().astimezone()
        for p in self._parts(groups):
            for path in p.uploads:
                e = self.view.entries[path]
                rows.append(("upload", path, e.size, e.mtime_ns))
                if not any(it.op == "upload" for it in self.queue.at(self.job.name, path)):  # new to send
                    self.flow.came(e.size, dt.datetime.fromtimestamp(e.mtime_ns / 1e9, now.tzinfo), now)
                    if self.flow.busy_since is None:
                        self.flow.sending(is_open(self.job.windows, now), now)  # busy from now
            for path in (d for d in (*p.deletes, *p.mirrored, *p.unexplained) if d in self.decision.go):
                t = self.target_files.get(path)
                rows.append(("delete", path, t.size if t else None, None))
        for it in self.queue.put_many(self.job.name, rows):
            self.dispatch.add(it)
        for p in self._parts(groups):
            for path in p.changed:
                self._hold_changed(path)
        # Whatever is queued that the plan no longer wants goes (done elsewhere, vanished,
        # superseded, restored): for a full plan, anything the job has queued; else the groups'.
        wanted = self._wanted(groups)
        if groups is None:
            stale = [it for it in self.queue.items(self.job.name) if (it.op, it.path) not in wanted]
        else:
            paths = set(extra)
            for g in groups:
                paths |= self._members.get(g, set())
            stale = [it for path in paths for it in self.queue.at(self.job.name, path)
                     if (it.op, it.path) not in wanted]
        for it in stale:
            self._unqueue(it)

    def _deletions_in_line(self) -> None:
        """The job-wide decision on deletions changed: queue the mirrored deletions that may go
        now, in every group, and unqueue those that must wait. Only deletions: the plans of
        the groups not planned again may be stale about their uploads."""
        assert self.target_files is not None
        go = self.decision.go
        rows = [("delete", path, t.size if (t := self.target_files.get(path)) else None, None)
                for p in self._plans.values() for path in (*p.deletes, *p.mirrored, *p.unexplained) if path in go]
        for it in self.queue.put_many(self.job.name, rows):
            self.dispatch.add(it)
        for it in self.queue.items(self.job.name):
            if it.op == "delete" and it.path not in go:
                self._unqueue(it)

    def _hold_changed(self, path: str) -> None:
        """A failed item, for the person to see, retry or leave (source-changed)."""
        e = self.view.entries[path]
        items = self.queue.at(self.job.name, path)
        if any(i.cause == CHANGED and (i.size, i.mtime_ns) == (e.size, e.mtime_ns) for i in items):
            return
        it = self.queue.put(self.job.name, "upload", path, e.size, e.mtime_ns)
        if it.state == "in-flight":
            return  # planned again when it is done
        self.dispatch.discard(it.id)
        self.queue.fail(it.id, CHANGED_ERROR.format(id=it.id), CHANGED)
        log.error("job %s: %s %s", self.job.name, path, CHANGED_ERROR.format(id=it.id))

    def _unqueue(self, it: QueueItem) -> None:
        """Queued work the plan no longer wants: done elsewhere, vanished, superseded."""
        if it.state == "in-flight":
            return
        if it.state == "failed" and it.cause != CHANGED and (it.path in self.view.entries or it.op == "delete"):
            return  # failed items wait for the user, unless their file is gone
        if it.op == "upload" and it.path not in self.view.entries and it.cause != CHANGED:
            log.info("job %s: %s vanished at the source before it was sent; skipped", self.job.name, it.path)
            self.skipped += 1
        self.queue.ack(it.id)
        self.dispatch.discard(it.id)

    def _doc(self, name: str) -> dict:
        """This job's part of a small state document, read again only when it changed."""
        try:
            stamp: int | None = (self.state.root / name).stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp != self._stamps.get(name, -1):
            self._stamps[name] = stamp
            doc = self.state.read_json(name, {}) if stamp is not None else {}
            self._docs[name] = doc.get(self.job.name, {}) if isinstance(doc, dict) else {}
        return self._docs[name]


def preview(job: Job, state: StateDir, view: SourceView, listing: dict[str, RemoteFile], foreign: Collection[str],
            keeps_mtime: bool, case_sensitive: bool) -> Plan:
    """`offsite plan`: the whole plan the agent would make from this look at the source and
    the target, with what it knows besides them: what it sent (the versions a changed file
    is told apart by), what a person accepted or dropped, and its recent deletions. Nothing
    under a folder that fails to read, nothing into another job's folder on the target, names
    compared as the target compares them."""
    dropped = state.read_json("dropped.json", {}).get(job.name, {})
    hashes = Hashes(state.root, readonly=True)
    sent = {p: Sent(*v) for p, v in hashes.versions(job.name).items()}
    hashes.close()
    accepted = {p: tuple(v) for p, v in state.read_json("accepted.json", {}).get(job.name, {}).items()}
    recent = state.read_json("mirrored.json", {}).get(job.name, {})
    away = tuple(f + "/" for f in foreign)
    source = {k: v for k, v in view.snapshot().items() if not (away and k.startswith(away))}
    unknown = {k for k in (*listing, *source) if view.is_unknown(k)}
    return without_dropped(plan(source, listing, Rules.of(job), keeps_mtime, sent=sent,
                                recent=recent if isinstance(recent, dict) else {}, accepted=accepted,
                                unknown=unknown, folders=view.folders, fold_case=not case_sensitive,
                                now=time.time()), dropped, view.entries)
