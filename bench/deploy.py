"""Deployment speed: batch-1 latency (median, p90) and batch-N throughput of one SSD in PyTorch eager (its
preprocessing, network and postprocessing also timed apart), TorchScript and onnxruntime, each export's
whole pipeline being one graph; on CUDA too when there is one (eager in fp32 and fp16 autocast, images
already on the GPU, each call synchronised); then predict.py's path (read, infer, draw, write) on BCCD
photos against the eval call on the same images already decoded.

Targets: onnxruntime's batch-1 latency of SSD300-VGG16 on the CPU at most PyTorch eager's; predicting a
folder at least 0.8x the eval call's images/s.

    python bench/deploy.py [--layout SSD300-VGG16] [--checkpoint best.pt] [--batch 8] [--repeat 20] [--images 100]

BCCD_ROOT moves the photos (default ../shared/data/BCCD_Dataset/BCCD).
"""

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from common import LAYOUTS, REPO, VOC_CLASSES, build_model, device_name
from detection.data.samples import read_pixels
from detection.data.sources import ImageFiles, collate_files
from detection.prediction import PredictionWriter, predict_batches
from detection.models.deployment import ExportedDetector, export_onnx, export_torchscript
from detection.cli.assembly import model_from_checkpoint

BCCD = Path(os.environ.get("BCCD_ROOT", REPO.parent / "shared" / "data" / "BCCD_Dataset" / "BCCD")) / "JPEGImages"


def timings(call, repeat: int) -> list[float]:
    call()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def latency(times: list[float]) -> str:
    ordered = sorted(times)
    return f"median {1000 * statistics.median(ordered):7.1f} ms  p90 {1000 * ordered[int(0.9 * (len(ordered) - 1))]:7.1f} ms"


def eager_parts(model, image: torch.Tensor, repeat: int) -> str:
    """The eager eval call's three parts, timed apart (medians)."""
    with torch.no_grad():
        batch = model.preprocess([image])
        loc, cls = model.head(model.features(batch))
        parts = {"preprocess": lambda: model.preprocess([image]), "network": lambda: model.head(model.features(batch)),
                 "postprocess": lambda: model.postprocess(loc, cls, [tuple(image.shape[-2:])])}
        return "  ".join(f"{name} {1000 * statistics.median(timings(call, repeat)):.1f} ms"
                         for name, call in parts.items())


def on_cuda(model, image: torch.Tensor, args) -> None:
    """Eager batch-1 latency and batch-N throughput on CUDA, fp32 and fp16 autocast, as rows."""
    device = torch.device("cuda")
    model = copy.deepcopy(model).to(device)
    image = image.to(device)
    for precision, dtype in (("fp32", None), ("fp16", torch.float16)):
        def call(images):
            with torch.no_grad(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                model(images)
            torch.cuda.synchronize()

        single = timings(lambda: call([image]), args.repeat)
        throughput = args.batch / statistics.median(timings(lambda: call([image] * args.batch), max(3, args.repeat // 4)))
        print(f"  {'eager ' + precision:<14} batch 1: {latency(single)}   batch {args.batch}: {throughput:6.1f} images/s"
              f"   on {device_name(device)}")


def folder_against_eval_call(model, class_names: list[str], count: int) -> str:
    """predict.py's path over `count` BCCD photos (read, infer, draw, write, in the main process) against
    the eval call alone on the same images already decoded, both batch 8."""
    paths = sorted(BCCD.glob("*.jpg"))[:count]
    images = [torch.from_numpy(read_pixels(path)).permute(2, 0, 1) for path in paths]
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(images), 8):
            model(images[first:first + 8])
    eval_speed = len(images) / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()  # the files are read inside, as predict.py reads them
        loader = DataLoader(ImageFiles(paths), batch_size=8, num_workers=0, collate_fn=collate_files)
        writer = PredictionWriter(Path(folder), class_names, score_threshold=0.3)
        predict_batches(model, loader, writer, device=torch.device("cpu"), progress=False)
        writer.close()
        predict_speed = len(paths) / (time.perf_counter() - start)
    return (f"{len(paths)} BCCD photos, batch 8: predict path {predict_speed:.1f} images/s (read, infer, draw, "
            f"write), eval call {eval_speed:.1f} images/s: {predict_speed / eval_speed:.2f}x (target >= 0.8x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="SSD300-VGG16", choices=list(LAYOUTS), help="untrained, 20 classes")
    parser.add_argument("--checkpoint", type=Path, help="a trained SSD checkpoint instead of --layout")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--images", type=int, default=100, help="BCCD photos for the folder measure (0: skip it)")
    args = parser.parse_args()
    if args.checkpoint:
        model, _, checkpoint = model_from_checkpoint(args.checkpoint)
        class_names = checkpoint["class_names"]
        name = f"{args.checkpoint} ({', '.join(class_names)})"
    else:
        model, class_names = build_model("model=ssd", *LAYOUTS[args.layout]), VOC_CLASSES
        name = f"{args.layout}, untrained, 20 classes"
    model.eval()
    image = torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = [image] * args.batch
    print(f"{name}: input {model.image_size}x{model.image_size} (images 500x375 uint8), fp32, on "
          f"{device_name(torch.device('cpu'))}")
    with tempfile.TemporaryDirectory() as folder:
        example = torch.randint(0, 256, (2, 3, 407, 431), dtype=torch.uint8)
        runtimes = {"pytorch eager": model,
                    "torchscript": ExportedDetector(export_torchscript(model, Path(folder) / "model.pt", metadata={
                        "class_names": "[]"}, example=example)),
                    "onnxruntime": ExportedDetector(export_onnx(model, Path(folder) / "model.onnx", metadata={
                        "class_names": "[]"}, example=example))}
        eager = None
        for runtime, detector in runtimes.items():
            with torch.no_grad():
                single = timings(lambda: detector([image]), args.repeat)
                throughput = args.batch / statistics.median(timings(lambda: detector(batch), max(3, args.repeat // 4)))
            eager = eager or statistics.median(single)
            print(f"  {runtime:<14} batch 1: {latency(single)} ({statistics.median(single) / eager:.2f}x eager)   "
                  f"batch {args.batch}: {throughput:6.1f} images/s")
            if runtime == "pytorch eager":
                print(f"  {'':<14} parts: {eager_parts(model, image, args.repeat)}")
    if torch.cuda.is_available():
        on_cuda(model, image, args)
    if args.images:
        print(folder_against_eval_call(model, class_names, args.images))


if __name__ == "__main__":
    main()
