"""A job's restorable points, from what its planner holds (chains.py): each group's paths at
the source and on the target, the target's listing, the versions sent. The rule itself is
restorable.py; this keeps one point per group and computes a group again only once the
planner says it changed (`forget`), so a status read costs nothing per file.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping

from ..backupfiles import REPOSITORY_INFO, classify
from ..restorable import Point, of_group, repository_info
from ..selection import RemoteFile, Rules, Sent, sender
from ..watchers import SourceView


class Points:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self._by_group: dict[tuple, Point | None] = {}
        self._infos: tuple = ()  # the repository information files, and whether each is on the target

    def forget(self, group: tuple | None = None) -> None:
        """A group changed (None: every group)."""
        if group is None:
            self._by_group = {}
        else:
            self._by_group.pop(group, None)

    def of(self, members: Mapping[tuple, Collection[str]], target: Mapping[str, RemoteFile], view: SourceView,
           sent: Mapping[str, Sent]) -> list[Point]:
        """Per volume or backup definition, the newest point restorable from the offsite copy
        alone, by name."""
        infos = [p for g, paths in members.items() if g[0] == "macrium" for p in paths
                 if p.rsplit("/", 1)[-1].casefold() == REPOSITORY_INFO.casefold() and p in view.entries]
        seen = tuple((p, p in target) for p in sorted(infos))
        if seen != self._infos:  # an information file came or went: every definition's point may move
            self._infos = seen
            self._by_group = {g: p for g, p in self._by_group.items() if g[0] != "macrium"}
        out = []
        for g, paths in members.items():
            if g not in self._by_group:
                self._by_group[g] = self._point(g, paths, target, view, sent, infos)
            point = self._by_group[g]
            if point is not None:
                out.append(point)
        return sorted(out, key=lambda p: p.chain)

    def _point(self, g: tuple, paths: Collection[str], target: Mapping[str, RemoteFile], view: SourceView,
               sent: Mapping[str, Sent], infos: list[str]) -> Point | None:
        def complete(p: str) -> bool:
            """On the target with the size it was sent with (or, not sent by this agent, the
            source's): a copy cut short or damaged there is not a link."""
            there, was, at = target.get(p), sent.get(p), view.entries.get(p)
            if there is None:
                return False
            want = was.size if was is not None else at.size if at is not None else None
            return want is None or there.size == want

        times: dict[str, float] = {}
        for p in paths:
            e, s, r = view.entries.get(p), sent.get(p), target.get(p)
            ns = e.mtime_ns if e else s.mtime_ns if s else r.mtime_ns if r else None
            if ns:
                times[p] = ns / 1e9
        files = [f for f in (classify(p, self.rules.family) for p in paths) if f is not None]
        info = repository_info(infos, g[1] if g[1] != "." else "") if g[0] == "macrium" else None
        return of_group(paths, self.rules.family, complete, times, sender(files, self.rules),
                        self.rules.replicate_base, info)
