"""Our controller process's CPU time under the issue-13 shared-prefix load (SmolLM2 or tiny, dp=2),
with an optional py-spy profile of it.  Usage: measure.py smollm2|tiny POLICY OUT_DIR [spy]
(py-spy is not a project dependency: `pip install py-spy==0.4.2`)."""
import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
from sglang_ext.bench.live_common import generate_trace
from sglang_ext.models import smollm2_path, tiny_path
from sglang_ext.server import ServerSpec, start_server
from traces.format import read_trace
from traces.replay import ReplayConfig, run

model = sys.argv[1]; policy = sys.argv[2]; out = pathlib.Path(sys.argv[3]); spy = len(sys.argv) > 4
out.mkdir(parents=True, exist_ok=True)
path = smollm2_path() if model == "smollm2" else tiny_path()
trace = generate_trace(out / "trace.jsonl", "prefix-groups", ["--seed", "1", "--tokenizer", str(path), "--max-new-tokens", "16",
        "--groups", "4", "--prompts-per-group", "6", "--prefix-tokens", "512", "--question-tokens", "32", "--output-tokens", "16", "--rate-rps", "0.5"])
spec = ServerSpec(str(path), dp_size=2, load_balance_method=policy, max_total_tokens=65536,
                  extra_args=["--dtype", "float32"] if model == "smollm2" else [])

def procs(root):
    out = {}
    for p in pathlib.Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (p / "stat").read_text().split(")")[-1].split()
            comm = (p / "comm").read_text().strip()
        except OSError:
            continue
        out[int(p.name)] = (comm, cmd, int(stat[11]) + int(stat[12]))
    return out

with start_server(spec, str(out / "server.log")) as server:
    before = procs(server.proc.pid)
    names = {pid: (c, cmd[:80]) for pid, (c, cmd, _) in before.items() if "sglang" in cmd or "sglang" in c}
    ctl = [pid for pid, (c, cmd, _) in before.items() if "data_parallel" in c.lower() or "data_parallel" in cmd.lower()]
    print("processes:", json.dumps({str(k): v for k, v in names.items()}, indent=0))
    print("controller pids:", ctl)
    spy_proc = None
    if spy and ctl:
        spy_proc = subprocess.Popen([str(pathlib.Path(sys.executable).with_name("py-spy")), "record", "-p", str(ctl[0]), "--nonblocking", "-r", "50",
                                     "-f", "raw", "-o", str(out / "spy.txt")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    t0 = time.time()
    cfg = ReplayConfig(trace=str(trace), url=server.url, out_dir=str(out), max_concurrency=128, progress=False)
    summary = run(read_trace(str(trace)), cfg)
    wall = time.time() - t0
    after = procs(server.proc.pid)
    if spy_proc:
        spy_proc.send_signal(2); spy_proc.wait(30)
    hz = os.sysconf("SC_CLK_TCK")
    rows = []
    for pid, (c, cmd, ticks) in after.items():
        if pid in before and pid in names:
            rows.append((c, pid, (ticks - before[pid][2]) / hz))
    for r in sorted(rows, key=lambda r: -r[2]):
        print(f"{r[0]:<40} {r[1]:>7} {r[2]:8.2f} cpu-s")
    print(f"replay wall {wall:.1f} s; e2e mean {summary['e2e_s']['mean']:.2f}; ok {summary['succeeded']}/{summary['requests']}")
