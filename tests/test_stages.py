"""Residual gain-shape stages and the byte budget (`sharekan.stages`): the compiler, the
stored form (dense and sparse stages), the Rust evaluator against a float64 oracle, and
crafted artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sharekan
from kan_fixtures import dense_forward, efficient_kan_state_dict
from sharekan import _core
from sharekan.artifact import seal, write
from sharekan.errors import ArtifactError, InvalidInputError
from sharekan.layouts import detect_layout
from sharekan.stages import stored_spline_bits

WIDTHS = [24, 16, 6]  # 384 and 96 edges


@pytest.fixture(scope="module")
def sd():
    return efficient_kan_state_dict(np.random.default_rng(11), WIDTHS, grid_size=5, k=3)


@pytest.fixture(scope="module")
def sources(sd):
    return detect_layout(sd).extract(sd).layers


def _function_sqnr(model, sources) -> list[float]:
    out = []
    for src in sources:
        gram = src.basis.gram()
        c = src.coeffs
        e = c - model.layers[src.name].decoded_coeffs()
        out.append(10 * np.log10(np.einsum("iom,mn,ion->", c, gram, c)
                                 / np.einsum("iom,mn,ion->", e, gram, e)))
    return out


def _oracle_coeffs(layer) -> np.ndarray:
    """Decoded coefficients from the stored fields, in float64, stage by stage."""
    scale = layer.gain_scale.astype(np.float64) if layer.gains.dtype == np.int8 else 1.0
    out = (layer.gains * scale)[..., None] * layer.codebook.astype(np.float64)[layer.codes]
    out += layer.edge_biases()[..., None]
    for stage in layer.stages:
        s_scale = stage.gain_scale.astype(np.float64) if stage.gains.dtype == np.int8 else 1.0
        out += (stage.gains * s_scale)[..., None] * stage.codebook.astype(np.float64)[stage.codes]
    return out


def test_more_stages_lower_the_error(sd, sources):
    sqnr = [_function_sqnr(sharekan.compress(sd, codebook_size=8, stages=s), sources)
            for s in (1, 2, 3)]
    for layer in range(len(sources)):
        assert sqnr[0][layer] < sqnr[1][layer] < sqnr[2][layer], sqnr


@pytest.mark.parametrize("kwargs", [
    {"stages": 3, "codebook_size": 8},
    {"stages": 2, "codebook_size": 8, "stage_codebook_size": 4, "int8": False},
    # folding is exact while inputs stay inside the grid: layer 0's inputs do
    {"stages": 3, "codebook_size": 8, "gain_bits": 4, "bias": "edge",
     "overrides": {"layers.0": {"bias": "fold"}}},
    {"stages": 3, "codebook_size": 8, "bias": "edge", "target_bytes_per_edge": 4.5,
     "drop_edges": True},
    {"stages": 3, "codebook_size": 8, "bias": "edge", "target_bytes_per_edge": 5.0},
    {"stages": 2, "codebook_size": 8, "share": "model"},
])
def test_evaluator_and_round_trip_match_the_oracle(sd, tmp_path, kwargs):
    model = sharekan.compress(sd, **kwargs)
    assert model.layers["layers.0"].stages
    for layer in model.layers.values():
        if "target_bytes_per_edge" in kwargs:  # a budget may leave a stage too few edges
            assert len(layer.stages) <= kwargs["stages"] - 1
        else:
            assert len(layer.stages) == kwargs["stages"] - 1
        np.testing.assert_allclose(layer.decoded_coeffs(), _oracle_coeffs(layer), rtol=1e-12,
                                   atol=1e-12)
        if "stage_codebook_size" in kwargs:
            assert all(s.codebook_size == kwargs["stage_codebook_size"] for s in layer.stages)
    x = np.random.default_rng(0).uniform(-0.9, 0.9, size=(7, WIDTHS[0])).astype(np.float32)
    y = model.forward(x)
    # the rebuilt dense checkpoint (every stage decoded) through the dense float64 forward
    np.testing.assert_allclose(y, dense_forward(model.decompress(), x.astype(np.float64)),
                               rtol=1e-4, atol=1e-4)
    for entropy in (None, "zstd"):
        path = tmp_path / f"m_{entropy}.sharekan"
        model.save(path, entropy=entropy)
        again = sharekan.load(path)
        np.testing.assert_array_equal(again.forward(x), y)
        for name, layer in model.layers.items():
            np.testing.assert_array_equal(again.layers[name].decoded_coeffs(),
                                          layer.decoded_coeffs())


def test_same_seed_same_bytes(sd, tmp_path):
    paths = []
    for run in range(2):
        model = sharekan.compress(sd, codebook_size=8, stages=3, target_bytes_per_edge=5.0)
        paths.append(tmp_path / f"run{run}.sharekan")
        model.save(paths[-1])
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_budget_drops_edges_and_stores_sparse_stages(sd, sources, tmp_path):
    sizes, sqnrs = [], []
    for budget in (2.0, 3.0, 4.5):
        model = sharekan.compress(sd, codebook_size=8, stages=3, bias="edge",
                                  target_bytes_per_edge=budget, drop_edges=True)
        # the budget holds on the bytes the entropy-coded artifact stores for the splines
        coded = sum(stored_spline_bits(layer) for layer in model.layers.values())
        assert coded <= 8 * budget * sum(a * b for a, b in zip(WIDTHS, WIDTHS[1:]))
        path = tmp_path / f"b{budget}.sharekan"
        model.save(path, entropy="zstd")
        sizes.append(path.stat().st_size)
        sqnrs.append(np.mean(_function_sqnr(model, sources)))
        if budget == 4.5:
            layer = model.layers["layers.0"]
            dropped = layer.gains == 0
            assert dropped.any() and not dropped.all()
            assert not layer.codes[dropped].any() and not layer.edge_bias[dropped].any()
            stored = layer.stored_tensors()
            assert "active" in stored and "s1_active" in stored
            for stage in layer.stages:  # a stage codes a subset of the edges before it
                assert not (stage.active() & dropped).any()
    assert sizes[0] < sizes[1] < sizes[2]
    assert sqnrs[0] < sqnrs[1] < sqnrs[2]


def test_budget_is_spent_on_the_edges_that_matter():
    """Two layers, one with 100x the energy of the other's edges half: under a tight budget
    the strong edges keep more stages than the weak ones."""
    rng = np.random.default_rng(3)
    sd = efficient_kan_state_dict(rng, [16, 12], grid_size=5, k=3, scaler=False)
    sd["layers.0.spline_weight"][:, :8] *= 10.0
    model = sharekan.compress(sd, codebook_size=8, stages=3, bias="edge",
                              target_bytes_per_edge=1.5, drop_edges=True)
    layer = model.layers["layers.0"]
    coded = (layer.gains != 0).astype(int) + sum(s.active().astype(int) for s in layer.stages)
    assert coded[:8].mean() > coded[8:].mean()


def test_budget_below_the_floor_is_refused(sd):
    with pytest.raises(InvalidInputError, match="floor.*every edge dropped"):
        sharekan.compress(sd, codebook_size=8, stages=2, target_bytes_per_edge=0.01,
                          drop_edges=True)
    with pytest.raises(InvalidInputError, match="floor.*first stage of every edge"):
        sharekan.compress(sd, codebook_size=8, stages=2, target_bytes_per_edge=1.0)


def test_without_drop_edges_the_first_stage_codes_every_edge(sd):
    dense = sharekan.compress(sd, codebook_size=8, stages=3, bias="edge")
    model = sharekan.compress(sd, codebook_size=8, stages=3, bias="edge",
                              target_bytes_per_edge=4.5)
    for name, layer in model.layers.items():
        np.testing.assert_array_equal(layer.gains, dense.layers[name].gains)
        coded = sum(int(s.active().sum()) for s in layer.stages)
        assert coded < sum(int(s.active().sum()) for s in dense.layers[name].stages)


@pytest.mark.parametrize("field,value", [
    ("stages", 0), ("stages", 9), ("stages", True), ("stages", 1.5),
    ("stage_codebook_size", 0), ("stage_codebook_size", 70000), ("stage_codebook_size", True),
    ("target_bytes_per_edge", 0), ("target_bytes_per_edge", -1.0),
    ("target_bytes_per_edge", True), ("target_bytes_per_edge", "1"), ("drop_edges", 1),
])
def test_bad_stage_options(field, value):
    with pytest.raises(InvalidInputError, match=field):
        sharekan.Config(**{field: value})


def test_budget_is_model_level_only():
    with pytest.raises(InvalidInputError, match="target_bytes_per_edge"):
        sharekan.Config(overrides={"layers.0": {"target_bytes_per_edge": 1.0}})
    cfg = sharekan.Config(overrides={"layers.0": {"stages": 3}})
    assert cfg.for_layer("layers.0").stages == 3 and cfg.for_layer("layers.1").stages == 1


def test_compensate_refits_the_first_stage_around_the_stages(sd):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(256, WIDTHS[0]))
    held = rng.uniform(-1, 1, size=(256, WIDTHS[0]))
    dense_y = dense_forward(sd, held)

    def error(model):
        return float(np.square(model.forward(held.astype(np.float32)) - dense_y).mean())

    plain = sharekan.compress(sd, codebook_size=8, stages=2, calibration=x)
    comp = sharekan.compress(sd, codebook_size=8, stages=2, calibration=x, compensate=True)
    for name, layer in comp.layers.items():  # the stages are kept as fitted
        for a, b in zip(layer.stages, plain.layers[name].stages):
            np.testing.assert_array_equal(a.gains, b.gains)
            np.testing.assert_array_equal(a.codes, b.codes)
    assert error(comp) < error(plain)


def test_output_metric_budget(sd):
    x = np.random.default_rng(0).uniform(-1, 1, size=(64, WIDTHS[0]))
    model = sharekan.compress(sd, codebook_size=8, stages=2, metric="output", calibration=x,
                              target_bytes_per_edge=2.0, drop_edges=True)
    y = model.forward(x.astype(np.float32))
    np.testing.assert_allclose(y, dense_forward(model.decompress(), x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- crafted files


@pytest.fixture(scope="module")
def staged(tmp_path_factory, sd):
    model = sharekan.compress(sd, codebook_size=8, stages=3, bias="edge",
                              target_bytes_per_edge=4.0, drop_edges=True)
    path = tmp_path_factory.mktemp("staged") / "m.sharekan"
    model.save(path)
    tensors, metadata = _core.load_safetensors(str(path))
    assert "layers.0.s1_active" in tensors and "layers.0.active" in tensors
    return dict(tensors), dict(metadata)


def _edit_stages(metadata, stages):
    layers = json.loads(metadata["layers"])
    layers[0]["stages"] = stages
    metadata["layers"] = json.dumps(layers)


def _fails(tmp_path, tensors, metadata, match):
    path = tmp_path / "crafted.sharekan"
    write(path, tensors, seal(tensors, metadata))
    with pytest.raises(ArtifactError, match=match):
        sharekan.load(path)


@pytest.mark.parametrize("stages,match", [
    ("two", "stages"),
    ([{"codebook_size": 8, "bits": 3}] * 9, "at most"),
    ([{"codebook_size": 8, "bits": 4}, {"codebook_size": 8, "bits": 3}], "bits=4"),
    ([{"codebook_size": 8}, {"codebook_size": 8, "bits": 3}], "codebook_size, bits"),
    ([{"codebook_size": 0, "bits": 0}, {"codebook_size": 8, "bits": 3}], "codebook_size"),
    ([{"codebook_size": 16, "bits": 4}, {"codebook_size": 8, "bits": 3}], "shape"),
    ([], "unknown field"),  # stage 2's tensors left over
])
def test_crafted_stage_metadata(staged, tmp_path, stages, match):
    tensors, metadata = dict(staged[0]), dict(staged[1])
    _edit_stages(metadata, stages)
    _fails(tmp_path, tensors, metadata, match)


def test_crafted_stage_tensors(staged, tmp_path):
    base_t, base_m = staged
    name = "layers.0.s1_"

    def edit(change, match):
        tensors = dict(base_t)
        change(tensors)
        _fails(tmp_path, tensors, dict(base_m), match)

    edit(lambda t: t.pop(name + "codes"), "missing")
    edit(lambda t: t.pop(name + "codebook_q"), "missing")
    edit(lambda t: t.update({name + "codes": t[name + "codes"][:-1]}), "shape")
    edit(lambda t: t.update({name + "gains_q": t[name + "gains_q"][:-1]}), "shape")
    edit(lambda t: t.update({name + "codebook_scale": np.full(8, np.nan, np.float32)}), "NaN")

    def flip_active(t):  # one more active edge: the codes no longer fit the map
        active = np.unpackbits(t[name + "active"], bitorder="little")
        active[np.flatnonzero(active == 0)[0]] = 1
        t[name + "active"] = np.packbits(active, bitorder="little")
    edit(flip_active, "shape")

    def pad_bit(t):  # a bit set past the last edge
        active = t[name + "active"].copy()
        edges = WIDTHS[0] * WIDTHS[1]
        if edges % 8:
            active[-1] |= np.uint8(1 << 7)
            t[name + "active"] = active
        else:
            t[name + "active"] = np.append(active, np.uint8(1))
    edit(pad_bit, "past the last edge|shape")

    def big_code(t):  # every stored code = 7 of K=8 is fine; 4-bit codes of 15 are not
        count = int(np.unpackbits(t[name + "active"], bitorder="little").sum())
        t[name + "codes"] = _core.pack_codes(np.full(count, 7, np.uint32), 3)
    tensors = dict(base_t)
    big_code(tensors)
    path = tmp_path / "ok.sharekan"
    write(path, tensors, seal(tensors, dict(base_m)))
    sharekan.load(path)  # in range: loads

    edit(lambda t: t.update({"layers.0.s9_codes": np.zeros(3, np.uint8)}), "unknown field")
