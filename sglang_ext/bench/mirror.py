"""`bench mirror`: cost of the global radix mirror on the dispatch path and the event feed.

What is measured, over synthetic but SGLang-shaped KV-event streams (seeded, deterministic):

- decision path: what `Router.cached_tokens` does on the mirror (pack the prompt once,
  `GlobalTree.match_packed`) plus building the per-worker view a policy decides on
  (uncertain workers zeroed, `ClusterView` over the ledger's loads), timed per request
  with `time.perf_counter_ns`; p50/p99 in microseconds, per number of workers, prompt
  length and tree size, for each prompt type side by side (`--inputs`): `array`, i.e.
  `array('q')`, which is what SGLang 0.5.23 hands the controller (DESIGN.md 7.5), and
  `list`, what tests and the simulator pass;
- event application: pages per second for `BlockStored` and `BlockRemoved`, in two
  shapes: one event per radix node (SGLang 0.5.23 emits one event per page but its
  queue coalesces consecutive chained stores, and consecutive removals, into one event,
  so this is the shape on the wire) and one page per event (a stress case: what an
  uncoalesced stream would cost); removals leaves first, as SGLang's `evict` goes. The
  `feed:` rows time the whole live path at the largest worker count: msgpack batches
  of SGLang's own event classes, decoded and applied by `EventApplier.on_live`;
- the benchmark's inputs are frozen out of the cyclic GC (`gc.freeze`), as the live
  controller freezes its start-up heap; the mirror's own objects are collected as usual;
- memory per cached token: `tracemalloc` bytes still allocated after the events (made
  inside the traced region, like msgpack-decoded ones) were applied and dropped.

The fleet: `--system-prompts` shared system prompts (512-2048 tokens); conversations
on them whose turns are 64-640 tokens, 2K-12K tokens deep in all, until the mirror holds
the tree size in distinct tokens. Each conversation lives on one worker, and a quarter
of them also on a second worker up to a random turn (partial replicas), so workers drop
out of a match at different depths. A worker holds each system prompt its conversations
use. Page hashes are SGLang's own chained SHA-256 hashes truncated to int64.

Probes: 90 % continue a random conversation (its cached path cut at a random point that
leaves room for 32-256 new tokens, then filled with new tokens to the prompt length),
10 % are cold prompts. Timings are noisy on a shared machine: `--repeats N` reports the
median over N timing passes of each statistic.

Targets (issue 3): decision p99 <= 100 us at 128 workers with 8K-token prompts, flat in
tree size; >= 500K pages/s applied.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from array import array
from dataclasses import asdict, dataclass

import numpy as np

from sglang_ext.core.global_tree import GlobalTree
from sglang_ext.core.ledger import LoadLedger
from sglang_ext.core.policies.base import ClusterView
from sglang_ext.core.token_bytes import pack
from traces.summary import prefixed, summarize_values

VOCAB = 32_000
TARGET_P99_US = 100.0
TARGET_PAGES_PER_S = 500_000.0


@dataclass(frozen=True)
class MirrorBenchConfig:
    """Benchmark settings (see `--help`)."""

    workers: tuple[int, ...] = (2, 8, 32, 128)
    prompt_tokens: tuple[int, ...] = (512, 2048, 8192)
    tree_tokens: tuple[int, ...] = (100_000, 1_000_000, 10_000_000)  # distinct, page 16
    page_size: int = 16
    page1_tree_tokens: tuple[int, ...] = (100_000, 1_000_000)  # distinct, page size 1
    probes: int = 2000  # timed decisions per point and pass
    repeats: int = 3
    system_prompts: int = 32
    memory_tree_tokens: int = 1_000_000
    seed: int = 0
    inputs: tuple[str, ...] = ("list", "array")  # array: array('q'), as SGLang sends


# ------------------------------------------------------------------ the workload


@dataclass(slots=True)
class _Conversation:
    system: int  # index of its system prompt
    turns: list[list[int]]  # tokens per turn (whole pages)
    hashes: list[list[int]]  # page hashes per turn, chained from the system prompt


@dataclass(slots=True)
class _Corpus:
    page_size: int
    system_tokens: list[list[int]]
    system_hashes: list[list[int]]
    conversations: list[_Conversation]
    distinct_tokens: int


def _hashes(tokens: list[int], parent_hex: str | None, page: int) -> tuple[list[int], str]:
    """SGLang's chained page hashes of `tokens` after `parent_hex`, as published (int64)."""
    from sglang.srt.mem_cache.utils import get_hash_str, hash_str_to_int64

    hexes = get_hash_str(tokens, parent_hex, page_size=page)
    return [hash_str_to_int64(h) for h in hexes], hexes[-1]


