"""The drop-in on model code nobody here wrote: torch.nn's TransformerEncoder
and MultiheadAttention, and Hugging Face transformers models built from tiny
configs with random weights. Outputs and gradients must match with flashsdpa
enabled vs disabled, and stats() must show the calls went to flashsdpa."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import flashsdpa


def run_model(model, inputs_fn, enabled, loss_fn):
    model.zero_grad(set_to_none=True)
    ctx = flashsdpa.enabled() if enabled else _Null()
    with ctx:
        out = inputs_fn(model)
        loss = loss_fn(out)
        loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def compare(model, inputs_fn, loss_fn=lambda o: o.float().square().mean(), atol=2e-5, rtol=1e-4):
    out_ref, g_ref = run_model(model, inputs_fn, False, loss_fn)
    assert flashsdpa.stats()["dispatched"] == 0
    out, g = run_model(model, inputs_fn, True, loss_fn)
    torch.testing.assert_close(out, out_ref, atol=atol, rtol=rtol)
    assert g.keys() == g_ref.keys() and len(g) > 0
    for n in g:
        torch.testing.assert_close(g[n], g_ref[n], atol=atol, rtol=rtol, msg=n)
    return flashsdpa.stats()


def test_nn_transformer_encoder(device):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=48, nhead=4, dim_feedforward=96, dropout=0.0,
                                       batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).to(device)
    model.train()  # the eval fast path bypasses SDPA entirely
    x = torch.randn(3, 29, 48, device=device)
    causal = torch.ones(29, 29, dtype=torch.bool, device=device).triu(1)  # True = masked
    pad = torch.zeros(3, 29, dtype=torch.bool, device=device)
    pad[1, 20:] = True  # key padding (True = ignore, nn convention)
    st = compare(model, lambda m: m(x, mask=causal, src_key_padding_mask=pad))
    assert st["dispatched"] == 2 and st["backward"] == 2 and st["fallback_total"] == 0, st


def test_nn_multihead_attention(device):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(32, 4, batch_first=True, kdim=24, vdim=20).to(device)
    q = torch.randn(2, 17, 32, device=device)
    kv_k = torch.randn(2, 31, 24, device=device)
    kv_v = torch.randn(2, 31, 20, device=device)
    attn_mask = torch.rand(17, 31, device=device) > 0.3
    attn_mask[:, 0] = True
    st = compare(mha, lambda m: m(q, kv_k, kv_v, attn_mask=~attn_mask, need_weights=False)[0])
    assert st["dispatched"] == 1 and st["fallback_total"] == 0, st


transformers = pytest.importorskip("transformers")


def _hf_compare(model, input_ids, attention_mask=None):
    model.train()
    model.config.use_cache = False

    def fwd(m):
        return m(input_ids=input_ids, attention_mask=attention_mask).logits

    st = compare(model, fwd, atol=5e-5, rtol=2e-4)
    return st


def test_hf_llama_gqa(device):
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=128,
                                   attention_dropout=0.0)
    torch.manual_seed(2)
    model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").to(device)
    ids = torch.randint(0, 97, (2, 41), device=device)
    st = _hf_compare(model, ids)
    assert st["dispatched"] == 2 and st["fallback_total"] == 0, st
    # with a padding mask (left padding): a bool/float 4-D mask goes through too
    flashsdpa.reset_stats()
    am = torch.ones(2, 41, dtype=torch.long, device=device)
    am[0, :9] = 0
    st = _hf_compare(model, ids, am)
    assert st["dispatched"] == 2 and st["fallback_total"] == 0, st


def test_hf_mistral_sliding_window(device):
    cfg = transformers.MistralConfig(vocab_size=89, hidden_size=64, intermediate_size=96,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=1, sliding_window=8,
                                     max_position_embeddings=128)
    torch.manual_seed(3)
    model = transformers.MistralForCausalLM._from_config(cfg, attn_implementation="sdpa").to(device)
    ids = torch.randint(0, 89, (2, 37), device=device)
    # transformers 4.57's SDPA mask for PyTorch < 2.5 fails without a padding
    # mask (an in-place `|=` on an expanded tensor, flashsdpa disabled or
    # not); an all-ones one builds the same sliding-window mask.
    old_torch = tuple(int(x) for x in torch.__version__.split(".")[:2]) < (2, 5)
    am = torch.ones_like(ids) if old_torch else None
    # the window matters at this length: logits differ from a full-causal model
    st = _hf_compare(model, ids, am)
    assert st["dispatched"] == 2 and st["fallback_total"] == 0, st


def test_hf_bert_padding_mask(device):
    cfg = transformers.BertConfig(vocab_size=101, hidden_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=96,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  max_position_embeddings=64)
    torch.manual_seed(4)
    model = transformers.BertForMaskedLM._from_config(cfg, attn_implementation="sdpa").to(device)
    ids = torch.randint(0, 101, (3, 33), device=device)
    am = torch.ones(3, 33, dtype=torch.long, device=device)
    am[1, 25:] = 0
    am[2, 10:] = 0
    st = _hf_compare(model, ids, am)
    assert st["dispatched"] == 2 and st["fallback_total"] == 0, st
