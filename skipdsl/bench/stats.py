"""Statistics for a benchmark: confidence intervals, paired tests, rankings and their stability.

Everything works on the per-case test values that every trial stores (``cases.parquet``), so a
report can be rebuilt from the store alone. A *configuration* is a model with deep supervision
off or on (``unetsharp+DS``). Per dataset:

- :func:`summarise`: per configuration, the mean test IoU and Dice over seeds (each seed's
  value is the mean over its test units, by the one empty-case rule of
  :mod:`skipdsl.train.metrics`; a unit is a case, or a case and mask channel where a dataset
  has several: brain_tumor2d's nested WT/TC/ET regions of one image are not independent, so
  its p-values there are optimistic), a 95% t-interval over seeds, the seeds' std, and a 95%
  bootstrap interval over test cases (BCa, ``scipy.stats.bootstrap``) of the seed-averaged
  per-case values.
- :func:`pairwise`: for every pair of configurations, a two-sided Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon``) on the cases both scored (per-case values averaged over seeds,
  cases paired by id; cases empty in prediction and ground truth are NaN and left out),
  Holm-corrected within the dataset (``statsmodels.stats.multitest.multipletests``), with the
  mean paired difference and its 95% bootstrap interval.
- :func:`ranking`: configurations ordered by mean IoU; rank groups (a configuration joins the
  group of the one above it unless it is significantly worse than that group's best), the
  number of configurations each significantly beats (challengeR's test-based ranking), and the
  stability of the ranking under bootstrap over test cases: Kendall's tau
  (``scipy.stats.kendalltau``) of each resampled ranking against the full one, 1,000 samples
  by default (Wiesenfarth et al. 2021).
- :func:`paper_agreement`: Kendall's tau of our ranking against the UNet# paper's Table 1
  ranking on the configurations both have (:data:`PAPER_TABLE1`).
- :func:`significance_map`: challengeR's significance map, one picture per dataset.

A difference is *significant* when the Holm-adjusted Wilcoxon p-value is below :data:`ALPHA`
and every seed of the better configuration scores above every seed of the other (see
:func:`pairwise` for why the case test alone is not enough). "Not significant" is only that:
it is not evidence that two configurations are equal.
"""
from __future__ import annotations

import math
import warnings
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["ALPHA", "PAPER_TABLE1", "PAPER_DATASETS", "config_label", "case_matrix",
           "summarise", "pairwise", "ranking", "mean_ranks", "paper_agreement",
           "significance_map", "plain_words", "markdown"]

#: Significance level of every test (after Holm's correction within a dataset).
ALPHA = 0.05
#: Bootstrap samples for intervals and ranking stability.
N_BOOT = 1000

#: The UNet# paper's Table 1 (IoU %; Qian et al. 2022, UNet#), by configuration label. Our
#: built-in datasets stand in for the paper's (:data:`PAPER_DATASETS`); 3D: V-Net forms.
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "DSB2018": {"unet": 90.15, "unetpp": 92.02, "unetpp+DS": 91.98, "unet3p": 91.96,
                "unet3p+DS": 92.15, "unetsharp": 92.53, "unetsharp+DS": 92.67},
    "BraTS19": {"unet": 89.96, "unetpp": 90.03, "unetpp+DS": 91.01, "unet3p": 90.67,
                "unet3p+DS": 91.69, "unetsharp": 91.67, "unetsharp+DS": 92.38},
    "LiTS17": {"unet": 91.43, "unetpp": 91.59, "unetpp+DS": 91.64, "unet3p": 91.21,
               "unet3p+DS": 92.14, "unetsharp": 94.79, "unetsharp+DS": 95.36},
    "LIDC": {"unet": 72.59, "unetpp": 72.73, "unetpp+DS": 73.43, "unet3p": 73.22,
             "unet3p+DS": 73.48, "unetsharp": 73.68, "unetsharp+DS": 74.01},
    "LUNA16": {"unet": 71.21, "unetpp": 76.35, "unetpp+DS": 77.62, "unet3p": 76.78,
               "unet3p+DS": 78.23, "unetsharp": 77.69, "unetsharp+DS": 79.45},
}
#: Which paper dataset each built-in (and real) dataset stands for.
PAPER_DATASETS: dict[str, str] = {
    "nuclei2d": "DSB2018", "dsb2018": "DSB2018", "brain_tumor2d": "BraTS19", "brats19": "BraTS19",
    "liver2d": "LiTS17", "lits17": "LiTS17", "lung_nodule2d": "LIDC", "lidc": "LIDC",
    "lung_nodule3d": "LUNA16", "luna16": "LUNA16",
}

