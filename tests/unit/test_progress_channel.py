"""The shared-memory channel that carries progress and cancel between processes."""

from __future__ import annotations

import multiprocessing as mp

from videoserve.engines.fastvideo.progress_channel import CAPACITY, ProgressChannel


def _worker(name: str, steps: int, done) -> None:
    channel = ProgressChannel.attach(name)
    job = channel.job
    channel.push(1, 2)
    for step in range(1, steps + 1):
        channel.push(2, step, steps)
        if channel.cancel_requested(job):
            break
    done.set()
    channel.close()


def test_events_cross_processes_in_order_and_cancel_is_per_job():
    channel = ProgressChannel.create()
    try:
        first = channel.begin_job()
        channel.request_cancel(first)
        assert channel.cancel_requested(first)
        second = channel.begin_job()
        assert second == first + 1 and not channel.cancel_requested(second)
        ctx = mp.get_context("spawn")
        done = ctx.Event()
        proc = ctx.Process(target=_worker, args=(channel.name, 5, done))
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0 and done.is_set()
        assert channel.drain() == [(1, 2, 0)] + [(2, k, 5) for k in range(1, 6)]
        assert channel.drain() == []
        # A job that another process is told to cancel stops at its first check.
        channel.request_cancel(channel.begin_job())
        done = ctx.Event()
        proc = ctx.Process(target=_worker, args=(channel.name, 5, done))
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0 and done.is_set()
        assert channel.drain() == [(1, 2, 0), (2, 1, 5)]
    finally:
        channel.close()


def test_a_new_job_drops_what_the_last_one_left_and_the_ring_keeps_the_newest():
    channel = ProgressChannel.create()
    try:
        channel.push(2, 1, 3)
        channel.begin_job()
        assert channel.drain() == []
        for index in range(CAPACITY + 10):
            channel.push(2, index, 0)
        events = channel.drain()
        assert len(events) == CAPACITY and events[0] == (2, 10, 0) and events[-1][1] == (
            CAPACITY + 9)
    finally:
        channel.close()
