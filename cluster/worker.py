"""A simulated SGLang 0.5.23 worker (one data-parallel rank): its batch rules, its radix
cache (SGLang's own tree, `cluster/radix.py`) and its KV events, on a simulated clock.

Batch rules, each from the SGLang file named (paths under the installed `sglang/srt/`):
- One step is a prefill (extend) batch or one decode step, never mixed
  (`enable_mixed_chunk=False`), and a prefill batch runs whenever one can be formed
  (`managers/scheduler.py`, `get_next_batch_to_run`: "Run prefill first if possible").
- The waiting queue is FCFS (`--schedule-policy fcfs`); `lpm` sorts it by longest cached
  prefix, stably, and falls back to FCFS above 128 waiting (`managers/schedule_policy.py`,
  `WAITING_QUEUE_PREFIX_MATCH_MAX`; its in-batch prefix deprioritisation is not
  modelled). A pass admits requests in order and stops at the first that does not fit
  (`scheduler.py`, `_get_new_batch_prefill_raw`; budgets in `cluster/admission.py`).
- One chunked request at a time; it continues first on the next step; between chunks
  its computed prefix is inserted into the tree and locked (`scheduler.py`,
  `stash_chunked_request` -> `checkpoint_kv_cache`).
- A matched prefix is at most the fill length - 1 (`managers/schedule_batch.py`,
  `_compute_max_prefix_len`) and is locked from admission until the request leaves.
- Running-request rows: at most `max_running_requests`, default
  min(clamp(KV tokens / context length x 512, 2048, 4096), KV tokens / 2)
  (`mem_cache/kv_cache_configurator.py`, `resolve_max_num_reqs`). A refused pass marks
  the batch full; no prefill is tried again until a request leaves (`batch_is_full`).
- `new_token_ratio` starts at 0.7, falls by (0.7 - 0.7 x 0.14) / 600 per decode step to
  0.098 and resets when the worker idles (`managers/scheduler_components/
  new_token_ratio_tracker.py`, `environ.py`); after a retraction it becomes
  min(1, (generated + 20 x requests) / (sum of max_new + 1)) over those left.
- A decode step needs a new page for each request whose KV length is a multiple of the
  page size (`schedule_batch.py`, `new_tokens_required_next_decode`); the shortfall is
  evicted first; if it still does not fit, requests are retracted, fewest generated
  tokens first, then longest prompt, at least one, never the last
  (`retract_decode`, `_get_decode_retraction_order`): their KV is freed without
  entering the tree and they rejoin the queue's tail, to prefill prompt + output again.
- When a request's prefill completes and it goes on to decode, its computed KV (the
  prompt) is inserted into the tree page-aligned down and its lock moved there
  (`managers/scheduler_components/batch_result_processor.py`, `checkpoint_kv_cache`).
  At finish, prompt + output (the KV actually computed: every token but the last) is
  inserted page-aligned down and the prefix unlocked (`mem_cache/unified_radix_cache.py`,
  `checkpoint_into_tree`); allocation evicts lazily, only the shortfall.
- KV events are published at the end of each prefill batch, every `decode_log_interval`
  decode steps, and when the worker goes idle (`scheduler_components/metrics_reporter.py`,
  `scheduler.py` `on_idle`).

Not modelled: the overlap scheduler (SGLang processes a step's results one step late;
here they are visible at the step's end), priorities, LoRA, HiCache, speculative decoding.
A retracted request's second prefill is not reported in `prefill_done` (its first token
was already out).

Speed: a decode step touches no per-request state. Each running request's generated
count is `decode_steps - offset`, so totals (context tokens, output reservations, pages
needed next step by page phase) are kept as sums, and finishes come off a heap keyed by
the decode step at which each request stops.
"""

from __future__ import annotations

import heapq
from array import array
from dataclasses import dataclass, field

import numpy as np

from cluster.admission import CLIP_MAX_NEW_TOKENS, AddResult, PrefillBudget
from cluster.radix import SimRadixCache
from sglang_ext.core.cost_model import CostModel
from sglang_ext.core.load_check import ReportedLoad

