"""The calls the SDPA patch cannot see (README, "Calls the patch cannot
see"): PyTorch computes them without F.scaled_dot_product_attention, so they
are neither served nor counted; the documented workarounds route them
through flashsdpa."""
from __future__ import annotations

import torch
import torch.nn as nn

import flashsdpa


def _dispatched(fn):
    flashsdpa.reset_stats()
    with flashsdpa.enabled():
        fn()
    s = flashsdpa.stats()
    return s["dispatched"], s["fallback_total"]


def test_encoder_fast_path_is_invisible_until_turned_off():
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True).eval()
    x = torch.randn(2, 40, 32)

    def run():
        with torch.no_grad():
            layer(x)

    assert _dispatched(run) == (0, 0)  # fused fast path: not seen
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        assert _dispatched(run) == (1, 0)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def test_multihead_attention_need_weights():
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    x = torch.randn(2, 40, 32)
    assert _dispatched(lambda: mha(x, x, x)) == (0, 0)  # need_weights=True by default
    assert _dispatched(lambda: mha(x, x, x, need_weights=False)) == (1, 0)
