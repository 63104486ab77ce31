"""Time a command that runs DVC stages (``make run`` from a fresh clone, ``dvc repro``) stage by stage: the README's
per-stage table and the budget figure in one run.

    python3 bench/stage_times.py -- make run                      # from a fresh clone, nothing else running
    python3 bench/stage_times.py --out /tmp/t.json -- dvc repro evaluate@inspired

Standard library only (a fresh clone has no virtualenv before ``make run`` makes one). The command's output is
passed through, each line prefixed with the minutes elapsed; a stage runs from its "Running stage 'NAME'" line to
the next one (or the command's end), and everything before the first is "setup". Afterwards the machine's speed is
measured (2048 x 2048 fp32 matrix products on 2 threads, median of 9: ``bench/embed.py``'s ``matmul_gflops``, run by
the project's python where ``.venv`` exists), so that timings from machines of different speed can be compared: the slow 2-core AVX2 EPYCs here reach
65-82 GFLOP/s, the normal ones ~140-154. Writes ``--out`` (JSON) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")
# bench/embed.py's measurement, run by the project's python (this script itself needs only the standard library)
CALIBRATE = "import torch; torch.set_num_threads(2); from bench.embed import matmul_gflops; print(matmul_gflops(2048, 9))"


def stage_minutes(events: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Minutes per stage from (seconds since the start, line) events: a stage lasts from its "Running stage"
    line to the next stage's (or ``end``); "setup" is everything before the first stage."""
    starts = [(t, m.group(1)) for t, line in events if (m := STAGE_LINE.match(line))]
    bounds = [(0.0, "setup")] + starts + [(end, "")]
    return {name: round((bounds[i + 1][0] - t) / 60, 2) for i, (t, name) in enumerate(bounds[:-1])
            if name != "setup" or t < bounds[i + 1][0]}


def gflops() -> float | None:
    """fp32 GFLOP/s of a 2048 matrix product on 2 threads, with the project's torch (None where there is none)."""
    python = ROOT / ".venv/bin/python"
    if not python.exists():
        return None
    done = subprocess.run([str(python), "-c", CALIBRATE], capture_output=True, text=True, timeout=600, cwd=ROOT)
    return round(float(done.stdout.strip()), 1) if done.returncode == 0 else None


def table(minutes: dict[str, float], total: float) -> str:
    rows = [f"| {name} | {m:.1f} |" for name, m in minutes.items()]
    return "\n".join(["| stage | minutes |", "| --- | ---: |", *rows, f"| **total** | **{total:.1f}** |"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench/results-make-run.json"))
    ap.add_argument("--no-calibrate", action="store_true", help="skip the machine-speed measurement")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command to time (e.g. make run)")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command; e.g. python3 bench/stage_times.py -- make run")
    start, events = time.perf_counter(), []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            elapsed = time.perf_counter() - start
            events.append((elapsed, line.rstrip("\n")))
            sys.stdout.write(f"[{elapsed / 60:6.1f} min] {line}")
            sys.stdout.flush()
    end = time.perf_counter() - start
    minutes = stage_minutes(events, end)
    result = {"command": " ".join(command), "returncode": proc.returncode, "total_minutes": round(end / 60, 2),
              "stages": minutes, "fp32_gflops_2_threads": None if args.no_calibrate else gflops(),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(minutes, end / 60))
    print(f"exit status {proc.returncode}; machine: {result['fp32_gflops_2_threads']} GFLOP/s (fp32, 2 threads); "
          f"written to {args.out}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
