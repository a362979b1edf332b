"""Statistical tests: sample sizes chosen from the effect to detect, and chi-square goodness of fit."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping

from scipy import stats as _st


def sample_size_for_tv(tv: float, categories: int, alpha: float = 1e-3, power: float = 0.99) -> int:
    """Samples needed for a chi-square test to detect a total-variation shift of ``tv`` over ``categories``.

    Uses the noncentral chi-square: the worst-case noncentrality of a TV shift ``tv`` spread over ``k``
    categories is at least ``n * (2 tv)^2``  (Cohen's w >= 2 tv, since sum |d_i| <= sqrt(sum d_i^2 / p_i)).
    """
    if not 0 < tv <= 1:
        raise ValueError(f"tv={tv} must be in (0, 1]")
    df = max(categories - 1, 1)
    crit = _st.chi2.ppf(1 - alpha, df)
    w2 = (2 * tv) ** 2
    n = 10
    while _st.ncx2.sf(crit, df, n * w2) < power:
        n = math.ceil(n * 1.25)
    return n


@dataclasses.dataclass
class ChiSquareResult:
    statistic: float
    p_value: float
    dof: int
    n: int
    categories: int

    def passed(self, alpha: float = 1e-3) -> bool:
        return self.p_value >= alpha


def chi_square_test(samples: Iterable[Hashable], expected: Mapping[Hashable, float],
                    min_expected: float = 5.0) -> ChiSquareResult:
    """Goodness of fit of ``samples`` to the distribution ``expected``.

    Categories with an expected count below ``min_expected`` are pooled into one bin (observations outside
    ``expected`` land there too, so an impossible output always counts against the fit).
    """
    counts = Counter(samples)
    n = sum(counts.values())
    total = sum(expected.values())
    big = {k: v / total for k, v in expected.items() if n * v / total >= min_expected}
    obs, exp = [], []
    for k, p in big.items():
        obs.append(counts.get(k, 0))
        exp.append(n * p)
    rest_obs = n - sum(obs)
    rest_exp = n - sum(exp)
    if rest_exp > 1e-9 or rest_obs > 0:
        obs.append(rest_obs)
        exp.append(max(rest_exp, 1e-9))
    if len(obs) < 2:
        return ChiSquareResult(0.0, 1.0, 0, n, len(obs))
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    dof = len(obs) - 1
    return ChiSquareResult(float(stat), float(_st.chi2.sf(stat, dof)), dof, n, len(obs))
