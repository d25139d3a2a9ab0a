"""Optional native CPU kernels (``csrc/``), compiled on first use with ``torch.utils.cpp_extension``.

Where they cannot be built (no C++ compiler, ``TADA_NATIVE=0``) everything runs as the plain PyTorch
composition, with one warning; the results agree to rounding either way. The build is cached by PyTorch
(``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``) under a name that includes a tag
of this CPU, since it is compiled for the CPU it runs on (``-march=native``).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["available", "disabled"]

_LOCK = threading.Lock()
_STATE = {"built": None, "off": 0}
_SOURCES = ("tpool.cpp", "scale.cpp")
# -fassociative-math (with the two flags it needs) lets GCC vectorise the rows' sums; the sums then run in
# a fixed order per build, so results are deterministic on one machine
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]


def available() -> bool:
    """Whether the native kernels are loaded (building them on the first call), and not switched off by
    :func:`disabled` or ``TADA_NATIVE=0``."""
    if _STATE["off"] or os.environ.get("TADA_NATIVE", "1") == "0":
        return False
    if _STATE["built"] is None:
        with _LOCK:
            if _STATE["built"] is None:
                _STATE["built"] = _build()
    return _STATE["built"]


@contextlib.contextmanager
def disabled():
    """Run the plain PyTorch composition inside this block (for comparisons and benchmarks)."""
    _STATE["off"] += 1
    try:
        yield
    finally:
        _STATE["off"] -= 1


def _cpu_tag() -> str:
    text = platform.machine() + platform.processor()
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
        text += "".join(line for line in info if line.startswith(("model name", "flags", "Features")))[:4096]
    except OSError:
        pass
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _find_ninja() -> None:
    """PyTorch's extension build runs ``ninja`` from PATH; the ``ninja`` package (a dependency) installs it
    beside this Python, which is not on PATH when the environment is not activated."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _build() -> bool:
    if hasattr(torch.ops, "tada_native") and hasattr(torch.ops.tada_native, "tpool_infer"):
        return True  # loaded already (e.g. by another copy of this module)
    csrc = Path(__file__).with_name("csrc")
    try:
        log = logging.getLogger("torch.utils.cpp_extension")
        level = log.level
        log.setLevel(logging.ERROR)  # its import warns that no CUDA runtime exists, which is irrelevant here
        try:
            from torch.utils.cpp_extension import load
        finally:
            log.setLevel(level)
        _find_ninja()
        load(name=f"tada_native_{_cpu_tag()}", sources=[str(csrc / s) for s in _SOURCES], extra_cflags=_CFLAGS,
             extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
        return hasattr(torch.ops.tada_native, "tpool_infer")
    except Exception as err:  # noqa: BLE001  (a missing compiler raises many kinds of error)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warnings.warn(f"tada: the native T-Pool kernels could not be built ({first}); running the plain PyTorch "
                      "composition instead (same results, slower on the CPU). Install a C++ compiler, or set "
                      "TADA_NATIVE=0 to skip the attempt.", RuntimeWarning, stacklevel=3)
        return False
