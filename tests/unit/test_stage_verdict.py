"""The live verdict of a Shadow or Split stage (issue 19): each test against an independent computation on the
raw rows, and the verdict's direction."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from feedbackloop.core.stage_verdict import (
    PairedOutcomes,
    Proportion,
    SquaredErrors,
    StageTest,
    StageVerdict,
    mcnemar,
    paired_t,
    two_proportion_z,
    welch_t,
)

ALPHA = 0.05


def _exact_two_sided_binomial_half(k: int, n: int) -> float:
    tail: float = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _sums(values: np.ndarray[Any, Any]) -> SquaredErrors:
    return SquaredErrors(len(values), float(values.sum()), float((values**2).sum()))


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_rows() -> None:
    outcomes = PairedOutcomes(both=700, champion_only=10, candidate_only=25, neither=265)
    result = mcnemar(outcomes, ALPHA)
    assert result.test is StageTest.MCNEMAR
    assert result.p_value == pytest.approx(_exact_two_sided_binomial_half(25, 35), rel=1e-9)
    assert result.p_value < ALPHA
    assert result.verdict is StageVerdict.WIN
    assert (result.champion_value, result.candidate_value) == (0.71, 0.725)
    assert (result.champion_labels, result.candidate_labels) == (1000, 1000)


def test_mcnemar_a_worse_candidate_loses_and_equal_ones_are_inconclusive() -> None:
    assert mcnemar(PairedOutcomes(700, 40, 12, 248), ALPHA).verdict is StageVerdict.LOSE
    assert mcnemar(PairedOutcomes(700, 20, 22, 258), ALPHA).verdict is StageVerdict.INCONCLUSIVE
    agreed = mcnemar(PairedOutcomes(900, 0, 0, 100), ALPHA)  # the models never disagree
    assert (agreed.p_value, agreed.verdict) == (1.0, StageVerdict.INCONCLUSIVE)


def test_two_proportion_z_agrees_with_the_chi_square_test_of_the_two_by_two_table() -> None:
    champion, candidate = Proportion(labels=1000, correct=800), Proportion(labels=250, correct=222)
    result = two_proportion_z(champion, candidate, ALPHA)
    table = [[800, 200], [222, 28]]
    reference = stats.chi2_contingency(table, correction=False).pvalue
    assert result.p_value == pytest.approx(reference, rel=1e-9)
    assert result.test is StageTest.TWO_PROPORTION_Z
    assert (result.champion_value, result.candidate_value) == (0.8, 0.888)
    assert result.verdict is StageVerdict.WIN
    assert two_proportion_z(candidate, champion, ALPHA).verdict is StageVerdict.LOSE


def test_two_proportion_z_without_labels_or_without_variation() -> None:
    empty = two_proportion_z(Proportion(0, 0), Proportion(10, 9), ALPHA)
    assert math.isnan(empty.p_value)
    assert empty.verdict is StageVerdict.INCONCLUSIVE
    perfect = two_proportion_z(Proportion(50, 50), Proportion(20, 20), ALPHA)
    assert (perfect.p_value, perfect.verdict) == (1.0, StageVerdict.INCONCLUSIVE)


def test_paired_t_from_sums_matches_the_paired_t_test_on_the_rows() -> None:
    rng = np.random.default_rng(7)
    champion_errors = rng.normal(scale=1.0, size=400) ** 2
    candidate_errors = rng.normal(scale=0.8, size=400) ** 2
    result = paired_t(
        _sums(champion_errors), _sums(candidate_errors), _sums(candidate_errors - champion_errors), ALPHA
    )
    reference = stats.ttest_rel(candidate_errors, champion_errors).pvalue
    assert result.p_value == pytest.approx(reference, rel=1e-6)
    assert result.champion_value == pytest.approx(math.sqrt(champion_errors.mean()))
    assert result.candidate_value == pytest.approx(math.sqrt(candidate_errors.mean()))
    assert result.test is StageTest.PAIRED_T
    assert result.p_value < ALPHA
    assert result.verdict is StageVerdict.WIN  # the candidate's errors are smaller


def test_welch_t_from_sums_matches_welchs_test_on_the_rows() -> None:
    rng = np.random.default_rng(11)
    champion_errors = rng.normal(scale=1.0, size=600) ** 2
    candidate_errors = rng.normal(scale=1.3, size=150) ** 2
    result = welch_t(_sums(champion_errors), _sums(candidate_errors), ALPHA)
    reference = stats.ttest_ind(candidate_errors, champion_errors, equal_var=False).pvalue
    assert result.p_value == pytest.approx(reference, rel=1e-6)
    assert result.p_value < ALPHA
    assert result.verdict is StageVerdict.LOSE  # the candidate's errors are larger
    assert (result.champion_labels, result.candidate_labels) == (600, 150)


def test_regression_tests_with_too_few_rows_are_inconclusive() -> None:
    one = SquaredErrors(1, 4.0, 16.0)
    assert welch_t(one, one, ALPHA).verdict is StageVerdict.INCONCLUSIVE
    assert paired_t(one, one, SquaredErrors(1, 0.5, 0.25), ALPHA).verdict is StageVerdict.INCONCLUSIVE
    assert math.isnan(SquaredErrors(0, 0.0, 0.0).mean)
