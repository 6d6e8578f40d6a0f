"""Restorable points (offsite/restorable.py): the pure rule, on names as ImageManager and Site
Manager write them. The agent's use of it is tested end to end in test_restorable_e2e.py."""
from __future__ import annotations

from offsite.backupfiles import Level, classify
from offsite.restorable import Point, of_group, repository_info

T0 = 1_700_000_000.0


def with_md5(*images: str) -> list[str]:
    return [p for i in images for p in (i, i.rsplit(".", 1)[0] + ".md5")]


def restorable(source: list[str], target: list[str], *, mode: str = "all", replicate_base: bool = True,
               info: str | None = None) -> Point | None:
    on = set(target)
    paths = sorted(set(source) | on)
    times = {p: T0 + i * 3600 for i, p in enumerate(paths)}

    def wanted(f) -> bool:
        return mode != "all" or f.level is not Level.INTRA

    return of_group(paths, "auto", on.__contains__, times, wanted, replicate_base, info)


CHAIN = with_md5("C_VOL-b001.spf", "C_VOL-b001-i010-cd.spi", "C_VOL-b001-i020-cd.spi", "C_VOL-b001-i030-cd.spi")


def test_a_complete_chain_is_restorable_at_its_newest_point():
    p = restorable(CHAIN, CHAIN)
    assert p is not None and p.chain == "C_VOL"
    assert p.point == "C_VOL-b001-i030-cd.spi" and p.missing is None and p.base_offsite


def test_a_link_not_yet_offsite_stops_the_chain_there_and_is_named():
    target = [p for p in CHAIN if "i020" not in p]
    p = restorable(CHAIN, target)
    assert p.point == "C_VOL-b001-i010-cd.spi" and p.missing == "C_VOL-b001-i020-cd.spi"


def test_an_image_without_its_md5_offsite_is_not_a_link():
    target = [p for p in CHAIN if p != "C_VOL-b001-i020-cd.md5"]
    p = restorable(CHAIN, target)
    assert p.point == "C_VOL-b001-i010-cd.spi" and p.missing == "C_VOL-b001-i020-cd.md5"


def test_nothing_is_restorable_without_the_base():
    target = [p for p in CHAIN if "b001." not in p]
    p = restorable(CHAIN, target)
    assert p.point is None and p.time is None and p.missing == "C_VOL-b001.spf"


def test_a_weekly_counts_as_the_dailies_it_absorbed():
    # ImageManager consolidated i010..i030 into a weekly at 30 and removed the dailies (the
    # job mirrored that): the weekly is the link from the base.
    files = with_md5("C_VOL-b001.spf", "C_VOL-b001-i030-cd-cw.spi", "C_VOL-b001-i031-cd.spi")
    p = restorable(files, files)
    assert p.point == "C_VOL-b001-i031-cd.spi" and p.missing is None


def test_a_daily_after_a_weekly_needs_the_weekly():
    files = with_md5("C_VOL-b001.spf", "C_VOL-b001-i030-cd-cw.spi", "C_VOL-b001-i031-cd.spi")
    target = [p for p in files if "i030" not in p]
    p = restorable(files, target)
    assert p.point == "C_VOL-b001.spf" and p.missing == "C_VOL-b001-i030-cd-cw.spi"


def test_an_encrypted_chain_needs_its_key_offsite():
    files = ["C_VOL-b001.spk", *CHAIN]
    p = restorable(files, CHAIN)
    assert p.point is None and p.missing == "C_VOL-b001.spk"
    assert restorable(files, files).point == "C_VOL-b001-i030-cd.spi"


def test_intra_dailies_are_links_one_step_each():
    files = with_md5("C_VOL-b001.spf", *(f"C_VOL-b001-i{i:03d}.spi" for i in range(1, 6)))
    target = [p for p in files if "i003" not in p]
    p = restorable(files, target, mode="intra-daily-only")
    assert p.point == "C_VOL-b001-i002.spi" and p.missing == "C_VOL-b001-i003.spi"


