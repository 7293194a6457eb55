"""`molserve deploy modal --check`: is this Modal account ready for `modal deploy`?

Checks, in the order a first deployment needs them, and stops at the first failure with a
message that says what to run: the image's pinned requirements (a checkout with
`requirements.lock`), the Modal token (configured, and accepted by Modal), the worker's Secret,
then creates the app's Volumes and progress Dict if they are missing (idempotent: run it as
often as you like) and looks for models on the registry Volume.

Imports modal only inside `check`, so the CLI can offer `--check` without it installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from molserve.config import ModalDeploySettings
from molserve.errors import InvalidInput, NotFound, Unavailable

# The names modal_app.py gives its objects (kept here so checking needs no image build).
REGISTRY_VOLUME = "molserve-registry"
HF_VOLUME = "molserve-hf-cache"
PROGRESS_DICT = "molserve-progress"


@dataclass
class SetupReport:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def ok(self, line: str) -> None:
        self.lines.append(f"ok  {line}")

    def warn(self, line: str) -> None:
        self.warnings.append(line)
        self.lines.append(f"!!  {line}")


def check(deploy: ModalDeploySettings | None = None, *,
          say: Callable[[str], None] = lambda line: None) -> SetupReport:
    """Check (and where it is safe, create) what the Modal app needs; raise a
    `molserve.errors` error naming the first thing the user must fix."""
    deploy = deploy or ModalDeploySettings()
    report = SetupReport()

    def ok(line: str) -> None:
        report.ok(line)
        say(f"ok  {line}")

    try:
        import modal
        from modal.config import config
        from modal.exception import AuthError, NotFoundError
    except ImportError:
        raise Unavailable("modal is not installed: pip install 'molserve[deploy]' (or pip install modal)",
                          code="modal_missing") from None

    from molserve.deploy.requirements import locked_requirements

    try:
        requirements, constraints = locked_requirements()
    except FileNotFoundError as error:
        raise NotFound(str(error), code="no_lock_file") from None
    except ValueError as error:
        raise InvalidInput(str(error), code="lock_incomplete") from None
    names = {r.split("==", 1)[0] for r in requirements}
    if "onnx" not in names:  # the int8 export's quantizer imports it
        raise InvalidInput("the image would lack onnx: add it to the worker extra", code="image_lacks_onnx")
    ok(f"image: {len(requirements)} requirements pinned by requirements.lock "
       f"(+{len(constraints)} constraints)")

    if not (config.get("token_id") and config.get("token_secret")):
        raise InvalidInput("no Modal token on this machine: run `modal token new` (or set "
                           "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)", code="modal_no_token")
    try:
        modal.Client.from_env().hello()
    except AuthError as error:
        raise InvalidInput(f"Modal refused this machine's token ({error}): run `modal token new`",
                           code="modal_bad_token") from None
    except Exception as error:  # network, TLS, proxy: anything that stops us reaching Modal
        raise Unavailable(f"cannot reach Modal to check the token: {error}",
                          code="modal_unreachable") from None
    ok("token: accepted by Modal")

    try:
        modal.Secret.from_name(deploy.secret).hydrate()
    except NotFoundError:
        raise NotFound(f"no Modal secret {deploy.secret!r}: run `modal secret create {deploy.secret} "
                       "MOLSERVE_WORKER_TOKEN=<a long random token>` (the gateway sends the same "
                       "token)", code="modal_no_secret") from None
    ok(f"secret: {deploy.secret} exists (the Worker refuses to start if its MOLSERVE_WORKER_TOKEN "
       "is empty)")

    for name in (REGISTRY_VOLUME, HF_VOLUME):
        modal.Volume.objects.create(name, allow_existing=True)
        ok(f"volume: {name}")
    modal.Dict.objects.create(PROGRESS_DICT, allow_existing=True)
    ok(f"dict: {PROGRESS_DICT}")

    registry = modal.Volume.from_name(REGISTRY_VOLUME)
    endpoints = [entry.path.strip("/") for entry in registry.listdir("/")
                 if not entry.path.strip("/").startswith(".")]
    if endpoints:
        ok(f"registry volume holds {len(endpoints)} endpoint folders: {', '.join(sorted(endpoints)[:8])}")
    else:
        line = (f"the {REGISTRY_VOLUME} volume is empty: upload models with `modal volume put "
                f"{REGISTRY_VOLUME} registry/ /` (the Worker serves no model until then)")
        report.warn(line)
        say(f"!!  {line}")
    return report
