"""The ``bcfeat`` subcommands for scaling out: the data pack and sharded extraction.

``bcfeat pack``                      write the compact data pack (:mod:`bcfeat.data.pack`)
``bcfeat verify --root PACK``        recompute a pack's sha256s, name every file that differs
``bcfeat extract ... --shard K/N``   extract one shard (:mod:`bcfeat.extraction.shards`)
``bcfeat merge-shards --output F``   check the N shards and write the merged table

:func:`add_commands` registers them on the parser of :mod:`bcfeat.runner.cli`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def _shard_arg(text: str):
    from bcfeat.extraction.shards import Shard

    try:
        return Shard.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix(f"--shard {text}: ")) from None


def add_shard_options(extract: argparse.ArgumentParser) -> None:
    """``--shard K/N`` on ``bcfeat extract``."""
    extract.add_argument("--shard", type=_shard_arg, default=None, metavar="K/N",
                         help="extract only the K-th of N shards of the sorted file list into <output>.shards/ "
                              "(resumable); the last shard to finish writes the merged table. Under torchrun "
                              "the shard is RANK+1/WORLD_SIZE")


def add_commands(sub) -> None:
    """Register ``pack`` and ``merge-shards``."""
    from bcfeat.data.pack import PackConfig
    from bcfeat.runner.exit_codes import float_between, int_at_least

    defaults = PackConfig()
    p = sub.add_parser("pack", help="write the compact data pack: the study's images at the detector's "
                                    "resolution, re-encoded, with a sha256 manifest (a data root for any stage)")
    p.add_argument("--root", default=None, help="data root to pack (default: resolved as usual)")
    p.add_argument("--output", default=None,
                   help="pack folder to write (default: bcfeat_pack beside the checkout, never inside it)")
    p.add_argument("--sites", default=",".join(defaults.sites), help="comma-separated datasets (default: the study's four)")
    p.add_argument("--label-space", default=defaults.label_space, choices=["coarse5", "common13"])
    p.add_argument("--long-side", type=int_at_least(16), default=defaults.long_side,
                   help="px: each site's median image gets this long side, never enlarged (default: the detector's input)")
    p.add_argument("--quality", type=int_at_least(1), default=defaults.quality, help="JPEG quality, 1-95")
    p.add_argument("--subsampling", default=defaults.subsampling, choices=["4:4:4", "4:2:2", "4:2:0"])
    p.add_argument("--max-mib", type=float_between(0.0, 1e6), default=defaults.max_mib,
                   help="refuse a pack larger than this (MiB)")
    p.add_argument("--masks", default=None, help="expert masks folder (default: masks/ beside the data root)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pack (once the new one is complete)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pack)

    m = sub.add_parser("merge-shards", help="check that all N shards of `bcfeat extract --shard` are present and "
                                            "alike, and write the merged table")
    m.add_argument("--output", required=True, help="the table the shards were made for (.csv or .parquet)")
    m.add_argument("--shards", type=int_at_least(1), default=None, help="the N expected (default: from the files)")
    m.add_argument("--model", default=None, help="model file (only a site-standardised AE-CFE model needs it; "
                                                 "default: the path the shards recorded)")
    m.set_defaults(func=cmd_merge_shards)


def cmd_pack(args: argparse.Namespace) -> int:
    from bcfeat.data.pack import PackConfig, write_pack

    sites = tuple(s.strip() for s in args.sites.split(",") if s.strip())
    config = PackConfig(sites=sites, label_space=args.label_space, long_side=args.long_side, quality=args.quality,
                        subsampling=args.subsampling, max_mib=args.max_mib)
    summary = write_pack(args.output, args.root, config, masks_root=args.masks, overwrite=args.overwrite,
                         progress=not args.no_progress)
    print(summary.summary())
    return 0


def verify_if_pack(args: argparse.Namespace) -> int | None:
    """``bcfeat verify`` on a pack (``--root`` or ``BCFEAT_DATA_ROOT`` naming one): its exit status, else None."""
    from bcfeat.data.pack import pack_of, verify_pack
    from bcfeat.data.root import ENV_VAR

    pack = pack_of(args.root if args.root is not None else os.environ.get(ENV_VAR))
    if pack is None:
        return None
    report = verify_pack(pack)
    print(report.summary())
    return 0 if report.ok else 1


def _write_merged(output: Path, n_shards: int | None = None, model: str | None = None) -> int:
    from bcfeat.extraction.shards import merge_shards
    from bcfeat.atomic_io import save_table
    from bcfeat.runner.cli import check_output_path, report_skipped

    out = check_output_path(output)
    table, skipped = merge_shards(out, n_shards, model)
    save_table(table, out)
    report_skipped("merge-shards", len(table), out, skipped)
    return 0


def cmd_merge_shards(args: argparse.Namespace) -> int:
    return _write_merged(Path(args.output), args.shards, args.model)


def run_extract_shard(args: argparse.Namespace, out: Path) -> int | None:
    """``bcfeat extract`` with ``--shard`` (or under torchrun): its exit status, else None (a plain run)."""
    from bcfeat.extraction.shards import Shard, all_shards_present, extract_shard

    shard = args.shard or Shard.from_env()
    if shard is None:
        return None
    device = getattr(args, "device", None)
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun: one GPU per process
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    path = extract_shard(args.model, args.input, out, shard, layout=args.layout, batch_size=args.batch_size,
                         progress=not args.no_progress, device=device)
    print(f"bcfeat extract: shard {shard} -> {path}")
    if all_shards_present(out):  # the last shard to finish merges (a merge twice writes the same table)
        return _write_merged(out, shard.count, args.model)
    print(f"bcfeat extract: waiting for the other shards; then `bcfeat merge-shards --output {out}`", file=sys.stderr)
    return 0
