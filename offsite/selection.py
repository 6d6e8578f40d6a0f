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
    mirrored: list[str] = field(default_factory=list)  # plan_chain only: deletions mirrored from the source
    mirrored_images: int = 0  # of which images (the max_deletes guard counts these)


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


def group(source: Mapping[str, object], target: Mapping[str, object], family: str) -> dict[tuple, tuple[dict, dict]]:
    """Source and target paths by chain (backup files only): chain -> (source part, target part)."""
    out: dict[tuple, tuple[dict, dict]] = {}
    for side, files in ((0, source), (1, target)):
        for path, value in files.items():
            f = classify(path, family)
            if f is not None:
                out.setdefault(f.chain, ({}, {}))[side][path] = value
    return out


def plan_chain(
    source: Mapping[str, SourceFile],
    target: Mapping[str, RemoteFile],
    rules: Rules,
    keeps_mtime: bool = False,
) -> Plan:
    """The plan for ONE chain, given only that chain's source and target files. Deletions
    mirrored from the source are in `mirrored` (the job-wide max_deletes guard decides on
    them, see combine()); `deletes` holds the retention deletions, which are never held."""
    src = {p: classify(p, rules.family) for p in source}
    tgt = {p: classify(p, rules.family) for p in target}
    facts = _ChainFacts([f for f in src.values() if f] + [f for f in tgt.values() if f])
    on_target = {pathkey(p): p for p in target}
    in_source = {pathkey(p) for p in source}
    out = Plan()
    for f in sorted((f for f in src.values() if f), key=lambda f: f.key):
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
    files = {p: f for p, f in tgt.items() if f}
    retention = _retention(files) if rules.mode == "daily-monthly" else []
    kept = set(retention)
    mirrored = [p for p in _mirrored(files, in_source, rules) if p not in kept]
    by_key = lambda p: files[p].key  # noqa: E731
    out.deletes = sorted(retention, key=by_key)
    out.mirrored = sorted(mirrored, key=by_key)
    out.mirrored_images = sum(1 for p in mirrored if files[p].role not in (Role.MD5, Role.BITMAP))
    return out


def hold(mirrored: int, images: int, has_source: bool, rules: Rules, allow_deletes: bool) -> str | None:
    """Why mirrored deletions wait for `offsite sync --allow-deletes`, or None (SPEC section 5):
    a source that holds no backup files at all, or more image deletions than max_deletes."""
    if allow_deletes or not mirrored:
        return None
    if not has_source:
        return "the source folder holds no backup files"
    if images > rules.max_deletes:
        return f"{images} deletions exceed max_deletes = {rules.max_deletes}"
    return None


def combine(chains: Mapping[tuple, Plan], has_source: bool, rules: Rules, allow_deletes: bool) -> Plan:
    """The job's plan from its chains' plans, in chain order, with the max_deletes guard."""
    out = Plan()
    parts = [chains[c] for c in sorted(chains)]
    mirrored = sum(len(p.mirrored) for p in parts)
    out.held = hold(mirrored, sum(p.mirrored_images for p in parts), has_source, rules, allow_deletes)
    out.held_count = mirrored if out.held else 0
    for p in parts:
        out.uploads += p.uploads
        out.waiting += p.waiting
        out.blockers.update(p.blockers)
        out.deletes += p.deletes if out.held else sorted(
            p.deletes + p.mirrored, key=lambda x: classify(x, rules.family).key)  # type: ignore[union-attr]
    return out


def plan(
    source: Mapping[str, SourceFile],
    target: Mapping[str, RemoteFile],
    rules: Rules,
    keeps_mtime: bool = False,
    allow_deletes: bool = False,
) -> Plan:
    """Uploads and deletions that bring `target` up to date with `source` under `rules`."""
    chains = {c: plan_chain(s, t, rules, keeps_mtime) for c, (s, t) in group(source, target, rules.family).items()}
    has_source = any(classify(p, rules.family) for p in source)
    return combine(chains, has_source, rules, allow_deletes)


def _same(s: SourceFile, t: RemoteFile, f: BackupFile, keeps_mtime: bool) -> bool:
    if s.size != t.size:
        return False
    # ShadowProtect files never change once written; Macrium files change in place.
    if f.family == "macrium" and keeps_mtime and t.mtime_ns is not None:
        return abs(s.mtime_ns - t.mtime_ns) < 2_000_000_000  # FAT and SMB keep 2 s at worst
    return True


def _mirrored(tgt: Mapping[str, BackupFile], in_source: set[str], rules: Rules) -> list[str]:
    """Target files whose source is gone, where the job mirrors deletions."""
    if not rules.mirror_deletes:
        return []
    return [path for path, f in tgt.items()
            if (f.family == "macrium" or rules.mode == "all") and pathkey(path) not in in_source]


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
