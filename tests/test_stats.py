"""skipdsl.bench.stats: intervals, paired tests with Holm, rank groups, bootstrap stability,
agreement with the paper, and the report's statistics section."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from skipdsl.bench import stats


def _cases(spec: dict[str, tuple[float, float]], *, n_cases=200, seeds=(0, 1, 2), dataset="d2",
           seed=0, channels=1, nan_cases=()):
    """Per-case rows: config -> (shift, noise sd) added to one shared per-case base value."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.4, 0.95, n_cases)
    rows = []
    for name, (shift, sd) in spec.items():
        model, _, ds = name.partition("+")
        for s in seeds:
            v = np.clip(base + shift + rng.normal(0, sd, n_cases), 0, 1)
            for k in range(n_cases):
                for ch in range(channels):
                    x = math.nan if k in nan_cases else float(v[k])
                    rows.append({"model": model, "dataset": dataset, "seed": s,
                                 "deep_supervision": bool(ds), "trial_key": f"{name}-{s}",
                                 "case": k, "case_id": f"case{k:03d}", "channel": ch,
                                 "iou": x, "dice": 2 * x / (1 + x) if x == x else math.nan})
    return pd.DataFrame(rows)


def test_identical_architecture_is_not_significant_and_crippled_is():
    cases = _cases({"unet": (0.0, 0.03), "unet_copy": (0.0, 0.03), "crippled": (-0.08, 0.03)})
    pairs = stats.pairwise(cases, "d2").set_index(["a", "b"])
    same = pairs.loc[("unet", "unet_copy")] if ("unet", "unet_copy") in pairs.index \
        else pairs.loc[("unet_copy", "unet")]
    assert not same["significant"] and same["p_holm"] > 0.05
    for winner in ("unet", "unet_copy"):
        row = pairs.loc[(winner, "crippled")]
        assert row["significant"] and row["p_holm"] < 1e-6
        assert row["diff_lo"] < row["mean_diff"] < row["diff_hi"]
        assert row["mean_diff"] == pytest.approx(0.08, abs=0.01)
    table, stab = stats.ranking(cases, "d2", n_boot=200)
    groups = dict(zip(table["config"], table["group"]))
    assert groups["unet"] == groups["unet_copy"] != groups["crippled"]
    assert list(table["config"])[-1] == "crippled"
    assert dict(zip(table["config"], table["wins"]))["crippled"] == 0
    assert 0 < stab["tau_lo"] <= stab["tau_median"] <= 1 and stab["n_boot"] == 200


def test_pairwise_matches_scipy_and_statsmodels_holm():
    from statsmodels.stats.multitest import multipletests

    cases = _cases({"a": (0.02, 0.05), "b": (0.0, 0.05), "c": (0.01, 0.05)}, seed=3)
    pairs = stats.pairwise(cases, "d2")
    assert len(pairs) == 3
    vals, configs, _, _ = stats.case_matrix(cases, "d2")
    per_case = np.nanmean(vals, axis=0)
    raw = []
    for r in pairs.itertuples(index=False):
        i, j = configs.index(r.a), configs.index(r.b)
        d = per_case[i] - per_case[j]
        raw.append(sps.wilcoxon(d).pvalue)
        assert r.p == pytest.approx(raw[-1])
        assert r.mean_diff == pytest.approx(d.mean()) and r.mean_diff >= 0  # a is the better
    assert list(pairs["p_holm"]) == pytest.approx(list(multipletests(raw, method="holm")[1]))


def test_pairs_drop_cases_that_are_empty_in_both_and_pair_each_channel():
    cases = _cases({"a": (0.0, 0.02), "b": (-0.05, 0.02)}, n_cases=40, channels=2,
                   nan_cases=(0, 1, 2))
    pairs = stats.pairwise(cases, "d2")
    assert int(pairs["n"].iloc[0]) == 74  # units: case x channel
    summ = stats.summarise(cases, "d2").set_index("config")
    assert int(summ.loc["a", "n_cases"]) == 74 and int(summ.loc["a", "seeds"]) == 3


def test_summary_intervals_over_seeds_and_cases():
    cases = _cases({"m": (0.0, 0.05)}, seeds=(0, 1, 2, 3), seed=5)
    row = stats.summarise(cases, "d2").iloc[0]
    vals, _, _, _ = stats.case_matrix(cases, "d2")
    per_seed = np.nanmean(vals[:, 0], axis=1)
    assert row["iou"] == pytest.approx(per_seed.mean())
    lo, hi = sps.t.interval(0.95, 3, loc=per_seed.mean(), scale=sps.sem(per_seed))
    assert (row["iou_ci_lo"], row["iou_ci_hi"]) == pytest.approx((lo, hi))
    assert row["iou_case_lo"] < row["iou"] < row["iou_case_hi"]
    # one seed: no interval over seeds, still one over cases
    one = stats.summarise(cases[cases["seed"] == 0], "d2").iloc[0]
    assert math.isnan(one["iou_ci_lo"]) and math.isfinite(one["iou_case_lo"])


def test_bit_identical_results_give_p_one():
    cases = _cases({"x": (0.0, 0.02)})
    twin = cases.assign(model="x_twin", trial_key=cases["trial_key"] + "t")
    pairs = stats.pairwise(pd.concat([cases, twin]), "d2")
    assert pairs["p"].iloc[0] == 1.0 and not pairs["significant"].iloc[0]


