"""The typing surface: the @overloads of the functions whose return depends
on a flag say what each call really returns, stay in step with the
implementation's parameters, and the extension's stub imports nothing but
the standard library."""
import ast
import inspect
import sys
import typing
from pathlib import Path
from typing import Literal, Union

import pytest
import torch
from torch import Tensor

import flashsdpa

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11),
                                reason="typing.get_overloads needs Python 3.11")

FLAGS = ("return_lse", "return_attn_probs", "return_softmax_lse")


def _cu(n):
    return torch.tensor([0, n], dtype=torch.int32)


def _t(*shape):
    return torch.randn(*shape)


# Each function with the required arguments of a tiny valid call (S 5, H 2, D 8).
CALLS = {
    "flash_attn_func": lambda: [_t(1, 5, 2, 8), _t(1, 5, 2, 8), _t(1, 5, 2, 8)],
    "flash_attn_varlen_func": lambda: [_t(5, 2, 8), _t(5, 2, 8), _t(5, 2, 8), _cu(5), _cu(5), 5, 5],
    "flash_attn_qkvpacked_func": lambda: [_t(1, 5, 3, 2, 8)],
    "flash_attn_kvpacked_func": lambda: [_t(1, 5, 2, 8), _t(1, 5, 2, 2, 8)],
    "flash_attn_varlen_qkvpacked_func": lambda: [_t(5, 3, 2, 8), _cu(5), 5],
    "flash_attn_varlen_kvpacked_func": lambda: [_t(5, 2, 8), _t(5, 2, 2, 8), _cu(5), _cu(5), 5, 5],
    "flash_attn_with_kvcache": lambda: [_t(1, 1, 2, 8), _t(1, 6, 2, 8), _t(1, 6, 2, 8)],
}


def _overloads(name):
    fn = getattr(flashsdpa, name)
    return fn, typing.get_overloads(fn)


def _matches(value, hint) -> bool:
    if hint is type(None):
        return value is None
    if hint is Tensor:
        return isinstance(value, Tensor)
    if typing.get_origin(hint) is Union:
        return any(_matches(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return (isinstance(value, tuple) and len(value) == len(args)
                and all(_matches(v, a) for v, a in zip(value, args)))
    raise AssertionError(f"unexpected return annotation {hint!r}")


def _literal_flags(ov):
    hints = typing.get_type_hints(ov)
    return {n: typing.get_args(h)[0] for n, h in hints.items()
            if n in FLAGS and typing.get_origin(h) is Literal}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_overloads_follow_the_implementation(name):
    fn, overloads = _overloads(name)
    assert len(overloads) >= 3, f"{name}: expected @overloads by flag, found {len(overloads)}"
    impl = inspect.signature(fn).parameters
    for ov in overloads:
        params = inspect.signature(ov).parameters
        assert list(params) == list(impl), f"{name}{inspect.signature(ov)}: parameters differ"
        for p in params.values():
            if p.default is not p.empty:
                assert impl[p.name].default is not p.empty, f"{name}: {p.name} has no default"
            if impl[p.name].kind is p.KEYWORD_ONLY:
                assert p.kind is p.KEYWORD_ONLY, f"{name}: {p.name} is keyword-only"


@pytest.mark.parametrize("name", sorted(CALLS))
def test_last_overload_covers_plain_bools(name):
    _, overloads = _overloads(name)
    *specific, fallback = overloads
    hints = typing.get_type_hints(fallback)
    flags = [n for n in FLAGS if n in hints]
    assert flags and all(hints[n] is bool for n in flags), hints
    covered = set(typing.get_args(hints["return"]))
    for ov in specific:
        assert typing.get_type_hints(ov)["return"] in covered, (ov, covered)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_overload_states_what_the_call_returns(name):
    """Calls each flag-specific overload the way it is written (a flag
    without a default passed positionally, with all before it; otherwise by
    keyword or left at its default) and checks the result's structure."""
    fn, overloads = _overloads(name)
    impl = inspect.signature(fn).parameters
    for ov in overloads[:-1]:
        flags = _literal_flags(ov)
        required = CALLS[name]()
        params = list(inspect.signature(ov).parameters.values())
        positional = [p for p in params[len(required):]
                      if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
        args, kwargs = list(required), {}
        if positional:
            last = params.index(positional[-1])
            for p in params[len(required):last + 1]:
                args.append(flags[p.name] if p.name in flags else impl[p.name].default)
        for n, value in flags.items():
            if value and not any(p.name == n for p in positional):
                kwargs[n] = value
        result = fn(*args, **kwargs)
        expected = typing.get_type_hints(ov)["return"]
        assert _matches(result, expected), (
            f"{name}: {len(args)} positional args, {kwargs} returned {type(result).__name__} "
            f"of {len(result) if isinstance(result, tuple) else 1}, overload says {expected}")


def _extension_stub():
    stub = Path(flashsdpa._C.__file__).with_name("_C.pyi")
    if not stub.exists():
        pytest.skip("no _C.pyi next to the extension: an in-tree build (the installed "
                    "package and the wheel carry it)")
    return stub


def test_extension_stub_imports_only_the_standard_library():
    stub = _extension_stub()
    assert stub.with_name("py.typed").exists()
    modules = set()
    for node in ast.walk(ast.parse(stub.read_text())):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
    outside = sorted(m for m in modules if m not in sys.stdlib_module_names and m != "flashsdpa")
    assert not outside, f"{stub} imports {outside}, which the package does not depend on"
