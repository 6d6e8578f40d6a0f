"""What a job sends and deletes: the replication modes and retention, as pure functions.

`plan_group(source, target, rules)` compares what the source holds of one volume or backup
definition (with readiness) with what the target holds and returns the uploads, the
deletions, the files the chain order still waits for, and the ShadowProtect files changed
at the source after they were sent (never sent again: SPEC section 8). Which deletions are
mirrored is decided in deletions.py. The agent's reconciliation, its event handling and
`offsite plan` all call this one function. Nothing here touches the disk or the clock.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Mapping

from .backupfiles import BackupFile, Level, Role, classify
from .config.options import JOB_OPTIONS
from .deletions import WINDOW, Decision, decide, explain

MONTHLY_LEVELS = (Level.MONTHLY, Level.ROLLING)
MTIME_SLACK = 2_000_000_000  # FAT and SMB keep modification times to 2 s at worst


@dataclass(frozen=True)
class Rules:
    """The parts of a job that decide what is sent and deleted."""

    mode: str = JOB_OPTIONS["mode"].value  # the defaults are the options' (config/options.py)
    include_intra_daily: bool = JOB_OPTIONS["include_intra_daily"].value
    replicate_base: bool = JOB_OPTIONS["replicate_base"].value
    mirror_deletes: bool = JOB_OPTIONS["mirror_deletes"].value
    family: str = JOB_OPTIONS["family"].value
    max_deletes: int = JOB_OPTIONS["max_deletes"].value

    @classmethod
    def of(cls, job) -> "Rules":
        return cls(job.mode, job.include_intra_daily, job.replicate_base, job.mirror_deletes,
                   job.family, job.max_deletes)


@dataclass(frozen=True)
class SourceFile:
    size: int
    mtime_ns: int
    ready: bool = True


@dataclass(frozen=True)
class Sent:
    """The version of a file the agent published: recorded when it sent it."""

    size: int
    mtime_ns: int
    at: float = 0.0  # when it was published (epoch seconds); 0: not known


@dataclass(frozen=True)
class RemoteFile:
    size: int
    mtime_ns: int | None = None  # None where the target does not keep modification times


@dataclass
class Plan:
    uploads: list[str] = field(default_factory=list)  # in send order
    deletes: list[str] = field(default_factory=list)  # retention on the target (daily-monthly); combine(): all
    waiting: list[str] = field(default_factory=list)  # selected but not complete at the source
    blockers: dict[tuple, tuple] = field(default_factory=dict)  # chain -> first key still waited for
    held: str | None = None  # combine(): why deletions are held back, when they are
    held_count: int = 0
    mirrored: list[str] = field(default_factory=list)  # deletions the backup software explains (section 8)
    mirrored_images: int = 0  # of which images (the max_deletes guard counts these)
    unexplained: dict[str, str] = field(default_factory=dict)  # deletions that wait for a person: path -> why
    changed: list[str] = field(default_factory=list)  # ShadowProtect files changed at the source once sent
    deletes_wait: bool = False  # a deletion waits for the file that supersedes it to reach the target
    unknown: list[str] = field(default_factory=list)  # paths whose presence at the source is unknown
    not_now: bool = False  # the group has unknown paths: none of its deletions is made now


def pathkey(path: str, fold: bool = os.name == "nt") -> str:
    """Paths compare the way the target compares them: without case on SMB and on a Windows
    drive (`fold`), exactly elsewhere."""
    return path.casefold() if fold else path


def _level_selected(level: Level, mode: str, include_intra: bool) -> bool:
    if level is Level.BASE:
        return True
    if mode == "all":
        return level is not Level.INTRA or include_intra
    if mode == "daily-only":
        return level is Level.DAILY
    if mode == "intra-daily-only":
        return level is Level.INTRA
    # daily-monthly; weeklies are decided per chain (see _ChainFacts)
    return level in (Level.DAILY, Level.WEEKLY, Level.MONTHLY, Level.ROLLING)


class _ChainFacts:
    """Per-chain facts daily-monthly needs: monthly points and daily points."""

    def __init__(self, files: Iterable[BackupFile]):
        self.monthlies: dict[tuple, set] = defaultdict(set)
        self.dailies: dict[tuple, set] = defaultdict(set)
        for f in files:
            if f.family != "shadowprotect" or f.role is not Role.IMAGE:
                continue
            if f.level in MONTHLY_LEVELS:
                self.monthlies[f.chain].add(f.point)
            elif f.level is Level.DAILY:
                self.dailies[f.chain].add(f.point)

    def cut(self, chain: tuple) -> tuple | None:
        """Dailies and weeklies before the previous monthly are superseded."""
        points = sorted(self.monthlies.get(chain, ()))
        return points[-2] if len(points) >= 2 else None


def selected(f: BackupFile, rules: Rules, facts: _ChainFacts) -> bool:
    """Does the job's mode send this file? Sidecars follow their image's level."""
    if f.family == "macrium":
        return True
    if f.role is Role.KEY:
        return True
    assert f.level is not None
    if f.role is Role.IMAGE and f.level is Level.BASE and not rules.replicate_base:
        return False
    if not _level_selected(f.level, rules.mode, rules.include_intra_daily):
        return False
    if rules.mode == "daily-monthly" and f.level in (Level.DAILY, Level.WEEKLY):
        cut = facts.cut(f.chain)
        if cut is not None and f.point < cut:
            return False
        # A weekly is sent only where the daily at its point is gone: then it is the link.
        if f.level is Level.WEEKLY and f.point in facts.dailies.get(f.chain, ()):
            return False
    return True


def sender(files: Iterable[BackupFile], rules: Rules) -> Callable[[BackupFile], bool]:
    """Does the job's mode send this file? For the files of one group (`files`: all of them)."""
    facts = _ChainFacts(files)
    return lambda f: selected(f, rules, facts)


