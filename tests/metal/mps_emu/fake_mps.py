"""A stand-in for ``torch.mps.compile_shader`` that enforces PyTorch's rules
and runs the kernels on the MSL emulator (test-only, issue 17).

It replaces ``torch._C._mps_compileShader`` only, so PyTorch's own Python
``torch.mps.compile_shader`` still runs (with its real ``_embed_headers``).
The library it returns follows PyTorch's binding code
(torch/csrc/mps/Module.cpp, aten/src/ATen/native/mps/MetalShaderLibrary.mm):

* argument i is bound to ``[[buffer(i)]]``;
* a tensor binds as (its buffer, storage_offset * element_size); a CPU
  tensor is accepted only with 0 dimensions (its value goes in by setBytes),
  anything else is "Passed CPU tensor to MPS op";
* a Python int binds as int64, a float as float32, a list of ints as int64s,
  a list of floats as float32s (setBytes), unless ``arg_casts`` (a dtype name
  for all, or {index: name}) converts them; anything else (bytes, None, ...)
  is "Unsupported argument type";
* ``threads`` is the total thread count (dispatchThreads), ``group_size`` the
  threadgroup size, at most the pipeline's max_threads_per_threadgroup;
* the source must be ASCII (PyTorch builds an NSString from it with
  NSASCIIStringEncoding).

On top it checks each bound argument against the kernel's declared
``[[buffer(n)]]`` parameter (preprocessed source): element size of pointers,
size of ``constant T&`` blocks, setBytes only into the constant address space,
every declared buffer bound, whole threadgroups (the kernels are written for
dispatchThreadgroups grids). The "device" here is the CPU: a dispatch runs the
emulator library built for the source's planner key (tests/metal/attention)
on the tensors' memory in place. ``device_type`` names the device type whose
tensors count as GPU memory ("cpu" when the MPS path runs on CPU tensors).
"""
import ctypes
import re
import struct
import subprocess

import torch

SCALAR_SIZES = {"float": 4, "half": 2, "bfloat": 2, "short": 2, "ushort": 2, "char": 1, "uchar": 1, "bool": 1,
                "int": 4, "uint": 4, "long": 8, "ulong": 8, "int32_t": 4, "uint32_t": 4, "int64_t": 8,
                "uint64_t": 8}
CASTS = {"fp16": ("e", 2), "int32": ("i", 4), "int16": ("h", 2), "int8": ("b", 1),
         "uint8": ("B", 1)}
ADDRESS_SPACES = ("device", "constant", "threadgroup", "thread")


class BindingError(AssertionError):
    """A call that PyTorch or Metal would reject, or that binds wrong bytes."""


def c_eval(expr):
    """Integer value of a preprocessed C constant expression (+-*/%, comparisons, ?:)."""
    e = re.sub(r"(?<=\d)[uUlL]+\b", "", expr)
    tern = re.compile(r"\(([^()?:]+)\?([^()?:]+):([^()?:]+)\)")
    while "?" in e:
        e2 = tern.sub(r"((\2) if (\1) else (\3))", e)
        if e2 == e:
            raise ValueError(f"cannot evaluate {expr!r}")
        e = e2
    if not re.fullmatch(r"[\d\s()+\-*/%<>=!&|ifelse]+", e):
        raise ValueError(f"cannot evaluate {expr!r}")
    return int(eval(e.replace("/", "//").replace("&&", " and ").replace("||", " or "), {"__builtins__": {}}))


def matching(text, i, open_c, close_c):
    depth = 0
    for j in range(i, len(text)):
        if text[j] == open_c:
            depth += 1
        elif text[j] == close_c:
            depth -= 1
            if depth == 0:
                return j
    raise ValueError("unbalanced")


class KernelDecl:
    def __init__(self, name, max_threads, buffers, tg_bytes):
        self.name = name
        self.max_threads = max_threads  # [[max_total_threads_per_threadgroup]] or None
        self.buffers = buffers          # index -> (address space, element type, size, is_reference)
        self.tg_bytes = tg_bytes        # static threadgroup memory


