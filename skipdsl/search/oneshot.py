"""``skipdsl search run --strategy oneshot``: rank thousands of topologies with one trained
supernet, then retrain the best few from scratch.

Three phases, one Optuna study (``OUT/study.db``), each trial tagged with its ``phase``:

1. **supernet**: the space's supernet (:mod:`.supernet`) trains with uniform single-path
   sampling (SPOS) on the dataset's training split, ``supernet_epochs`` epochs at the budget's
   widths; its weights are kept as ``OUT/supernet.pt`` (a re-run reuses them).
2. **rank**: NSGA-II (Optuna) samples topology points (edge candidates off/on, node set); each
   is gated into a sub-network and scored with the *inherited* weights: validation IoU after
   BatchNorm recalibration on ``calib_batches`` training batches, parameters of the
   sub-network, and its latency (as the multi-trial search measures it). Points that are not a
   network are recorded as ``invalid``; points that trim to an already scored network reuse
   its scores (``cached``). The zoo's topologies that the space can express (e.g. UNet# and
   UNet at the supernet's depth) are queued first as reference points.
3. **retrain**: the ``top_k`` members of the inherited Pareto front with the highest inherited
   IoU, and the zoo references (``retrain_zoo``), are trained from scratch by the trainer, as
   the multi-trial search trains a trial (:func:`.objective.evaluate`: same config, cache key,
   latency and checkpoints). Each retrain trial records its stand-alone scores as its values
   and the inherited IoU beside them (``inherited_iou``).

Outputs (rewritten by ``skipdsl search report OUT``): ``trials.csv`` (every trial, both
scores), ``pareto/`` (the stand-alone Pareto front of the retrained networks as DSL files, with
their weights), ``pareto.png`` and ``report.md`` (phases, wall and CPU times, networks scored
per CPU hour, inherited vs stand-alone IoU).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import SpecError
from .objective import OBJECTIVES, SearchConfig, measure_latency
from .space import SearchSpace, load_space

DEFAULT_SPACE = "oneshot4"
#: The zoo models whose topology is queued first (when the space can express it).
ZOO_REFERENCES = ("unetsharp", "unet", "unetpp", "unet3p")
RANK, RETRAIN = "rank", "retrain"


@dataclass
class OneShotSummary:
    study_name: str
    storage: str
    ranked: int = 0  # scored sub-networks in the study (complete + cached rank trials)
    retrained: int = 0
    states: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    phases: dict[str, dict[str, float]] = field(default_factory=dict)


class _Clock:
    """Wall and CPU (this process) seconds of a phase."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def done(self) -> dict[str, float]:
        return {"wall_s": round(time.perf_counter() - self.wall, 2),
                "cpu_s": round(time.process_time() - self.cpu, 2)}


def default_supernet_epochs(epochs: int) -> int:
    """The supernet trains 3x a candidate's epochs: each path is visited far less often than a
    stand-alone network's steps, but the whole phase still costs about three retrainings."""
    return 3 * epochs


@dataclass
class OneShotRun:
    """Everything :func:`run_oneshot` takes (``skipdsl search run --strategy oneshot``'s
    flags), checked once: ``candidates`` sub-networks ranked with inherited weights, the
    ``top_k`` best retrained, the supernet's ``supernet_epochs`` and ``calib_batches``, and the
    settings shared with :class:`~skipdsl.search.runner.SearchRun`."""

    dataset: str
    candidates: int
    out: str | Path
    space: "str | Path | SearchSpace | None" = None
    budget: str = "smoke"
    seed: int = 0
    objectives: Sequence[str] = ("iou", "params", "latency")
    top_k: int = 4
    retrain_zoo: bool = True
    supernet_epochs: int | None = None
    calib_batches: int = 4
    population: int = 16
    sampler_seed: int | None = None
    width_scale: float | None = None
    storage: str | None = None
    study_name: str | None = None
    zoo: bool = True
    overrides: dict[str, Any] | None = None
    latency_size: int | None = None
    latency_iters: int = 5
    weights: bool = True
    command: str | None = None
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        from ..train.common import BUDGETS
        from .study import SearchError

        if self.candidates < 1:
            raise SearchError(f"--trials (candidates to rank) must be >= 1, found "
                              f"{self.candidates}")
        if self.top_k < 0:
            raise SearchError(f"--top-k must be >= 0, found {self.top_k}")
        if self.budget not in BUDGETS:
            raise SearchError(f"unknown budget '{self.budget}'; valid: {', '.join(BUDGETS)}")


