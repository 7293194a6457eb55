"""Serving one gateway app from several processes that share its loaded models.

The models are loaded once, in the first process, before it forks: the others inherit the
stacked forest and the similarity index as copy-on-write pages that nobody writes, so N
processes take little more memory than one. Every process, the first included, runs its own
uvicorn server (and event loop) on the same listening socket, which the kernel balances between
them. SIGTERM or SIGINT to the first stops them all (a process whose first process died is sent
SIGTERM by the kernel); a forked process that dies is not replaced, and the others keep
serving.

Each process keeps its own metrics, admission count and job runner (the job store is shared
and claims are atomic); a model registered by a job is picked up by the process that ran the job
and, in the others, at their next reload (POST /v1/models/reload).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import time

from fastapi import FastAPI

log = logging.getLogger("molserve.gateway")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the first process exits (Linux; elsewhere nothing)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl(
            1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _server(app: FastAPI, log_level: str):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=False, loop="auto", http="auto")
    return uvicorn.Server(config)


def serve(app: FastAPI, host: str, port: int, workers: int, log_level: str) -> None:
    """Load the app's models, fork `workers - 1` more servers on one socket, serve until
    stopped."""
    started = time.perf_counter()
    app.state.load_models()  # each process's start-up reload then finds them loaded, and keeps them
    log.info("loaded %d fast models in %.3f s; serving from %d processes",
             len(app.state.router.fast.models), time.perf_counter() - started, workers)
    sock = _listen(host, port)
    # Objects alive now are never collected in the forked processes, so the collector does not
    # write to (and so copy) the pages they live on.
    gc.collect()
    gc.freeze()
    parent = os.getpid()
    children = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            _die_with_parent()
            if os.getppid() != parent:  # the first process is already gone
                os._exit(0)
            try:
                _server(app, log_level).run(sockets=[sock])
            finally:
                os._exit(0)
        children.append(pid)
    try:
        _server(app, log_level).run(sockets=[sock])
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 10
        for pid in children:
            while time.monotonic() < deadline:
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    if status:
                        log.info("gateway process %d exited with status %d", pid, status)
                    break
                time.sleep(0.05)
        sock.close()
