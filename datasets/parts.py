"""Part ids: which images show the same physical part, so that a split keeps them together.

A part photographed under several lightings or by several cameras is one unit of leakage:
with one shot in train and another in test, a score measures memory, not inspection. Where
a source records the part, importers pass it on (``Candidate.group``). Where it does not,
these rules derive it:

* ``frame_run_parts`` (magnetic-tile): a rig photographs one tile once per capture session
  in quick succession, so within a class one tile's frame numbers lie a short run apart
  (Blowhole 3667, 3696, 3710, 3724, 3746) and different tiles hundreds to thousands apart.
* ``pattern_part``: a regular expression over an image's path in its source (a folder per
  part, or a part number in the file name), for ImageFolder imports.

Both err on the side of merging: two tiles wrongly joined cost the split a little balance;
one tile wrongly cut in two leaks it into test.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from .duplicates import UnionFind
from .manifest import DatasetError

# Frames of one tile: consecutive frames at most RUN_GAP apart (measured on magnetic-tile:
# 845 of 1,086 in-class gaps are under 40, the gaps between tiles are mostly over 1,000).
RUN_GAP = 150
# Two neighbouring runs that are each an incomplete tile (a session missing or doubled) and
# lie at most MERGE_GAP frames apart are one tile shot with a pause (Break 98080, 98102,
# 98116 then 98305, 98336): joined.
MERGE_GAP = 2000


@dataclass(frozen=True)
class Shot:
    """One image: its class, frame number and capture session, as the file name gives them."""

    label: str
    frame: int
    session: str


def _complete(run: Sequence[Shot], sessions: set[str]) -> bool:
    """A run that holds every session the same number of times: whole tiles only."""
    counts = Counter(s.session for s in run)
    return set(counts) == sessions and len(set(counts.values())) == 1


def frame_run_parts(shots: Sequence[Shot]) -> list[str]:
    """A part id per shot (``<label>-<first frame>``), from runs of nearby frame numbers.

    Per class: shots sorted by frame number are cut into runs wherever two neighbours lie
    more than ``RUN_GAP`` frames apart; then neighbouring runs that are both incomplete
    (not every session the same number of times) and at most ``MERGE_GAP`` apart are
    joined. A session with under a tenth of the largest session's shots (a one-off capture,
    like magnetic-tile's three exp0 images) does not count towards completeness.
    """
    if not shots:
        return []
    session_count = Counter(s.session for s in shots)
    largest = max(session_count.values())
    regular = {s for s, n in session_count.items() if n >= 0.1 * largest}
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, shot in enumerate(shots):
        by_label[shot.label].append(i)
    out = [""] * len(shots)
    for indices in by_label.values():
        indices.sort(key=lambda i: shots[i].frame)
        runs: list[list[int]] = [[indices[0]]]
        for i in indices[1:]:
            if shots[i].frame - shots[runs[-1][-1]].frame > RUN_GAP:
                runs.append([i])
            else:
                runs[-1].append(i)
        whole = [
            _complete([shots[i] for i in run if shots[i].session in regular], regular)
            for run in runs
        ]
        joined = UnionFind(str(k) for k in range(len(runs)))
        for k in range(len(runs) - 1):
            gap = shots[runs[k + 1][0]].frame - shots[runs[k][-1]].frame
            if gap <= MERGE_GAP and not whole[k] and not whole[k + 1]:
                joined.union(str(k), str(k + 1))
        for members in joined.groups().values():
            part = [i for k in members for i in runs[int(k)]]
            first = min(part, key=lambda i: shots[i].frame)
            for i in part:
                out[i] = f"{shots[first].label}-{shots[first].frame}"
    return out


def pattern_part(pattern: re.Pattern[str], key: str) -> str:
    """The part id that ``pattern`` finds in ``key`` (its group ``part``, else its first
    group, else the whole match); a key it does not match is an error naming both."""
    match = pattern.search(key)
    if match is None:
        raise DatasetError(f"{key}: the part pattern {pattern.pattern!r} does not match it")
    if "part" in pattern.groupindex:
        return str(match["part"])
    return str(match[1] if pattern.groups else match[0])


def compile_part_pattern(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise DatasetError(f"--part-pattern {text!r} is not a regular expression ({exc})") from None