def run_oneshot(options: OneShotRun | None = None, /, **kwargs: Any) -> OneShotSummary:
    """Run (or resume) a one-shot search; see the module doc and :class:`OneShotRun`
    (``options``; keywords build one, or replace its fields). ``candidates``: sub-networks to
    score with inherited weights (complete and cached rank trials); ``top_k``: how many of the
    inherited front to retrain. ``overrides``: trainer config keys (epochs, n, batch_size,
    threads, device, data_root, ...) for the supernet and the retraining alike."""
    o = replace(options, **kwargs) if options is not None else OneShotRun(**kwargs)
    return _run_oneshot(**{f.name: getattr(o, f.name) for f in fields(o)})


def _run_oneshot(
    *,
    dataset: str,
    candidates: int,
    out: str | Path,
    space: "str | Path | SearchSpace | None" = None,
    budget: str = "smoke",
    seed: int = 0,
    objectives: Sequence[str] = ("iou", "params", "latency"),
    top_k: int = 4,
    retrain_zoo: bool = True,
    supernet_epochs: int | None = None,
    calib_batches: int = 4,
    population: int = 16,
    sampler_seed: int | None = None,
    width_scale: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    zoo: bool = True,
    overrides: dict[str, Any] | None = None,
    latency_size: int | None = None,
    latency_iters: int = 5,
    weights: bool = True,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> OneShotSummary:
    """The body of :func:`run_oneshot`, with its checked options."""
    import optuna
    import torch

    from ..raytools import cpu_count
    from ..train.common import plan_trial
    from .study import (SearchError, check_dataset, make_sampler, make_storage, open_study,
                        redact, storage_url)

    t0 = time.perf_counter()
    if log is None:
        from rich.console import Console

        log = Console(stderr=True, highlight=False).print
    check_dataset(dataset)
    sp = load_space(space or DEFAULT_SPACE)
    space_budget = sp.budget(budget)  # the space's settings for this budget
    over = {**space_budget.overrides(), **{k: v for k, v in (overrides or {}).items()
                                       if v is not None}}
    over.setdefault("threads", max(1, cpu_count()) if not torch.cuda.is_available() else None)
    over = {k: v for k, v in over.items() if v is not None}
    cfg = SearchConfig(dataset=dataset, budget=budget, seed=seed, objectives=tuple(objectives),
                       width_scale=float(width_scale or space_budget.width_scale), overrides=over,
                       prune="none", latency_size=latency_size, latency_iters=latency_iters)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg.checkpoint_dir = str(out / "checkpoints") if weights else None
    epochs = int(plan_trial({**over, "dataset": dataset, "budget": budget}).epochs)
    sn_epochs = default_supernet_epochs(epochs) if supernet_epochs is None else supernet_epochs
    phases: dict[str, dict[str, float]] = {}

    # -- 1. the supernet -----------------------------------------------------------------------
    from .supernet import state_dict_cpu, train_supernet, zoo_topology

    sn_file = out / "supernet.pt"
    sn_settings = {"space": sp.name, "space_fingerprint": sp.fingerprint(), "dataset": dataset,
                   "budget": budget, "seed": seed, "width_scale": cfg.width_scale,
                   "epochs": sn_epochs, "overrides": {k: v for k, v in over.items()
                                                      if k not in ("threads", "device")}}
    sn_config = {**over, "dataset": dataset, "budget": budget, "seed": seed}
    state = None
    if sn_file.is_file():
        saved = torch.load(sn_file, map_location="cpu", weights_only=False)
        if saved.get("settings") != json.loads(json.dumps(sn_settings)):
            raise SearchError(f"{sn_file} was trained with other settings: use another --out, "
                              "or delete it to train the supernet again")
        state, phases["supernet"] = saved["state"], saved["phase"]
        log(f"supernet: reusing {sn_file} (trained in {saved['phase']['wall_s']:.0f} s)")
    clock = _Clock()
    run = train_supernet(sp, {**sn_config, "epochs": 0 if state is not None else sn_epochs},
                         width_scale=cfg.width_scale, state=state, log=log)
    if state is None:
        phases["supernet"] = {**clock.done(), "epochs": sn_epochs, "steps": run.steps,
                              "paths_compiled": len(run.net.__dict__["_paths"])}
        torch.save({"settings": sn_settings, "state": state_dict_cpu(run.net),
                    "spec": run.net.spec.to_dict(), "phase": phases["supernet"],
                    "curve": run.curve}, sn_file)
        log(f"supernet: {sn_epochs} epochs, {run.steps} sampled paths in "
            f"{phases['supernet']['wall_s']:.0f} s -> {sn_file}")
    (out / "supernet.yaml").write_text(run.net.spec.to_yaml())
    net = run.net.eval()

    # -- the study -----------------------------------------------------------------------------
    url = storage_url(out, storage)
    name = study_name or f"skipdsl-oneshot-{sp.name}-{dataset}-{budget}-s{seed}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler("nsga2" if len(cfg.objectives) > 1 else "tpe", len(cfg.objectives),
                           population=population, seed=sampler_seed)
    study = open_study(make_storage(url, heartbeat=False), name, sp, cfg, sampler=sampler)
    settings = {"command": command, "strategy": "oneshot", "study_name": name,
                "storage": redact(url), "storage_url": url if redact(url) == url else None,
                "space": sp.name, "space_file": str(Path(sp.source).resolve())
                if sp.source and Path(sp.source).is_file() else sp.name,
                "space_size": 2 ** len(sp.edges) * len(sp.node_choices()),
                "sampler": "nsga2", "population": population, "backend": "optuna",
                "config": cfg.to_dict(), "candidates": candidates, "top_k": top_k,
                "supernet_epochs": sn_epochs, "calib_batches": calib_batches,
                "supernet": sn_settings}
    # -- 2. rank by inherited weights ---------------------------------------------------------
    # in an in-memory copy of the study (a SQLite commit per parameter would cost more than
    # scoring a sub-network), whose new trials are then added to the study in one go each
    from .supernet import inherited_score

    clock = _Clock()
    db = study
    study = optuna.create_study(directions=cfg.directions, sampler=sampler)
    finished = [t for t in db.get_trials(deepcopy=False) if t.state.is_finished()]
    study.add_trials(finished)
    if zoo and not db.user_attrs.get("zoo_enqueued"):
        db.set_user_attr("zoo_enqueued", True)
        for z in ZOO_REFERENCES:
            try:
                point = zoo_topology(net, z)
            except SpecError:
                continue
            study.enqueue_trial(point, user_attrs={"zoo": z, "phase": RANK})
            log(f"queued the topology of zoo model {z} as a reference point")
    choices = {k: ch for k, ch in net.choices().items() if len(ch) > 1}
    scored = {t.user_attrs["hash"]: t for t in _phase(study, RANK)
              if t.user_attrs.get("status") == "complete"}
    invalid = 0
    n_done = len([t for t in _phase(study, RANK) if t.state.name == "COMPLETE"])
    while n_done < candidates:
        trial = study.ask()
        trial.set_user_attr("phase", RANK)
        point = {k: trial.suggest_categorical(k, ch) for k, ch in choices.items()}
        ts = time.perf_counter()
        try:
            cand = net.candidate(point, name=f"oneshot_t{trial.number:05d}")
        except SpecError as err:
            trial.set_user_attr("status", "invalid")
            trial.set_user_attr("reason", str(err).splitlines()[0])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            invalid += 1
            if invalid > max(50, 10 * candidates):
                raise SearchError("the space's points are mostly not networks (see trials.csv)")
            continue
        attrs: dict[str, Any]
        hit = scored.get(cand.hash)
        if hit is not None:
            attrs = {k: hit.user_attrs[k] for k in _RANK_KEYS if k in hit.user_attrs}
            attrs.update(status="cached", cached_from=hit.number)
        else:
            s = inherited_score(run, cand, calib_batches=calib_batches)
            lat = measure_latency(cand.spec, {"dims": net.spec.dims,
                                              "in_channels": net.spec.in_channels,
                                              "num_classes": net.spec.num_classes,
                                              "device": str(next(net.parameters()).device)}, cfg)
            attrs = {"status": "complete", "hash": cand.hash, "spec": cand.spec.to_dict(),
                     "inherited_iou": s["iou"], "iou": s["iou"], "dice": s["dice"],
                     "params": s["params"], "params_m": s["params"] / 1e6, "latency_ms": lat,
                     "n_edges": len(cand.edges), "gated_off": ",".join(cand.gated_off)}
        attrs["seconds"] = time.perf_counter() - ts
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        study.tell(trial, [float(attrs[OBJECTIVES[o].key]) for o in cfg.objectives])
        if hit is None:
            scored[cand.hash] = study.get_trials(deepcopy=False)[trial.number]
        n_done += 1
        if n_done % 50 == 0 or n_done == candidates:
            log(f"ranked {n_done}/{candidates} sub-networks ({len(scored)} distinct, "
                f"{invalid} draws were not networks)")
    new = study.get_trials(deepcopy=False)[len(finished):]
    db.add_trials(new)
    study = db
    phases["rank"] = {**clock.done(), "scored": len(scored), "ranked": n_done}
    _merge_phase(study, "rank", phases["rank"])

    # -- 3. retrain the best from scratch ------------------------------------------------------
    from ..bench.store import trial_key
    from .objective import RESULT_OVERRIDES, Prepared, cgm_key, evaluate
    from .report import pareto_rows

    clock = _Clock()
    df = _frame(study)
    rank = df[(df["phase"] == RANK) & (df["status"] == "complete")]
    front = pareto_rows(rank, cfg)
    searched = front[front["zoo"].isna()]
    picks = list(searched.sort_values("iou", ascending=False).head(top_k)["number"])
    if retrain_zoo:
        picks += [int(n) for n in rank[rank["zoo"].notna()]["number"] if n not in picks]
    done = {t.user_attrs.get("hash") for t in _phase(study, RETRAIN)
            if t.state.name == "COMPLETE"}
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number in picks:
        src = trials[int(number)]
        if src.user_attrs["hash"] in done:
            continue
        study.enqueue_trial(src.params, user_attrs={
            "phase": RETRAIN, "of_trial": src.number, "zoo": src.user_attrs.get("zoo"),
            "inherited_iou": src.user_attrs["inherited_iou"]})
        trial = study.ask()
        point = {k: trial.suggest_categorical(k, ch) for k, ch in choices.items()}
        cand = net.candidate(point, name=f"oneshot_t{trial.number:05d}")
        extra = {"cgm": cgm_key(cand.spec), "loss": cand.spec.loss,
                 **{k: cfg.overrides.get(k) for k in RESULT_OVERRIDES}}
        key = trial_key(cand.hash, dataset, budget, seed, False, extra)
        prep = Prepared(point=point, nominal=None, spec=cand.spec, hash=cand.hash, key=key)
        log(f"retraining trial {src.number} ({src.user_attrs.get('zoo') or 'searched'}, "
            f"inherited IoU {src.user_attrs['inherited_iou']:.4f}) from scratch")
        ts = time.perf_counter()
        rec = evaluate(prep, cfg)
        rec["seconds"] = time.perf_counter() - ts
        for k, v in {"hash": cand.hash, "key": key, "spec": cand.spec.to_dict(),
                     "n_edges": len(cand.edges), "gated_off": ",".join(cand.gated_off),
                     **rec}.items():
            trial.set_user_attr(k, v)
        if rec["status"] != "ok":
            trial.set_user_attr("status", "failed")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log(f"  [red]failed[/]: {rec['reason']}")
            continue
        trial.set_user_attr("status", "complete")
        study.tell(trial, [float(rec[OBJECTIVES[o].key]) for o in cfg.objectives])
        log(f"  stand-alone validation IoU {rec['iou']:.4f} (test {rec['test_iou']:.4f}), "
            f"{rec['seconds']:.0f} s")
    phases["retrain"] = {**clock.done(), "retrained": len(picks)}
    _merge_phase(study, "retrain", phases["retrain"])
    settings["phases"] = _phases(study, phases)
    (out / "search.json").write_text(json.dumps(settings, indent=2))
    files = write_outputs(out, study, sp, cfg, settings)
    log(f"wrote {files['trials']}, {files['pareto']}/, {files['png']}, {files['report']}")
    from .study import state_counts

    df = _frame(study)
    return OneShotSummary(
        study_name=name, storage=redact(url),
        ranked=int(((df["phase"] == RANK) & df["state"].eq("COMPLETE")).sum()),
        retrained=int(((df["phase"] == RETRAIN) & df["state"].eq("COMPLETE")).sum()),
        states=state_counts(study), seconds=time.perf_counter() - t0,
        phases=settings["phases"])


