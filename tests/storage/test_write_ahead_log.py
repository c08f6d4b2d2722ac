"""The LMDB backend's write-ahead log: its records, and recovery from a crash or a power cut.

The crash tests run the store in a child process (wal_child.py) that kills itself with
SIGKILL at the worst moment; the power-cut test then also tears, on disk, every page written
since the last checkpoint, and opens the store as if the machine had rebooted.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest
import trio

from dtq.storage.lmdb import layouts as L
from dtq.storage.lmdb import wal
from dtq.storage.lmdb.store import LmdbStore
from tests.storage.wal_child import value

CHILD = Path(__file__).with_name("wal_child.py")
CHILD_TIMEOUT_S = 60


def _child(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHILD), str(path), *args],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )


def _acked(out: str) -> list[str]:
    return [line.split()[1] for line in out.splitlines() if line.startswith("acked ")]


async def _settings(path: Path, names: list[str]) -> dict[str, str | None]:
    store = LmdbStore(str(path), fsync=True, map_size_bytes=8 << 20)
    try:
        return {name: await store.get_setting(name) for name in names}
    finally:
        store.close()


async def _write(path: Path, settings: dict[str, str]) -> None:
    """Open the store, write `settings` one commit each, close it cleanly."""
    store = LmdbStore(str(path), fsync=True, map_size_bytes=8 << 20)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for name, text in settings.items():
            await store.write(lambda txn, name=name, text=text: txn.put_setting(name, text))
        nursery.cancel_scope.cancel()
    await store.aclose()
    store.close()


async def _checkpoint_reaching(path: Path, number: int) -> wal.Checkpoint:
    """The checkpoint file once it covers record `number` (its sync runs in a thread, in real
    time, whatever trio's clock does); bounded."""
    for _ in range(500):
        ckpt = wal.read_checkpoint(str(path / "wal"))
        if ckpt is not None and ckpt.number >= number:
            return ckpt
        await trio.to_thread.run_sync(time.sleep, 0.01)
    raise AssertionError(f"no checkpoint reached record {number} within 5 s")


# -- the log's records ------------------------------------------------------------------------
def test_records_read_back_in_order_up_to_the_first_torn_one(tmp_path: Path) -> None:
    log = wal.WriteAheadLog(str(tmp_path))
    log.start(generation=7)
    for number in range(1, 6):
        log.append(number, f"payload {number}".encode())
    log.close()
    assert list(wal.read_records(str(tmp_path), 7, 0))[-1] == (5, b"payload 5")
    assert [n for n, _ in wal.read_records(str(tmp_path), 7, 2)] == [3, 4, 5]
    assert list(wal.read_records(str(tmp_path), 8, 0)) == []  # another generation's

    segment = tmp_path / "segment-0"
    data = bytearray(segment.read_bytes())
    data[data.index(b"payload 4")] ^= 0xFF  # record 4 was torn: written, never synced
    segment.write_bytes(bytes(data))
    assert [n for n, _ in wal.read_records(str(tmp_path), 7, 0)] == [1, 2, 3]


def test_an_undone_append_is_not_read_and_the_next_takes_its_place(tmp_path: Path) -> None:
    log = wal.WriteAheadLog(str(tmp_path))
    log.start(generation=1)
    log.append(1, b"one")
    log.append(2, b"two, never committed")
    log.unappend()
    assert [p for _, p in wal.read_records(str(tmp_path), 1, 0)] == [b"one"]
    log.append(2, b"two")
    log.close()
    assert [p for _, p in wal.read_records(str(tmp_path), 1, 0)] == [b"one", b"two"]


def test_records_follow_on_across_segments_and_stale_ones_are_left_out(tmp_path: Path) -> None:
    log = wal.WriteAheadLog(str(tmp_path))
    log.start(generation=3)
    for number in (1, 2, 3):  # segment 0
        log.append(number, b"a%d" % number)
    log.switch()
    log.append(4, b"b4")  # segment 1
    log.switch()  # back to 0 (a later checkpoint covers 1..4): its old records are stale
    log.append(5, b"c5")
    log.close()
    assert [n for n, _ in wal.read_records(str(tmp_path), 3, 3)] == [4, 5]
    assert [n for n, _ in wal.read_records(str(tmp_path), 3, 4)] == [5]


def test_a_second_process_cannot_take_the_log(tmp_path: Path) -> None:
    held = wal.WriteAheadLog(str(tmp_path))
    try:
        with pytest.raises(wal.LogBusy):
            wal.WriteAheadLog(str(tmp_path))  # a second open file: flock refuses it too
    finally:
        held.close()
    wal.WriteAheadLog(str(tmp_path)).close()  # free again


def test_the_checkpoint_file_round_trips_and_refuses_damage(tmp_path: Path) -> None:
    ckpt = wal.Checkpoint(9, 1234, 56, "a-boot", b"m" * 8192)
    wal.write_checkpoint(str(tmp_path), ckpt)
    assert wal.read_checkpoint(str(tmp_path)) == ckpt
    path = tmp_path / "checkpoint"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        wal.read_checkpoint(str(tmp_path))


# -- recovery ---------------------------------------------------------------------------------
async def test_a_batch_cut_short_after_its_record_is_synced_replays_at_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data"
    result = _child(path, "cut-short")
    assert result.returncode == -9, result.stderr
    assert _acked(result.stdout) == ["before"]

    env = lmdb.open(str(path), max_dbs=64, readonly=True, lock=False)
    with env.begin() as txn:
        kv = env.open_db(L.KV.encode(), txn=txn, create=False)
        assert txn.get(b"cut", db=kv) is None  # LMDB never committed it...
        assert txn.get(b"before", db=kv) == b"1"
    env.close()

    # ...but its record was synced, so it is there once the store opens.
    assert await _settings(path, ["before", "cut"]) == {"before": "1", "cut": "short"}


async def test_a_foreign_data_file_put_in_place_gets_no_records_replayed(
    tmp_path: Path,
) -> None:
    path, other = tmp_path / "data", tmp_path / "other"
    result = _child(path, "cut-short")
    assert result.returncode == -9, result.stderr  # `cut` waits in the log for its commit
    await _write(other, {"foreign": "1"})
    (path / "data.mdb").write_bytes((other / "data.mdb").read_bytes())

    found = await _settings(path, ["foreign", "before", "cut"])
    assert found == {"foreign": "1", "before": None, "cut": None}


@pytest.mark.parametrize("foreign_writes", [1, 60], ids=["older-txn-ids", "newer-txn-ids"])
async def test_after_a_reboot_a_foreign_data_file_is_not_rewound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, foreign_writes: int
) -> None:
    """A copy put in place of the data file: writing the log's checkpoint meta pages into it
    would break it, so it opens as it is. It is told apart by its txn ids when they are older
    than the checkpoint's, else by the page where the snapshot's main root was."""
    path, other = tmp_path / "data", tmp_path / "other"
    foreign = ["foreign", *(f"more-{i}" for i in range(foreign_writes - 1))]
    await _write(path, dict.fromkeys((f"ours-{i}" for i in range(30)), "1"))
    await _write(other, dict.fromkeys(foreign, "1"))
    (path / "data.mdb").write_bytes((other / "data.mdb").read_bytes())
    monkeypatch.setattr(wal, "boot_id", lambda: "a-later-boot")
    found = await _settings(path, [*foreign, "ours-0"])
    assert found == {**dict.fromkeys(foreign, "1"), "ours-0": None}  # all of it, as it was


