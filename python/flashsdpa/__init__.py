"""flashsdpa: exact, memory-efficient attention (forward and backward).

* :func:`scaled_dot_product_attention` — PyTorch's SDPA, computed by flashsdpa.
* :func:`flash_attn_func`, :func:`flash_attn_varlen_func` — the FlashAttention API.
* :func:`explain` — the plan (kernel family, tiles, splits, workspace) a call
  would run, and why.
* :func:`enable` / :func:`disable` / :func:`enabled` / :func:`is_enabled` — patch
  ``torch.nn.functional.scaled_dot_product_attention`` so existing models use
  flashsdpa where it can, falling back to PyTorch elsewhere; :func:`stats`.
* ``flashsdpa._C`` — the C ABI on any DLPack-capable arrays (NumPy, PyTorch, ...).
"""
from __future__ import annotations

from . import _C

__version__: str = _C.version()


def backends() -> list:
    """Names of the backends compiled into this build, e.g. ``['cpu', 'cuda']``."""
    return [b for b in _C.backends().split(",") if b]


def set_num_threads(n: int) -> None:
    """Threads the CPU backend uses (its own pool, independent of
    ``torch.set_num_threads``); ``n <= 0`` restores the default (all cores, or
    the ``FLASHSDPA_NUM_THREADS`` environment variable)."""
    _C.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads the CPU backend uses."""
    return _C.get_num_threads()


try:
    import torch as _torch  # noqa: F401
except ImportError:  # the low-level _C API works without PyTorch
    pass
else:
    from ._api import flash_attn_func, flash_attn_varlen_func, scaled_dot_product_attention
    from ._explain import explain
    from ._patch import disable, enable, enabled, is_enabled, reset_stats, stats
    from ._ops import register_device_runner

    # The MPS path (flashsdpa/metal.py): registers its runners with
    # _ops.register_device_runner("mps", ...) where MPS, torch.mps.compile_shader
    # and the planner binding (_C.metal_plan, macOS builds) are all present.
    # Elsewhere MPS calls fall back ("device:mps-unavailable").
    import importlib.util as _ilu

    if _ilu.find_spec(__name__ + ".metal") is not None:
        from . import metal as _metal  # noqa: F401  (registers itself on import)

__all__ = ["set_num_threads", "get_num_threads", "backends", "__version__"]
if "scaled_dot_product_attention" in globals():
    __all__ += [
        "scaled_dot_product_attention",
        "explain",
        "flash_attn_func",
        "flash_attn_varlen_func",
        "enable",
        "disable",
        "enabled",
        "is_enabled",
        "stats",
        "reset_stats",
        "register_device_runner",
    ]
