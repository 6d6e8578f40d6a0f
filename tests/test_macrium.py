"""A Macrium job over a Site Manager repository, end to end: the real agent mirrors the
repository, its `Macrium Repository Information.txt` included, through a synthetic full, a
merge, a new backup definition and a Reflect X file still being written, across a SIGKILL."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import wait_until

INFO = "Macrium Repository Information.txt"
TRAILER = b"\x00" * 8 + b"MACRIUM_FILE"  # 20 bytes; the last 12 mark a finished Reflect X file


def write(path: Path, data: bytes, age: float = 60) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (time.time() - age, time.time() - age))


def info(*guids: str) -> bytes:
    return "".join(f"{g}\tDefinition {i}\r\n" for i, g in enumerate(guids)).encode()


def source_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_site_manager_repository_is_mirrored_with_its_information_file(kind, servers, site, start_agent):
    server = servers.get(kind)
    loc = server.new_location()
    site.config(target=loc, job='family = "macrium"')
    a, b, c = "{1F6E2A3B-AAAA}", "{2B7F3C4D-BBBB}", "{3C8A4D5E-CCCC}"
    src = site.source
    write(src / INFO, info(a, b))
    write(src / "PC1" / a / "4F6F6CACA58B077D-00-00.mrimgx", os.urandom(2 << 20) + TRAILER)
    write(src / "PC1" / a / "4F6F6CACA58B077D-01-01.mrimgx", os.urandom(256 << 10) + TRAILER)
    write(src / "PC1" / b / "onyx-system3-00-00.mrimg", os.urandom(1 << 20))

    def mirrored() -> bool:
        got = {p: d for p, d in server.files(loc, "job1").items() if not p.startswith(".offsite/")}
        return got == source_files(src)

    agent = start_agent()
    wait_until(mirrored, timeout=60, what="the repository mirrored")
    assert INFO in server.files(loc, "job1")

    # Reflect writes a new definition's full image (not finished: no trailer yet), Site
    # Manager records the definition in the information file, and a synthetic full merges
    # the first incremental into the full image of the first definition.
    unfinished = src / "PC2" / c / "D684BA87241263E2-demo-00-00.mrimgx"
    body = os.urandom(512 << 10)
    write(unfinished, body)
    write(src / INFO, info(a, b, c), age=0)
    write(src / "PC1" / a / "4F6F6CACA58B077D-00-00.mrimgx", os.urandom(2 << 20) + os.urandom(300 << 10) + TRAILER,
          age=0)
    (src / "PC1" / a / "4F6F6CACA58B077D-01-01.mrimgx").unlink()
    wanted = {p: d for p, d in source_files(src).items() if not p.startswith("PC2/")}

    def caught_up() -> bool:
        got = {p: d for p, d in server.files(loc, "job1").items() if not p.startswith(".offsite/")}
        return got == wanted

    wait_until(caught_up, timeout=60, what="the synthetic full, the merge and the new information file")
    agent.kill()  # SIGKILL while the unfinished image waits for its trailer
    agent = start_agent()

    def held_back() -> bool:
        # The restarted agent (its own status, not the killed one's) has looked at the source
        # and the target, and holds the unfinished image back as the one file still being
        # written: the file is older than settle, so only the missing trailer can hold it.
        sent = [p for p in server.files(loc, "job1") if p.startswith("PC2/")]
        assert not sent, f"sent without its trailer: {sent}"
        st = site.status()
        job = st["jobs"][0]
        return st["agent"]["pid"] == agent.proc.pid and job["state"] != "starting" and job["waiting_files"] == 1

    wait_until(held_back, timeout=60, what="the restarted agent to look and hold the unfinished image back")
    assert not any(p.startswith("PC2/") for p in server.files(loc, "job1"))
    queued = json.loads(site.offsite("queue", "list", "--json").stdout)
    assert not [i for i in queued if i["path"].startswith("PC2/")]  # not on its way either
    with open(unfinished, "ab") as f:
        f.write(TRAILER)
    wait_until(mirrored, timeout=60, what="the finished Reflect X image")
    assert server.files(loc, "job1")[INFO] == info(a, b, c)
    assert agent.stop() == 0