# `managers/scheduler_components/new_token_ratio_tracker.py` with `environ.py` defaults:
# SGLANG_INIT_NEW_TOKEN_RATIO 0.7, SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR 0.14,
# SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS 600, SGLANG_RETRACT_DECODE_STEPS 20.
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = INIT_NEW_TOKEN_RATIO * 0.14
NEW_TOKEN_RATIO_DECAY = (INIT_NEW_TOKEN_RATIO - MIN_NEW_TOKEN_RATIO) / 600
RETRACT_DECODE_STEPS = 20
LPM_MAX_WAITING = 128  # `schedule_policy.py` WAITING_QUEUE_PREFIX_MATCH_MAX
OUTPUT_VOCAB = 32000   # pseudo output token ids are drawn from [0, OUTPUT_VOCAB)


@dataclass(frozen=True)
class WorkerConfig:
    kv_capacity_tokens: int
    page_size: int = 16
    chunked_prefill_size: int = 8192
    max_prefill_tokens: int = 16384
    max_running_requests: int | None = None   # None: SGLang's rule from KV tokens and context length
    schedule_policy: str = "fcfs"             # "fcfs" | "lpm"
    decode_log_interval: int = 40             # decode steps between event publications
    context_length: int = 32768

    def __post_init__(self):
        for name in ("kv_capacity_tokens", "page_size", "chunked_prefill_size", "max_prefill_tokens",
                     "decode_log_interval", "context_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"WorkerConfig.{name} must be a positive integer, got {value!r}")
        if self.max_running_requests is not None and self.max_running_requests < 1:
            raise ValueError(f"WorkerConfig.max_running_requests must be >= 1, got {self.max_running_requests}")
        if self.schedule_policy not in ("fcfs", "lpm"):
            raise ValueError(f"WorkerConfig.schedule_policy must be 'fcfs' or 'lpm', got {self.schedule_policy!r}")

    def resolved_max_running_requests(self) -> int:
        if self.max_running_requests is not None:
            return min(self.max_running_requests, self.kv_capacity_tokens // 2) or 1
        estimated = max(min(int(self.kv_capacity_tokens / self.context_length * 512), 4096), 2048)
        return max(1, min(estimated, self.kv_capacity_tokens // 2))


@dataclass
class SimRequest:
    rid: str
    input_ids: array                 # array('q') prompt token ids
    max_new_tokens: int
    output_tokens: int               # true output length (1..max_new_tokens): generation stops there
    ignore_eos: bool = False
    output_seed: int = 0             # seeds the pseudo output token ids (inserted into the tree at finish)


@dataclass
class StepResult:
    kind: str                        # "prefill" | "decode" | "idle"
    duration_s: float
    prefill_done: list[tuple[str, int]] = field(default_factory=list)
    finished: list[tuple[str, int]] = field(default_factory=list)
    event_payloads: list[tuple[int, bytes]] = field(default_factory=list)
    retracted: list[str] = field(default_factory=list)
    batch_requests: int = 0
    prefill_tokens: int = 0


def output_token_ids(output_seed: int, count: int) -> array:
    """The pseudo output token ids of a request: a function of its seed alone, so the
    same request produces the same output on whichever worker serves it.

    SplitMix64 of (seed, position), vectorised: building a seeded numpy Generator per
    finish cost ~100 us, this ~5 us."""
    z = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z += np.uint64(output_seed & 0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return array("q", (z % np.uint64(OUTPUT_VOCAB)).astype(np.int64).tobytes())


class _Req:
    __slots__ = ("rid", "prompt", "prompt_len", "max_new", "target", "ignore_eos", "output_seed", "order",
                 "gen", "fill", "prefix", "lock", "done", "owned", "offset", "epoch", "first_cached",
                 "prefilled_once")

    def __init__(self, request: SimRequest, order: int):
        self.rid = request.rid
        self.prompt = request.input_ids
        self.prompt_len = len(request.input_ids)
        self.max_new = request.max_new_tokens
        self.target = request.output_tokens
        self.ignore_eos = request.ignore_eos
        self.output_seed = request.output_seed
        self.order = order
        self.gen = 0           # output tokens generated (while running: decode_steps - offset)
        self.fill = request.input_ids  # what a prefill must cover: prompt (+ output after a retraction)
        self.prefix = 0        # tokens locked in the tree (page-aligned)
        self.lock = None
        self.done = 0          # tokens of `fill` whose KV is computed
        self.owned = 0         # KV slots owned beyond `prefix`
        self.offset = 0
        self.epoch = 0         # bumped on retraction: stale finish-heap entries are skipped
        self.first_cached = 0
        self.prefilled_once = False

    def reserved_output(self) -> int:
        return min(max(self.max_new - self.gen, 0), CLIP_MAX_NEW_TOKENS)


class SimWorker:
    """One simulated rank. `step(now_s)` forms and runs one batch starting at `now_s`;
    its effects are visible at `now_s + duration_s` (the host advances its clock so).

    `seed` is kept for rules that draw random numbers; none of the implemented ones
    does (FCFS and LPM are deterministic; output ids come from each request's seed)."""

    def __init__(self, rank: int, config: WorkerConfig, cost_model: CostModel, seed: int):
        self.rank = rank
        self.config = config
        self.cost_model = cost_model
        self.seed = seed
        self.page = config.page_size
        self.max_running = config.resolved_max_running_requests()
        self.radix = SimRadixCache(rank, config.page_size, config.kv_capacity_tokens)
        self.waiting: list[_Req] = []
        self.running: dict[str, _Req] = {}
        self.chunked: _Req | None = None
        self._stash_pending = False      # the chunked request's progress is checkpointed next step
        self.batch_is_full = False
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO
        self.decode_steps = 0            # decode steps run (the running requests' shared clock)
        self.forward_ct_decode = 0
        self._event_seq = 0
        self._order = 0
        self._live: set[str] = set()  # rids submitted and not finished
        # Aggregates over running requests (gen = decode_steps - offset for each).
        self._finish_heap: list[tuple[int, int, int, _Req]] = []
        self._phase = [0] * self.page    # requests by (prompt_len - offset - 1) mod page
        self._ctx_base = 0               # sum of (prompt_len - offset - 1): context = this + n x steps
        self._res_sum = [0, 0]           # per class (0: ratio-weighted, 1: ignore_eos): sum(max_new + offset)
        self._res_count = [0, 0]
        self._big: set[_Req] = set()     # running requests with max_new > the 4096 clip: summed exactly

    # ------------------------------------------------------------------ host interface

    def submit(self, request: SimRequest, now_s: float) -> None:
        """A request joins the waiting queue's tail."""
        n = len(request.input_ids)
        if n < 1:
            raise ValueError(f"request {request.rid!r}: empty prompt")
        if not 1 <= request.output_tokens <= request.max_new_tokens:
            raise ValueError(f"request {request.rid!r}: output_tokens {request.output_tokens} must be in "
                             f"1..max_new_tokens ({request.max_new_tokens})")
        if n + request.output_tokens > self.config.context_length:
            raise ValueError(f"request {request.rid!r}: {n} prompt + {request.output_tokens} output tokens exceed "
                             f"the context length {self.config.context_length}")
        if n + min(request.max_new_tokens, CLIP_MAX_NEW_TOKENS) + self.page >= self.config.kv_capacity_tokens:
            raise ValueError(f"request {request.rid!r}: {n} prompt tokens + its output reservation cannot fit "
                             f"in {self.config.kv_capacity_tokens} KV tokens even on an idle worker")
        if n + request.output_tokens + self.page > self.config.kv_capacity_tokens:
            raise ValueError(f"request {request.rid!r}: {n} prompt + {request.output_tokens} output tokens cannot "
                             f"fit in {self.config.kv_capacity_tokens} KV tokens")
        if request.rid in self._live:
            raise ValueError(f"request {request.rid!r} is already on worker {self.rank}")
        self._live.add(request.rid)
        self.waiting.append(_Req(request, self._order))
        self._order += 1

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.chunked is not None)

    def load_report(self, worker: int, at_s: float) -> ReportedLoad:
        running = len(self.running) + (self.chunked is not None)
        return ReportedLoad(worker=worker, at_s=at_s, running_requests=running,
                            waiting_requests=len(self.waiting), kv_tokens_used=self.kv_tokens_in_use(),
                            kv_capacity_tokens=self.config.kv_capacity_tokens)

    def kv_tokens_in_use(self) -> int:
        """Locked tree tokens + slots owned by requests: SGLang's `num_used`, capacity
        less free and evictable. O(1); `owned_slots` counts the same from the requests
        (the tests check that the pool's books balance)."""
        radix = self.radix
        return radix.pool.capacity - radix.pool.free - radix.evictable_size()

    def owned_slots(self) -> int:
        """KV slots requests own beyond their locked prefixes, counted per request,
        O(running): a running request owns ceil_page(its KV length) - prefix, a chunked
        one what its chunks allocated."""
        page, d = self.page, self.decode_steps
        owned = sum(-(-(r.prompt_len + d - r.offset - 1) // page) * page - r.prefix for r in self.running.values())
        return owned + (self.chunked.owned if self.chunked is not None else 0)

    def step(self, now_s: float) -> StepResult:
        if self._stash_pending:
            self._stash_chunked()
        result = self._prefill_step()
        if result is None:
            result = self._decode_step() if self.running else StepResult("idle", 0.0)
        end_s = now_s + result.duration_s
        if result.kind == "prefill" or not self.has_work() or (
                result.kind == "decode" and self.forward_ct_decode % self.config.decode_log_interval == 0):
            self._publish(result, end_s)
        if not self.has_work():
            self.new_token_ratio = INIT_NEW_TOKEN_RATIO  # `scheduler.py` on_idle
        return result

    # ------------------------------------------------------------------ prefill

    def _running_reservation(self) -> float:
        d = self.decode_steps
        normal = self._res_sum[0] - self._res_count[0] * d
        eos = self._res_sum[1] - self._res_count[1] * d
        for r in self._big:  # remove the unclipped figure, add the clipped one
            gen = d - r.offset
            exact, clipped = r.max_new - gen, min(max(r.max_new - gen, 0), CLIP_MAX_NEW_TOKENS)
            if r.ignore_eos:
                eos += clipped - exact
            else:
                normal += clipped - exact
        return normal * self.new_token_ratio + eos

    def _prefill_step(self) -> StepResult | None:
        if not self.running and self.chunked is None:
            self.batch_is_full = False  # an empty batch cannot stay full (`_get_new_batch_prefill_raw`)
        if (self.batch_is_full or not self.waiting) and self.chunked is None:
            return None
        rows_free = self.max_running - len(self.running) - (self.chunked is not None)
        if rows_free <= 0 and self.chunked is None:
            self.batch_is_full = True
            return None
        radix = self.radix
        pool = radix.pool
        budget = PrefillBudget(self.page, lambda: pool.free + radix.evictable_size(), self._running_reservation(),
                               self.config.max_prefill_tokens, self.config.chunked_prefill_size)
        batch: list[tuple[_Req, int]] = []   # (request, tokens prefilled this step)
        new_chunked: _Req | None = None
        chunked = self.chunked
        if chunked is not None:
            extend = budget.plan_continuation(len(chunked.fill) - chunked.done)
            truncated = chunked.done + extend < len(chunked.fill)
            budget.reserve(extend, 0 if truncated else chunked.reserved_output())
            batch.append((chunked, extend))
            if truncated:
                new_chunked = chunked
        self._sort_waiting()
        admitted = 0
        for req in self.waiting:
            if budget.state() is AddResult.OTHER:
                break
            if admitted >= rows_free:
                self.batch_is_full = True
                break
            match = radix.match(req.fill, len(req.fill) - 1)
            extend = len(req.fill) - match.cached_tokens
            lock = radix.lock(match.node)  # the check sees this prefix as unevictable
            if not budget.fits(extend, req.reserved_output()):
                radix.unlock(lock)
                self.batch_is_full = bool(batch) or bool(self.running)
                break
            plan = budget.plan_new(match.cached_tokens, extend)
            if plan is None:
                radix.unlock(lock)
                break
            tokens, is_chunk = plan
            if is_chunk and new_chunked is not None:
                radix.unlock(lock)  # one chunked request at a time (`scheduler.py` asserts it)
                break
            req.prefix, req.lock, req.done, req.owned = match.cached_tokens, lock, match.cached_tokens, 0
            if not req.prefilled_once:
                req.first_cached = match.cached_tokens
            budget.reserve(tokens, 0 if is_chunk else req.reserved_output())
            batch.append((req, tokens))
            admitted += 1
            if is_chunk:
                new_chunked = req
            if budget.state() is not AddResult.CONTINUE:
                break
        if not batch:
            return None
        # The pass admits a prefix of the (sorted) queue: it stops at the first refusal.
        del self.waiting[:admitted]
        self.chunked = new_chunked
        return self._run_prefill(batch)

    def _sort_waiting(self) -> None:
        if self.config.schedule_policy != "lpm" or len(self.waiting) > LPM_MAX_WAITING:
            return
        radix = self.radix
        cached = {id(r): radix.match(r.fill).cached_tokens for r in self.waiting}
        self.waiting.sort(key=lambda r: -cached[id(r)])

    def _run_prefill(self, batch: list[tuple[_Req, int]]) -> StepResult:
        radix, page = self.radix, self.page
        result = StepResult("prefill", 0.0, batch_requests=len(batch))
        computed = context = 0
        for req, tokens in batch:
            end = req.done + tokens
            need = -(-end // page) * page - req.prefix - req.owned  # `alloc_extend`: pages for [done, end)
            if need > 0 and not radix.alloc(need):
                raise AssertionError(f"worker {self.rank}: the budget admitted {req.rid!r} but its KV does not fit")
            req.owned += max(need, 0)
            req.done = end
            computed += tokens
            context += end
        result.prefill_tokens = computed
        result.duration_s = self.cost_model.step_time_s(computed, 0, context)
        for req, _ in batch:
            if req is self.chunked:
                self._stash_pending = True
                continue
            req.gen += 1  # the prefill's logits give the next output token
            if not req.prefilled_once:
                req.prefilled_once = True
                result.prefill_done.append((req.rid, req.first_cached))
            if req.gen >= req.target:
                self._finish(req, result)
            else:
                # `batch_result_processor.py` `process_batch_result_prefill`: a request that
                # goes on to decode publishes its prompt's KV to the tree at once
                # (`checkpoint_kv_cache`), so followers can share it while it decodes.
                self._checkpoint(req)
                self._start_decode(req)
        return result

    def _stash_chunked(self) -> None:
        """Before the chunked request's next chunk, its computed KV enters the tree
        (`scheduler.py` `get_next_batch_to_run` -> `stash_chunked_request`)."""
        self._stash_pending = False
        if self.chunked is not None:
            self._checkpoint(self.chunked)

    def _checkpoint(self, req: _Req) -> None:
        """Insert the request's computed KV, page-aligned down, and move its lock to
        the node the insert ended on (`mem_cache/common.py` `checkpoint_kv_cache`,
        `unified_radix_cache.py` `checkpoint_into_tree`)."""
        radix = self.radix
        inserted, node = radix.insert_partial(req.fill, req.done, req.prefix)
        if node is None:
            return
        moved = inserted - req.prefix
        old = req.lock
        req.lock = radix.lock(node)
        radix.unlock(old)
        req.owned -= moved
        req.prefix = inserted

    # ------------------------------------------------------------------ decode

    def _start_decode(self, req: _Req) -> None:
        d = self.decode_steps
        req.offset = d - req.gen
        heapq.heappush(self._finish_heap, (req.target + req.offset, req.order, req.epoch, req))
        self.running[req.rid] = req
        self._phase[(req.prompt_len - req.offset - 1) % self.page] += 1
        self._ctx_base += req.prompt_len - req.offset - 1
        cls = 1 if req.ignore_eos else 0
        self._res_sum[cls] += req.max_new + req.offset
        self._res_count[cls] += 1
        if req.max_new > CLIP_MAX_NEW_TOKENS:
            self._big.add(req)

    def _stop_decode(self, req: _Req) -> None:
        """Take a running request out of the aggregates, fixing its generated count."""
        req.gen = self.decode_steps - req.offset
        del self.running[req.rid]
        self._phase[(req.prompt_len - req.offset - 1) % self.page] -= 1
        self._ctx_base -= req.prompt_len - req.offset - 1
        cls = 1 if req.ignore_eos else 0
        self._res_sum[cls] -= req.max_new + req.offset
        self._res_count[cls] -= 1
        self._big.discard(req)
        req.epoch += 1
        self.batch_is_full = False  # a request left the batch

    def _pages_needed_next(self) -> int:
        return self._phase[(-self.decode_steps) % self.page] * self.page

    def _decode_step(self) -> StepResult:
        radix = self.radix
        result = StepResult("decode", 0.0)
        need = self._pages_needed_next()
        if not radix.ensure_free(need):
            self._retract(result)
            need = self._pages_needed_next()
            radix.ensure_free(need)
        else:
            self.new_token_ratio = max(self.new_token_ratio - NEW_TOKEN_RATIO_DECAY, MIN_NEW_TOKEN_RATIO)
        if not radix.pool.try_alloc(need):
            raise AssertionError(f"worker {self.rank}: decode needs {need} KV slots, {radix.pool.free} free "
                                 f"after retraction")
        n = len(self.running)
        self.decode_steps += 1
        self.forward_ct_decode += 1
        d = self.decode_steps
        # The step reads every running request's KV, including the token it feeds.
        result.duration_s = self.cost_model.step_time_s(0, n, self._ctx_base + n * d)
        result.batch_requests = n
        heap = self._finish_heap
        # Owned slots are settled lazily: a running request owns ceil_page(kv) - prefix.
        while heap and heap[0][0] <= d:
            _, _, epoch, req = heapq.heappop(heap)
            if epoch != req.epoch:
                continue
            self._stop_decode(req)
            self._settle_owned(req)
            self._finish(req, result)
        return result

    def _settle_owned(self, req: _Req) -> None:
        kv = req.prompt_len + req.gen - 1
        req.done = kv
        req.owned = -(-kv // self.page) * self.page - req.prefix

    def _retract(self, result: StepResult) -> None:
        """`schedule_batch.py` `retract_decode`: keep the most generated (then shortest
        prompt); retract from the other end until the next step fits, at least one,
        never the last."""
        radix = self.radix
        order = sorted(self.running.values(), key=lambda r: (self.decode_steps - r.offset, -r.prompt_len),
                       reverse=True)
        first = True
        while len(order) > 1 and (first or not radix.ensure_free(self._pages_needed_next())):
            first = False
            req = order.pop()
            self._stop_decode(req)
            self._settle_owned(req)
            radix.release(req.owned)          # freed without entering the tree
            radix.unlock(req.lock)
            req.lock, req.prefix, req.owned, req.done = None, 0, 0, 0
            req.fill = req.prompt + output_token_ids(req.output_seed, req.gen)
            self.waiting.append(req)
            result.retracted.append(req.rid)
        left = list(self.running.values())
        decoded = sum(self.decode_steps - r.offset for r in left)
        max_new = sum(r.max_new for r in left)
        self.new_token_ratio = min(1.0, (decoded + RETRACT_DECODE_STEPS * len(left)) / (max_new + 1))

    # ------------------------------------------------------------------ finish and events

    def _finish(self, req: _Req, result: StepResult) -> None:
        """Insert prompt + output (the KV computed: all but the last token) and unlock."""
        radix = self.radix
        kv = req.prompt_len + req.gen - 1
        tokens = req.prompt + output_token_ids(req.output_seed, req.gen - 1) if req.gen > 1 else req.prompt
        radix.insert_finished(tokens, kv, req.prefix, req.owned)
        radix.unlock(req.lock)
        req.lock, req.owned = None, 0
        self._live.discard(req.rid)
        result.finished.append((req.rid, req.gen))

    def _publish(self, result: StepResult, ts_s: float) -> None:
        for payload in self.radix.take_event_payloads(ts_s):
            result.event_payloads.append((self._event_seq, payload))
            self._event_seq += 1