METRICS = ("iou", "dice")


def config_label(model: str, deep_supervision: Any) -> str:
    """``unetsharp`` / ``unetsharp+DS``."""
    return f"{model}+DS" if bool(deep_supervision) else str(model)


# --------------------------------------------------------------------------- data


def _case_values(cases):
    """Per (config, seed, unit): the metric of one test unit, a case and mask channel
    (``case_id/channel`` when a dataset has several channels, as brain_tumor2d's WT, TC and ET:
    the same unit as the trial's own mean, so a configuration's mean here equals its
    ``results.csv`` value; NaN where prediction and ground truth are both empty)."""
    import pandas as pd

    df = cases.copy()
    if "status" in df:
        df = df[df["status"] == "ok"]
    df["config"] = [config_label(m, d) for m, d in zip(df["model"], df["deep_supervision"])]
    key = "case_id" if "case_id" in df else "case"
    if "channel" in df and df.groupby("dataset")["channel"].transform("nunique").gt(1).any():
        multi = df.groupby("dataset")["channel"].transform("nunique") > 1
        df[key] = df[key].astype(str)
        df.loc[multi, key] = df.loc[multi, key] + "/" + df.loc[multi, "channel"].astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g = df.groupby(["dataset", "config", "seed", key], sort=True)[list(METRICS)].mean()
    g = g.reset_index().rename(columns={key: "case_id"})
    return pd.DataFrame(g)


def case_matrix(cases, dataset: str, metric: str = "iou", configs: Sequence[str] | None = None):
    """``(values, configs, case_ids, seeds)`` for one dataset: ``values[s, c, k]`` is seed
    ``seeds[s]``'s value of configuration ``configs[c]`` on case ``case_ids[k]`` (NaN where a
    seed is missing or the case is empty in both prediction and ground truth)."""
    v = _case_values(cases)
    v = v[v["dataset"] == dataset]
    configs = list(configs) if configs is not None else sorted(v["config"].unique())
    case_ids = sorted(v["case_id"].unique())
    seeds = sorted(v["seed"].unique())
    out = np.full((len(seeds), len(configs), len(case_ids)), np.nan)
    ci = {c: i for i, c in enumerate(configs)}
    ki = {k: i for i, k in enumerate(case_ids)}
    si = {s: i for i, s in enumerate(seeds)}
    for row in v[v["config"].isin(ci)].itertuples(index=False):
        out[si[row.seed], ci[row.config], ki[row.case_id]] = getattr(row, metric)
    return out, configs, case_ids, seeds


def _nanmean(a: np.ndarray, axis) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


# --------------------------------------------------------------------------- intervals


