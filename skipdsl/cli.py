"""The ``skipdsl`` command: compile, validate, list, draw, predict, export, nnunet, search.

Spec and data errors print a located message (no traceback) and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .errors import DataError, SpecError

out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def _widths(text: str | None):
    if text is None:
        return None
    parts = [int(p) for p in text.replace(" ", "").split(",") if p]
    return parts[0] if len(parts) == 1 else parts


def _add_overrides(p: argparse.ArgumentParser, deep_supervision: bool = True) -> None:
    p.add_argument("--dims", type=int, choices=(2, 3), help="2D or 3D (default: the spec's)")
    p.add_argument("--in-channels", type=int)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--widths", help="per-level widths '32,64,128,256,512' or a base '16'")
    if deep_supervision:
        p.add_argument("--deep-supervision", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--cgm", action=argparse.BooleanOptionalAction, default=None,
                   help="classification-guided module on the heads that name one")
    p.add_argument("--backbone", help="torchvision encoder for the encoder column: vgg16_bn, "
                   "resnet34, resnet50, resnet101 (2D)")
    p.add_argument("--weights", help="the backbone's weights: none (default) or a local "
                   "torchvision state-dict file; nothing is downloaded")


def _compile(args):
    from . import compiler

    model = compiler.compile(args.spec, in_channels=args.in_channels,
                             num_classes=args.num_classes, dims=args.dims,
                             widths=_widths(args.widths),
                             deep_supervision=True if args.prune else args.deep_supervision,
                             cgm=args.cgm, backbone=args.backbone, weights=args.weights)
    if args.prune:
        model = compiler.prune(model, args.prune)
    return model


def cmd_compile(args) -> int:
    from .info import model_cost
    from .graph import spec_hash

    model = _compile(args)
    size = args.size
    cost = model_cost(model, size)
    if args.code:
        Path(args.code).write_text(model.code)
    if args.json:
        data = {
            "name": cost.name, "source": model.spec.source, "spec_hash": spec_hash(model.spec),
            "size": list(cost.size), "params": cost.params, "gflops": cost.gflops,
            "activation_mb": cost.act_mb, "heads": model.head_ids,
            "nodes": [vars(n) for n in cost.nodes],
        }
        print(json.dumps(data, indent=2))
        return 0
    shape = "x".join(map(str, cost.size))
    title = f"{cost.name}  ({model.spec.source}, {model.spec.dims}D, input {shape})"
    if model.spec.encoder.backbone:
        title += f"  encoder {model.spec.encoder.backbone}"
    if args.prune:
        title += f"  pruned to x_0_{args.prune}"
    t = Table(title=title, title_justify="left")
    for col, kw in [("node", {}), ("level", {"justify": "right"}), ("col", {"justify": "right"}),
                    ("inputs", {}), ("in ch", {"justify": "right"}),
                    ("width", {"justify": "right"}), ("params", {"justify": "right"}),
                    ("GFLOPs", {"justify": "right"}), ("out MB", {"justify": "right"})]:
        t.add_column(col, **kw)
    for n in cost.nodes:
        t.add_row(n.node, str(n.level), str(n.column), ", ".join(n.inputs), str(n.in_channels),
                  str(n.width), f"{n.params:,}", f"{n.gflops:.3f}", f"{n.act_mb:.2f}")
    out.print(t)
    out.print(f"heads: {', '.join(model.head_ids)}")
    out.print(f"[bold]parameters[/bold] {cost.params:,}   [bold]forward GFLOPs[/bold] "
              f"{cost.gflops:.2f} per image   [bold]activation memory[/bold] {cost.act_mb:.1f} MB "
              f"per image (saved for backward, fp32)   spec hash {spec_hash(model.spec)}")
    if args.code:
        out.print(f"generated code written to {args.code}")
    return 0


def cmd_validate(args) -> int:
    from .graph import build_graph
    from .spec import load

    bad = 0
    for path in args.specs:
        try:
            g = build_graph(load(path))
            out.print(f"[green]ok[/green] {path}: {g.number_of_nodes() - 1} nodes, "
                      f"{g.number_of_edges()} edges")
        except SpecError as e:
            bad += 1
            err.print(f"[red]error[/red] {e}", highlight=False)
    return 2 if bad else 0


def cmd_list(args) -> int:
    from .spec import load, zoo_names
    from .compiler import compile as compile_

    t = Table(title="zoo")
    for col in ("name", "params (spec's channels)", "description"):
        t.add_column(col)
    for name in zoo_names(dims=None):
        s = load(name)
        n = sum(p.numel() for p in compile_(s).parameters())
        t.add_row(name, f"{n:,}", s.description)
    out.print(t)
    return 0


def cmd_draw(args) -> int:
    from .draw import draw
    from .graph import build_graph
    from .spec import load

    s = load(args.spec)
    s = s.replace(dims=args.dims, widths=_widths(args.widths))
    path = draw(build_graph(s), args.output, heads=[h.node for h in s.heads])
    out.print(f"wrote {path}")
    return 0


def _is_checkpoint(ref: str) -> bool:
    p = Path(ref)
    return p.suffix in (".pt", ".pth") or (p.is_dir() and (p / "model.pt").exists())


def cmd_predict(args) -> int:
    from .predict import predict_files

    written = predict_files(args.checkpoint, args.inputs, args.output, prune=args.prune,
                            cgm=args.cgm, threshold=args.threshold, argmax=args.argmax,
                            intensity=args.intensity, window=args.window, overlap=args.overlap,
                            device=args.device, progress=not args.no_progress, console=err)
    where = written[0].parent if len(written) > 1 else written[0]
    out.print(f"wrote {len(written)} mask(s) to {where}", highlight=False)
    return 0


def _export_source(args):
    """(inference network, metadata, source, default size) of a spec or a checkpoint."""
    from .checkpoint import build_network, load_checkpoint
    from .export import metadata

    if _is_checkpoint(args.source):
        given = [f"--{k.replace('_', '-')}" for k in ("dims", "in_channels", "num_classes",
                                                       "widths", "backbone", "weights")
                 if getattr(args, k) is not None]
        if given:
            raise SpecError(f"{', '.join(given)} change a spec; the checkpoint {args.source} "
                            "fixes its network", hint="leave them out, or export the spec")
        ck = load_checkpoint(args.source)
        net = ck.network(prune=args.prune, cgm=args.cgm)
        meta = metadata(net, prune=args.prune, threshold=ck.threshold,
                        input_normalisation=ck.input_normalisation, source=str(ck.path))
        return net, meta, str(ck.path), ck.image_size
    from .spec import load

    spec = load(args.source).with_backbone(args.backbone, args.weights).replace(
        dims=args.dims, in_channels=args.in_channels,
                                     num_classes=args.num_classes, widths=_widths(args.widths))
    net = build_network(spec, prune=args.prune, cgm=args.cgm)
    return net, metadata(net, prune=args.prune, source=spec.source), spec.source, ()


def cmd_export(args) -> int:
    from .export import FORMATS, check, export_network

    net, meta, source, trained = _export_source(args)
    m = net.spec.input_multiple
    side = args.size or (max(trained) if trained else (96 if net.spec.dims == 2 else 64))
    size = [-(-int(side) // m) * m] * net.spec.dims
    path = Path(args.output or f"{net.spec.name}" + (f"-L{args.prune}" if args.prune else "")
                + FORMATS[args.format])
    export_network(net, args.format, path, size=size, meta=meta, source=source)
    res = check(net, args.format, path, size=size, level=args.prune, iters=args.iters,
                threads=args.threads)
    if args.json:
        print(json.dumps(res.as_dict(), indent=2))
    else:
        t = Table(title=f"{net.spec.name} -> {path} ({args.format}"
                  + (f", pruned to x_0_{args.prune}" if args.prune else "") + ")",
                  title_justify="left")
        for col in ("level", "params", "file MB", "max |diff| vs eager", "eager ms",
                    "exported ms", "speed-up", "eager wall ms", "exported wall ms"):
            t.add_column(col, justify="right")
        t.add_row(str(args.prune or "full"), f"{res.params:,}", f"{res.size_bytes / 1e6:.2f}",
                  f"{res.max_diff:.2e}", f"{res.eager_ms:.1f}", f"{res.exported_ms:.1f}",
                  f"{res.eager_ms / max(res.exported_ms, 1e-9):.2f}x",
                  f"{res.eager_wall_ms:.1f}", f"{res.exported_wall_ms:.1f}")
        out.print(t)
        out.print(f"latency: median of {args.iters} forwards of one {'x'.join(map(str, size))} "
                  f"image on the CPU, {args.threads} thread(s); ms = CPU time of the calling "
                  "thread, wall = elapsed; outputs compared on shapes "
                  + ", ".join("x".join(map(str, s)) for s in res.shapes), highlight=False)
    if res.max_diff > args.tolerance:
        err.print(f"[red]error[/red] the exported outputs differ from eager by "
                  f"{res.max_diff:.3g} > --tolerance {args.tolerance:g}", highlight=False)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skipdsl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="compile a spec and print its nodes, params, FLOPs, memory")
    c.add_argument("spec", help="zoo name (unetsharp, unetsharp.yaml) or path to a YAML spec")
    c.add_argument("--size", type=int, default=96, help="input side for FLOPs/memory (96)")
    c.add_argument("--code", metavar="FILE", help="write the generated Python forward to FILE")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.add_argument("--prune", type=int, metavar="K", help="the sub-network feeding head x_0_K")
    _add_overrides(c)
    c.set_defaults(func=cmd_compile)

    v = sub.add_parser("validate", help="check specs; exit 2 if any is invalid")
    v.add_argument("specs", nargs="+")
    v.set_defaults(func=cmd_validate)

    ls = sub.add_parser("list", help="list the zoo")
    ls.set_defaults(func=cmd_list)

    d = sub.add_parser("draw", help="draw the grid picture of a spec")
    d.add_argument("spec")
    d.add_argument("-o", "--output", required=True, help="FILE.png or FILE.svg")
    d.add_argument("--dims", type=int, choices=(2, 3))
    d.add_argument("--widths")
    d.set_defaults(func=cmd_draw)

    pr = sub.add_parser("predict", help="apply a checkpoint to images and write their masks")
    pr.add_argument("checkpoint", help="a trial folder (OUT/trials/<key>), its model.pt, or a "
                    "search's pareto/<name>.pt")
    pr.add_argument("inputs", nargs="+", help="PNG/TIFF, .npy or NIfTI files, or folders of them")
    pr.add_argument("-o", "--output", required=True,
                    help="output folder (masks keep the inputs' names and formats), or a file "
                    "for one input")
    pr.add_argument("--prune", type=int, metavar="L", help="the sub-network of head x_0_L")
    pr.add_argument("--cgm", action=argparse.BooleanOptionalAction, default=None,
                    help="CGM gating on/off (default: as trained)")
    pr.add_argument("--threshold", type=float, default=None,
                    help="probability threshold (default: the trial's)")
    pr.add_argument("--argmax", action="store_true",
                    help="multi-class: one label map (1 + the most probable class above the "
                    "threshold, 0 elsewhere) instead of one mask per class")
    pr.add_argument("--intensity", default="auto",
                    help="the dataset's intensity step before the network: auto (default: the "
                    "one the checkpoint records), zscore, zscore-nonzero, none, window:LO,HI")
    pr.add_argument("--window", type=int, default=None,
                    help="sliding-window side for larger images (default: the training size)")
    pr.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (0.25)")
    pr.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    pr.add_argument("--no-progress", action="store_true")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="export a spec or checkpoint to ONNX, TorchScript or "
                        "torch.export, and check it against eager")
    ex.add_argument("source", metavar="SPEC|CHECKPOINT",
                    help="zoo name or YAML spec (random weights), or a checkpoint (trial folder "
                    "or .pt)")
    ex.add_argument("--format", required=True, choices=("onnx", "torchscript", "exported"))
    ex.add_argument("--prune", type=int, metavar="L", help="export the sub-network of head x_0_L")
    ex.add_argument("-o", "--output", help="output file (default NAME[-LL].onnx|.pt|.pt2)")
    ex.add_argument("--size", type=int, help="image side for tracing, the check and the latency "
                    "(default: the training size; 96 for a 2D spec, 64 for 3D)")
    ex.add_argument("--iters", type=int, default=10, help="timed forwards per latency (10)")
    ex.add_argument("--threads", type=int, default=1, help="CPU threads for the latency (1)")
    ex.add_argument("--tolerance", type=float, default=1e-4,
                    help="largest allowed |exported - eager| (1e-4); above it: exit 1")
    ex.add_argument("--json", action="store_true", help="print the check as JSON")
    _add_overrides(ex, deep_supervision=False)
    ex.set_defaults(func=cmd_export)

    nn_ = sub.add_parser("nnunet", help="skip schemes inside nnU-Net v2 (skipdsl nnunet plans)")
    nsub = nn_.add_subparsers(dest="nnunet_command", required=True)
    pl = nsub.add_parser("plans", help="write nnU-Net plans with the network swapped for a "
                         "skip scheme (nnUNet_preprocessed/DATASET/PLANS_SCHEME.json)")
    pl.add_argument("dataset", help="the dataset's id (501) or name (Dataset501_Nuclei)")
    pl.add_argument("--scheme", required=True, help="a zoo name (unet, unetpp, unet3p, "
                    "unetsharp, wunet) or a spec file")
    pl.add_argument("--plans", default="nnUNetPlans", help="the plans to start from "
                    "(default nnUNetPlans)")
    pl.add_argument("--configurations", default=None,
                    help="comma-separated, e.g. 2d,3d_fullres (default: every configuration "
                    "with a PlainConvUNet)")
    pl.add_argument("--project-channels", type=int, default=None,
                    help="UNet 3+'s per-edge projection channels (default: scaled to the "
                    "plan's first width)")
    pl.add_argument("--width-multiplier", type=float, default=None,
                    help="multiply the plan's widths (default 1; wunet: 35/32)")
    pl.set_defaults(func=cmd_nnunet_plans)

    s = sub.add_parser("search", help="search skip topologies (skipdsl search run|report ...)",
                       add_help=False)
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=lambda a: _search(a.rest))
    return p


def cmd_nnunet_plans(args) -> int:
    from .nnunet import parameter_count, build_from_arch, write_plans

    confs = [c for c in (args.configurations or "").split(",") if c] or None
    path, plans = write_plans(args.dataset, args.scheme, plans=args.plans, configurations=confs,
                              options={"project_channels": args.project_channels,
                                       "width_multiplier": args.width_multiplier})
    name = path.stem
    dataset = path.parent.name
    n_in, n_out = 1, 2
    ds_json = path.parent / "dataset.json"  # nnU-Net copies it beside the plans
    if ds_json.is_file():
        d = json.loads(ds_json.read_text())
        n_in, n_out = len(d.get("channel_names", {"0": ""})), len(d.get("labels", {"a": 0, "b": 1}))
    out.print(f"wrote {path}", highlight=False)
    for c, conf in plans["configurations"].items():
        arch = conf.get("architecture") or {}
        if arch.get("network_class_name") != "skipdsl.nnunet.SkipUNet":
            continue
        n = parameter_count(build_from_arch(arch, input_channels=n_in, num_classes=n_out))
        out.print(f"  {c}: {args.scheme} on {arch['arch_kwargs']['n_stages']} stages, "
                  f"{n:,} parameters ({n_in} input channels, {n_out} outputs)",
                  highlight=False)
        out.print(f"  nnUNetv2_train {dataset} {c} FOLD -p {name}", highlight=False)
    return 0


def _search(rest: list[str]) -> int:
    from .search.cli import main as search_main

    return int(search_main(rest) or 0)


def run(argv: list[str] | None = None) -> int:
    """Parse and run; errors in user input become messages, never tracebacks."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SpecError, DataError) as e:
        err.print(f"[red]error[/red] {e}", highlight=False)
        return 2
    except FileNotFoundError as e:
        err.print(f"[red]error[/red] {e}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as e:  # an internal error: say so plainly; SKIPDSL_DEBUG=1 shows the trace
        if os.environ.get("SKIPDSL_DEBUG"):
            raise
        err.print(f"[red]internal error[/red] {type(e).__name__}: {e}\n"
                  "  (this is a bug in skipdsl; rerun with SKIPDSL_DEBUG=1 for the traceback "
                  "and report it)", highlight=False)
        return 1


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
