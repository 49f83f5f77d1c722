#!/usr/bin/env python3
"""Source lint of the Metal kernels (src/metal/kernels/*), ctest
metal_kernel_source_lint (issue 17). Things Apple's compiler or PyTorch would
reject on a Mac, which the emulator (a C++ compiler) does not:

* ASCII only: torch.mps.compile_shader hands the source to Metal through
  NSASCIIStringEncoding; one non-ASCII byte (even in a comment) fails it.
* every pointer or reference parameter of a function or kernel names its
  address space (device, constant, threadgroup, thread; FSDPA_TG_PTR is
  threadgroup): MSL requires it for kernels and the emulator accepts it away.
* every kernel fsdpa_<name> declares
  [[max_total_threads_per_threadgroup(FSDPA_THREADS_<NAME>)]], a define the
  planner emits; that its value equals the dispatched threadgroup size for
  every config the planner can emit is checked in C++
  (tests/metal/attention/test_metal_lint.cpp, with the planner).

Usage: lint_kernel_sources.py [kernel dir]; exits 1 listing every finding.
"""
import os
import re
import sys

ADDRESS_SPACES = ("device", "constant", "threadgroup", "thread")


def strip(src):
    """Comments and preprocessor lines blanked (offsets and lines kept)."""
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))
    src = re.sub(r"//[^\n]*|/\*.*?\*/", blank, src, flags=re.S)
    return re.sub(r"(?m)^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", blank, src)


def functions(code):
    """(name, params text, offset, is_kernel) of every function definition at file scope."""
    depth, i, out = 0, 0, []
    while i < len(code):
        c = code[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0:
            m = re.compile(r"\b(\w+)\s*\(").match(code, i)
            if m and (i == 0 or not (code[i - 1].isalnum() or code[i - 1] == "_")):
                j, d = m.end() - 1, 0
                while True:
                    d += {"(": 1, ")": -1}.get(code[j], 0)
                    if d == 0:
                        break
                    j += 1
                rest = code[j + 1:j + 200].lstrip()
                if rest.startswith("{") and m.group(1) not in ("if", "for", "while", "switch"):
                    head = code[max(0, i - 40):i]
                    out.append((m.group(1), code[m.end():j], i, bool(re.search(r"\bkernel\s+void\s*$", head))))
                i = j
        i += 1
    return out


def split_params(text):
    parts, depth, cur = [], 0, ""
    for c in text:
        if c in "(<[":
            depth += 1
        elif c in ")>]":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    return parts + [cur] if cur.strip() else parts


def lint(kernel_dir):
    findings, kernels = [], 0
    for fn in sorted(os.listdir(kernel_dir)):
        path = os.path.join(kernel_dir, fn)
        raw = open(path, "rb").read()
        for n, line in enumerate(raw.split(b"\n"), 1):
            bad = [b for b in line if b > 127]
            if bad:
                findings.append(f"{fn}:{n}: non-ASCII byte(s) {bytes(bad[:4])!r}: PyTorch compiles the source as ASCII")
        if not fn.endswith(".metal"):
            continue
        src = raw.decode("ascii", "replace")
        code = strip(src)
        for name, params, off, is_kernel in functions(code):
            line = code.count("\n", 0, off) + 1
            for p in split_params(params):
                decl = re.sub(r"\[\[.*?\]\]", "", p).strip()
                if not re.search(r"[*&]", decl) or decl.startswith("FSDPA_TG_PTR("):
                    continue
                first = re.sub(r"^const\s+", "", decl).split()[0]
                if first not in ADDRESS_SPACES:
                    findings.append(f"{fn}:{line}: {name}: parameter '{decl}' has no address space")
            if is_kernel:
                kernels += 1
                head = code[max(0, off - 300):off]
                want = "FSDPA_THREADS_" + re.sub(r"^fsdpa_", "", name).upper()
                m = re.search(r"\[\[\s*max_total_threads_per_threadgroup\s*\(\s*(\w+)\s*\)\s*\]\]\s*kernel\s+void\s*$",
                              head)
                if not m:
                    findings.append(f"{fn}:{line}: kernel {name} lacks "
                                    f"[[max_total_threads_per_threadgroup({want})]] before `kernel`")
                elif m.group(1) != want:
                    findings.append(f"{fn}:{line}: kernel {name} declares max threads {m.group(1)}, expected {want} "
                                    "(the planner's define, src/metal/plan.cpp kernel_defines)")
    return findings, kernels


def main():
    kernel_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "metal", "kernels")
    findings, kernels = lint(kernel_dir)
    if kernels == 0:
        findings.append("no kernels found: the lint's parser no longer matches the sources")
    if findings:
        print("\n".join(findings))
        sys.exit(1)
    print(f"OK: {kernels} kernels; sources ASCII; every pointer/reference parameter has an address space; "
          "every kernel declares its planner-defined max threads")


if __name__ == "__main__":
    main()
