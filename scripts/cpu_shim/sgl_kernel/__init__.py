"""Import-only stand-in for `sgl_kernel` on CPU hosts without AMX.

SGLang imports `sgl_kernel` at module load, but on a CPU without AMX (this project's
machines) it never calls into it. Every attribute is a function that raises, so a call
that does happen fails loudly instead of silently computing nothing. Installed into the
CPU venv only by scripts/setup_cpu.sh; a GPU host uses the real package.
"""

__version__ = "0.0.0+cpu-shim"


def _missing(name: str):
    def call(*args, **kwargs):
        raise NotImplementedError(f"sgl_kernel.{name} is not available on this CPU host")

    call.__name__ = name
    return call


class _Namespace:
    def __init__(self, prefix: str):
        self._prefix = prefix

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing(f"{self._prefix}.{name}")

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"sgl_kernel.{self._prefix} is not available on this CPU host")


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Namespace(name)
