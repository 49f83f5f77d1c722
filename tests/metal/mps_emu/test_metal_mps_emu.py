"""flashsdpa's PyTorch MPS path (python/flashsdpa/metal.py) end to end on the
MSL emulator, behind a faithful stand-in for torch.mps.compile_shader
(fake_mps.py), with the call path held to "never wait for the GPU".

There is no Apple GPU here, so the "MPS" tensors are CPU tensors: the MPS
runners are registered for the cpu device, PyTorch's own
torch.mps.compile_shader runs (with its real _embed_headers) but compiles
through fake_mps, whose kernels run the emulator build of the planner's
specialisation (tests/metal/attention builds one library per key of its grid,
so the cases below use keys of that grid: family 7, head dim 57..64, the
features one at a time). Outputs and gradients are held to the fp64 reference
with FlashAttention's rule (tests/python/conftest.py). Run by ctest
(metal_mps_path_emulated), which sets FSDPA_MPS_EMU_* and PYTHONPATH to the
test build of the package (tests/metal/mps_emu/CMakeLists.txt).
"""
import contextlib
import os
import pathlib
import sys

import pytest
import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "python"))

import fake_mps  # noqa: E402
import flashsdpa  # noqa: E402
from flashsdpa import _C, _ops, metal  # noqa: E402
from conftest import LOWP, assert_close_rule, c_reference, run_with_grads, torch_math_sdpa  # noqa: E402

if not hasattr(_C, "metal_plan"):
    pytest.fail("this build of flashsdpa._C lacks metal_plan; run through ctest (tests/metal/mps_emu)")

# --------------------------------------------------------------------------- no waiting in the dispatch path
# What blocks the CPU on the MPS stream: host<->device copies (.to, copy_,
# .cpu(), tensors made from host data), reading values (.item(), .tolist(),
# bool(t), .numpy()) and explicit synchronisation.
_FORBIDDEN = [(torch.Tensor, n) for n in ("to", "copy_", "item", "cpu", "tolist", "numpy", "__bool__")] + \
             [(torch, n) for n in ("frombuffer", "tensor", "as_tensor", "from_numpy")] + [(torch.mps, "synchronize")]


class BlockingCall(AssertionError):
    pass


@contextlib.contextmanager
def no_blocking_calls():
    saved = [(owner, name, getattr(owner, name)) for owner, name in _FORBIDDEN]

    def forbid(owner, name):
        def f(*a, **k):
            raise BlockingCall(f"{getattr(owner, '__name__', owner)}.{name} in the MPS dispatch path "
                               "(a blocking copy or a wait for the GPU)")
        return f

    for owner, name, _ in saved:
        setattr(owner, name, forbid(owner, name))
    try:
        yield
    finally:
        for owner, name, orig in saved:
            setattr(owner, name, orig)


def guarded(runner):
    def run(*args, **kw):
        with no_blocking_calls():
            return runner(*args, **kw)
    return run


@pytest.fixture(scope="module")
def fake():
    f = fake_mps.FakeMPS(os.environ["FSDPA_MPS_EMU_LIB"], os.environ.get("FSDPA_MPS_EMU_CXX", "c++"),
                         os.environ.get("FSDPA_MPS_EMU_STUB", str(HERE / "stub")), device_type="cpu")
    saved = (getattr(torch._C, "_mps_compileShader", None), _ops.default_check_finite, metal._family)
    torch._C._mps_compileShader = f.compile_shader
    _ops.default_check_finite = lambda device: False  # as on mps: the NaN scan would wait for the GPU
    metal._family = 7
    _ops.register_device_runner("cpu", guarded(metal.forward), guarded(metal.backward),
                                unsupported=metal.unsupported)
    yield f
    _ops._runners.pop("cpu", None)
    _ops._unsupported.pop("cpu", None)
    _ops._available.pop("cpu", None)
    _ops.default_check_finite, metal._family = saved[1], saved[2]
    if saved[0] is None:
        del torch._C._mps_compileShader
    else:
        torch._C._mps_compileShader = saved[0]