def make_corpus(tree_tokens: int, page: int, system_prompts: int, seed: int) -> _Corpus:
    """System prompts and conversations until `tree_tokens` distinct tokens exist."""
    rng = np.random.default_rng(seed)

    def tokens(n: int) -> list[int]:
        return rng.integers(0, VOCAB, n).tolist()

    def pages(lo: int, hi: int) -> int:
        return max(page, int(rng.integers(lo, hi + 1)) // page * page)

    sys_tokens, sys_hashes, sys_last = [], [], []
    for _ in range(system_prompts):
        t = tokens(pages(512, 2048))
        h, last = _hashes(t, None, page)
        sys_tokens.append(t)
        sys_hashes.append(h)
        sys_last.append(last)
    distinct = sum(map(len, sys_tokens))
    conversations = []
    while distinct < tree_tokens:
        s = int(rng.integers(system_prompts))
        depth = int(rng.integers(2048, 12_288)) - len(sys_tokens[s])
        conv = _Conversation(s, [], [])
        parent, size = sys_last[s], 0
        while size < depth and distinct < tree_tokens:
            t = tokens(pages(64, 640))
            h, parent = _hashes(t, parent, page)
            conv.turns.append(t)
            conv.hashes.append(h)
            size += len(t)
            distinct += len(t)
        if conv.turns:
            conversations.append(conv)
    if not conversations:
        raise SystemExit(f"error: a tree of {tree_tokens:,} tokens holds only the system prompts; "
                         "raise --tree-tokens or lower --system-prompts")
    return _Corpus(page, sys_tokens, sys_hashes, conversations, distinct)


# Event tuples: ("S", worker, hashes, parent, tokens) / ("R", worker, hashes).
def make_events(corpus: _Corpus, workers: int, seed: int) -> tuple[list[tuple], list[tuple]]:
    """Store events in a conversation-major interleaving across workers, and the removal
    events that empty every worker again (leaves first, one event per radix node)."""
    rng = np.random.default_rng(seed + 1)
    stores: list[tuple] = []
    removes_by_worker: list[list[tuple]] = [[] for _ in range(workers)]
    has_system = [set() for _ in range(workers)]
    for conv in corpus.conversations:
        holders = [(int(rng.integers(workers)), len(conv.turns))]
        if workers > 1 and rng.random() < 0.25:
            other = (holders[0][0] + 1 + int(rng.integers(workers - 1))) % workers
            holders.append((other, int(rng.integers(1, len(conv.turns) + 1))))
        for w, depth in holders:
            s = conv.system
            if s not in has_system[w]:
                has_system[w].add(s)
                stores.append(("S", w, corpus.system_hashes[s], None, corpus.system_tokens[s]))
            parent = corpus.system_hashes[s][-1]
            for t, h in zip(conv.turns[:depth], conv.hashes[:depth]):
                stores.append(("S", w, h, parent, t))
                parent = h[-1]
            removes_by_worker[w].extend(("R", w, h) for h in reversed(conv.hashes[:depth]))
    removes = []
    for w in range(workers):
        removes.extend(removes_by_worker[w])
        removes.extend(("R", w, corpus.system_hashes[s]) for s in sorted(has_system[w]))
    return stores, removes


def per_page(events: list[tuple], page: int) -> list[tuple]:
    """The same changes delivered one page per event (how decode pages arrive)."""
    out = []
    for ev in events:
        if ev[0] == "S":
            _, w, hashes, parent, tokens = ev
            for j, h in enumerate(hashes):
                out.append(("S", w, [h], parent, tokens[j * page : (j + 1) * page]))
                parent = h
        else:  # deepest page first, the order in which a leaf's pages can go
            out.extend(("R", ev[1], [h]) for h in reversed(ev[2]))
    return out


def apply_events(tree: GlobalTree, events: list[tuple]) -> tuple[int, float, float]:
    """Apply events; returns (pages, wall seconds, CPU seconds of this thread)."""
    stored, removed = tree.apply_stored, tree.apply_removed
    pages = sum(len(ev[2]) for ev in events)
    t0, c0 = time.perf_counter(), time.thread_time()
    for ev in events:
        if ev[0] == "S":
            stored(ev[1], ev[2], ev[3], ev[4])
        else:
            removed(ev[1], ev[2])
    return pages, time.perf_counter() - t0, time.thread_time() - c0


def feed_payloads(events: list[tuple], workers: int, page: int, per_batch: int = 32) -> list[tuple]:
    """The events as SGLang's publisher sends them: msgpack `KVEventBatch`es of SGLang's
    own event classes, up to `per_batch` consecutive events of one worker per batch,
    numbered per worker. Returns (worker, seq, payload, pages) tuples."""
    import msgspec
    from sglang.srt.disaggregation.kv_events import BlockRemoved, BlockStored, KVEventBatch

    seqs, out, batch, owner = [0] * workers, [], [], None

    def flush():
        if batch:
            payload = msgspec.msgpack.encode(KVEventBatch(ts=0.0, events=list(batch)))
            pages = sum(len(ev.block_hashes) for ev in batch)
            out.append((owner, seqs[owner], payload, pages))
            seqs[owner] += 1
            batch.clear()

    for ev in events:
        if ev[1] != owner or len(batch) == per_batch:
            flush()
            owner = ev[1]
        if ev[0] == "S":
            batch.append(BlockStored(block_hashes=list(ev[2]), parent_block_hash=ev[3], token_ids=list(ev[4]),
                                     block_size=page, lora_id=None, medium="GPU"))
        else:
            batch.append(BlockRemoved(block_hashes=list(ev[2]), medium="GPU"))
    flush()
    return out


def apply_feed(tree: GlobalTree, payloads: list[tuple]) -> tuple[int, float, float]:
    """Decode and apply payloads as the live subscriber does (`EventApplier.on_live`)."""
    from sglang_ext.core.events import EventApplier

    applier = EventApplier(tree, replay_available=False)
    on_live = applier.on_live
    pages = sum(p[3] for p in payloads)
    t0, c0 = time.perf_counter(), time.thread_time()
    for worker, seq, payload, _ in payloads:
        on_live(worker, seq, payload, 0.0)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    assert applier.stats.malformed == 0 and applier.stats.gaps == 0
    return pages, wall, cpu


def _event_row(kind: str, shape: str, page: int, workers: int, tree_tokens: int, events: int,
               measured: tuple[int, float, float]) -> dict:
    pages, wall, cpu = measured
    return {"kind": kind, "shape": shape, "page_size": page, "workers": workers,
            "tree_tokens": tree_tokens, "events": events, "pages": pages, "wall_s": wall,
            "cpu_s": cpu, "pages_per_s": pages / max(wall, 1e-9),
            "pages_per_cpu_s": pages / max(cpu, 1e-9)}


def make_probes(corpus: _Corpus, prompt_tokens: int, n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed + prompt_tokens)
    out = []
    for _ in range(n):
        if rng.random() < 0.1:
            out.append(rng.integers(0, VOCAB, prompt_tokens).tolist())
            continue
        conv = corpus.conversations[int(rng.integers(len(corpus.conversations)))]
        path = list(corpus.system_tokens[conv.system])
        for t in conv.turns:
            if len(path) >= prompt_tokens:
                break
            path += t
        keep = int(rng.integers(0, min(len(path), prompt_tokens - 32) + 1))
        fresh = rng.integers(0, VOCAB, prompt_tokens - keep).tolist()
        # Fresh int objects, as a request decoded from the tokenizer brings: sharing the
        # corpus's objects would let every compare succeed on identity alone.
        out.append(np.array(path[:keep] + fresh, dtype=np.int64).tolist())
    return out


# ---------------------------------------------------------------- measurements


INPUTS = ("list", "array")


def as_input(probes: list[list[int]], kind: str) -> list:
    """Probes as `kind`: `list`, or `array` (array('q'), SGLang's type)."""
    if kind == "list":
        return probes
    if kind == "array":
        return [array("q", p) for p in probes]
    raise ValueError(f"unknown input {kind!r}; valid: {', '.join(INPUTS)}")


def decision_view(tree: GlobalTree, ledger: LoadLedger, input_ids, now_s: float,
                  page: int) -> ClusterView:
    """What a host does per request before its policy runs (as `Router.cached_tokens`:
    the prompt packed once, then matched on the packed bytes)."""
    cached = tree.match_packed(pack(input_ids))
    mask = tree.uncertain_mask
    if mask:
        for w in range(len(cached)):
            if mask >> w & 1:
                cached[w] = 0
    return ClusterView(now_s, cached, ledger.loads, page)


def time_decisions(tree: GlobalTree, ledger: LoadLedger, probes: list, count: int,
                   seed: int) -> dict[str, float]:
    """p50/p99/mean microseconds of `count` decisions over shuffled probes, by wall clock
    and by this thread's CPU clock (the CPU clock leaves out time the thread spent
    preempted, which dominates wall-clock tails on a shared 2-core host)."""
    order = np.random.default_rng(seed).integers(0, len(probes), count).tolist()
    page, wall, cpu = tree.page_size, time.perf_counter_ns, time.thread_time_ns
    walls, cpus = [], []
    for i in range(min(50, count)):  # warm up
        decision_view(tree, ledger, probes[order[i]], 0.0, page)
    for i, k in enumerate(order):
        ids = probes[k]
        w0, c0 = wall(), cpu()
        decision_view(tree, ledger, ids, i * 1e-3, page)
        c1, w1 = cpu(), wall()
        walls.append(w1 - w0)
        cpus.append(c1 - c0)
    out = {}
    for name, t in (("wall", walls), ("cpu", cpus)):
        out.update(prefixed(summarize_values(t, scale=1e-3), f"{name}_", "_us", keys=("p50", "p99", "mean")))
    return out


def bench_tree_size(cfg: MirrorBenchConfig, page: int, tree_tokens: int, workers_list, prompts,
                    probes_n: int, per_page_rates: bool, log) -> tuple[list[dict], list[dict]]:
    t0 = time.perf_counter()
    corpus = make_corpus(tree_tokens, page, cfg.system_prompts, cfg.seed)
    probe_sets = {(L, kind): as_input(make_probes(corpus, L, min(probes_n, 256), cfg.seed), kind)
                  for L in prompts for kind in cfg.inputs}
    log(f"  corpus page={page} {corpus.distinct_tokens:,} tokens, "
        f"{len(corpus.conversations):,} conversations ({time.perf_counter() - t0:.1f} s)")
    decisions, events = [], []
    for workers in workers_list:
        stores, removes = make_events(corpus, workers, cfg.seed)
        tree = GlobalTree(workers, page)
        ledger = LoadLedger(workers, 1 << 20)
        # The benchmark's own inputs (millions of lists) are frozen out of the cyclic GC,
        # as the live controller freezes its start-up heap: otherwise each full
        # collection would scan them, a cost the controller does not have.
        gc.collect()
        gc.freeze()
        measured = apply_events(tree, stores)
        held = sum(tree.tokens_held(w) for w in range(workers))
        events.append(_event_row("BlockStored", "per node", page, workers, tree_tokens, len(stores), measured))
        nodes = tree.num_nodes()
        for L in prompts:
            for kind in cfg.inputs:  # side by side, same tree, same probes
                runs = [time_decisions(tree, ledger, probe_sets[L, kind], probes_n, cfg.seed + r)
                        for r in range(cfg.repeats)]
                row = {"page_size": page, "workers": workers, "prompt_tokens": L, "input": kind,
                       "tree_tokens": tree_tokens, "distinct_tokens": corpus.distinct_tokens,
                       "held_tokens": held, "nodes": nodes, "decisions": probes_n, "repeats": cfg.repeats}
                row.update({k: statistics.median(r[k] for r in runs) for k in runs[0]})
                decisions.append(row)
                log(f"    workers={workers:<4d} prompt={L:<5d} {kind:>5s} CPU p50 {row['cpu_p50_us']:6.1f} "
                    f"p99 {row['cpu_p99_us']:6.1f} us | wall p50 {row['wall_p50_us']:6.1f} "
                    f"p99 {row['wall_p99_us']:7.1f} us")
        measured = apply_events(tree, removes)
        assert tree.num_nodes() == 0, "removal events must empty the mirror"
        events.append(_event_row("BlockRemoved", "per node", page, workers, tree_tokens, len(removes), measured))
        log(f"    workers={workers:<4d} stored {events[-2]['pages_per_cpu_s']:,.0f} pages/CPU-s, "
            f"removed {events[-1]['pages_per_cpu_s']:,.0f} pages/CPU-s ({nodes:,} nodes)")
        if per_page_rates and workers == workers_list[-1]:
            tree = GlobalTree(workers, page)
            for kind, evs in (("BlockStored", per_page(stores, page)),
                              ("BlockRemoved", per_page(removes, page))):
                events.append(_event_row(kind, "1 page/event", page, workers, tree_tokens, len(evs),
                                         apply_events(tree, evs)))
            log(f"    workers={workers:<4d} 1 page/event: stored {events[-2]['pages_per_cpu_s']:,.0f} "
                f"pages/CPU-s, removed {events[-1]['pages_per_cpu_s']:,.0f}")
            # The whole live path: msgpack batches of SGLang's event classes, decoded and
            # applied by the subscriber's core. SGLang coalesces consecutive stores (and
            # removals) into one event, so "per node" is the shape on the wire.
            for shape, st, rm in (("per node", stores, removes),
                                  ("1 page/event", per_page(stores, page), per_page(removes, page))):
                tree = GlobalTree(workers, page)
                for kind, evs in (("feed:Stored", st), ("feed:Removed", rm)):
                    payloads = feed_payloads(evs, workers, page)
                    events.append(_event_row(kind, shape, page, workers, tree_tokens, len(evs),
                                             apply_feed(tree, payloads)))
                log(f"    workers={workers:<4d} feed (decode + apply), {shape}: stored "
                    f"{events[-2]['pages_per_cpu_s']:,.0f} pages/CPU-s, removed {events[-1]['pages_per_cpu_s']:,.0f}")
        del tree, stores, removes
        gc.unfreeze()
    return decisions, events


def measure_memory(cfg: MirrorBenchConfig, page: int, tree_tokens: int, workers: int) -> dict:
    """Bytes the mirror keeps per cached token (token ints included: the events that
    carried them are made inside the traced region and dropped, as in the live feed)."""
    gc.collect()
    tracemalloc.start()
    corpus = make_corpus(tree_tokens, page, cfg.system_prompts, cfg.seed)
    stores, _ = make_events(corpus, workers, cfg.seed)
    tree = GlobalTree(workers, page)
    apply_events(tree, stores)
    distinct = corpus.distinct_tokens
    held = sum(tree.tokens_held(w) for w in range(workers))
    del corpus, stores
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"page_size": page, "workers": workers, "distinct_tokens": distinct, "held_tokens": held,
            "nodes": tree.num_nodes(), "bytes": current, "bytes_per_distinct_token": current / distinct,
            "bytes_per_held_token": current / held}


