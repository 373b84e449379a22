"""The fast path (skipdsl.fast): option values, CLI over spec, what CPU leaves out and why, the
spec field (round trip, hashes unchanged), the eval wrapper, static-shape replay, the trainer,
``bench run --fast``, ``skipdsl search run --fast`` and ``speed.py --fast``.

CUDA graphs cannot run here: their batching logic (:func:`run_static`) is tested with an
in-place CPU recomputation in place of a graph replay, and asking for them on CPU must be
refused or recorded with a reason.
"""
from __future__ import annotations

import json

import pytest
import torch

import skipdsl
from skipdsl.errors import SpecError
from skipdsl.fast import (PARTS, FastInference, FastPath, FastPathError, GraphedForward, choose,
                          normalize, run_static)
from skipdsl.spec import from_dict, loads
from skipdsl.train.trainer import fast_path, resolve_config, train_and_evaluate

TINY = [4, 8, 16, 32, 64]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


# -- option values and resolution --------------------------------------------------------------


@pytest.mark.parametrize("value, expect", [
    (None, "off"), (False, "off"), ("off", "off"), ("no", "off"), ("", "off"),
    (True, "on"), ("on", "on"), ("auto", "on"), ("TRUE", "on"),
    ("compile", "compile"), ("Cuda-Graphs, channels_last", "channels_last,cuda_graphs"),
    (["cuda_graphs", "bf16", "bf16"], "bf16,cuda_graphs"),
])
def test_normalize(value, expect):
    assert normalize(value) == expect


def test_normalize_rejects_unknown_parts_with_the_valid_ones():
    with pytest.raises(FastPathError, match="did you mean 'compile'.*channels_last"):
        normalize("bf16,compil")
    with pytest.raises(FastPathError, match="found 3"):
        normalize(3)
    assert issubclass(FastPathError, ValueError)  # the CLIs report ValueError as a message


def test_command_line_overrides_spec():
    assert choose(None, "on") == "on"  # no --fast: the spec's
    assert choose("off", "on") == "off"  # --fast off beats the spec's on
    assert choose("compile", True) == "compile"
    assert choose("on", None) == "on"
    assert choose(None, None) == "off"


def test_on_applies_every_part_on_cuda():
    fp = FastPath.resolve("on", "cuda")
    assert fp.applied == PARTS and fp.skipped == {}
    assert fp.summary() == "bf16,channels_last,compile,cuda_graphs"
    assert fp.memory_format(2) == torch.channels_last
    assert fp.memory_format(3) == torch.channels_last_3d
    assert FastPath.resolve("off", "cuda").applied == ()


def test_on_applies_nothing_on_cpu_and_says_why():
    fp = FastPath.resolve(True, torch.device("cpu"))
    assert fp.applied == () and fp.summary() == "off"
    assert set(fp.skipped) == set(PARTS)
    assert "CUDA" in fp.skipped["bf16"] and "CUDA" in fp.skipped["cuda_graphs"]
    assert "name it" in fp.skipped["compile"]
    text = fp.reasons()
    assert all(f"{p}: " in text for p in PARTS)
    assert "skipped" in fp.describe() and "[" not in fp.describe()  # no rich markup


def test_named_parts_apply_on_cpu_except_the_cuda_only_ones():
    fp = FastPath.resolve("bf16,channels_last,compile,cuda_graphs", "cpu")
    assert fp.applied == ("channels_last", "compile")
    assert set(fp.skipped) == {"bf16", "cuda_graphs"}
    assert fp.describe().startswith("channels_last,compile (skipped: bf16:")


def test_compile_modes_that_graph_themselves_drop_cuda_graphs():
    fp = FastPath.resolve("on", "cuda", compile_mode="reduce-overhead")
    assert not fp.cuda_graphs and fp.compile
    assert "reduce-overhead" in fp.skipped["cuda_graphs"]
    assert FastPath.resolve("on", "cuda", compile_mode="max-autotune-no-cudagraphs").cuda_graphs


def test_with_part_records_and_refuses():
    fp = FastPath.resolve("on", "cuda").with_part("bf16", False, "amp: false in the config")
    assert not fp.bf16 and fp.skipped == {"bf16": "amp: false in the config"}
    assert fp.with_part("bf16", True).skipped == {}
    with pytest.raises(FastPathError, match="CUDA"):
        FastPath.resolve("off", "cpu").with_part("cuda_graphs", True)
    with pytest.raises(FastPathError, match="did you mean"):
        fp.with_part("bf61", True)


