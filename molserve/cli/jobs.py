"""`molserve jobs ...`: screens and training jobs through a running gateway's HTTP API
(`molserve.client`), with progress bars on stderr and each job's JSON on stdout. A job submitted
without a key is read with the token its submission printed (`--token`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from molserve.cli.common import group, items

if TYPE_CHECKING:
    from molserve.client import GatewayClient, Job

app = group()
_TARGET = "molserve.jobs.gateway"


@app.callback()
def target(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="MOLSERVE_URL", help="the gateway")] = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="MOLSERVE_API_KEY",
                                                show_default=False)] = None,
) -> None:
    ctx.meta[_TARGET] = (url, api_key)


def client(ctx: typer.Context, job_id: str | None = None, token: str | None = None) -> GatewayClient:
    from molserve.client import GatewayClient

    url, api_key = ctx.meta[_TARGET]
    return GatewayClient(url, api_key, job_tokens={job_id: token} if job_id and token else None)


def follow(gateway: GatewayClient, job_id: str) -> Job:
    """Poll a job until it ends, drawing its progress, step and ETA on stderr."""
    bars = []  # drawn at the first answer: an unreachable gateway prints its error line alone

    def show(job: Job) -> None:
        if not bars:
            from tqdm import tqdm

            bars.append(tqdm(total=100, unit="%", file=sys.stderr, desc=job_id,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix}"))
        bar = bars[0]
        bar.n = int(round(job.progress * 100))
        eta = f", ETA {job.eta_s:.0f} s" if job.eta_s else ""
        bar.set_postfix_str(f"{job.state}: {job.step}{eta}")
        bar.refresh()

    try:
        return gateway.follow(job_id, show)
    finally:
        for bar in bars:
            bar.close()


def submitted(gateway: GatewayClient, job: Job, wait: bool, output: Path | None) -> int:
    """What `screen` and `train` print once the gateway took the job (and, with --wait, ran it)."""
    print(f"submitted {job.id}", file=sys.stderr)
    if job.token:
        print(f"job token (the only way to read this job again: --token): {job.token}", file=sys.stderr)
    if wait:
        job = follow(gateway, job.id)
        if job.state == "succeeded" and output and job.result_url:
            gateway.download(job.result_url, output)
            print(f"result written to {output}", file=sys.stderr)
    print(json.dumps(job.data, indent=2))
    return 0 if job.state != "failed" else 1


File = Annotated[Path | None, typer.Argument(show_default=False)]
Wait = Annotated[bool, typer.Option("--wait", help="follow progress until done")]
Output = Annotated[Path | None, typer.Option("-o", "--output", show_default=False,
                                             help="with --wait: where to save the result CSV")]


@app.command("screen", help="screen a file (or stored dataset) against endpoints")
def screen(
    ctx: typer.Context,
    file: File = None,
    dataset: Annotated[str | None, typer.Option()] = None,
    endpoints: Annotated[str | None, typer.Option(help="comma-separated")] = None,
    wait: Wait = False,
    output: Output = None,
) -> int:
    with client(ctx) as gateway:
        upload_id = gateway.upload(file).upload_id if file else None
        job = gateway.submit_screen(upload_id=upload_id, dataset=dataset,
                                    endpoints=items([endpoints] if endpoints else None) or None)
        return submitted(gateway, job, wait, output)


@app.command("train", help="train on an uploaded file or a stored dataset")
def train(
    ctx: typer.Context,
    file: File = None,
    dataset: Annotated[str | None, typer.Option()] = None,
    endpoint: Annotated[str | None, typer.Option()] = None,
    label_col: Annotated[str | None, typer.Option("--label-col")] = None,
    model: Annotated[Literal["gbm", "transformer"] | None, typer.Option()] = None,
    profile: Annotated[Literal["standard", "quick"] | None, typer.Option()] = None,
    split: Annotated[Literal["scaffold", "random", "time"] | None, typer.Option()] = None,
    base: Annotated[str | None, typer.Option()] = None,
    wait: Wait = False,
    output: Output = None,
) -> int:
    with client(ctx) as gateway:
        upload_id = gateway.upload(file).upload_id if file else None
        job = gateway.submit_train(upload_id=upload_id, dataset=dataset or None,
                                   endpoint=endpoint or None, label_col=label_col or None,
                                   model=model, profile=profile, split=split, base=base or None)
        return submitted(gateway, job, wait, output)


@app.command("list", help="recent jobs")
def list_jobs(ctx: typer.Context) -> int:
    with client(ctx) as gateway:
        for job in gateway.list():
            print(f"{job.id}  {job.kind:<7} {job.state:<10} {job.progress * 100:5.1f}%  {job.step}")
    return 0


JobId = Annotated[str, typer.Argument(metavar="ID", show_default=False)]
Token = Annotated[str | None, typer.Option("--token", envvar="MOLSERVE_JOB_TOKEN", show_default=False,
                                           help="a job submitted without a key: its job token")]


@app.command("show", help="one job: state, progress, logs")
def show(
    ctx: typer.Context,
    job_id: JobId,
    follow_it: Annotated[bool, typer.Option("--follow", help="live progress bar until the job ends")] = False,
    token: Token = None,
) -> int:
    with client(ctx, job_id, token) as gateway:
        job = follow(gateway, job_id) if follow_it else gateway.get(job_id)
    print(json.dumps(job.data, indent=2))
    return 0


@app.command("cancel", help="cancel a queued or running job")
def cancel(ctx: typer.Context, job_id: JobId, token: Token = None) -> int:
    with client(ctx, job_id, token) as gateway:
        print(json.dumps(gateway.cancel(job_id).data, indent=2))
    return 0


@app.command("result", help="download a finished screen's CSV")
def result(
    ctx: typer.Context,
    job_id: JobId,
    output: Annotated[Path, typer.Option("-o", "--output", show_default=False)],
    token: Token = None,
) -> int:
    with client(ctx, job_id, token) as gateway:
        gateway.download_result(job_id, output)
    print(f"result written to {output}", file=sys.stderr)
    return 0
