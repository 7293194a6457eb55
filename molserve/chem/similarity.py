"""Tanimoto similarity of query fingerprints to a reference set (a model's training molecules).

The reference is stored as an inverted index (for each fingerprint bit, the molecules that set
it), so one query costs a gather and a bincount over the molecules that share its bits, not a
pass over every reference fingerprint, and the index is a few flat integer arrays that load from
disk in microseconds.

`SharedIndex` serves many reference sets at once (every endpoint's training molecules): one
inverted index over their distinct molecules, with each set's members. One pass over a query's
postings scores every distinct molecule; each set's nearest is then a maximum over its members,
so the domains of all endpoints cost about what one endpoint's did, and a molecule in the
training sets of ten endpoints is stored once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SimilarityIndex:
    n_bits: int
    bit_ptr: np.ndarray  # int64, (n_bits + 1,): molecules with bit b are mol_ids[bit_ptr[b]:bit_ptr[b+1]]
    mol_ids: np.ndarray  # int32 (uint16 in a SharedIndex of at most 65,536 molecules)
    bit_counts: np.ndarray  # int32, (n_reference,): set bits per reference molecule

    @property
    def size(self) -> int:
        return int(self.bit_counts.shape[0])

    @classmethod
    def build(cls, on_bits: Sequence[np.ndarray], n_bits: int) -> SimilarityIndex:
        counts = np.array([len(b) for b in on_bits], dtype=np.int32)
        if len(on_bits):
            all_bits = np.concatenate(on_bits).astype(np.int64)
            owners = np.repeat(np.arange(len(on_bits), dtype=np.int32), counts)
        else:
            all_bits = np.zeros(0, dtype=np.int64)
            owners = np.zeros(0, dtype=np.int32)
        order = np.argsort(all_bits, kind="stable")
        ptr = np.zeros(n_bits + 1, dtype=np.int64)
        np.cumsum(np.bincount(all_bits, minlength=n_bits), out=ptr[1:])
        return cls(n_bits, ptr, owners[order], counts)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"bit_ptr": self.bit_ptr, "mol_ids": self.mol_ids, "bit_counts": self.bit_counts}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_bits: int) -> SimilarityIndex:
        return cls(n_bits, arrays["bit_ptr"], arrays["mol_ids"], arrays["bit_counts"])

    def nearest(self, query_bits: np.ndarray) -> tuple[float, int]:
        """(max Tanimoto similarity, index of the nearest reference molecule); (0, -1) if none."""
        if self.size == 0 or len(query_bits) == 0:
            return 0.0, -1
        ptr, ids = self.bit_ptr, self.mol_ids
        # ~40 slices of a flat array: cheaper than building a fancy index of all postings.
        postings = np.concatenate([ids[ptr[b] : ptr[b + 1]] for b in query_bits.tolist()])
        if len(postings) == 0:
            return 0.0, -1
        shared = np.bincount(postings, minlength=self.size)
        similarity = shared / (self.bit_counts + len(query_bits) - shared)
        best = int(similarity.argmax())
        return float(similarity[best]), best

    def nearest_many(self, on_bits: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        sims = np.zeros(len(on_bits), dtype=np.float64)
        idx = np.full(len(on_bits), -1, dtype=np.int64)
        for i, bits in enumerate(on_bits):
            sims[i], idx[i] = self.nearest(bits)
        return sims, idx


@dataclass(frozen=True)
class SharedIndex:
    """One `SimilarityIndex` over the distinct molecules of several named reference sets.

    Set `name`'s members are `members[start:stop]` for `(start, stop) = ranges[name]`, in the
    set's own order, so its nearest molecule (the first of the most similar, as
    `SimilarityIndex.nearest` picks) and its similarity are exactly what its own index gives.
    The distinct molecules' SMILES are one UTF-8 blob with offsets, not a Python string each.
    """

    index: SimilarityIndex
    members: np.ndarray  # int32: positions in `index`, set after set
    ranges: dict[str, tuple[int, int]]
    smiles_blob: bytes
    smiles_end: np.ndarray  # int64 (distinct + 1,): SMILES i is blob[end[i]:end[i + 1]]

    @property
    def nbytes(self) -> int:
        index = self.index
        return (index.bit_ptr.nbytes + index.mol_ids.nbytes + index.bit_counts.nbytes
                + self.members.nbytes + len(self.smiles_blob) + self.smiles_end.nbytes)

    @classmethod
    def build(cls, sets: Mapping[str, tuple[SimilarityIndex, Sequence[str]]], n_bits: int) -> SharedIndex:
        """`sets`: name -> (its index, its molecules' SMILES). Molecules with the same SMILES
        and the same fingerprint bits are stored once."""
        for name, (index, smiles) in sets.items():
            if index.n_bits != n_bits or len(smiles) != index.size:
                raise ValueError(f"{name}: index of {index.n_bits} bits for {len(smiles)} SMILES")
        indexes = [index for index, _ in sets.values()]
        texts = [text for _, smiles in sets.values() for text in smiles]
        # A molecule's key: its SMILES, its bit count and a fingerprint of its bit set (random
        # weights summed in bit order, the same order for the same bits in any index).
        weights = np.random.default_rng(0).random(n_bits)
        bits_of = [np.repeat(np.arange(n_bits, dtype=np.int32), np.diff(i.bit_ptr)) for i in indexes]
        digest = np.concatenate([np.bincount(i.mol_ids, weights=weights[b], minlength=i.size)
                                 for i, b in zip(indexes, bits_of, strict=True)] or [np.zeros(0)])
        counts = np.concatenate([i.bit_counts for i in indexes] or [np.zeros(0, np.int32)])
        text_hash = np.fromiter(map(hash, texts), dtype=np.int64, count=len(texts))
        order = np.lexsort((digest, counts, text_hash))  # stable: a group's first row first
        keys = (text_hash[order], counts[order], digest[order])
        starts_group = np.ones(len(order), dtype=bool)
        for key in keys:
            starts_group[1:] &= key[1:] == key[:-1]
        starts_group = ~starts_group
        starts_group[:1] = True
        group_sorted = np.cumsum(starts_group) - 1
        first = order[starts_group]  # each distinct molecule's first row
        renumber = np.empty(len(first), dtype=np.int64)
        renumber[np.argsort(first)] = np.arange(len(first))  # numbered in order of first row
        ids = np.empty(len(order), dtype=np.int32)
        ids[order] = renumber[group_sorted]
        first = np.sort(first)
        distinct = [texts[i] for i in first.tolist()]
        if any(a != b for a, b in zip(texts, (distinct[i] for i in ids.tolist()), strict=True)):
            raise ValueError("two training molecules share a key; the shared index would mix them")
        is_first = np.zeros(len(order), dtype=bool)
        is_first[first] = True
        owners_parts, bits_parts, ranges, start = [], [], {}, 0
        for name, index, bits in zip(sets, indexes, bits_of, strict=True):
            keep = is_first[start + index.mol_ids]
            owners_parts.append(ids[start + index.mol_ids[keep]])
            bits_parts.append(bits[keep])
            ranges[name] = (start, start + index.size)
            start += index.size
        owners = np.concatenate(owners_parts or [np.zeros(0, np.int32)])
        all_bits = np.concatenate(bits_parts or [np.zeros(0, np.int32)])
        narrow = all_bits.astype(np.uint16) if n_bits <= 1 << 16 else all_bits  # a faster sort
        ptr = np.zeros(n_bits + 1, dtype=np.int64)
        np.cumsum(np.bincount(all_bits, minlength=n_bits), out=ptr[1:])
        encoded = [t.encode() for t in distinct]
        ends = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=ends[1:])
        postings = owners[np.argsort(narrow, kind="stable")]
        if len(distinct) <= 1 << 16:  # half the memory; bincount widens the few it reads
            postings = postings.astype(np.uint16)
        return cls(SimilarityIndex(n_bits, ptr, postings,
                                   counts[first].astype(np.int32)),
                   ids, ranges, b"".join(encoded), ends)

    def smiles(self, position: int) -> str:
        return self.smiles_blob[self.smiles_end[position] : self.smiles_end[position + 1]].decode()

    def similarities(self, query_bits: np.ndarray) -> np.ndarray | None:
        """One query's Tanimoto similarity to every distinct molecule (None: no bit set)."""
        if len(query_bits) == 0 or self.index.size == 0:
            return None
        ptr, ids = self.index.bit_ptr, self.index.mol_ids
        postings = np.concatenate([ids[ptr[b] : ptr[b + 1]] for b in query_bits.tolist()])
        shared = np.bincount(postings, minlength=self.index.size)
        return shared / (self.index.bit_counts + len(query_bits) - shared)

    def nearest(self, query_bits: Sequence[np.ndarray], names: Sequence[str],
                similarities: Sequence[np.ndarray | None] | None = None,
                ) -> dict[str, tuple[np.ndarray, list[str | None]]]:
        """For each set in `names`: each query's max Tanimoto similarity to the set and the SMILES
        of its nearest member (0 and None when no member shares a bit). `similarities`: the
        queries' `similarities`, when already computed."""
        if not names:
            return {}
        spans = [self.ranges[n] for n in names]
        if len(spans) == 1:
            take = self.members[spans[0][0] : spans[0][1]]
        else:
            take = np.concatenate([self.members[a:b] for a, b in spans])
        bounds = np.cumsum([0] + [b - a for a, b in spans]).tolist()
        found = {n: (np.zeros(len(query_bits)), [None] * len(query_bits)) for n in names}
        for row, bits in enumerate(query_bits):
            every = self.similarities(bits) if similarities is None else similarities[row]
            if every is None:
                continue
            similarity = every[take]
            for name, start, stop in zip(names, bounds[:-1], bounds[1:], strict=True):
                if stop == start:
                    continue
                at = start + int(similarity[start:stop].argmax())  # the first of the most similar
                value = float(similarity[at])
                if value > 0.0:
                    sims, nearest = found[name]
                    sims[row] = value
                    nearest[row] = self.smiles(int(take[at]))
        return found


def tanimoto(a: np.ndarray, b: np.ndarray) -> float:
    """Tanimoto similarity of two sorted on-bit arrays.

    >>> tanimoto(np.array([1, 2, 3]), np.array([2, 3, 4]))
    0.5
    """
    shared = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - shared
    return shared / union if union else 0.0
