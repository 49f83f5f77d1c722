"""flashsdpa: exact, memory-efficient attention (forward and backward).

* :func:`scaled_dot_product_attention` — PyTorch's SDPA, computed by flashsdpa.
* :func:`flash_attn_func`, :func:`flash_attn_varlen_func` and the packed
  ``flash_attn_{,varlen_}{qkv,kv}packed_func`` — the FlashAttention 2.x API;
  :func:`flash_attn_with_kvcache` (KV cache, paged KV) and :func:`merge_attn_states`.
* :func:`block_sparse_attention` — attention restricted by FlexAttention's
  ``BlockMask`` (or :class:`BlockLists`), without an Sq x Sk mask.
* ``torch.nn.attention.activate_flash_attention_impl("flashsdpa")`` — flashsdpa
  as PyTorch's flash-attention implementation (registered on import, not active).
* :func:`explain` — the plan (kernel family, tiles, splits, workspace) a call
  would run, and why.
* :func:`enable` / :func:`disable` / :func:`enabled` / :func:`is_enabled` — patch
  ``torch.nn.functional.scaled_dot_product_attention`` so existing models use
  flashsdpa where it can, falling back to PyTorch elsewhere; :func:`stats`.
* :func:`register_transformers` — an ``attn_implementation`` for Hugging Face models.
* ``flashsdpa.distributed`` — ring / zigzag context parallelism over torch.distributed
  (also serving PyTorch's ``context_parallel`` while the registry implementation is active).
* ``flashsdpa._C`` — the C ABI on any DLPack-capable arrays (NumPy, PyTorch, ...).
"""
from __future__ import annotations

from . import _C

__version__: str = _C.version()


def backends() -> list:
    """Names of the backends compiled into this build, e.g. ``['cpu', 'cuda']``."""
    return [b for b in _C.backends().split(",") if b]


def set_num_threads(n: int) -> None:
    """Threads the CPU backend uses; ``n <= 0`` restores the default: the
    ``FLASHSDPA_NUM_THREADS`` environment variable, else PyTorch's thread count
    (``torch.get_num_threads()``, followed as it changes), else the physical
    cores. While the count equals PyTorch's (its OpenMP
    runtime's), the work runs on PyTorch's OpenMP threads rather than on
    flashsdpa's own, so the two do not compete for the cores;
    ``FLASHSDPA_CPU_OPENMP=0`` keeps it on flashsdpa's own threads."""
    _C.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads the CPU backend uses."""
    return _C.get_num_threads()


# The names below need PyTorch. Installed without it (``pip install
# flashsdpa``), the low-level ``_C`` API works, and using any of them raises
# an ImportError that says how to get them (module ``__getattr__`` below).
_TORCH_API = frozenset({
    "scaled_dot_product_attention", "flash_attn_func", "flash_attn_varlen_func", "enable", "disable",
    "enabled", "is_enabled", "stats", "reset_stats", "register_device_runner",
    "flash_attn_qkvpacked_func", "flash_attn_kvpacked_func", "flash_attn_varlen_qkvpacked_func",
    "flash_attn_varlen_kvpacked_func", "register_transformers", "flash_attn_with_kvcache",
    "merge_attn_states", "explain", "block_sparse_attention", "BlockLists",
})

try:
    import torch as _torch  # noqa: F401
except ImportError:  # the low-level _C API works without PyTorch
    _torch = None
else:
    from ._api import flash_attn_func, flash_attn_varlen_func, scaled_dot_product_attention
    from ._packed import (flash_attn_kvpacked_func, flash_attn_qkvpacked_func,
                          flash_attn_varlen_kvpacked_func, flash_attn_varlen_qkvpacked_func)
    from ._kvcache import flash_attn_with_kvcache
    from ._merge import merge_attn_states
    from ._block_sparse import BlockLists, block_sparse_attention
    from ._explain import explain
    from ._patch import disable, enable, enabled, is_enabled, reset_stats, stats
    from ._ops import register_device_runner
    from ._hf import register_transformers
    from . import _aten

    # PyTorch's flash-attention registry: registered, never activated here
    # (torch.nn.attention.activate_flash_attention_impl("flashsdpa") does that).
    _aten.register()

    # The MPS path (flashsdpa/metal.py): registers its runners with
    # _ops.register_device_runner("mps", ...) where MPS, torch.mps.compile_shader
    # and the planner binding (_C.metal_plan, macOS builds) are all present.
    # Elsewhere MPS calls fall back ("device:mps-unavailable").
    import importlib.util as _ilu

    if _ilu.find_spec(__name__ + ".metal") is not None:
        from . import metal as _metal  # noqa: F401  (registers itself on import)

__all__ = ["set_num_threads", "get_num_threads", "backends", "__version__"]
if _torch is not None:
    __all__ += sorted(_TORCH_API)


def __getattr__(name: str):
    if _torch is None and name in _TORCH_API:
        raise ImportError(
            f"flashsdpa.{name} needs PyTorch, which is not installed: "
            "pip install 'flashsdpa[torch]' (or install torch)")
    raise AttributeError(f"module 'flashsdpa' has no attribute {name!r}")
