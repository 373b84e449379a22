"""Each class of validation error: a SpecError that names the place and says what to do."""
import textwrap

import pytest

import skipdsl
from skipdsl import SpecError

BASE = """\
name: t
grid:
  depth: 4
  widths: [4, 8, 16, 32]
nodes: triangle
edges:
  - rule: dense
  - rule: up
heads:
  - {node: x_0_3, main: true}
"""


def load_text(write_spec, text):
    return skipdsl.graph(skipdsl.load(str(write_spec(textwrap.dedent(text)))))


def test_base_is_valid(write_spec):
    g = load_text(write_spec, BASE)
    assert g.number_of_nodes() == 11  # input + 10 nodes of a depth-4 triangle
    assert g.edges["x_1_1", "x_0_2"]["factor"] == 2.0
    assert g.nodes["x_0_2"]["in_channels"] == 4 + 4 + 8


def test_yaml_syntax_error_has_line(write_spec):
    with pytest.raises(SpecError) as e:
        load_text(write_spec, BASE.replace("  depth: 4", "  depth: [4"))
    # the parser notices on line 4; the message also points at the bracket opened on line 3
    assert e.value.line == 4 and "YAML syntax error" in str(e.value)
    assert "started on line 3" in str(e.value)
    assert e.value.file.endswith("spec.yaml")


def test_unknown_key_did_you_mean_with_line(write_spec):
    with pytest.raises(SpecError) as e:
        load_text(write_spec, BASE.replace("nodes: triangle", "nodse: triangle"))
    assert e.value.line == 5
    assert "did you mean 'nodes'" in str(e.value)


def test_unknown_nested_key(write_spec):
    with pytest.raises(SpecError) as e:
        load_text(write_spec, BASE.replace("  depth: 4", "  depht: 4"))
    assert "did you mean 'depth'" in str(e.value) and e.value.line == 3


def test_unknown_rule_name(write_spec):
    with pytest.raises(SpecError) as e:
        load_text(write_spec, BASE.replace("rule: dense", "rule: dens"))
    assert "did you mean 'dense'" in str(e.value) and e.value.line == 7


@pytest.mark.parametrize("field,value,expect", [
    ("act", "reul", "did you mean 'relu'"),
    ("norm", "bach", "did you mean 'batch'"),
    ("type", "cnov", "did you mean 'conv'"),
])
def test_unknown_registry_names(write_spec, field, value, expect):
    text = BASE + f"defaults:\n  block: {{{field}: {value}}}\n"
    with pytest.raises(SpecError, match=expect):
        load_text(write_spec, text)


def test_widths_of_wrong_length(write_spec):
    with pytest.raises(SpecError, match="grid.widths has 3 entries but grid.depth is 4"):
        load_text(write_spec, BASE.replace("[4, 8, 16, 32]", "[4, 8, 16]"))


def test_depth_out_of_range(write_spec):
    with pytest.raises(SpecError) as e:
        load_text(write_spec, BASE.replace("depth: 4", "depth: 11"))
    assert "grid.depth" in str(e.value) and e.value.line == 3


def test_cycle(write_spec):
    text = BASE.replace("  - rule: up\n", "  - rule: up\n  - {from: x_0_2, to: x_0_1}\n")
    with pytest.raises(SpecError, match="cycle") as e:
        load_text(write_spec, text)
    assert e.value.edge is not None


def test_unreachable_node(write_spec):
    text = BASE.replace("  - rule: dense\n  - rule: up\n",
                        "  - {from: x_0_0, to: x_0_1}\n  - {from: x_0_1, to: x_0_3}\n")
    text = text.replace("nodes: triangle", "nodes: [x_0_0, x_1_0, x_2_0, x_3_0, x_0_1, x_1_1, x_0_3]")
    with pytest.raises(SpecError, match="unreachable") as e:
        load_text(write_spec, text)
    assert e.value.node == "x_1_1"


def test_node_not_reaching_a_head(write_spec):
    text = BASE.replace("  - {node: x_0_3, main: true}", "  - {node: x_0_1, main: true}")
    with pytest.raises(SpecError, match="does not reach any head") as e:
        load_text(write_spec, text)
    assert e.value.node and "hint" in str(e.value)


def test_edge_scale_does_not_fit(write_spec):
    text = BASE.replace("  - rule: up\n", "  - rule: up\n  - {from: x_2_0, to: x_0_3, scale: 2}\n")
    with pytest.raises(SpecError, match="scale does not fit") as e:
        load_text(write_spec, text)
    assert e.value.edge == ("x_2_0", "x_0_3") and "scale 4" in str(e.value)


def test_node_outside_grid(write_spec):
    text = BASE.replace("  - rule: up\n", "  - rule: up\n  - {from: x_2_0, to: x_1_3}\n")
    with pytest.raises(SpecError, match="outside the grid of depth 4"):
        load_text(write_spec, text)


def test_bad_node_id(write_spec):
    with pytest.raises(SpecError, match="not a node id"):
        load_text(write_spec, BASE.replace("node: x_0_3", "node: X03"))


def test_sum_aggregation_needs_equal_channels(write_spec):
    text = BASE + "decoder: {aggregate: sum}\n"
    with pytest.raises(SpecError, match="'sum' aggregation needs inputs of equal channels") as e:
        load_text(write_spec, text)
    assert "project" in str(e.value)
    # with projections to one width it is fine
    ok = text.replace("  - rule: dense\n  - rule: up\n",
                      "  - {rule: dense, project: {channels: 8}}\n"
                      "  - {rule: up, project: {channels: 8}}\n")
    assert load_text(write_spec, ok).nodes["x_0_1"]["in_channels"] == 8


def test_missing_required_key(write_spec):
    with pytest.raises(SpecError, match="missing required key 'grid'"):
        load_text(write_spec, "name: t\nheads: [{node: x_0_3}]\n")


def test_not_a_mapping(write_spec):
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_text(write_spec, "- a\n- b\n")


def test_unknown_zoo_name():
    with pytest.raises(SpecError, match="did you mean 'unetsharp'"):
        skipdsl.load("unetshrp")


def test_missing_encoder_node(write_spec):
    text = BASE.replace("nodes: triangle", "nodes: [x_0_0, x_1_0, x_2_0, x_0_1, x_0_3]")
    with pytest.raises(SpecError, match="x_3_0 are missing"):
        load_text(write_spec, text)


def test_two_main_heads(write_spec):
    text = BASE + "  - {node: x_0_2, main: true}\n"
    with pytest.raises(SpecError, match="more than one head has main"):
        load_text(write_spec, text)


def test_prune_errors():
    with pytest.raises(SpecError, match="compile with deep_supervision=True"):
        skipdsl.prune(skipdsl.compile("unetsharp", widths=4), 2)
    with pytest.raises(SpecError, match="no node x_0_1"):
        skipdsl.prune(skipdsl.compile("unet", widths=4, deep_supervision=True), 1)


def test_typo_in_explicit_edge_and_block(write_spec):
    text = BASE.replace("  - rule: up\n", "  - rule: up\n  - {form: x_2_0, to: x_0_3}\n")
    with pytest.raises(SpecError, match="did you mean 'from'") as e:
        load_text(write_spec, text)
    assert e.value.line == 9
    text = BASE + "defaults:\n  block: {repaets: 2}\n"
    with pytest.raises(SpecError, match="did you mean 'repeats'"):
        load_text(write_spec, text)