def parse_source(pre):
    """Kernels of a preprocessed MSL source: their buffers and threadgroup memory."""
    typedefs = {}
    for base, alias in re.findall(r"typedef\s+((?:const\s+)?\w+)\s+(\w+)\s*;", pre):
        typedefs[alias] = base.replace("const", "").strip()

    def resolve(t):
        while t in typedefs:
            t = typedefs[t]
        return t

    structs = {}
    for name, body in re.findall(r"struct\s+(\w+)\s*\{(.*?)\}\s*;", pre, re.S):
        size = align = 0
        for stmt in body.split(";"):
            m = re.match(r"\s*(\w+)\s+(.+)", stmt, re.S)
            if not m:
                continue
            fs = SCALAR_SIZES.get(resolve(m.group(1)))
            if fs is None:
                break  # a member of unknown size: the struct is not sized
            for decl in m.group(2).split(","):  # `int a, b[4];`
                dm = re.fullmatch(r"\s*\w+\s*(?:\[([^\]]+)\])?\s*", decl)
                size = (size + fs - 1) // fs * fs + fs * (c_eval(dm.group(1)) if dm.group(1) else 1)
            align = max(align, fs)
        else:
            structs[name] = (size + align - 1) // align * align

    def sizeof(t):
        t = resolve(t)
        return SCALAR_SIZES.get(t, structs.get(t))

    kernels = {}
    for m in re.finditer(r"kernel\s+void\s+(\w+)\s*\(", pre):
        name = m.group(1)
        before = pre[max(0, m.start() - 200):m.start()]
        mt = re.search(r"max_total_threads_per_threadgroup\s*\(\s*([^)]*)\)\s*\]\]\s*$", before)
        close = matching(pre, m.end() - 1, "(", ")")
        params = pre[m.end():close]
        buffers = {}
        for p in re.split(r",(?![^()\[\]]*[)\]])", params):
            pb = re.search(r"\[\[\s*buffer\s*\((.*?)\)\s*\]\]", p)
            if not pb:
                continue
            pm = re.match(r"\s*(\w+)\s+(?:const\s+)?(\w+)\s*(?:const\s+)?([*&])", p)
            if not pm or pm.group(1) not in ADDRESS_SPACES:
                raise BindingError(f"kernel {name}: buffer parameter without an address space: {p.strip()}")
            size = sizeof(pm.group(2))
            if size is None:
                raise BindingError(f"kernel {name}: unknown size of type {pm.group(2)}")
            buffers[c_eval(pb.group(1))] = (pm.group(1), resolve(pm.group(2)), size, pm.group(3) == "&")
        body_open = pre.index("{", close)
        body = pre[body_open:matching(pre, body_open, "{", "}")]
        tg = 0
        for t, _, n in re.findall(r"threadgroup\s+(\w+)\s+(\w+)\s*\[([^\]]+)\]\s*;", body):
            tg += (sizeof(t) * c_eval(n) + 15) // 16 * 16
        kernels[name] = KernelDecl(name, c_eval(mt.group(1)) if mt else None, buffers, tg)
    return kernels


