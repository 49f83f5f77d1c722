#!/usr/bin/env python3
"""Generate the C++ adapter that compiles one .metal source for the MSL
emulation harness and registers its kernels.

The source is preprocessed (with the same -D specialisation as the real
build) to find every `kernel void name(...)` and read the [[...]] attribute
of each parameter: [[buffer(n)]] or a builtin such as
[[threadgroup_position_in_grid]]. The generated .cpp includes the source
inside a namespace of its own (so several specialisations of one .metal can
live in one test binary) and registers, per kernel, a function that calls it
with argument binders for the current emulated thread.
"""
import argparse
import re
import subprocess
import sys

BUILTINS = {
    "threadgroup_position_in_grid",
    "thread_position_in_threadgroup",
    "thread_position_in_grid",
    "thread_index_in_threadgroup",
    "thread_index_in_simdgroup",
    "simdgroup_index_in_threadgroup",
    "threads_per_threadgroup",
    "threadgroups_per_grid",
    "threads_per_grid",
    "threads_per_simdgroup",
    "simdgroups_per_threadgroup",
    "thread_execution_width",
}
MARK = "__fsdpa_emu_kernel__"


class GenError(Exception):
    pass


def matching(text, i, open_c, close_c):
    """index of the bracket closing the one at text[i]"""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == open_c:
            depth += 1
        elif text[j] == close_c:
            depth -= 1
            if depth == 0:
                return j
    raise GenError("unbalanced brackets in kernel signature")


def split_params(s):
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]


def buffer_index(expr, source, kernel):
    """[[buffer(expr)]]: an integer constant expression after preprocessing"""
    e = expr.strip()
    e = re.sub(r"(?<=\d)[uUlL]+\b", "", e)
    if not re.fullmatch(r"[0-9xXa-fA-F\s()+\-*/%<>|&]+", e):
        raise GenError(f"{source}: kernel {kernel}: cannot evaluate buffer index '{expr}' (use integer literals or macros)")
    v = eval(e.replace("/", "//"), {"__builtins__": {}}, {})
    if not isinstance(v, int) or v < 0 or v > 30:
        raise GenError(f"{source}: kernel {kernel}: buffer index {expr} = {v} out of range 0..30")
    return v


def parse(text, source):
    kernels = []
    for m in re.finditer(re.escape(MARK) + r"\s+void\s+([A-Za-z_]\w*)\s*\(", text):
        name = m.group(1)
        # attributes written before `kernel`, e.g. [[max_total_threads_per_threadgroup(256)]]
        before = text[max(0, m.start() - 400):m.start()]
        max_threads = 0
        mt = re.search(r"max_total_threads_per_threadgroup\s*\(\s*(\d+)\s*\)\s*\]\]\s*$", before)
        if mt:
            max_threads = int(mt.group(1))
        open_i = m.end() - 1
        close_i = matching(text, open_i, "(", ")")
        params = []
        for p in split_params(text[open_i + 1:close_i]):
            if p in ("", "void"):
                continue
            attrs = re.findall(r"\[\[\s*(.*?)\s*\]\]", p)
            if len(attrs) != 1:
                raise GenError(f"{source}: kernel {name}: parameter '{p}' needs exactly one [[...]] attribute")
            a = attrs[0]
            decl = re.sub(r"\[\[.*?\]\]", "", p)
            mb = re.fullmatch(r"buffer\s*\((.*)\)", a)
            if mb:
                if not re.search(r"\b(device|constant)\b", decl):
                    raise GenError(f"{source}: kernel {name}: [[buffer]] parameter '{p}' must be in the device or constant address space")
                if "*" not in decl and "&" not in decl:
                    raise GenError(f"{source}: kernel {name}: [[buffer]] parameter '{p}' must be a pointer or reference")
                params.append(("buffer", buffer_index(mb.group(1), source, name)))
            elif a in BUILTINS:
                params.append(("builtin", a))
            else:
                raise GenError(f"{source}: kernel {name}: attribute [[{a}]] is not in the emulated MSL subset "
                               f"(supported: [[buffer(n)]], {', '.join(sorted('[[' + b + ']]' for b in BUILTINS))})")
        kernels.append((name, params, max_threads))
    return kernels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cxx", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--library", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--depfile")
    ap.add_argument("--prelude", required=True)
    ap.add_argument("--shim", required=True)
    ap.add_argument("--define", action="append", default=[])
    ap.add_argument("--include-dir", action="append", default=[])
    a = ap.parse_args()

    cmd = [a.cxx, "-E", "-P", "-x", "c++", "-std=c++20", "-include", a.prelude]
    cmd += ["-I" + d for d in a.include_dir]
    cmd += ["-D" + d for d in a.define]
    if a.depfile:
        cmd += ["-MD", "-MF", a.depfile, "-MT", a.output]
    cmd += [a.source]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        sys.stderr.write(f"msl_emu_gen: preprocessing {a.source} failed\n")
        return 1
    try:
        kernels = parse(r.stdout, a.source)
    except GenError as e:
        sys.stderr.write(f"msl_emu_gen: error: {e}\n")
        return 1
    if not kernels:
        sys.stderr.write(f"msl_emu_gen: error: no kernel functions found in {a.source}\n")
        return 1
    seen = set()
    for k in kernels:
        if k[0] in seen:
            sys.stderr.write(f"msl_emu_gen: error: kernel {k[0]} declared twice (overloads are not supported)\n")
            return 1
        seen.add(k[0])

    ns = "fsdpa_emu_lib_" + re.sub(r"\W", "_", a.library)
    src = a.source.replace("\\", "/")
    out = []
    out.append(f"// Generated by msl_emu_gen.py from {src} -- do not edit.")
    out.append(f'#include "{a.shim}"')
    out.append(f"namespace {ns} {{")
    out.append(f'#include "{src}"')
    out.append(f"}}  // namespace {ns}")
    out.append("namespace {")
    out.append("using ::fsdpa_emu::Builtin;")
    out.append("using PK = ::fsdpa_emu::detail::ParamInfo::Kind;")
    for name, params, max_threads in kernels:
        args, infos = [], []
        for kind, v in params:
            if kind == "buffer":
                args.append(f"::fsdpa_emu::detail::BufferBinder{{{v}u}}")
                infos.append(f"{{PK::buffer, {v}u, Builtin{{}}}}")
            else:
                args.append(f"::fsdpa_emu::detail::BuiltinBinder{{Builtin::{v}}}")
                infos.append(f"{{PK::builtin, 0u, Builtin::{v}}}")
        out.append(f"void invoke_{name}() {{")
        out.append(f"  ::{ns}::{name}(" + ",\n      ".join(args) + ");")
        out.append("}")
        out.append(f'const ::fsdpa_emu::detail::KernelRegistrar register_{name}{{"{a.library}", "{name}", &invoke_{name},')
        out.append("    {" + ", ".join(infos) + f"}}, {max_threads}u}};")
    out.append("}  // namespace")
    text = "\n".join(out) + "\n"
    with open(a.output, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
