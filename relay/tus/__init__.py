"""
What both of relay's tus 1.0 servers share (the edge's upload receiver,
L{relay.edge.uploads}, and the cloud's transfer receiver,
L{relay.cloud.receiver}), and what the edge's transfer client needs to
speak to the latter.

  - L{protocol}: header parsing and checks (versions, offsets, lengths,
    metadata, checksums, concatenation), L{protocol.TusError}.
  - L{streaming}: a twisted.web request whose PATCH and POST bodies stream
    to the route instead of being buffered whole.
"""