# -------------------------------------------------------------------- reporting


def format_table(decisions: list[dict], events: list[dict], memory: list[dict]) -> str:
    lines = ["decision path (match + view), microseconds: CPU p50 / CPU p99 / wall p99",
             "target p99 <= 100 us at 128 workers with 8K prompts, flat in tree size"]
    pages = sorted({r["page_size"] for r in decisions}, reverse=True)
    for page in pages:
        rows = [r for r in decisions if r["page_size"] == page]
        prompts = sorted({r["prompt_tokens"] for r in rows})
        kinds = [k for k in INPUTS if any(r.get("input", "list") == k for r in rows)]
        header = f"{'page':>4s} {'tree tokens':>12s} {'workers':>7s} {'input':>5s} | " + " | ".join(
            f"{str(L) + '-token prompt':>22s}" for L in prompts)
        lines += [header, "-" * len(header)]
        for size in sorted({r["tree_tokens"] for r in rows}):
            for w in sorted({r["workers"] for r in rows}):
                for kind in kinds:
                    cells = []
                    for L in prompts:
                        r = next((x for x in rows if x["tree_tokens"] == size and x["workers"] == w
                                  and x["prompt_tokens"] == L and x.get("input", "list") == kind), None)
                        cells.append("" if r is None else
                                     f"{r['cpu_p50_us']:5.1f} /{r['cpu_p99_us']:6.1f} /{r['wall_p99_us']:7.1f}")
                    lines.append(f"{page:>4d} {size:>12,d} {w:>7d} {kind:>5s} | "
                                 + " | ".join(f"{c:>22s}" for c in cells))
        lines.append("")
    lines.append(f"event application (target >= {TARGET_PAGES_PER_S:,.0f} pages/s)")
    header = (f"{'kind':>12s} {'shape':>12s} {'page':>4s} {'tree tokens':>12s} {'workers':>7s} | "
              f"{'pages/CPU-s':>12s} {'pages/wall-s':>12s}")
    lines += [header, "-" * len(header)]
    for e in events:
        lines.append(f"{e['kind']:>12s} {e['shape']:>12s} {e['page_size']:>4d} {e['tree_tokens']:>12,d} "
                     f"{e['workers']:>7d} | {e['pages_per_cpu_s']:>12,.0f} {e['pages_per_s']:>12,.0f}")
    lines.append("")
    lines.append("memory (tracemalloc, after the events are dropped)")
    for m in memory:
        lines.append(f"  page {m['page_size']:>2d}, {m['distinct_tokens']:,} distinct / {m['held_tokens']:,} "
                     f"held tokens, {m['nodes']:,} nodes: {m['bytes'] / 2**20:.1f} MiB = "
                     f"{m['bytes_per_distinct_token']:.1f} B per distinct token, "
                     f"{m['bytes_per_held_token']:.1f} B per held token")
    return "\n".join(lines)