_RANK_KEYS = ("hash", "spec", "inherited_iou", "iou", "dice", "params", "params_m", "latency_ms",
              "n_edges", "gated_off")


def _phase(study, phase: str) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("phase") == phase]


def _merge_phase(study, name: str, value: dict[str, float]) -> None:
    """Add a phase's times to the study (a resumed run adds up)."""
    have = dict(study.user_attrs.get("phases") or {})
    old = have.get(name) or {}
    have[name] = {k: (old.get(k, 0) + v if k in ("wall_s", "cpu_s") else v)
                  for k, v in value.items()}
    study.set_user_attr("phases", have)


def _phases(study, phases: dict) -> dict:
    out = dict(study.user_attrs.get("phases") or {})
    if phases.get("supernet"):
        out["supernet"] = phases["supernet"]
    return out


#: Columns of a one-shot trials.csv (beside the multi-trial ones and the ``p_`` points).
ONESHOT_COLUMNS = ["phase", "of_trial", "inherited_iou", "n_edges", "gated_off"]


def _frame(study):
    """trials.csv of a one-shot study: the multi-trial columns, the phase, both scores."""
    from .report import trials_frame

    df = trials_frame(study)
    attrs = {t.number: t.user_attrs for t in study.get_trials(deepcopy=False)}
    for c in ONESHOT_COLUMNS:
        df[c] = [attrs[n].get(c) for n in df["number"]]
    return df


