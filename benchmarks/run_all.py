"""Run every benchmark and print its figures (the command behind `make bench`)."""

from __future__ import annotations

import subprocess
import sys

SCRIPTS = ["benchmarks.bench_models", "benchmarks.bench_features", "benchmarks.bench_gateway",
           "benchmarks.bench_batch"]


def main() -> int:
    registry = sys.argv[1] if len(sys.argv) > 1 else "registry"
    for module in SCRIPTS:
        print(f"\n## {module}\n", flush=True)
        subprocess.run([sys.executable, "-m", module, "--registry", registry], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
