"""flashsdpa.explain: the plan a call would run, with reasons; on every
device this build serves (CUDA specifics are in test_cuda.py)."""
from __future__ import annotations

import pytest
import torch

import flashsdpa
from conftest import DEVICES


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backward", [False, True])
def test_explain_names_backend_family_and_reasons(device, backward):
    q = torch.randn(2, 4, 33, 64, device=device)
    k = torch.randn(2, 2, 40, 64, device=device)
    text = flashsdpa.explain(q, k, k, is_causal=True, enable_gqa=True, backward=backward)
    first = text.split("\n")[0]
    assert first.startswith(f"backend {device}, {'backward' if backward else 'forward'}: family ")
    assert len(text.strip().split("\n")) >= 2, text  # at least one reason line


@pytest.mark.parametrize("device", DEVICES)
def test_explain_raises_what_the_call_raises(device):
    q = torch.randn(1, 2, 8, 16, device=device)
    k = torch.randn(1, 2, 8, 32, device=device)  # head dims differ
    with pytest.raises(ValueError) as e:
        flashsdpa.explain(q, k, k)
    with pytest.raises(ValueError) as e2:
        flashsdpa.scaled_dot_product_attention(q, k, k)
    assert str(e.value) == str(e2.value)


def test_explain_runs_nothing_on_cpu():
    q = torch.randn(1, 1, 4, 8)
    out_before = flashsdpa.stats()["dispatched"] if "dispatched" in flashsdpa.stats() else 0
    flashsdpa.explain(q, q, q)
    after = flashsdpa.stats()["dispatched"] if "dispatched" in flashsdpa.stats() else 0
    assert after == out_before
