"""Hashed word 1-2-gram counts, as scikit-learn's `HashingVectorizer` computes them, for
serving without scikit-learn (the controller must not load training libraries).

The training run (`ctxmodel.train_context_model`) hashes with
`HashingVectorizer(ngram_range=(1, 2), alternate_sign=False, norm=None, lowercase=True)`;
the served ridge score must see the same columns. What that vectorizer does (scikit-learn
1.9, `feature_extraction/text.py: _VectorizerMixin.build_analyzer`, `_word_ngrams`, and
`feature_extraction/_hashing_fast.pyx: transform`):

- the text is lower-cased (`str.lower`), tokens are the matches of `(?u)\\b\\w\\w+\\b`;
- features are the tokens, then each pair of neighbouring tokens joined by one space;
- a feature's column is `abs(h) % n_features`, `h` the signed 32-bit MurmurHash3 (seed 0)
  of its UTF-8 bytes, except `h = -2**31`, whose column is
  `(2**31 - 1 - (n_features - 1)) % n_features`; with `alternate_sign=False` every feature
  counts +1, and counts of one column are summed (the CSR matrix is made canonical:
  sorted, duplicate columns summed).

`tests/test_length_hashing.py` checks column for column against scikit-learn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import mmh3
import numpy as np

_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_INT32_MIN = -(2 ** 31)


@dataclass(frozen=True)
class HashedCounts:
    """Rows of hashed counts in CSR layout: row i holds columns
    `indices[indptr[i]:indptr[i + 1]]` (sorted, unique) with counts `data[...]`."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    n_features: int


def word_features(text: str) -> list[str]:
    """The 1- and 2-grams of one text, in the vectorizer's order."""
    tokens = _TOKEN.findall(text.lower())
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]


def column(feature: str, n_features: int) -> int:
    h = mmh3.hash(feature, 0, signed=True)  # str is hashed as its UTF-8 bytes
    if h == _INT32_MIN:
        return (2 ** 31 - 1 - (n_features - 1)) % n_features
    return abs(h) % n_features


def hashed_counts(texts: list[str], n_features: int) -> HashedCounts:
    indptr, indices, data = [0], [], []
    for text in texts:
        cols = np.fromiter((column(f, n_features) for f in word_features(text)), dtype=np.int64)
        unique, counts = np.unique(cols, return_counts=True)
        indices.append(unique)
        data.append(counts.astype(np.float64))
        indptr.append(indptr[-1] + len(unique))
    empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0, np.float64)
    return HashedCounts(np.asarray(indptr, dtype=np.int64),
                        np.concatenate(indices) if indices else empty_i,
                        np.concatenate(data) if data else empty_f, n_features)