def test_without_the_base_replicated_it_is_taken_as_offsite_and_said_so():
    target = [p for p in CHAIN if p != "C_VOL-b001.spf"]
    p = restorable(CHAIN, target, replicate_base=False)
    assert p.point == "C_VOL-b001-i030-cd.spi" and not p.base_offsite and p.missing is None


def test_a_new_chain_whose_base_is_not_offsite_yet_leaves_the_old_chain_restorable():
    new = with_md5("C_VOL-b002.spf")
    p = restorable(CHAIN + new, CHAIN)
    assert p.point == "C_VOL-b001-i030-cd.spi" and p.missing == "C_VOL-b002.spf"


def test_spanned_pieces_are_all_needed():
    files = ["C_VOL-b001.spf", "C_VOL-b001.sp1", "C_VOL-b001.sp2", "C_VOL-b001.md5"]
    assert restorable(files, files).point == "C_VOL-b001.spf"
    p = restorable(files, [f for f in files if not f.endswith(".sp2")])
    assert p.point is None and p.missing == "C_VOL-b001.sp2"


def test_a_machine_folder_names_the_volume_with_its_folder():
    files = [f"SRV01/{p}" for p in CHAIN]
    assert restorable(files, files).chain == "SRV01/C_VOL"
    assert classify("SRV01/System Reserved_VOL-b001.spf") is not None
    assert restorable(["SRV01/System Reserved_VOL-b001.spf", "SRV01/System Reserved_VOL-b001.md5"],
                      []).chain == "SRV01/System Reserved_VOL"


GUID = "REPO/PC1/5C3F0F5E-0000-4000-8000-000000000001"
SET = [f"{GUID}/4F6F6CACA58B077D-{i:02d}-{i:02d}.mrimg" for i in range(3)]
INFO = "REPO/Macrium Repository Information.txt"


def test_macrium_the_newest_increment_with_every_earlier_one_offsite():
    p = restorable(SET + [INFO], SET[:2] + [INFO], info=INFO)
    assert p.chain == GUID and p.point == SET[1] and p.missing == SET[2]
    assert restorable(SET + [INFO], SET + [INFO], info=INFO).point == SET[2]


def test_macrium_needs_the_repository_information_file():
    p = restorable(SET + [INFO], SET, info=INFO)
    assert p.point is None and p.missing == INFO
    assert repository_info([INFO, *SET], GUID) == INFO
    assert repository_info(SET, GUID) is None


def test_an_incremental_needs_the_one_numbered_before_it_whoever_knows_of_it():
    # i002 is on neither side (lost, or never seen): i003 cannot be restored (attack, issue 18).
    files = with_md5("C_VOL-b001.spf", "C_VOL-b001-i001.spi", "C_VOL-b001-i003.spi")
    p = restorable(files, files, mode="intra-daily-only")
    assert p.point == "C_VOL-b001-i001.spi" and p.missing is None  # nothing the job could still send
    # after a daily that absorbed them, the next incremental starts at the daily's point
    files = with_md5("C_VOL-b001.spf", "C_VOL-b001-i005-cd.spi", "C_VOL-b001-i006.spi")
    assert restorable(files, files, mode="all").point == "C_VOL-b001-i006.spi"


def test_an_image_known_only_by_its_md5_is_a_link_no_one_holds():
    files = with_md5("C_VOL-b001.spf", "C_VOL-b001-i020-cd.spi") + ["C_VOL-b001-i010-cd.md5"]
    p = restorable(files, files)
    assert p.point == "C_VOL-b001.spf" and p.missing == "C_VOL-b001-i010-cd.spi"


