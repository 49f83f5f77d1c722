"""Runs the bad-input catalogue (bad_input_cases.py) in subprocesses, a
batch of cases per process: each case must raise the expected exception with
a message naming the argument, or succeed with a checked result; a crash or
a hang fails the case it happened in (the runner prints each outcome as it
goes, so the first case without an outcome is the culprit). The processes run
with FLASHSDPA_CHECK_INDICES=1: on GPUs the index values in device memory
(varlen offsets, KV-cache lengths and pages) are otherwise the caller's
contract, unchecked (include/flashsdpa/flashsdpa.h)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import bad_input_cases
from conftest import DEVICES

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT_S = 300
BATCH = 40


def _child_env():
    """The environment of the case processes. They run in this directory, so a
    relative PYTHONPATH (``PYTHONPATH=python pytest ...`` from the repository
    root) is made absolute, or they could not import flashsdpa."""
    paths = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, FLASHSDPA_CHECK_INDICES="1", PYTHONPATH=os.pathsep.join(paths))


def _run_batch(device, names):
    try:
        r = subprocess.run([sys.executable, os.path.join(HERE, "bad_input_cases.py"), device,
                            *names], capture_output=True, text=True, timeout=TIMEOUT_S, cwd=HERE,
                           env=_child_env())
        out, err, rc = r.stdout, r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        out, err, rc = (e.stdout or b"").decode(), (e.stderr or b"").decode(), "timeout"
    results = {}
    for line in out.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            results[rec["name"]] = rec
    missing = [n for n in names if n not in results]
    if missing:  # the first missing case crashed or hung the process
        results[missing[0]] = {"name": missing[0], "status": "crashed",
                               "message": f"rc={rc}\n{err[-3000:]}"}
        results.update(_run_batch(device, missing[1:]) if missing[1:] else {})
    return results


_cache = {}


def _results(device):
    if device not in _cache:
        names = [n for n, c in bad_input_cases.CASES.items() if c[3] is None or device in c[3]]
        res = {}
        for i in range(0, len(names), BATCH):
            res.update(_run_batch(device, names[i:i + BATCH]))
        _cache[device] = res
    return _cache[device]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(bad_input_cases.CASES))
def test_bad_input(name, device):
    _, exc, pattern, devices = bad_input_cases.CASES[name]
    if devices is not None and device not in devices:
        pytest.skip(f"{name}: only on {devices}")
    rec = _results(device)[name]
    assert rec["status"] != "crashed", f"{name}: the process crashed or hung: {rec['message']}"
    if exc is None:
        assert rec["status"] == "ok", f"{name}: raised {rec.get('type')}: {rec.get('message')}\n{rec.get('trace')}"
        return
    assert rec["status"] == "raised", f"{name}: accepted, expected {exc.__name__}"
    assert rec["type"] == exc.__name__, (
        f"{name}: raised {rec['type']} ({rec['message']}), expected {exc.__name__}\n{rec.get('trace')}")
    assert re.search(pattern, rec["message"]), (
        f"{name}: message {rec['message']!r} does not match {pattern!r}")
