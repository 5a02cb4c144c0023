"""llama.cpp's log, filtered: errors always reach stderr, everything else only with --verbose.

llama-cpp-python's own filter maps ggml's log levels one off (ggml.h: DEBUG 1, INFO 2, WARN 3,
ERROR 4, CONT 5), which prints every warning and hides errors; this callback replaces it.
"""
from __future__ import annotations

import ctypes
import sys

GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_CONT = 4, 5
_state = {"verbose": False, "last": 0}  # 'last': level of the previous message, for CONT lines


def _callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    """Print ``text`` when verbose, or when it is (the continuation of) an error."""
    effective = _state["last"] if level == GGML_LOG_LEVEL_CONT else level
    _state["last"] = effective
    if _state["verbose"] or effective >= GGML_LOG_LEVEL_ERROR:
        print(text.decode("utf-8", errors="replace"), end="", file=sys.stderr, flush=True)


_c_callback = None  # the ctypes wrapper must outlive every llama.cpp call that may log


def install(*, verbose: bool = False) -> None:
    """Route llama.cpp's log through the filter above (idempotent; call after importing llama_cpp)."""
    global _c_callback
    import llama_cpp

    _state["verbose"] = verbose
    if _c_callback is None:
        _c_callback = llama_cpp.llama_log_callback(_callback)
    llama_cpp.llama_log_set(_c_callback, ctypes.c_void_p(0))