def test_unstable_ranking_has_low_tau():
    """Five configurations that differ by noise only: the bootstrap ranking moves a lot."""
    spec = {f"m{i}": (0.0, 0.2) for i in range(5)}
    cases = _cases(spec, n_cases=30, seeds=(0,), seed=7)
    table, stab = stats.ranking(cases, "d2", n_boot=300)
    assert stab["tau_median"] < 0.9
    assert table["group"].nunique() == 1  # nothing is significant: one group


def test_paper_agreement_and_mean_ranks():
    paper = stats.PAPER_TABLE1["DSB2018"]
    # our means in the paper's order: tau = 1; reversed: tau = -1
    same = {c: (v / 100 - 0.9, 0.001) for c, v in paper.items()}
    rev = {c: (0.9 - v / 100, 0.001) for c, v in paper.items()}
    t_same = stats.ranking(_cases(same, dataset="nuclei2d", n_cases=50, seeds=(0,)),
                           "nuclei2d", n_boot=10)[0]
    t_rev = stats.ranking(_cases(rev, dataset="nuclei2d", n_cases=50, seeds=(0,)),
                          "nuclei2d", n_boot=10)[0]
    a = stats.paper_agreement({"nuclei2d": t_same})
    assert a[0]["paper_dataset"] == "DSB2018" and a[0]["tau"] == pytest.approx(1.0)
    b = stats.paper_agreement({"nuclei2d": t_rev})
    assert b[0]["tau"] == pytest.approx(-1.0)
    assert b[0]["paper_best"] == "unetsharp+DS" and b[0]["ours_best"] == "unet"
    mr = stats.mean_ranks({"nuclei2d": t_same, "liver2d": t_rev})
    assert set(mr["mean_rank"]) == {4.0}  # rank r and 8 - r average to 4


def test_markdown_says_what_is_significant(tmp_path):
    cases = pd.concat([
        _cases({"unet": (0.0, 0.03), "unetsharp": (0.0, 0.03), "unet3p": (-0.1, 0.03)},
               dataset="nuclei2d"),
        _cases({"unet": (0.0, 0.03), "unetsharp": (0.05, 0.03), "unet3p": (0.0, 0.03)},
               dataset="liver2d", seed=1)])
    md, files = stats.markdown(cases, ["nuclei2d", "liver2d"], plots=tmp_path)
    assert "### nuclei2d" in md and "### liver2d" in md
    assert "Not significant on the test cases (1 pairs): " in md
    assert "unetsharp > unet3p" in md
    assert "Across datasets: mean rank" in md and "Agreement with the UNet# paper" in md
    assert [p.name for p in files] == ["significance_nuclei2d.png", "significance_liver2d.png"]
    assert all(p.stat().st_size > 1000 for p in files)


def test_seed_consistency_separates_firm_from_loose_differences():
    """Training randomness: each seed of a configuration shifts every case a little. Two
    copies of one architecture then differ on the cases (the Wilcoxon test sees it) but their
    seeds interleave: not significant. A real gap separates the seeds: significant."""
    def seeded(spec, offsets):
        cases = _cases(spec, seed=11)
        for (model, seed), off in offsets.items():
            pick = (cases["model"] == model) & (cases["seed"] == seed)
            cases.loc[pick, "iou"] += off
        return cases

    twins = seeded({"unet": (0.0, 0.01), "unet_copy": (0.0, 0.01)},
                   {("unet", 0): 0.03, ("unet", 1): -0.02, ("unet", 2): 0.01,
                    ("unet_copy", 0): -0.01, ("unet_copy", 1): 0.0, ("unet_copy", 2): -0.005})
    row = stats.pairwise(twins, "d2").iloc[0]
    assert row["significant_cases"] and row["p_holm"] < 1e-3  # the case test alone: "differ"
    assert not row["seed_consistent"] and not row["significant"]
    gap = seeded({"unet": (0.05, 0.01), "crippled": (0.0, 0.01)},
                 {("unet", 0): 0.01, ("crippled", 2): -0.01})
    firm = stats.pairwise(gap, "d2").iloc[0]
    assert firm["significant"] and firm["seed_consistent"]
    table, stab = stats.ranking(twins, "d2", n_boot=20)
    assert table["group"].nunique() == 1 and set(table["wins"]) == {0}
    words = " ".join(stats.plain_words("d2", stats.pairwise(twins, "d2"), table, stab))
    assert "Not significant, seeds overlap (1 pairs" in words
    one = stats.pairwise(twins[twins["seed"] == 0], "d2").iloc[0]
    assert one["one_seed"] and one["significant"]  # one seed: the case test is all there is


def test_compare_runs_finds_a_reversed_and_a_lost_conclusion():
    """Unmatched vs matched sizes: a big model's lead that disappears is a changed conclusion."""
    a = _cases({"unet": (0.0, 0.01), "unet3p": (0.08, 0.01), "unetsharp": (0.04, 0.01)})
    b = _cases({"unet": (0.0, 0.01), "unet3p": (0.0, 0.01), "unetsharp": (0.04, 0.01)}, seed=1)
    rows, md = stats.compare_runs(a, b, ["d2"], names=("unmatched", "matched"))
    (r,) = rows
    assert r["best_a"] == "unet3p" and r["best_b"] == "unetsharp"
    assert r["significant_a"] == 3 and r["reversed_pairs"] >= 1 and r["tau"] < 1
    assert any(c.startswith("unet vs unet3p") or c.startswith("unet3p vs unet")
               for c in r["changed"])
    assert "| d2 | 3 |" in md and "matched" in md
    same, _ = stats.compare_runs(a, a, ["d2"])
    assert same[0]["tau"] == pytest.approx(1.0) and same[0]["changed"] == []
