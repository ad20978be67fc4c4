"""relay's AMQP 0-9-1 protocol definition, loaded for txAMQP.

txAMQP 0.8.2's wheel ships no protocol XML, so relay carries its own
(``amqp0-9-1.xml`` next to this module, declared as package data).
"""

from __future__ import annotations

import functools
from importlib import resources

from txamqp import spec as txspec

from relay.link.client import alias_no_wait

SPEC_RESOURCE = "amqp0-9-1.xml"


def spec_bytes() -> bytes:
    """The XML document of relay's protocol definition."""
    return resources.files(__package__).joinpath(SPEC_RESOURCE).read_bytes()


@functools.cache
def load_spec() -> txspec.Spec:
    """relay's AMQP 0-9-1 spec, parsed once per process and ready for txAMQP.

    The ``no-wait`` fields are aliased for txAMQP (see
    :func:`relay.link.client.alias_no_wait`), so ``no_wait=True`` does not hang.
    The returned object is shared: treat it as read-only.
    """
    # load_string, not load(path): package data may live in a zip.
    return alias_no_wait(txspec.load_string(spec_bytes(), specfilename=SPEC_RESOURCE))
