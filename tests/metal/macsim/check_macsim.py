#!/usr/bin/env python3
"""Checks, on Linux, what a Mac build would do first (issue 17).

Subcommands (each one ctest test, label macsim; exit 77 = skipped, for ctest's
SKIP_RETURN_CODE, when clang++ is absent):

  configure     cmake -DAPPLE=ON -DFLASHSDPA_WITH_METAL=ON with clang++ as the
                Objective-C++ compiler must configure and generate, and the
                compile line of src/metal/metal_backend.mm must be Objective-C++
                with -fobjc-arc (compile_commands.json).
  objcxx        clang++ -x objective-c++ -fsyntax-only -fobjc-arc of
                metal_backend.mm against the stub Metal/Foundation headers of
                stub/ (Apple's signatures); the same without ARC must fail (the
                file's #error).
  availability  every use of an API the stubs mark API_AVAILABLE(macos(N)),
                N above the deployment floor, sits inside an
                `if (@available(macOS M, *))` block with M >= N. (clang checks
                this itself only for Apple targets, which need Apple's SDK.)
  ucontext      the emulator's runtime.cpp on its portable ucontext path
                compiles (with --cxx, the build's compiler) against a
                <ucontext.h> that, like macOS's, requires _XOPEN_SOURCE.

Usage: check_macsim.py <subcommand> --source-dir DIR [--work-dir DIR] [--cmake CMAKE] [--cxx CXX]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
# Oldest macOS the C ABI host supports: MTLLanguageVersion3_0 needs macOS 13.
DEPLOYMENT_FLOOR = (13, 0)


def clangxx():
    path = shutil.which("clang++")
    if path is None:
        print("SKIPPED: clang++ is not installed (scripts/install_deps.sh installs it)")
        sys.exit(SKIP)
    return path


def run(cmd, **kw):
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, text=True, capture_output=True, **kw)


def check_configure(args):
    cxx = clangxx()
    work = tempfile.mkdtemp(prefix="macsim-", dir=args.work_dir)
    try:
        r = run([args.cmake, "-S", args.source_dir, "-B", work, "-G", "Ninja", "-DAPPLE=ON",
                 "-DFLASHSDPA_WITH_METAL=ON", "-DFLASHSDPA_WITH_CUDA=OFF", "-DFLASHSDPA_BUILD_TESTS=OFF",
                 f"-DCMAKE_OBJCXX_COMPILER={cxx}", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"])
        if r.returncode != 0:
            print(r.stdout[-4000:], r.stderr[-4000:])
            sys.exit("FAIL: the simulated macOS configure/generate failed")
        with open(os.path.join(work, "compile_commands.json")) as f:
            entries = [e for e in json.load(f) if e["file"].endswith("src/metal/metal_backend.mm")]
        if len(entries) != 1:
            sys.exit(f"FAIL: expected one compile command for metal_backend.mm, found {len(entries)}")
        cmd = entries[0].get("command") or " ".join(entries[0]["arguments"])
        print(cmd)
        for flag in ("-fobjc-arc", "-x objective-c++"):
            if flag not in cmd:
                sys.exit(f"FAIL: the compile line of metal_backend.mm lacks {flag}")
        print("OK: configure + generate, metal_backend.mm compiled as Objective-C++ with ARC")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def objcxx_cmd(cxx, source_dir, arc):
    return [cxx, "-x", "objective-c++", "-std=c++20", "-fsyntax-only", "-fobjc-runtime=macosx-14.0",
            "-fobjc-arc" if arc else "-fno-objc-arc", "-Wall", "-Werror", "-Wno-nullability-completeness",
            "-I", os.path.join(HERE, "stub"), "-I", os.path.join(source_dir, "include"),
            "-I", os.path.join(source_dir, "src"), "-DFLASHSDPA_BUILDING",
            os.path.join(source_dir, "src", "metal", "metal_backend.mm")]


def check_objcxx(args):
    cxx = clangxx()
    r = run(objcxx_cmd(cxx, args.source_dir, True))
    if r.returncode != 0:
        print(r.stdout, r.stderr)
        sys.exit("FAIL: metal_backend.mm does not compile (syntax-only, ARC, stub Metal headers)")
    r = run(objcxx_cmd(cxx, args.source_dir, False))
    if r.returncode == 0 or "-fobjc-arc" not in r.stderr:
        print(r.stdout, r.stderr)
        sys.exit("FAIL: metal_backend.mm compiles without ARC; its #error guard is gone")
    print("OK: metal_backend.mm compiles with ARC and refuses to compile without it")


def _version(text):
    parts = [int(x) for x in text.split(".")]
    return tuple(parts + [0] * (2 - len(parts)))


def gated_names(stub_dir):
    """{identifier: macOS version} for stub declarations marked API_AVAILABLE(macos(N)) above the floor."""
    names = {}
    for root, _, files in os.walk(stub_dir):
        for fn in files:
            text = open(os.path.join(root, fn)).read()
            # enums: typedef NS_ENUM(T, Name){ A = 0, ... } API_AVAILABLE(macos(N), ...);
            for m in re.finditer(r"NS_(?:ENUM|OPTIONS)\(\w+,\s*(\w+)\)\s*\{([^{}]*)\}\s*API_AVAILABLE\(macos\(([\d.]+)\)",
                                 text):
                v = _version(m.group(3))
                if v > DEPLOYMENT_FLOOR:
                    names[m.group(1)] = v
                    for c in re.findall(r"\b(\w+)\s*=", m.group(2)):
                        names[c] = v
            # members and enumerators: ... name API_AVAILABLE(macos(N), ...)
            for m in re.finditer(r"(\w+)\s+API_AVAILABLE\(macos\(([\d.]+)\)", text):
                v = _version(m.group(2))
                if v > DEPLOYMENT_FLOOR:
                    names[m.group(1)] = v
    return names


def guarded_ranges(src):
    """[(begin, end, version)] of the blocks run under `if (@available(macOS N, *))`."""
    out = []
    for m in re.finditer(r"if\s*\(\s*@available\(\s*macOS\s+([\d.]+)\s*,\s*\*\s*\)\s*\)\s*", src):
        v = _version(m.group(1))
        i = m.end()
        if src[i] == "{":
            depth = 0
            for j in range(i, len(src)):
                depth += {"{": 1, "}": -1}.get(src[j], 0)
                if depth == 0:
                    break
            out.append((i, j, v))
        else:
            out.append((i, src.index(";", i), v))
    return out


def strip_comments(src):
    """Blanks // and /* */ comments, keeping offsets and line numbers."""
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r"//[^\n]*|/\*.*?\*/", blank, src, flags=re.S)


