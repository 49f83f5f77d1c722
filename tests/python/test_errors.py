"""Bad input raises ValueError/TypeError/RuntimeError carrying the C ABI's
message (which names the argument); nothing crashes. Plus the low-level _C
module on NumPy arrays, and the CPU thread setting."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import flashsdpa
from flashsdpa import _C


def t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def test_head_dim_mismatch_value_error():
    with pytest.raises(ValueError, match=r"k: head dim 32 differs from q's 16"):
        flashsdpa.flash_attn_func(t(1, 8, 2, 16), t(1, 8, 2, 32), t(1, 8, 2, 32))


def test_heads_not_multiple_value_error():
    with pytest.raises(ValueError, match=r"multiple of key/value heads"):
        flashsdpa.flash_attn_func(t(1, 8, 3, 16), t(1, 8, 2, 16), t(1, 8, 2, 16))
    with pytest.raises(ValueError, match=r"multiple of key/value heads"):
        flashsdpa.scaled_dot_product_attention(t(1, 3, 8, 16), t(1, 2, 8, 16), t(1, 2, 8, 16),
                                               enable_gqa=True)


def test_gqa_without_enable_gqa_value_error():
    with pytest.raises(ValueError, match="enable_gqa"):
        flashsdpa.scaled_dot_product_attention(t(1, 4, 8, 16), t(1, 2, 8, 16), t(1, 2, 8, 16))


def test_float64_type_error():
    x = t(1, 2, 8, 16, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        flashsdpa.flash_attn_func(x, x, x)
    with pytest.raises(TypeError, match="float64"):
        flashsdpa.scaled_dot_product_attention(x, x, x)


def test_mixed_dtypes_type_error():
    with pytest.raises(TypeError, match=r"v: dtype float16 differs from q's float32"):
        flashsdpa.flash_attn_func(t(1, 8, 2, 16), t(1, 8, 2, 16), t(1, 8, 2, 16).half())


def test_head_dim_too_large():
    x = t(1, 4, 1, 300)
    with pytest.raises(ValueError, match=r"head dim 300 is outside 1..256"):
        flashsdpa.flash_attn_func(x, x, x)


def test_nonfinite_input_value_error():
    q = t(1, 8, 2, 16)
    q[0, 3, 1, 5] = float("nan")
    with pytest.raises(ValueError, match=r"q: contains a non-finite value"):
        flashsdpa.flash_attn_func(q, t(1, 8, 2, 16), t(1, 8, 2, 16))


def test_patched_sdpa_propagates_nan_like_pytorch():
    q = t(1, 2, 8, 16)
    q[0, 0, 3, 0] = float("nan")
    with flashsdpa.enabled():
        out = torch.nn.functional.scaled_dot_product_attention(q, q.clone(), q.clone())
    assert flashsdpa.stats()["dispatched"] == 1
    assert torch.isnan(out[0, 0]).any() and torch.isfinite(out[0, 1]).all()


def test_bad_window_and_softcap():
    x = t(1, 8, 2, 16)
    with pytest.raises(ValueError, match=r"softcap: must be >= 0"):
        flashsdpa.flash_attn_func(x, x, x, softcap=-1.0)
    with pytest.raises(ValueError, match=r"dropout_p: .* outside \[0, 1\)"):
        flashsdpa.flash_attn_func(x, x, x, dropout_p=1.5)


def test_bad_mask_shape_and_dtype():
    q = t(2, 2, 8, 16)
    with pytest.raises(ValueError, match=r"mask: size 5 of dim .* not broadcastable"):
        flashsdpa.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(5, 8, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"attn_mask: dtype torch.int64"):
        flashsdpa.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="mutually exclusive"):
        flashsdpa.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(8, 8, dtype=torch.bool),
                                               is_causal=True)


def test_float_mask_requiring_grad_is_refused():
    q = t(1, 2, 8, 16)
    m = torch.zeros(8, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="requires grad"):
        flashsdpa.scaled_dot_product_attention(q, q, q, attn_mask=m)
    with torch.no_grad():  # no gradient wanted: fine
        flashsdpa.scaled_dot_product_attention(q, q, q, attn_mask=m)


def test_rank_errors():
    with pytest.raises(ValueError, match="expected rank 4"):
        flashsdpa.flash_attn_func(t(8, 2, 16), t(8, 2, 16), t(8, 2, 16))
    with pytest.raises(ValueError, match="3-D or 4-D"):
        x = t(1, 1, 2, 8, 16)
        flashsdpa.scaled_dot_product_attention(x, x, x)


def test_varlen_bad_cu_seqlens():
    q = t(10, 2, 16)
    good = torch.tensor([0, 4, 10], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"cu_seqlens_q: not non-decreasing"):
        flashsdpa.flash_attn_varlen_func(q, q, q, torch.tensor([0, 6, 4], dtype=torch.int32),
                                         good, 6, 6)
    with pytest.raises(ValueError, match=r"cu_seqlens_k: sequence 1 has length 6 > max_seqlen 5"):
        flashsdpa.flash_attn_varlen_func(q, q, q, good, good, 6, 5)
    with pytest.raises(TypeError, match=r"cu_seqlens_q: dtype float32 is not supported; expected int32"):
        flashsdpa.flash_attn_varlen_func(q, q, q, good.float(), good, 6, 6)
    # int64 (what cumsum returns) is converted
    assert torch.equal(flashsdpa.flash_attn_varlen_func(q, q, q, good.long(), good, 6, 6),
                       flashsdpa.flash_attn_varlen_func(q, q, q, good, good, 6, 6))
    with pytest.raises(ValueError, match=r"last element 12 exceeds the 10 tokens"):
        flashsdpa.flash_attn_varlen_func(q, q, q, torch.tensor([0, 4, 12], dtype=torch.int32),
                                         good, 8, 6)


def test_unsupported_device_runtime_error():
    x = torch.empty(1, 2, 8, 16, device="meta")
    with pytest.raises(RuntimeError, match="no backend for device 'meta'"):
        flashsdpa.scaled_dot_product_attention(x, x, x)
    with pytest.raises(RuntimeError, match="no backend for device 'meta'"):
        flashsdpa.flash_attn_func(x, x, x)


def test_c_level_errors_on_numpy():
    """The low-level module takes any DLPack producer, e.g. NumPy."""
    q = np.random.rand(1, 2, 8, 16).astype(np.float32)
    out = np.empty_like(q)
    with pytest.raises(ValueError, match=r"out: size of the last dim is 16, expected 8"):
        _C.forward(_C.Params(), q, q, q[..., :8].copy(), out)
    with pytest.raises(ValueError, match=r"varlen needs both"):
        _C.forward(_C.Params(), q, q, q, out, cu_seqlens_q=np.array([0, 8], dtype=np.int32))
    p = _C.Params()
    p.causal = True
    _C.forward(p, q, q, q, out)
    ref = np.empty((1, 2, 8, 16))
    _C.reference_forward(p, q, q, q, ref)
    assert np.abs(out - ref).max() < 1e-5
    assert abs(out[0, 0, 0] - q[0, 0, 0]).max() < 1e-6  # causal row 0 sees only key 0


def test_version_and_backends():
    assert flashsdpa.__version__ == _C.version() and flashsdpa.__version__.count(".") == 2
    assert "cpu" in flashsdpa.backends()


def test_set_num_threads():
    default = flashsdpa.get_num_threads()
    try:
        q = t(2, 4, 64, 32)
        a = flashsdpa.scaled_dot_product_attention(q, q, q, is_causal=True)
        flashsdpa.set_num_threads(1)
        assert flashsdpa.get_num_threads() == 1
        b = flashsdpa.scaled_dot_product_attention(q, q, q, is_causal=True)
        assert (a - b).abs().max() < 1e-6
    finally:
        flashsdpa.set_num_threads(0)
    assert flashsdpa.get_num_threads() == default