@pytest.fixture(autouse=True)
def _clean(fake):
    metal.clear_cache()
    fake.simd_width, fake.max_threads_override = 32, None
    fake.dispatches.clear()
    flashsdpa.disable()
    flashsdpa.reset_stats()
    os.environ.pop("PYTORCH_MPS_FAST_MATH", None)
    yield
    flashsdpa.disable()
    os.environ.pop("PYTORCH_MPS_FAST_MATH", None)


def inputs(dtype, hq=4, hk=2, sq=37, sk=45, d=59, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, hq, sq, d, generator=g)
    k = torch.randn(2, hk, sk, d, generator=g)
    v = torch.randn(2, hk, sk, d, generator=g)
    dout = torch.randn(2, hq, sq, d, generator=g)
    return q, k, v, dout


# --------------------------------------------------------------------------- end to end
CASES = {
    "plain": {},
    "causal": dict(is_causal=True),
    "bool_mask": dict(mask="bool"),
    "float_mask": dict(mask="float"),
}


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_forward_backward_gqa_on_emulator(fake, case, dtype):
    opts = dict(CASES[case])
    q, k, v, dout = inputs(dtype)
    mask = opts.pop("mask", None)
    if mask is not None:
        g = torch.Generator().manual_seed(5)
        keep = torch.rand(2, 1, 37, 45, generator=g) > 0.3
        keep[:, :, 3] = False  # a row with nothing to attend: output 0
        opts["attn_mask"] = keep if mask == "bool" else torch.where(keep, 0.0, float("-inf")) + \
            torch.randn(2, 1, 37, 45, generator=g) * 0.5
    ref = run_with_grads(torch_math_sdpa, [t.double() for t in (q, k, v)], dout.double(), enable_gqa=True,
                         **{n: (t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t)
                            for n, t in opts.items()})
    pt = run_with_grads(torch_math_sdpa, [t.to(dtype) for t in (q, k, v)], dout.to(dtype), enable_gqa=True,
                        **{n: (t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t)
                           for n, t in opts.items()})
    ours = run_with_grads(flashsdpa.scaled_dot_product_attention, [t.to(dtype) for t in (q, k, v)],
                          dout.to(dtype), enable_gqa=True,
                          **{n: (t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t)
                             for n, t in opts.items()})
    kernels = [d[1] for d in fake.dispatches]
    assert kernels == ["fsdpa_forward", "fsdpa_backward_preprocess", "fsdpa_backward_dq", "fsdpa_backward_dkdv"]
    for name, a, b, c in zip(["out", "dq", "dk", "dv"], ours, pt, ref):
        assert_close_rule(name, a, b, c, dtype)


def test_dropout_on_emulator(fake):
    dtype, pdrop = torch.float32, 0.25
    q, k, v, dout = inputs(dtype)
    torch.manual_seed(99)
    ours = run_with_grads(flashsdpa.scaled_dot_product_attention, [q, k, v], dout, dropout_p=pdrop,
                          enable_gqa=True)
    assert [d[1] for d in fake.dispatches][0] == "fsdpa_forward"
    torch.manual_seed(99)
    seed, offset = _ops.new_rng(pdrop).tolist()
    opts = dict(dropout_p=pdrop, seed=seed, offset=offset)
    ref = c_reference(q, k, v, dout, **opts)
    pt = [t.float() for t in c_reference(q, k, v, dout, **opts)]
    for name, a, b, c in zip(["out", "dq", "dk", "dv"], ours, pt, ref):
        assert_close_rule(name, a, b, c, dtype, factor=4.0)
    assert (ours[0].double() - c_reference(q, k, v)).abs().max() > 0.05  # dropout was applied


