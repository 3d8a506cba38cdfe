#!/usr/bin/env bash
# The whole Ray path on a GPU machine: a one-node Ray cluster on this host's GPUs, SGLang
# dp=2 through `python -m sglang_ext.launch_server --use-ray` with our controller, then
# the checks the CPU tests make (tests/test_ray_live.py): every request answered, a
# shared prefix on one rank with cached tokens after the first, the controller fed by the
# feeds the ranks advertised, the ledger back to zero. Then the fast Ray tests.
#
#   scripts/ray_gpu_check.sh [MODEL_PATH]     (default: the tiny model, models/tiny-llama)
#
# Needs: a GPU install of SGLang 0.5.23 and our package in .venv (README, "GPU hosts"),
# ray from requirements/ray.txt, two GPUs (dp=2). Stops what it started, always.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RAY=$(dirname "$PY")/ray
MODEL=${1:-models/tiny-llama}
WORK=$(mktemp -d /tmp/ray_gpu_check.XXXXXX)
RAY_PORT=${RAY_PORT:-26379}
HTTP_PORT=${HTTP_PORT:-31000}
export RAY_ADDRESS="127.0.0.1:$RAY_PORT"
export SGLANG_EXT_STATUS_FILE="$WORK/status.json"
SERVER_PID=""

cleanup() {
  [ -n "$SERVER_PID" ] && kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
  sleep 3
  [ -n "$SERVER_PID" ] && kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
  "$RAY" stop --force >/dev/null 2>&1 || true
  echo "ray_gpu_check: logs in $WORK"
}
trap cleanup EXIT

echo "ray_gpu_check: ray head on 127.0.0.1:$RAY_PORT (GPUs detected by Ray)"
"$RAY" start --head --node-ip-address 127.0.0.1 --port "$RAY_PORT" \
  --include-dashboard false --disable-usage-stats >"$WORK/ray.log" 2>&1

echo "ray_gpu_check: SGLang dp=2 over Ray, prefix_length_aware"
setsid "$PY" -m sglang_ext.launch_server --use-ray --model-path "$MODEL" --dp-size 2 \
  --load-balance-method prefix_length_aware --host 127.0.0.1 --port "$HTTP_PORT" \
  --feed-host 127.0.0.1 >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

"$PY" - "$HTTP_PORT" "$SGLANG_EXT_STATUS_FILE" "$WORK/server.log" <<'EOF'
import json, random, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
port, status_path, log_path = sys.argv[1:]
url = f"http://127.0.0.1:{port}"

def get(path):
    with urllib.request.urlopen(url + path, timeout=30) as r:
        return r.status

def generate(ids, n=4):
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": n, "ignore_eos": True}}
    req = urllib.request.Request(url + "/generate", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)["meta_info"]

deadline = time.time() + 900
while True:
    try:
        if get("/health_generate") == 200:
            break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit("ray_gpu_check: FAIL: the server did not come up (see server.log)")
    time.sleep(2)
rng = random.Random(1)
with ThreadPoolExecutor(6) as pool:
    metas = list(pool.map(lambda _: generate([rng.randrange(10, 1000) for _ in range(40)], 6), range(12)))
assert all(m["completion_tokens"] == 6 for m in metas), metas
assert {m["dp_rank"] for m in metas} == {0, 1}, [m["dp_rank"] for m in metas]
prefix = [rng.randrange(10, 1000) for _ in range(200)]
shared = [generate(prefix + [rng.randrange(10, 1000) for _ in range(10)]) for _ in range(5)]
assert len({m["dp_rank"] for m in shared}) == 1, [m["dp_rank"] for m in shared]
assert all(m["cached_tokens"] >= 200 for m in shared[1:]), [m["cached_tokens"] for m in shared]
assert "feeds the ranks advertised" in open(log_path, errors="replace").read(), "no advertised feeds"
for _ in range(100):
    status = json.load(open(status_path))
    if status["in_flight"] == 0:
        break
    time.sleep(0.1)
assert status["in_flight"] == 0 and status["expired"] == 0 and status["bad_reports"] == 0, status
print("ray_gpu_check: live checks passed:", len(metas) + len(shared), "requests;",
      "shared prefix on rank", shared[0]["dp_rank"], "; kv events:", status["kv_events"])
EOF

echo "ray_gpu_check: fast Ray tests"
"$PY" -m pytest -q tests/test_ray_controller.py tests/test_feeds.py
echo "ray_gpu_check: OK"
