"""Which queued item runs next (chain order, deletions last, parked items wait), and when a
staged upload may be published while several files of a chain are in flight."""
from __future__ import annotations

import datetime as dt
import itertools
import random

from offsite.agent.dispatcher import Dispatch
from offsite.agent.trouble import backoff
from offsite.backupfiles import classify
from offsite.queue import QueueItem

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)
_ids = itertools.count(1)


def item(path: str, op: str = "upload", state: str = "ready", next_attempt: dt.datetime | None = None):
    return QueueItem(id=next(_ids), job="j", op=op, path=path, size=1, state=state,
                     next_attempt=next_attempt.isoformat() if next_attempt else None)


def chain_of(path: str):
    return classify(path).chain


def dispatch(items) -> tuple[Dispatch, dict]:
    d, known = Dispatch("auto", max_waiting=2), {i.id: i for i in items}
    for i in items:
        d.add(i)
    return d, known


def next_item(items, blockers, now):
    d, known = dispatch(items)
    return d.pick(known.get, blockers, now)


def test_first_file_of_the_chain_goes_first_whatever_the_queue_order():
    items = [item("C_VOL-b001-i002-cd.spi"), item("C_VOL-b001-i001-cd.spi"), item("C_VOL-b001.spf")]
    assert next_item(items, {}, NOW).path == "C_VOL-b001.spf"


def test_a_parked_or_failed_first_file_holds_its_chain_but_not_others():
    later = NOW + dt.timedelta(minutes=5)
    for first in (item("C_VOL-b001.spf", next_attempt=later), item("C_VOL-b001.spf", state="failed"),
                  item("C_VOL-b001.spf", state="in-flight")):
        items = [first, item("C_VOL-b001-i001-cd.spi"), item("D_VOL-b001.spf")]
        assert next_item(items, {}, NOW).path == "D_VOL-b001.spf"
        assert next_item(items[:2], {}, NOW) is None


def test_a_file_still_written_at_the_source_blocks_later_files_of_its_chain():
    items = [item("C_VOL-b001-i002-cd.spi"), item("C_VOL-b001-i002-cd.md5")]
    blockers = {chain_of("C_VOL-b001.spf"): classify("C_VOL-b001-i001-cd.spi").key}
    assert next_item(items, blockers, NOW) is None
    blockers = {chain_of("C_VOL-b001.spf"): classify("C_VOL-b001-i002-cd.spi").key}
    assert next_item(items, blockers, NOW) is None  # the queued file itself is being written again
    blockers = {chain_of("C_VOL-b001.spf"): classify("C_VOL-b001-i003-cd.spi").key}
    assert next_item(items, blockers, NOW).path == "C_VOL-b001-i002-cd.spi"


def test_image_before_its_md5():
    items = [item("C_VOL-b001-i005.md5"), item("C_VOL-b001-i005.spi")]
    assert next_item(items, {}, NOW).path == "C_VOL-b001-i005.spi"


def test_deletions_wait_until_their_chain_has_nothing_to_upload():
    items = [item("C_VOL-b001-i001-cd.spi", op="delete"), item("C_VOL-b001-i009-cd.spi")]
    assert next_item(items, {}, NOW).op == "upload"
    assert next_item(items[:1], {}, NOW).op == "delete"
    blockers = {chain_of("C_VOL-b001.spf"): classify("C_VOL-b001-i010-cd.spi").key}
    assert next_item(items[:1], blockers, NOW) is None


def test_uploads_of_other_chains_go_before_deletions():
    items = [item("C_VOL-b001-i001-cd.spi", op="delete"), item("D_VOL-b001.spf")]
    assert next_item(items, {}, NOW).path == "D_VOL-b001.spf"


def test_backoff_grows_with_jitter_and_a_cap():
    rng = random.Random(1)
    waits = [backoff(n, rng) for n in range(1, 12)]
    assert waits[0] <= 2 and waits[3] > waits[0]
    assert all(w <= 120 for w in waits)
    assert len({round(w, 3) for w in waits[-3:]}) == 3  # jittered, not lock-step


def test_later_files_of_a_chain_start_while_earlier_ones_are_in_flight_but_publish_after_them():
    a, b, c = item("C_VOL-b001.spf"), item("C_VOL-b001-i001-cd.spi"), item("C_VOL-b001-i002-cd.spi")
    d, known = dispatch([c, b, a])
    for expected in (a, b, c):
        it = d.pick(known.get, {}, NOW)
        assert it is expected
        d.started(it, it.path)
    assert d.pick(known.get, {}, NOW) is None  # everything is in flight
    assert d.staged(c.id) == [] and d.staged(b.id) == []  # the base is still uploading
    assert d.staged(a.id) == [a.path, b.path, c.path]  # its thread publishes all three, in order
    assert d.finished(a.id) == [] and d.finished(b.id) == [] and d.finished(c.id) == []


