"""
Rotating the spool's master key keeps every staged and unfinished upload
readable, survives an interruption (run again, it finishes; meanwhile the
edge refuses to start), and leaves the old key useless.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from relay.crypto import load_or_create_master_key
from relay.edge.config import UploadsSection
from relay.edge.spool_admin import pending_rotation, rotate
from relay.edge.uploads import spool as spool_module
from relay.edge.uploads.component import build_uploads
from relay.edge.uploads.spool import Spool, SpoolCorrupt


class KeyRotationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = Path(self.mktemp()).absolute()
        self.data.mkdir()
        self.spool_dir, self.key_path = self.data / "spool", self.data / "spool.key"
        self.old = load_or_create_master_key(self.key_path, outside=self.spool_dir)
        spool = Spool(self.spool_dir, self.old, segment_size=1024)
        self.contents: dict[str, bytes] = {}
        for i in range(4):
            data = secrets.token_bytes(3000 + i)
            writer = spool.create(f"upload{i}")
            writer.write(data)
            if i % 2:
                writer.finalize()  # staged
            writer.close()
            self.contents[f"upload{i}"] = data

    def check_readable(self, key: bytes) -> None:
        spool = Spool(self.spool_dir, key)
        for file_id, data in self.contents.items():
            with spool.reader(file_id) as r:
                self.assertEqual(r.read(0, r.length), data)

    def test_rotation_keeps_every_upload(self) -> None:
        self.assertEqual(rotate(self.spool_dir, self.key_path), 4)
        new = self.key_path.read_bytes()
        self.assertNotEqual(new, self.old)
        self.check_readable(new)
        self.assertRaises(SpoolCorrupt, Spool(self.spool_dir, self.old).reader, "upload0")
        self.assertFalse(pending_rotation(self.key_path).exists())
        # An unfinished upload goes on under the new key.
        writer = Spool(self.spool_dir, new).open_writer("upload0")
        writer.write(b"more")
        writer.close()

    def test_an_interrupted_rotation_is_finished_by_running_it_again(self) -> None:
        real = spool_module._pwrite_all
        calls = [0]

        def failing(fd: int, data: Any, offset: int) -> None:
            calls[0] += 1
            if calls[0] == 3:
                raise OSError(5, "injected I/O error")
            real(fd, data, offset)

        spool_module._pwrite_all = failing
        try:
            self.assertRaises(OSError, rotate, self.spool_dir, self.key_path)
        finally:
            spool_module._pwrite_all = real
        self.assertTrue(pending_rotation(self.key_path).exists())
        self.assertEqual(self.key_path.read_bytes(), self.old)
        with self.assertRaises(SystemExit) as refused:
            build_uploads(UploadsSection(), self.data, None, None, None, None, None, None)  # type: ignore[arg-type]
        self.assertIn("rotate-key", str(refused.exception))
        self.assertEqual(rotate(self.spool_dir, self.key_path), 2)
        self.check_readable(self.key_path.read_bytes())