def _tear_pages_written_since(synced: bytes, current: bytes, psize: int) -> bytes:
    """The data file as a power cut may leave it: the newest meta pages reached the disk, but
    every other page written after the checkpoint is garbage."""
    torn = bytearray(current)
    garbage = bytes((i * 131 + 17) % 256 for i in range(psize))
    for start in range(2 * psize, len(current), psize):
        if current[start : start + psize] != synced[start : start + psize]:
            torn[start : start + psize] = garbage
    return bytes(torn)


@pytest.mark.parametrize("value_bytes", [900, 4000], ids=["small", "the-map-grows"])
async def test_after_a_power_cut_the_data_file_rewinds_and_the_log_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value_bytes: int
) -> None:
    path = tmp_path / "data"
    result = _child(path, "power-cut", "60", str(value_bytes))
    assert result.returncode == -9, result.stderr
    acked = _acked(result.stdout)
    assert len(acked) == 120

    data_file = path / "data.mdb"
    synced = (path / "synced.mdb").read_bytes()
    current = data_file.read_bytes()
    if value_bytes == 4000:
        assert len(current) > 256 << 10  # the map grew after the checkpoint
    torn = _tear_pages_written_since(synced, current, 4096)
    assert torn != current  # the late writes did touch pages after the checkpoint
    data_file.write_bytes(torn)

    monkeypatch.setattr(wal, "boot_id", lambda: "a-later-boot")
    found = await _settings(path, acked)
    assert found == {name: value(name, value_bytes) for name in acked}

    # The store goes on from there: a write, a clean close, a reopen on the same boot.
    await _write(path, {"after": "recovery"})
    monkeypatch.undo()
    assert await _settings(path, ["after", "late-59"]) == {
        "after": "recovery",
        "late-59": value("late-59", value_bytes),
    }


