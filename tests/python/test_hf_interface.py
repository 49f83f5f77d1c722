"""flashsdpa.register_transformers(): flashsdpa as a Hugging Face
attn_implementation on tiny random models built from configs (no downloads).
Logits and gradients follow the 2x rule against the fp64 sdpa model
(PyTorch's math backend; fp64 eager turns fully padded rows into NaN, which
then reach real rows through 0 * NaN), the same-precision reference being
eager in float32; batched
generate with left padding gives eager's tokens; padding-free packing
(position_ids restarts or cu_seq_lens) equals running each sequence alone."""
from __future__ import annotations

import pytest
import torch

import flashsdpa
from conftest import assert_close_rule

transformers = pytest.importorskip("transformers")

NAME = flashsdpa.register_transformers()


def llama(seed=0, **over):
    cfg = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               attention_dropout=0.0)
    cfg.update(over)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM._from_config(transformers.LlamaConfig(**cfg),
                                                      attn_implementation="eager").eval()


def mistral(seed=1):
    cfg = transformers.MistralConfig(vocab_size=89, hidden_size=64, intermediate_size=96,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=1, sliding_window=7,
                                     max_position_embeddings=256)
    torch.manual_seed(seed)
    return transformers.MistralForCausalLM._from_config(cfg, attn_implementation="eager").eval()


def run(model, impl, dtype=torch.float32, grads=False, rows=None, **inputs):
    model = model.to(dtype)
    model.set_attn_implementation(impl)
    model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(grads):
        logits = model(**inputs).logits
        out = [logits.detach()]
        if grads:
            # padded rows are don't-care: each implementation fills them its own way
            (logits if rows is None else logits[rows]).float().square().mean().backward()
            out += [p.grad.detach().clone() for p in model.parameters()]
    return out


def check_2x(model, rows=None, grads=False, **inputs):
    """ours (fsdpa, fp32) vs truth (sdpa, fp64) within 2x of eager fp32's error."""
    flashsdpa.reset_stats()
    ours = run(model, NAME, grads=grads, rows=rows, **inputs)
    assert flashsdpa.stats()["dispatched"] == model.config.num_hidden_layers
    if grads:
        assert flashsdpa.stats()["backward"] == model.config.num_hidden_layers
    pt = run(model, "eager", grads=grads, rows=rows, **inputs)
    ref = run(model, "sdpa", torch.float64, grads=grads, rows=rows, **inputs)
    model.to(torch.float32)
    for i, (a, b, c) in enumerate(zip(ours, pt, ref)):
        if i == 0 and rows is not None:  # logits of real (non-padding) tokens only
            a, b, c = a[rows], b[rows], c[rows]
        assert_close_rule(f"tensor {i}", a, b, c, torch.float32)


def test_name_avoids_flash_and_is_registered():
    assert "flash" not in NAME
    assert NAME in transformers.AttentionInterface._global_mapping
    from transformers.masking_utils import AttentionMaskInterface
    assert NAME in AttentionMaskInterface._global_mapping
    with pytest.raises(ValueError, match="name"):
        flashsdpa.register_transformers("flashsdpa")
    m = transformers.LlamaForCausalLM._from_config(transformers.LlamaConfig(
        vocab_size=11, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2), attn_implementation=NAME)
    assert m.config._attn_implementation == NAME


def test_llama_gqa_logits_and_training_grads():
    ids = torch.randint(0, 101, (2, 37), generator=torch.Generator().manual_seed(0))
    check_2x(llama(), grads=True, input_ids=ids)


@pytest.mark.parametrize("side", ["left", "right"])
def test_llama_padding(side):
    ids = torch.randint(0, 101, (3, 29), generator=torch.Generator().manual_seed(1))
    am = torch.ones(3, 29, dtype=torch.long)
    if side == "left":
        am[0, :7] = 0
        am[2, :1] = 0
    else:
        am[0, 20:] = 0
        am[2, 28:] = 0
    check_2x(llama(), rows=am.bool(), grads=True, input_ids=ids, attention_mask=am)


def test_mistral_sliding_window():
    ids = torch.randint(0, 89, (2, 31), generator=torch.Generator().manual_seed(2))
    am = torch.ones(2, 31, dtype=torch.long)
    am[1, :5] = 0
    check_2x(mistral(), rows=am.bool(), grads=True, input_ids=ids, attention_mask=am)


@pytest.mark.parametrize("maker,cache", [(llama, "dynamic"), (mistral, "dynamic"),
                                         (llama, "static")], ids=["llama", "mistral", "static"])
def test_batched_generate_left_padding(maker, cache):
    model = maker()
    ids = torch.randint(1, 80, (3, 12), generator=torch.Generator().manual_seed(3))
    am = torch.ones_like(ids)
    am[0, :5] = 0
    am[1, :2] = 0
    kw = dict(input_ids=ids, attention_mask=am, max_new_tokens=9, do_sample=False,
              pad_token_id=0, cache_implementation=cache)
    outs = {}
    for impl in ("eager", NAME):
        model.set_attn_implementation(impl)
        flashsdpa.reset_stats()
        outs[impl] = model.generate(**kw)
        if impl == NAME:  # the prompt and every decode step ran on flashsdpa
            assert flashsdpa.stats()["dispatched"] >= 9 * model.config.num_hidden_layers
    assert torch.equal(outs[NAME], outs["eager"])


@pytest.mark.parametrize("how", ["position_ids", "cu_seq_lens"])
def test_padding_free_packing(how):
    model = llama()
    model.set_attn_implementation(NAME)
    lengths = [9, 4, 14]
    g = torch.Generator().manual_seed(4)
    seqs = [torch.randint(0, 101, (1, n), generator=g) for n in lengths]
    alone = [model(input_ids=s).logits for s in seqs]
    packed_ids = torch.cat(seqs, 1)
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    kw = {"position_ids": pos}
    if how == "cu_seq_lens":
        cu = torch.tensor([0, 9, 13, 27], dtype=torch.int32)
        kw.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=14, max_length_k=14)
    flashsdpa.reset_stats()
    packed = model(input_ids=packed_ids, **kw).logits
    assert flashsdpa.stats()["dispatched"] == model.config.num_hidden_layers
    torch.testing.assert_close(packed, torch.cat(alone, 1), atol=1e-5, rtol=1e-5)


def test_user_4d_mask_goes_through_flashsdpa_sdpa():
    model = llama()
    ids = torch.randint(0, 101, (2, 15), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(15, 15, dtype=torch.bool).tril()[None, None].expand(2, 1, 15, 15).clone()
    mask[1, :, :, :3] = False  # the second row may not see its first 3 tokens
    mask[1, :, torch.arange(15), torch.arange(15)] = True
    model.set_attn_implementation(NAME)
    ours = model(input_ids=ids, attention_mask=mask).logits
    model.set_attn_implementation("sdpa")  # eager would add a bool mask as 0/1 floats
    ref = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)
