"""length_model.finetune: the encoder input layout, a fit that learns, the int8 ONNX export
against the fp32 model, and the shipped scorer (deterministic, batch-independent)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from length_model import finetune as ft
from length_model.config import FINETUNED_ARTIFACT_DIR
from length_model.embed import minilm_path

ARTIFACT = pathlib.Path(FINETUNED_ARTIFACT_DIR)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


def test_input_layout_head_tail_and_previous_answer(tokenizer):
    cfg = ft.FinetuneConfig(head_tokens=4, tail_tokens=2, prev_tokens=3)
    ids = ft.input_ids(tokenizer, ["one two three four five six seven eight nine", "hi"],
                       ["", "alpha beta gamma delta"], cfg)
    assert ids.shape == (2, cfg.width)
    words = [tokenizer.convert_ids_to_tokens([i for i in row if i]) for row in ids]
    assert words[0] == ["[CLS]", "one", "two", "three", "four", "eight", "nine", "[SEP]", "[SEP]"]
    assert words[1] == ["[CLS]", "hi", "[SEP]", "beta", "gamma", "delta", "[SEP]"]


@pytest.fixture(scope="module")
def tiny_scorer():
    """A 1-layer scorer fitted for a few steps on a toy task: long prompts, long answers."""
    cfg = ft.FinetuneConfig(layers=1, head_tokens=16, tail_tokens=4, prev_tokens=4, epochs=4,
                            batch_size=16, lr=3e-4, head_lr=3e-3)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    rng = np.random.default_rng(0)
    short = ["hi", "thanks", "yes or no?", "ok", "one word please", "hello there"]
    long = ["write a long detailed essay about history", "explain in detail with many examples",
            "write a complete program with tests", "describe everything step by step at length"]
    prompts = [rng.choice(short) if i % 2 else rng.choice(long) for i in range(96)]
    y = np.array([3.0 if i % 2 else 500.0 for i in range(96)])
    ids = ft.input_ids(tok, prompts, [""] * len(prompts), cfg)
    ly = np.log1p(y)
    model = ft.build_scorer(minilm_path(), cfg, float(ly.mean()), float(ly.std()))
    ft.fit(model, ids, ly, cfg, "cpu", log=lambda m: None)
    return model, cfg, ids, ly


def test_fit_learns_the_toy_task(tiny_scorer):
    model, _, ids, ly = tiny_scorer
    pred = ft.predict_log(model, ids, "cpu")
    assert pred[ly > 3].mean() > pred[ly < 3].mean() + 1.0


def test_int8_onnx_export_follows_the_fp32_model(tiny_scorer, tmp_path):
    import dataclasses

    model, cfg, ids, _ = tiny_scorer
    fp32 = ft.predict_log(model, ids, "cpu")
    (tmp_path / ft.REPORT_FILE).write_text(json.dumps({"config": dataclasses.asdict(cfg)}))
    ft.export_int8(model, tmp_path / ft.ONNX_FILE)
    int8 = ft.FinetunedScorer(tmp_path).score_ids(ids)
    assert np.abs(int8 - fp32).max() < 0.3
    assert np.corrcoef(int8, fp32)[0, 1] > 0.99


def test_shipped_scorer_is_deterministic_and_batch_independent():
    if not (ARTIFACT / ft.ONNX_FILE).exists():
        pytest.fail(f"{ARTIFACT / ft.ONNX_FILE} is missing: the shipped model needs it")
    scorer = ft.FinetunedScorer(ARTIFACT)
    prompts = ["Write a 2000-word essay on Rome.", "hi", "Translate 'cat' to French."]
    prevs = ["", "Hello! How can I help?", ""]
    together = scorer(prompts, prevs)
    alone = np.array([scorer([p], [a])[0] for p, a in zip(prompts, prevs)])
    np.testing.assert_array_equal(together, alone)
    assert together[0] > together[1] and together[0] > together[2]
    assert scorer([], []).shape == (0,)


def test_shipped_finetuned_predictor_uses_the_scorer():
    from length_model.context import render_chat
    from length_model.serving import LengthPredictor

    pred = LengthPredictor.load(ARTIFACT, num_threads=1)
    featurizer = pred.context.featurizer
    assert featurizer.scorer is not None
    chat = render_chat([("user", "Write a long essay on Rome."), ("assistant", "Rome was " * 300)],
                       "continue")
    x = featurizer.features([chat, "hi"])
    assert x.shape[1] == len(pred.meta["feature_names"])
    assert x[0, -1] == pytest.approx(featurizer.scorer(["continue"], ["Rome was " * 300])[0])
    essay, hello = pred.predict(["Write a detailed 3000-word essay on the Roman empire.", "hi"])
    assert essay > hello

    # Its ranking score blends the bucket head's expected log length (chosen on validation).
    ctx = pred.context
    w = ctx.blend_buckets
    assert 0 < w < 1 and ctx.buckets is not None
    texts = [chat, "hi"]
    with_blend = ctx.outputs(texts, buckets=True)
    ctx.blend_buckets = 0.0
    try:
        without = ctx.outputs(texts)
    finally:
        ctx.blend_buckets = w
    expected = (1 - w) * without["mu_log"] + w * (with_blend["bucket_probs"] @ ctx.centers)
    np.testing.assert_allclose(with_blend["mu_log"], expected, rtol=1e-12)


def test_out_of_fold_scores_must_cover_the_training_pairs(tmp_path):
    from length_model.ctxmodel import encoder_scores
    from length_model.data import Pair

    np.savez(tmp_path / ft.OOF_FILE, key=np.array(["a#0"]), oof=np.array([1.0], dtype=np.float32))
    pairs = [Pair("a", 0, "x", 3, "train"), Pair("b", 2, "y", 5, "train")]
    with pytest.raises(ValueError, match="lacks 1 training pairs"):
        encoder_scores(None, tmp_path, {"train": None}, pairs)
