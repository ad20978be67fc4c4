"""
The twistd plugins of relay.  Inert: they only name the modules that hold
C{Options} and C{makeService}, so that C{twistd --help} stays fast.
"""

from twisted.application.service import ServiceMaker

relayEdge = ServiceMaker(
    "relay edge gateway",
    "relay.edge.tap",
    "The edge: web UI, tus uploads and downloads, relaying to the cloud over AMQP.",
    "relay-edge",
)

relayCloud = ServiceMaker(
    "relay cloud agent",
    "relay.cloud.tap",
    "The cloud agent: source of truth, compute jobs and S3 next to the bucket.",
    "relay-cloud",
)
