"""Serving one gateway app from several processes that share its loaded models.

The models are loaded once, in the parent, before it forks: the children inherit the stacked
forest and the similarity index as copy-on-write pages that nobody writes, so N processes take
little more memory than one. Each child runs its own uvicorn server (and event loop) on the
same listening socket, which the kernel balances between them. The parent only supervises: a
child that dies is forked again from the same loaded state, and SIGTERM or SIGINT stops them all.

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


def _child(app: FastAPI, sock: socket.socket, log_level: str) -> None:
    import uvicorn

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, loop="auto", http="auto")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        os._exit(0)


def serve(app: FastAPI, host: str, port: int, workers: int, log_level: str) -> None:
    """Load the app's models, fork `workers` servers on one socket, supervise until stopped."""
    started = time.perf_counter()
    app.state.load_models()  # each child's start-up reload then finds them loaded, and keeps them
    log.info("loaded %d fast models in %.3f s before forking %d processes",
             len(app.state.router.fast.models), time.perf_counter() - started, workers)
    sock = _listen(host, port)
    # Objects alive now are never collected in the children, so the collector does not write to
    # (and so copy) the pages they live on.
    gc.collect()
    gc.freeze()
    children: set[int] = set()
    stopping = False

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def fork() -> None:
        pid = os.fork()
        if pid == 0:
            _child(app, sock, log_level)
        children.add(pid)

    for _ in range(workers):
        fork()
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        children.discard(pid)
        if not stopping:
            log.error("gateway process %d exited (status %d); starting another", pid, status)
            time.sleep(0.5)  # a child that dies at once is not restarted in a tight loop
            fork()
    sock.close()