def _t_interval(x: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    x = x[np.isfinite(x)]
    if len(x) < 2:
        return (math.nan, math.nan)
    if np.ptp(x) == 0:
        return (float(x[0]), float(x[0]))
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return (float(lo), float(hi))


def _boot_mean_ci(x: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% BCa bootstrap interval of the mean of ``x`` (NaNs dropped)."""
    from scipy import stats

    x = x[np.isfinite(x)]
    if len(x) < 3:
        return (math.nan, math.nan)
    if np.ptp(x) == 0:
        return (float(x[0]), float(x[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((x,), np.mean, n_resamples=N_BOOT, confidence_level=0.95,
                              method="BCa", random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    if not (math.isfinite(lo) and math.isfinite(hi)):  # degenerate BCa: percentile instead
        res = stats.bootstrap((x,), np.mean, n_resamples=N_BOOT, method="percentile",
                              random_state=np.random.default_rng(seed))
        lo, hi = res.confidence_interval
    return (float(lo), float(hi))


def summarise(cases, dataset: str):
    """One row per configuration: ``config``, ``seeds``, ``n_cases`` and for IoU and Dice the
    mean over seeds, ``*_ci_lo``/``*_ci_hi`` (t-interval over seeds), ``*_seed_std``,
    ``*_case_lo``/``*_case_hi`` (bootstrap over cases of the seed-averaged values)."""
    import pandas as pd

    rows: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        vals, configs, _, seeds = case_matrix(cases, dataset, metric)
        per_seed = _nanmean(vals, axis=2)  # (seeds, configs)
        per_case = _nanmean(vals, axis=0)  # (configs, cases)
        for c, name in enumerate(configs):
            s = per_seed[:, c]
            s = s[np.isfinite(s)]
            row = rows.setdefault(name, {"config": name, "seeds": len(s),
                                         "n_cases": int(np.isfinite(per_case[c]).sum())})
            row[metric] = float(s.mean()) if len(s) else math.nan
            row[f"{metric}_seed_std"] = float(s.std(ddof=1)) if len(s) > 1 else math.nan
            row[f"{metric}_ci_lo"], row[f"{metric}_ci_hi"] = _t_interval(s)
            row[f"{metric}_case_lo"], row[f"{metric}_case_hi"] = _boot_mean_ci(per_case[c])
    return pd.DataFrame(list(rows.values()))


# --------------------------------------------------------------------------- paired tests


def _wilcoxon(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences ``d`` (1.0 when every
    difference is zero: nothing tells the two apart)."""
    from scipy import stats

    if len(d) == 0 or not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def pairwise(cases, dataset: str, metric: str = "iou"):
    """Every pair of configurations on one dataset: ``a``, ``b``, ``n`` (paired cases),
    ``mean_diff`` (a - b, mean over cases of the seed-averaged values) with ``diff_lo`` /
    ``diff_hi`` (95% bootstrap), ``p`` (Wilcoxon), ``p_holm``, ``significant_cases`` (``p_holm
    < ALPHA``), ``seed_consistent`` (every seed's mean of ``a`` above every seed's mean of
    ``b``), ``one_seed`` (a configuration has a single seed) and ``significant``; the pair is
    ordered so that ``a`` has the higher mean.

    ``significant`` = ``significant_cases`` and (``seed_consistent`` or ``one_seed``). The
    Wilcoxon test pairs test cases and holds the trained networks fixed (their per-case values
    averaged over seeds): it answers "on these cases, is this trained a better than this
    trained b?", not "would another training run agree?". With 200 cases it calls almost any
    two trainings different: UNet against an identical copy trained with other seeds got
    p_holm = 0.0015 (results/cpu-zoo-sanity). Training randomness is the seeds' spread, so a
    difference counts only when the seeds do not overlap as well; with 3 seeds each that is
    the exact one-sided Mann-Whitney test over seed means at p = 1/20 = 0.05. With one seed
    the case test is all there is and the report marks it."""
    import pandas as pd
    from statsmodels.stats.multitest import multipletests

    vals, configs, _, _ = case_matrix(cases, dataset, metric)
    per_case = _nanmean(vals, axis=0)  # (configs, cases)
    per_seed = _nanmean(vals, axis=2)  # (seeds, configs)
    means = _nanmean(per_seed, axis=0)
    rows = []
    for i, j in combinations(range(len(configs)), 2):
        if means[j] > means[i]:
            i, j = j, i
        ok = np.isfinite(per_case[i]) & np.isfinite(per_case[j])
        d = per_case[i, ok] - per_case[j, ok]
        lo, hi = _boot_mean_ci(d, seed=len(rows))
        si, sj = per_seed[:, i], per_seed[:, j]
        si, sj = si[np.isfinite(si)], sj[np.isfinite(sj)]
        rows.append({"a": configs[i], "b": configs[j], "n": int(ok.sum()),
                     "mean_a": float(means[i]), "mean_b": float(means[j]),
                     "mean_diff": float(d.mean()) if len(d) else math.nan,
                     "diff_lo": lo, "diff_hi": hi, "p": _wilcoxon(d),
                     # every seed of a above every seed of b: training randomness alone does
                     # not reverse the order (the case test holds the trained models fixed)
                     "seed_consistent": bool(len(si) > 1 and len(sj) > 1
                                             and si.min() > sj.max()),
                     "one_seed": not (len(si) > 1 and len(sj) > 1)})
    df = pd.DataFrame(rows, columns=["a", "b", "n", "mean_a", "mean_b", "mean_diff", "diff_lo",
                                     "diff_hi", "p", "seed_consistent", "one_seed"])
    if len(df):
        reject, p_holm, _, _ = multipletests(df["p"].to_numpy(), alpha=ALPHA, method="holm")
        df["p_holm"] = p_holm
        df["significant_cases"] = reject
        df["significant"] = reject & (df["seed_consistent"].to_numpy()
                                      | df["one_seed"].to_numpy(dtype=bool))
    else:
        for c in ("p_holm", "significant_cases", "significant"):
            df[c] = []
    return df


def _beats(pairs) -> dict[tuple[str, str], bool]:
    """(winner, loser) -> True for every significant pair."""
    return {(r.a, r.b): True for r in pairs.itertuples(index=False) if r.significant}


# --------------------------------------------------------------------------- ranking


def _rank_of(means: np.ndarray) -> np.ndarray:
    """Ranks 1..n by descending mean (ties share the lowest rank; NaN last)."""
    from scipy.stats import rankdata

    m = np.where(np.isfinite(means), means, -np.inf)
    return rankdata(-m, method="min")


def ranking(cases, dataset: str, metric: str = "iou", pairs=None, n_boot: int = N_BOOT,
            seed: int = 0):
    """The ranking of one dataset's configurations, with groups and bootstrap stability.

    Returns ``(table, stability)``: ``table`` has one row per configuration, best first:
    ``rank`` (by mean), ``group`` (1, 2, ...: configurations in one group are not
    significantly worse than the group's best), ``wins`` (configurations it is significantly
    better than), ``mean``, ``rank_lo``/``rank_hi`` (2.5/97.5% of its bootstrap ranks) and
    ``rank_median``; ``stability`` holds ``tau_median``, ``tau_lo`` (2.5%), ``tau_mean`` of
    Kendall's tau between each bootstrap ranking and the full one, and ``n_boot``.
    """
    import pandas as pd
    from scipy.stats import kendalltau

    vals, configs, case_ids, _ = case_matrix(cases, dataset, metric)
    pairs = pairwise(cases, dataset, metric) if pairs is None else pairs
    per_case = _nanmean(vals, axis=0)  # (configs, cases)
    means = _nanmean(_nanmean(vals, axis=2), axis=0)
    full = _rank_of(means)
    order = list(np.argsort(-np.where(np.isfinite(means), means, -np.inf), kind="stable"))
    beats = _beats(pairs)
    wins = {c: sum(beats.get((c, o), False) for o in configs) for c in configs}
    group, top, groups = 0, None, {}
    for idx in order:
        c = configs[idx]
        if top is None or beats.get((top, c), False):
            group, top = group + 1, c
        groups[c] = group

    rng = np.random.default_rng(seed)
    n_cases = per_case.shape[1]
    taus, boot_ranks = [], []
    if n_cases >= 2 and len(configs) >= 2:
        for _ in range(n_boot):
            pick = rng.integers(0, n_cases, n_cases)
            r = _rank_of(_nanmean(per_case[:, pick], axis=1))
            boot_ranks.append(r)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tau = kendalltau(full, r).statistic
            taus.append(1.0 if not np.isfinite(tau) else float(tau))
    boot = np.asarray(boot_ranks) if boot_ranks else np.full((1, len(configs)), np.nan)
    rows = []
    for idx in order:
        c = configs[idx]
        col = boot[:, idx][np.isfinite(boot[:, idx])]  # empty: no bootstrap (one config/case)
        rows.append({"config": c, "rank": int(full[idx]), "group": groups[c], "wins": wins[c],
                     "mean": float(means[idx]),
                     "rank_lo": float(np.percentile(col, 2.5, method="lower")) if len(col)
                     else math.nan,
                     "rank_median": float(np.median(col)) if len(col) else math.nan,
                     "rank_hi": float(np.percentile(col, 97.5, method="higher")) if len(col)
                     else math.nan})
    t = np.asarray(taus)
    stability = {"tau_median": float(np.median(t)) if len(t) else math.nan,
                 "tau_lo": float(np.percentile(t, 2.5)) if len(t) else math.nan,
                 "tau_mean": float(np.mean(t)) if len(t) else math.nan, "n_boot": len(taus)}
    return pd.DataFrame(rows), stability


def mean_ranks(tables: dict[str, Any]):
    """Across datasets: each configuration's mean rank (by mean IoU), its ranks per dataset,
    and the number of datasets it was ranked on; best (lowest mean rank) first."""
    import pandas as pd

    per = {}
    for d, t in tables.items():
        for r in t.itertuples(index=False):
            per.setdefault(r.config, {})[d] = r.rank
    rows = [{"config": c, "mean_rank": float(np.mean(list(v.values()))), "datasets": len(v),
             **{d: v.get(d) for d in tables}} for c, v in per.items()]
    df = pd.DataFrame(rows)
    return df.sort_values(["mean_rank", "config"]).reset_index(drop=True) if len(df) else df


def paper_agreement(tables: dict[str, Any]) -> list[dict[str, Any]]:
    """Kendall's tau between our mean-IoU order and the UNet# paper's Table 1 order, per
    dataset (on the configurations both have) and for the mean rank over those datasets."""
    from scipy.stats import kendalltau

    out = []
    ours_all: dict[str, list[float]] = {}
    paper_all: dict[str, list[float]] = {}
    for d, t in tables.items():
        ref = PAPER_TABLE1.get(PAPER_DATASETS.get(d, ""), {})
        common = [c for c in t["config"] if c in ref]
        if len(common) < 3:
            continue
        ours = {r.config: r.mean for r in t.itertuples(index=False)}
        a = [ours[c] for c in common]
        b = [ref[c] for c in common]
        tau, p = kendalltau(a, b)
        out.append({"dataset": d, "paper_dataset": PAPER_DATASETS[d], "configs": len(common),
                    "tau": float(tau), "p": float(p),
                    "ours_best": max(common, key=lambda c: ours[c]),
                    "paper_best": max(common, key=lambda c: ref[c])})
        ro, rp = _rank_of(np.array(a)), _rank_of(np.array(b))
        for c, x, y in zip(common, ro, rp):
            ours_all.setdefault(c, []).append(float(x))
            paper_all.setdefault(c, []).append(float(y))
    common = sorted(c for c in ours_all if len(ours_all[c]) == len(out))
    if len(out) > 1 and len(common) >= 3:
        a = [-np.mean(ours_all[c]) for c in common]
        b = [-np.mean(paper_all[c]) for c in common]
        tau, p = kendalltau(a, b)
        out.append({"dataset": "mean rank", "paper_dataset": "mean rank",
                    "configs": len(common), "tau": float(tau), "p": float(p),
                    "ours_best": common[int(np.argmax(a))],
                    "paper_best": common[int(np.argmax(b))]})
    return out


def compare_runs(cases_a, cases_b, datasets: Iterable[str], names: tuple[str, str] = ("A", "B"),
                 n_boot: int = N_BOOT) -> tuple[list[dict[str, Any]], str]:
    """Two sweeps over the same datasets (e.g. the unmatched Table 1 and the same models at
    equal size): per dataset, Kendall's tau between the two mean-IoU rankings (on the
    configurations both have), each run's best, and the conclusions that changed: pairs
    significant in one run and not in the other, and pairs whose order reversed. Returns the
    rows and their markdown."""
    from scipy.stats import kendalltau

    rows, md = [], []
    a_name, b_name = names
    for d in datasets:
        if not (len(cases_a) and (cases_a["dataset"] == d).any()
                and len(cases_b) and (cases_b["dataset"] == d).any()):
            continue
        pa, pb = pairwise(cases_a, d), pairwise(cases_b, d)
        ta, _ = ranking(cases_a, d, pairs=pa, n_boot=0)
        tb, _ = ranking(cases_b, d, pairs=pb, n_boot=0)
        ma = {r.config: r.mean for r in ta.itertuples(index=False)}
        mb = {r.config: r.mean for r in tb.itertuples(index=False)}
        common = [c for c in ma if c in mb]
        if len(common) < 2:
            continue
        tau, p = kendalltau([ma[c] for c in common], [mb[c] for c in common])
        sig = {}
        for tag, pairs in (("a", pa), ("b", pb)):
            for r in pairs.itertuples(index=False):
                if r.a in common and r.b in common:
                    sig[(tag, frozenset((r.a, r.b)))] = (r.a, bool(r.significant))
        changed = []
        for x, y in combinations(common, 2):
            key = frozenset((x, y))
            wa, sa = sig.get(("a", key), (None, False))
            wb, sb = sig.get(("b", key), (None, False))
            if sa != sb or (sa and sb and wa != wb):
                lose = lambda w: y if w == x else x  # noqa: E731
                sa_txt = f"{wa} > {lose(wa)} significant" if sa else "not significant"
                sb_txt = f"{wb} > {lose(wb)} significant" if sb else "not significant"
                changed.append(f"{x} vs {y}: {a_name} {sa_txt}; {b_name} {sb_txt}")
        reversed_ = sum(1 for x, y in combinations(common, 2)
                        if (ma[x] - ma[y]) * (mb[x] - mb[y]) < 0)
        row = {"dataset": d, "configs": len(common), "tau": float(tau), "p": float(p),
               "best_a": max(common, key=lambda c: ma[c]),
               "best_b": max(common, key=lambda c: mb[c]),
               "significant_a": int(sum(v[1] for k, v in sig.items() if k[0] == "a")),
               "significant_b": int(sum(v[1] for k, v in sig.items() if k[0] == "b")),
               "reversed_pairs": reversed_, "pairs": len(common) * (len(common) - 1) // 2,
               "changed": changed}
        rows.append(row)
    if rows:
        md += [f"| Dataset | Configs | Kendall tau ({a_name} vs {b_name}) | p | Best {a_name} | "
               f"Best {b_name} | Significant pairs {a_name} / {b_name} | Order reversed |",
               "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            md.append(f"| {r['dataset']} | {r['configs']} | {r['tau']:.2f} | {r['p']:.3f} | "
                      f"{r['best_a']} | {r['best_b']} | {r['significant_a']} / "
                      f"{r['significant_b']} | {r['reversed_pairs']} of {r['pairs']} |")
        md.append("")
        for r in rows:
            md.append(f"**{r['dataset']}**: " + ("; ".join(r["changed"]) + "."
                                                 if r["changed"] else
                                                 "no significant conclusion changed."))
            md.append("")
    return rows, "\n".join(md)


# --------------------------------------------------------------------------- plots


def significance_map(pairs, table, path: str | Path, title: str = "") -> Path:
    """challengeR's significance map: rows and columns are the configurations in rank order; a
    filled cell means the row configuration is significantly better than the column one (Holm
    at :data:`ALPHA`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(table["config"])
    n = len(configs)
    beats = _beats(pairs)
    grid = np.zeros((n, n))
    for i, a in enumerate(configs):
        for j, b in enumerate(configs):
            grid[i, j] = 1.0 if beats.get((a, b)) else (0.5 if i == j else 0.0)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n))
    cmap = matplotlib.colors.ListedColormap(["#2b5c8a", "#dddddd", "#f2c12e"])
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=1)
    ax.set_xticks(range(n), configs, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), configs, fontsize=8)
    ax.set_xlabel("... is significantly better than this one (yellow)")
    ax.set_ylabel("this configuration ...")
    ax.set_title(title or "significance map", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- words


def _range(lo: float, hi: float) -> str:
    return "-" if not (math.isfinite(lo) and math.isfinite(hi)) else f"{lo:g}–{hi:g}"


def _pct(x: float, digits: int = 2) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def plain_words(dataset: str, pairs, table, stability) -> list[str]:
    """Sentences saying which differences on ``dataset`` are significant and which are not."""
    lines = []
    sig = pairs[pairs["significant"]] if len(pairs) else pairs
    ns = pairs[~pairs["significant"]] if len(pairs) else pairs
    groups = table.groupby("group", sort=True)["config"].apply(list)
    if len(groups):
        lines.append(f"**{dataset}**: {len(groups)} rank group(s): " + "; ".join(
            f"{g}: {', '.join(cs)}" for g, cs in groups.items()) + ".")
    if len(sig):
        def fmt(r):
            return (f"{r.a} > {r.b} by {_pct(r.mean_diff)} IoU points "
                    f"[{_pct(r.diff_lo)}, {_pct(r.diff_hi)}], p_holm = {r.p_holm:.2g}")

        lines.append(f"Significant ({len(sig)} of {len(pairs)} pairs: Holm-adjusted "
                     f"Wilcoxon p < {ALPHA} on the test cases and every seed of the first "
                     f"above every seed of the second): "
                     + "; ".join(fmt(r) for r in sig.itertuples(index=False)) + ".")
        if bool(sig["one_seed"].any()):
            lines.append("(One seed: these say nothing about training randomness.)")
    else:
        lines.append(f"No difference is significant ({len(pairs)} pairs, Holm-adjusted).")
    loose = ns[ns["significant_cases"]] if len(ns) else ns
    plain = ns[~ns["significant_cases"]] if len(ns) else ns
    if len(loose):
        lines.append(f"Not significant, seeds overlap ({len(loose)} pairs: the case test "
                     f"separates the trained networks, p_holm < {ALPHA}, but another training "
                     "run could reverse the order): " + "; ".join(
                         f"{r.a} vs {r.b} ({_pct(r.mean_diff)} points, p_holm = {r.p_holm:.2g})"
                         for r in loose.itertuples(index=False)) + ".")
    if len(plain):
        lines.append(f"Not significant on the test cases ({len(plain)} pairs): " + "; ".join(
            f"{r.a} vs {r.b} ({_pct(r.mean_diff)} points, p_holm = {r.p_holm:.2g})"
            for r in plain.itertuples(index=False)) + ".")
    if math.isfinite(stability.get("tau_median", math.nan)):
        lines.append(f"Ranking stability under {stability['n_boot']} bootstrap samples of the "
                     f"test cases: Kendall's tau median {stability['tau_median']:.2f} "
                     f"(2.5% quantile {stability['tau_lo']:.2f}).")
    return lines


def markdown(cases, datasets: Iterable[str], plots: Path | None = None) -> tuple[str, list[Path]]:
    """The report's statistics sections for ``datasets`` (and their significance maps when
    ``plots`` is a folder): per dataset the interval table, the ranking with groups, the
    paired tests in words; then the mean rank across datasets and the agreement with the
    paper's Table 1."""
    md: list[str] = []
    files: list[Path] = []
    tables = {}
    for d in datasets:
        sub = cases[cases["dataset"] == d]
        if not len(sub):
            continue
        summ = summarise(sub, d)
        pairs = pairwise(sub, d)
        table, stab = ranking(sub, d, pairs=pairs)
        tables[d] = table
        s = summ.set_index("config")
        md += [f"### {d}", "",
               "| Rank | Group | Configuration | Seeds | Cases | IoU % (95% CI over seeds) | "
               "seed std | 95% CI over cases | Dice % (95% CI over seeds) | Beats | "
               "Bootstrap rank (95%) |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in table.itertuples(index=False):
            x = s.loc[r.config]
            md.append(
                f"| {r.rank} | {r.group} | {r.config} | {int(x['seeds'])} | {int(x['n_cases'])} "
                f"| {_pct(x['iou'])} [{_pct(x['iou_ci_lo'])}, {_pct(x['iou_ci_hi'])}] "
                f"| {_pct(x['iou_seed_std'])} "
                f"| [{_pct(x['iou_case_lo'])}, {_pct(x['iou_case_hi'])}] "
                f"| {_pct(x['dice'])} [{_pct(x['dice_ci_lo'])}, {_pct(x['dice_ci_hi'])}] "
                f"| {r.wins} | {_range(r.rank_lo, r.rank_hi)} |")
        md += [""] + plain_words(d, pairs, table, stab) + [""]
        if plots is not None and len(table) >= 2:
            files.append(significance_map(pairs, table, Path(plots) / f"significance_{d}.png",
                                          title=f"{d}: row significantly better than column "
                                          f"(Wilcoxon, Holm, {ALPHA})"))
    if len(tables) > 1:
        mr = mean_ranks(tables)
        cols = list(tables)
        md += ["### Across datasets: mean rank (by mean IoU)", "",
               "| Configuration | Mean rank | " + " | ".join(cols) + " |",
               "|---|---|" + "---|" * len(cols)]
        for r in mr.to_dict("records"):
            md.append(f"| {r['config']} | {r['mean_rank']:.2f} | " + " | ".join(
                "-" if r.get(c) is None or (isinstance(r.get(c), float) and math.isnan(r[c]))
                else str(int(r[c])) for c in cols) + " |")
        md.append("")
    agree = paper_agreement(tables)
    if agree:
        md += ["### Agreement with the UNet# paper's Table 1 ranking", "",
               "Kendall's tau between our mean IoU order and the paper's IoU order, on the "
               "configurations both report (WUNet is not in the paper's table). Our datasets "
               "are synthetic stand-ins trained at a reduced budget: a low tau is a finding "
               "about this setting, not a check of the paper.", "",
               "| Dataset | Paper's dataset | Configs | tau | p | Our best | Paper's best |",
               "|---|---|---|---|---|---|---|"]
        for a in agree:
            md.append(f"| {a['dataset']} | {a['paper_dataset']} | {a['configs']} | "
                      f"{a['tau']:.2f} | {a['p']:.2g} | {a['ours_best']} | {a['paper_best']} |")
        md.append("")
    return "\n".join(md), files
