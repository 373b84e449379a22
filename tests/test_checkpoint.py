"""Checkpoints (skipdsl.checkpoint): the format, loading back, the checks against the spec, every
bad file, the trainer and store writing them, and the search keeping its Pareto front's."""
from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch

import skipdsl
from skipdsl import checkpoint
from skipdsl.errors import DataError, SpecError

TINY = [4, 8, 16, 32, 64]


def _tiny(name="unetsharp", **kw):
    kw.setdefault("widths", TINY)
    return skipdsl.compile(name, **kw)


def _write(folder, model, **kw):
    kw.setdefault("image_size", (32, 32))
    checkpoint.write(folder, checkpoint.payload(model, **kw))
    return folder


@pytest.fixture
def ds_checkpoint(tmp_path):
    """A UNet# with deep supervision and trained-like (perturbed) weights and BN statistics."""
    torch.manual_seed(0)
    model = _tiny(deep_supervision=True)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return model.eval(), _write(tmp_path / "trial", model, mean=[0.5, 0.4, 0.3],
                                std=[0.2, 0.3, 0.4], threshold=0.4, patch=16,
                                classes=["nucleus"], input_normalisation="z-score per image "
                                "and channel", trial={"model": "unetsharp", "seed": 3,
                                                     "test_iou": np.float64(0.5), "bad": object()})


