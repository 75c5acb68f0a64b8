"""The `partition` and `serve` subcommands (added to the main parser by cli.py); heavy imports
happen inside the handlers so `sparseforge --help` stays fast."""

from __future__ import annotations

import argparse
import ipaddress
import json
from pathlib import Path


def _partition(args: argparse.Namespace) -> int:
    from .partition import partition_run

    result = partition_run(
        args.run_dir, args.bandwidth_mbps, args.rtt_ms, tolerance=args.tolerance, out=args.out,
        batch=args.batch, edge_threads=args.edge_threads, edge_slowdown=args.edge_slowdown,
        cloud_threads=args.cloud_threads, calibration=args.calibration,
    )
    print(result["emulated"])
    for p in result["plans"]:
        print(f"{p['bandwidth_mbps']:>8g} Mbit/s: split {p['split']:<22} "
              f"transfer {p['precision'] or '-':<5} predicted {p['predicted_ms']:.2f} ms")
    print(f"profile, plan and plot written to {result['out']}")
    return 0


def read_token(path: str | Path) -> str:
    """The shared secret from a file (surrounding whitespace dropped); it must not be empty."""
    token = Path(path).read_text().strip()
    if len(token) < 16:
        raise ValueError(f"token file {path} holds {len(token)} characters; use at least 16, "
                         "e.g. `python -c 'import secrets; print(secrets.token_urlsafe())' > F`")
    return token


def _serve(args: argparse.Namespace) -> int:
    try:
        import aiohttp  # noqa: F401
    except ImportError as err:
        raise ImportError("`sparseforge serve` needs aiohttp: pip install 'sparseforge[serve]'") from err
    import torch

    from .cloud import cloud_device, run_example
    from .server import make_app, serve
    from .splits import tails_for

    if not ipaddress.ip_address(args.host).is_loopback:
        print(f"warning: serving on {args.host}, reachable from other machines; the token is "
              "sent in clear text over HTTP", flush=True)
    token = read_token(args.token_file)
    model, example, _, _ = run_example(args.run_dir, 1)
    device = cloud_device()
    app = make_app(tails_for(model, example, args.split), token,
                   max_bytes=int(args.max_mb * 2**20), threads=args.threads, device=device)
    where = "GPU" if device == "cuda" else f"CPU of this process, {torch.get_num_threads()} threads"
    print(json.dumps({"serving": args.split, "tail_on": where}), flush=True)
    serve(app, args.host, args.port)
    return 0


def add_edge_commands(sub: argparse._SubParsersAction) -> None:
    """Register `partition` and `serve` on the main parser's subcommands."""
    pa = sub.add_parser("partition", help="plan an edge-cloud split of a run's model per bandwidth")
    pa.add_argument("run_dir")
    pa.add_argument("--bandwidth-mbps", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    pa.add_argument("--rtt-ms", type=float, default=20.0)
    pa.add_argument("--tolerance", type=float, default=0.5,
                    help="accuracy points the transfer precision may cost (validation images)")
    pa.add_argument("--out", help="output folder (default RUN_DIR/partition)")
    pa.add_argument("--batch", type=int, default=1, help="images per request")
    pa.add_argument("--edge-threads", type=int, default=1)
    pa.add_argument("--edge-slowdown", type=float, default=1.0,
                    help="emulate a slower edge: head time x this factor")
    pa.add_argument("--cloud-threads", type=int, help="threads of the cloud process (CPU only)")
    pa.add_argument("--calibration", type=int, default=512, help="validation images for accuracy")
    pa.set_defaults(fn=_partition)

    se = sub.add_parser("serve", help="host a run's model tail(s) for edge clients over HTTP")
    se.add_argument("run_dir")
    se.add_argument("--split", nargs="+", required=True, help="split name(s) to host")
    se.add_argument("--port", type=int, default=8080)
    se.add_argument("--token-file", required=True, help="file holding the shared secret")
    se.add_argument("--host", default="127.0.0.1")
    se.add_argument("--threads", type=int, help="torch threads for the tail (CPU)")
    se.add_argument("--max-mb", type=float, default=64.0, help="request size limit in MiB")
    se.set_defaults(fn=_serve)