def group(source: Mapping[str, object], target: Mapping[str, object], family: str) -> dict[tuple, tuple[dict, dict]]:
    """Source and target paths by group, a volume or a backup definition (backup files only):
    group -> (source part, target part)."""
    out: dict[tuple, tuple[dict, dict]] = {}
    for side, files in ((0, source), (1, target)):
        for path, value in files.items():
            f = classify(path, family)
            if f is not None:
                out.setdefault(f.group, ({}, {}))[side][path] = value
    return out


def plan_group(
    source: Mapping[str, SourceFile],
    target: Mapping[str, RemoteFile],
    rules: Rules,
    keeps_mtime: bool = False,
    unknown: Collection[str] = frozenset(),
    sent: Mapping[str, Sent] | None = None,
    accepted: Mapping[str, tuple[int, int]] | None = None,
    folders: Collection[str] | None = None,
    fold_case: bool = False,
    now: float = 0.0,
) -> Plan:
    """The plan for ONE group (a volume's chains, a backup definition's sets), given only its
    source and target files.
    - `unknown`: paths whose presence at the source is not known (under a folder that failed
      to read, or gone from one listing and not yet confirmed): never sent nor deleted, and
      while the group has one, nothing of it is deleted at all; one last seen under a folder
      that fails to read (in `source`) and not on the target holds its chain back.
    - `sent`: the version (size, mtime) the agent recorded when it published each file.
      A ShadowProtect file whose published copy differs from the source (size; mtime, exactly,
      where the agent recorded what it sent) is `changed`: never sent again, unless that
      version is `accepted`.
    - `fold_case`: the target compares names without case (SMB, a Windows drive), so a name
      differing only in case at the source is the same file there.
    - `folders`: the source's folders (casefolded), for "its folder vanished".
    Mirrored deletions are in `mirrored` (explained) and `unexplained`; the job decides on
    them (deletions.decide); `deletes` holds the daily-monthly retention, never held."""
    sent = sent or {}
    accepted = accepted or {}
    src = {p: classify(p, rules.family) for p in source if p not in unknown}
    tgt = {p: classify(p, rules.family) for p in target}
    facts = _ChainFacts([f for f in src.values() if f] + [f for f in tgt.values() if f])
    key = (lambda p: p.casefold()) if fold_case else (lambda p: p)  # noqa: E731
    on_target = {key(p): p for p in target}
    in_source = {key(p) for p in source} | {key(p) for p in unknown}
    # Modification times, where known: the source's; for what is only on the target, the one
    # recorded when it was sent, else the target's own.
    mtimes = {p: t.mtime_ns for p, t in target.items() if t.mtime_ns is not None}
    mtimes.update({p: v.mtime_ns for p, v in sent.items() if p in target and v.size == target[p].size})
    mtimes.update({p: v.mtime_ns for p, v in source.items()})
    # Under a folder that fails to read, the files last seen keep their place (and their
    # queued work); one missed by a listing and not yet confirmed gone is simply not sent.
    out = Plan(unknown=sorted(p for p in unknown if p in source))
    for f in sorted((f for f in src.values() if f), key=lambda f: f.key):
        s = source[f.path]
        t_path = on_target.get(key(f.path))
        if t_path is not None:
            t = target[t_path]
            if _same(s, t, f, keeps_mtime, sent.get(t_path)):
                continue
            if f.family == "shadowprotect" and accepted.get(f.path) != (s.size, s.mtime_ns):
                # Written once, never changed: damaged or tampered with. So whatever the mode
                # selects of it now (a daily-monthly cut moves on), it is said.
                out.changed.append(f.path)
                continue
        if not selected(f, rules, facts):
            continue
        if s.ready:
            out.uploads.append(f.path)
        else:
            _wait(out, f)
    for p in out.unknown:
        u = classify(p, rules.family)
        if u is not None and key(p) not in on_target and selected(u, rules, facts):
            _wait(out, u, listed=False)  # holds its chain back: it may be there, and earlier
    files = {p: f for p, f in tgt.items() if f}
    retention = _retention(files) if rules.mode == "daily-monthly" else []
    kept = set(retention)
    out.deletes = sorted(retention, key=lambda p: files[p].key)
    # Nothing of a group is deleted while any of its files is unknown (not_now); what would
    # be is still judged, so that what waits for a person keeps being said.
    out.not_now = bool(unknown)
    gone = [p for p in _mirrored(files, in_source, rules, key) if p not in kept]
    published = {p: v.at for p, v in sent.items() if p in target and v.at}
    verdict = explain(gone, [p for p in source], list(target), folders, rules.family, mtimes, published, now)
    newest_first = lambda p: tuple(-x for x in files[p].key)  # noqa: E731 - what stays is a prefix
    out.mirrored = sorted(verdict.mirrored, key=newest_first)
    out.unexplained = {p: verdict.held[p] for p in sorted(verdict.held, key=newest_first)}
    out.deletes_wait = verdict.waiting
    out.mirrored_images = sum(1 for p in out.mirrored if files[p].role in (Role.IMAGE, Role.MACRIUM))
    return out


