"""The `molserve` command: wires the library's pieces to the command line, nothing more.

Imports happen inside each verb, so `molserve serve` never loads the trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path


def _settings(args: argparse.Namespace):
    from molserve.config import Settings

    overrides = {}
    if getattr(args, "registry", None):
        overrides["registry"] = Path(args.registry)
    if getattr(args, "datasets", None):
        overrides["datasets"] = Path(args.datasets)
    return Settings(**overrides)


def _progress_bar(total: float = 1.0, desc: str = ""):
    from tqdm import tqdm

    bar = tqdm(total=100, desc=desc, unit="%", leave=True, file=sys.stderr,
               bar_format="{desc:<28} {percentage:3.0f}%|{bar}| {postfix}")

    def update(step: str, fraction: float) -> None:
        bar.n = int(round(fraction * 100))
        bar.set_postfix_str(step)
        bar.refresh()

    return bar, update


def cmd_bootstrap(args: argparse.Namespace) -> int:
    """Train the bundled endpoints that the registry does not have yet (all with --force)."""
    from molserve.operations.bootstrap import bootstrap, bundled_endpoints, missing
    from molserve.registry import Registry

    registry = Registry(_settings(args).registry)
    only = [n for item in (args.only or []) for n in item.split(",") if n] or None
    names = ([n for n in bundled_endpoints() if only is None or n in only] if args.force
             else missing(registry, only))
    if only:
        unknown = sorted(set(only) - set(bundled_endpoints()))
        if unknown:
            raise ValueError(f"not bundled endpoints: {', '.join(unknown)}")
    if not names:
        print(f"registry {registry.root} already has every bundled endpoint", file=sys.stderr)
        return 0
    print(f"training {len(names)} bundled endpoint(s) into {registry.root}, smallest first",
          file=sys.stderr)
    bar = None
    if not args.quiet:
        bar, update = _progress_bar(desc="bootstrap")
        fractions = dict.fromkeys(names, 0.0)

        def report(name: str, step: str, fraction: float) -> None:
            fractions[name] = fraction
            update(f"{name}: {step}", sum(fractions.values()) / len(names))
    outcome = bootstrap(registry, names, profile=args.profile, tdc_source=args.tdc_source,
                        workers=args.workers, report=None if bar is None else report)
    if bar is not None:
        bar.close()
    for name, result in outcome.items():
        print(result.get("summary") or f"{name}: failed: {result['error']}", file=sys.stderr)
    return 1 if any("error" in r for r in outcome.values()) else 0


def _endpoint_from_column(column: str) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "_", column.strip().lower()).strip("_-")
    return name[:64] or "endpoint"


def cmd_train(args: argparse.Namespace) -> int:
    from molserve.data.dataset import load_table
    from molserve.models.gbm_train import summarize, train_endpoint
    from molserve.registry import Registry
    from molserve.registry.store import validate_endpoint_name

    settings = _settings(args)
    label_cols = [c.strip() for item in (args.label_col or []) for c in item.split(",") if c.strip()]
    jobs: list[tuple[str, object, list[str] | None]] = []  # (endpoint, dataset, split labels)
    if args.dataset:
        from molserve.data.store import DatasetStore

        store = DatasetStore(settings.datasets)
        dataset, split_labels = store.load(args.dataset, split=args.split)
        jobs.append((args.endpoint or store.get(args.dataset).manifest.get(
            "endpoint_suggestion", args.dataset), dataset, split_labels))
    else:
        if not args.data or not label_cols or (len(label_cols) == 1 and not args.endpoint):
            raise ValueError("give a data file with --endpoint and --label-col (or several "
                             "--label-col, one endpoint each), or --dataset NAME")
        if len(label_cols) > 1 and args.endpoint:
            raise ValueError("with several --label-col each column becomes an endpoint named "
                             "after it; drop --endpoint")
        if args.split == "time":
            raise ValueError("--split time needs a stored dataset with years (--dataset)")
        for column in label_cols:
            endpoint = args.endpoint or _endpoint_from_column(column)
            jobs.append((endpoint, load_table(
                args.data, smiles_col=args.smiles_col, label_col=column, task=args.task,
                name=endpoint, units=args.units, description=args.description or "",
                positive_label=args.positive_label,
            ), None))
    registry = Registry(settings.registry)
    for endpoint, _, _ in jobs:
        validate_endpoint_name(endpoint)
    for endpoint, dataset, split_labels in jobs:
        bar, update = _progress_bar(desc=endpoint)
        artifact = train_endpoint(dataset, registry, endpoint, split=args.split,
                                  profile=args.profile, seed=args.seed, split_labels=split_labels,
                                  progress=update)
        bar.close()
        print(summarize(artifact))
        print(json.dumps({"curation": artifact.manifest["curation"],
                          "out_of_fold": artifact.manifest["metrics"]["out_of_fold"]}, indent=2))
        print(f"registered {artifact.endpoint} v{artifact.version} at {artifact.path}")
    if len(jobs) > 1:
        names = ",".join(e for e, _, _ in jobs)
        print(f"one multi-task transformer over these: molserve finetune --dataset {names} --name NAME")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from molserve.operations.screen import screen_file

    settings = _settings(args)
    endpoints = [e for e in (args.endpoints or "").replace(",", " ").split() if e] or None
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: worker processes are forked
        bar = tqdm(unit="mol", file=sys.stderr, desc="predicting")

    def start(total, names):
        if bar is not None:
            bar.total = total

    def chunk(checkpoint, total):
        if bar is not None:
            bar.update(checkpoint.rows_done - bar.n)

    summary = screen_file(
        Path(args.input), Path(args.output), registry=settings.registry, endpoints=endpoints,
        smiles_col=args.smiles_col, chunk_size=args.chunk_size, processes=args.jobs,
        on_start=start, on_chunk=chunk)
    if bar is not None:
        bar.close()
    print(json.dumps(summary.to_json()), file=sys.stderr)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from molserve.data.store import DatasetStore

    store = DatasetStore(_settings(args).datasets)
    if args.data_command == "chembl":
        from molserve.data.chembl import ChemblClient
        from molserve.data.store import fetch_chembl_dataset

        artifact = fetch_chembl_dataset(store, args.target, standard_type=args.type,
                                        client=ChemblClient(base_url=args.base_url),
                                        canonical_tautomer=args.tautomer)
    elif args.data_command == "import":
        from molserve.data.curation import curate
        from molserve.data.dataset import load_table

        raw = load_table(args.file, smiles_col=args.smiles_col, label_col=args.label_col,
                         task=args.task, name=args.name, units=args.units,
                         positive_label=args.positive_label)
        if args.ic50_nm:
            import math

            kept = [(s, 9 - math.log10(v)) for s, v in zip(raw.smiles, raw.labels, strict=True) if v > 0]
            raw.smiles, raw.labels = [k[0] for k in kept], [k[1] for k in kept]
            raw.units = "pIC50"
        curated = curate(raw, standardize_structures=True, canonical_tautomer=args.tautomer)
        rows = [{"canonical_smiles": s, "label": float(y), "n_measurements": 1, "spread": 0.0}
                for s, y in zip(curated.canonical_smiles, curated.labels, strict=True)]
        artifact = store.save(args.name, rows, task=raw.task, units=raw.units,
                              description=args.description or f"imported from {Path(args.file).name}",
                              source=raw.source, licence=args.licence,
                              curation={**curated.report, "source_sha256": raw.checksum,
                                        "converted_from_ic50_nm": bool(args.ic50_nm)})
    elif args.data_command == "tdc":
        from molserve.data import tdc

        if args.tdc_command == "list":
            for entry in tdc.CATALOG.values():
                where = f"benchmark, {entry.metric}" if entry.benchmark else "single"
                print(f"{entry.endpoint:<28} {entry.tdc_name:<32} {entry.task:<15} {entry.rows:>6}"
                      f"  {entry.units:<22} {where}")
            return 0
        cache = Path(args.cache) if args.cache else None
        files = [tdc.ADMET_GROUP, *tdc.SINGLE_FILES.values()]
        for source in files:
            path = tdc.fetch(source, cache)
            print(f"{source.name:<28} verified  {path}")
        return 0
    elif args.data_command == "list":
        artifacts = store.list()
        if not artifacts:
            print(f"no datasets in {store.root}")
        for a in artifacts:
            m = a.manifest
            print(f"{a.endpoint:<32} v{a.version:<3} {m['rows']:>7} rows  {m['task']:<14} "
                  f"{m['units']:<10} {m['licence']}")
        return 0
    else:
        artifact = store.get(args.name)
        print(json.dumps({k: v for k, v in artifact.manifest.items()}, indent=2))
        return 0
    m = artifact.manifest
    print(json.dumps({"dataset": artifact.endpoint, "version": artifact.version, "rows": m["rows"],
                      "curation": m["curation"], "splits": m["splits"]}, indent=2))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """Jobs through a running gateway's HTTP API."""
    import time

    import httpx

    headers = {"x-api-key": args.api_key} if args.api_key else {}
    client = httpx.Client(base_url=args.url, headers=headers, timeout=60)

    def check(response: httpx.Response) -> dict:
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise RuntimeError(f"HTTP {response.status_code}: {message}")
        return response.json()

    def follow(job_id: str) -> dict:
        from tqdm import tqdm

        bar = tqdm(total=100, unit="%", file=sys.stderr, desc=job_id,
                   bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix}")
        while True:
            job = check(client.get(f"/v1/jobs/{job_id}"))
            bar.n = int(round(job["progress"] * 100))
            eta = f", ETA {job['eta_s']:.0f} s" if job.get("eta_s") else ""
            bar.set_postfix_str(f"{job['state']}: {job.get('step') or ''}{eta}")
            bar.refresh()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                bar.close()
                return job
            time.sleep(0.5)

    if args.jobs_command in ("screen", "train"):
        body: dict = {"kind": args.jobs_command}
        if getattr(args, "file", None):
            with open(args.file, "rb") as handle:
                body["upload_id"] = check(client.post("/v1/uploads", files={
                    "file": (Path(args.file).name, handle)}))["upload_id"]
        if args.jobs_command == "screen":
            body["endpoints"] = [e for e in (args.endpoints or "").split(",") if e] or None
            if args.dataset:
                body["dataset"] = args.dataset
        else:
            for name in ("dataset", "endpoint", "label_col", "model", "profile", "split", "base"):
                value = getattr(args, name, None)
                if value:
                    body[name] = value
        job = check(client.post("/v1/jobs", json={k: v for k, v in body.items() if v is not None}))
        print(f"submitted {job['id']}", file=sys.stderr)
        if args.wait:
            job = follow(job["id"])
            if job["state"] == "succeeded" and args.output and job.get("result_url"):
                Path(args.output).write_bytes(client.get(job["result_url"]).content)
                print(f"result written to {args.output}", file=sys.stderr)
        print(json.dumps(job, indent=2))
        return 0 if job["state"] != "failed" else 1
    if args.jobs_command == "list":
        for job in check(client.get("/v1/jobs")):
            print(f"{job['id']}  {job['kind']:<7} {job['state']:<10} {job['progress'] * 100:5.1f}%  "
                  f"{job.get('step') or ''}")
        return 0
    if args.jobs_command == "show":
        job = follow(args.id) if args.follow else check(client.get(f"/v1/jobs/{args.id}"))
        print(json.dumps(job, indent=2))
        return 0
    if args.jobs_command == "cancel":
        print(json.dumps(check(client.delete(f"/v1/jobs/{args.id}")), indent=2))
        return 0
    response = client.get(f"/v1/jobs/{args.id}/result")
    if response.status_code != 200:
        check(response)
    Path(args.output).write_bytes(response.content)
    print(f"result written to {args.output}", file=sys.stderr)
    return 0


