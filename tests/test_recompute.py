"""recompute="resample" and "split" (skipdsl.compile, the spec, the trainer, bench run
--recompute, bench memory): the backward pass recomputes resamplings and concatenations instead
of storing them, with the default's outputs, gradients and BatchNorm statistics (split: to float
rounding), and less memory."""
from __future__ import annotations

import json

import pytest
import torch

import skipdsl
from skipdsl.compiler import _Checkpointed
from skipdsl.spec import scale_spec

ZOO = ["unet", "wunet", "unetpp", "unet3p", "unetsharp"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


def _step(model, x):
    """Outputs, loss, parameter gradients and the state after one training forward/backward."""
    model.train()
    out = model(x)
    outs = out if isinstance(out, dict) else {"main": out}
    loss = sum((o.float() ** 2).mean() + o.float().mean() for o in outs.values())
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return {k: o.detach() for k, o in outs.items()}, grads, state


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", ZOO)
def test_recompute_gives_the_defaults_outputs_gradients_and_batchnorm_statistics(name, dims):
    # the zoo's own shapes (UNet 3+'s projections too) at 1/16 (2D) or 1/32 (3D) of the widths
    spec = scale_spec(skipdsl.load(name), 1 / 16 if dims == 2 else 1 / 32)
    torch.manual_seed(0)
    base = skipdsl.compile(spec, dims=dims, in_channels=2, deep_supervision=True)
    rec = skipdsl.compile(spec, dims=dims, in_channels=2, deep_supervision=True,
                          recompute="resample")
    rec.load_state_dict(base.state_dict())
    assert rec.recompute == "resample" and base.recompute == "none"
    wrapped = [n for n in rec.graph.nodes if isinstance(n.target, _Checkpointed)]
    assert wrapped and all(n.target.selective for n in wrapped)  # every decoder node at least
    assert not any(isinstance(n.target, _Checkpointed) for n in base.graph.nodes)
    x = torch.randn(2, 2, *([32] * 2 if dims == 2 else [16] * 3))
    out_a, grad_a, state_a = _step(base, x)
    out_b, grad_b, state_b = _step(rec, x)
    assert out_a.keys() == out_b.keys()
    assert len(out_a) > 1 or name in ("unet", "wunet")  # deep supervision heads
    for k in out_a:
        assert torch.equal(out_a[k], out_b[k]), k
    # BatchNorm's running statistics are updated once (a recomputed BatchNorm in training
    # mode would update them a second time), and nothing else in the state differs
    for k in state_a:
        assert torch.equal(state_a[k], state_b[k]), k
    # UNet 3+ pools x_0_0 once for two nodes by default, once per node with recompute: the
    # gradients reach x_0_0 summed in another order (float rounding, ~1e-7 of the largest)
    big = max(g.abs().max() for g in grad_a.values())
    for k in grad_a:
        torch.testing.assert_close(grad_b[k], grad_a[k], rtol=1e-5, atol=1e-5 * big, msg=k)
    if name != "unet3p":  # no pooling shared between nodes: the very same operations
        assert all(torch.equal(grad_a[k], grad_b[k]) for k in grad_a)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", ZOO + ["vnet"])
def test_split_is_the_same_network_with_the_same_gradients(name, dims):
    # recompute="split": the first convolution of a concatenating node split per input, no
    # concatenation; outputs and gradients equal the default's to float rounding (the sum runs
    # in another order), the state dict (names, order, BatchNorm statistics) is the same
    spec = scale_spec(skipdsl.load(name), 1 / 16 if dims == 2 else 1 / 32)
    cin = 2
    if name == "vnet":  # its input stage tiles the input channels to its width (16)
        spec, cin = scale_spec(skipdsl.load(name), 1 / 8), 1
    torch.manual_seed(0)
    base = skipdsl.compile(spec, dims=dims, in_channels=cin, deep_supervision=True)
    split = skipdsl.compile(spec, dims=dims, in_channels=cin, deep_supervision=True,
                            recompute="split")
    assert split.recompute == "split"
    assert list(split.state_dict()) == list(base.state_dict())
    assert [type(m) for m in split.modules()][1:] == [type(m) for m in base.modules()][1:]
    split.load_state_dict(base.state_dict())
    concats = sum(n.target is torch.cat for n in base.graph.nodes)
    parts = [n for n in split.graph.nodes if n.name.endswith("_part")]
    if name == "vnet":  # residual stages: recomputed as with "resample", nothing split
        assert not parts
    elif name == "unet3p":  # every skip projected: the projections take the resampled copies
        assert parts and all(n.target.__name__.startswith("resampled_conv_x") for n in parts)
    else:
        assert concats and parts and not any(n.target is torch.cat for n in split.graph.nodes)
    x = torch.randn(2, cin, *([32] * 2 if dims == 2 else [16] * 3))
    torch.manual_seed(1)  # V-Net's dropout: the same masks
    out_a, grad_a, state_a = _step(base, x)
    torch.manual_seed(1)
    out_b, grad_b, state_b = _step(split, x)
    assert out_a.keys() == out_b.keys()
    for k in out_a:
        torch.testing.assert_close(out_b[k], out_a[k], rtol=1e-4, atol=1e-4, msg=k)
    for k in state_a:
        torch.testing.assert_close(state_b[k], state_a[k], rtol=1e-4, atol=1e-5, msg=k)
    big = max(g.abs().max() for g in grad_a.values())
    for k in grad_a:
        torch.testing.assert_close(grad_b[k], grad_a[k], rtol=1e-4, atol=1e-4 * big, msg=k)
    # a wrong share of the weight (an off-by-one channel slice) is far outside that tolerance
    assert max((grad_a[k] - grad_b[k]).abs().max() for k in grad_a) < 1e-4 * big
    split.eval()
    base.eval()
    with torch.no_grad():  # inference: no autograd function, the same outputs
        a, b = base(x), split(x)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4, msg=k)


