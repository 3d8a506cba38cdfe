"""Decision-path micro-benchmark: Router.cached_tokens + Router.route on an 8K-token array('q')
prompt at 128 workers, exact mirror holding a 7600-token shared prefix on 16 workers.
Min and median of 15 timing rounds of 2000 calls each (per-call us)."""
import sys, time, statistics, random
from array import array
sys.path.insert(0, ".")
from sglang_ext.core.router import Router, RouterConfig
from sglang_ext.core.policies import Request
N = 128
router = Router(RouterConfig(policy="prefix_length_aware", num_workers=N, kv_capacity_tokens=1 << 20,
                             exact_mirror=True, prefix_holds=False))
rng = random.Random(0)
prefix = [rng.randrange(1, 30000) for _ in range(7600)]
for w in range(16):
    router.tree.apply_stored(w, list(range(w * 10**6, w * 10**6 + len(prefix))), None, prefix)
reqs = [Request(f"r{i}", array("q", prefix + [rng.randrange(1, 30000) for _ in range(592)]), 64) for i in range(64)]
def bench(fn, rounds=15, calls=2000):
    out = []
    for _ in range(rounds):
        t = time.perf_counter_ns()
        for i in range(calls):
            fn(reqs[i & 63])
        out.append((time.perf_counter_ns() - t) / calls / 1000)
    return min(out), statistics.median(out)
from sglang_ext.core.token_bytes import pack
packed = [pack(r.input_ids) for r in reqs]
def cached(r):
    router.cached_tokens(r, packed[int(r.rid[1:])])
print("cached_tokens min/median us: %.2f / %.2f" % bench(cached))
print("tree.match_packed min/median us: %.2f / %.2f" % bench(lambda r: router.tree.match_packed(packed[int(r.rid[1:])])))