MODAL_GUIDE = """\
Deploy the transformer worker tier on Modal:

  1. modal token new                                   # once, authenticates this machine
  2. modal secret create molserve-worker MOLSERVE_WORKER_TOKEN=<a long random token>
  3. modal volume put molserve-registry registry/ /    # upload fine-tuned models
  4. {command}
  5. point the gateway at the URL Modal prints for Worker.web:
       MOLSERVE_WORKER_URLS='["https://<workspace>--molserve-worker-worker-web.modal.run"]' \\
       MOLSERVE_WORKER_TOKEN=<the same token> molserve serve

Settings (environment, read at deploy time): MOLSERVE_MODAL_GPU (L4), MOLSERVE_MODAL_TRAIN_GPU
(A10G), MOLSERVE_MODAL_MIN_CONTAINERS (0: scale to zero), MOLSERVE_MODAL_SCALEDOWN_S (300),
MOLSERVE_MODAL_MAX_CONTAINERS (10), MOLSERVE_MODAL_MAX_BATCH (128), MOLSERVE_MODAL_SECRET.
Credentials live in Modal secrets and your Modal token, never in a request body.
"""


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.target == "modal":
        module = Path(__file__).resolve().parent / "deploy" / "modal_app.py"
        command = ["modal", "deploy", str(module)]
        print(MODAL_GUIDE.format(command=" ".join(command)))
        if args.execute:
            import subprocess

            return subprocess.run(command, check=False).returncode
        return 0
    import signal
    import time

    from molserve.deploy import ray_app

    settings = _settings(args)
    url = ray_app.run(
        registry=settings.registry, address=args.address, host=args.host, port=args.port,
        blocking=False, backend=args.backend, token=os.environ.get("MOLSERVE_WORKER_TOKEN"),
        num_gpus=args.gpus_per_replica, min_replicas=args.min_replicas,
        max_replicas=args.max_replicas)
    print(f"worker tier on Ray Serve at {url}; point the gateway at it with "
          f"MOLSERVE_WORKER_URLS='[\"{url}\"]'", flush=True)
    stop = {"now": False}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.update(now=True))
    while not stop["now"]:
        time.sleep(0.5)
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from molserve.gateway.keys import KeyStore

    path = Path(args.file) if args.file else _settings(args).api_keys_file
    if path is None:
        raise ValueError("name the keys file with --file or MOLSERVE_API_KEYS_FILE")
    store = KeyStore(path)
    if args.keys_command == "create":
        key, record = store.create(args.name, [s for s in args.scopes.split(",") if s], args.rate)
        print(f"created key {record.id} ({record.name}) with scopes {record.scopes}; "
              f"{record.rate_per_minute} requests/minute", file=sys.stderr)
        print("store it now: it is shown once and only its hash is kept", file=sys.stderr)
        print(key)
    elif args.keys_command == "revoke":
        store.revoke(args.id)
        print(f"revoked {args.id}")
    else:
        for record in store.records.values():
            print(f"{record.id}  {record.name:<24} {','.join(record.scopes):<24} "
                  f"{record.rate_per_minute:>6}/min  created {record.created}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from molserve.registry import Registry

    registry = Registry(_settings(args).registry)
    artifacts = registry.all_artifacts()
    if args.json:
        print(json.dumps([{"endpoint": a.endpoint, "version": a.version, "kind": a.kind,
                           "created": a.manifest.get("created"),
                           "test": a.manifest.get("metrics", {}).get("test")} for a in artifacts],
                         indent=2))
        return 0
    from molserve.operations.bootstrap import pending_endpoints

    pending = pending_endpoints(registry)
    if not artifacts and not pending:
        print(f"no models in {registry.root}; run `molserve bootstrap`")
        return 0
    print(f"{'endpoint':<24} {'ver':>4} {'kind':<12} {'task':<15} {'n_test':>6}  held-out (test) metrics")
    nan = float("nan")
    for a in artifacts:
        rows = [(a.endpoint, a.manifest)]
        if a.manifest.get("task") == "multitask":
            rows = [(f"{a.endpoint}:{e}", t) for e, t in a.manifest.get("tasks", {}).items()]
        for label, manifest in rows:
            test = manifest.get("metrics", {}).get("test", {})
            if manifest.get("task") == "classification":
                shown = f"ROC AUC {test.get('roc_auc', nan):.3f}  PR AUC {test.get('pr_auc', nan):.3f}"
            else:
                shown = f"RMSE {test.get('rmse', nan):.3f}  R2 {test.get('r2', nan):.3f}"
            print(f"{label:<24} {a.version:>4} {a.kind:<12} {manifest.get('task', ''):<15} "
                  f"{test.get('n', 0):>6}  {shown}")
    for name, entry in pending.items():
        state = (f"training {entry.get('progress', 0) * 100:.0f}% ({entry.get('step', '')})"
                 if entry["state"] == "training" else "queued")
        print(f"{name:<24} {'-':>4} {'gbm':<12} {'':<15} {'':>6}  bootstrap: {state}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from molserve.gateway.app import create_app

    settings = _settings(args)
    if args.bootstrap:
        settings.bootstrap = True
    app = create_app(settings)
    uvicorn.run(app, host=args.host or settings.host, port=args.port or settings.port,
                log_level=args.log_level, access_log=False, loop="auto", http="auto")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import uvicorn

    from molserve.worker.app import WorkerSettings, create_worker_app

    overrides = {k: v for k, v in {"backend": args.backend, "device": args.device}.items() if v}
    if args.registry:
        overrides["registry"] = Path(args.registry)
    settings = WorkerSettings(**overrides)
    uvicorn.run(create_worker_app(settings), host=args.host or settings.host,
                port=args.port or settings.port, log_level=args.log_level, access_log=False)
    return 0


def _transformer_progress(desc: str):
    bar, update = _progress_bar(desc=desc)

    def report(step: str, fraction: float, info: dict) -> None:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in info.items() if isinstance(v, float))
        update(f"{step} {shown}", fraction)

    return bar, report


def cmd_finetune(args: argparse.Namespace) -> int:
    from molserve.models.transformer.pipeline import describe, finetune_endpoints
    from molserve.registry import Registry

    registry = Registry(_settings(args).registry)
    endpoints = list(dict.fromkeys(e.strip() for item in args.dataset for e in item.split(",")
                                   if e.strip()))
    bar, report = _transformer_progress(args.name or endpoints[0])
    artifact = finetune_endpoints(
        registry, endpoints, name=args.name, base=args.base, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, patience=args.patience,
        export=not args.no_onnx, device=args.device, seed=args.seed, progress=report)
    bar.close()
    print(describe(artifact))
    print(f"registered {artifact.endpoint} v{artifact.version} (transformer) at {artifact.path}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from molserve.models.transformer.corpus import read_corpus
    from molserve.models.transformer.modeling import pretrain

    corpus = read_corpus(args.corpus, limit=args.limit, seed=args.seed)
    bar, report = _transformer_progress("pretraining")
    summary = pretrain(corpus, Path(args.output), size=args.size, epochs=args.epochs,
                       max_steps=args.max_steps, batch_size=args.batch_size,
                       learning_rate=args.learning_rate, device=args.device, seed=args.seed,
                       max_seconds=args.max_minutes * 60 if args.max_minutes else None,
                       base=args.base, progress=report)
    bar.close()
    print(json.dumps(summary, indent=2))
    print(f"pretrained model written to {args.output}; fine-tune with --base {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="molserve", description=__doc__.splitlines()[0])
    parser.add_argument("--registry", help="registry directory (default: $MOLSERVE_REGISTRY or ./registry)")
    parser.add_argument("--datasets", help="dataset store (default: $MOLSERVE_DATASETS or ./datasets)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the HTTP gateway")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--bootstrap", action="store_true",
                   help="train the bundled endpoints the registry lacks in the background; each "
                        "is served as soon as it is trained")
    p.add_argument("--log-level", default="info")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("bootstrap", help="train the bundled endpoints missing from the registry")
    p.add_argument("--force", action="store_true", help="train a new version even if one exists")
    p.add_argument("--only", action="append", help="these endpoints only (comma-separated)")
    p.add_argument("--profile", default="standard", choices=["standard", "quick"])
    p.add_argument("--tdc-source", default="bundled", choices=["bundled", "dataverse"],
                   help="TDC data: the copies inside molserve, or TDC's files from Harvard "
                        "Dataverse (downloaded, checksum verified, cached)")
    p.add_argument("--workers", type=int, help="endpoints trained at once (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_bootstrap)

    p = sub.add_parser("train", help="train a fast model on a CSV/TSV/SDF file or a stored dataset")
    p.add_argument("data", nargs="?", help="CSV/TSV/SDF file (or use --dataset)")
    p.add_argument("--dataset", help="a stored dataset (molserve data list)")
    p.add_argument("--endpoint", help="endpoint name (default for --dataset: its suggestion)")
    p.add_argument("--smiles-col", default="smiles")
    p.add_argument("--label-col", action="append",
                   help="label column; repeat it (or comma-separate) to train one endpoint per "
                        "column, each named after its column")
    p.add_argument("--task", default="regression", choices=["regression", "classification"],
                   help="applies to every --label-col")
    p.add_argument("--units", default="")
    p.add_argument("--description")
    p.add_argument("--positive-label", help="classification: the label text that means positive")
    p.add_argument("--split", default="scaffold", choices=["scaffold", "random", "time"])
    p.add_argument("--profile", default="standard", choices=["standard", "quick"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("predict", help="predict a CSV/SMI/SDF file offline from the registry")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--endpoints", help="comma-separated; default: every predicted endpoint")
    p.add_argument("--smiles-col", default=None, help="default: a column named smiles (any case)")
    p.add_argument("--chunk-size", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="worker processes (default: one per core)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("worker", help="serve transformer models (the worker tier)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"])
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("--log-level", default="info")
    p.set_defaults(fn=cmd_worker)

    p = sub.add_parser("finetune", help="fine-tune a RoBERTa on an endpoint's curated data and split")
    p.add_argument("--dataset", required=True, action="append",
                   help="an endpoint with a fast model (its curated data and split are reused); "
                        "repeat it or give a comma-separated list for one multi-task model")
    p.add_argument("--name", help="registry name of a multi-task model (several --dataset)")
    p.add_argument("--base", default="seyonec/ChemBERTa-zinc-base-v1",
                   help="hub id (downloaded when online), local directory (e.g. from `pretrain`), "
                        "or random:tiny|small|chemberta-zinc-base")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX (fp32, int8) export")
    p.add_argument("--device")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_finetune)

    p = sub.add_parser("pretrain", help="masked-language pretraining of a RoBERTa on SMILES")
    p.add_argument("--corpus", required=True, help="SMILES file (.smi/.txt/.csv[.gz]) or 'moses'")
    p.add_argument("--output", required=True)
    p.add_argument("--size", default="small", choices=["tiny", "small", "chemberta-zinc-base"])
    p.add_argument("--base", help="continue from this model (an earlier --output, or a hub id) "
                                  "with its tokenizer, instead of starting from scratch")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--limit", type=int, help="use at most this many molecules (random sample)")
    p.add_argument("--max-minutes", type=float, help="stop after this much training time")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--device")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_pretrain)

    p = sub.add_parser("data", help="curated datasets: ChEMBL targets, your files")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("chembl", help="fetch and curate a target's activities from ChEMBL")
    q.add_argument("target", help="EGFR, BRAF, CDK2, PARP1, VEGFR2, BCL2, or a CHEMBL id")
    q.add_argument("--type", default="IC50", help="standard_type (IC50, Ki, ...)")
    q.add_argument("--tautomer", action="store_true", help="canonicalize tautomers too")
    q.add_argument("--base-url", default="https://www.ebi.ac.uk")
    q.set_defaults(fn=cmd_data)
    q = dsub.add_parser("import", help="curate a CSV/TSV/SDF into a stored dataset")
    q.add_argument("file")
    q.add_argument("--name", required=True)
    q.add_argument("--smiles-col", default="smiles")
    q.add_argument("--label-col", required=True)
    q.add_argument("--task", default="regression", choices=["regression", "classification"])
    q.add_argument("--units", default="")
    q.add_argument("--description")
    q.add_argument("--positive-label")
    q.add_argument("--licence", default="user-supplied")
    q.add_argument("--ic50-nm", action="store_true", help="labels are IC50 in nM: store pIC50")
    q.add_argument("--tautomer", action="store_true")
    q.set_defaults(fn=cmd_data)
    q = dsub.add_parser("tdc", help="the bundled TDC ADMET datasets; fetch TDC's own files")
    tsub = q.add_subparsers(dest="tdc_command", required=True)
    t = tsub.add_parser("list", help="the 40 TDC datasets molserve serves as endpoints")
    t.set_defaults(fn=cmd_data)
    t = tsub.add_parser("fetch", help="download TDC's files from Harvard Dataverse, verify and cache them")
    t.add_argument("--cache", help="cache directory (default ~/.cache/molserve/tdc)")
    t.set_defaults(fn=cmd_data)
    q = dsub.add_parser("list", help="stored datasets")
    q.set_defaults(fn=cmd_data)
    q = dsub.add_parser("show", help="one dataset's manifest")
    q.add_argument("name")
    q.set_defaults(fn=cmd_data)

    p = sub.add_parser("jobs", help="training jobs and screens through a running gateway")
    p.add_argument("--url", default=os.environ.get("MOLSERVE_URL", "http://127.0.0.1:8000"))
    p.add_argument("--api-key", default=os.environ.get("MOLSERVE_API_KEY"))
    jsub = p.add_subparsers(dest="jobs_command", required=True)
    q = jsub.add_parser("screen", help="screen a file (or stored dataset) against endpoints")
    q.add_argument("file", nargs="?")
    q.add_argument("--dataset")
    q.add_argument("--endpoints")
    q.add_argument("--wait", action="store_true", help="follow progress until done")
    q.add_argument("-o", "--output", help="with --wait: where to save the result CSV")
    q.set_defaults(fn=cmd_jobs)
    q = jsub.add_parser("train", help="train on an uploaded file or a stored dataset")
    q.add_argument("file", nargs="?")
    q.add_argument("--dataset")
    q.add_argument("--endpoint")
    q.add_argument("--label-col")
    q.add_argument("--model", choices=["gbm", "transformer"])
    q.add_argument("--profile", choices=["standard", "quick"])
    q.add_argument("--split", choices=["scaffold", "random", "time"])
    q.add_argument("--base")
    q.add_argument("--wait", action="store_true")
    q.add_argument("-o", "--output")
    q.set_defaults(fn=cmd_jobs)
    q = jsub.add_parser("list")
    q.set_defaults(fn=cmd_jobs)
    q = jsub.add_parser("show")
    q.add_argument("id")
    q.add_argument("--follow", action="store_true", help="live progress bar until the job ends")
    q.set_defaults(fn=cmd_jobs)
    q = jsub.add_parser("cancel")
    q.add_argument("id")
    q.set_defaults(fn=cmd_jobs)
    q = jsub.add_parser("result")
    q.add_argument("id")
    q.add_argument("-o", "--output", required=True)
    q.set_defaults(fn=cmd_jobs)

    p = sub.add_parser("deploy", help="run the worker tier on Modal or Ray Serve")
    p.add_argument("target", choices=["modal", "ray"])
    p.add_argument("--execute", action="store_true", help="modal: run `modal deploy` too")
    p.add_argument("--address", help="ray: cluster address (default: start a local instance)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"])
    p.add_argument("--gpus-per-replica", type=float, default=0)
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=4)
    p.set_defaults(fn=cmd_deploy)

    p = sub.add_parser("keys", help="scoped API keys (stored hashed)")
    p.add_argument("--file", help="keys file (default: $MOLSERVE_API_KEYS_FILE)")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    q = ksub.add_parser("create")
    q.add_argument("--name", required=True)
    q.add_argument("--scopes", default="read,predict", help="comma-separated: read,predict,train,admin")
    q.add_argument("--rate", type=int, default=600, help="requests per minute")
    q.set_defaults(fn=cmd_keys)
    q = ksub.add_parser("list")
    q.set_defaults(fn=cmd_keys)
    q = ksub.add_parser("revoke")
    q.add_argument("id")
    q.set_defaults(fn=cmd_keys)

    p = sub.add_parser("models", help="registered models")
    msub = p.add_subparsers(dest="models_command", required=True)
    q = msub.add_parser("list", help="list registered models with held-out metrics")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as error:
        print(f"molserve: error: {error}", file=sys.stderr)
        return 2
