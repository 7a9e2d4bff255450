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
