"""Names of the environment variables that carry our settings into SGLang's processes.

The controller runs in a process SGLang spawns, and SGLang's argument parser knows nothing
of our flags, so the launcher passes them through the environment. Kept in this small
module so that the launcher can validate arguments without importing SGLang.
"""

ENV_POLICY = "SGLANG_EXT_POLICY"
ENV_LENGTH_SOURCE = "SGLANG_EXT_LENGTH_SOURCE"
ENV_LENGTH_MODEL = "SGLANG_EXT_LENGTH_MODEL"
