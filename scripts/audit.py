"""Check the pinned dependencies (requirements.lock) for known vulnerabilities.

Two sources, both reported:
- online: pip-audit against the PyPI/OSV advisory service (the real check; needs the internet);
- offline: the advisory data shipped in the `safety-db` package (PyUp's free database, frozen in
  July 2021), so a machine without the internet still checks something. It cannot know about
  advisories published after its date; a clean offline result is weak evidence.

Run: .venv/bin/python scripts/audit.py [--lock requirements.lock] [--json report.json]
Exit status 1 when either source reports a vulnerable pin.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def offline_check(pins: dict[str, str]) -> dict:
    spec = importlib.util.find_spec("safety_db")  # its __init__ is broken; only read its data
    if spec is None or not spec.submodule_search_locations:
        return {"source": "safety-db", "available": False, "findings": []}
    data = json.loads((Path(spec.submodule_search_locations[0]) / "insecure_full.json").read_text())
    meta = data.pop("$meta", {})
    by_name = {canonicalize_name(k): v for k, v in data.items()}
    findings = []
    for name, pinned in sorted(pins.items()):
        try:
            version = Version(pinned)
        except InvalidVersion:
            continue
        for advisory in by_name.get(name, []):
            for spec_text in advisory.get("specs", []):
                try:
                    affected = version in SpecifierSet(spec_text)
                except InvalidSpecifier:
                    continue
                if affected:
                    findings.append({"package": name, "version": pinned, "id": advisory.get("id"),
                                     "cve": advisory.get("cve"), "affected": spec_text,
                                     "advisory": advisory.get("advisory", "")[:200]})
                    break
    dated = datetime.fromtimestamp(meta["timestamp"], UTC).date().isoformat() if "timestamp" in meta else None
    return {"source": "safety-db (offline)", "available": True, "data_date": dated,
            "packages_with_advisories_in_data": len(by_name), "pins_checked": len(pins),
            "findings": findings}


def online_check(lock: Path, timeout_s: float) -> dict:
    command = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--no-deps", "--disable-pip",
               "--progress-spinner", "off", "-f", "json", "--timeout", "20"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (subprocess.TimeoutExpired, FileNotFoundError) as error:
        return {"source": "pip-audit (online)", "available": False, "error": str(error)}
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"source": "pip-audit (online)", "available": False, "error": tail[0][:300]}
    dependencies = report.get("dependencies", [])
    skipped = [d for d in dependencies if "skip_reason" in d]
    findings = [{"package": d["name"], "version": d["version"], "id": v["id"],
                 "fix_versions": v.get("fix_versions", [])}
                for d in dependencies for v in d.get("vulns", [])]
    if dependencies and len(skipped) == len(dependencies):
        # pip-audit says "no known vulnerabilities" even when it could look nothing up.
        return {"source": "pip-audit (online)", "available": False,
                "error": f"all {len(skipped)} pins skipped: {skipped[0]['skip_reason']}"}
    return {"source": "pip-audit (online)", "available": True,
            "pins_checked": len(dependencies) - len(skipped), "pins_skipped": len(skipped),
            "skipped": [d["name"] for d in skipped], "findings": findings}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lock", default="requirements.lock")
    parser.add_argument("--json", help="write the full report here")
    parser.add_argument("--online-timeout", type=float, default=180)
    args = parser.parse_args()
    lock = Path(args.lock)
    pins = read_lock(lock)
    results = [online_check(lock, args.online_timeout), offline_check(pins)]
    failed = False
    for result in results:
        if not result["available"]:
            print(f"{result['source']}: not available ({result.get('error', 'not installed')})")
            continue
        dated = f", data of {result['data_date']}" if result.get("data_date") else ""
        skipped = f", {result['pins_skipped']} could not be looked up" if result.get("pins_skipped") else ""
        print(f"{result['source']}: {result['pins_checked']} pins checked{dated}{skipped}, "
              f"{len(result['findings'])} vulnerable")
        for finding in result["findings"]:
            print(f"  {finding['package']}=={finding['version']}: {finding['id']}")
        failed = failed or bool(result["findings"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
