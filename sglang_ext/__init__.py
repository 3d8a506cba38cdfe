"""Prefix- and output-length-aware data-parallel controller for SGLang, loaded as a plugin.

Modules: `core/` (the host-free routing core: mirror, ledger, policies, cost models,
event applier; shared with the cluster simulator), `plugin` (SGLang entry point),
`launch_server` (CLI), `controller` (the DataParallelController subclass), `kv_events`
(the ZeroMQ event subscriber), `completions` (scheduler-side reports), `models`
(embedded default models).
"""

__version__ = "0.1.0"
