"""The replication modes and retention against a simulated ImageManager.

The simulation writes two months of 15-minute incrementals with their .md5 sidecars,
nightly dailies, weekly and monthly consolidations, and deletes files by ImageManager's
retention. Every six simulated hours the plan is applied to a simulated target, the way
the agent applies it; the tests check the target's content against each mode's rule and,
at every step, that uploads come in chain order and deletions never precede uploads.
"""
from __future__ import annotations

import datetime as dt

import pytest
from imagemanager import ImageManager

from offsite.backupfiles import Level, Role, classify
from offsite.selection import RemoteFile, Rules, Sent, SourceFile, decide_plans, plan, plan_group

DAYS = 62  # October and November: two monthlies, so daily-monthly retention fires


def simulate(rules: Rules, days: int = DAYS, start_after: int = 0, check=None):
    """Run the simulation; apply each plan to a simulated target. Returns (im, target)."""
    im = ImageManager(volumes=("C_VOL", "System Reserved_VOL"))
    im.start()
    target: dict[str, RemoteFile] = {}
    for quarter in range(days * 4):
        im.run(dt.timedelta(hours=6))
        if quarter < start_after * 4:
            continue
        source = {p: SourceFile(s, 0) for p, s in im.files.items()}
        p = plan(source, target, rules)
        assert p.held is None, p.held
        if check:
            check(p, source, target)
        _assert_chain_order(p.uploads)
        for u in p.uploads:
            target[u] = RemoteFile(source[u].size)
        for d in p.deletes:
            del target[d]
    return im, target


def _assert_chain_order(uploads):
    by_chain: dict = {}
    for u in uploads:
        f = classify(u)
        by_chain.setdefault(f.chain, []).append(f.key)
    for keys in by_chain.values():
        assert keys == sorted(keys)


def kinds(paths, *levels, roles=(Role.IMAGE,)):
    return {p for p in paths if (f := classify(p)) and f.level in levels and f.role in roles}


def with_md5(images):
    return set(images) | {p[: p.rfind(".")] + ".md5" for p in images}


def test_mode_all_mirrors_consolidated_files():
    im, target = simulate(Rules(mode="all"))
    expected = with_md5(kinds(im.files, Level.BASE, Level.DAILY, Level.WEEKLY, Level.MONTHLY))
    assert set(target) == expected
    assert not kinds(target, Level.INTRA)
    # dailies older than 15 days are gone at the source, and so on the target
    ever_dailies = {p for p, k in im.ever.items() if k == "daily"}
    assert len(kinds(target, Level.DAILY)) == len(kinds(im.files, Level.DAILY)) < len(ever_dailies) / 3


def test_mode_all_with_intra_daily_mirrors_everything():
    # ImageManager deletes a day of incrementals each night: 96 per volume, over 100 for two
    im, target = simulate(Rules(mode="all", include_intra_daily=True, max_deletes=200), days=10)
    assert set(target) == set(im.files)
    ever_intra = {p for p, k in im.ever.items() if k == "intra"}
    assert 2 * 7 * 96 <= len(kinds(target, Level.INTRA)) < len(ever_intra)  # a week of 15-minute files


def test_mode_all_without_mirror_deletes_keeps_everything_sent():
    im, target = simulate(Rules(mode="all", mirror_deletes=False), days=20)
    ever = {p for p, k in im.ever.items() if k != "intra"}
    assert set(target) == with_md5(ever)


def test_daily_only_sends_base_and_dailies_and_never_deletes():
    im, target = simulate(Rules(mode="daily-only"))
    ever_dailies = {p for p, k in im.ever.items() if k == "daily"}
    bases = {p for p, k in im.ever.items() if k == "base"}
    assert set(target) == with_md5(ever_dailies | bases)
    assert len(ever_dailies) == 2 * DAYS  # every night's daily, though the source deleted most


def test_intra_daily_only_sends_base_and_originals():
    im, target = simulate(Rules(mode="intra-daily-only"), days=9)
    ever_intra = {p for p, k in im.ever.items() if k == "intra"}
    bases = {p for p, k in im.ever.items() if k == "base"}
    assert set(target) == with_md5(ever_intra | bases)