def _wait(out: Plan, f: BackupFile, listed: bool = True) -> None:
    if listed:
        out.waiting.append(f.path)
    if f.chain not in out.blockers or f.key < out.blockers[f.chain]:
        out.blockers[f.chain] = f.key


def decide_plans(plans: Iterable[Plan], has_source: bool, rules: Rules, allow_deletes: bool,
                 recent: Mapping[str, float] | None = None, now: float = 0.0) -> Decision:
    """The job-wide decision on the deletions of its groups' plans (deletions.decide): the
    explained ones (mirrored, and daily-monthly retention) and the held ones, against files
    changed at the source and max_deletes; none of a group with unknown files goes now."""
    plans = list(plans)
    held = {d: why for p in plans for d, why in p.unexplained.items()}
    mirrored = [d for p in plans for d in p.mirrored]
    # Deletions mirrored (or started) in the last 24 hours, not counting those still planned:
    # a deletion under way is in both.
    pending = set(mirrored)
    recent_images = sum(1 for x, t in (recent or {}).items() if now - t < WINDOW and x not in pending)
    d = decide(mirrored, sum(p.mirrored_images for p in plans), held,
               recent_images, sum(len(p.changed) for p in plans), has_source, rules.max_deletes, allow_deletes,
               retention=[d for p in plans for d in p.deletes])
    # A group with unknown files makes none of its deletions now; they count all the same, so
    # that what holds, and why, does not come and go with each file that vanishes.
    waiting = {x for p in plans if p.not_now for x in (*p.deletes, *p.mirrored, *p.unexplained)}
    return Decision(d.go - waiting, d.held, d.reason) if waiting else d


def combine(groups: Mapping[tuple, Plan], has_source: bool, rules: Rules, allow_deletes: bool,
            recent: Mapping[str, float] | None = None, now: float = 0.0) -> Plan:
    """The job's plan from its groups' plans, with the job-wide decision on deletions; its
    `deletes` are every deletion to make now."""
    out = Plan()
    parts = [groups[g] for g in sorted(groups)]
    d = decide_plans(parts, has_source, rules, allow_deletes, recent, now)
    out.held, out.held_count = d.reason, d.held
    for p in parts:
        out.uploads += p.uploads
        out.waiting += p.waiting
        out.changed += p.changed
        out.blockers.update(p.blockers)
        out.deletes += [x for x in (*p.deletes, *p.mirrored, *p.unexplained) if x in d.go]
    return out


