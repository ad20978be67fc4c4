"""
Files and secrets at rest are the owner's only, whatever the umask: the
edge's start-up under a permissive umask, and over a data directory and
database a careless hand left open to others (made owner-only, with a
warning).  And the open-file limit the edge needs is checked at start.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import stat
from pathlib import Path

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relay.edge.web.site import ensure_open_files
from tests.edge.security.world import SecureEdge


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class ModeTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)

    def loose(self, path: Path) -> list[str]:
        return [str(p) for p in [path, *path.rglob("*")] if mode(p) & 0o077]

    async def test_a_fresh_start_leaves_nothing_open_to_others(self) -> None:
        edge = SecureEdge(self)
        await edge.uploads_ready()
        self.assertEqual(mode(edge.data_dir), 0o700)
        self.assertEqual(mode(edge.data_dir / "edge.db"), 0o600)
        self.assertTrue((edge.data_dir / "edge.db-wal").exists())
        self.assertEqual(self.loose(edge.data_dir), [])

    async def test_open_files_left_by_hand_are_closed_with_a_warning(self) -> None:
        directory = Path(self.mktemp()).absolute()
        data = directory / "edge"
        data.mkdir(parents=True, mode=0o755)
        os.chmod(data, 0o755)
        sqlite3.connect(data / "edge.db").close()
        os.chmod(data / "edge.db", 0o644)
        warnings: list[str] = []

        def observe(event: dict[str, object]) -> None:
            if event.get("log_level") is not None and "made it 0" in str(event.get("log_format", "")):
                warnings.append(str(event["path"]))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        edge = SecureEdge(self, data_dir=data)
        await edge.uploads_ready()
        self.assertEqual((mode(data), mode(data / "edge.db")), (0o700, 0o600))
        self.assertEqual(sorted(warnings), sorted([str(data), str(data / "edge.db")]))
        self.assertEqual(self.loose(data), [])


class OpenFileLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, limits)

    def test_the_soft_limit_is_raised_to_what_the_edge_needs(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        self.assertEqual(ensure_open_files(min(hard, 4096)), min(hard, 4096))
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], min(hard, 4096))

    def test_a_hard_limit_too_low_stops_the_start(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with self.assertRaises(SystemExit) as stopped:
            ensure_open_files(hard + 1 if hard != resource.RLIM_INFINITY else 1 << 62)
        self.assertIn("LimitNOFILE", str(stopped.exception))
