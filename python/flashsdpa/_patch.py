"""The SDPA drop-in: patching ``torch.nn.functional.scaled_dot_product_attention``."""
from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
from collections import Counter
from typing import Dict, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F

from . import _api, _ops
from ._autocast import autocast_sdpa_args

__all__ = ["enable", "disable", "enabled", "is_enabled", "stats", "reset_stats"]

logger = logging.getLogger("flashsdpa")

KNOWN_BACKENDS = ("cpu", "cuda", "mps")

_original = F.scaled_dot_product_attention
_lock = threading.Lock()
_fallbacks: Counter = Counter()
_logged: set = set()
# Read by the patched function (also while torch.compile traces it, so it
# must stay plain Python data).
_config: Dict[str, object] = {"enabled": False, "min_seq_len": 0, "backends": KNOWN_BACKENDS}


def note_fallback(reason: str, to: str = "torch's scaled_dot_product_attention") -> None:
    """Counts (and logs once per reason) a call that went to PyTorch instead."""
    if not torch.compiler.is_compiling():
        with _lock:
            _fallbacks[reason] += 1
            first = reason not in _logged
            _logged.add(reason)
        if first:
            logger.info("flashsdpa: falling back to %s (%s)", to, reason)


def _fallback(reason: str, *args, **kwargs):
    note_fallback(reason)
    return _original(*args, **kwargs)


def _why_not(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa,
             scale=None) -> Optional[str]:
    # DTensor only if it was ever imported (no import of torch.distributed here)
    mod = sys.modules.get("torch.distributed.tensor")
    if mod is not None:
        dtensor = getattr(mod, "DTensor", ())
        if isinstance(query, dtensor) or isinstance(key, dtensor) or isinstance(value, dtensor):
            # DTensors (PyTorch's context_parallel, tensor parallelism) go to
            # PyTorch's function, whose DTensor handlers shard the work; with the
            # flashsdpa implementation active they reach flashsdpa there.
            return "dtensor"
    if isinstance(query, torch.Tensor):
        device_type = _ops.device_info(query.device).type
        if device_type in KNOWN_BACKENDS and device_type not in _config["backends"]:
            return f"device:{device_type}-disabled"
    why = _api.check_sdpa(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa, scale)
    if why is not None:
        return why.reason
    if query.numel() == 0 or key.numel() == 0 or value.numel() == 0:
        return "empty"
    min_len = _config["min_seq_len"]
    if min_len and max(query.shape[-2], key.shape[-2]) < min_len:
        return "seq_len<min_seq_len"
    return None


@functools.wraps(_original)
def _patched_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False):
    # Inside torch.autocast, cast as aten does for SDPA (torch's own function
    # would, and a fallback then sees the same dtypes).
    query, key, value, attn_mask = autocast_sdpa_args(query, key, value, attn_mask)
    reason = _why_not(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa, scale)
    if reason is None:
        # NaN/Inf inputs propagate as in PyTorch instead of raising.
        if torch.compiler.is_compiling():  # traced graphs keep no exception handler
            return _api._sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, False)
        try:
            return _api._sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, False)
        except RuntimeError as e:
            # A device runner that finds out at its first launch that it cannot
            # run here (flashsdpa/metal.py: a kernel that breaks the GPU
            # assumptions) raises before launching anything, naming the reason.
            reason = getattr(e, "fallback_reason", None)
            if reason is None:
                raise
    if enable_gqa:  # the keyword exists since PyTorch 2.5; pass it only when used
        return _fallback(reason, query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                         is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    return _fallback(reason, query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                     is_causal=is_causal, scale=scale)


def enable(min_seq_len: int = 0, backends: Optional[Iterable[str]] = None) -> None:
    """Routes ``torch.nn.functional.scaled_dot_product_attention`` to flashsdpa.

    Every call flashsdpa supports on its device goes to flashsdpa; anything
    else (nested tensors, float64, batch broadcasting, a float mask that
    requires grad, head dim > 256, a device without a backend, sequences
    shorter than ``min_seq_len`` (the longer of query and key length), ...)
    goes to the original function untouched, counted in :func:`stats` by reason.

    ``backends``: the PyTorch device types to serve (subset of ``"cpu"``,
    ``"cuda"``, ``"mps"``); default all. Calling again updates the settings.
    Only code that looks the function up at call time (``F.scaled_dot_product_attention``,
    as PyTorch's and Hugging Face's modules do) sees the patch.
    """
    if backends is None:
        bk = KNOWN_BACKENDS
    else:
        bk = tuple(backends)
        for b in bk:
            if b not in KNOWN_BACKENDS:
                raise ValueError(f"backends: unknown device type {b!r}; expected some of "
                                 f"{KNOWN_BACKENDS}")
    if int(min_seq_len) < 0:
        raise ValueError(f"min_seq_len: must be >= 0, got {min_seq_len}")
    for b in bk:  # resolve availability now, outside any compiled region
        _ops.device_available(b)
    _config["min_seq_len"] = int(min_seq_len)
    _config["backends"] = bk
    _config["enabled"] = True
    F.scaled_dot_product_attention = _patched_sdpa


def disable() -> None:
    """Restores PyTorch's own ``scaled_dot_product_attention``."""
    _config["enabled"] = False
    F.scaled_dot_product_attention = _original


def is_enabled() -> bool:
    """True while the SDPA patch is active."""
    return bool(_config["enabled"]) and F.scaled_dot_product_attention is _patched_sdpa


@contextlib.contextmanager
def enabled(min_seq_len: int = 0, backends: Optional[Iterable[str]] = None) -> Iterator[None]:
    """Context manager form of :func:`enable`; restores the previous state on exit."""
    saved = dict(_config)
    was = is_enabled()
    enable(min_seq_len=min_seq_len, backends=backends)
    try:
        yield
    finally:
        _config.update(saved)
        if was:
            F.scaled_dot_product_attention = _patched_sdpa
        else:
            disable()


def stats() -> Dict[str, object]:
    """Counts since the last :func:`reset_stats`.

    ``dispatched``: forward calls that ran on flashsdpa kernels (any entry
    point, eager or compiled); ``dispatched_by_device``; ``dispatched_via_aten``:
    those that came through aten's flash operators (the ``flashsdpa``
    implementation of PyTorch's flash-attention registry);
    ``dispatched_via_context_parallel``: calls of aten's CPU flash operator on
    DTensors that PyTorch's ``context_parallel`` sent to flashsdpa's ring (each
    also counts its blocks under ``dispatched``); ``backward``: backward
    calls; ``fallbacks``: {reason: count} of patched SDPA calls that went to
    PyTorch (counted in eager mode; a compiled graph decides at trace time), and
    of aten flash calls that went to aten's own kernel (reasons ``aten:...``).
    """
    c = dict(_ops.counters)
    with _lock:
        fb = dict(_fallbacks)
    return {
        "enabled": is_enabled(),
        "dispatched": c.get("dispatched", 0),
        "dispatched_by_device": {k.split(":", 1)[1]: n for k, n in c.items()
                                 if k.startswith("dispatched:")},
        "dispatched_via_aten": c.get("dispatched_via_aten", 0),
        "dispatched_via_context_parallel": c.get("dispatched_via_context_parallel", 0),
        "backward": c.get("backward", 0),
        "fallbacks": fb,
        "fallback_total": sum(fb.values()),
    }


def reset_stats() -> None:
    """Zeroes the counters of :func:`stats` (and lets each fallback reason be logged again)."""
    with _ops._lock:
        _ops.counters.clear()
    with _lock:
        _fallbacks.clear()
        _logged.clear()