def test_daily_monthly_keeps_monthlies_and_dailies_since_the_previous_monthly():
    seen_retention = []

    def check(p, source, target):
        # retention only once the new monthly and its .md5 are complete on the target
        for d in p.deletes:
            seen_retention.append(d)
            f = classify(d)
            complete = sorted(classify(m).point for m in kinds(target, Level.MONTHLY)
                              if m[: m.rfind(".")] + ".md5" in target and classify(m).chain == f.chain)
            assert len(complete) >= 2 and f.point < complete[-2]
        assert not kinds(p.deletes, Level.BASE, Level.MONTHLY, Level.INTRA, roles=tuple(Role))

    im, target = simulate(Rules(mode="daily-monthly"), days=DAYS + 31, check=check)
    assert seen_retention, "retention never ran"
    for vol in ("c_vol", "system reserved_vol"):
        monthlies = sorted(classify(m).point for m in kinds(target, Level.MONTHLY) if classify(m).chain[2] == vol)
        assert len(monthlies) == 3  # end of October, November, December
        dailies = [classify(d).point for d in kinds(target, Level.DAILY) if classify(d).chain[2] == vol]
        assert dailies and min(dailies) >= monthlies[-2]  # nothing older than the previous monthly
        # at least one month of dailies: every night since the previous monthly
        assert len(dailies) >= 31
    assert not kinds(target, Level.WEEKLY, Level.INTRA)  # the dailies were there: no weekly links
    assert kinds(target, Level.BASE) == {p for p, k in im.ever.items() if k == "base"}


def test_daily_monthly_sends_a_weekly_where_its_dailies_are_gone():
    # The agent starts 25 days late: the first weeks' dailies were already deleted at the
    # source, so the weeklies that absorbed them are the only link.
    im, target = simulate(Rules(mode="daily-monthly"), days=26, start_after=25)
    weeklies = kinds(target, Level.WEEKLY)
    assert weeklies
    source_daily_points = {(classify(d).chain, classify(d).point) for d in kinds(im.files, Level.DAILY)}
    for w in weeklies:
        assert (classify(w).chain, classify(w).point) not in source_daily_points
    # a weekly whose daily still exists is not sent
    assert all((classify(w).chain, classify(w).point) not in source_daily_points
               for w in kinds(im.files, Level.WEEKLY) if w in target)
    assert any((classify(w).chain, classify(w).point) in source_daily_points
               for w in kinds(im.files, Level.WEEKLY) if w not in target)


@pytest.mark.parametrize("mode", ["all", "daily-only", "intra-daily-only", "daily-monthly"])
def test_replicate_base_false_sends_the_base_sidecar_only(mode):
    im, target = simulate(Rules(mode=mode, replicate_base=False), days=2)
    assert "C_VOL-b001.spf" not in target and "C_VOL-b001.md5" in target


@pytest.mark.parametrize("mode", ["all", "daily-only", "intra-daily-only", "daily-monthly"])
def test_sidecars_follow_their_image(mode):
    im, target = simulate(Rules(mode=mode), days=3)
    for p in target:
        if p.endswith(".md5"):
            stem = p[:-4]
            assert stem + ".spi" in target or stem + ".spf" in target, p


def test_files_not_ready_wait_and_block_their_chain():
    source = {
        "C_VOL-b001.spf": SourceFile(10, 1),
        "C_VOL-b001.md5": SourceFile(1, 1),
        "C_VOL-b001-i001-cd.spi": SourceFile(5, 1, ready=False),
        "C_VOL-b001-i002-cd.spi": SourceFile(5, 1),
    }
    p = plan(source, {}, Rules())
    assert p.uploads == ["C_VOL-b001.spf", "C_VOL-b001.md5", "C_VOL-b001-i002-cd.spi"]
    assert p.waiting == ["C_VOL-b001-i001-cd.spi"]
    assert p.blockers == {classify("C_VOL-b001.spf").chain: classify("C_VOL-b001-i001-cd.spi").key}


