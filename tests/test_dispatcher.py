"""Which queued item runs next: chain order, deletions last, parked items wait."""
from __future__ import annotations

import datetime as dt
import random

from offsite.agent.dispatcher import backoff, next_item
from offsite.backupfiles import classify
from offsite.queue import QueueItem

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)
_ids = iter(range(1, 10_000))


def item(path: str, op: str = "upload", state: str = "ready", next_attempt: dt.datetime | None = None):
    return QueueItem(id=next(_ids), job="j", op=op, path=path, size=1, state=state,
                     next_attempt=next_attempt.isoformat() if next_attempt else None)


def chain_of(path: str):
    return classify(path).chain


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
