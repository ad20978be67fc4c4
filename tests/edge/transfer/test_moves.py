"""
The journal owns a transfer's state transitions: the table of moves, and
L{journal.set_state} refusing any move the table lacks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.edge.transfer import journal
from relay.edge.transfer.journal import MOVES, IllegalMove, JobState
from relay.edge.uploads.handoff import StagedUpload
from relay.testing.db import SynchronousDatabase


def staged() -> StagedUpload:
    return StagedUpload(upload_id="u1", spool_id="u1", owner="o", project="p", filename="f", filetype="",
                        length=10)


def test_only_the_table_s_moves(tmp_path: Path) -> None:
    db = SynchronousDatabase(tmp_path / "edge.db", [journal.SCHEMA])
    conn = db.conn
    journal.add_job(conn, staged(), "t" * 32, 0.0)
    with pytest.raises(IllegalMove):
        journal.set_state(conn, "u1", JobState.SENDING, 1.0)
    assert journal.job(conn, "u1").state is JobState.PLANNED  # type: ignore[union-attr]
    for state in (JobState.FAILED, JobState.REGISTERED, JobState.DONE):
        assert journal.set_state(conn, "u1", state, 1.0)
    for state in JobState:
        if state is not JobState.DONE:
            with pytest.raises(IllegalMove):
                journal.set_state(conn, "u1", state, 2.0)
    assert journal.job(conn, "u1").state is JobState.DONE  # type: ignore[union-attr]



def test_every_state_has_its_moves() -> None:
    assert set(MOVES) == set(JobState)
    # Every unfinished state can fail; only a registration leads to done.
    assert all(JobState.FAILED in MOVES[s] for s in journal.UNFINISHED if s is not JobState.REGISTERED)
    assert [s for s in JobState if JobState.DONE in MOVES[s]] == [JobState.REGISTERED]
