"""The worker tiers' dependencies at the versions `requirements.lock` pins, for hosts that
install them (the Modal image; Ray's runtime_env `pip`)."""

from __future__ import annotations

from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]
# What a worker runs: the base install and the `worker` extra (onnx included: the int8 export's
# quantizer imports it), and the foundation tier's MiniMol embedding.
WORKER_EXTRAS = ("worker", "foundation")


def locked_requirements(source_root: Path = SOURCE_ROOT,
                        extras: tuple[str, ...] = WORKER_EXTRAS) -> tuple[list[str], list[str]]:
    """(requirements, constraints) for a pip install of the worker: the project's own dependencies
    and `extras`, each pinned to `requirements.lock`'s version, and every other locked
    version as a constraint for what they pull in. The lock's CPU build of torch is pinned by
    its version only, so Modal's GPUs get PyPI's CUDA build of the same release."""
    import tomllib

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pyproject, lock = source_root / "pyproject.toml", source_root / "requirements.lock"
    if not (pyproject.is_file() and lock.is_file()):
        raise FileNotFoundError(
            f"{lock} not found: the worker tiers are installed at the versions requirements.lock "
            "pins, so deploy from a molserve checkout (git clone, then `make install`)")
    project = tomllib.loads(pyproject.read_text())["project"]
    declared = [*project["dependencies"],
                *(r for extra in extras for r in project["optional-dependencies"][extra])]
    locked: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            locked[canonicalize_name(name)] = version.strip()
    # Markers as on Modal's Linux containers (Python 3.11).
    linux = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux",
             "python_version": "3.11"}
    requirements, missing = [], []
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(linux):
            continue
        name = canonicalize_name(requirement.name)
        if name not in locked:
            missing.append(name)
            continue
        requirements.append(f"{name}=={locked[name].split('+', 1)[0]}")
    if missing:
        raise ValueError(f"requirements.lock has no version for {', '.join(missing)}: run `make lock`")
    pinned = {r.split("==", 1)[0] for r in requirements}
    constraints = [f"{name}=={version}" for name, version in sorted(locked.items())
                   if name not in pinned and "+" not in version]
    return requirements, constraints
