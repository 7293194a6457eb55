"""Run one job in its own process: `python -m molserve.jobs.execute --job ID ...`.

Progress, logs and checkpoints go to the job store as the job runs. A screen writes its result
in chunks, each fsynced before its checkpoint is recorded, so a process killed at any moment
resumes from the last recorded chunk without losing or repeating rows. A training job writes
its model through the registry's atomic rename: killed mid-way, it leaves no version behind.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from molserve.jobs.store import LEASE_S, JobStore, open_store


class Cancelled(Exception):
    pass


class LeaseLost(Exception):
    """Another process holds the job now (this one's lease ran out): change nothing, stop."""


class TimeLimitExceeded(Exception):
    """The job ran past its kind's time limit (MOLSERVE_JOB_TIME_LIMITS); it fails with this."""


class JobContext:
    """What a running job may do to its row: every write names the lease it holds."""

    def __init__(self, store: JobStore, job: dict[str, Any], lease: str,
                 lease_s: float = LEASE_S) -> None:
        self.store = store
        self.job = job
        self.id = job["id"]
        self.lease = lease
        self.lease_s = lease_s
        self.started = time.time()
        self._last_write = 0.0

    def progress(self, fraction: float, step: str, metrics: dict | None = None, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_write < 0.5:
            return
        self._last_write = now
        elapsed = now - self.started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0.01 else None
        fields: dict[str, Any] = {"progress": round(min(1.0, fraction), 4), "step": step,
                                  "eta_s": round(eta, 1) if eta is not None else None}
        if metrics is not None:
            fields["metrics"] = metrics
        if not self.store.renew(self.id, self.lease, self.lease_s, **fields):
            raise LeaseLost()
        current = self.store.get(self.id)
        if current and current["cancel_requested"]:
            raise Cancelled()

    def update(self, **fields: Any) -> None:
        """Fields of the job's row (a checkpoint, an ETA), written only under its lease."""
        if not self.store.transition(self.id, ("running",), lease=self.lease, **fields):
            raise LeaseLost()

    def finish(self, state: str, **fields: Any) -> bool:
        """The job's final state, if it still holds the lease (False: another holds it)."""
        return self.store.transition(self.id, ("running",), lease=self.lease, state=state,
                                     finished=time.time(), lease_owner=None, **fields)

    def log(self, line: str) -> None:
        self.store.log(self.id, line)


def screen_engine(name: str):
    """The engine a screen job's `engine` names; a Ray cluster's address comes from the
    settings (MOLSERVE_RAY_ADDRESS), never from the request."""
    if name == "ray":
        from molserve.config import EngineSettings
        from molserve.deploy.ray_screen import RayScreenEngine

        address = EngineSettings().ray_address
        return RayScreenEngine(None if address in ("", "local") else address)
    if name == "modal":
        from molserve.deploy.modal_screen import ModalScreenEngine

        return ModalScreenEngine()
    from molserve.operations.sharded import LocalEngine

    return LocalEngine(1)


def _sharded(params: dict[str, Any]) -> bool:
    return (params.get("engine", "local") != "local" or bool(params.get("where"))
            or bool(params.get("top_k")) or params.get("output_format") == "parquet")


def run_screen(ctx: JobContext, params: dict[str, Any], registry: Path, datasets: Path,
               results: Path) -> dict:
    folder = results / ctx.id
    folder.mkdir(parents=True, exist_ok=True)
    if _sharded(params):
        return _run_sharded_screen(ctx, params, registry, folder)
    from molserve.operations.screen import Checkpoint, screen_file

    saved = ctx.job.get("checkpoint") or {}
    resume = Checkpoint(**saved) if saved.get("rows_done") else None
    if resume is not None:
        ctx.log(f"resuming after row {resume.rows_done}")
    started = time.time()
    first_row = resume.rows_done if resume is not None else 0

    def start(total: int | None, names: list[str]) -> None:
        ctx.log(f"screening {total if total is not None else 'an unknown number of'} records for {names}")

    def chunk(checkpoint: Checkpoint, total: int | None) -> None:
        # Recorded only after the chunk is on disk, so a resume never loses or repeats a row.
        ctx.update(checkpoint=asdict(checkpoint))
        fraction = checkpoint.rows_done / total if total else 0.0
        seconds = time.time() - started
        rate = (checkpoint.rows_done - first_row) / seconds if seconds > 0 else None
        ctx.progress(fraction, f"{checkpoint.rows_done} molecules screened",
                     {"rows_done": checkpoint.rows_done, "invalid": checkpoint.errors,
                      "molecules_done": checkpoint.rows_done, "molecules_total": total,
                      "molecules_per_second": round(rate, 1) if rate else None}, force=True)

    summary = screen_file(
        Path(params["input_path"]), folder / "result.csv", registry=registry,
        endpoints=params.get("endpoints"), smiles_col=params.get("smiles_col"),
        id_col=params.get("id_col"), chunk_size=int(params.get("chunk_size", 1000)), durable=True,
        resume=resume, on_start=start, on_chunk=chunk)
    return {"path": summary.output, "rows": summary.molecules, "invalid": summary.errors,
            "endpoints": summary.endpoints}


def _run_sharded_screen(ctx: JobContext, params: dict[str, Any], registry: Path, folder: Path) -> dict:
    """A screen by shard on the job's engine: the shard folder is the checkpoint (a restarted
    job keeps the shards recorded complete), its progress is the job's."""
    from molserve.operations.sharded import ScreenProgress, screen_library, write_csv

    engine = screen_engine(params.get("engine", "local"))
    shards = folder / "shards"
    if (shards / "shards.jsonl").exists():
        ctx.log("resuming: shards recorded complete are kept")
    logged: dict[str, bool] = {}

    def progress(state: ScreenProgress) -> None:
        if not logged:
            logged["started"] = True
            ctx.log(f"screening {state.molecules_total} records in {state.shards_total} shards on the "
                    f"{engine.name} engine ({state.shards_done} shards already done)")
        fraction = state.molecules_done / state.molecules_total if state.molecules_total else 0.0
        ctx.progress(fraction * 0.99, f"{state.shards_done}/{state.shards_total} shards, "
                     f"{state.molecules_done} molecules screened", state.to_json(), force=True)
        if state.eta_s is not None:  # from this run's rate: a resumed screen's own ETA
            ctx.update(eta_s=state.eta_s)

    summary = screen_library(
        Path(params["input_path"]), shards, registry=registry, engine=engine,
        endpoints=params.get("endpoints"), smiles_col=params.get("smiles_col"),
        id_col=params.get("id_col"), where=params.get("where"), top_k=params.get("top_k"),
        rank_by=params.get("rank_by"), output_format=params.get("output_format", "csv"),
        chunk_size=int(params.get("chunk_size", 1000)),
        shard_size=int(params.get("shard_size", 100_000)), on_progress=progress)
    rows = write_csv(shards, folder / "result.csv")
    return {"path": str(folder / "result.csv"), "rows": rows, "molecules": summary.molecules,
            "invalid": summary.errors, "endpoints": summary.endpoints, "engine": summary.engine,
            "shards": summary.shards, "shards_resumed": summary.shards_resumed,
            "models": summary.models, "format": params.get("output_format", "csv")}


def run_train(ctx: JobContext, params: dict[str, Any], registry_root: Path, datasets: Path,
              results: Path) -> dict:
    from molserve.operations import training
    from molserve.registry import Registry

    registry = Registry(registry_root)
    endpoint = params["endpoint"]
    # A job killed after its model was registered but before its state was recorded must not
    # register a second model when it resumes: the manifest names the job that wrote it.
    existing = training.registered_by(registry, endpoint, ctx.id)
    if existing is not None:
        ctx.log(f"found {endpoint} v{existing.version} registered by an earlier attempt")
        return training.outcome(existing)
    # Who the model belongs to and who may see it (`visibility`), as the route decided, written
    # into its manifest; `publish_as` makes the registry refuse a version of an endpoint the
    # job's key does not own.
    owned = {k: params[k] for k in ("owner", "visibility", "training_data", "publish_as") if k in params}
    if params.get("model", "gbm") in ("transformer", "graph", "foundation"):
        from molserve.jobs.engines import FinetuneRequest, engine

        chosen = engine()
        kind = {"graph": training.GraphParams, "foundation": training.FoundationParams,
                "transformer": training.TransformerParams}[params["model"]]
        fields = {k: params[k] for k in kind.model_fields if k in params}
        request = FinetuneRequest(endpoint, kind(**fields), tasks=params.get("tasks"), job_id=ctx.id,
                                  manifest=owned or None)
        ctx.log(f"fine-tuning on the {chosen.name} engine")
        result = chosen.finetune(registry_root, request,
                                 lambda fraction, step, metrics: ctx.progress(fraction, step, metrics))
    else:
        registry.check_writable()  # fail now, not after the training compute is spent
        fast = training.FastParams(split=params.get("split", "scaffold"),
                                   profile=params.get("profile", "standard"),
                                   base=params.get("bases") or [])

        def report(step: str, fraction: float) -> None:
            ctx.progress(fraction * 0.98, step)

        if params.get("dataset"):
            artifact = training.train_stored(registry, datasets, params["dataset"], fast,
                                             endpoint=endpoint, extra_manifest={"job_id": ctx.id, **owned},
                                             progress=report)
        else:
            [(name, dataset)] = training.table_jobs(
                Path(params["input_path"]), label_cols=[params["label_col"]], endpoint=endpoint,
                split=fast.split, smiles_col=params.get("smiles_col", "smiles"),
                task=params.get("task", "regression"), units=params.get("units", ""))
            artifact = training.train_fast(registry, dataset, name, fast,
                                           extra_manifest={"job_id": ctx.id, **owned}, progress=report)
        result = training.outcome(artifact)
    ctx.log(f"registered {result['endpoint']} v{result['version']} ({result['kind']})")
    return result


# The dispatcher: job kind -> what runs it (each gets the context, the job's parameters, and the
# registry, dataset store and results directories).
RUNNERS = {"screen": run_screen, "train": run_train}


def failure_reason(error: BaseException, writing_to: Path) -> str:
    """The reason a failed job shows: what went wrong and, for storage faults, where and what
    to do."""
    reason = f"{type(error).__name__}: {error}"
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"disk full while writing to {error.filename or writing_to}: {reason}. Free space "
                "there and submit the job again")
    if isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"cannot write to {error.filename or writing_to}: {reason}. Make it writable and "
                "submit the job again")
    return reason


