"""The encoder backbone as a search dimension: ``backbone: [none, resnet34, vgg16_bn]`` in a
space file; a space without the key samples, hashes and fingerprints as before."""
from __future__ import annotations

import pytest
import torch

import skipdsl
from conftest import RandomTrial
from skipdsl import SpecError
from skipdsl.search.space import load_space, loads_space

SPACE = """\
name: bb
fixed:
  dims: 2
  in_channels: 3
  num_classes: 1
  defaults:
    block: {type: conv, repeats: 1, kernel: 3, norm: batch, act: relu}
depth: [4, 5]
widths: {base: 4}
nodes: diagonal
encoder_block: {repeats: [1, 2]}
edges:
  - {rule: skip}
  - {rule: up, optional: false}
backbone: [none, resnet34, vgg16_bn]
"""


@pytest.fixture(scope="module")
def bb():
    return loads_space(SPACE, source="bb.yaml")


def test_backbone_is_a_dimension_sampled_with_every_choice(bb):
    assert dict(bb.dimensions())["backbone"] == ["none", "resnet34", "vgg16_bn"]
    assert bb.size() == 2 * 2 * (2 + 1 + 1)  # depth x skip x (none with 2 enc repeats, 2 nets)
    seen = {}
    for seed in range(30):
        t = RandomTrial(seed)
        point = bb.suggest(t)
        assert "backbone" in t.params  # a trial parameter (three choices)
        spec = bb.build(point, name=f"s{seed}")
        if point["backbone"] == "none":
            assert "enc_repeats" in point and spec.encoder.backbone is None
            assert spec.encoder.block == {"repeats": point["enc_repeats"]}
        else:  # the backbone fixes the encoder: no encoder-block parameter is asked for
            assert "enc_repeats" not in point and "enc_repeats" not in t.params
            assert spec.encoder.backbone == point["backbone"]
            assert spec.encoder.weights == "none" and spec.encoder.block is None
        # written out and read back (as a Pareto spec is), it keeps the encoder
        again = skipdsl.loads(spec.to_yaml())
        assert again.encoder == spec.encoder
        assert skipdsl.spec_hash(again) == skipdsl.spec_hash(spec)
        # and it is the point of the space it came from
        assert bb.build(bb.point_of(spec), name=f"s{seed}").to_dict() == spec.to_dict()
        seen.setdefault(point["backbone"], spec)
    assert set(seen) == {"none", "resnet34", "vgg16_bn"}
    # one sample of each choice compiles through the one compiler and runs at 32x32
    for name, spec in seen.items():
        model = skipdsl.compile(spec).eval()
        with torch.no_grad():
            y = model(torch.randn(1, 3, 32, 32))
        assert y.shape == (1, 1, 32, 32), name
        assert torch.isfinite(y).all()
        if name != "none":  # the decoder takes the stages' channels: x_1_0 is stage 1's
            g = skipdsl.graph(spec)
            from skipdsl.backbones import BACKBONES
            assert g.nodes["x_1_0"]["width"] == BACKBONES.get(name).channels[1]


def test_search_prepares_a_backbone_point_with_scaled_decoder_widths(bb):
    from skipdsl.search.objective import SearchConfig, prepare

    point = {"depth": 4, "backbone": "resnet34", "edge_skip": "on"}
    cfg = SearchConfig(dataset="nuclei2d", width_scale=0.5)
    prep = prepare(bb, point, cfg, check_cost=False)
    assert prep.spec.encoder.backbone == "resnet34" and prep.spec.widths == [2, 4, 8, 16]
    assert prep.point["backbone"] == "resnet34" and "enc_repeats" not in prep.point
    none = prepare(bb, dict(point, backbone="none"), cfg, check_cost=False)
    assert none.hash != prep.hash


def test_a_space_without_the_key_is_unchanged():
    space = load_space()
    assert "backbone" not in dict(space.dimensions())
    assert space.fingerprint() == "dc314167be8f564e"  # as before the backbone key existed
    data = space.model_dump(mode="json", by_alias=True)
    data["backbone"] = "none"  # one fixed choice: not a trial parameter, the same networks
    fixed_none = type(space).model_validate(data)
    for seed in range(15):
        a, b = RandomTrial(seed), RandomTrial(seed)
        pa, pb = space.suggest(a), fixed_none.suggest(b)
        assert "backbone" not in pa and a.params == b.params
        assert {k: v for k, v in pb.items() if k != "backbone"} == pa
        try:
            sa = space.build(pa)
        except SpecError:
            continue
        assert sa.encoder.backbone is None
        assert skipdsl.spec_hash(sa) == skipdsl.spec_hash(fixed_none.build(pb))
    with pytest.raises(SpecError, match="backbone 'resnet34' is not a choice"):
        space.point_of(skipdsl.load("unet").with_backbone("resnet34"))


@pytest.mark.parametrize("extra, match", [
    ("backbone: [none, resnt34]\n",
     r"bb\.yaml:15: .*unknown backbone 'resnt34'; did you mean 'resnet34'\? "
     r"valid: none, resnet101, resnet34, resnet50, vgg16_bn"),
    ("backbone:\n  - none\n  - vgg16\n",
     r"bb\.yaml:15: .*unknown backbone 'vgg16'.*valid: none, resnet101, resnet34, resnet50, "
     r"vgg16_bn"),
    ("backbone: []\n", r"bb\.yaml:15: .*valid: none, resnet101"),
    ("backbone: [resnet34, resnet34]\n", "listed twice"),
])
def test_bad_backbone_in_a_space_file_names_the_line_and_the_valid_names(extra, match):
    text = SPACE.replace("backbone: [none, resnet34, vgg16_bn]\n", "") + extra
    with pytest.raises(SpecError, match=match):
        loads_space(text, source="bb.yaml")


@pytest.mark.parametrize("old, new, match", [
    ("depth: [4, 5]", "depth: [4, 6]", r"bb\.yaml:15: .*resnet34 has 5 stages but depth can be 6"),
    ("dims: 2", "dims: 3", r"bb\.yaml:15: .*2D torchvision networks only.*fixed\.dims is 3"),
])
def test_space_constraints_that_conflict_with_a_backbone(old, new, match):
    with pytest.raises(SpecError, match=match):
        loads_space(SPACE.replace(old, new), source="bb.yaml")
    # without a named backbone the same space is fine
    loads_space(SPACE.replace(old, new).replace("[none, resnet34, vgg16_bn]", "none"),
                source="bb.yaml")
