"""
The part planner's invariants (hypothesis) and the digest pass.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.edge.transfer.planner import MAX_PARTS, MIN_PART_SIZE, MiB, TooLarge, measure, plan_parts

SEGMENTS = st.sampled_from([64, 4096, 64 * 1024, 1 * MiB, 3 * MiB, 8 * MiB, 5_000_000])
SIZES = st.one_of(
    st.integers(min_value=0, max_value=200 * MiB),
    st.integers(min_value=0, max_value=40 << 40),  # up to S3's largest objects
)


@settings(max_examples=500, deadline=None)
@given(size=SIZES, segment=SEGMENTS)
def test_plan_invariants(size: int, segment: int) -> None:
    try:
        plan = plan_parts(size, segment)
    except TooLarge:
        assert size > MAX_PARTS * 5 * (1 << 30) - MAX_PARTS * segment
        return
    parts = list(plan.parts())
    # Whole parts of a segment multiple, at least 8 MiB, at most 10,000.
    assert plan.part_size % segment == 0
    assert plan.part_size >= MIN_PART_SIZE
    assert 1 <= plan.count == len(parts) <= MAX_PARTS
    # Contiguous, covering the file exactly; only the last is shorter.
    assert parts[0].offset == 0
    for before, after in zip(parts, parts[1:], strict=False):
        assert after.offset == before.end
        assert before.size == plan.part_size
    assert parts[-1].end == size
    assert (0 < parts[-1].size <= plan.part_size) or size == 0
    # The smallest such part size: one segment less breaks a rule.
    smaller = plan.part_size - segment
    assert smaller < MIN_PART_SIZE or -(-size // smaller) > MAX_PARTS


def test_examples() -> None:
    assert plan_parts(0, MiB).count == 1
    assert list(plan_parts(0, MiB).parts())[0].size == 0
    assert plan_parts(5, MiB).part_size == 8 * MiB
    small = plan_parts(50 * MiB, MiB)
    assert (small.part_size, small.count) == (8 * MiB, 7)
    assert small.part(7).size == 2 * MiB
    # 100 GiB: 8 MiB parts would be 12,800; parts grow to whole segments.
    big = plan_parts(100 << 30, MiB)
    assert big.count <= MAX_PARTS and big.part_size == 11 * MiB
    # A segment that does not divide 8 MiB: the next multiple above it.
    assert plan_parts(1, 3 * MiB).part_size == 9 * MiB
    with pytest.raises(TooLarge):
        plan_parts(MAX_PARTS * (6 << 30), MiB)
    with pytest.raises(IndexError):
        small.part(8)


def test_measure() -> None:
    data = bytes(range(256)) * (20 * MiB // 256) + b"tail"
    plan = plan_parts(len(data), 64 * 1024)

    def blocks(offset: int, size: int) -> Iterator[bytes]:
        for start in range(offset, offset + size, 64 * 1024):
            yield data[start:min(start + 64 * 1024, offset + size)]

    digests = measure(plan, blocks)
    assert digests.sha256 == hashlib.sha256(data).hexdigest()
    assert [base64.b64decode(m) for m in digests.md5s] == [
        hashlib.md5(data[p.offset:p.end]).digest() for p in plan.parts()
    ]
