"""Only the optional C helpers live here; everything else is in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds;
`sglang_ext.core.token_bytes` then falls back to the slower `array` conversion and
`prefix_length_aware` to its numpy form.

`-ffp-contract=off` (GCC and Clang): `_policy_costs` must give the numpy form's costs bit
for bit, so no multiply and add may be fused into one rounding.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("sglang_ext._tokens", ["sglang_ext/_tokens.c"], optional=True),
    Extension("sglang_ext._policy_costs", ["sglang_ext/_policy_costs.c"], optional=True,
              extra_compile_args=["-ffp-contract=off"]),
])
