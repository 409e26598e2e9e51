"""Native CPU kernels, compiled from C at first use and cached; absent when no C compiler is found.

:func:`ragged_decode` loads ``ragged_decode.c`` (exact split-K decode attention over ragged per-head storage, see
the file's header): it is compiled once per machine with ``$CC`` (default ``cc``) ``-O3 -march=native -fopenmp``
into ``$LAVAKV_CACHE/native/`` (default ``~/.cache/lavakv/native``), keyed by the source, the flags, the compiler
and the CPU model, and loaded with ctypes. OpenMP resolves to the ``libgomp`` that torch already loaded. Set
``LAVAKV_NATIVE=0`` to use the pure-PyTorch strategies only. A failed build is logged once and not retried in
the process; callers fall back to the PyTorch strategies, which compute the same result.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("ragged_decode.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_I64, _INT, _F32, _PTR = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
# lavakv_ragged_decode's parameters, in order (see ragged_decode.c)
SIGNATURE = [_PTR, _I64, _INT, _INT, _INT, _F32, _PTR, _PTR, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _I64,
             _I64, _I64, _I64, _I64, _I64, _I64, _I64, _PTR, _I64, _INT, _INT, _INT, _PTR]


def enabled() -> bool:
    """Whether native kernels may be used (``LAVAKV_NATIVE`` is not ``0``)."""
    return os.environ.get("LAVAKV_NATIVE", "1") != "0"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :func:`platform.processor` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _compiler_version(compiler: str) -> str:
    done = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.splitlines()[0] if done.stdout else ""


def build(source: Path = SOURCE) -> Path:
    """Compile ``source`` into the cache (once per source, flags, compiler and CPU); returns the library's path.

    Raises:
        RuntimeError: no compiler, or the compiler failed (its message included).
    """
    from lavakv.models import cache_root

    compiler = os.environ.get("CC", "cc")
    try:
        version = _compiler_version(compiler)
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"no working C compiler ({compiler!r}): {error}") from error
    text = source.read_bytes()
    key = hashlib.sha256(b"\0".join([text, " ".join(FLAGS).encode(), version.encode(), cpu_model().encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    target = cache_root() / "native" / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # build aside, then move: concurrent builds are safe
        built = Path(tmp) / target.name
        try:
            done = subprocess.run([compiler, *FLAGS, "-o", str(built), str(source), "-lm"], capture_output=True,
                                  text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as error:
            raise RuntimeError(f"{compiler} could not build {source.name}: {error}") from error
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} could not build {source.name}:\n{done.stderr[-2000:]}")
        os.replace(built, target)
    logger.info("built native kernel %s", target)
    return target


@functools.cache
def ragged_decode():
    """The ctypes function ``lavakv_ragged_decode``, or None when disabled or it cannot be built/loaded."""
    if not enabled():
        return None
    try:
        library = ctypes.CDLL(str(build()))
    except (RuntimeError, OSError) as error:
        logger.warning("lavakv: native ragged decode kernel unavailable, using the PyTorch strategies (%s)", error)
        return None
    function = library.lavakv_ragged_decode
    function.argtypes = SIGNATURE
    function.restype = ctypes.c_int  # 0, or 1 when out of memory
    return function
