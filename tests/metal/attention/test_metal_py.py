"""Argument packing of the MPS glue (python/flashsdpa/metal.py), without MPS.

There is no Apple GPU here, so torch.mps.compile_shader and the planner
binding (flashsdpa._C.metal_plan) are replaced by fakes that record what the
glue hands them: the tensor descriptions given to the planner, the buffers
bound to each dispatch (all FSDPA_NUM_BUFFERS, in index order), the thread
counts (whole threadgroups), the library cache and check_finite. The kernels
themselves are tested on the MSL emulator (test_metal_attention.cpp).
Run: python3 tests/metal/attention/test_metal_py.py
"""
import importlib.util
import pathlib
import sys
import types
import unittest

import torch

ROOT = pathlib.Path(__file__).resolve().parents[3]


def load_metal():
    # Load metal.py on its own (the package needs the compiled extension).
    pkg = types.ModuleType("flashsdpa")
    pkg.__path__ = []
    sys.modules["flashsdpa"] = pkg
    spec = importlib.util.spec_from_file_location("flashsdpa.metal", ROOT / "python/flashsdpa/metal.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["flashsdpa.metal"] = mod
    spec.loader.exec_module(mod)  # register() finds no MPS here and does nothing
    return mod


class FakePlan:
    def __init__(self, backward, split_decode=False):
        self.key = "a7_f32_d8_v8_m0_b0a0s0p0v0"
        self.source = "// source"
        if backward:
            self.kernels = ["fsdpa_backward_preprocess", "fsdpa_backward_dq", "fsdpa_backward_dkdv"]
            self.grid = [[2, 3, 1], [1, 3, 1], [1, 1, 1]]
            self.threads = [[128, 1, 1], [64, 1, 1], [64, 1, 1]]
        elif split_decode:
            self.kernels = ["fsdpa_decode_split", "fsdpa_decode_merge"]
            self.grid = [[4, 1, 1], [1, 3, 1]]
            self.threads = [[128, 1, 1], [128, 1, 1]]
        else:
            self.kernels = ["fsdpa_forward"]
            self.grid = [[2, 3, 1]]
            self.threads = [[64, 1, 1]]
        self.args = bytes(range(16)) * 27  # any bytes: the glue forwards them
        self.scratch_elements = 40 if backward or split_decode else 0


class FakeC:
    def __init__(self):
        self.calls = []
        self.split_decode = False

    def metal_plan(self, backward, params, descs, family):
        self.calls.append((backward, descs, family))
        return FakePlan(backward, self.split_decode and not backward)


class FakeKernel:
    thread_execution_width = 32
    max_threads_per_threadgroup = 1024
    static_thread_group_memory_length = 0

    def __init__(self, lib, name):
        self.lib, self.name = lib, name

    def __call__(self, *bufs, threads, group_size):
        self.lib.dispatches.append((self.name, bufs, threads, group_size))


class FakeLib:
    def __init__(self):
        self.dispatches = []

    def __getattr__(self, name):
        return FakeKernel(self, name)


class Params:
    check_finite = False


class MetalGlue(unittest.TestCase):
    def setUp(self):
        self.m = load_metal()
        self.fake_c = FakeC()
        self.m._C = lambda: self.fake_c
        self.libs = []

        def compile_shader(src):
            lib = FakeLib()
            self.libs.append((src, lib))
            return lib

        self.m.torch = types.SimpleNamespace(**{n: getattr(torch, n) for n in dir(torch) if not n.startswith("__")})
        self.m.torch.mps = types.SimpleNamespace(compile_shader=compile_shader)
        self.m.clear_cache()
        self.m._family = 9

    def tensors(self):
        q = torch.randn(1, 3, 10, 8)
        k = torch.randn(1, 1, 12, 8).transpose(2, 3).contiguous().transpose(2, 3)  # strided view
        v = torch.randn(1, 1, 12, 8)
        return q, k, v, torch.empty_like(q), torch.empty(1, 3, 10)

    def test_forward_binds_every_index_and_whole_threadgroups(self):
        q, k, v, out, lse = self.tensors()
        self.m.forward(Params(), q, k, v, out, lse, None, None, None, None, q.device)
        backward, descs, family = self.fake_c.calls[0]
        self.assertFalse(backward)
        self.assertEqual(family, 9)
        self.assertEqual(len(descs), self.m.NUM_BUFFERS)
        self.assertEqual(descs[self.m.BUF_K], (True, 0, [1, 1, 12, 8], list(k.stride())))
        self.assertEqual(descs[self.m.BUF_MASK], (False, 0, [], []))
        (src, lib), = self.libs
        self.assertEqual(src, "// source")
        (name, bufs, threads, group), = lib.dispatches
        self.assertEqual(name, "fsdpa_forward")
        self.assertEqual(len(bufs), self.m.NUM_BUFFERS)
        # the argument block goes in by setBytes: a list of int64 words
        self.assertEqual(b"".join(w.to_bytes(8, "little", signed=True) for w in bufs[0]), FakePlan(False).args)
        self.assertEqual(bufs[self.m.BUF_OUT].data_ptr(), out.data_ptr())  # the tensor itself, no copy
        self.assertEqual(bufs[self.m.BUF_MASK].numel(), 16)  # absent: the dummy buffer
        self.assertEqual(bufs[self.m.BUF_SCRATCH].numel(), 16)  # no scratch planned: the dummy buffer
        self.assertEqual(threads, (128, 3, 1))
        self.assertEqual(group, (64, 1, 1))
        # the library is compiled once per key
        self.m.forward(Params(), q, k, v, out, lse, None, None, None, None, q.device)
        self.assertEqual(len(self.libs), 1)
        self.assertEqual(self.m.library_cache_size(), 1)

    def test_backward_allocates_delta(self):
        q, k, v, out, lse = self.tensors()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        self.m.backward(Params(), torch.randn_like(q), q, k, v, out, lse, dq, dk, dv, None, None, None, None,
                        q.device)
        lib = self.libs[0][1]
        self.assertEqual([d[0] for d in lib.dispatches],
                         ["fsdpa_backward_preprocess", "fsdpa_backward_dq", "fsdpa_backward_dkdv"])
        delta = lib.dispatches[0][1][self.m.BUF_SCRATCH]
        self.assertEqual((delta.dtype, delta.numel()), (torch.float32, 40))
        self.assertEqual(lib.dispatches[0][2], (256, 3, 1))

    def test_split_decode_forward_allocates_scratch(self):
        self.fake_c.split_decode = True
        q, k, v, out, lse = self.tensors()
        self.m.forward(Params(), q, k, v, out, lse, None, None, None, None, q.device)
        lib = self.libs[0][1]
        self.assertEqual([d[0] for d in lib.dispatches], ["fsdpa_decode_split", "fsdpa_decode_merge"])
        s0, s1 = (d[1][self.m.BUF_SCRATCH] for d in lib.dispatches)
        self.assertEqual((s0.dtype, s0.numel()), (torch.float32, 40))
        self.assertIs(s0, s1)  # both passes see the same scratch
        self.assertEqual(lib.dispatches[0][2], (512, 1, 1))

    def test_check_finite(self):
        q, k, v, out, lse = self.tensors()
        q[0, 1, 2, 3] = float("nan")
        p = Params()
        p.check_finite = True
        with self.assertRaisesRegex(ValueError, "q: contains a non-finite value"):
            self.m.forward(p, q, k, v, out, lse, None, None, None, None, q.device)
        self.assertEqual(self.fake_c.calls, [])


if __name__ == "__main__":
    unittest.main()