def plot(decisions: list[dict], events: list[dict], path: str) -> None:
    """Left: decision CPU p99 against tree size for the longest prompt, one line per
    worker count and page size. Right: event pages per CPU-second at the largest worker
    count, by kind and shape. Both with their targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    # What the controller pays: SGLang's array('q') prompts when they were measured.
    kind = "array" if any(r.get("input") == "array" for r in decisions) else "list"
    decisions = [r for r in decisions if r.get("input", "list") == kind]
    longest = max(r["prompt_tokens"] for r in decisions)
    for page in sorted({r["page_size"] for r in decisions}, reverse=True):
        for workers in sorted({r["workers"] for r in decisions}):
            rows = sorted((r for r in decisions if r["page_size"] == page and r["workers"] == workers
                           and r["prompt_tokens"] == longest), key=lambda r: r["tree_tokens"])
            if rows:
                left.plot([r["tree_tokens"] for r in rows], [r["cpu_p99_us"] for r in rows], marker="o",
                          linestyle="-" if page > 1 else "--", label=f"{workers} workers, page {page}")
    left.axhline(TARGET_P99_US, color="red", linewidth=1, label="target")
    left.set_ylim(bottom=0)
    left.set(xscale="log", xlabel="cached tokens in the mirror", ylabel="CPU p99, us",
             title=f"decision path (match + view), {longest}-token prompts as {kind}")
    left.legend(fontsize=7)
    top = max(e["workers"] for e in events)
    rows = [e for e in events if e["workers"] == top and e["tree_tokens"] == min(x["tree_tokens"] for x in events)]
    labels = [f"{e['kind']}\n{e['shape']}, page {e['page_size']}" for e in rows]
    right.barh(range(len(rows)), [e["pages_per_cpu_s"] / 1e6 for e in rows], color="tab:blue")
    right.set_yticks(range(len(rows)), labels, fontsize=7)
    right.axvline(TARGET_PAGES_PER_S / 1e6, color="red", linewidth=1, label="target")
    right.set(xlabel="million pages per CPU-second",
              title=f"event application, {top} workers (feed: decode + apply)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(decisions: list[dict], events: list[dict]) -> list[str]:
    out = []
    top = [r for r in decisions if r["workers"] == max(x["workers"] for x in decisions)
           and r["prompt_tokens"] == max(x["prompt_tokens"] for x in decisions)]
    for r in top:
        for clock in ("cpu", "wall"):
            p99 = r[f"{clock}_p99_us"]
            out.append(f"{'MET ' if p99 <= TARGET_P99_US else 'MISS'} {clock} p99 {p99:.1f} us <= "
                       f"{TARGET_P99_US:.0f} us ({r.get('input', 'list')} input, page {r['page_size']}, "
                       f"{r['workers']} workers, "
                       f"{r['prompt_tokens']}-token prompt, {r['tree_tokens']:,} tree tokens)")
    for e in events:
        rate = e["pages_per_cpu_s"]
        out.append(f"{'MET ' if rate >= TARGET_PAGES_PER_S else 'MISS'} {e['kind']} {e['shape']} "
                   f"{rate:,.0f} pages/CPU-s (page {e['page_size']}, {e['workers']} workers, "
                   f"{e['tree_tokens']:,} tree tokens)")
    return out


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(float(x)) for x in text.split(",") if x)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = MirrorBenchConfig()
    parser.epilog = ("examples:\n  python -m sglang_ext.bench mirror\n"
                     "  python -m sglang_ext.bench mirror --quick\n"
                     "  python -m sglang_ext.bench mirror --max-tree-tokens 1e6 --workers 8,128 --repeats 5")
    parser.add_argument("--workers", type=_ints, default=d.workers, help="worker counts (2,8,32,128)")
    parser.add_argument("--prompt-tokens", type=_ints, default=d.prompt_tokens,
                        help="prompt lengths, tokens (512,2048,8192)")
    parser.add_argument("--tree-tokens", type=_ints, default=d.tree_tokens,
                        help="tree sizes in distinct cached tokens, page size --page-size (1e5,1e6,1e7)")
    parser.add_argument("--page-size", type=int, default=d.page_size, help="page size of the main runs (16)")
    parser.add_argument("--page1-tree-tokens", type=_ints, default=d.page1_tree_tokens,
                        help="tree sizes run at page size 1; empty to skip (1e5,1e6)")
    parser.add_argument("--max-tree-tokens", type=lambda s: int(float(s)), default=None,
                        help="drop every tree size above this (e.g. 1e6)")
    parser.add_argument("--probes", type=int, default=d.probes, help="timed decisions per point and pass (2000)")
    parser.add_argument("--repeats", type=int, default=d.repeats,
                        help="timing passes per point; medians reported (3)")
    parser.add_argument("--system-prompts", type=int, default=d.system_prompts, help="shared system prompts (32)")
    parser.add_argument("--memory-tree-tokens", type=lambda s: int(float(s)), default=d.memory_tree_tokens,
                        help="tree size of the tracemalloc measurement; 0 skips it (1e6)")
    parser.add_argument("--quick", action="store_true",
                        help="a small run (~1 min): workers 2,128, trees up to 1e6, 1 pass")
    parser.add_argument("--seed", type=int, default=d.seed, help="workload seed (0)")
    parser.add_argument("--inputs", type=lambda s: tuple(x for x in s.split(",") if x), default=d.inputs,
                        help="prompt types timed side by side: list, array (array('q'), what SGLang "
                             "sends) (default: list,array)")
    parser.add_argument("--out", default="runs/bench_mirror.json", help="JSON output (runs/bench_mirror.json)")


def run(args: argparse.Namespace) -> int:
    fields = {k: getattr(args, k) for k in MirrorBenchConfig.__dataclass_fields__}
    if args.quick:
        fields.update(workers=(2, 128), tree_tokens=(100_000, 1_000_000), page1_tree_tokens=(100_000,),
                      probes=1000, repeats=1, memory_tree_tokens=min(args.memory_tree_tokens, 300_000))
    cap = args.max_tree_tokens
    if cap is not None:
        for key in ("tree_tokens", "page1_tree_tokens"):
            fields[key] = tuple(t for t in fields[key] if t <= cap)
        fields["memory_tree_tokens"] = min(fields["memory_tree_tokens"], cap)
    cfg = MirrorBenchConfig(**fields)
    if (not cfg.workers or min(cfg.workers) < 1 or not cfg.prompt_tokens or min(cfg.prompt_tokens) < 64
            or cfg.page_size < 1 or cfg.probes < 1 or cfg.repeats < 1 or cfg.system_prompts < 1
            or not (cfg.tree_tokens or cfg.page1_tree_tokens)
            or not cfg.inputs or any(k not in INPUTS for k in cfg.inputs)):
        print("error: --workers, --probes, --repeats, --system-prompts, --page-size must be positive, "
              "prompts >= 64 tokens, at least one tree size must remain, and --inputs takes list,array",
              file=sys.stderr)
        return 2
    print(f"bench mirror: workers {list(cfg.workers)}, prompts {list(cfg.prompt_tokens)}, "
          f"trees {list(cfg.tree_tokens)} (page {cfg.page_size}) + {list(cfg.page1_tree_tokens)} (page 1)")
    started = time.perf_counter()
    decisions, events, memory = [], [], []
    plan = [(cfg.page_size, t) for t in cfg.tree_tokens] + [(1, t) for t in cfg.page1_tree_tokens]
    for i, (page, size) in enumerate(plan):
        d, e = bench_tree_size(cfg, page, size, cfg.workers, cfg.prompt_tokens, cfg.probes,
                               per_page_rates=(i == 0 or page != plan[i - 1][0]), log=print)
        decisions += d
        events += e
    if cfg.memory_tree_tokens:
        for page in sorted({p for p, _ in plan}, reverse=True):
            size = cfg.memory_tree_tokens if page > 1 else min(cfg.memory_tree_tokens, 300_000)
            memory.append(measure_memory(cfg, page, size, workers=8))
            print(f"  memory page {page}: {memory[-1]['bytes_per_distinct_token']:.1f} B per distinct token")
    table = format_table(decisions, events, memory)
    checks = verdict(decisions, events)
    print()
    print(table)
    print()
    print("\n".join(checks))
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"run {time.perf_counter() - started:.0f} s, peak RSS {peak_rss_mib:,.0f} MiB")
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    payload = {
        "config": asdict(cfg),
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "platform": platform.platform()},
        "decisions": decisions, "events": events, "memory": memory,
        "checks": checks, "peak_rss_mib": peak_rss_mib, "run_s": time.perf_counter() - started,
        "table": table,
    }
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"saved {args.out}")
    png = os.path.splitext(args.out)[0] + ".png"
    try:
        plot(decisions, events, png)
        print(f"saved {png}")
    except ImportError:
        print("matplotlib is not installed: no plot")
    return 0