def plan(
    source: Mapping[str, SourceFile],
    target: Mapping[str, RemoteFile],
    rules: Rules,
    keeps_mtime: bool = False,
    allow_deletes: bool = False,
    sent: Mapping[str, Sent] | None = None,
    recent: Mapping[str, float] | None = None,
    accepted: Mapping[str, tuple[int, int]] | None = None,
    unknown: Collection[str] = frozenset(),
    folders: Collection[str] | None = None,
    fold_case: bool = False,
    now: float = 0.0,
) -> Plan:
    """Uploads and deletions that bring `target` up to date with `source` under `rules`;
    `recent`: the mirrored deletions of the last 24 hours (path -> when, epoch seconds)."""
    groups = {g: plan_group(s, t, rules, keeps_mtime, {p for p in unknown if p in s or p in t}, sent, accepted,
                            folders, fold_case, now)
              for g, (s, t) in group(source, target, rules.family).items()}
    has_source = any(classify(p, rules.family) for p in source)
    return combine(groups, has_source, rules, allow_deletes, recent, now)


def _same(s: SourceFile, t: RemoteFile, f: BackupFile, keeps_mtime: bool, sent: Sent | None) -> bool:
    """Is the published copy the source's version? Sizes first; then modification times:
    the one the agent recorded when it sent the file (where it matches the copy's size),
    else, for Macrium files, the target's own where it keeps them. A ShadowProtect copy put
    there by hand (no record) is judged by its size only."""
    if s.size != t.size:
        return False
    if sent is not None and sent.size == t.size:
        return s.mtime_ns == sent.mtime_ns  # the source's own time as it was read: exactly
    if f.family == "macrium" and keeps_mtime and t.mtime_ns is not None:
        return abs(s.mtime_ns - t.mtime_ns) < MTIME_SLACK  # the target's copy of it: to its precision
    return True


def _mirrored(tgt: Mapping[str, BackupFile], in_source: set[str], rules: Rules, key) -> list[str]:
    """Target files whose source is gone, where the job mirrors deletions."""
    if not rules.mirror_deletes:
        return []
    return [path for path, f in tgt.items()
            if (f.family == "macrium" or rules.mode == "all") and key(path) not in in_source]


def _retention(tgt: Mapping[str, BackupFile]) -> list[str]:
    """ImageManager's S3 rule: once a new monthly (and its .md5) is complete on the target,
    dailies (and weekly links) older than the PREVIOUS monthly are removed."""
    stems = {f.stem for f in tgt.values() if f.role is Role.MD5}
    complete = [f for f in tgt.values() if f.role is Role.IMAGE and f.level in MONTHLY_LEVELS
                and f.stem in stems]
    facts = _ChainFacts(complete)
    out = []
    for path, f in tgt.items():
        if f.family != "shadowprotect" or f.level not in (Level.DAILY, Level.WEEKLY):
            continue
        cut = facts.cut(f.chain)
        if cut is not None and f.point < cut:
            out.append(path)
    return out


def without_dropped(p: Plan, dropped: Mapping[str, dict], entries: Mapping) -> Plan:
    """The plan less the operations the user dropped: a dropped upload only for the same
    version of the file (size and mtime), so a changed file is sent again."""
    def is_dropped(op: str, path: str) -> bool:
        d = dropped.get(path)
        if not d or d.get("op") != op:
            return False
        e = entries.get(path)
        return op == "delete" or (e is not None and [e.size, e.mtime_ns] == [d.get("size"), d.get("mtime_ns")])

    if dropped:
        p.uploads = [u for u in p.uploads if not is_dropped("upload", u)]
        p.changed = [c for c in p.changed if not is_dropped("upload", c)]  # a person saw it and let it be
        p.deletes = [d for d in p.deletes if not is_dropped("delete", d)]
        p.mirrored = [d for d in p.mirrored if not is_dropped("delete", d)]
        p.unexplained = {d: why for d, why in p.unexplained.items() if not is_dropped("delete", d)}
    return p
