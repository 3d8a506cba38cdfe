"""Only the optional C helper lives here; everything else is in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and
`sglang_ext.core.token_bytes` falls back to the slower `array` conversion.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("sglang_ext._tokens", ["sglang_ext/_tokens.c"], optional=True)])
