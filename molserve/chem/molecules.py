"""Parse SMILES into RDKit molecules, with the parser's own reason when it fails.

RDKit reports why a SMILES is invalid only through its log. The log is routed to Python's
logging once, and a thread-local buffer collects the messages of the parse under way, so the
reason can be returned as a value next to the molecule that failed.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

from rdkit import Chem, RDLogger, rdBase

MAX_SMILES_LENGTH = 2000
MAX_HEAVY_ATOMS = 500

_local = threading.local()
_TIMESTAMP = re.compile(r"^\[\d\d:\d\d:\d\d\]\s*")


class _Collector(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        buffer = getattr(_local, "messages", None)
        if buffer is not None:
            buffer.append(_TIMESTAMP.sub("", record.getMessage()).strip())


def _install_log_capture() -> None:
    rdBase.LogToPythonLogger()
    rdkit_logger = logging.getLogger("rdkit")
    # RDKit adds its own stderr handler; its reports are returned as values instead.
    for handler in list(rdkit_logger.handlers):
        if not isinstance(handler, _Collector):
            rdkit_logger.removeHandler(handler)
    if not any(isinstance(h, _Collector) for h in rdkit_logger.handlers):
        rdkit_logger.addHandler(_Collector())
    rdkit_logger.propagate = False
    rdkit_logger.setLevel(logging.WARNING)
    RDLogger.DisableLog("rdApp.info")


_install_log_capture()


class InvalidSmiles(ValueError):
    """A SMILES that could not be turned into a molecule; `reason` is meant for a chemist."""

    def __init__(self, smiles: str, reason: str) -> None:
        super().__init__(reason)
        self.smiles = smiles
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParsedMolecule:
    input_smiles: str
    canonical_smiles: str
    mol: Chem.Mol


def _reason_from_log(messages: list[str]) -> str:
    """Condense RDKit's multi-line parse report into one sentence with the position."""
    cleaned = [m.removeprefix("SMILES Parse Error: ") for m in messages if m]
    if not cleaned:
        return "RDKit could not parse this SMILES"
    first = cleaned[0]
    for message in cleaned[1:]:
        match = re.search(r"check for mistakes around position (\d+)", message)
        if match:
            return f"{first} (around position {match.group(1)})"
    return first


def _parse_quietly(text: str) -> Chem.Mol | list[str]:
    """The molecule, or RDKit's log lines explaining why there is none."""
    _local.messages = []
    try:
        mol = Chem.MolFromSmiles(text)
        messages = _local.messages
    except Exception:  # RDKit's own error reporting failed (e.g. on odd bytes): still an answer
        mol, messages = None, ["RDKit could not parse this SMILES"]
    finally:
        _local.messages = None
    return messages if mol is None else mol


def parse_smiles(smiles: str) -> ParsedMolecule:
    """Parse and sanitize one SMILES; raise InvalidSmiles with RDKit's reason.

    >>> parse_smiles("OCC").canonical_smiles
    'CCO'
    """
    if not isinstance(smiles, str):
        raise InvalidSmiles(str(smiles), "SMILES must be a string")
    text = smiles.strip()
    if not text:
        raise InvalidSmiles(smiles, "empty SMILES")
    if len(text) > MAX_SMILES_LENGTH:
        raise InvalidSmiles(
            smiles, f"SMILES is {len(text)} characters long; the limit is {MAX_SMILES_LENGTH}"
        )
    foreign = next((i for i, ch in enumerate(text) if ord(ch) > 126 or ord(ch) < 32), None)
    if foreign is not None:
        raise InvalidSmiles(smiles, f"character {text[foreign]!r} at position {foreign} is not "
                                    "allowed in SMILES (printable ASCII only)")
    space = re.search(r"\s", text)
    if space:
        # RDKit reads text after whitespace as a name and would silently answer for the first
        # word alone: report RDKit's own reason if that word is invalid, else the whitespace.
        first = _parse_quietly(text[: space.start()])
        if isinstance(first, list):
            raise InvalidSmiles(smiles, _reason_from_log(first))
        raise InvalidSmiles(
            smiles, f"whitespace inside the SMILES at position {space.start()}; "
            "send one molecule per entry"
        )
    result = _parse_quietly(text)
    if isinstance(result, list):
        raise InvalidSmiles(smiles, _reason_from_log(result))
    mol = result
    heavy = mol.GetNumHeavyAtoms()
    if heavy == 0:
        raise InvalidSmiles(smiles, "the molecule has no heavy atoms")
    if heavy > MAX_HEAVY_ATOMS:
        raise InvalidSmiles(
            smiles, f"{heavy} heavy atoms; molecules above {MAX_HEAVY_ATOMS} are out of scope"
        )
    return ParsedMolecule(smiles, Chem.MolToSmiles(mol), mol)


def try_parse(smiles: str) -> ParsedMolecule | InvalidSmiles:
    """parse_smiles, with the error returned as a value instead of raised."""
    try:
        return parse_smiles(smiles)
    except InvalidSmiles as error:
        return error


def canonical_smiles(smiles: str) -> str:
    """Canonical SMILES of a valid input.

    >>> canonical_smiles("C(O)C")
    'CCO'
    """
    return parse_smiles(smiles).canonical_smiles


def largest_fragment(mol: Chem.Mol) -> Chem.Mol:
    """The fragment with the most heavy atoms (drops counter-ions and solvents of a salt)."""
    if len(Chem.GetMolFrags(mol)) <= 1:  # atom indices only: cheap for the common case
        return mol
    fragments = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=True)
    return max(fragments, key=lambda f: (f.GetNumHeavyAtoms(), Chem.MolToSmiles(f)))