def test_patched_sdpa_dispatches_to_the_mps_path(fake):
    q, k, v, _ = inputs(torch.float16)
    with flashsdpa.enabled():
        out = F.scaled_dot_product_attention(q.half(), k.half(), v.half(), is_causal=True, enable_gqa=True)
    assert flashsdpa.stats()["fallbacks"] == {}
    assert [d[1] for d in fake.dispatches] == ["fsdpa_forward"]
    ref = torch_math_sdpa(q.double(), k.double(), v.double(), is_causal=True, enable_gqa=True)
    pt = torch_math_sdpa(q.half(), k.half(), v.half(), is_causal=True, enable_gqa=True)
    assert_close_rule("out", out, pt, ref, torch.float16)


def test_paged_kv_cache_through_the_mps_path(fake):
    """flash_attn_with_kvcache over a paged cache (pages of 16 in a shuffled
    order, per-sequence lengths) runs the Metal kernels, which read the pages
    in place; held to dense attention over the gathered keys."""
    dtype, hq, hk, d, page = torch.float32, 4, 2, 59, 16
    g = torch.Generator().manual_seed(3)
    pool_k = torch.randn(7, page, hk, d, generator=g)
    pool_v = torch.randn(7, page, hk, d, generator=g)
    table = torch.randperm(7, generator=g)[:6].to(torch.int32).view(2, 3)
    lens = torch.tensor([40, 23], dtype=torch.int32)
    q = torch.randn(2, 1, hq, d, generator=g)
    out = flashsdpa.flash_attn_with_kvcache(q, pool_k, pool_v, cache_seqlens=lens, block_table=table,
                                            causal=True)
    assert [x[1] for x in fake.dispatches] == ["fsdpa_forward"]
    assert fake.dispatches[-1][0].endswith("_kv")
    for b in range(2):
        n = int(lens[b])
        rows = torch.cat([torch.arange(page) + int(p) * page for p in table[b]])[:n]
        kb = pool_k.reshape(-1, hk, d)[rows].transpose(0, 1)[None]
        vb = pool_v.reshape(-1, hk, d)[rows].transpose(0, 1)[None]
        qb = q[b:b + 1].transpose(1, 2)
        ref = torch_math_sdpa(qb.double(), kb.double(), vb.double(), enable_gqa=True)
        pt = torch_math_sdpa(qb, kb, vb, enable_gqa=True)
        assert_close_rule(f"out[{b}]", out[b:b + 1].transpose(1, 2), pt, ref, dtype)


