"""
Jobs: the compute, next to S3.

A job submitted at an edge is checked against its kind (L{kinds}) when the
command arrives, recorded, and put on C{relay.jobs} in the same
transaction (L{JobDispatch}).  Workers (L{worker}) claim jobs with a lease
and a fencing epoch (L{leases}), run them (L{runner}) and record their
outcome; L{JobReaper} gives the jobs of lost workers another attempt.
"""
