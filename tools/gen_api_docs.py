#!/usr/bin/env python3
"""Writes docs/api.md, the API reference, from the sources' own words: the
docstrings of the Python package (flashsdpa, flashsdpa.distributed and the
low-level flashsdpa._C) and the comments of the C header.

    python tools/gen_api_docs.py          # rewrite docs/api.md
    python tools/gen_api_docs.py --check  # exit 1 if docs/api.md is stale

Needs the built package importable (with PyTorch). tests/python/test_api_docs.py
runs --check, so a docstring change without a regenerated file fails CI.
"""
from __future__ import annotations

import argparse
import inspect
import re
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "api.md"
HEADER = ROOT / "include" / "flashsdpa" / "flashsdpa.h"
FLAGS = ("return_lse", "return_attn_probs", "return_softmax_lse")


def rst_to_md(text: str) -> str:
    """The docstrings' reStructuredText roles and literals as Markdown."""
    text = re.sub(r":(?:func|class|mod|meth|attr):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def annotation(a) -> str:
    if isinstance(a, str):
        return a
    text = a.__name__ if isinstance(a, type) else repr(a)
    return re.sub(r"\b(typing|torch|builtins)\.", "", text).replace("NoneType", "None")


def wrap(head: str, parts: list[str], tail: str) -> str:
    """head(parts)tail on one line, or one part per line when long."""
    one_line = f"{head}({', '.join(parts)}){tail}"
    if len(one_line) <= 88:
        return one_line
    return f"{head}(\n" + "".join(f"    {x},\n" for x in parts) + f"){tail}"


def split_top_level(params: str) -> list[str]:
    """Splits "a: X[b, c], d = 1" at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(params):
        depth += ch in "([{" and 1 or ch in ")]}" and -1 or 0
        if ch == "," and depth == 0:
            parts.append(params[start:i].strip())
            start = i + 1
    if params[start:].strip():
        parts.append(params[start:].strip())
    return parts


def nb_signature(sig: str) -> str:
    """A nanobind signature line, wrapped like the Python ones."""
    m = re.match(r"(\w+)\((.*)\)(.*)$", sig.strip())
    if not m:
        return sig.strip()
    return wrap(m.group(1), split_top_level(m.group(2)), m.group(3))


def signature(name: str, fn) -> str:
    """name(params) -> return, one parameter per line when long."""
    sig = inspect.signature(fn)
    parts, seen_kw_only = [], False
    for p in sig.parameters.values():
        if p.kind is p.KEYWORD_ONLY and not seen_kw_only:
            parts.append("*")
            seen_kw_only = True
        if p.kind is p.VAR_POSITIONAL:
            seen_kw_only = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.annotation is not p.empty:
            text += f": {annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        parts.append(text)
    ret = ""
    if sig.return_annotation is not sig.empty:  # aliases resolved, e.g. FlashResult
        ret = f" -> {annotation(typing.get_type_hints(fn).get('return', sig.return_annotation))}"
    return wrap(name, parts, ret)


def overload_lines(fn) -> list[str]:
    """What the call returns for each flag setting, from its @overloads (the
    last one, for plain bools, and repeats for positional/keyword forms
    left out)."""
    lines = []
    for ov in typing.get_overloads(fn)[:-1]:
        hints = typing.get_type_hints(ov)
        flags = [f"`{n}={typing.get_args(hints[n])[0]}`" for n in FLAGS
                 if n in hints and typing.get_origin(hints[n]) is typing.Literal]
        line = f"- {' and '.join(flags)} → `{annotation(hints['return'])}`"
        if line not in lines:
            lines.append(line)
    return lines


def python_section(title: str, module, names, intro: str | None = None) -> list[str]:
    out = [f"## {title}", ""]
    if intro:
        out += [rst_to_md(inspect.cleandoc(intro)), ""]
    for name in names:
        obj = getattr(module, name)
        out += [f"### `{module.__name__}.{name}`", ""]
        if inspect.isclass(obj):
            out += ["```python", f"class {name}", "```", ""]
            if obj.__doc__:
                out += [rst_to_md(inspect.cleandoc(obj.__doc__)), ""]
            props = [n for n, v in vars(obj).items() if isinstance(v, property) or
                     type(v).__name__ == "nb_property" or (not n.startswith("_") and not callable(v))]
            if props:
                out += ["Fields: " + ", ".join(f"`{p}`" for p in props) + ".", ""]
        elif callable(obj):
            if type(obj).__name__ == "nb_func":  # nanobind: the signature is the doc's first line
                sig, _, doc = (obj.__doc__ or "").partition("\n")
                out += ["```python", nb_signature(sig), "```", ""]
                obj_doc = doc
            else:
                out += ["```python", signature(name, obj), "```", ""]
                obj_doc = obj.__doc__ or ""
                ov = overload_lines(obj)
                if ov:
                    out += ["Returns, by flag (`@overload`s for type checkers):", ""] + ov + [""]
            doc = inspect.cleandoc(obj_doc).strip()
            out += [rst_to_md(doc) if doc else "(no docstring)", ""]
        else:
            out += [f"`{obj!r}`" if not isinstance(obj, str) else "A string.", ""]
    return out


def header_section() -> list[str]:
    """The C ABI: the header's opening comment (the semantics) verbatim, then
    each declaration with the comment above it, as in the header."""
    text = HEADER.read_text()
    opening = re.match(r"/\*(.*?)\*/", text, re.S).group(1)
    semantics = "\n".join(re.sub(r"^ ?\* ?", "", line) for line in opening.strip("\n").splitlines())
    body = text.split('extern "C" {\n#endif\n', 1)[1].split("#ifdef __cplusplus\n}", 1)[0]
    out = ["## C ABI: `include/flashsdpa/flashsdpa.h`", "",
           "The header's opening comment, which defines the semantics of every backend:", "",
           "```text", semantics, "```", ""]
    chunk: list[str] = []
    depth = 0

    def flush():
        code = "\n".join(chunk).strip("\n")
        chunk.clear()
        if not code:
            return
        names = re.findall(r"FSDPA_API[^(]*?\b(\w+)\s*\(", code)
        names += re.findall(r"}\s*(\w+)\s*;", code)            # typedef struct/enum ... } name;
        names += re.findall(r"^#define\s+(\w+)", code, re.M)
        title = ", ".join(f"`{n}`" for n in dict.fromkeys(names)) or "Note"
        out.extend([f"### {title}", "", "```c", code, "```", ""])

    for line in body.splitlines():
        depth += line.count("{") - line.count("}")
        if not line.strip() and depth == 0:
            flush()
        else:
            chunk.append(line)
    flush()
    return out


def render() -> str:
    import flashsdpa
    import flashsdpa.distributed as distributed
    from flashsdpa import _C

    public = sorted(n for n in flashsdpa.__all__ if not n.startswith("__"))
    low_level = sorted(n for n in dir(_C) if not n.startswith("_") and not n.startswith("metal")
                       and (callable(getattr(_C, n))))
    constants = sorted(n for n in dir(_C) if n.isupper())
    lines = [
        "# API reference",
        "",
        "<!-- Generated by `python tools/gen_api_docs.py` from the docstrings and the C "
        "header; do not edit. tests/python/test_api_docs.py checks that it is current. -->",
        "",
        "Contents: [`flashsdpa`](#python-flashsdpa) · "
        "[`flashsdpa.distributed`](#python-flashsdpadistributed) · "
        "[`flashsdpa._C`](#python-flashsdpa_c-low-level-no-pytorch) · "
        "[C ABI](#c-abi-includeflashsdpaflashsdpah)",
        "",
    ]
    lines += python_section("Python: `flashsdpa`", flashsdpa, public, flashsdpa.__doc__)
    lines += python_section("Python: `flashsdpa.distributed`", distributed,
                            list(distributed.__all__), distributed.__doc__)
    lines += python_section("Python: `flashsdpa._C` (low level, no PyTorch)", _C, low_level,
                            _C.__doc__)
    lines += ["Constants: " + ", ".join(f"`{n} = {getattr(_C, n)}`" for n in constants) + ".", ""]
    lines += header_section()
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if docs/api.md is not current")
    args = ap.parse_args()
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run python tools/gen_api_docs.py",
                  file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