def test_block_sparse_through_the_mps_path(fake):
    """block_sparse_attention (forward and gradients) runs the Metal kernels:
    the expansion pass, then the forward / backward kernels reading the
    lists; held to dense attention with the equivalent bool mask."""
    from flashsdpa import BlockLists

    dtype, bq, bk, sq, sk = torch.float32, 16, 16, 75, 93
    q, k, v, dout = inputs(dtype, sq=sq, sk=sk, d=40, seed=4)
    nqb, nkb = -(-sq // bq), -(-sk // bk)
    g = torch.Generator().manual_seed(8)
    full_num = torch.ones(1, 4, nqb, dtype=torch.int32)
    full_idx = torch.zeros(1, 4, nqb, nkb, dtype=torch.int32)
    kv_num = torch.zeros(1, 4, nqb, dtype=torch.int32)
    kv_idx = torch.zeros(1, 4, nqb, nkb, dtype=torch.int32)
    elem = torch.rand(1, 4, nqb, nkb, bq, bk, generator=g) > 0.4
    dense = torch.zeros(2, 4, sq, sk, dtype=torch.bool)
    for h in range(4):
        for qb in range(nqb):
            full = (qb + h) % nkb  # one full block: no row without keys
            full_idx[0, h, qb, 0] = full
            dense[:, h, qb * bq:(qb + 1) * bq, full * bk:(full + 1) * bk] = True
            part = [kb for kb in torch.randperm(nkb, generator=g).tolist() if kb != full][:2]
            kv_num[0, h, qb] = len(part)
            for s, kb in enumerate(part):
                kv_idx[0, h, qb, s] = kb
                m = elem[0, h, qb, s]
                rows, cols = min(bq, sq - qb * bq), min(bk, sk - kb * bk)
                dense[:, h, qb * bq:qb * bq + rows, kb * bk:kb * bk + cols] = m[:rows, :cols]
    lists = BlockLists(kv_num, kv_idx, elem, full_num, full_idx, block_size=(bq, bk))
    ours = run_with_grads(lambda *t: flashsdpa.block_sparse_attention(*t, lists, enable_gqa=True),
                          [q, k, v], dout)
    assert [x[1] for x in fake.dispatches] == ["fsdpa_sparse_expand", "fsdpa_forward", "fsdpa_sparse_expand",
                                               "fsdpa_backward_preprocess", "fsdpa_backward_dq",
                                               "fsdpa_backward_dkdv"]
    ref = run_with_grads(torch_math_sdpa, [t.double() for t in (q, k, v)], dout.double(), attn_mask=dense,
                         enable_gqa=True)
    pt = run_with_grads(torch_math_sdpa, [q, k, v], dout, attn_mask=dense, enable_gqa=True)
    for name, a, b, c in zip(["out", "dq", "dk", "dv"], ours, pt, ref):
        assert_close_rule(name, a, b, c, dtype)


# --------------------------------------------------------------------------- binding rules of the glue
def test_args_go_in_by_setbytes_as_int64_words():
    q, k, v, _ = inputs(torch.float32)
    p = _C.Params()
    bufs = metal._buffers(q=q, k=k, v=v, out=torch.empty_like(q), lse=torch.empty(2, 4, 37))
    plan = metal._plan(False, p, bufs)
    words = metal._args_words(plan.args)
    assert all(isinstance(w, int) for w in words)
    assert b"".join(w.to_bytes(8, "little", signed=True) for w in words) == bytes(plan.args)


def test_fake_enforces_pytorch_binding_rules(fake):
    q, k, v, _ = inputs(torch.float32)
    out, lse = torch.empty_like(q), torch.empty(2, 4, 37)
    bufs = metal._buffers(q=q, k=k, v=v, out=out, lse=lse)
    plan = metal._plan(False, _C.Params(), bufs)
    lib = torch.mps.compile_shader(plan.source)  # PyTorch's wrapper: _embed_headers, then the fake
    assert fake.compiled[-1].rstrip("\n") == plan.source.rstrip("\n")
    fn = lib.fsdpa_forward
    dummy = torch.empty(16, dtype=torch.uint8)
    rest = [b if b is not None else dummy for b in bufs[1:]]  # every index, as metal._run binds them
    grid, threads = plan.grid[0], plan.threads[0]
    total = [g * t for g, t in zip(grid, threads)]
    with pytest.raises(fake_mps.BindingError, match="Unsupported argument type bytes"):
        fn(bytes(plan.args), *rest, threads=total, group_size=list(threads))
    with pytest.raises(fake_mps.BindingError, match="constant FsdpaMetalArgs&"):
        fn(list(bytes(plan.args)), *rest, threads=total, group_size=list(threads))  # ints bind as int64
    with pytest.raises(fake_mps.BindingError, match="not whole threadgroups"):
        fn(metal._args_words(plan.args), *rest, threads=[total[0] - 1] + total[1:], group_size=list(threads))
    with pytest.raises(fake_mps.BindingError, match="exceeds the pipeline"):
        fn(metal._args_words(plan.args), *rest, threads=[t * 2048 for t in total], group_size=[2048, 1, 1])
    with pytest.raises(fake_mps.BindingError, match=rf"\[\[buffer\({metal.NUM_BUFFERS - 1}\)\]\].*not bound"):
        fn(metal._args_words(plan.args), *rest[:-1], threads=total, group_size=list(threads))
    with pytest.raises(fake_mps.BindingError, match="bound a torch.float16 tensor"):
        fn(metal._args_words(plan.args), q.half(), *rest[1:], threads=total, group_size=list(threads))
    with pytest.raises(fake_mps.BindingError, match="non-ASCII"):
        torch.mps.compile_shader(plan.source + "// \u00d7\n")
    # the same bytes through arg_casts (uint8 each) are accepted, and run
    fn(list(bytes(plan.args)), *rest, threads=total, group_size=list(threads), arg_casts={0: "uint8"})
    assert fake.dispatches[-1][1:] == ("fsdpa_forward", list(grid), list(threads))
    # a CPU tensor with dimensions cannot be bound to an MPS kernel
    mps_like = fake_mps.FakeMPS(os.environ["FSDPA_MPS_EMU_LIB"], fake.cxx, fake.stub_dir, device_type="meta")
    fn_meta = mps_like.compile_shader(plan.source).fsdpa_forward
    with pytest.raises(fake_mps.BindingError, match="Passed CPU tensor to MPS op"):
        fn_meta(metal._args_words(plan.args), *rest, threads=total, group_size=list(threads))


def test_no_blocking_call_guard_catches_the_old_argument_copy():
    with no_blocking_calls():
        with pytest.raises(BlockingCall):
            torch.frombuffer(bytearray(16), dtype=torch.uint8).to("cpu")
        with pytest.raises(BlockingCall):
            torch.zeros(1).item()


def test_placeholder_buffer_is_allocated_once_per_device(fake):
    q, k, v, dout = inputs(torch.float32)
    run_with_grads(flashsdpa.scaled_dot_product_attention, [q, k, v], dout, enable_gqa=True)
    first = metal._dummies[torch.device("cpu")]
    run_with_grads(flashsdpa.scaled_dot_product_attention, [q, k, v], dout, enable_gqa=True)
    assert metal._dummies[torch.device("cpu")] is first
    assert metal.library_cache_size() == 1


# --------------------------------------------------------------------------- fall backs with a reason
@pytest.mark.parametrize("value,expected", [("1", True), ("0", False), ("", False), ("yes", True)])
def test_fast_math_detection(value, expected):
    os.environ["PYTORCH_MPS_FAST_MATH"] = value
    assert metal.fast_math_requested() is expected


def test_fast_math_falls_back_with_a_reason(fake):
    q, k, v, _ = inputs(torch.float32)
    os.environ["PYTORCH_MPS_FAST_MATH"] = "1"
    with flashsdpa.enabled():
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert flashsdpa.stats()["fallbacks"] == {"device:mps-fast-math": 1}
    assert fake.dispatches == []
    torch.testing.assert_close(out, torch_math_sdpa(q, k, v, enable_gqa=True))
    with pytest.raises(RuntimeError, match="PYTORCH_MPS_FAST_MATH"):
        flashsdpa.scaled_dot_product_attention(q, k, v, enable_gqa=True)


@pytest.mark.parametrize("mismatch", ["simd_width", "max_threads"])
def test_gpu_mismatch_falls_back_with_a_reason(fake, mismatch):
    q, k, v, _ = inputs(torch.float32)
    q.requires_grad_(mismatch == "simd_width")  # through the custom operator, and the direct eager call
    if mismatch == "simd_width":
        fake.simd_width = 64
    else:
        fake.max_threads_override = 32
    with flashsdpa.enabled():
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # now known before the call
    assert flashsdpa.stats()["fallbacks"] == {"device:mps-gpu-mismatch": 2}
    assert fake.dispatches == []  # nothing ran
    torch.testing.assert_close(out, torch_math_sdpa(q, k, v, enable_gqa=True))
    with pytest.raises(RuntimeError, match="simdgroups|threads per threadgroup"):
        flashsdpa.scaled_dot_product_attention(q, k, v, enable_gqa=True)
