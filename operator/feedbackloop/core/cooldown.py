"""How long automatic retrains wait after the last start: `retrain.cooldown`, doubled for each retrain in a
row that did not end rolled out, up to `retrain.maxCooldown`. A breach that no candidate fixes then retrains
ever more rarely instead of every cooldown for ever; a rollout resets it. Manual requests never wait."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from feedbackloop.api import Outcome, Reason, Trigger
from feedbackloop.core.durations import format_duration
from feedbackloop.core.spec import RetrainSpec
from feedbackloop.core.status import HistoryEntry

# History entries a retrain wrote; a rollback-to's entry (ManualRollback) is no retrain and is skipped.
RETRAIN_TRIGGERS = frozenset({Trigger.MANUAL, Trigger.BREACH, Trigger.SCHEDULE})
# The retrain ended without its model serving: what triggered it is still there.
UNSUCCESSFUL_OUTCOMES = frozenset(
    {
        Outcome.RETRAIN_FAILED,
        Outcome.REJECTED,
        Outcome.RECOMMENDED,  # a recommendation nobody promoted fixed nothing either; promoting it resets
        Outcome.ROLLED_BACK,
        Outcome.ROLLBACK_FAILED,
        Outcome.DEGRADED,
        Outcome.ABORTED,
    }
)
# Still on its way (a candidate awaiting its gates, a rollout): neither counts nor resets.
IN_FLIGHT_OUTCOMES = frozenset({Outcome.RETRAINED, Outcome.STAGING, Outcome.ROLLING_OUT})


@dataclass(frozen=True)
class Cooldown:
    length: timedelta
    base: timedelta  # retrain.cooldown
    unsuccessful: int  # the newest finished retrains in a row that did not end rolled out
    capped: bool  # the length is retrain.maxCooldown

    def explained(self) -> str:
        """Why the cooldown is longer than retrain.cooldown, or "" when it is not."""
        if self.length <= self.base:
            return ""
        retrains = f"{self.unsuccessful} unsuccessful retrain{'s' if self.unsuccessful != 1 else ''}"
        length = format_duration(self.length)
        if self.capped:
            return f" (backed off to maxCooldown {length} after {retrains})"
        return f" (backed off \u00d7{self.length // self.base} to {length} after {retrains})"


def unsuccessful_retrains(history: Sequence[HistoryEntry]) -> int:
    """The newest finished retrains in a row, newest first, that did not end RolledOut."""
    count = 0
    for entry in reversed(history):
        if entry.trigger not in RETRAIN_TRIGGERS or entry.outcome in IN_FLIGHT_OUTCOMES:
            continue
        kept_below = entry.outcome is Outcome.ROLLED_OUT and entry.reason == Reason.BELOW_THRESHOLD_NOT_WORSE
        if entry.outcome not in UNSUCCESSFUL_OUTCOMES and not kept_below:
            break  # RolledOut: the loop's last retrain worked
        # A version kept below its threshold (better than what it replaced) did not fix the breach either.
        count += 1
    return count


def retrain_cooldown(retrain: RetrainSpec, history: Sequence[HistoryEntry]) -> Cooldown:
    """cooldown * 2^k (k: unsuccessful retrains in a row), at most maxCooldown (equal to cooldown: off)."""
    unsuccessful = unsuccessful_retrains(history)
    cap = retrain.backoff_cap
    length = retrain.cooldown
    for _ in range(unsuccessful):
        if length >= cap:
            break
        length *= 2
    length = min(length, cap)
    return Cooldown(
        length, retrain.cooldown, unsuccessful, capped=length == cap and length > retrain.cooldown
    )
