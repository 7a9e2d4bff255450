"""Edge runtime benchmark (`make bench-edge`): the runtime vs a PyTorch eager loop.

Real magnetic-tile images replayed from memory through the whole pipeline (publishing on,
to a private Mosquitto), INT8 bundle, batch 1, 2 threads; prints the latency per stage and
the targets (p99 <= 10 ms, >= 3x the eager loop, overhead < 30%); ``--plc modbus|opcua``
adds decision->PLC write latency to a loopback PLC. Same as `lineqc edge bench`; this
script only supplies the defaults of the demo's layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lineqc.edge.bench import format_report, run_bench

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=REPO / "runs" / "bundle")
    p.add_argument(
        "--source",
        default=str(
            REPO.parent / "shared" / "datasets" / "magnetic-tile" / "MT_*" / "Imgs" / "*.jpg"
        ),
    )
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--baseline-frames", type=int, default=200)
    p.add_argument("--precision", default="int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--plc", choices=("modbus", "opcua"), help="also write to a loopback PLC")
    p.add_argument("--plc-deadline-ms", type=float, default=50.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not (args.bundle / "manifest.json").is_file():
        print(
            f"bench-edge: no bundle at {args.bundle} (make demo, or pass --bundle)", file=sys.stderr
        )
        return 2
    report = run_bench(
        args.bundle, args.source, frames=args.frames, precision=args.precision,
        threads=args.threads, baseline_frames=args.baseline_frames,
        allow_failed_gate=True,  # a speed figure; the report says when the gate failed
        plc=args.plc, plc_deadline_ms=args.plc_deadline_ms,
    )  # fmt: skip
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