# -- the spec field -------------------------------------------------------------------------


def test_spec_fast_round_trips_and_leaves_the_hashes_alone():
    plain = skipdsl.load("unet")
    assert "fast" not in plain.to_dict()  # absent stays absent: zoo YAML unchanged
    data = plain.to_dict()
    data["fast"] = True
    spec = from_dict(data)
    assert spec.fast == "on"
    again = loads(spec.to_yaml())
    assert again.fast == "on" and again.to_dict() == spec.to_dict()
    assert from_dict(spec.to_dict()).to_dict() == spec.to_dict()
    assert spec.hash() == plain.hash()
    assert skipdsl.spec_hash(spec) == skipdsl.spec_hash(plain)
    parts = plain.replace(fast=["cuda_graphs", "compile"])
    assert parts.fast == "compile,cuda_graphs" and loads(parts.to_yaml()).fast == parts.fast
    assert parts.hash() == plain.hash()
    # what the network is still changes the hash
    assert plain.replace(in_channels=1, fast="on").hash() != plain.hash()


def test_spec_fast_bad_value_is_located():
    text = skipdsl.load("unet").to_yaml() + "fast: cuda_graph\n"
    with pytest.raises(SpecError) as e:
        loads(text, source="net.yaml")
    msg = str(e.value)
    assert f"net.yaml:{len(text.splitlines())}" in msg
    assert "did you mean 'cuda_graphs'" in msg


# -- inference wrapper and static replay (CPU) --------------------------------------------


