"""Loaded by the schemathesis CLI (`SCHEMATHESIS_HOOKS`) in tests/test_security.py's fuzzing runs.

Generators for the gateway's custom string formats: `smiles` draws molecules, `endpoint` the
names the server under test serves (`MOLSERVE_FUZZ_ENDPOINTS`, comma-separated). The schema
says what these strings mean; these say how to draw ones that mean it.

One check of our own, for runs made as one caller (`MOLSERVE_FUZZ_SCOPES`: `anonymous`, or the
key's scopes, comma-separated, with `MOLSERVE_FUZZ_OWNER` its owner id): no route answers 2xx to
a caller tests/authorization_rules.py says it must refuse, and no job shown to a key other than
an admin belongs to someone else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import schemathesis
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.authorization_rules import RULES, admitted  # noqa: E402

MOLECULES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
             "C1CCNCC1", "O=C(O)c1ccccc1", "[Na+].[Cl-]", "C[C@H](N)C(=O)O", "FC(F)(F)c1ccc(Cl)cc1"]

schemathesis.openapi.format("smiles", st.sampled_from(MOLECULES))
schemathesis.openapi.format(
    "endpoint", st.sampled_from(os.environ.get("MOLSERVE_FUZZ_ENDPOINTS", "tpsa").split(",")))
schemathesis.openapi.format("atom-indices", st.sampled_from(["0", "0,1", "alerts", "pains", "brenk"]))
# A screen's filter and ranking name output columns; these are in every screen's output.
schemathesis.openapi.format("where-expression", st.sampled_from(["row >= 0", "row < 10 or row >= 10"]))
schemathesis.openapi.format("output-column", st.sampled_from(["row", "-row"]))

CALLER = os.environ.get("MOLSERVE_FUZZ_SCOPES")
OWNER = os.environ.get("MOLSERVE_FUZZ_OWNER")
READS_OPEN = os.environ.get("MOLSERVE_REQUIRE_KEY_FOR_READS", "false").lower() != "true"


@schemathesis.check
def refused_callers_get_no_success(ctx, response, case):
    """A caller the rules refuse never gets a 2xx; a key that is not an admin never sees another
    owner's job."""
    if CALLER is None or not 200 <= response.status_code < 300:
        return None
    method, path = case.method.upper(), case.operation.path
    rule = RULES.get((method, path))
    if rule is None:
        raise AssertionError(f"{method} {path} has no rule in tests/authorization_rules.py")
    scopes = None if CALLER == "anonymous" else frozenset(CALLER.split(","))
    body = case.body if isinstance(case.body, dict) else {}
    needs = "train" if path == "/v1/jobs" and body.get("kind") == "train" else "predict"
    if not admitted(rule, scopes, reads_open=READS_OPEN, needs=needs):
        raise AssertionError(f"{method} {path} answered {response.status_code} to a caller with "
                             f"scopes {CALLER}, which it must refuse")
    if rule in ("owner", "any_key") and scopes is not None and "admin" not in scopes:
        media = " ".join(response.headers.get("content-type", []))
        shown = response.json() if "json" in media else None
        jobs = shown if isinstance(shown, list) else [shown] if isinstance(shown, dict) else []
        strangers = sorted({str(j.get("owner")) for j in jobs if j.get("owner") != OWNER})
        if strangers:
            raise AssertionError(f"{method} {path} showed jobs of {strangers} to {OWNER}")
    return None