def test_a_shadowprotect_file_changed_at_the_source_after_it_was_sent_is_never_sent_again():
    # SPEC section 8: written once, never changed; a different copy at the source is damaged
    # or tampered with (ransomware), and the good copy offsite stays as it is.
    source = {"C_VOL-b001.spf": SourceFile(10, 1)}
    p = plan(source, {"C_VOL-b001.spf": RemoteFile(7)}, Rules())
    assert p.uploads == [] and p.changed == ["C_VOL-b001.spf"]
    assert plan(source, {"C_VOL-b001.spf": RemoteFile(10)}, Rules()).uploads == []
    # The same size, another modification time than the agent recorded when it sent it.
    sent = {"C_VOL-b001.spf": Sent(10, 5_000_000_000)}
    assert plan(source, {"C_VOL-b001.spf": RemoteFile(10)}, Rules(), sent=sent).changed == ["C_VOL-b001.spf"]
    # Without a record (copied there by hand), a copy of the same size is the same file.
    assert plan(source, {"C_VOL-b001.spf": RemoteFile(10, 9_000_000_000)}, Rules(), keeps_mtime=True).changed == []
    # A person accepted this version: it goes, replacing the copy.
    p = plan_group(source, {"C_VOL-b001.spf": RemoteFile(7)}, Rules(), accepted={"C_VOL-b001.spf": (10, 1)})
    assert p.uploads == ["C_VOL-b001.spf"] and p.changed == []
    # ... and while a file is changed, no deletion is mirrored, allowed or not.
    target = {"C_VOL-b001.spf": RemoteFile(7), "C_VOL-b001-i001.spi": RemoteFile(1),
              "C_VOL-b001-i001.md5": RemoteFile(1), "C_VOL-b001-i001-cd.spi": RemoteFile(1),
              "C_VOL-b001-i001-cd.md5": RemoteFile(1)}
    source.update({"C_VOL-b001-i001-cd.spi": SourceFile(1, 0), "C_VOL-b001-i001-cd.md5": SourceFile(1, 0)})
    for allow in (False, True):
        p = plan(source, target, Rules(include_intra_daily=True), allow_deletes=allow)
        assert p.deletes == [] and p.held_count == 2 and "source-changed" in p.held


def test_mass_deletion_is_held_back_counting_24_hours():
    # Eleven intra-dailies consolidated into a daily: explained, but more than max_deletes.
    target = {f"C_VOL-b001-i{i:03d}.{ext}": RemoteFile(1) for i in range(1, 12) for ext in ("spi", "md5")}
    target.update({"C_VOL-b001-i011-cd.spi": RemoteFile(1), "C_VOL-b001-i011-cd.md5": RemoteFile(1)})
    source = {"C_VOL-b001-i011-cd.spi": SourceFile(1, 0), "C_VOL-b001-i011-cd.md5": SourceFile(1, 0)}
    rules = Rules(include_intra_daily=True, max_deletes=5)
    p = plan(source, target, rules)
    assert p.deletes == [] and p.held_count == 22 and "11 image deletions within 24 hours exceed max_deletes = 5" in p.held
    p = plan(source, target, rules, allow_deletes=True)
    assert len(p.deletes) == 22
    assert len(plan(source, target, Rules(include_intra_daily=True, max_deletes=11)).deletes) == 22  # images, not sidecars
    # However slowly they came: the deletions of the last 24 hours count too.
    p = plan(source, target, Rules(include_intra_daily=True, max_deletes=11), recent={"C_VOL-b001-i000.spi": 9.0},
             now=10.0)
    assert p.deletes == [] and "12 image deletions within 24 hours" in p.held


def test_retention_is_not_held_back_by_max_deletes():
    target = {f"C_VOL-b001-i{i:03d}-cd.spi": RemoteFile(1) for i in range(1, 20)}
    target.update({"C_VOL-b001-i019-cd-cm.spi": RemoteFile(1), "C_VOL-b001-i019-cd-cm.md5": RemoteFile(1),
                   "C_VOL-b001-i030-cd-cm.spi": RemoteFile(1), "C_VOL-b001-i030-cd-cm.md5": RemoteFile(1)})
    source = {p: SourceFile(1, 0) for p in target if "-cm" in p}
    p = plan(source, target, Rules(mode="daily-monthly", max_deletes=2))
    assert len(p.deletes) == 18 and p.held is None  # dailies 1..18, before the previous monthly
    # ... but, like every deletion, it waits while files changed at the source (ransomware),
    # and while the source holds no backup file at all.
    source["C_VOL-b001-i030-cd-cm.spi"] = SourceFile(99, 0)
    p = plan(source, target, Rules(mode="daily-monthly", max_deletes=2))
    assert p.deletes == [] and "source-changed" in p.held
    assert plan({}, target, Rules(mode="daily-monthly")).deletes == []


