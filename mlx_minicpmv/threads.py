"""Threads that ran the model must really have ended before the interpreter is torn down.

MLX 0.32 keeps ``mx.compile``'s cache per thread (a C++ ``thread_local``; the model compiles its
CPU kernels and the DeltaNet decode step) and frees it when the OS thread ends, after Python's
``Thread.join()`` has already returned; freeing it releases Python functions, so it takes the
GIL. If the main thread has meanwhile begun finalising the interpreter, Python ends that thread
inside the C++ destructor and the process aborts ("terminate called without an active
exception", exit 134): seen with ``stream_generate`` on two worker threads in 4 of 6 runs
(gdb: ``__call_tls_dtors`` -> ``~CompileCache`` -> ``PyGILState_Ensure`` -> ``pthread_exit``).
So each non-main thread that runs generation is noted, and at exit, while other threads may
still take the GIL, the interpreter waits (GIL released, a few seconds at most) until those
that have finished in Python have also ended in the OS.
"""

import atexit
import os
import threading
import time

WAIT_SECONDS = 5.0
_noted = {}  # native thread id -> threading.Thread
_lock = threading.Lock()


def note_current_thread() -> None:
    thread = threading.current_thread()
    if thread is not threading.main_thread():
        with _lock:
            _noted[threading.get_native_id()] = thread


def os_thread_exists(native_id: int) -> bool:
    return os.path.exists(f"/proc/self/task/{native_id}")


def wait_for_finished_threads(timeout: float = WAIT_SECONDS) -> None:
    """Wait until every noted thread that has returned from Python has left the OS too."""
    with _lock:
        finished = [tid for tid, thread in _noted.items() if not thread.is_alive()]
    if not finished:
        return
    if not os.path.isdir("/proc/self/task"):  # no per-thread view (macOS): give their destructors a moment
        time.sleep(0.1)
        return
    deadline = time.monotonic() + timeout
    for tid in finished:
        while os_thread_exists(tid) and time.monotonic() < deadline:
            time.sleep(0.002)


atexit.register(wait_for_finished_threads)