def _local_input(job: dict[str, Any], jobs_dir: Path) -> dict[str, Any]:
    """The job's parameters with its input on this machine: an upload a gateway of the fleet put
    in the object store is copied here once (a resumed job reuses the copy)."""
    from molserve.storage import fetch, is_object_url

    params = dict(job["params"])
    source = params.get("input_path")
    if source and is_object_url(source):
        params["input_path"] = str(fetch(source, jobs_dir / "inputs" / job["id"] / source.rsplit("/", 1)[-1]))
    return params


def _shared_result(job: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """A screen's result file, put in the fleet's object store (when there is one) so that it
    downloads from any gateway; the job records where."""
    from molserve.config import FleetSettings

    storage_url = FleetSettings().storage_url
    path = result.get("path") if isinstance(result, dict) else None
    if not storage_url or not path or "://" in str(path):
        return result
    from molserve.storage import ObjectStore

    # One key per attempt: a job that ran twice to the end would leave two results (the fleet
    # benchmark counts them); a resumed one writes once, on the attempt that finished.
    url = ObjectStore(storage_url).put_file(
        Path(path), f"results/{job['id']}/attempt-{job.get('attempts') or 1}/{Path(path).name}")
    return {**result, "path": url}


class Heartbeat:
    """Renews the job's lease every third of it from a thread of its own (a training call that
    holds the main thread for minutes still renews), and stops the job when its lease is lost
    or its cancellation was asked (another gateway may have asked: it cannot signal this
    process)."""

    def __init__(self, ctx: JobContext) -> None:
        import threading

        self.ctx = ctx
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        store, ctx = self.ctx.store, self.ctx
        while not self._stop.wait(ctx.lease_s / 3):
            try:
                held = store.renew(ctx.id, ctx.lease, ctx.lease_s)
                cancel = held and bool((store.get(ctx.id) or {}).get("cancel_requested"))
            except Exception:  # noqa: BLE001 - a store hiccup: the lease outlives a few of them
                continue
            if not held:
                self.lost = True
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            if cancel:
                os.kill(os.getpid(), signal.SIGTERM)
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    parser.add_argument("--jobs-dir", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--datasets", required=True)
    parser.add_argument("--time-limit", type=float, default=None, help="seconds left to run")
    parser.add_argument("--lease", default=None, help="the lease the runner claimed the job under "
                        "(default, for a job run by hand: a queued job is claimed here, a running "
                        "one continued under the lease its row records)")
    parser.add_argument("--lease-s", type=float, default=LEASE_S)
    args = parser.parse_args(argv)
    jobs_dir = Path(args.jobs_dir)
    from molserve.config import FleetSettings

    store = open_store(jobs_dir, FleetSettings().database_url)
    job = store.get(args.job)
    if job is None:
        print(f"no job {args.job}", file=sys.stderr)
        return 2
    lease = args.lease or job.get("lease_owner")
    if args.lease is None and job["state"] == "queued":  # run by hand: claim it first
        from molserve.jobs.store import new_lease

        lease = new_lease()
        if store.claim_job(job["id"], lease, args.lease_s):
            job = store.get(args.job) or job
    if job["state"] != "running" or not lease or job.get("lease_owner") != lease:
        print(f"job {args.job} is not held by this lease ({job['state']}); nothing to do",
              file=sys.stderr)
        return 3

    # A signal's exception is raised wherever the job happens to be, and code there may catch and
    # swallow it (e.g. a parser that answers any failure as an invalid molecule): until the job
    # has stopped, the exception is raised again every second.
    stopping: list[Exception] = []

    def stop_with(error: Exception) -> None:
        stopping[:] = [error]
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        raise error

    def on_term(signum, frame):  # a cancellation, signalled or seen by the heartbeat
        stop_with(Cancelled())

    def on_lost(signum, frame):  # the heartbeat found another process holding the job
        stop_with(LeaseLost())

    def on_alarm(signum, frame):
        stop_with(stopping[0] if stopping else
                  TimeLimitExceeded(f"the {job['kind']} job ran out of its time limit"))

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_lost)
    signal.signal(signal.SIGALRM, on_alarm)
    if args.time_limit:
        signal.setitimer(signal.ITIMER_REAL, max(1.0, float(args.time_limit)))
    ctx = JobContext(store, job, lease, args.lease_s)
    if not store.renew(job["id"], lease, args.lease_s, pid=os.getpid()):
        return 3
    heartbeat = Heartbeat(ctx).start()
    try:
        run = RUNNERS.get(job["kind"])
        if run is None:
            raise ValueError(f"unknown job kind {job['kind']!r}")
        params = _local_input(job, jobs_dir)
        result = run(ctx, params, Path(args.registry), Path(args.datasets), jobs_dir / "results")
        result = _shared_result(job, result)
    except LeaseLost:
        # Another process resumed the job (this one was presumed dead): it owns every change.
        signal.setitimer(signal.ITIMER_REAL, 0)
        print(f"job {job['id']}: lease lost; stopping without changing it", file=sys.stderr)
        return 3
    except Cancelled:
        signal.setitimer(signal.ITIMER_REAL, 0)
        heartbeat.stop()
        if ctx.finish("cancelled", step="cancelled"):
            ctx.log("cancelled")
        return 0
    except Exception as error:  # the job fails with a reason; the traceback stays on the server
        signal.setitimer(signal.ITIMER_REAL, 0)
        heartbeat.stop()
        # The job's own log is shown to its caller: one line. The traceback goes to the process
        # output (the server's jobs/logs/<id>.log), for the operator.
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        if job["kind"] == "screen" and store.get(job["id"]).get("lease_owner") == lease:
            # A failed screen is not resumed: its partial output only takes space (which may be
            # what ran out).
            shutil.rmtree(jobs_dir / "results" / job["id"], ignore_errors=True)
        writing_to = jobs_dir / "results" if job["kind"] == "screen" else Path(args.registry)
        if ctx.finish("failed", error=failure_reason(error, writing_to)):
            ctx.log(f"failed: {type(error).__name__}")
        return 1
    finally:
        heartbeat.stop()
    signal.setitimer(signal.ITIMER_REAL, 0)
    if not ctx.finish("succeeded", progress=1.0, step="done", eta_s=0, result=result):
        print(f"job {job['id']}: lease lost before it finished; the other holder records it",
              file=sys.stderr)
        return 3
    ctx.log("succeeded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
