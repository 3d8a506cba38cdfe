"""Cache namespaces: which cached pages a request may be credited with.

SGLang 0.5.23 keeps a request's radix-cache entries apart by two strings
(`mem_cache/radix_cache.py`, `RadixKey.child_key_at`: the child key is
`((extra_key, cache_salt), tokens)` when either is set):

- `extra_key`: the caller's `extra_key` with the request's `lora_id` appended
  (`managers/schedule_batch.py`, `Req.__init__`: `extra_key = (extra_key or "") + lora_id`);
- `cache_salt` (`Req.cache_salt = cache_salt or None`).

Equal tokens under another namespace are a cache miss there. What the KV events carry
about it (`disaggregation/kv_events.py`, `BlockStored`; built in `mem_cache/events.py`,
`KVCacheEventRecorder.record_store`, and `mem_cache/rust_tree_core/adapter.py`,
`_kv_event_from_tagged`, for the Rust tree; default event format):

- `cache_salt`: every `BlockStored` names it, and its hash chain is seeded by it
  (`mem_cache/utils.py`, `compute_node_event_hash_values`). Exact: events under a
  salt match only requests with that salt.
- LoRA: `BlockStored.lora_name` names the adapter when the scheduler knows its name
  (`KvEventLoraNames`), and the hashes are re-seeded by the full extra_key. The
  adapter *load* (`lora_id`, a fresh uuid per load) is not in the event, and SGLang's
  tree keys on it, so pages of an unloaded adapter and of a later load under the same
  name cannot be told apart. Conservative: such pages stay in their own namespace and
  no request is credited with them from the mirror.
- A caller-defined `extra_key` without a LoRA (and a LoRA whose name the scheduler
  cannot resolve): the event carries neither it nor a different hash (the seed omits
  an extra_key that names no adapter, `_namespace_seed`), so its pages look exactly
  like pages of the plain (or salt-only) namespace. Such requests are never credited
  from the mirror, and since their pages pollute the namespace they fall into, the
  router records their prompts (`Router.ambiguous`) and credits a plain request on a
  worker only where its match there goes deeper than those prompts (see
  `Router.cached_tokens`).

Without events (approximate mode) and for the in-flight prompts the router itself
records what it sent, so there the request's full namespace (`full_key`) is exact.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CacheNamespace:
    """A request's namespace as SGLang's scheduler forms it (see the module docs)."""

    extra_key: str | None = None  # caller's extra_key + lora_id, as `Req.extra_key`
    cache_salt: str | None = None
    lora_name: str | None = None  # the adapter's public name, which KV events carry

    @property
    def full_key(self) -> tuple[str | None, str | None]:
        """The key SGLang's own tree separates by: exact for trees the router fills."""
        return (self.extra_key, self.cache_salt)

    @property
    def event_key(self) -> tuple | None:
        """The namespace key of the mirror (fed by events) this request may be credited
        from, or `UNCREDITED` when the events cannot identify its namespace."""
        if self.extra_key is None:
            return None if self.cache_salt is None else ("salt", self.cache_salt)
        return UNCREDITED

    @property
    def collapses_into(self) -> tuple | None:
        """For a request whose stored pages the events show under another namespace (an
        extra_key that names no adapter): that namespace's mirror key; `UNCREDITED`
        when its pages are told apart (no extra_key, or a named LoRA)."""
        if self.extra_key is None or self.lora_name is not None:
            return UNCREDITED
        return None if self.cache_salt is None else ("salt", self.cache_salt)


# A mirror key no event namespace has: "match nothing".
UNCREDITED = ("uncredited",)


def request_namespace(extra_key: str | None = None, cache_salt: str | None = None,
                      lora_id: str | None = None, lora_name: str | None = None) -> CacheNamespace | None:
    """The namespace of a tokenized request's fields (`TokenizedGenerateReqInput`:
    `extra_key`, `cache_salt`, `lora_id`, `lora_name`), or None for the plain namespace
    (the common case, which costs the router nothing extra). Empty strings count as
    unset, as in SGLang (`io_struct.py` `_normalize_extra_key`, `Req.cache_salt`)."""
    for name, value in (("extra_key", extra_key), ("cache_salt", cache_salt), ("lora_id", lora_id),
                        ("lora_name", lora_name)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string or None, not {type(value).__name__}")
    key = extra_key or None
    if lora_id:
        key = (key or "") + lora_id
    salt = cache_salt or None
    if key is None and salt is None:
        return None
    return CacheNamespace(key, salt, (lora_name or None) if lora_id else None)


def event_namespace(lora_name: str | None, cache_salt: str | None) -> tuple | None:
    """The mirror key of a `BlockStored` event's pages (None: the plain namespace)."""
    if lora_name:
        return ("lora", lora_name, cache_salt or None)
    if cache_salt:
        return ("salt", cache_salt)
    return None
