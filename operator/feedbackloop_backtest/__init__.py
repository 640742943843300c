"""`feedbackloop backtest`: replay a labelled history in simulated time through the operator's own decisions.

The replay drives the pure core (`parse_spec`, `plan`, `decide`) with Observations from simulated adapters:
the trainer runs in-process when a Job would be created, the reference server's counters are pushed to a real
Prometheus in simulated time, and artifacts live in an in-memory S3 store behind the real ArtifactStore.
"""