def test_old_style_differentials_start_at_the_base_and_their_incrementals_need_them():
    files = with_md5("C_VOL-b001.spf", "C_VOL-b001-d001-i000.spi", "C_VOL-b001-d001-i001.spi",
                     "C_VOL-b001-d002-i000.spi")
    target = [f for f in files if "d001-i000" not in f]
    p = restorable(files, target, mode="intra-daily-only")
    assert p.point == "C_VOL-b001-d002-i000.spi"  # the second differential needs only the base


def test_the_alert_names_each_volume_past_max_rpo_and_not_one_whose_age_is_unknown():
    import datetime as dt

    from offsite.alerts import Facts, Limits, conditions

    now = dt.datetime.fromtimestamp(T0 + 10 * 86400, dt.timezone.utc)
    facts = Facts(state="idle", restorable=(
        ("C_VOL", "C_VOL-b001-i030-cd.spi", T0 + 10 * 86400 - 3600, None),  # fresh
        ("D_VOL", "D_VOL-b001-i010-cd.spi", T0, "D_VOL-b001-i011-cd.spi"),  # 10 days old
        ("E_VOL", None, None, "E_VOL-b001.spf"),  # nothing offsite
        ("F_VOL", "F_VOL-b001.spf", None, None),  # on the target, its time not known: no claim
    ))
    msg = conditions("job1", facts, Limits(max_rpo=86400.0), now)["restorable"]
    assert msg.startswith("D_VOL: the newest point restorable offsite is 10d 0h old, D_VOL-b001-i011-cd.spi is "
                          "missing there; E_VOL: nothing restorable offsite, E_VOL-b001.spf is missing there "
                          "(max_rpo 1d 0h)")
    assert "C_VOL" not in msg and "F_VOL" not in msg
    assert "restorable" not in conditions("job1", facts, Limits(max_rpo=None), now)


# ---------------------------------------------------------------- end to end, the real agent
import hashlib  # noqa: E402
import os  # noqa: E402
import urllib.request  # noqa: E402

from conftest import finished_file, wait_until  # noqa: E402
from servers import free_port  # noqa: E402


def image(site, name: str, age: float = 60, corrupt: bool = False) -> None:
    """An image and its .md5 sidecar, as ShadowProtect writes them (the sidecar after)."""
    data = os.urandom(3000)
    finished_file(site.source / name, data=data, age=age)
    digest = hashlib.md5(b"not this image" if corrupt else data).hexdigest()
    finished_file(site.source / (name.rsplit(".", 1)[0] + ".md5"), data=f"{digest} *{name}\r\n".encode(), age=age)


def point(site) -> dict:
    return next((r for r in site.job_status()["restorable"] if r["chain"] == "C_VOL"), {"point": None, "missing": None})


def alerts(site) -> set[str]:
    return {a["name"] for a in site.job_status()["alerts"]}