def test_split_under_bf16_autocast_is_as_close_to_fp32_as_the_default():
    # the backward pass resamples again under the forward's autocast state and casts the
    # convolution's gradients back to the parameters' dtype; the parts are summed in fp32
    torch.manual_seed(0)
    models = {m: skipdsl.compile("unetsharp", widths=[4, 8, 16, 32, 64], recompute=m)
              for m in ("none", "split")}
    models["split"].load_state_dict(models["none"].state_dict())
    x = torch.randn(2, 3, 32, 32)

    def grads(m, amp):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = m(x)
        out.float().square().mean().backward()
        return torch.cat([p.grad.flatten() for p in m.parameters()])

    ref = grads(models["none"], False)
    err = {m: ((grads(models[m], True) - ref).norm() / ref.norm()).item() for m in models}
    assert all(p.grad.dtype == torch.float32 for p in models["split"].parameters())
    assert err["split"] < 1.5 * err["none"] + 0.02, err


def test_split_chunks_a_wide_resampled_input_and_prunes():
    from skipdsl.compiler import _ResampledConv

    torch.manual_seed(0)
    # x_4_0 (64 channels) reaches x_0_4 (width 4) upsampled: chunks of 32 channels
    base = skipdsl.compile("unetsharp", widths=[4, 8, 16, 32, 64], deep_supervision=True)
    split = skipdsl.compile("unetsharp", widths=[4, 8, 16, 32, 64], deep_supervision=True,
                            recompute="split")
    split.load_state_dict(base.state_dict())
    calls = {n.name: n.target for n in split.graph.nodes if isinstance(n.target, _ResampledConv)}
    assert {"x_4_0__x_0_4_c0_part", "x_4_0__x_0_4_c32_part"} <= set(calls)
    assert calls["x_4_0__x_0_4_c32_part"].src_start == 32
    x = torch.randn(1, 3, 32, 32)
    base.eval()
    split.eval()
    with torch.no_grad():
        full = split(x)
        sub = skipdsl.prune(split, level=2)
        assert sub.recompute == "split"
        assert list(sub.state_dict()) == list(skipdsl.prune(base, level=2).state_dict())
        torch.testing.assert_close(sub(x), full["x_0_2"])
        torch.testing.assert_close(full["x_0_4"], base(x)["x_0_4"], rtol=1e-4, atol=1e-4)


def test_recompute_stores_less_for_the_backward_pass():
    from benchmarks.memory import peak_live_mb

    peaks = {}
    for mode in ("none", "resample", "split"):
        torch.manual_seed(0)
        m = skipdsl.compile("unetsharp", widths=[4, 8, 16, 32, 64], recompute=mode)
        x = torch.randn(2, 3, 32, 32)

        def step():
            m(x).float().mean().backward()

        step()
        peaks[mode] = peak_live_mb(step)
    assert 0 < peaks["resample"] < 0.8 * peaks["none"], peaks
    assert 0 < peaks["split"] < 0.8 * peaks["resample"], peaks


