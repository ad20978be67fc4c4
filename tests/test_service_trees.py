"""
The edge's and the cloud's service trees, built in this process on the
real reactor and stopped while their startup work is still under way.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from relay.cloud.config import CloudConfig
from relay.cloud.tap import cloud_service
from relay.config import load
from relay.edge.config import EdgeConfig
from relay.edge.tap import edge_service
from relay.testing.transfer_world import Vhost

from .conftest import free_port


class StopDuringStartup(TestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).absolute()
        self.directory.mkdir(parents=True)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.directory)

    def config(self, side: str) -> Path:
        # A vhost of its own: nothing here may consume a deployment's messages.
        vhost = Vhost().create()
        self.addCleanup(vhost.delete)
        path = self.directory / f"{side}.toml"
        path.write_text(
            f'[{side}]\nlisten = "tcp:{free_port()}:interface=127.0.0.1"\n'
            f'data_dir = "{self.directory / side}"\n[link]\nurl = "{vhost.url()}"\n'
        )
        return path

    async def test_edge(self) -> None:
        # Upload recovery is under way when the stop comes: it must finish
        # against an open database, and the stop must not wait forever.
        service = edge_service(load(EdgeConfig, self.config("edge")), reactor)
        service.startService()
        stopping = service.stopService()
        stopping.addTimeout(10, reactor)
        await stopping

    async def test_cloud(self) -> None:
        service = cloud_service(load(CloudConfig, self.config("cloud")), reactor)
        service.startService()
        stopping = service.stopService()
        stopping.addTimeout(10, reactor)
        await stopping
