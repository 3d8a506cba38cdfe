"""Names of the environment variables that carry our settings into SGLang's processes.

The controller runs in a process SGLang spawns, and SGLang's argument parser knows nothing
of our flags, so the launcher passes them through the environment. Kept in this small
module so that the launcher can validate arguments without importing SGLang.
"""

ENV_POLICY = "SGLANG_EXT_POLICY"
ENV_LENGTH_SOURCE = "SGLANG_EXT_LENGTH_SOURCE"
ENV_LENGTH_MODEL = "SGLANG_EXT_LENGTH_MODEL"  # folder of the trained length head
ENV_PREDICT_WAIT_MS = "SGLANG_EXT_PREDICT_WAIT_MS"  # how long a request may wait for it
# Where the length predictor runs: "process" (default, a child of the controller) or
# "thread" (in the controller process; its GIL use delays dispatch: predictor_process.py).
ENV_PREDICTOR_HOST = "SGLANG_EXT_PREDICTOR_HOST"
PREDICTOR_HOSTS = ("process", "thread")
ENV_COST_MODEL = "SGLANG_EXT_COST_MODEL"  # a cost-model name or file, or online[:NAME]
ENV_PREFIX_HOLDS = "SGLANG_EXT_PREFIX_HOLDS"  # "on" (default) or "off": RouterConfig.prefix_holds
# A private folder for the controller's sockets (the test/demo server harness makes one
# per server and removes it afterwards); default: the system temp folder.
ENV_RUNTIME_DIR = "SGLANG_EXT_RUNTIME_DIR"

# Keys of a request's `sampling_params.custom_params` the controller reads (see
# `controller._request_of`); traces/replay.py sends them.
CLIENT_MAX_NEW_TOKENS_KEY = "sglang_ext_max_new_tokens"
ORACLE_OUTPUT_TOKENS_KEY = "sglang_ext_oracle_output_tokens"
