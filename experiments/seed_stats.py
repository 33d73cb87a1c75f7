r"""The statistics over seeds that the experiments' reports show, taken from the library
(`research.report.summarize`: mean, std and the 95% t-interval of the mean, shown by
`mean_std` and `interval`;
`research.compare.seed_tests`: Welch's t-test and almost stochastic order), so that a results.md
and `python -m research.compare` say the same of the same numbers and no experiment keeps a
test of its own.
"""

from __future__ import annotations

from research import compare, report

# deepsig's default number of bootstrap iterations for ASO (each call takes seconds on 2 cores);
# 0 leaves ASO out (tests of the tables, which check the interval and Welch's p).
ASO_ITERATIONS = 1000
NO_INTERVAL = "1 seed: no interval"
NOT_TESTED = "—"
NO_SEEDS = "—"

NOTE = ("95% CI: the t-interval of the mean over seeds (`research.report.summarize`); Welch p: "
        "Welch's t-test of the two systems' seeds; ASO ε: almost stochastic order's "
        "epsilon_min (deepsig, `research.compare.seed_tests`) of \"the system is better than "
        "its baseline\": below 0.5 leans toward the system being better, 0 means it is "
        "stochastically dominant; 0.5 or above gives no evidence that it is better (an upper "
        "confidence bound, it stays high with few seeds; whether the baseline is better is the "
        "reverse test). With 3 seeds (or 2) these tests have little power: a large p or an ε "
        "near 0.5 says the seeds cannot tell the systems apart, not that they are equal. A side "
        "with one seed has no interval and no test.")


def mean_std(values: list[float], scale: float = 1, decimals: int = 2, count: bool = False,
             one_seed: str = "") -> str:
  """'mean ± std' of `values` (the sample std), both times `scale` (100 for fractions shown in
  percent) with `decimals` decimals, then ' (n)' when `count`; a single value has no std: it
  stands alone, followed by `one_seed` (' (1 seed)', say) and the count; no values, NO_SEEDS."""
  if not values:
    return NO_SEEDS
  summary = report.summarize(values)
  text = f"{scale * summary['mean']:.{decimals}f}"
  text += f" ± {scale * summary['std']:.{decimals}f}" if summary["n"] > 1 else one_seed
  return text + (f" ({summary['n']})" if count else "")


def interval(values: list[float]) -> str:
  """The 95% t-interval of the mean of `values`, '[low, high]'; none for a single value."""
  if len(values) < 2:
    return NO_INTERVAL
  summary = report.summarize(values)
  return f"[{summary['ci_low']:.2f}, {summary['ci_high']:.2f}]"


def seed_tests(system: list[float], baseline: list[float]) -> dict | None:
  """`research.compare.seed_tests` of `system` against `baseline`; None when a side has a
  single seed (no spread to test against)."""
  if len(system) < 2 or len(baseline) < 2:
    return None
  return compare.seed_tests(system, baseline, seed=0, aso_iterations=ASO_ITERATIONS)


def p_and_epsilon(system: list[float], baseline: list[float]) -> tuple[str, str]:
  """(Welch p, ASO epsilon_min) of `system` against `baseline` as table cells."""
  found = seed_tests(system, baseline)
  if found is None:
    return NOT_TESTED, NOT_TESTED
  p_value = NOT_TESTED if found["welch_p"] is None else _p_value(found["welch_p"])
  epsilon = found.get("aso_epsilon_min")
  return p_value, NOT_TESTED if epsilon is None else f"{epsilon:.2f}"


def _p_value(p: float) -> str:
  """Two decimals, as the reports always showed p; a smaller p in scientific notation."""
  return f"{p:.2f}" if p >= 0.005 else f"{p:.0e}"


def paired_tests_note(which_runs: str) -> str:
  """The paragraph on the tests over examples these committed results cannot have;
  `which_runs`: the experiment's runs that would have the predictions after a rerun, and how."""
  return ("Paired tests over examples (`python -m research.compare`: a bootstrap interval of "
          "the difference and a permutation test, over the same examples) need each example's "
          "prediction, which these runs did not keep: they predate the per-example evaluation "
          "files (`eval/<split>_step<N>_per_example.json`). " + which_runs)