def test_restorable_points_follow_imagemanager_stop_at_a_failed_link_and_alert(site, start_agent):
    port = free_port()
    site.config(agent=f'metrics = "127.0.0.1:{port}"', job='max_rpo = "1h"')
    image(site, "C_VOL-b001.spf", age=3 * 3600)
    image(site, "C_VOL-b001-i001-cd.spi", age=2 * 3600)
    agent = start_agent()
    # Two hours old: restorable, and older than max_rpo.
    wait_until(lambda: point(site)["point"] == "C_VOL-b001-i001-cd.spi" and "restorable" in alerts(site),
               timeout=90, what="the first daily restorable, and the alert")
    p = point(site)
    assert p["missing"] is None and 2 * 3600 <= p["age_seconds"] < 2 * 3600 + 120 and p["base_offsite"]
    message = next(a["message"] for a in site.job_status()["alerts"] if a["name"] == "restorable")
    assert message.startswith("C_VOL: the newest point restorable offsite is 2h 0") and "max_rpo 1h" in message
    # ImageManager's next daily: restorable a minute ago, the alert clears.
    image(site, "C_VOL-b001-i002-cd.spi")
    wait_until(lambda: point(site)["point"] == "C_VOL-b001-i002-cd.spi" and "restorable" not in alerts(site),
               timeout=90, what="the new daily restorable and the alert cleared")
    # A weekly consolidation absorbs both dailies, which ImageManager then removes: the weekly
    # is the link from the base.
    image(site, "C_VOL-b001-i002-cd-cw.spi", age=30)
    for name in ("C_VOL-b001-i001-cd", "C_VOL-b001-i002-cd"):
        for ext in (".spi", ".md5"):
            (site.source / (name + ext)).unlink()
    # (The weekly is the point as soon as it is offsite, the dailies' mirrored deletion or not.)
    wait_until(lambda: point(site)["point"] == "C_VOL-b001-i002-cd-cw.spi", timeout=90,
               what="the weekly as the restorable point")
    # A daily that does not match its .md5 is never sent: the chain stops before it, and
    # `missing` names it, while later dailies wait behind it.
    image(site, "C_VOL-b001-i003-cd.spi", age=20, corrupt=True)
    image(site, "C_VOL-b001-i004-cd.spi", age=10)
    wait_until(lambda: "source-corrupt" in alerts(site), timeout=90, what="the damaged daily found")
    wait_until(lambda: point(site)["missing"] == "C_VOL-b001-i003-cd.spi", timeout=90, what="the missing link named")
    assert point(site)["point"] == "C_VOL-b001-i002-cd-cw.spi"
    text = site.offsite("status").stdout
    assert "restorable C_VOL: C_VOL-b001-i002-cd-cw.spi of " in text
    assert "the newest point at the source waits for C_VOL-b001-i003-cd.spi" in text
    scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    line = next(x for x in scrape.splitlines() if x.startswith("offsite_restorable_timestamp_seconds{"))
    assert 'chain="C_VOL"' in line and 'job="job1"' in line
    weekly = (site.source / "C_VOL-b001-i002-cd-cw.spi").stat().st_mtime
    assert abs(float(line.rsplit(" ", 1)[1]) - weekly) < 1
    assert agent.stop() == 0
    # Without an agent, status tells what the last one knew.
    offline = site.job_status()["restorable"]
    assert [(r["chain"], r["point"], r["missing"]) for r in offline] == [
        ("C_VOL", "C_VOL-b001-i002-cd-cw.spi", "C_VOL-b001-i003-cd.spi")]


def test_a_copy_cut_short_on_the_target_is_not_a_link(site, start_agent):
    """Found by the attack on issue 18: the rule looked at names only."""
    site.config()
    image(site, "C_VOL-b001.spf", age=3 * 3600)
    image(site, "C_VOL-b001-i001-cd.spi", age=2 * 3600)
    agent = start_agent()
    wait_until(lambda: point(site)["point"] == "C_VOL-b001-i001-cd.spi", timeout=90, what="sent")
    assert agent.stop() == 0
    copy = site.target / "C_VOL-b001-i001-cd.spi"
    copy.write_bytes(copy.read_bytes()[:1000])  # damaged on the target
    agent = start_agent()
    wait_until(lambda: point(site)["point"] == "C_VOL-b001.spf", timeout=90, what="the point back at the base")
    assert point(site)["missing"] == "C_VOL-b001-i001-cd.spi"
    assert agent.stop() == 0


def test_a_start_with_the_target_unplugged_keeps_what_was_restorable(site, start_agent):
    """Found by the attack on issue 18: the points were forgotten until the first look."""
    site.config()
    image(site, "C_VOL-b001.spf")
    agent = start_agent()
    wait_until(lambda: point(site)["point"] == "C_VOL-b001.spf", timeout=90, what="sent")
    assert agent.stop() == 0
    site.location.rename(site.root / "unplugged")
    agent = start_agent()
    wait_until(lambda: site.job_status()["state"] in ("error", "paused"), timeout=60, what="the target missed")
    assert point(site)["point"] == "C_VOL-b001.spf"  # while the agent runs
    assert agent.stop() == 0
    assert point(site)["point"] == "C_VOL-b001.spf"  # and after


