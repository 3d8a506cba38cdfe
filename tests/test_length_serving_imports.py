"""Serving the length model loads no training library (issue 15, item 3), and the
inference-only replacements compute what the training libraries compute."""

import subprocess
import sys

import numpy as np
import pytest

TRAINING_LIBRARIES = ("scipy", "sklearn", "lightgbm", "transformers")

# The controller's entry point (`PredictedLengths`) loads the predictor and predicts on
# its thread; the check runs in a fresh interpreter so that nothing this test session
# imported counts.
CHECK = """
import sys
import zmq
from sglang_ext.length_source import PredictedLengths
from length_model.serving import LengthPredictor

folder = sys.argv[1] or None
predictor = LengthPredictor.load(folder) if folder else LengthPredictor.load()
tokens = predictor.predict(["Write a haiku about the sea.", "Explain TCP in detail, with code."])
context = zmq.Context()
lengths = PredictedLengths(None, 20.0, context, None, predictor=predictor)
assert lengths.unavailable is None, lengths.unavailable
lengths.close()
context.term()
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
print(",".join(map(str, tokens)), ",".join(loaded) or "-")
"""


@pytest.mark.parametrize("artifact", ["default", "finetuned"])
def test_serving_the_predictor_loads_no_training_library(artifact):
    from length_model.config import FINETUNED_ARTIFACT_DIR

    folder = "" if artifact == "default" else FINETUNED_ARTIFACT_DIR
    run = subprocess.run([sys.executable, "-c", CHECK, folder, ",".join(TRAINING_LIBRARIES)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    tokens, loaded = run.stdout.split()
    assert all(int(t) >= 1 for t in tokens.split(","))  # it did predict
    assert loaded == "-", f"serving loaded {loaded}"


TEXTS = [
    "",
    "a",
    "Hello, world! Hello again, WORLD.",
    "Write a Python function `def f(x): return x**2` and explain it.",
    "Ünïcödé wörds: naïve café, straße, 東京 タワー, emoji 🙂🙂 and numbers 1234 5678",
    "tab\tseparated\nlines\n\nwith   spaces and under_scores and x_y_z",
    "repeat repeat repeat repeat the the the",
    " ".join(f"tok{i}" for i in range(700)),
]


def test_hashed_counts_match_scikit_learns_hashing_vectorizer():
    from sklearn.feature_extraction.text import HashingVectorizer

    from length_model.hashing import hashed_counts

    for n_features in (2 ** 18, 1000, 7):
        ref = HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False,
                                norm=None, lowercase=True).transform(TEXTS)
        ref.sum_duplicates()
        ours = hashed_counts(TEXTS, n_features)
        assert ours.indptr.tolist() == ref.indptr.tolist()
        assert ours.indices.tolist() == ref.indices.tolist()
        assert ours.data.tolist() == ref.data.tolist()


def test_the_served_ridge_score_equals_the_one_from_scikit_learns_matrix():
    """The formula of `ctxmodel.ContextFeaturizer.ridge_score`, fed scikit-learn's CSR
    matrix, against the served method (which hashes with `hashing`)."""
    from length_model.config import DEFAULT_ARTIFACT_DIR
    from length_model.serving import LengthPredictor

    feat = LengthPredictor.load(DEFAULT_ARTIFACT_DIR, warmup=False).context.featurizer
    x = feat.hasher.transform(TEXTS)  # scikit-learn's, as in training
    idf, coef = feat.fitted["idf"], feat.fitted["ridge_coef"]
    expected = []
    for i in range(len(TEXTS)):
        lo, hi = x.indptr[i], x.indptr[i + 1]
        score = float(feat.fitted["ridge_intercept"])
        if hi > lo:
            cols = x.indices[lo:hi]
            v = (1.0 + np.log(x.data[lo:hi])) * idf[cols]
            score += float(v @ coef[cols]) / max(float(np.sqrt(v @ v)), 1e-12)
        expected.append(score)
    assert feat.ridge_score(TEXTS).tolist() == expected


def test_wordpiece_ids_match_the_transformers_tokenizer():
    from transformers import AutoTokenizer

    from length_model.embed import minilm_path
    from length_model.wordpiece import WordPiece

    ref = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    ours = WordPiece(minilm_path())
    texts = TEXTS + ["x " * 300]  # longer than the 128 tokens tokenizer.json pads/cuts to
    assert ours(texts, add_special_tokens=False)["input_ids"] == \
        ref(texts, add_special_tokens=False, truncation=False)["input_ids"]
    assert (ours.cls_token_id, ours.sep_token_id, ours.pad_token_id) == \
        (ref.cls_token_id, ref.sep_token_id, ref.pad_token_id)


def test_bucket_probabilities_match_scipys_normal_cdf():
    from scipy.special import ndtr

    from length_model.inference import lognormal_bucket_probs

    mu, sigma, edges = np.array([-3.0, 0.5, 2.0, 6.0, 40.0]), 0.8, np.array([1.0, 10.0, 100.0, 1000.0])
    z = (np.log1p(edges)[None, :] - mu[:, None]) / sigma
    cdf = ndtr(z)
    expected = np.diff(np.hstack([np.zeros((5, 1)), cdf, np.ones((5, 1))]), axis=1)
    np.testing.assert_allclose(lognormal_bucket_probs(mu, sigma, edges), expected, rtol=1e-12, atol=1e-300)