def test_fast_inference_matches_eager_and_keeps_dict_outputs():
    torch.manual_seed(0)
    model = skipdsl.compile("unetpp", deep_supervision=True, widths=TINY).eval()
    x = torch.randn(3, 3, 32, 32)
    fp = FastPath.resolve("bf16,channels_last", "cpu")
    assert fp.applied == ("channels_last",)  # bf16 is CUDA-only
    fp = fp.with_part("bf16", True)  # as the trainer's amp: true does
    model = model.to(memory_format=torch.channels_last)
    run = FastInference(model, fp)
    out = run(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(x.contiguous(memory_format=torch.channels_last))
    assert isinstance(out, dict) and list(out) == list(ref)
    for k in ref:
        assert out[k].dtype == torch.bfloat16 and torch.equal(out[k], ref[k])
    assert skipdsl.main_logits(run, out) is out["x_0_4"]  # main_head is carried over
    assert not out["x_0_4"].requires_grad and run.graphs == 0
    model.train()
    with pytest.raises(RuntimeError, match="eval"):
        run(x)


def test_cuda_graphs_on_cpu_are_refused():
    model = skipdsl.compile("unet", widths=TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(FastPathError, match="CUDA"):
        GraphedForward(model, x)
    forced = FastPath(option="cuda_graphs", device="cuda", cuda_graphs=True)  # built by hand
    with pytest.raises(FastPathError, match="CUDA"):
        FastInference(model, forced)(x)


def _static_pair(batch: int):
    """A fixed-shape 'graph' on CPU: replay() recomputes the outputs in place, like a CUDA
    graph replay does, and logs what the static input held."""
    weight = torch.randn(4, 2)
    static_in = torch.zeros(batch, 4)
    static_out = {"logits": torch.zeros(batch, 2), "pair": (torch.zeros(batch, 1),)}
    seen = []

    def f(x):
        return {"logits": x @ weight, "pair": (x.sum(1, keepdim=True),)}

    def replay():
        seen.append(static_in.clone())
        out = f(static_in)
        static_out["logits"].copy_(out["logits"])
        static_out["pair"][0].copy_(out["pair"][0])

    return static_in, static_out, replay, f, seen


def test_run_static_chunks_pads_and_copies():
    static_in, static_out, replay, f, seen = _static_pair(batch=4)
    x = torch.randn(10, 4)
    out = run_static(x, static_in, static_out, replay)
    ref = f(x)
    assert len(seen) == 3  # 4 + 4 + a padded 2
    assert torch.equal(seen[-1][2:], torch.zeros(2, 4)) and torch.equal(seen[-1][:2], x[8:])
    assert set(out) == {"logits", "pair"} and isinstance(out["pair"], tuple)
    assert torch.allclose(out["logits"], ref["logits"]) and out["logits"].shape == (10, 2)
    assert torch.allclose(out["pair"][0], ref["pair"][0])
    static_out["logits"].fill_(7)  # the next replay overwrites the buffers: results are copies
    assert torch.allclose(out["logits"], ref["logits"])
    small = run_static(x[:3], static_in, static_out, replay)
    assert small["logits"].shape == (3, 2) and torch.allclose(small["logits"], ref["logits"][:3])
    assert run_static(x[:0], static_in, static_out, replay)["logits"].shape == (0, 2)
    with pytest.raises(FastPathError, match="captured shape"):
        run_static(torch.randn(2, 5), static_in, static_out, replay)


# -- trainer --------------------------------------------------------------------------------


def _cfg(cache_dir, **kw):
    cfg = dict(model="unet", dataset="nuclei2d", n=12, epochs=1, widths=TINY, batch_size=4,
               cache_dir=cache_dir, threads=1, throughput_iters=1)
    cfg.update(kw)
    return cfg


def test_trainer_fast_path_precedence_and_legacy_keys():
    spec_on = skipdsl.load("unet").replace(fast="on")
    base = {"model": "unet", "dataset": "nuclei2d"}
    assert fast_path(resolve_config(base), spec_on, "cuda").applied == PARTS  # the spec's
    off = fast_path(resolve_config({**base, "fast": "off"}), spec_on, "cuda")
    assert off.applied == ("bf16", "channels_last")  # amp/channels_last 'auto' on CUDA, as before
    assert fast_path(resolve_config(base), skipdsl.load("unet"), "cpu").applied == ()
    # on the CPU 'auto' adds channels_last for 2D data, not for 3D (docs/speed.md)
    unet = skipdsl.load("unet")
    assert fast_path(resolve_config(base), unet, "cpu", 2).applied == ("channels_last",)
    assert fast_path(resolve_config(base), unet, "cpu", 3).applied == ()
    assert fast_path(resolve_config({**base, "channels_last": False}), unet, "cpu", 2).applied == ()
    no_amp = fast_path(resolve_config({**base, "amp": False}), spec_on, "cuda")
    assert not no_amp.bf16 and no_amp.skipped["bf16"] == "amp: false in the config"
    forced = fast_path(resolve_config({**base, "amp": True, "fast": "on"}), spec_on, "cpu")
    assert forced.applied == ("bf16",) and "bf16" not in forced.skipped
    with pytest.raises(ValueError, match="unknown fast-path part"):
        resolve_config({**base, "fast": "turbo"})


def test_trainer_runs_fast_on_cpu_and_records_what_it_applied(cache_dir):
    r = train_and_evaluate(_cfg(cache_dir, fast="on"))
    assert r["status"] == "ok", r["reason"]
    # 'on' applies no part on the CPU; the trainer's channels_last: auto adds it in 2D
    assert r["fast"] == "channels_last" and r["config"]["fast"] == "on"
    assert all(f"{p}: " in r["fast_skipped"] for p in PARTS if p != "channels_last")
    assert r["images_per_s"] > 0 and 0 <= r["iou"] <= 1


def test_trainer_spec_fast_with_deep_supervision_and_pruning(cache_dir):
    spec = skipdsl.load("unetpp").to_dict()
    spec["fast"] = "channels_last,cuda_graphs"
    r = train_and_evaluate(_cfg(cache_dir, model=spec, deep_supervision=True))
    assert r["status"] == "ok", r["reason"]
    assert r["fast"] == "channels_last"
    assert r["fast_skipped"] == "cuda_graphs: needs a CUDA device"
    assert r["pruning"] and all(p["images_per_s"] > 0 for p in r["pruning"])
    assert r["spec_hash"] == skipdsl.spec_hash("unetpp")  # running fast is the same network


# -- command lines --------------------------------------------------------------------------


def test_bench_run_fast_overrides_the_spec(tmp_path, cache_dir, capsys):
    from skipdsl.bench import cli

    spec = skipdsl.load("unet").replace(fast="channels_last,cuda_graphs")
    path = tmp_path / "unet_cl.yaml"
    path.write_text(spec.to_yaml())
    common = ["run", "--backend", "local", "--models", str(path), "--datasets", "nuclei2d",
              "--epochs", "1", "--n", "12", "--widths", "4,8,16,32,64", "--batch-size", "4",
              "--cache-dir", cache_dir, "--no-progress", "--no-report"]
    results = {}
    for name, extra in (("spec", []), ("cli", ["--fast", "off"])):
        out = tmp_path / name
        assert cli.main(common + ["--out", str(out)] + extra) == 0
        (result,) = [json.loads(p.read_text()) for p in out.glob("trials/*/result.json")]
        results[name] = result
    # the spec asks for cuda_graphs too (skipped on the CPU); --fast off asks for nothing, and
    # channels_last comes from the trainer's channels_last: auto (2D on the CPU) in both
    assert results["spec"]["fast"] == results["cli"]["fast"] == "channels_last"
    assert results["spec"]["fast_skipped"] == "cuda_graphs: needs a CUDA device"
    assert results["cli"]["fast_skipped"] == "" and results["cli"]["config"]["fast"] == "off"
    assert results["spec"]["trial_key"] == results["cli"]["trial_key"]  # same trial, run faster
    assert cli.build_parser().parse_args(["run", "--fast"]).fast == "on"
    assert cli.build_parser().parse_args(["run"]).fast is None
    assert cli.main(common + ["--out", str(tmp_path / "x"), "--fast", "turbo"]) == 2
    assert "unknown fast-path part 'turbo'" in capsys.readouterr().err


def test_search_run_fast_reaches_the_trainer_config(tmp_path, monkeypatch):
    from skipdsl.search import cli, runner
    from skipdsl.search.study import SearchSummary

    seen = {}

    def fake_run_search(**kw):  # the search itself is tested elsewhere: only the wiring here
        seen.update(kw)
        return SearchSummary(study_name="s", storage="sqlite://")

    monkeypatch.setattr(runner, "run_search", fake_run_search)
    argv = ["run", "--dataset", "nuclei2d", "--trials", "1", "--out", str(tmp_path)]
    assert cli.main(argv + ["--fast"]) == 0
    assert seen["overrides"]["fast"] == "on"
    assert cli.main(argv + ["--fast", "Compile,bf16"]) == 0
    assert seen["overrides"]["fast"] == "bf16,compile"
    assert cli.main(argv) == 0 and seen["overrides"]["fast"] is None
    assert cli.main(argv + ["--fast", "cuda-graph"]) == 2


def test_speed_fast_names_every_part_and_treats_both_models_alike(tmp_path):
    """The race (benchmarks/speed.py over skipdsl.bench.speed) gives both models the same
    fast path."""
    pytest.importorskip("rich")
    from benchmarks import speed

    args = speed.parse_args(["--models", "unet", "--device", "cpu", "--fast"])
    assert args.fast_path.applied == ("channels_last", "compile")  # as before: compile on CPU
    assert set(args.fast_path.skipped) == {"bf16", "cuda_graphs"}
    out = tmp_path / "speed.md"
    argv = ["--models", "unet", "--device", "cpu", "--size", "16", "--batch", "2",
            "--widths", "4,8,16,32,64", "--iters", "1", "--reps", "1", "--warmup", "1",
            "--skip-memory", "--fast", "channels_last,cuda_graphs", "--out", str(out)]
    assert speed.main(argv) == 0
    text = out.read_text()
    assert "- fast path: channels_last (skipped: cuda_graphs: needs a CUDA device)" in text
    assert "fast rel diff" in text and "unet compiled 0.0e+00, hand 0.0e+00" in text
    args = speed.parse_args(argv)
    runners = [speed.Runner(m, args) for m in speed.build_pair("unet", args)[0].values()]
    weights = [dict(r.module.named_parameters())["x_0_0.0.conv.weight"] for r in runners]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert all(isinstance(r.infer, FastInference) and r.infer.fast is args.fast_path
               for r in runners)


# -- torch.compile on CPU (the inductor's C++ build: tens of seconds) -----------------------


@pytest.mark.slow
def test_compiled_inference_matches_eager_on_cpu():
    data = skipdsl.load("unet").to_dict()
    data.update(name="unet3", grid={"depth": 3, "widths": [4, 8, 16]}, heads=[{"node": "x_0_2"}])
    torch.manual_seed(0)
    model = skipdsl.compile(from_dict(data)).eval()
    fp = FastPath.resolve("compile", "cpu")
    assert fp.applied == ("compile",)
    run = FastInference(model, fp)
    x = torch.randn(2, 3, 32, 32)
    out = run(x)
    with torch.no_grad():
        ref = model(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert run._fn is not model  # it did go through torch.compile
