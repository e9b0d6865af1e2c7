"""The ``bcfeat`` command line: data download, verification, scanning and splits.

``bcfeat download NAME``  fetch a public dataset archive (resumable, atomic)
``bcfeat verify``         check a data root against the manifests (exit 1 on problems)
``bcfeat scan NAME``      count the samples per label and the exclusions
``bcfeat splits NAME``    make (or check) the stored stratified split of a dataset
``bcfeat pack``, ``bcfeat merge-shards``, ``bcfeat extract --shard K/N``: scaling out (the data pack, sharded extraction)

Each subcommand is a small function over the :mod:`bcfeat.data` API. Exit status
(:mod:`bcfeat.runner.exit_codes`): 0 success, 1 a problem found in the data or an unexpected
error (traceback with ``--verbose``), 2 a usage or input error (one line on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bcfeat.atomic_io import TABLE_FORMATS, save_table
from bcfeat.runner.exit_codes import one_line


def _cmd_download(args: argparse.Namespace) -> int:
    from bcfeat.data.download import SOURCES, download_dataset

    if args.sha256 and not args.url:
        print("bcfeat download: --sha256 needs --url (the built-in archives publish no digest)", file=sys.stderr)
        return 2
    target = download_dataset(
        args.name, args.dest, url=args.url, sha256=args.sha256, progress=not args.no_progress, force=args.force
    )
    print(f"{args.name}: in place at {target}")
    if SOURCES[args.name].note:
        print(f"note: {SOURCES[args.name].note}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from bcfeat.data.manifest import available_manifests, verify_dataset
    from bcfeat.data.registry import DatasetNotFound
    from bcfeat.data.root import resolve_data_root


    if (status := verify_if_pack(args)) is not None:  # a data pack is checked against its own manifest
        return status
    root = resolve_data_root(args.root)
    names = args.dataset or available_manifests(args.manifests)
    if not names:
        print(f"bcfeat verify: no manifests found in {args.manifests or 'the shared manifests folder'}", file=sys.stderr)
        return 2
    problems = 0
    for name in names:
        try:
            report = verify_dataset(name, root, manifest_dir=args.manifests, fast=args.fast)
        except DatasetNotFound as missing:  # one absent dataset must not hide the state of the others
            print(f"{name}: MISSING: {one_line(missing)}")
            problems += 1
            continue
        print(report.summary())
        problems += not report.ok
    print(f"verified {len(names)} dataset(s) under {root}: {'all OK' if not problems else f'{problems} with problems'}")
    return 1 if problems else 0


def _cmd_scan(args: argparse.Namespace) -> int:
    from bcfeat.data.registry import scan_dataset, scan_folder

    space = None if args.label_space == "all" else args.label_space
    if args.layout:
        result = scan_folder(args.name, args.layout, space)
    else:
        result = scan_dataset(args.name, args.root, space)
    print(result.summary())
    return 0


def _cmd_splits(args: argparse.Namespace) -> int:
    from bcfeat.data.splits import SplitConfig, make_or_load_splits, splits_path

    space = None if args.label_space == "all" else args.label_space
    df = make_or_load_splits(
        args.name,
        kind=args.kind,
        seed=args.seed,
        test_size=args.test_size,
        n_folds=args.n_folds,
        label_space=space,
        root=args.root,
        out_dir=args.out_dir,
        overwrite=args.overwrite,
    )
    cfg = SplitConfig(args.kind, args.seed, args.test_size, args.n_folds)
    print(f"{splits_path(args.name, space, cfg, args.out_dir)}")
    print(df.groupby(["label", cfg.column]).size().unstack(fill_value=0).to_string())
    return 0


def check_output_path(output: str | os.PathLike, formats: Sequence[str] = TABLE_FORMATS,
                      example: str = "features", option: str = "--output") -> Path:
    """An ``--output`` checked before any work (format, folder, writability): the table of
    ``bcfeat extract`` and ``classify``, or (``formats=(".pt",)``) the model file of
    ``train-classifier``.

    Raises
    ------
    ValueError
        Unknown extension, a folder, or a path below a file; no file is created.
    """
    out = Path(output)
    fmt = out.suffix.lower()
    if fmt not in formats:
        raise ValueError(f"{option} {out}: unknown {'table' if formats == TABLE_FORMATS else 'file'} format "
                         f"{out.suffix or '(no extension)'!r}; use one of {', '.join(formats)}")
    if len(out.name.encode("utf-8", "surrogateescape")) > 255:
        raise ValueError(f"{option}: the file name is {len(out.name.encode())} bytes long; a file system allows 255")
    if out.is_dir():
        raise ValueError(f"{option} {out} is a folder; give a file name such as {out / (example + out.suffix)}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {out}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise ValueError(f"{option} {out}: folder {parent} is not writable")
            break
    if fmt == ".parquet":
        try:
            import pyarrow  # noqa: F401  (pandas' parquet engine, pinned in the lock)
        except ImportError:
            raise ValueError(f"{option} .parquet needs pyarrow (in requirements.lock); install it or write .csv") from None
    return out


def report_skipped(command: str, n_rows: int, out: Path, skipped) -> None:
    print(f"bcfeat {command}: {n_rows} images -> {out}; {len(skipped)} file(s) skipped" + (":" if skipped else ""))
    for path, reason in skipped:  # every file without a row, named with the reason
        print(f"  skipped {path}: {reason}")


def _cmd_extract(args: argparse.Namespace) -> int:
    from bcfeat.extractors import open_extractor

    out = check_output_path(args.output)  # refuse a bad --output before minutes of extraction
    if (status := run_extract_shard(args, out)) is not None:  # --shard K/N, or under torchrun
        return status
    extractor = open_extractor(args.model)  # either kind of model file, read once
    table, skipped = extractor.extract_folder(args.input, layout=args.layout, batch_size=args.batch_size,
                                              progress=not args.no_progress, device=args.device)
    save_table(table, out)  # creates the folder; never leaves half a table
    report_skipped("extract", len(table), out, skipped)
    return 0


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    from bcfeat.crosslab.folders import train_classifier

    out = check_output_path(args.output, (".pt",), "classifier")  # before the (long) measuring
    path, counts, skipped = train_classifier(args.model, args.labelled, out, C=args.C, groups=args.groups,
                                             corrections=args.corrections, corrections_folder=args.corrections_folder)
    print(f"bcfeat train-classifier: {int(counts.sum())} cells of {len(counts)} classes "
          f"({', '.join(f'{k} {v}' for k, v in counts.items())}) -> {path}; {len(skipped)} file(s) skipped"
          + (":" if skipped else ""))
    for p, reason in skipped:
        print(f"  skipped {p}: {reason}")
    return 0


def _print_estimate(estimate: dict) -> None:
    """The call's estimated accuracy, where the model file's line gave one (:func:`call_calibrated`)."""
    if estimate:
        from bcfeat.crosslab.folders import estimate_summary

        print(f"bcfeat classify: estimated accuracy of this call {estimate_summary(estimate)}")


def _cmd_classify(args: argparse.Namespace) -> int:
    from bcfeat.crosslab.folders import classify_folder, estimate_summary

    out = check_output_path(args.output)
    report = None if args.report is None else check_output_path(args.report, (".html",), "report", "--report")
    if (status := run_classify_shard(args, out, report)) is not None:  # --shard K/N, or under torchrun
        return status
    thumbnails: list | None = None if report is None else []
    warnings: list[str] = []
    estimate: dict = {}
    table, skipped = classify_folder(args.model, args.input, thumbnails=thumbnails, warning_list=warnings,
                                     usual_upper=args.usual_upper, estimate=estimate)
    save_table(table, out)  # creates the folder; never leaves half a table
    report_skipped("classify", len(table), out, skipped)
    _print_estimate(estimate)
    if report is not None:
        from bcfeat.crosslab.review_report import write_report

        classes = [c[len("p_"):] for c in table.columns if c.startswith("p_")]  # the classifier's order
        write_report(report, table, thumbnails, classes, title=f"bcfeat review: {Path(args.input).name}",
                     skipped=skipped, warnings=warnings,
                     details={"folder": str(Path(args.input).resolve()), "model file": str(Path(args.model).resolve()),
                              "table": str(out),
                              **({"estimated accuracy of this call": estimate_summary(estimate)} if estimate else {})})
        print(f"bcfeat classify: review report -> {report}")
    return 0


def _usual_upper_arg(text: str) -> dict[str, float]:
    from bcfeat.crosslab.differential_check import parse_usual_upper

    try:
        return parse_usual_upper(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _usual_upper_default() -> str:
    from bcfeat.crosslab.differential_check import USUAL_UPPER_SHARE

    return ", ".join(f"{name}={share:.0%}" for name, share in USUAL_UPPER_SHARE.items()).replace("%", "%%")  # argparse help


def _http_url(text: str) -> str:
    import urllib.parse

    if urllib.parse.urlsplit(text).scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text


def build_parser() -> argparse.ArgumentParser:
    from bcfeat.data.download import SOURCES
    from bcfeat.data.registry import DATASETS, LAYOUTS
    from bcfeat.runner.arguments import device_name, float_between, int_at_least

    p = argparse.ArgumentParser(prog="bcfeat", description="bcfeat: AE-CFE white blood cell features, reproducibly.")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log debug messages too; show the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("download", help="download a public dataset archive into the data folder")
    d.add_argument("name", choices=sorted(SOURCES), help="dataset name")
    d.add_argument("--dest", default=None, help="data folder to fill (default: <repo>/data)")
    d.add_argument("--url", default=None, type=_http_url,
                   help="http(s) archive URL to use instead of the built-in one (a mirror)")
    d.add_argument("--sha256", default=None, help="expected sha256 of the archive given by --url")
    d.add_argument("--force", action="store_true",
                   help="fetch the archive again (never from the cache) and replace the dataset if in place")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_download)

    v = sub.add_parser("verify", help="check a data root against the manifests (sha256 per file)")
    v.add_argument("--root", default=None, help="data root (default: resolved as usual)")
    v.add_argument("--dataset", action="append", choices=sorted(DATASETS), help="only this dataset (repeatable)")
    v.add_argument("--fast", action="store_true", help="compare file sizes only, no hashing")
    v.add_argument("--manifests", default=None, help="folder of <dataset>.csv manifests (default: the shared one)")
    v.set_defaults(func=_cmd_verify)

    s = sub.add_parser("scan", help="count the samples of a dataset per label, with exclusions")
    s.add_argument("name", help="dataset name, or a folder when --layout is given")
    s.add_argument("--root", default=None, help="data root (default: resolved as usual)")
    s.add_argument("--label-space", default="coarse5", choices=["coarse5", "common13", "all"])
    s.add_argument("--layout", default=None, choices=sorted(LAYOUTS), help="scan NAME as a folder with this layout")
    s.set_defaults(func=_cmd_scan)

    t = sub.add_parser("splits", help="make or check the stored stratified split of a dataset")
    t.add_argument("name", choices=sorted(DATASETS))
    t.add_argument("--root", default=None)
    t.add_argument("--label-space", default="coarse5", choices=["coarse5", "common13", "all"])
    t.add_argument("--kind", default="holdout", choices=["holdout", "kfold"])
    t.add_argument("--seed", type=int_at_least(0), default=0)
    t.add_argument("--test-size", type=float_between(0.0, 1.0), default=0.2, help="fraction in (0, 1)")
    t.add_argument("--n-folds", type=int_at_least(2), default=5)
    t.add_argument("--out-dir", default=None, help="folder of split CSVs (default: book/results/splits)")
    t.add_argument("--overwrite", action="store_true", help="remake the split even if a file exists")
    t.set_defaults(func=_cmd_splits)

    e = sub.add_parser("extract", help="the features of a folder of images, one row per file "
                                       "(cross-lab cell features or the 50-d AE-CFE code, by model file)")
    e.add_argument("model", help="a cross-lab model file (artifacts/<profile>/crosslab_model.pt) or an AE-CFE "
                                 "model file (artifacts/<profile>/aecfe_model.pt)")
    e.add_argument("input", help="folder of images")
    e.add_argument("--layout", default="files", choices=["files", *sorted(LAYOUTS)],
                   help="'files': every image below the folder, no labels; else a dataset layout (labels kept)")
    e.add_argument("--output", required=True, help="table to write (.csv or .parquet)")
    e.add_argument("--batch-size", type=int_at_least(1), default=64, help="images per step (>= 1)")
    e.add_argument("--device", type=device_name, default=None, help="auto, cpu, cuda, cuda:1 ... (default: the CPU, the reference "
                   "path); on CUDA the batched path runs each step in one pass: give --batch-size 512")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_shard_options(e)
    e.set_defaults(func=_cmd_extract)

    tc = sub.add_parser("train-classifier", help="train a classifier on labelled folders <folder>/<class>/<image> "
                                                  "and write it with the cross-lab model to one file")
    tc.add_argument("model", help="cross-lab model file (artifacts/<profile>/crosslab_model.pt)")
    tc.add_argument("labelled", help="folder of class folders, <folder>/<class>/<image>")
    tc.add_argument("--output", required=True, help="model + classifier file to write (.pt)")
    tc.add_argument("--C", type=float_between(1e-6, 1e6), default=None,
                    help="inverse L2 strength of the linear model (default: the model file's study setting)")
    tc.add_argument("--groups", default=None, help="feature set: all, no_texture, no_fine_texture or no_<group> "
                                                   "(default: the model file's study setting, with the features it leaves out)")
    tc.add_argument("--corrections", default=None, help="relpath,label CSV downloaded from a review report: "
                                                        "reviewed cells added to the labelled ones")
    tc.add_argument("--corrections-folder", default=None, help="the folder the report classified (the "
                                                               "corrections' relpaths are below it; measured "
                                                               "again: the corrections are read in its statistics)")
    tc.set_defaults(func=_cmd_train_classifier)

    c = sub.add_parser("classify", help="classify a folder of one lab's cells to a table (class, probability)")
    c.add_argument("model", help="model + classifier file written by `bcfeat train-classifier` or the study")
    c.add_argument("input", help="folder of one lab's images (at least 10)")
    c.add_argument("--output", required=True, help="table to write (.csv or .parquet)")
    c.add_argument("--report", default=None, help="also write a review page (.html): the differential and a "
                                                  "gallery per class whose corrections download as a CSV")
    c.add_argument("--shard", type=_shard_arg, default=None, metavar="K/N",
                   help="measure only the K-th of N shards of the sorted file list into <output>.shards/ "
                        "(resumable); the last shard to finish classifies the whole lab and writes the table. "
                        "Under torchrun the shard is RANK+1/WORLD_SIZE")
    c.add_argument("--usual-upper", type=_usual_upper_arg, default=None, metavar="CLASS=SHARE,...",
                   help="the lab's own upper ends of a blood differential (e.g. basophil=3%%,eosinophil=0.08); a call "
                        "whose predicted share of a class lies above its end with 95%% confidence is warned about "
                        f"(default: {_usual_upper_default()})")
    c.set_defaults(func=_cmd_classify)
    add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see :mod:`bcfeat.runner.exit_codes`)."""
    from bcfeat.runner.exit_codes import configure_logging, run_command

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    return run_command(f"bcfeat {args.command}", lambda: args.func(args), verbose=args.verbose)


