"""Reproducible benchmarks behind docs/benchmarks.md: one command per table.

Every accuracy number comes from the bundle's own configs run as a user runs them
(``python -m monai.bundle run training ...`` then ``... evaluating ...``), so what is measured is what
ships. Results are appended as JSON lines to ``<out>/results.jsonl`` (one line per run, with the exact
command), and ``report`` turns them into the markdown tables and figures of docs/benchmarks.md.

    python scripts/benchmark.py accuracy --data ../shared/data/monuseg --out bench/accuracy --seeds 0 1
    python scripts/benchmark.py ct --ct-dir ../shared/data/ct_lung --out bench/ct
    python scripts/benchmark.py label-efficiency --data ../shared/data/monuseg --out bench/label_efficiency
    python scripts/benchmark.py speed --out bench/speed
    python scripts/benchmark.py text-encoders --out bench/text_encoders
    python scripts/benchmark.py figure --results bench/accuracy --runs lcpdn_seed0 unet_seed0 --datalist bench/accuracy/datalist.json
    python scripts/benchmark.py tta --results bench/accuracy --runs lcpdn_seed0 unet_seed0 --out bench/tta
    python scripts/benchmark.py report --out bench --doc-figures docs/figures

``--smoke`` runs any table on tiny settings (tests use it). The work is in ``scripts/bench_runs.py``
(configurations, runs, results), ``bench_accuracy.py``, ``bench_speed.py``, ``bench_steering_toy.py`` and ``bench_report.py``
(tables and figures); this file is the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import bench_accuracy, bench_report, bench_speed, bench_steering_toy  # noqa: E402
from scripts.bench_runs import IMAGE_ONLY, PIPELINES, VARIANTS  # noqa: E402
from scripts.common import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="table", required=True)

    def common(q: argparse.ArgumentParser, out: str) -> None:
        q.add_argument("--out", default=out, help="results folder (results.jsonl is appended)")
        q.add_argument("--smoke", action="store_true", help="tiny settings on the committed test fixtures")
        q.add_argument("--set", action="extend", nargs="+", default=[], help="extra config options key=value for every run (repeatable)")
        q.add_argument("--tag", default="", help="suffix of the run names (e.g. _t0 for a probe with --set timesteps=[0])")

    def pretraining(q: argparse.ArgumentParser, splits: list[str]) -> None:
        q.add_argument("--pretrain-epochs", type=int, default=300)
        q.add_argument("--pretrain-splits", nargs="+", default=splits, help="datalist splits whose images (no labels) pretrain")
        q.add_argument("--backbone-ckpt", default=None, help="reuse a pretrained backbone instead of pretraining")

    q = sub.add_parser("accuracy", help="MoNuSeg: LCPDN, UNet baseline, ablations, TextDiff-style head")
    common(q, "bench/accuracy")
    q.add_argument("--data", help="LViT-layout MoNuSeg folder")
    q.add_argument("--variants", nargs="+", default=["lcpdn_pretrained", *VARIANTS], choices=["lcpdn_pretrained", *VARIANTS],
                   help="lcpdn_pretrained: the default config on a stage-1 pretrained backbone")
    q.add_argument("--seeds", nargs="+", type=int, default=[0])
    q.add_argument("--epochs", type=int, default=50)
    q.add_argument("--unet-lr", type=float, default=None, help="learning rate of the UNet baseline (default: as LCPDN)")
    pretraining(q, splits=["training"])
    q = sub.add_parser("ct", help="CT slices: train on lung2, test on lung1")
    common(q, "bench/ct")
    q.add_argument("--ct-dir", help="folder with lung{1,2}_{image,label}.nrrd")
    q.add_argument("--variants", nargs="+", default=["lcpdn", "unet"], choices=list(VARIANTS))
    q.add_argument("--seeds", nargs="+", type=int, default=[0])
    q.add_argument("--epochs", type=int, default=40)
    q.add_argument("--negative-every", type=int, default=3, help="keep every n-th lesion-free training slice")
    q.add_argument("--unet-lr", type=float, default=None)
    q = sub.add_parser("label-efficiency", help="few labelled images, with and without stage-1 pretraining")
    common(q, "bench/label_efficiency")
    q.add_argument("--data", help="LViT-layout MoNuSeg folder")
    q.add_argument("--train-items", type=int, default=5)
    q.add_argument("--subset-seed", type=int, default=0)
    q.add_argument("--seeds", nargs="+", type=int, default=[0])
    q.add_argument("--epochs", type=int, default=100)
    q.add_argument("--variants", nargs="+", default=["lcpdn", "unet", "lcpdn_pretrained"],
                   choices=["lcpdn_pretrained", *VARIANTS],
                   help="lcpdn_pretrained: the default config on a stage-1 pretrained backbone")
    q.add_argument("--unet-lr", type=float, default=None)
    pretraining(q, splits=["training", "validation", "testing"])
    q = sub.add_parser("lesions", help="image / mask folders (CXR, CT): LCPDN per sentence source, and the UNet")
    common(q, "bench/lesions")
    q.add_argument("--name", default="cxr", help="prefix of the run names (cxr, ct)")
    q.add_argument("--images", required=True)
    q.add_argument("--masks", required=True)
    q.add_argument("--lungs", default=None)
    q.add_argument("--csv", default=None)
    q.add_argument("--group-column", default="patientid")
    q.add_argument("--modality", default="cxr", choices=["cxr", "ct"])
    q.add_argument("--orientation", default="standard")
    q.add_argument("--val-fraction", type=float, default=0.3)
    q.add_argument("--split-seed", type=int, default=0)
    q.add_argument("--text-sources", nargs="+", default=["generated", "constant"], choices=["generated", "constant", "notes"])
    q.add_argument("--variants", nargs="+", default=["lcpdn", "unet"],
                   choices=["lcpdn_pretrained", *[v for v in VARIANTS if v.startswith("lcpdn") or v in IMAGE_ONLY]],
                   help="lcpdn (and its variants): one run per text source; lcpdn_pretrained: the default on a stage-1 "
                        "backbone (--pretrain-folder); unet, flexunet_lite0: one run on the first source's split")
    q.add_argument("--seeds", nargs="+", type=int, default=[0])
    q.add_argument("--epochs", type=int, default=40)
    q.add_argument("--train-items", type=int, default=0, help="keep this many training items (0: all)")
    q.add_argument("--subset-seed", type=int, default=0)
    q.add_argument("--pretrain-folder", default=None, help="unlabelled images for stage 1 (variant lcpdn_pretrained)")
    pretraining(q, splits=["training"])
    q = sub.add_parser("steering", help="swap left/right (upper/lower) in validation sentences: does the mask follow?")
    q.add_argument("--results", required=True, help="results folder holding the run")
    q.add_argument("--run", required=True)
    q.add_argument("--datalist", required=True)
    q.add_argument("--out", default="bench/steering")
    q = sub.add_parser("steering-toy", help="synthetic referring task: can the network follow the location words at all?")
    common(q, "bench/steering_toy")
    q.add_argument("--steps", type=int, default=1500)
    q.add_argument("--batch", type=int, default=4)
    q.add_argument("--size", type=int, default=64, help="image size (px)")
    q.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("label-resize", help="one run's validation predictions scored against nearest / bilinear / original-size masks")
    q.add_argument("--results", required=True, help="results folder holding the run")
    q.add_argument("--run", required=True)
    q.add_argument("--datalist", required=True)
    q.add_argument("--out", default="bench/label_resize")
    q = sub.add_parser("tta", help="recorded runs re-evaluated with test-time augmentation (text kept true) off and on")
    q.add_argument("--results", required=True, help="results folder holding the runs")
    q.add_argument("--runs", nargs="+", required=True)
    q.add_argument("--out", default="bench/tta")
    q = sub.add_parser("start", help="per-epoch foreground probability and validation Dice from the first step (all-background start?)")
    common(q, "bench/start")
    q.add_argument("--datalist", help="datalist with training and validation splits")
    q.add_argument("--modality", default="ct", choices=["he", "cxr", "ct"])
    q.add_argument("--variant", default="lcpdn", choices=["lcpdn", "unet"])
    q.add_argument("--size", type=int, default=128, help="image size (px)")
    q.add_argument("--epochs", type=int, default=6)
    q.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("speed", help="training images/s, inference latency and peak RSS per pipeline")
    common(q, "bench/speed")
    q.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    q.add_argument("--steps", type=int, default=3)
    q.add_argument("--batch", type=int, default=4)
    q.add_argument("--repeats", type=int, default=5)
    q = sub.add_parser("_speed-worker")
    q.add_argument("--pipeline", required=True)
    q.add_argument("--steps", type=int, default=3)
    q.add_argument("--batch", type=int, default=4)
    q.add_argument("--repeats", type=int, default=5)
    q.add_argument("--smoke", action="store_true")
    q.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (scripts/gpu_check.py runs the workers on CUDA)")
    q = sub.add_parser("text-encoders", help="BERT-base vs ModernBERT-base encoding time, cache on / off")
    common(q, "bench/text_encoders")
    q.add_argument("--batch", type=int, default=8)
    q.add_argument("--batches", type=int, default=20)
    q = sub.add_parser("figure", help="predictions vs ground truth of trained runs on validation images")
    q.add_argument("--results", required=True, help="results folder holding the runs (e.g. bench/accuracy)")
    q.add_argument("--runs", nargs="+", required=True, help="run names (e.g. lcpdn_seed0 unet_seed0)")
    q.add_argument("--datalist", required=True)
    q.add_argument("--images", type=int, default=3)
    q.add_argument("--figure", default="docs/figures/predictions.png")
    q = sub.add_parser("report", help="markdown tables (and the training-curve figure) from the results")
    q.add_argument("--out", default="bench")
    q.add_argument("--doc-figures", default=None, help="folder for figures (e.g. docs/figures)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table in ("accuracy", "label-efficiency") and not args.smoke and not args.data:
        raise SystemExit("ERROR: --data (an LViT-layout folder) is required without --smoke")
    if args.table == "start" and not args.smoke and not args.datalist:
        raise SystemExit("ERROR: --datalist is required without --smoke")
    if args.table == "ct" and not args.smoke and not args.ct_dir:
        raise SystemExit("ERROR: --ct-dir is required without --smoke")
    action = {
        "accuracy": bench_accuracy.table_accuracy,
        "ct": bench_accuracy.table_ct,
        "label-efficiency": bench_accuracy.table_label_efficiency,
        "speed": bench_speed.table_speed,
        "_speed-worker": bench_speed.speed_worker,
        "text-encoders": bench_speed.table_text_encoders,
        "figure": bench_report.table_figure,
        "lesions": bench_accuracy.table_lesions,
        "steering": bench_accuracy.table_steering,
        "steering-toy": bench_steering_toy.table_steering_toy,
        "label-resize": bench_accuracy.table_label_resize,
        "tta": bench_accuracy.table_tta,
        "start": bench_accuracy.table_start,
        "report": bench_report.table_report,
    }[args.table]
    return run_cli(lambda: action(args))


if __name__ == "__main__":
    sys.exit(main())
