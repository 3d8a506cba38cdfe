"""length_model context model: chat parsing/rendering round trip (training and serving see
the same text), conversation histories across ShareGPT parts, context features, and the
numpy tree ensemble equal to scikit-learn's and LightGBM's predictions, the nearest-neighbour
length prior and the text cues."""

from __future__ import annotations

import numpy as np
import pytest

from length_model.context import (CONTEXT_NAMES, context_features, parse_chat, render_chat,
                                  split_prompt)
from length_model.ctxmodel import tail_features
from length_model.data import build_histories
from length_model.trees import TreeEnsemble

HISTORY = [("user", "What is TCP?"), ("assistant", "TCP is a transport protocol.\n\nIt is reliable."),
           ("user", "And UDP?"), ("assistant", "UDP is connectionless.")]


def test_render_parse_round_trip():
    text = render_chat(HISTORY, "Compare them in a table.")
    assert parse_chat(text) == [*HISTORY, ("user", "Compare them in a table.")]
    last, hist = split_prompt(text)
    assert last == "Compare them in a table." and hist == HISTORY


def test_other_templates_and_plain_text():
    chatml = ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
              "<|im_start|>assistant\nhello there<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n"
              "<|im_start|>assistant\n")
    last, hist = split_prompt(chatml)
    assert last == "more" and hist == [("system", "be brief"), ("user", "hi"),
                                       ("assistant", "hello there")]
    llama2 = "<s>[INST] <<SYS>>sys<</SYS>> hi [/INST] hello there </s><s>[INST] more [/INST]"
    last, hist = split_prompt(llama2)
    assert last == "more" and hist == [("user", "hi"), ("assistant", "hello there")]
    assert split_prompt("plain question?") == ("plain question?", [])


def test_histories_span_sharegpt_parts():
    records = [
        {"id": "abc_0", "conversations": [{"from": "human", "value": "q1"},
                                          {"from": "gpt", "value": "a1"}]},
        {"id": "abc_2", "conversations": [{"from": "human", "value": "q2"},
                                          {"from": "gpt", "value": "a2"},
                                          {"from": "human", "value": "q3"},
                                          {"from": "gpt", "value": "a3"}]},
        {"id": "zzz", "conversations": [{"from": "human", "value": "solo"},
                                        {"from": "gpt", "value": "x"}]},
    ]
    h = build_histories(records)
    assert h[("abc_0", 0)] == []
    assert h[("abc_2", 0)] == [("user", "q1"), ("assistant", "a1")]
    assert h[("abc_2", 2)] == [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]
    assert h[("zzz", 0)] == []


def test_context_features_previous_answer():
    f = context_features(["Compare them.", "hi"], [HISTORY, []])
    assert f.shape == (2, len(CONTEXT_NAMES))
    names = list(CONTEXT_NAMES)
    assert f[0, names.index("has_history")] == 1 and f[1, names.index("has_history")] == 0
    assert f[0, names.index("log_prev_answer_tokens")] > 0 == f[1, names.index("log_prev_answer_tokens")]
    assert f[0, names.index("log_user_turns_before")] == pytest.approx(np.log1p(2))


def test_tail_features():
    assert tail_features(None) == [0.0, 0.0, 0.0, 0.0]
    cut = tail_features("```python\nprint(1")
    assert cut[0] == 1.0 and cut[2] == 1.0
    assert tail_features("Done.")[1] == 1.0


def test_tree_ensemble_matches_sklearn():
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    y = x[:, 0] + np.sin(3 * x[:, 1]) + 0.1 * rng.normal(size=600)
    m = HistGradientBoostingRegressor(max_iter=30, max_depth=6, random_state=0).fit(x, y)
    trees = TreeEnsemble.from_sklearn(m)
    np.testing.assert_allclose(trees.predict(x), m.predict(x), atol=1e-5)
    again = TreeEnsemble.from_arrays(trees.to_arrays())
    np.testing.assert_allclose(again.predict(x[:7]), m.predict(x[:7]), atol=1e-5)


def test_tree_ensemble_matches_lightgbm():
    import lightgbm as lgb  # a declared dependency: a missing install must fail here

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    y = x[:, 0] + np.sin(3 * x[:, 1]) + 0.1 * rng.normal(size=600)
    booster = lgb.train(dict(objective="huber", alpha=0.5, num_leaves=15, max_depth=5,
                             min_data_in_leaf=10, verbose=-1, num_threads=1, seed=0),
                        lgb.Dataset(x, y), 30)
    trees = TreeEnsemble.from_lightgbm(booster)
    assert trees.max_depth <= 5
    np.testing.assert_allclose(trees.predict(x), booster.predict(x), atol=1e-9)
    again = TreeEnsemble.from_arrays(trees.to_arrays())  # float32 thresholds / values
    np.testing.assert_allclose(again.predict(x), booster.predict(x), atol=1e-5)


