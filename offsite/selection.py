"""What a job sends and deletes: the replication modes and retention, as pure functions.

`plan(source, target, rules)` compares what the source holds (with readiness) with what
the target holds and returns the uploads, the deletions, and the files the chain order
still waits for. The agent's reconciliation, its event handling and `offsite plan` all call
this one function. Nothing here touches the disk or the clock.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .backupfiles import BackupFile, Level, Role, classify

MONTHLY_LEVELS = (Level.MONTHLY, Level.ROLLING)


@dataclass(frozen=True)
class Rules:
    """The parts of a job that decide what is sent and deleted."""

    mode: str = "all"
    include_intra_daily: bool = False
    replicate_base: bool = True
    mirror_deletes: bool = True
    family: str = "auto"
    max_deletes: int = 100

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
class RemoteFile:
    size: int
    mtime_ns: int | None = None  # None where the target does not keep modification times


@dataclass
class Plan:
    uploads: list[str] = field(default_factory=list)  # in send order
    deletes: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # selected but not complete at the source
    blockers: dict[tuple, tuple] = field(default_factory=dict)  # chain -> first key still waited for
    held: str | None = None  # why deletions are held back, when they are
    held_count: int = 0


def pathkey(path: str) -> str:
    """Paths compare the way the platform compares them: case-insensitively on Windows."""
    return path.casefold() if os.name == "nt" else path


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


def _classified(paths: Iterable[str], family: str) -> dict[str, BackupFile]:
    out = {}
    for p in paths:
        f = classify(p, family)
        if f is not None:
            out[p] = f
    return out


def plan(
    source: Mapping[str, SourceFile],
    target: Mapping[str, RemoteFile],
    rules: Rules,
    keeps_mtime: bool = False,
    allow_deletes: bool = False,
) -> Plan:
    """Uploads and deletions that bring `target` up to date with `source` under `rules`."""
    src = _classified(source, rules.family)
    tgt = _classified(target, rules.family)
    facts = _ChainFacts(list(src.values()) + list(tgt.values()))
    on_target = {pathkey(p): p for p in target}
    in_source = {pathkey(p) for p in source}
    out = Plan()

    order = sorted(src.values(), key=lambda f: (f.chain, f.key))
    for f in order:
        if not selected(f, rules, facts):
            continue
        s = source[f.path]
        t_path = on_target.get(pathkey(f.path))
        if t_path is not None and _same(s, target[t_path], f, keeps_mtime):
            continue
        if s.ready:
            out.uploads.append(f.path)
        else:
            out.waiting.append(f.path)
            if f.chain not in out.blockers or f.key < out.blockers[f.chain]:
                out.blockers[f.chain] = f.key

    # Retention is the mode's own rule and runs only on what is complete on the target;
    # the max_deletes guard is for deletions mirrored from the source (SPEC section 5).
    retention = _retention(tgt) if rules.mode == "daily-monthly" else []
    mirrored = [p for p in _mirrored(tgt, in_source, rules) if p not in retention]
    images = [p for p in mirrored if tgt[p].role not in (Role.MD5, Role.BITMAP)]
    if mirrored and not src and not allow_deletes:
        out.held, out.held_count = "the source folder holds no backup files", len(mirrored)
        mirrored = []
    elif len(images) > rules.max_deletes and not allow_deletes:
        out.held = f"{len(images)} deletions exceed max_deletes = {rules.max_deletes}"
        out.held_count = len(mirrored)
        mirrored = []
    out.deletes = sorted(retention + mirrored, key=lambda p: (tgt[p].chain, tgt[p].key))
    return out


def _same(s: SourceFile, t: RemoteFile, f: BackupFile, keeps_mtime: bool) -> bool:
    if s.size != t.size:
        return False
    # ShadowProtect files never change once written; Macrium files change in place.
    if f.family == "macrium" and keeps_mtime and t.mtime_ns is not None:
        return abs(s.mtime_ns - t.mtime_ns) < 2_000_000_000  # FAT and SMB keep 2 s at worst
    return True


def _mirrored(tgt: dict[str, BackupFile], in_source: set[str], rules: Rules) -> list[str]:
    """Target files whose source is gone, where the job mirrors deletions."""
    if not rules.mirror_deletes:
        return []
    return [path for path, f in tgt.items()
            if (f.family == "macrium" or rules.mode == "all") and pathkey(path) not in in_source]


def _retention(tgt: dict[str, BackupFile]) -> list[str]:
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
