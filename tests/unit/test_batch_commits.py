"""BatchCommits: commits only at batch boundaries, none after a broken batch."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from stream.app import BatchCommits


class FakeConsumer:
    """Records what faust's Consumer.commit would have committed, and when."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def commit(self, *args: Any, **kwargs: Any) -> bool:
        self.log.append("commit")
        return True


class FakeProducer:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def commit_transactions(self, by_id: dict[str, dict[Any, int]], group_id: str, *,
                                  start_new_transaction: bool) -> None:
        assert start_new_transaction
        self.log.append(f"commit {group_id} " + " ".join(
            f"{tid}:{tp.topic}[{tp.partition}]={o}" for tid, tps in sorted(by_id.items())
            for tp, o in sorted(tps.items())))


class FakeApp:
    """What BatchCommits uses of a faust app: consumer, producer, assignor groups, id."""

    def __init__(self, log: list[str]) -> None:
        self.consumer = FakeConsumer(log)
        self.consumer._committed_offset = {}
        self.producer = FakeProducer(log)
        self.assignor = SimpleNamespace(group_for_topic=lambda topic: 1)
        self.conf = SimpleNamespace(id="app")


def _installed(*, is_transactional: bool) -> tuple[list[str], BatchCommits, FakeApp]:
    """BatchCommits installed on a fake app; the log records acks and commits."""
    log: list[str] = []
    commits = BatchCommits(is_transactional=is_transactional)
    app = FakeApp(log)
    commits.install(app)
    return log, commits, app


def _event(topic: str, partition: int, offset: int) -> Any:
    tp = TP(topic, partition)
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset), name=f"{offset}")


class FakeStream:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def ack(self, event: Any) -> bool:
        self.log.append(f"ack {event.name}")
        return True


def test_a_commit_waits_for_the_batch_being_sent() -> None:
    """faust's own commit (timer, wait_empty) cannot land between outputs and input acks,
    and the batch commits the offsets after its last record, per transactional id."""
    log, commits, app = _installed(is_transactional=True)
    events = [_event("reviews", 0, 4), _event("reviews", 0, 5), _event("reviews", 3, 9)]

    async def agent() -> None:
        async with commits.batch("score"), commits.sending(FakeStream(log), events):
            log.append("send a")
            await asyncio.sleep(0.01)  # faust's timer fires here
            log.append("send b")

    async def main() -> None:
        task = asyncio.create_task(agent())
        await asyncio.sleep(0.001)
        await app.consumer.commit()  # the wrapped commit: waits for the lock
        await task

    asyncio.run(main())
    assert log == ["send a", "send b", "ack 4", "ack 5", "ack 9",
                   "commit app app-1-0:reviews[0]=6 app-1-3:reviews[3]=10", "commit"]
    assert app.consumer._committed_offset == {TP("reviews", 0): 6, TP("reviews", 3): 10}


def test_no_commit_after_a_batch_ends_by_an_exception() -> None:
    """A cancelled or failed batch (take_events acks it anyway) is never committed."""
    log, commits, app = _installed(is_transactional=False)
    consumer = app.consumer

    async def main() -> None:
        with pytest.raises(RuntimeError):
            async with commits.batch("score"):
                raise RuntimeError("input gap")
        assert await consumer.commit() is False

    asyncio.run(main())
    assert commits.is_broken and log == []


def test_at_least_once_sending_neither_locks_nor_commits() -> None:
    """Under at_least_once the agent's sends are not fenced and faust commits as usual."""
    log, commits, app = _installed(is_transactional=False)
    consumer = app.consumer

    async def main() -> None:
        async with commits.batch("score"), commits.sending(FakeStream(log), [_event("r", 0, 1)]):
            assert not commits.lock.locked()
            log.append("send")
        await consumer.commit()

    asyncio.run(main())
    assert log == ["send", "commit"]


def _msg_event(partition: int, offset: int) -> Any:
    tp = TP("reviews", partition)
    return SimpleNamespace(message=SimpleNamespace(tp=tp, topic="reviews", partition=partition,
                                                   offset=offset))


def test_offset_guard_raises_on_a_gap_and_drops_records_seen_before() -> None:
    """After the committed offset 10: 10-12 pass, a re-delivered 11 is dropped (exactly
    once) or kept (at least once), and one skipped offset already stops the worker."""
    from stream.app import InputGapError, OffsetGuard

    def offsets(events: list[Any]) -> list[int]:
        return [e.message.offset for e in events]

    committed = {TP("reviews", 0): 10}
    eos = OffsetGuard(is_enabled=True, skips_seen=True, committed=committed.get)
    alo = OffsetGuard(is_enabled=True, skips_seen=False, committed=committed.get)
    for guard, again in ((eos, []), (alo, [11])):
        assert offsets(guard.check([_msg_event(0, o) for o in (10, 11, 12)])) == [10, 11, 12]
        assert offsets(guard.check([_msg_event(0, 11)])) == again
        with pytest.raises(InputGapError, match=r"offsets 13\.\.13 never arrived"):
            guard.check([_msg_event(0, 14)])
        assert offsets(guard.check([_msg_event(0, 13)])) == [13]
    fresh = OffsetGuard(is_enabled=True, skips_seen=True, committed=committed.get)
    with pytest.raises(InputGapError):  # the first record after assignment
        fresh.check([_msg_event(0, 11)])
    assert offsets(fresh.check([_msg_event(0, 9), _msg_event(0, 10)])) == [10]


def test_drain_waits_for_the_batch_in_flight_then_commits_nothing_more() -> None:
    """SIGTERM: the batch in flight finishes and is committed; no batch starts after it,
    and faust's later commits (of acks it makes while cancelling) are refused."""
    log, commits, app = _installed(is_transactional=False)

    async def agent() -> None:
        async with commits.batch("score"):
            log.append("batch 1 starts")
            await asyncio.sleep(0.02)
            log.append("batch 1 sent")
        async with commits.batch("score"):  # blocked by the drain, then cancelled
            log.append("batch 2 starts")

    async def main() -> None:
        task = asyncio.create_task(agent())
        await asyncio.sleep(0.005)
        await commits.drain()
        log.append("drained")
        assert await app.consumer.commit() is False
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert log == ["batch 1 starts", "batch 1 sent", "commit", "drained"]
