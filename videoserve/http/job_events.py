"""GET /v1/videos/{id}/events: a job's changes as server-sent events (text/event-stream).

``progress`` events while the job is queued or running (its step, stage, queue position, ETA and
the step of its newest live preview), then one final ``completed``, ``failed`` or ``cancelled``
event whose data is the job object (as GET /v1/videos/{id} answers), then the stream ends.

Each event's ``id`` is the job's version (``JobStore.version``: it grows at every change, across
restarts too). ``Last-Event-ID`` resumes: a state already sent is not sent again, but the final
event always is (a client reconnecting after it gets it at once). Changes are coalesced: the
stream reads the job's newest state whenever it may send, so a slow client skips states rather
than falling behind. A comment line every KEEPALIVE_S keeps proxies from closing a quiet stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from videoserve.core.jobs import Job
from videoserve.core.service import VideoService
from videoserve.http.openai_videos import progress_detail, video_object

KEEPALIVE_S = 15.0
KEEPALIVE = ": keep-alive\n\n"
PROGRESS_KEYS = ("step", "total_steps", "stage", "queue_position", "eta_s")
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def progress_data(job: Job, queue_position: int | None) -> dict[str, Any]:
    detail = progress_detail(job, queue_position)
    return {**{key: detail[key] for key in PROGRESS_KEYS}, "preview_step": job.preview_step}


def sse(event: str, data: dict[str, Any], event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


def parse_last_event_id(value: str | None) -> int:
    """The version a client has seen (0: none; a value this service never sent counts as none)."""
    value = (value or "").strip()
    return int(value) if value.isdigit() and len(value) <= 20 else 0


async def job_events(service: VideoService, job_id: str, last_event_id: int = 0,
                     keepalive_s: float | None = None) -> AsyncIterator[str]:
    """The stream's text, event by event, until the job's final event (or its deletion)."""
    keepalive_s = KEEPALIVE_S if keepalive_s is None else keepalive_s
    store, sent, last_data, watching = service.jobs, last_event_id, None, False
    while True:
        # No await between reading the version and the job: they belong together.
        version, job = store.version(job_id), store.get(job_id)
        if job is None:
            return  # deleted
        if version > sent:
            # Each state since the last event (several when the job moved on meanwhile, the
            # steps just before its end included); a stream just opened starts at the newest.
            states = store.states_since(job_id, sent) if watching else []
            if not states or states[-1][0] != version:
                states.append((version, job))
            for state_version, state in states:
                data = progress_data(state, service.queue_position(state))
                if not state.done and data != last_data:
                    yield sse("progress", data, state_version)
                    last_data = data
            sent = version
        if job.done:  # a job already final when the stream opens: its final event at once
            yield sse(job.status, video_object(job, None), version)
            return
        watching = True
        if await store.changed(job_id, sent, keepalive_s) <= sent:
            yield KEEPALIVE
