"""Property test: random and mutated specs into the loader and validator; only SpecError
ever comes out (never a KeyError, TypeError, pydantic or networkx error)."""
import copy

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

import skipdsl
from skipdsl import SpecError
from skipdsl.spec import from_dict, loads

ZOO = {name: skipdsl.load(name).to_dict() for name in skipdsl.spec.zoo_names()}
NODE_NAMES = [f"x_{i}_{j}" for i in range(7) for j in range(7)] + ["x_1", "input", "x_-1_0"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 2000), st.floats(-10, 10), st.just(float("nan")),
    st.text(max_size=12), st.sampled_from(NODE_NAMES),
    st.sampled_from(["dense", "up", "fullscale_up", "concat", "sum", "batch", "relu", "triangle",
                     "diagonal", "maxpool", "bilinear", "transposed", "conv", "pool"]),
)
values = st.recursive(scalars, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)), max_leaves=8)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_specs(draw):
    spec = copy.deepcopy(ZOO[draw(st.sampled_from(sorted(ZOO)))])
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(spec) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = spec
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["delete", "replace", "rename", "add_edge", "add_key"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = parent.pop(path[-1])
        elif action == "add_edge" and isinstance(spec.get("edges"), list):
            spec["edges"].append({"from": draw(st.sampled_from(NODE_NAMES)),
                                  "to": draw(st.sampled_from(NODE_NAMES))})
        elif action == "add_key" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(values)
    return spec


def _check(spec_dict):
    try:
        skipdsl.graph(from_dict(spec_dict, source="fuzz.yaml"))
    except SpecError as e:
        assert str(e)  # a message, located where possible


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated_specs())
def test_mutated_specs_only_raise_spec_error(spec):
    _check(spec)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(values)
def test_random_documents_only_raise_spec_error(doc):
    _check(doc if isinstance(doc, dict) else {"name": "x", "grid": doc})


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=200))
def test_random_yaml_text_only_raises_spec_error(text):
    try:
        skipdsl.graph(loads(text, source="fuzz.yaml"))
    except SpecError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(ZOO)), st.data())
def test_truncated_zoo_yaml_only_raises_spec_error(name, data):
    text = yaml.safe_dump(ZOO[name], sort_keys=False)
    cut = data.draw(st.integers(0, len(text)))
    try:
        skipdsl.graph(loads(text[:cut], source=f"{name}.yaml"))
    except SpecError:
        pass


big_numbers = st.one_of(st.integers(1, 10**7), st.just(10**6), st.floats(0.0, 1e300),
                        st.just(float("inf")), st.just(float("nan")), st.integers(-10**6, 0))


@st.composite
def resized_specs(draw):
    """A zoo spec with one of its sizes (widths, growth, multipliers, projection or node
    channels, kernels, repeats) replaced by a huge, tiny, infinite or negative number."""
    spec = copy.deepcopy(ZOO[draw(st.sampled_from(sorted(ZOO)))])
    sizes = [p for p in _paths(spec) if p and p[-1] in
             ("widths", "base", "growth", "multipliers", "channels", "width", "kernel",
              "repeats") or (len(p) > 1 and p[-2] in ("widths", "multipliers"))]
    path = draw(st.sampled_from(sizes))
    parent = spec
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = draw(big_numbers)
    return spec


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(resized_specs())
def test_absurd_sizes_raise_spec_error_before_allocation(spec):
    """Sizes that overflow or would need terabytes give a SpecError (never an OverflowError or
    an allocator error): compiled on the meta device, so a miss costs no memory here."""
    import torch

    try:
        with torch.device("meta"):
            skipdsl.compile(from_dict(spec, source="fuzz.yaml"))
    except SpecError as e:
        assert str(e)
