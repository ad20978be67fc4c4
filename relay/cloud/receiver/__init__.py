"""
The cloud's tus receiver for transfers (C{docs/transfer.md}, "The tus
path"): edges send a staged file over several partial uploads at once,
each a run of whole S3 parts; the receiver holds at most one part of each
in memory and writes it to S3 as an UploadPart from inside the cloud as
soon as it is complete; the final concatenation completes the object
through the same checks and registration as C{transfer.finish}.

  - L{store}: the tokens and the partial uploads, in the cloud's database.
  - L{tokens}: the short-lived per-transfer bearer tokens.
  - L{partials}: one partial upload's bytes: the part held, the offset.
  - L{service}: the receiver's protocol logic, apart from HTTP.
  - L{resource}: the twisted.web adapter.
  - L{component}: the C{[receiver]} table and the builder.
"""
