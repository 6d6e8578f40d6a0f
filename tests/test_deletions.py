"""Which deletions the backup software explains (SPEC section 8), as a table of cases."""
from __future__ import annotations

import pytest

from offsite.deletions import decide, explain, recent

B, I1, I2, D2, W2, D5, M5 = ("C_VOL-b001.spf", "C_VOL-b001-i001.spi", "C_VOL-b001-i002.spi", "C_VOL-b001-i002-cd.spi",
                             "C_VOL-b001-i002-cd-cw.spi", "C_VOL-b001-i005-cd.spi", "C_VOL-b001-i005-cd-cm.spi")


def md5(p: str) -> str:
    return p[: p.rfind(".")] + ".md5"


def full(*images: str) -> set[str]:
    """Images with their .md5: complete where they are."""
    return set(images) | {md5(p) for p in images}


CASES = [
    # (why, gone, at the source, on the target, mirrored?, held reason part, waits?)
    ("an intra-daily absorbed by its daily, at the source and complete offsite",
     [I1], full(B, D2), full(B, I1, D2), True, None, False),
    ("its .md5 goes with it", [md5(I1)], full(B, D2), full(B, I1, D2), True, None, False),
    ("the daily that absorbed it is not offsite yet: the deletion waits for it",
     [I1], full(B, D2), full(B, I1), False, None, True),
    ("the daily is offsite but its .md5 is not: not complete, waits",
     [I1], full(B, D2), full(B, I1) | {D2}, False, None, True),
    ("a daily absorbed by the weekly at its point", [D2], full(B, W2), full(B, D2, W2), True, None, False),
    ("a daily absorbed by a monthly later in the month", [D2], full(B, M5), full(B, D2, M5), True, None, False),
    ("an intra-daily, its daily gone too but its weekly there", [I1], full(B, W2), full(B, I1, W2), True, None,
     False),
    ("the absorbing daily vanished with it (a chain renamed): nothing explains it",
     [I1, D2], full(B), full(B, I1, D2), False, "newest restore point", False),
    ("a later daily never covered it", [I1], full(B, D5), full(B, I1, D2, D5), False, "not superseded", False),
    ("the newest restore point of a chain", [D5], full(B, D2), full(B, D2, D5), False,
     "C_VOL-b001-i005-cd is the newest restore point of its chain", False),
    ("a .md5 whose image remains", [md5(D2)], full(B) | {D2}, full(B, D2), False,
     "C_VOL-b001-i002-cd.md5 vanished while its image C_VOL-b001-i002-cd.spi remains", False),
    ("a whole volume", [B, md5(B), D2, md5(D2)], set(), full(B, D2), False, "the whole volume C_VOL vanished", False),
    ("a whole older chain, while a newer chain of the volume is offsite",
     [B, md5(B), D2], full("C_VOL-b002.spf"), full(B, D2, "C_VOL-b002.spf"), True, None, False),
    ("a chain renamed to look newer keeps its old times: not retention",
     [B, md5(B), D2], full("C_VOL-b002.spf"), full(B, D2, "C_VOL-b002.spf"), False, "no newer chain", False),
    ("a newer chain offsite for less than a day (rewritten by ransomware?): not retention yet",
     [B, md5(B), D2], full("C_VOL-b002.spf"), full(B, D2, "C_VOL-b002.spf"), False, "no newer chain", False),
    ("a whole older chain, the newer one not complete offsite",
     [B, D2], full("C_VOL-b002.spf"), full(B, D2) | {"C_VOL-b002.spf"}, False,
     "the chain C_VOL-b001 vanished at the source while no newer chain", False),
    ("the base alone, the chain still there", [B], full(D2), full(B, D2), False, "not superseded", False),
    ("a rolling file absorbed by the next rolling one", ["C_VOL-b001-i003-cd-cm-cr.spi"],
     full(B, "C_VOL-b001-i009-cd-cm-cr.spi"), full(B, "C_VOL-b001-i003-cd-cm-cr.spi", "C_VOL-b001-i009-cd-cm-cr.spi"),
     True, None, False),
    ("files of a folder that vanished", ["PC1/" + I1], set(), {"PC1/" + I1}, False,
     "its folder PC1 vanished at the source", False),
]


@pytest.mark.parametrize("why,gone,source,target,mirrored,held,waits", CASES, ids=[c[0] for c in CASES])
def test_shadowprotect_deletions(why, gone, source, target, mirrored, held, waits):
    folders = {"."} | {p.rsplit("/", 1)[0].casefold() for p in source if "/" in p}
    # Times: each file written in chain order, a later chain's base after the old chain.
    mtimes = {p: (2 if "-b002" in p else 1) * 1_000_000 + sum(map(ord, p)) for p in (*source, *target)}
    if "renamed" in why:
        mtimes["C_VOL-b002.spf"] = 1  # a rename keeps the old file's time
    published = {"C_VOL-b002.spf": 0.0 if "less than a day" not in why else 50_000.0}
    v = explain(gone, source, target, folders, mtimes=mtimes, published=published, now=86_400.0)
    assert (set(v.mirrored) == set(gone)) is mirrored, (why, v)
    if held:
        assert any(held in r for r in v.held.values()), (why, v.held)
    else:
        assert not v.held, (why, v.held)
    assert v.waiting is waits, why