def test_an_empty_source_never_empties_the_target():
    target = {"C_VOL-b001.spf": RemoteFile(1), "C_VOL-b001.md5": RemoteFile(1)}
    p = plan({}, target, Rules(max_deletes=100))
    assert p.deletes == [] and p.held == "the source folder holds no backup files"


def test_unknown_files_on_the_target_are_never_deleted():
    p = plan({"C_VOL-b001.spf": SourceFile(1, 0)}, {"notes.txt": RemoteFile(1), "C_VOL-b001.spf": RemoteFile(1)}, Rules())
    assert p.deletes == [] and p.uploads == []


def test_macrium_sets_are_mirrored_and_changed_files_sent_again():
    g = "PC1/{g}/4F6F6CACA58B077D"
    a, b, c = f"{g}-00-00.mrimg", f"{g}-01-01.mrimg", f"{g}-02-02.mrimg"
    # A synthetic full: the oldest incremental merged into the full, which changed in place.
    target = {a: RemoteFile(100, 5_000_000_000), b: RemoteFile(20, 1), c: RemoteFile(30, 1)}
    source = {a: SourceFile(120, 9_000_000_000), c: SourceFile(30, 1)}
    p = plan(source, target, Rules(mode="daily-only"), keeps_mtime=True)  # modes do not apply to Macrium
    assert p.uploads == [a]
    assert p.deletes == [b]  # merged into later files of its set, which are offsite
    # A changed file of the same size: the modification time tells, where the target keeps it...
    source[a] = SourceFile(100, 9_000_000_000)
    assert plan(source, target, Rules(), keeps_mtime=True).uploads == [a]
    # ... or where the agent recorded what it sent; with neither, size decides.
    assert plan(source, target, Rules(), sent={a: Sent(100, 5_000_000_000)}).uploads == [a]
    assert plan(source, target, Rules(), keeps_mtime=False).uploads == []
    # The full of a set gone while its increments remain: not Macrium's doing, held for a person.
    p = plan({b: SourceFile(20, 1), c: SourceFile(30, 1)}, target, Rules(), keeps_mtime=True)
    assert p.deletes == [] and "-00-00.mrimg, the full backup of its set, vanished" in p.held


def test_what_waits_and_why_stays_the_same_while_a_file_of_the_volume_is_unknown():
    """No deletion of a volume goes while one of its files is unknown (missed by one listing),
    yet the reason deletions are held, and how many, must not come and go with each file that
    vanishes (deletes-held would flap); a deletion under way is not counted twice."""
    target = {f"C_VOL-b001-i{i:03d}.spi": RemoteFile(1) for i in range(1, 6)}
    target["C_VOL-b001-i005-cd.spi"] = target["C_VOL-b001-i005-cd.md5"] = RemoteFile(1)
    source = {"C_VOL-b001-i005-cd.spi": SourceFile(1, 0), "C_VOL-b001-i005-cd.md5": SourceFile(1, 0),
              "C_VOL-b001-i005.spi": SourceFile(1, 0)}
    rules = Rules(include_intra_daily=True, max_deletes=2)
    settled = plan_group(source, target, rules)
    quiet = decide_plans([settled], True, rules, False)
    del source["C_VOL-b001-i005.spi"]  # one more vanishes: unknown for a moment
    busy = decide_plans([plan_group(source, target, rules, unknown={"C_VOL-b001-i005.spi"})], True, rules, False)
    assert quiet.reason == busy.reason and "exceed max_deletes = 2" in busy.reason and busy.go == frozenset()
    # Two going now, recorded when they started: still planned, so counted once.
    small = Rules(include_intra_daily=True, max_deletes=4)
    d = decide_plans([settled], True, small, False, recent={"C_VOL-b001-i001.spi": 99.0, "C_VOL-b001-i002.spi": 99.0},
                     now=100.0)
    assert d.reason is None and len(d.go) == 4
