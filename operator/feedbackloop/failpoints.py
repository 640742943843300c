"""Where a test may make the operator die (FBL_FAILPOINT): the points where a crash would hurt most."""

from __future__ import annotations

import enum


class Failpoint(enum.StrEnum):
    """Fault injection for tests (FBL_FAILPOINT): die exactly where a crash would hurt most."""

    AFTER_COUNTER_WRITE = "after-counter-write"  # the retrain counter is durable, its Job not created yet
    AFTER_JOB_CREATE = "after-job-create"  # the Job exists, the status does not say so yet
    AFTER_MODEL_APPLY = "after-model-apply"  # the candidate is on the Deployment; events not posted
    DURING_ROLLBACK = "during-rollback"  # the previous model is back on the Deployment; events not posted
    BEFORE_EVENTS = "before-events"  # status and actions done, Events not posted


FAILPOINT_ALIASES = {"crash-before-job-create": Failpoint.AFTER_COUNTER_WRITE}  # its earlier name