# ---------------------------------------------------------------- a property, on simulated histories
import datetime as dt  # noqa: E402
import functools  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from imagemanager import ImageManager  # noqa: E402


@functools.lru_cache(None)
def history(days: int, hours: int) -> tuple[ImageManager, dict[str, int | None]]:
    """An ImageManager history, and each image's true start (the point its restore needs
    before it; None for the base), known by construction (after the attack's generator)."""
    im = ImageManager(step=dt.timedelta(hours=hours))
    im.start()
    im.run(dt.timedelta(days=days))
    starts: dict[str, int | None] = {}
    last = {"daily": 0, "weekly": 0, "monthly": 0}
    for path, kind in im.ever.items():  # in the order they were written
        n = classify(path).point[1]
        if kind == "base":
            starts[path] = None
        elif kind == "intra":
            starts[path] = n - 1
        else:
            starts[path] = last[kind]
            last[kind] = n
            if kind == "monthly":
                last["weekly"] = n
    return im, starts


def truly_restorable(path: str, starts: dict, target: set, memo: dict) -> bool:
    if path not in memo:
        memo[path] = False
        s = starts[path]
        memo[path] = path in target and path.rsplit(".", 1)[0] + ".md5" in target and (
            s is None or any(classify(p).point[1] == s and (starts[p] is None) == (s == 0)
                             and truly_restorable(p, starts, target, memo) for p in starts))
    return memo[path]


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(days=st.integers(1, 40), hours=st.sampled_from([3, 6]), data=st.data())
def test_a_point_called_restorable_truly_is(days, hours, data):
    """Whatever part of a history the target holds, the point the rule names is one whose
    whole restore path (each image with its .md5) is on the target. What the target lacks is
    known at the source (the agent saw it: the rule's premise, see restorable.py)."""
    im, starts = history(days, hours)
    ever = sorted(p for i in starts for p in (i, i.rsplit(".", 1)[0] + ".md5"))
    keep = data.draw(st.lists(st.booleans(), min_size=len(ever), max_size=len(ever)))
    target = {p for p, k in zip(ever, keep) if k}
    paths = sorted(set(im.files) | set(ever))
    times = {p: float(i) for i, p in enumerate(paths)}
    p = of_group(paths, "shadowprotect", target.__contains__, times, lambda f: True)
    if p is not None and p.point:
        assert truly_restorable(p.point, starts, target, {}), p


def test_a_definitions_point_follows_its_repository_information_file():
    """The information file is in another group than the definition (the repository's root):
    its arrival on the target moves the definition's point without the definition changing."""
    from types import SimpleNamespace

    from offsite.agent.points import Points
    from offsite.selection import RemoteFile, Rules

    entries = {p: SimpleNamespace(size=10, mtime_ns=int(T0 * 1e9)) for p in [*SET, INFO]}
    view = SimpleNamespace(entries=entries)
    members = {("macrium", GUID.casefold()): set(SET), ("macrium", "repo"): {INFO}}
    target = {p: RemoteFile(10) for p in SET}
    points = Points(Rules(family="macrium"))
    first = points.of(members, target, view, {})  # type: ignore[arg-type]
    assert [(p.chain, p.point, p.missing) for p in first] == [(GUID, None, INFO)]
    target[INFO] = RemoteFile(10)  # published; the definition's group did not change
    assert [(p.point, p.missing) for p in points.of(members, target, view, {})] == [(SET[2], None)]  # type: ignore[arg-type]
    target[SET[1]] = RemoteFile(3)  # a copy cut short on the target is not a link
    points.forget(("macrium", GUID.casefold()))
    assert [(p.point, p.missing) for p in points.of(members, target, view, {})] == [(SET[0], SET[1])]  # type: ignore[arg-type]
