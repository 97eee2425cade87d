"""The job table is checked before anything writes to it: a damaged one is refused with its way
out, or recovered (--recover_jobs) into a new table holding every row still readable."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from videoserve.core.job_table import DamagedJobTable, check, recover_table
from videoserve.core.jobs import Job, JobStore, new_job_id
from videoserve.core.sampling import SamplingParams

PAGE = 4096  # SQLite's default page size
JOBS = 60
# About 3 KB a job: one job fills a table page, so overwriting one page loses exactly one job.
PADDING = "x" * 3000


def job(number: int) -> Job:
    params = SamplingParams(prompt=f"marker-{number:04d} {PADDING}", negative_prompt="", seed=1,
                            guidance_scale=1.0, num_frames=9, height=64, width=64,
                            num_inference_steps=2, fps=8)
    return Job(id=new_job_id(), task="t2v", model="m", engine="e", synthetic=True, params=params,
               status="completed")


def make_table(path: Path, count: int = JOBS) -> list[Job]:
    store = JobStore(path)
    jobs = [store.add(job(i)) for i in range(count)]
    store.close()
    return jobs


def snapshot_with_wal(source: Path, target: Path, extra: int = 5) -> None:
    """``target``: ``source`` with ``extra`` more jobs still in its WAL, as a process killed
    before its checkpoint leaves it."""
    store = JobStore(source)
    for i in range(extra):
        store.add(job(1000 + i))
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")
    store.close()


def files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.parent.glob(path.name + "*"))}


def overwrite_page(path: Path, marker: str) -> None:
    data = path.read_bytes()
    page = data.index(marker.encode()) // PAGE
    with open(path, "r+b") as handle:
        handle.seek(page * PAGE)
        handle.write(os.urandom(PAGE))


def truncated(tmp_path: Path) -> Path:
    make_table(tmp_path / "source.sqlite3")
    path = tmp_path / "jobs.sqlite3"
    snapshot_with_wal(tmp_path / "source.sqlite3", path)
    os.truncate(path, path.stat().st_size // 2)
    return path


def page_corrupted(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.sqlite3"
    make_table(path)
    overwrite_page(path, "marker-0030")
    return path


def garbage_header(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.sqlite3"
    make_table(path)
    with open(path, "r+b") as handle:
        handle.write(b"not a database at all, " * 4)
    return path


def test_a_sound_table_passes_and_keeps_its_jobs(tmp_path):
    check(tmp_path / "missing.sqlite3")  # a first start has none
    made = make_table(tmp_path / "source.sqlite3")
    path = tmp_path / "jobs.sqlite3"
    snapshot_with_wal(tmp_path / "source.sqlite3", path)  # the last jobs only in the WAL
    check(path)
    store = JobStore(path)
    assert store.get(made[0].id) == made[0]
    assert len(store.page(100, None, "asc")[0]) == JOBS + 5


@pytest.mark.parametrize("damage", [truncated, page_corrupted, garbage_header])
def test_a_damaged_table_is_refused_before_anything_writes_to_it(tmp_path, damage):
    path = damage(tmp_path)
    before = files(path)
    with pytest.raises(DamagedJobTable) as info:
        JobStore(path)
    message = str(info.value)
    assert str(path) in message and "damaged" in message, message
    assert "move it aside" in message and "lost" in message and "--recover_jobs" in message
    # Nothing was written into it: not the table, not its WAL (the -shm is SQLite's index of
    # the WAL, rebuilt by every reader).
    after = files(path)
    assert {n: after[n] for n in before if not n.endswith("-shm")} == {
        n: b for n, b in before.items() if not n.endswith("-shm")}


def test_a_row_that_does_not_decode_is_damage_too(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    make_table(path, 3)
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("UPDATE jobs SET data = '{\"id\": 1' WHERE seq = 2")
    db.commit()
    db.close()
    with pytest.raises(DamagedJobTable, match="row 2"):
        check(path)


def test_recovery_saves_every_readable_job_and_keeps_the_damaged_file(tmp_path):
    path = page_corrupted(tmp_path)
    made = make_table(tmp_path / "reference.sqlite3")
    damaged = path.read_bytes()
    result = recover_table(path)
    assert result.saved == JOBS - 1, result  # exactly the job on the overwritten page is lost
    assert result.aside.read_bytes() == damaged and result.aside.parent == path.parent
    check(path)
    store = JobStore(path)
    jobs = store.page(100, None, "asc")[0]
    assert len(jobs) == JOBS - 1
    prompts = [j.params.prompt.split()[0] for j in jobs]
    assert "marker-0030" not in prompts
    assert prompts == [j.params.prompt.split()[0] for j in made if "0030" not in j.params.prompt]
    # New jobs go on after the recovered ones.
    assert store.add(job(99)).seq > max(j.seq for j in jobs)


def test_recovery_of_a_truncated_table_and_of_one_with_no_readable_rows(tmp_path):
    path = truncated(tmp_path)
    result = JobStore(path, recover=True)
    saved = result.page(1000, None, "asc")[0]
    assert 0 < len(saved) < JOBS + 5
    assert all(j.params.prompt.startswith("marker-") for j in saved)
    other = tmp_path / "other"
    other.mkdir()
    path = garbage_header(other)
    assert recover_table(path).saved == 0
    assert JobStore(path).page(10, None, "asc") == ([], False)
    assert len(list(other.glob("jobs.sqlite3.damaged-*[0-9]"))) == 1
