"""One prefill pass's token budget: SGLang 0.5.23's `PrefillAdder` memory and compute
budgets for a dense model on one KV pool, re-implemented for `SimWorker`.

Rules and where they come from (paths under the installed `sglang/srt/`):
- `mem_cache/prefill_budget.py`, `PrefillBudget`: remaining = free slots + evictable
  tree tokens - `total_offset`; `total_offset` starts at the running requests'
  reservation (`managers/schedule_policy.py`, `_get_running_request_total_token_offset`:
  min(max_new - generated, 4096) x `new_token_ratio`, x 1.0 for `ignore_eos`), and each
  admitted request adds ceil_page(extend) + page + its reserved output tokens
  (`reserve`); `current_offset` adds the same without the output tokens. A pass has
  capacity while both remainders are > 0 (`has_capacity`).
- `add_one_req`: a request with total = extend + min(max_new - generated, 4096) + page
  is admitted iff total < remaining (`check_prefill`); it is chunked when its
  page-ceiled extend exceeds the chunk budget left: the chunk is that budget floored to
  pages, ending on a page boundary, and reserves no output tokens (`_select_prefill_
  admission`). The compute budgets (`max_prefill_tokens`, `chunked_prefill_size`) are
  charged the page-ceiled extend (`_update_prefill_budget`).
- `add_chunked_req`: a chunked request's next chunk takes min(chunk budget, remaining)
  tokens (the chunk budget when nothing remains: it must progress to free its KV),
  reserving its output tokens only with its last chunk.
- `budget_state`: NO_TOKEN when out of capacity, OTHER when a compute budget is spent,
  else CONTINUE; the caller stops the pass at the first non-CONTINUE.
"""

from __future__ import annotations

from enum import Enum

# `managers/schedule_policy.py`: CLIP_MAX_NEW_TOKENS (SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION, 4096).
CLIP_MAX_NEW_TOKENS = 4096


class AddResult(Enum):
    CONTINUE = 0
    NO_TOKEN = 1
    OTHER = 2


class PrefillBudget:
    """The budgets of one prefill pass. `available` is read live (free + evictable), as
    SGLang's does: locking a prefix during the check shrinks the evictable part."""

    __slots__ = ("page", "_available", "total_offset", "current_offset", "rem_input", "rem_chunk")

    def __init__(self, page_size: int, available, running_reservation: float, max_prefill_tokens: int,
                 chunked_prefill_size: int | None):
        self.page = page_size
        self._available = available  # () -> free + evictable tokens, now
        self.total_offset = running_reservation
        self.current_offset = 0.0
        self.rem_input = max_prefill_tokens
        self.rem_chunk = chunked_prefill_size

    def ceil_page(self, tokens: int) -> int:
        return -(-tokens // self.page) * self.page

    @property
    def remaining_total(self) -> float:
        return self._available() - self.total_offset

    def state(self) -> AddResult:
        available = self._available()
        if available - self.total_offset <= 0 or available - self.current_offset <= 0:
            return AddResult.NO_TOKEN
        if self.rem_input <= 0 or (self.rem_chunk is not None and self.rem_chunk <= 0):
            return AddResult.OTHER
        return AddResult.CONTINUE

    def fits(self, extend: int, reserved_output: int) -> bool:
        return extend + reserved_output + self.page < self.remaining_total

    def plan_new(self, prefix: int, extend: int) -> tuple[int, bool] | None:
        """The tokens a newly admitted request prefills this pass and whether that is a
        chunk (None: a chunk would be empty, the pass stops)."""
        if self.rem_chunk is None or self.ceil_page(extend) <= self.rem_chunk:
            return extend, False
        end = (prefix + self.rem_chunk // self.page * self.page) // self.page * self.page
        chunk = end - prefix
        return (chunk, True) if chunk > 0 else None

    def plan_continuation(self, extend: int) -> int:
        """Tokens of a chunked request's next chunk (`add_chunked_req`)."""
        if self.rem_chunk is None:
            return extend
        budget = min(self.rem_chunk, int(self.remaining_total))
        if budget <= 0:
            budget = self.rem_chunk
        return min(extend, budget)

    def reserve(self, extend: int, reserved_output: int) -> None:
        paged = self.ceil_page(extend)
        immediate = paged + self.page
        self.total_offset += immediate + reserved_output
        self.current_offset += immediate
        self.rem_input -= paged
        if self.rem_chunk is not None:
            self.rem_chunk -= paged
