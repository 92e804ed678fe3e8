"""`sharekan._core` int8 quantisation and code bit-packing against the NumPy oracle."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
from hypothesis import given
from hypothesis import strategies as st

core = pytest.importorskip("sharekan._core")
errors = pytest.importorskip("sharekan.errors")


@given(
    seed=st.integers(0, 2**32 - 1),
    axis=st.sampled_from([0, 1]),
    rows=st.integers(1, 9),
    cols=st.integers(1, 9),
    zero_frac=st.sampled_from([0.0, 0.3]),
)
def test_quantize_matches_oracle_and_error_bound(seed, axis, rows, cols, zero_frac):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, cols)) * 10.0 ** rng.uniform(-6, 4, size=(rows, 1))
    x[rng.uniform(size=x.shape) < zero_frac] = 0.0
    if rng.uniform() < 0.3:
        x[0] = 0.0  # an all-zero row (scale 0 on axis=0)
    before = x.copy()
    q, s = core.quantize_i8(x, axis)
    np.testing.assert_array_equal(x, before)
    assert q.dtype == np.int8 and q.shape == x.shape
    assert s.dtype == np.float32 and s.shape == ((rows,) if axis == 0 else (cols,))
    q_o, s_o = oracle.quantize_i8(x, axis)
    np.testing.assert_array_equal(s, s_o)
    # identical except possibly exact .5 ties
    assert np.all(np.abs(q.astype(int) - q_o.astype(int)) <= 1)
    np.testing.assert_array_equal(q, q_o)
    assert np.all(np.abs(q.astype(int)) <= 127)
    sb = s.astype(np.float64)[:, None] if axis == 0 else s.astype(np.float64)[None, :]
    assert np.all(np.abs(x - q * sb) <= sb / 2 + 1e-12 * np.abs(x))
    assert np.all(q[np.broadcast_to(sb, x.shape) == 0] == 0)


def test_quantize_extremes_hit_127():
    x = np.array([[3.0, -1.5, 0.0], [-2.0, 0.5, 1.0]])
    q, s = core.quantize_i8(x, 0)
    np.testing.assert_array_equal(q[:, 0], [127, -127])
    np.testing.assert_array_equal(s, np.float32([3.0 / 127, 2.0 / 127]))
    q, s = core.quantize_i8(x, 1)
    np.testing.assert_array_equal(s, np.float32([3.0 / 127, 1.5 / 127, 1.0 / 127]))
    np.testing.assert_array_equal(q[:, 2], [0, 127])
    assert q[0, 1] == -127
    z = np.array([[0.0, 1.0], [0.0, -4.0]])
    q, s = core.quantize_i8(z, 1)
    np.testing.assert_array_equal(s, np.float32([0.0, 4.0 / 127]))
    np.testing.assert_array_equal(q, [[0, 32], [0, -127]])
    q, s = core.quantize_i8(z.T.copy(), 0)
    np.testing.assert_array_equal(s, np.float32([0.0, 4.0 / 127]))


def test_quantize_tiny_and_huge_values():
    x = np.array([[1e-300, -2e-300, 0.0], [1e-40, 3e-39, 0.0], [0.0, 0.0, 0.0]])
    q, s = core.quantize_i8(x, 0)
    q_o, s_o = oracle.quantize_i8(x, 0)
    np.testing.assert_array_equal(s, s_o)
    np.testing.assert_array_equal(q, q_o)
    assert s[0] > 0 and s[2] == 0
    sb = s.astype(np.float64)[:, None]
    assert np.all(np.abs(x - q * sb) <= sb / 2)
    with pytest.raises(errors.InvalidInputError, match="x"):
        core.quantize_i8(np.array([[1e300, 1.0]]), 0)


def test_quantize_bad_input():
    x = np.ones((3, 4))
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[1, 2] = bad
        with pytest.raises(errors.NonFiniteError):
            core.quantize_i8(y, 0)
    with pytest.raises(errors.InvalidInputError, match="axis"):
        core.quantize_i8(x, 2)
    # empty input: refused, or the (well-defined) empty result
    for shape, axis, n_scales in [((0, 4), 0, 0), ((0, 4), 1, 4), ((4, 0), 0, 4)]:
        try:
            q, s = core.quantize_i8(np.zeros(shape), axis)
        except errors.ShapeError:
            continue
        assert q.shape == shape and q.dtype == np.int8
        np.testing.assert_array_equal(s, np.zeros(n_scales, np.float32))
    with pytest.raises(errors.DTypeError, match="x"):
        core.quantize_i8(x.astype(np.float32), 0)
    with pytest.raises(errors.InvalidInputError, match="contiguous"):
        core.quantize_i8(np.ones((4, 6))[:, ::2], 0)


def test_bits_for():
    for k in list(range(1, 70)) + [255, 256, 257, 4095, 4096, 4097, 2**20, 2**31]:
        assert core.bits_for(k) == oracle.bits_for(k), k
    with pytest.raises(errors.InvalidInputError):
        core.bits_for(0)


@given(seed=st.integers(0, 2**32 - 1), bits=st.integers(1, 32), n=st.integers(0, 70))
def test_pack_matches_oracle_and_round_trips(seed, bits, n):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**bits, size=n, dtype=np.uint64).astype(np.uint32)
    before = codes.copy()
    packed = core.pack_codes(codes, bits)
    np.testing.assert_array_equal(codes, before)
    assert packed.dtype == np.uint8
    np.testing.assert_array_equal(packed, oracle.pack_codes(codes, bits))
    out = core.unpack_codes(packed, bits, n)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, codes)


def test_pack_known_bytes_and_zero_bits():
    np.testing.assert_array_equal(core.pack_codes(np.array([1, 2, 3], np.uint32), 2), [57])
    np.testing.assert_array_equal(core.pack_codes(np.array([0x1FF], np.uint32), 9), [0xFF, 1])
    assert core.pack_codes(np.zeros(5, np.uint32), 0).shape == (0,)
    np.testing.assert_array_equal(core.unpack_codes(np.zeros(0, np.uint8), 0, 5), np.zeros(5))


def test_pack_bad_input():
    with pytest.raises(errors.CodeRangeError, match="codes"):
        core.pack_codes(np.array([0, 4, 1], np.uint32), 2)
    with pytest.raises(errors.CodeRangeError):
        core.pack_codes(np.array([1], np.uint32), 0)
    with pytest.raises(errors.InvalidInputError):
        core.pack_codes(np.array([1], np.uint32), 33)
    with pytest.raises((errors.InvalidInputError, errors.ArtifactError)):
        core.unpack_codes(np.zeros(2, np.uint8), 3, 6)  # needs 3 bytes
    with pytest.raises(errors.InvalidInputError):
        core.unpack_codes(np.zeros(2, np.uint8), 33, 1)
    with pytest.raises(errors.DTypeError, match="codes"):
        core.pack_codes(np.array([1, 2], np.int64), 2)
    with pytest.raises(errors.InvalidInputError, match="contiguous"):
        core.pack_codes(np.arange(6, dtype=np.uint32)[::2], 3)


def test_quantize_sym_low_bits_and_nibbles():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 40))
    q8, s8 = core.quantize_sym(x, 0, 8)
    q, s = core.quantize_i8(x, 0)
    np.testing.assert_array_equal(q8, q)
    np.testing.assert_array_equal(s8, s)
    q4, s4 = core.quantize_sym(x, 1, 4)
    assert q4.dtype == np.int8 and np.abs(q4).max() <= 7 and s4.shape == (40,)
    # least-squares clipping: never worse than the max-abs scale per column
    err = ((x - q4 * s4) ** 2).sum(0)
    smax = (np.abs(x).max(0) / 7).astype(np.float32)
    err_max = ((x - np.clip(np.round(x / smax), -7, 7) * smax) ** 2).sum(0)
    assert (err <= err_max * (1 + 1e-6)).all()
    packed = core.pack_nibbles(q4.reshape(-1).copy())
    assert packed.nbytes == q4.size // 2
    np.testing.assert_array_equal(core.unpack_nibbles(packed, q4.size).reshape(q4.shape), q4)
    with pytest.raises(errors.InvalidInputError, match="bits"):
        core.quantize_sym(x, 0, 9)
    with pytest.raises(errors.InvalidInputError, match="4 bits"):
        core.pack_nibbles(np.array([1, 9], dtype=np.int8))
    with pytest.raises(errors.ShapeError):
        core.unpack_nibbles(np.zeros(1, np.uint8), 3)
