"""A simulated ShadowProtect + ImageManager writing one managed folder.

Per volume: a base image, an incremental every 15 minutes, a daily consolidation each
night (named after the day's newest incremental, plus -cd), a weekly one on Sunday nights
(-cd-cw) and a monthly one on the last night of the month (-cd-cm, or -cd-cw-cm), each
with its .md5 sidecar written after the image. Source retention (ImageManager's defaults):
intra-dailies deleted after 7 days, dailies after 15, weeklies after 90, monthlies kept.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

STEP = dt.timedelta(minutes=15)
RETENTION = {"intra": dt.timedelta(days=7), "daily": dt.timedelta(days=15),
             "weekly": dt.timedelta(days=90)}


@dataclass(frozen=True)
class Event:
    at: dt.datetime
    op: str  # "create" | "delete"
    path: str
    size: int = 0


@dataclass
class _Volume:
    name: str
    inc: int = 0
    day_last: int | None = None  # the newest incremental of the current day
    created: dict[str, tuple[str, dt.datetime]] = field(default_factory=dict)  # path -> (kind, when)


class ImageManager:
    def __init__(self, volumes: tuple[str, ...] = ("C_VOL",), start: dt.datetime = dt.datetime(2026, 10, 1),
                 base_size: int = 5000, inc_size: int = 300, step: dt.timedelta = STEP,
                 retention: dict[str, dt.timedelta] = RETENTION) -> None:
        self.volumes = [_Volume(v) for v in volumes]
        self.step_by, self.retention = step, retention
        self.now = start
        self.base_size, self.inc_size = base_size, inc_size
        self.files: dict[str, int] = {}  # what the folder holds now: path -> size
        self.ever: dict[str, str] = {}  # every image ever written: path -> kind

    def _create(self, out: list[Event], vol: _Volume, path: str, size: int, kind: str) -> None:
        self.files[path] = size
        out.append(Event(self.now, "create", path, size))
        if kind != "md5":
            vol.created[path] = (kind, self.now)
            self.ever[path] = kind
        md5 = path[: path.rfind(".")] + ".md5"
        if kind != "md5":
            self.files[md5] = 40
            out.append(Event(self.now, "create", md5, 40))

    def _delete(self, out: list[Event], path: str) -> None:
        for p in (path, path[: path.rfind(".")] + ".md5"):
            if self.files.pop(p, None) is not None:
                out.append(Event(self.now, "delete", p))

    def start(self) -> list[Event]:
        out: list[Event] = []
        for v in self.volumes:
            self._create(out, v, f"{v.name}-b001.spf", self.base_size, "base")
        return out

    def step(self) -> list[Event]:
        """Advance a step (15 minutes unless told): what ShadowProtect and ImageManager do then."""
        out: list[Event] = []
        before = self.now
        self.now += self.step_by
        for v in self.volumes:
            v.inc += 1
            v.day_last = v.inc
            self._create(out, v, f"{v.name}-b001-i{v.inc:03d}.spi", self.inc_size, "intra")
        if self.now.date() != before.date():  # midnight: the nightly consolidation
            ended = before.date()
            for v in self.volumes:
                daily = f"{v.name}-b001-i{v.day_last:03d}-cd.spi"
                self._create(out, v, daily, self.inc_size * 4, "daily")
                weekly = ended.weekday() == 6
                if weekly:
                    self._create(out, v, daily.replace("-cd.spi", "-cd-cw.spi"), self.inc_size * 8, "weekly")
                if (ended + dt.timedelta(days=1)).day == 1:
                    stem = "-cd-cw-cm.spi" if weekly else "-cd-cm.spi"
                    self._create(out, v, daily.replace("-cd.spi", stem), self.inc_size * 16, "monthly")
                for path, (kind, when) in list(v.created.items()):
                    if kind in self.retention and self.now - when > self.retention[kind]:
                        self._delete(out, path)
                        del v.created[path]
        return out

    def run(self, duration: dt.timedelta) -> list[Event]:
        out: list[Event] = []
        end = self.now + duration
        while self.now < end:
            out += self.step()
        return out


def write_events(folder, events: list[Event], pause: float = 0.0) -> None:
    """Play events onto a real folder: images are written in two halves with a pause, the way
    a backup is written over time; deletions remove the file."""
    import os
    import time

    for ev in events:
        path = folder / ev.path
        if ev.op == "delete":
            path.unlink(missing_ok=True)
            continue
        data = os.urandom(ev.size)
        with open(path, "wb") as f:
            f.write(data[: ev.size // 2])
            f.flush()
            if pause:
                time.sleep(pause)
            f.write(data[ev.size // 2:])
