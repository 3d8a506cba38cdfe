"""Make PyPI's (CUDA) torchvision importable beside CPU torch.

Under CPU torch, `import torchvision` dies with "operator torchvision::nms does not exist"
because its meta/autograd registrations refer to C++ ops that the CUDA wheel's extension
cannot load. Importing those two modules only when the extension's ops exist makes the
package import; transforms work, only the C++ ops (nms, roi_align, ...) are missing, and
SGLang does not call them on CPU. Idempotent.
"""

import importlib.util
import pathlib
import sys

MARKER = "# sglang_ext: registrations only when the C++ ops exist"
ORIGINAL = """from torchvision import (
    _autograd_registrations,
    _meta_registrations,
    datasets,"""
PATCHED = f"""{MARKER}
if extension._has_ops():
    from torchvision import _autograd_registrations, _meta_registrations
from torchvision import (
    datasets,"""


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("patch_torchvision: torchvision is not installed", file=sys.stderr)
        return 1
    init = pathlib.Path(spec.origin)
    text = init.read_text()
    if MARKER in text:
        return 0
    if ORIGINAL not in text:
        print(f"patch_torchvision: unexpected layout of {init}; not patched", file=sys.stderr)
        return 1
    init.write_text(text.replace(ORIGINAL, PATCHED, 1))
    print(f"patch_torchvision: patched {init}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
