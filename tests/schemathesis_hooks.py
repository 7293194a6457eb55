"""Generators for the gateway's custom string formats, loaded by the schemathesis CLI
(`SCHEMATHESIS_HOOKS`): `smiles` draws molecules, `endpoint` the names the server under test
serves (`MOLSERVE_FUZZ_ENDPOINTS`, comma-separated). The schema says what these strings mean;
these say how to draw ones that mean it."""

from __future__ import annotations

import os

import schemathesis
from hypothesis import strategies as st

MOLECULES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
             "C1CCNCC1", "O=C(O)c1ccccc1", "[Na+].[Cl-]", "C[C@H](N)C(=O)O", "FC(F)(F)c1ccc(Cl)cc1"]

schemathesis.openapi.format("smiles", st.sampled_from(MOLECULES))
schemathesis.openapi.format(
    "endpoint", st.sampled_from(os.environ.get("MOLSERVE_FUZZ_ENDPOINTS", "tpsa").split(",")))
