"""
The transfer stage: staged uploads go from the encrypted spool to S3 in
parallel parts over presigned URLs, resumably (C{docs/transfer.md}).

  - L{planner}: how a file is cut into parts, and their digests.
  - L{journal}: the transfer's state and the confirmed parts, in SQLite.
  - L{urls}: the presigned URLs held in memory.
  - L{body}: a part's body streamed from the spool; the bandwidth cap.
  - L{uploader}: concurrent part PUTs with timeouts and retries.
  - L{run}: one upload's transfer, state by state.
  - L{answers}: the cloud's answers, applied to the journal.
  - L{progress}: progress and outcome, to the upload's record and owner.
  - L{service}: the edge's transfer service (the receiver's upload sink).
"""