def write_outputs(out: str | Path, study, space: SearchSpace, cfg: SearchConfig,
                  settings: dict[str, Any]) -> dict[str, Path]:
    """trials.csv, pareto/ (the retrained networks' stand-alone front), pareto.png, report.md."""
    from .report import pareto_rows, write_pareto

    out = Path(out)
    df = _frame(study)
    df.to_csv(out / "trials.csv", index=False)
    retrained = df[(df["phase"] == RETRAIN) & (df["state"] == "COMPLETE")]
    front = pareto_rows(retrained, cfg) if len(retrained) else retrained
    paths = write_pareto(out, front, study, cfg, settings["study_name"])
    png = _plot(out / "pareto.png", df, cfg)
    md = _report(out, df, front, paths, cfg, settings)
    return {"trials": out / "trials.csv", "pareto": out / "pareto", "png": png, "report": md}


def _plot(path: Path, df, cfg: SearchConfig) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rank = df[(df["phase"] == RANK) & (df["status"] == "complete")]
    re = df[(df["phase"] == RETRAIN) & (df["state"] == "COMPLETE")]
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.2))
    ax = axes[0]
    ax.scatter(rank["params_m"], rank["inherited_iou"], s=10, c="#b0b0b0",
               label="ranked (inherited weights)")
    zoo = rank[rank["zoo"].notna()]
    ax.scatter(zoo["params_m"], zoo["inherited_iou"], s=80, marker="*", c="#1f77b4",
               edgecolors="k", linewidths=0.5, label="zoo topologies")
    for _, r in zoo.iterrows():
        ax.annotate(str(r["zoo"]), (r["params_m"], r["inherited_iou"]), fontsize=8,
                    textcoords="offset points", xytext=(4, 3))
    ax.scatter(re["params_m"], re["inherited_iou"], s=30, c="#d62728", label="retrained")
    ax.set_xlabel(OBJECTIVES["params"].label)
    ax.set_ylabel("inherited validation IoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    ax.scatter(re["inherited_iou"], re["iou"], s=30, c="#d62728")
    for _, r in re.iterrows():
        ax.annotate(r["zoo"] if isinstance(r["zoo"], str) else f"t{int(r['of_trial'])}",
                    (r["inherited_iou"], r["iou"]), fontsize=8, textcoords="offset points",
                    xytext=(4, 3))
    ax.set_xlabel("inherited validation IoU")
    ax.set_ylabel("stand-alone validation IoU (retrained)")
    ax.grid(alpha=0.3)
    fig.suptitle(f"one-shot search on {cfg.dataset} ({cfg.budget}, widths x{cfg.width_scale:g})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _report(out: Path, df, front, paths: list[Path], cfg: SearchConfig,
            settings: dict[str, Any]) -> Path:
    from .report import markdown_table

    ph = settings.get("phases") or {}
    rank = df[(df["phase"] == RANK)]
    scored = rank[rank["status"] == "complete"]
    re = df[(df["phase"] == RETRAIN) & (df["state"] == "COMPLETE")]
    sn, rk, rt = ph.get("supernet", {}), ph.get("rank", {}), ph.get("retrain", {})

    def per_hour(n: float, cpu: float) -> str:
        return f"{n / (cpu / 3600):.0f}" if cpu else "-"

    lines = [
        "# One-shot search report", "",
        f"- command: `{settings.get('command') or 'skipdsl.search.oneshot.run_oneshot(...)'}`",
        f"- study: `{settings['study_name']}` in `{settings['storage']}`",
        f"- space: `{settings['space']}` ({settings.get('space_size')} topology points), "
        f"dataset `{cfg.dataset}`, budget `{cfg.budget}`, seed {cfg.seed}, widths "
        f"x{cfg.width_scale:g}; trainer overrides {json.dumps(cfg.overrides, sort_keys=True)}",
        f"- supernet: SPOS (one uniform draw per step), {settings.get('supernet_epochs')} "
        f"epochs; BN recalibrated on {settings.get('calib_batches')} training batches per "
        f"candidate; NSGA-II over inherited {', '.join(cfg.objectives)}", "",
        "## Phases", "",
        "| phase | wall s | CPU s (this process) | what |", "|---|---|---|---|",
        f"| supernet training | {sn.get('wall_s', '-')} | {sn.get('cpu_s', '-')} | "
        f"{sn.get('steps', '-')} sampled-path steps |",
        f"| ranking (inherited weights) | {rk.get('wall_s', '-')} | {rk.get('cpu_s', '-')} | "
        f"{len(scored)} distinct sub-networks scored ({len(rank)} trials) |",
        f"| retraining from scratch | {rt.get('wall_s', '-')} | {rt.get('cpu_s', '-')} | "
        f"{len(re)} networks |", "",
        f"Networks scored per CPU hour: ranking alone {per_hour(len(scored), rk.get('cpu_s', 0))}"
        f"; including the supernet's training "
        f"{per_hour(len(scored), rk.get('cpu_s', 0) + sn.get('cpu_s', 0))}; retraining "
        f"{per_hour(len(re), rt.get('cpu_s', 0))}.", "",
        "## Retrained networks (stand-alone scores beside the inherited ones)", "",
    ]
    if len(re):
        cols = ["number", "of_trial", "zoo", "inherited_iou", "iou", "test_iou", "params_m",
                "latency_ms", "n_edges", "gated_off", "hash"]
        lines.append(markdown_table(re.sort_values("inherited_iou", ascending=False), cols))
        if len(re) >= 3:
            from scipy.stats import kendalltau

            tau = kendalltau(re["inherited_iou"], re["iou"]).statistic
            lines += ["", f"Kendall's tau, inherited vs stand-alone validation IoU over these "
                      f"{len(re)} networks: {tau:.3f} (few, and chosen from the top: "
                      "`benchmarks/supernet_rank.py` measures the proxy over a spread of the "
                      "space)."]
    else:
        lines.append("None retrained yet.")
    lines += ["", "## Pareto front of the retrained networks (stand-alone)", ""]
    if len(front):
        f = front.copy()
        f["file"] = [f"pareto/{p.name}" for p in paths]
        lines.append(markdown_table(f, ["number", "zoo", "iou", "test_iou", "inherited_iou",
                                "params_m", "latency_ms", "file"]))
    else:
        lines.append("None.")
    lines += ["", "`iou`: best validation IoU (retrain trials: stand-alone training; rank "
              "trials: inherited weights). `test_iou`: test IoU of the retrained network, "
              "never optimised. Every sub-network sums per-edge projections (the supernet's "
              "form), including the zoo topologies: `unetsharp` here is UNet#'s edge set in "
              "that form, not the zoo model itself. All trials: `trials.csv`.", ""]
    p = out / "report.md"
    p.write_text("\n".join(lines))
    return p


def rebuild_outputs(out: str | Path, storage: str | None = None) -> dict[str, Path]:
    """Rebuild a one-shot folder's outputs from its study."""
    from .study import load_for_report

    study, space, cfg, settings = load_for_report(out, storage)
    settings["phases"] = _phases(study, settings.get("phases") or {})
    return write_outputs(out, study, space, cfg, settings)


__all__ = ["run_oneshot", "OneShotSummary", "write_outputs", "rebuild_outputs", "DEFAULT_SPACE"]
