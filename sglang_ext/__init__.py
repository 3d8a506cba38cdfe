"""Prefix- and output-length-aware data-parallel controller for SGLang, loaded as a plugin.

Modules: `plugin` (SGLang entry point), `launch_server` (CLI), `controller` (the
DataParallelController subclass), `dispatcher` (host-independent routing core),
`policies/` (one module per `--load-balance-method`), `models` (embedded default models).
"""

__version__ = "0.1.0"
