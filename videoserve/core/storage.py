"""Files of a job under the output folder: its input image, its video and a JSON record.

Each job has a folder ``videos/<job id>/``; every file is written atomically (temp + rename),
so a reader never sees a partial video and a crash never leaves a half-written one.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from videoserve.core.jobs import Job
from videoserve.core.media import write_atomic
from videoserve.core.sampling import Result


class VideoFiles:
    """Where jobs' files live."""

    def __init__(self, videos_dir: Path):
        self.videos_dir = videos_dir
        videos_dir.mkdir(parents=True, exist_ok=True)

    def folder(self, job_id: str) -> Path:
        return self.videos_dir / job_id

    def video(self, job_id: str) -> Path:
        return self.folder(job_id) / "video.mp4"

    def save_input(self, job_id: str, png: bytes) -> None:
        # Kept with the job so a queued I2V job still has its image after a restart.
        write_atomic(self.folder(job_id) / "input.png", png)

    def load_input(self, job: Job) -> bytes | None:
        path = self.folder(job.id) / "input.png"
        return path.read_bytes() if job.task == "i2v" and path.is_file() else None

    def save_result(self, job: Job, result: Result, video_url: str) -> dict[str, Any]:
        """Write the video and the job's record; the result fields the API shows."""
        path = self.video(job.id)
        write_atomic(path, result.mp4)
        started = job.started_at or job.created_at
        fields = {
            "output_path": str(path.resolve()),
            "video_url": video_url,
            "num_frames": result.num_frames,
            "height": result.height,
            "width": result.width,
            "inference_time": round(result.inference_time, 4),
            "encoding_time": round(result.encoding_time, 4),
            "queue_time": round(started - job.created_at, 4),
            "total_time": round(time.time() - job.created_at, 4),
        }
        record = {**job.to_dict(), "status": "completed", "result": fields}
        write_atomic(path.parent / "record.json", json.dumps(record, indent=2).encode())
        return fields

    def preview(self, job_id: str) -> Path:
        return self.folder(job_id) / "preview.webp"

    def save_preview(self, job: Job, webp: bytes) -> None:
        """The job's newest live preview; it stays until the job is deleted."""
        write_atomic(self.preview(job.id), webp)

    def delete(self, job_id: str) -> None:
        folder = self.folder(job_id)
        if folder.is_dir():
            shutil.rmtree(folder)