S = "PC1/{g}/4F6F6CACA58B077D"
T = "PC1/{g}/D684BA87241263E2"
MACRIUM = [
    ("an increment merged into a later file of its set", [f"{S}-01-01.mrimg"],
     {f"{S}-00-00.mrimg", f"{S}-02-02.mrimg"}, {f"{S}-00-00.mrimg", f"{S}-01-01.mrimg", f"{S}-02-02.mrimg"}, True,
     None),
    ("the newest increment folded into a full rewritten since (a synthetic full)", [f"{S}-02-02.mrimg"],
     {f"{S}-00-00.mrimg"}, {f"{S}-00-00.mrimg", f"{S}-02-02.mrimg"}, True, None),
    ("the newest increment gone, the full not rewritten: held", [f"{S}-01-01.mrimg"],
     {f"{S}-00-00.mrimg"}, {f"{S}-00-00.mrimg", f"{S}-01-01.mrimg"}, False, "the newest file of its backup set"),
    ("the full gone while the increments remain", [f"{S}-00-00.mrimg"], {f"{S}-01-01.mrimg"},
     {f"{S}-00-00.mrimg", f"{S}-01-01.mrimg"}, False, "the full backup of its set, vanished"),
    ("a whole set, while a newer set of the definition is offsite", [f"{S}-00-00.mrimg", f"{S}-01-01.mrimg"],
     {f"{T}-00-00.mrimg"}, {f"{S}-00-00.mrimg", f"{S}-01-01.mrimg", f"{T}-00-00.mrimg"}, True, None),
    ("the newest set gone while an older one remains: held", [f"{T}-00-00.mrimg"],
     {f"{S}-00-00.mrimg"}, {f"{S}-00-00.mrimg", f"{T}-00-00.mrimg"}, False, "no newer set"),
    ("a whole definition", [f"{S}-00-00.mrimg"], set(), {f"{S}-00-00.mrimg"}, False,
     "the whole backup definition in PC1/{g} vanished"),
    ("the repository's information file", ["Macrium Repository Information.txt"], set(),
     {"Macrium Repository Information.txt"}, False, "map of backup definitions"),
]


@pytest.mark.parametrize("why,gone,source,target,mirrored,held", MACRIUM, ids=[c[0] for c in MACRIUM])
def test_macrium_deletions(why, gone, source, target, mirrored, held):
    # S's files written first, in order; T's full later; a synthetic full rewrites S's full last.
    mtimes = {f"{S}-00-00.mrimg": 10, f"{S}-01-01.mrimg": 11, f"{S}-02-02.mrimg": 12, f"{T}-00-00.mrimg": 20}
    if "synthetic" in why:
        mtimes[f"{S}-00-00.mrimg"] = 30
    v = explain(gone, source, target, {".", "pc1", "pc1/{g}"}, mtimes=mtimes)
    assert (set(v.mirrored) == set(gone)) is mirrored, (why, v)
    if held:
        assert any(held in r for r in v.held.values()), (why, v.held)


def test_the_job_wide_decision():
    go = ["a.spi", "b.spi"]
    d = decide(go, 2, {}, 0, 0, True, max_deletes=5, allow_deletes=False)
    assert d.go == frozenset(go) and d.held == 0 and d.reason is None
    d = decide(go, 2, {}, recent_images=4, changed=0, has_source=True, max_deletes=5, allow_deletes=False)
    assert d.go == frozenset() and d.held == 2 and "6 image deletions within 24 hours exceed max_deletes = 5" in d.reason
    d = decide(go, 2, {"c.spi": "why"}, 0, 0, True, 5, False)
    assert d.go == frozenset(go) and d.held == 1 and "1 deletion(s) not explained" in d.reason and "why" in d.reason
    assert decide(go, 2, {"c.spi": "why"}, 9, 0, True, 5, True).go == frozenset(go) | {"c.spi"}  # a person allowed
    d = decide(go, 2, {}, 9, 0, True, 5, False, retention=["r.spi"])  # retention is the mode's own: not counted
    assert d.go == frozenset({"r.spi"}) and d.held == 2
    d = decide(go, 2, {}, 0, changed=1, has_source=True, max_deletes=5, allow_deletes=True)
    assert d.go == frozenset() and "source-changed" in d.reason  # allowed or not
    assert decide(go, 2, {}, 0, 0, has_source=False, max_deletes=5, allow_deletes=False).go == frozenset()
    assert recent([0.0, 50_000.0, 90_000.0], now=100_000.0) == 2  # the last 24 hours only