def test_recompute_in_the_spec_prune_eval_and_errors():
    spec = skipdsl.load("unetsharp").replace(recompute="resample")
    assert spec.hash() == skipdsl.load("unetsharp").hash()  # how it runs, not what it is
    assert skipdsl.spec_hash(spec) == skipdsl.spec_hash("unetsharp")
    assert "recompute" not in skipdsl.load("unetsharp").to_dict()  # unset: no change
    torch.manual_seed(0)
    m = skipdsl.compile(spec, widths=4, deep_supervision=True)
    assert m.recompute == "resample"
    assert skipdsl.compile(spec, widths=4, recompute="none").recompute == "none"
    x = torch.randn(1, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        full = m(x)
        sub = skipdsl.prune(m, level=2)
        assert sub.recompute == "resample" and torch.equal(sub(x), full["x_0_2"])
    with pytest.raises(skipdsl.SpecError, match="unknown recompute 'all'"):
        skipdsl.compile("unet", recompute="all")


def test_recompute_is_a_trainer_key_that_does_not_change_the_trial_key(tmp_path):
    from skipdsl.bench import cli, runner
    from skipdsl.train.trainer import resolve_config

    plans = [runner.plan(["unetsharp"], ["nuclei2d"], seeds=[0], deep_supervision="off",
                         budget="smoke", overrides={"recompute": r}) for r in (None, "resample")]
    assert [t.key for t in plans[0]] == [t.key for t in plans[1]]
    assert plans[1][0].config["recompute"] == "resample"
    with pytest.raises(ValueError, match="unknown recompute"):
        resolve_config({"model": "unet", "dataset": "nuclei2d", "recompute": "yes"})
    assert cli.build_parser().parse_args(["run", "--recompute", "resample"]).recompute == \
        "resample"
    # the memory format is how a trial runs, not what it is: not in the key either
    cl = runner.plan(["unetsharp"], ["nuclei2d"], seeds=[0], deep_supervision="off",
                     budget="smoke", overrides={"channels_last": False})
    assert [t.key for t in cl] == [t.key for t in plans[0]]
    assert cl[0].config["channels_last"] is False
    parser = cli.build_parser()
    assert parser.parse_args(["run", "--no-channels-last"]).channels_last is False
    assert parser.parse_args(["run"]).channels_last is None


@pytest.mark.parametrize("mode", ["resample", "split"])
def test_trainer_trains_with_recompute(cache_dir, mode):
    from skipdsl.train.trainer import train_and_evaluate

    cfg = dict(model="unetsharp", dataset="nuclei2d", n=12, epochs=1, widths=[4, 4, 8, 8, 8],
               batch_size=4, cache_dir=cache_dir, threads=1, throughput_iters=1, hd95=False,
               deep_supervision=True)
    a = train_and_evaluate(cfg)
    b = train_and_evaluate({**cfg, "recompute": mode})
    assert a["status"] == b["status"] == "ok", (a["reason"], b["reason"])
    assert b["config"]["recompute"] == mode
    assert [c["train_loss"] for c in a["curve"]] == pytest.approx(
        [c["train_loss"] for c in b["curve"]], rel=1e-5)
    assert a["iou"] == pytest.approx(b["iou"], abs=1e-4)


def test_bench_memory_writes_its_table(tmp_path):
    from benchmarks import memory

    out, js = tmp_path / "memory.md", tmp_path / "memory.json"
    rc = memory.main(["--models", "unetsharp", "--size", "16", "--batch", "2",
                   "--widths", "4,8,16,32,64", "--reps", "2", "--threads", "1",
                   "--out", str(out), "--json", str(js)])
    assert rc == 0
    text = out.read_text()
    assert "| unetsharp |" in text and "Command: `python benchmarks/memory.py --models unetsharp" in text
    (row,) = json.loads(js.read_text())["rows"]
    assert row["error"] is None and row["grad_diff"]["resample"] == 0.0
    assert 0 < row["grad_diff"]["split"] < 1e-4
    assert set(row["peak_mb"]) == {"hand", "compiled", "resample", "split"}
    assert all(v > 0 for v in row["peak_mb"].values())
    assert row["peak_mb"]["split"] < row["peak_mb"]["resample"] < row["peak_mb"]["compiled"]
    assert all(v > 0 for v in row["step_ms"].values())
