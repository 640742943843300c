"""The live verdict of a Shadow or Split stage: champion and candidate on the same traffic and ground truth.

A stage is judged once, when each model has `minSamples` labels or `maxDuration` has passed (one look, so the
significance level holds; docs/rollout-strategies.md). The tests:

- Shadow, classification: both models scored every labelled row, so the comparison is paired. McNemar's exact
  test on the discordant rows (one model right, the other wrong): a two-sided binomial test at 1/2.
- Split, classification: each row was answered by one model. A two-proportion z-test (pooled variance).
- Shadow, regression: a paired t-test on the per-row difference of squared errors (candidate - champion).
- Split, regression: Welch's t-test on the squared errors of the two groups.

The inputs are sums a server can export as Prometheus counters and sum across replicas; nothing here does I/O.
scipy is imported when a test runs, not with the operator: most operators never judge a stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist


class StageTest(StrEnum):
    MCNEMAR = "McNemar"
    TWO_PROPORTION_Z = "TwoProportionZ"
    PAIRED_T = "PairedT"
    WELCH_T = "WelchT"


class StageVerdict(StrEnum):
    WIN = "Win"
    LOSE = "Lose"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class PairedOutcomes:
    """Shadow, classification: labelled rows by which of the two models predicted them correctly."""

    both: int
    champion_only: int
    candidate_only: int
    neither: int

    @property
    def labels(self) -> int:
        return self.both + self.champion_only + self.candidate_only + self.neither


@dataclass(frozen=True)
class Proportion:
    """Split, classification: one model's labelled answers and how many were right."""

    labels: int
    correct: int


@dataclass(frozen=True)
class SquaredErrors:
    """Regression, one series: count, sum and sum of squares of the values (squared errors, or for Shadow the
    per-row difference candidate - champion of squared errors)."""

    count: int
    total: float
    total_of_squares: float

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def variance(self) -> float:
        """The sample variance (n - 1), clamped at 0 against rounding in the sums."""
        if self.count < 2:
            return math.nan
        return max((self.total_of_squares - self.total * self.total / self.count) / (self.count - 1), 0.0)


@dataclass(frozen=True)
class StageResult:
    test: StageTest
    champion_value: float  # the primary metric: accuracy, or rmse
    candidate_value: float
    p_value: float
    verdict: StageVerdict
    champion_labels: int
    candidate_labels: int


def _verdict(p_value: float, candidate_better: bool, alpha: float) -> StageVerdict:
    if not p_value < alpha:  # also NaN: no evidence is no verdict
        return StageVerdict.INCONCLUSIVE
    return StageVerdict.WIN if candidate_better else StageVerdict.LOSE


def mcnemar(outcomes: PairedOutcomes, alpha: float) -> StageResult:
    """Shadow accuracy: the exact McNemar test, a binomial test of candidate-only among discordant rows."""
    from scipy.stats import binomtest  # loaded by a stage verdict, not at start

    labels = outcomes.labels
    discordant = outcomes.champion_only + outcomes.candidate_only
    p_value = float(binomtest(outcomes.candidate_only, discordant, 0.5).pvalue) if discordant else 1.0
    champion = (outcomes.both + outcomes.champion_only) / labels if labels else math.nan
    candidate = (outcomes.both + outcomes.candidate_only) / labels if labels else math.nan
    better = outcomes.candidate_only > outcomes.champion_only
    return StageResult(
        StageTest.MCNEMAR, champion, candidate, p_value, _verdict(p_value, better, alpha), labels, labels
    )


def two_proportion_z(champion: Proportion, candidate: Proportion, alpha: float) -> StageResult:
    """Split accuracy: the two-sided two-proportion z-test with the pooled proportion."""
    p_champion = champion.correct / champion.labels if champion.labels else math.nan
    p_candidate = candidate.correct / candidate.labels if candidate.labels else math.nan
    p_value = math.nan
    if champion.labels and candidate.labels:
        pooled = (champion.correct + candidate.correct) / (champion.labels + candidate.labels)
        spread = math.sqrt(pooled * (1 - pooled) * (1 / champion.labels + 1 / candidate.labels))
        if spread > 0:
            z = (p_candidate - p_champion) / spread
            p_value = 2 * NormalDist().cdf(-abs(z))
        else:  # every answer right, or every answer wrong, on both sides: no difference to find
            p_value = 1.0
    better = p_candidate > p_champion
    return StageResult(
        StageTest.TWO_PROPORTION_Z,
        p_champion,
        p_candidate,
        p_value,
        _verdict(p_value, better, alpha),
        champion.labels,
        candidate.labels,
    )


def paired_t(
    champion: SquaredErrors, candidate: SquaredErrors, difference: SquaredErrors, alpha: float
) -> StageResult:
    """Shadow regression: a paired t-test on the per-row difference of squared errors (candidate - champion);
    a negative mean difference is the candidate's win."""
    from scipy.stats import t as student_t  # loaded by a stage verdict, not at start

    p_value = math.nan
    n = difference.count
    if n >= 2:
        spread = math.sqrt(difference.variance / n)
        if spread > 0:
            statistic = difference.mean / spread
            p_value = float(2 * student_t.sf(abs(statistic), n - 1))
        else:
            p_value = 1.0 if difference.mean == 0 else 0.0
    better = difference.mean < 0
    return StageResult(
        StageTest.PAIRED_T,
        _rmse(champion),
        _rmse(candidate),
        p_value,
        _verdict(p_value, better, alpha),
        champion.count,
        candidate.count,
    )


def welch_t(champion: SquaredErrors, candidate: SquaredErrors, alpha: float) -> StageResult:
    """Split regression: Welch's t-test on the two groups' squared errors; lower is the candidate's win."""
    from scipy.stats import ttest_ind_from_stats  # loaded by a stage verdict, not at start

    p_value = math.nan
    if champion.count >= 2 and candidate.count >= 2:
        if champion.variance + candidate.variance > 0:
            result = ttest_ind_from_stats(
                candidate.mean,
                math.sqrt(candidate.variance),
                candidate.count,
                champion.mean,
                math.sqrt(champion.variance),
                champion.count,
                equal_var=False,
            )
            p_value = float(result.pvalue)
        else:
            p_value = 1.0 if candidate.mean == champion.mean else 0.0
    better = candidate.mean < champion.mean
    return StageResult(
        StageTest.WELCH_T,
        _rmse(champion),
        _rmse(candidate),
        p_value,
        _verdict(p_value, better, alpha),
        champion.count,
        candidate.count,
    )


def _rmse(errors: SquaredErrors) -> float:
    return math.sqrt(errors.mean) if errors.count else math.nan