def test_format_loads_with_weights_only_and_round_trips(ds_checkpoint):
    model, folder = ds_checkpoint
    raw = torch.load(folder / "model.pt", weights_only=True)
    assert raw["format"] == "skipdsl.checkpoint" and raw["version"] == 1
    assert raw["trial"]["seed"] == 3 and raw["trial"]["test_iou"] == 0.5
    assert "bad" not in raw["trial"]  # what weights_only could not read back is left out
    assert (folder / "spec.yaml").read_text().startswith("# the spec model.pt was trained as")
    assert skipdsl.spec_hash(skipdsl.load(folder / "spec.yaml")) == raw["spec_hash"]
    ck = skipdsl.load_checkpoint(folder)
    assert ck.spec.widths == TINY and ck.spec.deep_supervision
    assert ck.threshold == 0.4 and ck.patch == 16 and ck.image_size == (32, 32)
    assert ck.input_normalisation.startswith("z-score") and ck.classes == ["nucleus"]
    x = torch.randn(2, 3, 32, 48)
    norm = (x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = skipdsl.main_logits(model, model(norm))
        assert torch.equal(ck.network()(x), want)
        assert torch.equal(ck.network(normalise=False)(norm), want)
        assert torch.equal(ck.network(prune=2)(x), skipdsl.prune(model, 2)(norm))
        # x_0_4 is the main head: its sub-network is the whole network
        assert torch.equal(ck.network(prune=4)(x), want)
    assert skipdsl.load_checkpoint(folder / "model.pt").path == folder / "model.pt"


def test_written_atomically_nothing_half_written(tmp_path, monkeypatch):
    model = _tiny("unet")
    monkeypatch.setattr(checkpoint, "to_bytes", lambda c: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError):
        _write(tmp_path / "t", model)
    assert not (tmp_path / "t" / "model.pt").exists()
    monkeypatch.undo()
    _write(tmp_path / "t", model)
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["model.pt", "spec.yaml"]


def test_bad_files_get_clear_errors(tmp_path, ds_checkpoint):
    _, folder = ds_checkpoint
    good = (folder / "model.pt").read_bytes()
    cases = {
        "truncated.pt": good[: len(good) // 2],
        "corrupt.pt": bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=rf"{name}: not a readable checkpoint.*\n  hint: "):
            skipdsl.load_checkpoint(tmp_path / name)
    torch.save(_tiny("unet").state_dict(), tmp_path / "plain.pt")
    with pytest.raises(DataError, match="(?s)plain.pt: not a skipdsl checkpoint .found a plain "
                       "state dict.*load_state_dict"):
        skipdsl.load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(DataError, match="missing.pt: checkpoint file is missing"):
        skipdsl.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="(?s)model.pt: no checkpoint in this folder.*--no-weights"):
        skipdsl.load_checkpoint(tmp_path / "empty")
    assert zipfile.is_zipfile(folder / "model.pt")


def test_a_checkpoint_of_another_spec_is_refused(tmp_path, ds_checkpoint):
    model, folder = ds_checkpoint
    # the spec given
    with pytest.raises(SpecError, match=r"model.pt: the checkpoint was trained for spec "
                       r"'unetsharp' .*not for the spec given .*'unetpp'.*\n  hint: use the spec"):
        skipdsl.load_checkpoint(folder, spec="unetpp")
    same = skipdsl.load("unetsharp").replace(widths=TINY)  # channels and heads aligned
    assert skipdsl.load_checkpoint(folder, spec=same).spec.name == "unetsharp"
    # a spec.yaml replaced by another network's
    (folder / "spec.yaml").write_text(skipdsl.load("unetsharp").replace(widths=[4, 8, 16, 32, 32])
                                      .to_yaml())
    with pytest.raises(SpecError, match="not for .*spec.yaml"):
        skipdsl.load_checkpoint(folder)
    # weights of another spec under this spec: the spec text swapped inside model.pt
    raw = torch.load(folder / "model.pt", weights_only=True)
    other = skipdsl.load("unetsharp").replace(widths=[4, 8, 16, 32, 32], deep_supervision=True)
    raw.update(spec=other.to_yaml(), spec_hash=skipdsl.spec_hash(other))
    torch.save(raw, tmp_path / "swapped.pt")
    with pytest.raises(SpecError, match=r"swapped.pt: the weights do not fit the spec: .*shape"):
        skipdsl.load_checkpoint(tmp_path / "swapped.pt")
    # an edited spec whose hash no longer matches
    raw.update(spec=skipdsl.load("unetpp").to_yaml())
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(SpecError, match="edited.pt: the spec inside the checkpoint hashes to"):
        skipdsl.load_checkpoint(tmp_path / "edited.pt")


def test_prune_and_cgm_need_the_weights_for_them(tmp_path):
    folder = _write(tmp_path / "plain", _tiny("unetsharp"))  # no deep supervision, no CGM
    ck = skipdsl.load_checkpoint(folder)
    with pytest.raises(SpecError, match=r"no trained head on x_0_2.*\n  hint: pruning needs the "
                       "deep-supervision heads"):
        ck.network(prune=2)
    with pytest.raises(SpecError, match="holds no CGM weights"):
        ck.network(cgm=True)
    cgm = skipdsl.load_checkpoint(_write(tmp_path / "cgm", _tiny(deep_supervision=True,
                                                               cgm=True)))
    x = torch.randn(1, 3, 32, 32)
    assert cgm.network()(x).shape == cgm.network(cgm=False)(x).shape == (1, 1, 32, 32)
    assert cgm.network(prune=1, cgm=False)(x).shape == (1, 1, 32, 32)


# -- the trainer and the store --------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real tiny trial stored as bench run stores it."""
    from skipdsl.bench.store import save_trial
    from skipdsl.train.trainer import train_and_evaluate

    cache = str(tmp_path_factory.mktemp("data-cache"))
    result = train_and_evaluate(dict(model="unet", dataset="nuclei2d", n=24, epochs=1,
                                     widths=TINY, batch_size=4, cache_dir=cache, threads=1,
                                     throughput_iters=1, save_weights=True))
    out = tmp_path_factory.mktemp("bench")
    return result, save_trial(out, "k", result), cache


def test_trainer_and_store_write_the_selected_weights(trained):
    from skipdsl.data import load_dataset
    from skipdsl.predict import predict_logits, to_mask
    from skipdsl.train.metrics import aggregate, case_metrics

    result, folder, cache = trained
    assert result["status"] == "ok", result["reason"]
    stored = json.loads((folder / "result.json").read_text())
    assert stored["checkpoint"] == "model.pt"  # the weights are in model.pt, not in the JSON
    ck = skipdsl.load_checkpoint(folder)
    assert ck.trial["trial_key"] == "k" and ck.trial["dataset"] == "nuclei2d"
    assert ck.spec.widths == TINY and ck.image_size == (96, 96)
    assert math.isclose(ck.trial["test_iou"], result["iou"])
    # the checkpoint reproduces the trial's test masks, so its test IoU
    ds = load_dataset("nuclei2d", n=24, cache_dir=cache)
    test = np.asarray(ds.splits["test"])
    net = ck.network()
    with torch.no_grad():
        logits = predict_logits(net, torch.from_numpy(ds.images[test]), multiple=ck.multiple)
    masks = torch.from_numpy(np.stack([to_mask(lg, ck.threshold) for lg in logits]))
    iou = aggregate(case_metrics(masks, torch.from_numpy(ds.masks[test])))["iou"]
    assert abs(iou - result["iou"]) < 1e-9


def test_without_save_weights_the_trial_keeps_none(tmp_path, trained):
    from skipdsl.bench.store import save_trial
    from skipdsl.train.trainer import DEFAULTS, train_and_evaluate

    # off in the trainer (a caller storing results is not handed tensors it does not expect),
    # on in bench run_sweep and in a search that keeps weights
    assert DEFAULTS["save_weights"] is False
    _, _, cache = trained
    r = train_and_evaluate(dict(model="unet", dataset="nuclei2d", n=8, epochs=1, widths=TINY,
                                cache_dir=cache, threads=1, throughput_iters=1))
    assert "checkpoint" not in r
    d = save_trial(tmp_path, "k", r)
    assert not (d / "model.pt").exists() and (d / "result.json").exists()


def test_bench_sweep_keeps_weights_unless_told_not(tmp_path, monkeypatch):
    from skipdsl.bench import runner
    from skipdsl.train import trainer

    model = _tiny("unet")

    def fake(config, report=None):  # a finished trial, without the training
        result = {"status": "ok", "reason": "", "model": "unet", "dataset": config["dataset"],
                  "seed": config["seed"], "deep_supervision": False, "budget": "smoke",
                  "iou": 0.5, "config": dict(config)}
        if config.get("save_weights"):
            result["checkpoint"] = checkpoint.payload(model, trial={"model": "unet"})
        return result

    monkeypatch.setattr(trainer, "train_and_evaluate", fake)
    for out, overrides in ((tmp_path / "on", {}), (tmp_path / "off", {"save_weights": False})):
        trials = runner.plan(["unet"], ["nuclei2d"], overrides=overrides)
        runner.run_sweep(trials, out, backend="local", progress=False)
        folder = out / "trials" / trials[0].key
        assert (folder / "model.pt").exists() == (out.name == "on")
        assert (folder / "result.json").exists()
    ck = skipdsl.load_checkpoint(tmp_path / "on" / "trials" / trials[0].key)
    assert ck.trial["trial_key"] == trials[0].key


# -- the search -----------------------------------------------------------------------------


def _fake_with_weights(config, report=None):
    from skipdsl.train.trainer import load_spec
    from test_search_fakes import fake_train

    result = fake_train(config, report)
    spec = load_spec(config["model"]).replace(widths=config["widths"])
    model = skipdsl.compile(spec, deep_supervision=config["deep_supervision"])
    result["checkpoint"] = checkpoint.payload(model, image_size=(32, 32),
                                              trial={"model": spec.name})
    return result


def test_search_keeps_the_pareto_fronts_weights(tmp_path):
    from skipdsl.search.runner import run_search

    out = tmp_path / "s"
    run_search(dataset="nuclei2d", trials=3, out=out, trainer=_fake_with_weights, zoo=False,
               budget="smoke", latency_size=32, latency_iters=1, sampler_seed=0, workers=1,
               log=lambda s: None)
    specs = sorted((out / "pareto").glob("*.yaml"))
    assert specs and len(list((out / "checkpoints").glob("*.pt"))) >= len(specs)
    for p in specs:
        ck = skipdsl.load_checkpoint(p.with_suffix(".pt"), spec=p)  # re-validated, same network
        assert skipdsl.spec_hash(ck.spec) == skipdsl.spec_hash(
            checkpoint._aligned(skipdsl.load(p), ck.spec))
    assert "pareto/" + specs[0].with_suffix(".pt").name in (out / "report.md").read_text()
    bare = tmp_path / "bare"
    run_search(dataset="nuclei2d", trials=1, out=bare, trainer=_fake_with_weights, zoo=False,
               budget="smoke", latency_size=32, latency_iters=1, sampler_seed=0, workers=1,
               weights=False, log=lambda s: None)
    assert not (bare / "checkpoints").exists() and not list((bare / "pareto").glob("*.pt"))