def test_a_file_that_fails_holds_back_the_later_ones_already_staged():
    a, b = item("C_VOL-b001.spf"), item("C_VOL-b001-i001-cd.spi")
    d, known = dispatch([a, b])
    for it in (a, b):
        d.started(d.pick(known.get, {}, NOW), it.path)
    assert d.staged(b.id) == []
    d.hold(a.id)  # the base's upload broke
    assert d.staged(a.id) == []  # a held file publishes nothing, and nothing behind it
    assert d.pick(known.get, {}, NOW) is None  # nor does its chain start anything more
    assert sorted(d.in_flight()) == sorted([a.path, b.path])  # released by the caller, staged bytes kept
    d.end_round()
    assert d.in_flight() == [] and d.pick(known.get, {}, NOW) is a  # the next round starts over at a


def test_a_file_out_of_room_starts_again_in_the_round_and_later_staged_files_give_their_room_back():
    a, b, c = item("C_VOL-b001.spf"), item("C_VOL-b001-i001-cd.spi"), item("C_VOL-b001-i002-cd.spi")
    d, known = dispatch([a, b, c])
    for it in (a, b, c):
        d.started(d.pick(known.get, {}, NOW), it.path)
    assert d.staged(b.id) == []
    d.hold(a.id)  # the target ran out of room while a was written
    d.again(a.id)
    assert d.pick(known.get, {}, NOW) is a  # the chain starts a again, ahead of everything else
    assert d.staged(c.id) == []  # c, staged meanwhile, stays behind a
    assert d.started(a, a.path) == [b.path, c.path]  # the staged later files give their room back
    assert sorted(d.in_flight()) == [a.path]
    assert d.staged(a.id) == [a.path]  # published alone; b and c upload again after it
    assert d.finished(a.id) == []
    assert d.pick(known.get, {}, NOW) is b


def test_a_file_out_of_room_that_fails_again_holds_its_chain_like_any_failure():
    a, b = item("C_VOL-b001.spf"), item("C_VOL-b001-i001-cd.spi")
    d, known = dispatch([a, b])
    for it in (a, b):
        d.started(d.pick(known.get, {}, NOW), it.path)
    d.hold(a.id)
    d.again(a.id)
    d.hold(b.id)  # b ran out of room too
    d.again(b.id)
    assert d.pick(known.get, {}, NOW) is a and d.started(a, a.path) == []
    d.hold(a.id)  # alone, and still no room: the real thing
    assert d.pick(known.get, {}, NOW) is None and d.staged(b.id) == []


def test_a_held_publisher_gives_its_run_back_and_nothing_is_published_twice():
    a, b, c = item("C_VOL-b001.spf"), item("C_VOL-b001-i001-cd.spi"), item("C_VOL-b001-i002-cd.spi")
    d, known = dispatch([a, b, c])
    for it in (a, b, c):
        d.started(d.pick(known.get, {}, NOW), it.path)
    d.staged(b.id)
    run = d.staged(a.id)
    assert run == [a.path, b.path]
    assert d.staged(c.id) == []  # a is being published: its publisher goes on with what follows
    assert d.finished(a.id) == []
    d.hold(b.id)  # publishing b failed
    assert d.finished(c.id) == [] and d.in_flight() == [b.path]


def test_a_file_gone_at_the_source_lets_the_later_ones_through():
    a, b = item("C_VOL-b001.spf"), item("C_VOL-b001-i001-cd.spi")
    d, known = dispatch([a, b])
    for it in (a, b):
        d.started(d.pick(known.get, {}, NOW), it.path)
    assert d.staged(b.id) == []
    assert d.finished(a.id) == [b.path]  # a vanished: b is next


def test_staged_work_waiting_for_its_turn_is_bounded():
    items = [item("C_VOL-b001.spf")] + [item(f"C_VOL-b001-i{n:03d}-cd.spi") for n in range(1, 8)]
    d, known = dispatch(items)
    d.started(d.pick(known.get, {}, NOW), "base")  # a big base image, still uploading
    for _ in range(2):
        it = d.pick(known.get, {}, NOW)
        d.started(it, it.path)
        d.staged(it.id)
    assert d.pick(known.get, {}, NOW) is None  # max_waiting = 2 staged behind the base
    other = item("D_VOL-b001.spf")
    known[other.id] = other
    d.add(other)
    assert d.pick(known.get, {}, NOW) is other  # other chains go on


def test_an_item_dropped_from_the_queue_meanwhile_is_never_picked():
    a, b = item("C_VOL-b001.spf"), item("D_VOL-b001.spf")
    d, known = dispatch([a, b])
    del known[a.id]  # `offsite queue drop` from another process
    assert d.pick(known.get, {}, NOW) is b


def test_a_pick_looks_at_the_heads_of_the_chains_not_the_whole_queue():
    def cost(n: int) -> int:
        items = [item(f"{v}-b001-i{i:05d}-cd.spi") for v in ("C_VOL", "D_VOL") for i in range(1, n)]
        d, known = dispatch(items)
        d.looked = 0
        for _ in range(10):
            it = d.pick(known.get, {}, NOW)
            d.started(it, it.path)
            d.staged(it.id)
            d.finished(it.id)
            del known[it.id]
        return d.looked

    assert cost(100) == cost(5000)