def availability_errors(src, names):
    src = strip_comments(src)
    errors = []
    ranges = guarded_ranges(src)
    for name, v in sorted(names.items()):
        for m in re.finditer(r"\b%s\b" % re.escape(name), src):
            if not any(b <= m.start() <= e and gv >= v for b, e, gv in ranges):
                line = src.count("\n", 0, m.start()) + 1
                errors.append(f"metal_backend.mm:{line}: {name} needs macOS {v[0]}.{v[1]} "
                              "outside an `if (@available(macOS ...))` block")
    return errors


def check_availability(args):
    names = gated_names(os.path.join(HERE, "stub"))
    if not names:
        sys.exit("FAIL: no API_AVAILABLE(macos(...)) marks found in the stubs")
    src = open(os.path.join(args.source_dir, "src", "metal", "metal_backend.mm")).read()
    errors = availability_errors(src, names)
    # The check must see the code's guard: without it the same source fails.
    unguarded = re.sub(r"if\s*\(\s*@available\([^)]*\)\s*\)", "if (true)", src)
    if any(n in src for n in names) and not availability_errors(unguarded, names):
        errors.append("self-check: removing the @available guards was not detected")
    if errors:
        sys.exit("FAIL:\n" + "\n".join(errors))
    used = sorted(n for n in names if re.search(r"\b%s\b" % n, src))
    print(f"OK: {len(used)} macOS>13 symbols used only under @available: {', '.join(used)}")


def check_ucontext(args):
    cxx = args.cxx  # the build's C++ compiler: the point is the header rule, not clang
    emu = os.path.join(args.source_dir, "tests", "metal", "emu")
    common = ["-std=c++20", "-DFSDPA_EMU_FORCE_UCONTEXT", "-I", os.path.join(HERE, "stub_ucontext"),
              "-I", os.path.join(emu, "include"), os.path.join(emu, "src", "runtime.cpp")]
    # g++ predefines _GNU_SOURCE, with which glibc defines _XOPEN_SOURCE
    # itself; macOS defines neither. Preprocessing with -U_GNU_SOURCE
    # -D_DEFAULT_SOURCE (glibc's counterpart of _DARWIN_C_SOURCE) leaves
    # _XOPEN_SOURCE to the source, as on a Mac. (libstdc++ itself needs
    # _GNU_SOURCE to compile, so this step stops after the preprocessor.)
    r = run([cxx, "-E", "-o", os.devnull, "-U_GNU_SOURCE", "-D_DEFAULT_SOURCE"] + common)
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-3000:])
        sys.exit("FAIL: runtime.cpp includes <ucontext.h> without defining _XOPEN_SOURCE first (macOS rejects it)")
    r = run([cxx, "-fsyntax-only"] + common)
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-3000:])
        sys.exit("FAIL: runtime.cpp does not compile on its ucontext path")
    print("OK: runtime.cpp defines _XOPEN_SOURCE before <ucontext.h> and compiles on the ucontext path")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("check", choices=["configure", "objcxx", "availability", "ucontext"])
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--work-dir", default=tempfile.gettempdir())
    ap.add_argument("--cmake", default="cmake")
    ap.add_argument("--cxx", default="c++")
    args = ap.parse_args()
    {"configure": check_configure, "objcxx": check_objcxx, "availability": check_availability,
     "ucontext": check_ucontext}[args.check](args)


if __name__ == "__main__":
    main()