# ----------------------------------------------------------------------------- scaling out: the data pack, shards


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
    from bcfeat.runner.arguments import float_between, int_at_least

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

    b = sub.add_parser("crop-boxes", help="cut one crop per labelled white cell from smear photographs with YOLO "
                                          "boxes (<set>/images + <set>/labels) into <output>/<class>/<image>")
    b.add_argument("images", nargs="+", help="folders of frames, each with a sibling labels/ folder")
    b.add_argument("--output", required=True, help="folder to write (refused if it exists); outside the checkout")
    b.add_argument("--classes", default="neutrophil,eosinophil,basophil,lymphocyte,monocyte",
                   help="class names of ids 0, 1, ... (default: the Chulalongkorn set's)")
    b.add_argument("--margin", type=float_between(1.0, 6.0), default=2.2,
                   help="crop side in box sides (default 2.2: the cell fills about a sixth of the crop)")
    b.set_defaults(func=cmd_crop_boxes)


def cmd_crop_boxes(args: argparse.Namespace) -> int:
    from bcfeat.data.box_crops import crop_boxes

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if len(classes) < 2:
        raise ValueError(f"--classes needs two or more names, got {args.classes!r}")
    table = crop_boxes(args.images, args.output, classes, args.margin)
    counts = table["label"].value_counts().sort_index()
    print(f"bcfeat crop-boxes: {len(table)} crops ({', '.join(f'{k} {v}' for k, v in counts.items())}) -> {args.output}")
    return 0


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
    from bcfeat.data.pack import verify_pack
    from bcfeat.data.root import pack_of
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


