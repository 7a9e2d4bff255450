"""The durable outbox: survives reopening, bounded by bytes, drops results first, counts."""

from __future__ import annotations

from pathlib import Path

from lineqc.edge.outbox import Outbox, OutMessage


def _msg(kind: str, key: str, size: int = 100) -> OutMessage:
    return OutMessage(kind, f"t/{kind}", b"x" * size, key)


def test_committed_rows_survive_reopening_and_samples_come_first(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 1 << 20)
    ids = box.add_many([_msg("result", "r1"), _msg("sample", "s1"), _msg("result", "r2")])
    assert all(i > 0 for i in ids)
    box.close()
    box = Outbox(tmp_path / "o.sqlite", 1 << 20)  # as after a restart
    assert (box.depth, box.bytes) == (3, 300)
    assert [r.key for r in box.pending(10)] == ["s1", "r1", "r2"]
    first = box.pending(1)[0]
    assert [r.key for r in box.pending(10, exclude=[first.id])] == ["r1", "r2"]
    assert box.delete([first.id, 999]) == 1
    assert box.depth == 2 and box.keys("sample") == []


def test_bound_drops_results_before_samples_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 65_536)
    box.add_many([_msg("result", f"r{i}", 1000) for i in range(30)])
    box.add_many([_msg("sample", f"s{i}", 1000) for i in range(30)])
    assert not box.at_bound
    box.add_many([_msg("sample", f"t{i}", 1000) for i in range(20)])  # over: oldest results go
    assert box.bytes <= box.max_bytes and box.at_bound
    assert box.counters() == {"dropped_result": 15}
    assert box.keys("result") == [f"r{i}" for i in range(15, 30)]
    box.add_many([_msg("sample", f"u{i}", 1000) for i in range(15)])
    assert box.keys("result") == [] and len(box.keys("sample")) == 65
    assert box.add_many([_msg("result", "late", 1000)]) == [-1]  # cannot displace a sample
    box.add_many([_msg("sample", "newest", 1000)])  # displaces the oldest sample
    keys = box.keys("sample")
    assert "newest" in keys and "s0" not in keys
    expected = {"dropped_result": 31, "dropped_sample": 1}
    assert box.counters() == expected and box.stats()["dropped"] == expected
    box.close()
    again = Outbox(tmp_path / "o.sqlite", 65_536)
    assert again.counters() == expected and again.depth == 65  # counts survive restarts


def test_a_message_larger_than_the_bound_is_refused(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 64 * 1024)
    assert box.add_many([_msg("sample", "huge", 100_000)]) == [-1]
    assert box.counters() == {"dropped_sample": 1} and box.depth == 0


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` with a ballast file, to its last byte."""
    ballast = folder / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                continue
    return ballast


def test_a_full_disk_is_the_bound_counted_and_inspection_goes_on(tmpfs) -> None:
    """The disk fills (another program's files) long before the configured bound: each
    batch it refuses is dropped and counted (never an exception: the failed commit's
    rollback must not raise), depth and bytes stay what is committed, at_bound says so;
    once the disk has room again, messages are taken and the counts saved."""
    tiny_disk = tmpfs("size=512k")
    box = Outbox(tiny_disk / "o.sqlite", 64 * 1024 * 1024)
    kept = box.add_many([_msg("sample", f"s{i}", 4000) for i in range(5)])
    ballast = fill(tiny_disk)
    refused = [box.add_many([_msg("sample", f"t{i}", 4000), _msg("result", f"r{i}", 400)])
               for i in range(5)]  # fmt: skip
    assert refused == [[-1, -1]] * 5
    assert box.counters() == {"dropped_sample": 5, "dropped_result": 5} and box.at_bound
    assert (box.depth, box.bytes) == (5, 20_000)
    assert [r.id for r in box.pending(100)] == kept
    ballast.unlink()  # room again
    assert box.add_many([_msg("sample", "after", 4000)])[0] > 0
    assert box.delete(kept) == 5 and (box.depth, box.bytes) == (1, 4000)
    box.close()
    again = Outbox(tiny_disk / "o.sqlite", 64 * 1024 * 1024)
    assert again.counters() == {"dropped_sample": 5, "dropped_result": 5}  # saved
    assert again.keys() == ["after"]
