"""An older PyTorch, simulated: only torch 2.13 is installed here, so a fresh
interpreter removes what PyTorch < 2.10 lacks (the flash-attention registry,
torch.library.get_kernel) and < 2.5 lacks (SDPA's enable_gqa keyword) before
importing flashsdpa. Import must log why the registry is skipped, and the
patch (dispatch and fallback), the direct API and stats() must work."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import io, logging
    import torch, torch.nn.functional as F

    for name in ("register_flash_attention_impl", "activate_flash_attention_impl",
                 "restore_flash_attention_impl", "list_flash_attention_impls",
                 "current_flash_attention_impl"):
        if hasattr(torch.nn.attention, name):
            delattr(torch.nn.attention, name)
    if hasattr(torch.library, "get_kernel"):
        del torch.library.get_kernel
    original = F.scaled_dot_product_attention

    def sdpa_before_2_5(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                        scale=None):
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                        is_causal=is_causal, scale=scale)

    F.scaled_dot_product_attention = sdpa_before_2_5
    log = io.StringIO()
    logging.basicConfig(level=logging.INFO, stream=log)

    import flashsdpa
    from flashsdpa import _aten

    assert "no flash-attention registry" in log.getvalue(), log.getvalue()
    assert not _aten.is_active()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 33, 16, generator=g, requires_grad=True) for _ in range(3))
    flashsdpa.enable()
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.sum().backward()
    st = flashsdpa.stats()
    assert st["dispatched"] == 1 and st["backward"] == 1 and st["fallback_total"] == 0, st
    ref = original(q.detach().double(), k.detach().double(), v.detach().double(), is_causal=True)
    assert (out.detach().double() - ref).abs().max() < 1e-5
    # a fallback reaches the old signature without enable_gqa
    q64 = q.detach().double()
    F.scaled_dot_product_attention(q64, q64, q64)
    assert flashsdpa.stats()["fallbacks"] == {"dtype:float64": 1}, flashsdpa.stats()
    flashsdpa.disable()
    assert F.scaled_dot_product_attention is sdpa_before_2_5
    o2 = flashsdpa.flash_attn_func(q.detach().transpose(1, 2), k.detach().transpose(1, 2),
                                   v.detach().transpose(1, 2), causal=True)
    assert (o2.transpose(1, 2).double() - ref).abs().max() < 1e-5
    print("OLD TORCH OK")
''')


def test_flashsdpa_without_registry_or_enable_gqa():
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "OLD TORCH OK" in res.stdout, res.stdout + res.stderr