def run_classify_shard(args: argparse.Namespace, out: Path, report: Path | None) -> int | None:
    """``bcfeat classify`` with ``--shard`` (or under torchrun): its exit status, else None (a plain run).

    Each shard measures its files into ``<output>.shards/`` as ``bcfeat extract --shard`` does; the
    lab's statistics need every cell, so the last shard to finish merges the features and
    classifies them all at once: the table is the one a single ``classify`` writes."""
    from bcfeat.crosslab.site_statistics import MIN_SITE_CELLS
    from bcfeat.crosslab.folders import _classifier_model, _folder_files, classify_features
    from bcfeat.extraction.shards import Shard, all_shards_present, extract_shard, merge_shards

    shard = args.shard or Shard.from_env()
    if shard is None:
        return None
    if report is not None:
        raise ValueError("--report needs every cell's crop in one process: classify without --shard for a report")
    _classifier_model(args.model)  # a file without classifier fails before any work
    n_files = len(_folder_files(args.input, labelled=False)[0])
    if n_files < MIN_SITE_CELLS:
        raise ValueError(f"{n_files} image file(s) below {args.input}; the model standardises a lab's cells with "
                         f"their own statistics and needs at least {MIN_SITE_CELLS}")
    path = extract_shard(args.model, args.input, out, shard, layout="files")
    print(f"bcfeat classify: shard {shard} -> {path}")
    if not all_shards_present(out):
        print(f"bcfeat classify: waiting for the other shards; the last one to finish writes {out}", file=sys.stderr)
        return 0
    features, skipped = merge_shards(out, shard.count, args.model, cell_found=True)
    estimate: dict = {}
    table = classify_features(args.model, features, args.input, usual_upper=getattr(args, "usual_upper", None),
                              estimate=estimate)
    save_table(table, out)
    report_skipped("classify", len(table), out, skipped)
    _print_estimate(estimate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