async def test_a_tool_writing_beside_the_server_is_kept_across_a_power_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data"
    with subprocess.Popen(
        [sys.executable, str(CHILD), str(path), "hold"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None
        lines = [holder.stdout.readline() for _ in range(2)]
        assert lines == ["acked holder\n", "ready\n"]  # (on a failure, exit closes stdin: it stops)
        before = wal.read_checkpoint(str(path / "wal"))
        assert before is not None

        beside = _child(path, "beside")
        assert beside.returncode == 0, beside.stderr
        assert beside.stdout.splitlines() == ["beside the log", "acked beside"]
        after = wal.read_checkpoint(str(path / "wal"))
        assert after is not None and after.txn_id > before.txn_id
        assert after.generation == before.generation  # the holder's records still follow it
        holder.kill()  # SIGKILL: no clean close, no final checkpoint
        holder.wait(timeout=CHILD_TIMEOUT_S)

    monkeypatch.setattr(wal, "boot_id", lambda: "a-later-boot")
    assert await _settings(path, ["holder", "beside"]) == {"holder": "1", "beside": "1"}


async def test_without_fsync_a_crash_still_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Durability "os": records are written, not synced; a process crash keeps them."""
    path = tmp_path / "data"
    result = _child(path, "cut-short", "os")
    assert result.returncode == -9, result.stderr
    assert await _settings(path, ["before", "cut"]) == {"before": "1", "cut": "short"}


async def test_a_failed_checkpoint_keeps_every_record_the_last_good_one_needs(
    tmp_path: Path,
) -> None:
    """A checkpoint whose sync fails must not let the log reuse the segment holding the
    records after the last good checkpoint: they are all still read back from it."""
    path = tmp_path / "data"
    store = LmdbStore(str(path), fsync=True, map_size_bytes=8 << 20)
    log = store.log
    assert log is not None
    store.writer.checkpoint_interval_s = 3600.0  # only the checkpoints this test takes
    good = wal.read_checkpoint(str(path / "wal"))
    assert good is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for round_ in range(3):  # each round: writes, then a checkpoint that fails
            for i in range(5):
                await store.write(lambda txn, n=f"r{round_}-{i}": txn.put_setting(n, "1"))
            snap = log.begin_checkpoint()
            log.checkpoint_failed(snap)  # as if its sync had failed
        nursery.cancel_scope.cancel()
    numbers = [n for n, _ in wal.read_records(str(path / "wal"), good.generation, good.number)]
    assert numbers == list(range(good.number + 1, log.number + 1))
    assert len(numbers) == 15
    await store.aclose()
    store.close()


async def test_the_writer_checkpoints_a_second_after_a_commit_then_rests(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A checkpoint follows the commits within `checkpoint_interval_s`; an idle store takes
    none (nothing to sync), and a clean close leaves nothing to replay."""
    path = tmp_path / "data"
    store = LmdbStore(str(path), fsync=True, map_size_bytes=8 << 20)
    log = store.log
    assert log is not None
    at_open = wal.read_checkpoint(str(path / "wal"))
    assert at_open is not None and at_open.number == log.number
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for i in range(3):
            await store.write(lambda txn, i=i: txn.put_setting(f"s{i}", "1"))
        assert wal.read_checkpoint(str(path / "wal")) == at_open  # not yet: it is due later
        await trio.sleep(store.writer.checkpoint_interval_s + 0.5)
        later = await _checkpoint_reaching(path, log.number)
        assert later.number == log.number == at_open.number + 3
        await trio.sleep(60)  # idle: nothing new to checkpoint
        assert wal.read_checkpoint(str(path / "wal")) == later
        nursery.cancel_scope.cancel()
    await store.aclose()
    store.close()
    assert wal.read_checkpoint(str(path / "wal")) == later  # nothing since: nothing to add