class Emulator:
    """ctypes binding of tests/metal/mps_emu/emu_dispatch.cpp."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.fsdpa_mps_emu_kernel.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint32),
                                                  ctypes.c_char_p, ctypes.c_size_t]
        self.lib.fsdpa_mps_emu_dispatch.argtypes = [
            ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
            ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_uint64), ctypes.c_char_p,
            ctypes.c_size_t]

    def max_threads(self, library, kernel):
        out, err = ctypes.c_uint32(0), ctypes.create_string_buffer(4096)
        if self.lib.fsdpa_mps_emu_kernel(library.encode(), kernel.encode(), ctypes.byref(out), err, 4096):
            raise BindingError(err.value.decode())
        return out.value

    def dispatch(self, library, kernel, grid, threads, buffers):
        n = len(buffers)
        ptrs = (ctypes.c_void_p * n)(*[p for p, _ in buffers])
        sizes = (ctypes.c_uint64 * n)(*[s for _, s in buffers])
        err = ctypes.create_string_buffer(8192)
        rc = self.lib.fsdpa_mps_emu_dispatch(library.encode(), kernel.encode(), (ctypes.c_uint32 * 3)(*grid),
                                             (ctypes.c_uint32 * 3)(*threads), n, ptrs, sizes, err, 8192)
        if rc:
            raise RuntimeError(f"emulator: {err.value.decode()}")


def _vec(v, what):
    """optional_vec_from_pyobject: None, an int, or a sequence of 1..3 ints."""
    if v is None:
        return None
    if isinstance(v, int):
        return [v]
    v = [int(x) for x in v]
    if not 0 < len(v) < 4:
        raise BindingError(f"{what}: 1 to 3 dimensions, got {len(v)}")
    return v


class FakeKernel:
    def __init__(self, fake, library, decl):
        self._fake, self._library, self._decl = fake, library, decl
        declared = decl.max_threads or 1024
        emulated = fake.emulator.max_threads(library, decl.name) or 1024
        if declared != emulated:
            raise BindingError(f"{decl.name}: the source declares {declared} threads, the emulator library {emulated}")
        self.max_threads_per_threadgroup = min(fake.max_threads_override or declared, 1024)
        self.thread_execution_width = fake.simd_width
        self.static_thread_group_memory_length = decl.tg_bytes

    def _bytes_arg(self, idx, values, kind, casts):
        cast = casts.get(idx, casts.get(None, "")) if isinstance(casts, dict) else (casts or "")
        if cast:
            if cast == "bf16":
                raise BindingError("the bf16 cast is not modelled by this fake")
            if cast not in CASTS:
                raise BindingError(f"Unsupported cast instruction {cast}")
            fmt, size = CASTS[cast]
            vals = [int(x) for x in values] if fmt in "ihbB" else values
            if fmt in "ihbB":  # C++ integral conversion: wrap around
                bits = 8 * size
                vals = [v & ((1 << bits) - 1) for v in vals]
                fmt = {1: "B", 2: "H", 4: "I"}[size]
            return ("bytes", struct.pack(f"<{len(vals)}{fmt}", *vals))
        return ("bytes", struct.pack(f"<{len(values)}{'q' if kind is int else 'f'}", *values))

    def __call__(self, *args, threads=None, group_size=None, arg_casts=None, error_buf_idx=None):
        if arg_casts is not None and not isinstance(arg_casts, (str, dict)):
            raise BindingError(f"Unexpected caster arg type {type(arg_casts).__name__}")
        casts = {k: v for k, v in arg_casts.items()} if isinstance(arg_casts, dict) else arg_casts
        threads, group = _vec(threads, "threads"), _vec(group_size, "group_size")
        bound = {}
        for idx, a in enumerate(args):
            if isinstance(a, torch.Tensor):
                if a.device.type != self._fake.device_type:
                    if a.device.type == "cpu" and a.dim() == 0:
                        bound[idx] = ("bytes", ctypes.string_at(a.data_ptr(), a.element_size()))
                        continue
                    raise BindingError(f"argument {idx}: Passed CPU tensor to MPS op" if a.device.type == "cpu"
                                       else f"argument {idx}: tensor on {a.device}, not {self._fake.device_type}")
                if threads is None:
                    threads = [a.numel()]
                bound[idx] = ("tensor", a)
            elif isinstance(a, (list, tuple)):
                if len(a) == 0:
                    raise BindingError("Empty list/tuple can not be an argument to metal kernel")
                if isinstance(a[0], int):
                    bound[idx] = self._bytes_arg(idx, [int(x) for x in a], int, casts)
                elif isinstance(a[0], float):
                    bound[idx] = self._bytes_arg(idx, [float(x) for x in a], float, casts)
                else:
                    raise BindingError(f"argument {idx}: Unexpected argument types (lists of tensors are not modelled)")
            elif isinstance(a, float):
                bound[idx] = self._bytes_arg(idx, [a], float, casts)
            elif isinstance(a, int):
                bound[idx] = self._bytes_arg(idx, [a], int, casts)
            else:
                raise BindingError(f"argument {idx}: Unsupported argument type {type(a).__name__}")
        if threads is None:
            raise BindingError("Number of threads is undefined or has wrong dimension")
        if group is None:
            if len(threads) != 1:
                raise BindingError("no group_size for a multi-dimensional dispatch (not modelled)")
            group = [min(threads[0], self.max_threads_per_threadgroup)]
        if len(group) != len(threads):
            raise BindingError("threads and group_size differ in dimensions")
        threads, group = threads + [1] * (3 - len(threads)), group + [1] * (3 - len(group))
        n_group = group[0] * group[1] * group[2]
        if n_group > self.max_threads_per_threadgroup:
            raise BindingError(f"{self._decl.name}: group of {n_group} threads exceeds the pipeline's "
                               f"{self.max_threads_per_threadgroup}")
        if any(t % g for t, g in zip(threads, group)):
            raise BindingError(f"{self._decl.name}: threads {threads} are not whole threadgroups of {group}; "
                               "dispatchThreads would run partial threadgroups")
        buffers = self._check_bindings(bound)
        grid = [t // g for t, g in zip(threads, group)]
        self._fake.dispatches.append((self._library, self._decl.name, grid, group))
        keep = [b for b in buffers if isinstance(b, ctypes.Array)]  # noqa: F841  (alive during the call)
        self._fake.emulator.dispatch(self._library, self._decl.name, grid, group,
                                     [(ctypes.addressof(b), len(b)) if isinstance(b, ctypes.Array) else b
                                      for b in buffers])

    def _check_bindings(self, bound):
        decl = self._decl
        out = []
        for idx in range(max(decl.buffers) + 1 if decl.buffers else 0):
            if idx not in decl.buffers:
                out.append((0, 0))
                continue
            space, etype, size, is_ref = decl.buffers[idx]
            if idx not in bound:
                raise BindingError(f"{decl.name}: [[buffer({idx})]] ({space} {etype}) is not bound")
            kind, val = bound[idx]
            if kind == "bytes":
                if space != "constant":
                    raise BindingError(f"{decl.name}: setBytes into [[buffer({idx})]] of address space {space}")
                if is_ref and len(val) != size:
                    raise BindingError(f"{decl.name}: [[buffer({idx})]] is constant {etype}& ({size} bytes), "
                                       f"got {len(val)} bytes")
                if not is_ref and len(val) % size:
                    raise BindingError(f"{decl.name}: [[buffer({idx})]] holds {etype} ({size} bytes), got {len(val)}")
                out.append(ctypes.create_string_buffer(val, len(val)))
                continue
            t = val
            offset = t.storage_offset() * t.element_size()
            nbytes = t.untyped_storage().nbytes() - offset
            if t.element_size() != size and not (t.dtype == torch.uint8 and not is_ref):
                raise BindingError(f"{decl.name}: [[buffer({idx})]] is {space} {etype} ({size} bytes), "
                                   f"bound a {t.dtype} tensor")
            if nbytes < size:
                raise BindingError(f"{decl.name}: [[buffer({idx})]] needs at least {size} bytes, the buffer has {nbytes}")
            out.append((t.data_ptr(), nbytes))  # data_ptr() = buffer + storage_offset * element_size
        return out


class FakeShaderLibrary:
    def __init__(self, fake, source):
        try:
            source.encode("ascii")
        except UnicodeEncodeError as e:
            raise BindingError(f"non-ASCII character in the shader source at {e.start}: PyTorch's "
                               "NSASCIIStringEncoding conversion fails") from None
        m = re.search(r"specialisation (\S+)", source)
        if not m:
            raise BindingError("the source does not name its specialisation key (plan.cpp assemble_source)")
        self._library = "mtl_" + m.group(1)
        pre = subprocess.run([fake.cxx, "-E", "-P", "-x", "c++", "-D__METAL_VERSION__=300", "-I", fake.stub_dir, "-"],
                             input=source, capture_output=True, text=True)
        if pre.returncode:
            raise BindingError(f"preprocessing the source failed:\n{pre.stderr[-3000:]}")
        self._decls = parse_source(pre.stdout)
        self._fake = fake

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        decl = self._decls.get(name)
        if decl is None:
            raise RuntimeError(f"Failed to create function state object for: {name}")
        return FakeKernel(self._fake, self._library, decl)

    def __dir__(self):
        return sorted(self._decls)


class FakeMPS:
    """Install with ``torch._C._mps_compileShader = fake.compile_shader``."""

    def __init__(self, emulator_path, cxx, stub_dir, device_type="cpu"):
        self.emulator = Emulator(emulator_path)
        self.cxx, self.stub_dir, self.device_type = cxx, stub_dir, device_type
        self.simd_width = 32
        self.max_threads_override = None
        self.compiled = []     # sources, in compile order
        self.dispatches = []   # (library, kernel, grid, group)

    def compile_shader(self, source):
        self.compiled.append(source)
        return FakeShaderLibrary(self, source)
