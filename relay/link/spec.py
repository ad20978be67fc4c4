"""
relay's AMQP 0-9-1 protocol definition, loaded for txAMQP.

txAMQP 0.8.2's wheel ships no protocol XML, so relay carries its own
(C{amqp0-9-1.xml} next to this module, declared as package data), and
fixes what txAMQP misreads in it (L{alias_no_wait}).
"""

from __future__ import annotations

import functools
from importlib import resources

from txamqp import spec as txspec

SPEC_RESOURCE = "amqp0-9-1.xml"


def spec_bytes() -> bytes:
    """
    The XML document of relay's protocol definition.
    """
    return resources.files(__package__).joinpath(SPEC_RESOURCE).read_bytes()


@functools.cache
def load_spec() -> txspec.Spec:
    """
    relay's AMQP 0-9-1 spec, parsed once per process and ready for txAMQP.

    The C{no-wait} fields are aliased for txAMQP (L{alias_no_wait}), so
    C{no_wait=True} does not hang.  The returned object is shared: treat it
    as read-only.
    """
    # load_string, not load(path): package data may live in a zip.
    return alias_no_wait(txspec.load_string(spec_bytes(), specfilename=SPEC_RESOURCE))


def alias_no_wait(spec: txspec.Spec) -> txspec.Spec:
    """
    Make txAMQP see 0-9-1's C{no-wait} fields as the C{nowait} it looks for.

    txAMQP 0.8.2's C{AMQChannel.invoke} skips waiting for a reply only when
    a field is named exactly C{nowait}: with 0-9-1's C{no-wait},
    C{no_wait=True} hangs.  Only the by-name index of each method's fields
    gains an entry; field order, Python argument names (C{no_wait}) and
    encoding are unchanged.  Idempotent.
    """
    for klass in spec.classes:
        for method in klass.methods:
            field = method.fields.byname.get("no-wait")
            if field is not None:
                method.fields.byname.setdefault("nowait", field)
    return spec
