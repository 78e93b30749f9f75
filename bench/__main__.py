"""Command line of the bench suite: ``python -m bench [options]``.

    python -m bench                         all workloads, full sizes
    python -m bench --only W1,W3 --quick    some workloads, smaller sizes, fewer reps
    python -m bench --smoke                 CI: tiny sizes, one rep, exit 1 on a failure
    python -m bench --peers torch,numpy     only these peers (tapegrad left out)
    python -m bench --json out.json         one JSON file for the whole run

Without ``--json`` each workload's tables go to
``bench/results/<date>_<time>-<workload>.json`` (not in ``--smoke``), and a
PNG of the ratios is drawn next to each JSON file when matplotlib imports.
Exit status: 0, or 1 in ``--smoke`` when any peer raised or failed its
cross-check (a missing optional peer is not a failure).
"""
import argparse
import os
import sys
import time
import traceback

from . import c0_startup, w1_scalar_chain, w2_mlp, w3_elementwise, w4_rnn, w5_article_loops
from .harness import (RESULTS_DIR, Context, load_warning, loud, print_table, results_payload, stamp,
                      write_json)
from .peers import ALL, Peers

WORKLOADS = {"W1": w1_scalar_chain, "W2": w2_mlp, "W3": w3_elementwise, "W4": w4_rnn, "W5": w5_article_loops,
             "C0": c0_startup}
#: peers left out of --smoke, with the reason their rows give
SMOKE_EXCLUDED = {"torch.compile": "skipped (not in --smoke: compiling is slow)"}
ALIASES = {"W5A": ("W5", "W5a"), "W5B": ("W5", "W5b")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="",
                   help="comma-separated workloads: W1, W2, W3, W4, W5 (or W5a, W5b), C0 (default: all)")
    p.add_argument("--peers", default=",".join(ALL),
                   help=f"comma-separated peers (default: all of {','.join(ALL)})")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, one repetition, no JSON unless --json; exit 1 on any failure")
    p.add_argument("--json", metavar="PATH", help="write one JSON file for the whole run to PATH")
    p.add_argument("--reps", type=int, help="repetitions per measurement (overrides the defaults)")
    p.add_argument("--warmup", type=int, help="warm-up calls per measurement (overrides the defaults)")
    p.add_argument("--torch-threads", type=int, metavar="N",
                   help="torch.set_num_threads(N) for the torch peer (default: torch's own choice)")
    p.add_argument("--no-plot", action="store_true", help="do not draw PNGs next to the JSON files")
    return p.parse_args(argv)


def select_workloads(only):
    """``--only`` -> (ordered workload ids, W5 variants)."""
    if not only.strip():
        return list(WORKLOADS), {"W5a", "W5b"}
    ids, variants = [], set()
    for item in (s.strip().upper() for s in only.split(",") if s.strip()):
        if item in ALIASES:
            wid, variant = ALIASES[item]
            variants.add(variant)
        elif item in WORKLOADS:
            wid = item
            if wid == "W5":
                variants |= {"W5a", "W5b"}
        else:
            raise SystemExit(f"unknown workload {item!r}; choose from W1, W2, W3, W4, W5, W5a, W5b, C0")
        if wid not in ids:
            ids.append(wid)
    return [w for w in WORKLOADS if w in ids], variants


def main(argv=None):
    args = parse_args(argv)
    ids, variants = select_workloads(args.only)
    try:
        peers = Peers([s.strip() for s in args.peers.split(",") if s.strip()],
                      excluded=SMOKE_EXCLUDED if args.smoke else None)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if args.torch_threads is not None:
        torch = peers.reference_torch()
        if torch is not None:
            torch.set_num_threads(args.torch_threads)
    ctx = Context(peers, quick=args.quick, smoke=args.smoke, reps=args.reps, warmup=args.warmup)
    ctx.only_variants = variants
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    options = {"only": ids, "w5_variants": sorted(variants), "peers": list(peers.selected), "mode": mode,
               "reps": args.reps, "warmup": args.warmup, "torch_threads": args.torch_threads}
    print(f"tapegrad bench: workloads {', '.join(ids)}; peers {', '.join(peers.selected)}; mode {mode}")
    print("ratio = peer min / tapegrad min (above 1: tapegrad is faster)")
    if load_warning():
        print(load_warning())
    sys.stdout.flush()

    write_each = not args.json and not args.smoke
    results, written = {}, []
    run_stamp = stamp()
    for wid in ids:
        module = WORKLOADS[wid]
        print(f"\n=== {wid}: {module.TITLE} " + "=" * max(0, 60 - len(module.TITLE)), flush=True)
        t0 = time.perf_counter()
        try:
            tables = module.run(ctx)
        except Exception as exc:  # noqa: BLE001 - a bug in the bench itself: report, go on
            loud(f"{wid}: the bench itself raised {type(exc).__name__}: {exc}")
            traceback.print_exc()
            ctx.fail(wid, "bench", f"{type(exc).__name__}: {exc}")
            continue
        for t in tables:
            print_table(t)
        print(f"\n({wid} took {time.perf_counter() - t0:.1f} s)")
        results[wid] = tables
        if write_each:
            path = os.path.join(RESULTS_DIR, f"{run_stamp}-{wid}.json")
            written.append(write_json(path, results_payload({wid: tables}, options)))
            print(f"\nwrote {_show(path)}")
        elif args.json:
            write_json(args.json, results_payload(results, options))   # rewritten as workloads finish
    if args.json:
        written.append(write_json(args.json, results_payload(results, options)))
        print(f"\nwrote {args.json}")
    if written and not args.no_plot:
        _plot_all(written)

    if ctx.failures:
        print("\nFailures:")
        for where, peer, msg in ctx.failures:
            print(f"  {where} | {peer} | {msg.splitlines()[0][:300]}")
    if args.smoke:
        print(f"\nsmoke: {'FAILED' if ctx.failures else 'ok'}")
        return 1 if ctx.failures else 0
    return 0


def _show(path):
    """A path relative to the current directory when it lies below it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _plot_all(paths):
    try:
        from . import plot
        import matplotlib  # noqa: F401
    except ImportError:
        print("(matplotlib not installed: no plots)")
        return
    for path in paths:
        try:
            png = plot.plot(path)
            print(f"wrote {_show(png)}")
        except Exception as exc:  # noqa: BLE001 - a plot must never fail the run
            print(f"(plot of {path} failed: {type(exc).__name__}: {exc})")


if __name__ == "__main__":
    sys.exit(main())