def test_multiclass_tree_ensemble_matches_lightgbm_probabilities():
    import lightgbm as lgb

    rng = np.random.default_rng(1)
    x = rng.normal(size=(900, 4)).astype(np.float32)
    label = np.digitize(x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.normal(size=900), [-0.7, 0.0, 0.7])
    booster = lgb.train(dict(objective="multiclass", num_class=4, num_leaves=7, min_data_in_leaf=10,
                             verbose=-1, num_threads=1, seed=0), lgb.Dataset(x, label), 12)
    trees = TreeEnsemble.from_lightgbm(booster, num_iteration=9)  # rounds after 9 dropped
    assert trees.num_class == 4 and len(trees.roots) == 36
    raw = trees.predict_classes(x)
    np.testing.assert_allclose(raw, booster.predict(x, raw_score=True, num_iteration=9), atol=1e-9)
    again = TreeEnsemble.from_arrays(trees.to_arrays("b_"), "b_")
    np.testing.assert_allclose(again.predict_classes(x), raw, atol=1e-4)
    with pytest.raises(ValueError, match="multiclass"):
        trees.predict(x)


def test_knn_prior_features_and_round_trip():
    from length_model.knn import NAMES, PREV_DIM, KnnPrior

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 96)).astype(np.float32)
    prev = rng.normal(size=(300, 96)).astype(np.float32)
    prev[::2] = 0.0  # no previous answer
    log_len = rng.uniform(1, 7, size=300).astype(np.float32)
    prior = KnnPrior.fit(emb, prev, log_len, seed=0)
    f = prior.features(emb[:3], prev[:3])
    assert f.shape == (3, len(NAMES))
    np.testing.assert_allclose(f[:, 0], 1.0, atol=2e-2)  # a training row finds itself
    np.testing.assert_allclose(f[:, 1], log_len[:3], atol=1e-2)
    assert np.all(f[0, -PREV_DIM:] == 0) and np.any(f[1, -PREV_DIM:] != 0)
    folds = [(np.arange(150, 300), np.arange(150)), (np.arange(150), np.arange(150, 300))]
    oof = prior.out_of_fold(prev, folds)
    assert oof.shape == (300, len(NAMES)) and np.all(oof[:, 0] < 0.99)  # never itself
    again = KnnPrior.from_arrays({k: np.asarray(v) for k, v in prior.to_arrays().items()})
    np.testing.assert_allclose(again.features(emb[:3], prev[:3]), f, atol=1e-2)


def test_text_cues():
    from length_model.cues import NAMES, cue_features

    texts = ["Write a 500-word essay about Rome.", "Answer yes or no: is TCP reliable?",
             "Переведи текст"]
    x = dict(zip(NAMES, cue_features(texts).T))
    assert x["words_req"][0] == pytest.approx(np.log1p(500)) and x["words_req"][1] == 0
    assert x["write"][0] == 1 and x["short"][1] == 1 and x["short"][0] == 0
    assert x["log_qmarks"][1] > 0 and x["frac_cyrillic"][2] > 0.8


def test_committed_context_artifact_reads_the_chat_template():
    import json
    import pathlib

    from length_model.config import DEFAULT_ARTIFACT_DIR
    from length_model.serving import LengthPredictor

    meta = pathlib.Path(DEFAULT_ARTIFACT_DIR) / "meta.json"
    if not meta.exists() or json.loads(meta.read_text()).get("model_kind") != "context-gbm":
        pytest.skip("committed artifact is not the context model")
    pred = LengthPredictor.load(num_threads=1)
    long_answer = "Here is the first part of the essay.\n\n" + "The empire grew. " * 400
    chat = render_chat([("user", "Write a 3000-word essay on Rome."), ("assistant", long_answer)],
                       "continue")
    plain = render_chat([], "continue")
    with_ctx, without = pred.predict([chat, plain])
    assert with_ctx != without  # the earlier turns are used
    assert pred.predict([chat]) == [with_ctx]  # batch-independent
    dist = pred.predict_distribution([chat])[0]
    assert dist["p10_tokens"] <= dist["median_tokens"] <= dist["p90_tokens"]
