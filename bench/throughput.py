"""Throughput of graft against the bare model (issue 17): extraction, training, folder scan, peak memory, shared cores.

Every figure is measured in its own process (``measure NAME``), so that one measurement's threads, loader workers
and memory never affect another's; the parent only generates the data and collects the results into
bench/results/throughput.json (``--out`` elsewhere). Keys: ``extraction_ratio`` (graft's extraction from an .npz
over the raw ``inference_mode`` forward on ready tensors, same model, batch, size, threads, precision),
``extraction_folder_ratio`` (the same from a JPEG folder, per loader-worker count in ``extraction_folder_by_workers``),
``train_ratio`` (graft's fine-tune epoch over a minimal PyTorch loop: same model, batch, AdamW, no augmentation, the
same validation pass), ``scan_files_per_s`` / ``scan_cached_files_per_s`` (listing and checking the generated JPEG
folder, first and second time), ``peak_rss_gb`` (extracting CIFAR-10 train at 96 px) and ``shared_thread_slowdown``
(a 2-thread training epoch beside one busy process over a 1-thread epoch alone, under the command's
OMP_WAIT_POLICY).

    python bench/throughput.py                 # full size: 50,000 generated JPEGs, CIFAR-10 train (takes long)
    python bench/throughput.py --quick --out /tmp/throughput.json   # small sizes: checks that it works
    python bench/throughput.py --accelerator cuda   # on a GPU (its device name is recorded)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MOBILENET, SHARED, require_shared, save  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.json"
SAMPLE = SHARED / "datasets" / "imagenet_sample128.npz"
CIFAR = SHARED / "datasets" / "cifar10_train.npz"
BACKBONE = "mobilenetv2_100"
SIZES = {  # full: the sizes; quick: enough to run every path once
    "full": {"jpegs": 50_000, "folder_images": 2_000, "npz_images": 4_000, "train_images": 2_048, "rss_images": 50_000},
    "quick": {"jpegs": 300, "folder_images": 64, "npz_images": 128, "train_images": 128, "rss_images": 256},
}


# ---- data -------------------------------------------------------------------------------------------------------

_SAMPLE_IMAGES: np.ndarray = np.zeros(0)  # a generating process's copy of the sample (an .npz member is read whole)


def _load_sample() -> None:
    global _SAMPLE_IMAGES
    _SAMPLE_IMAGES = np.load(SAMPLE)["images"]


def _write_jpeg(job: tuple[int, str, int, int]) -> None:
    from PIL import Image

    index, folder, side, source = job
    Image.fromarray(_SAMPLE_IMAGES[source]).resize((side, side), Image.BILINEAR).save(f"{folder}/{index:06d}.jpg", quality=90)


def make_jpeg_folder(root: Path, count: int, seed: int = 0, classes: int = 10) -> Path:
    """``count`` JPEGs of 256-500 px made from ../shared/datasets/imagenet_sample128.npz, in ``classes`` class folders."""
    rng = np.random.default_rng(seed)
    sides = rng.integers(256, 501, count)
    sources = rng.integers(0, len(np.load(SAMPLE)["labels"]), count)
    jobs = []
    for index in range(count):
        folder = root / f"class{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((index, str(folder), int(sides[index]), int(sources[index])))
    with Pool(max(1, len(os.sched_getaffinity(0))), initializer=_load_sample) as pool:
        pool.map(_write_jpeg, jobs, chunksize=256)
    return root


def cifar_subset(folder: Path, count: int, name: str, offset: int = 0) -> Path:
    """CIFAR-10 train images ``offset`` to ``offset + count`` of one seeded shuffle (the file is sorted by class)."""
    data = np.load(CIFAR)
    path = folder / f"{name}.npz"
    take = np.random.default_rng(0).permutation(len(data["labels"]))[offset:offset + count]
    np.savez(path, images=data["images"][take], labels=data["labels"][take], classes=data["classes"])
    return path


# ---- measurements (each in its own process) -------------------------------------------------------------------

def _model():
    from graft.backbones import create_model

    return create_model(BACKBONE, 10, weights=str(MOBILENET)).eval()


def _placement(config: dict[str, Any]):
    import torch

    from graft.placement import Placement

    device = torch.device("cuda" if config["accelerator"] == "cuda" else "cpu")
    return Placement(device, config["precision"], config.get("workers"))


def _preprocessing(model, size: int):
    import timm

    from graft.data.transforms import resolve_preprocessing
    from graft.recipe import DataConfig

    return resolve_preprocessing(timm.data.resolve_model_data_config(model), DataConfig(image_size=size))


def measure_extraction(config: dict[str, Any]) -> dict[str, Any]:
    """graft's extract_features from an .npz or a folder: images/s after a warm-up batch."""
    from graft.data.sources import load_images
    from graft.features import extract_features

    model = _model()
    images = load_images(config["data"])
    images = images.subset(np.arange(min(len(images), config["images"])))
    pre, placement = _preprocessing(model, config["size"]), _placement(config)
    extract_features(model, images.subset(np.arange(min(config["batch"], len(images)))), pre, config["batch"], placement=placement)  # warm-up
    started = time.perf_counter()
    extract_features(model, images, pre, config["batch"], placement=placement)
    seconds = time.perf_counter() - started
    workers = placement.workers(images) if config.get("workers") is None else config["workers"]
    return {"images_per_s": len(images) / seconds, "workers": workers, "images": len(images)}


def measure_forward(config: dict[str, Any]) -> dict[str, Any]:
    """The raw model: inference_mode forward on ready tensors, same batch, size, threads, precision."""
    import torch

    from graft.features import pooled_features

    model = _model()
    placement = _placement(config)
    batches = -(-config["images"] // config["batch"])
    with placement.running(model) as device:
        batch = torch.randn(config["batch"], 3, config["size"], config["size"], device=device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            pooled_features(model, batch)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(batches):
                pooled_features(model, batch).float().cpu()
            seconds = time.perf_counter() - started
    return {"images_per_s": batches * config["batch"] / seconds}


def measure_graft_training(config: dict[str, Any]) -> dict[str, Any]:
    """graft's fine-tune: images/s of its last epoch (training plus the validation pass)."""
    import graft

    with tempfile.TemporaryDirectory() as out:
        run = graft.fit(config["train"], route="finetune", backbone=BACKBONE, weights=str(MOBILENET), val=config["val"], test=config["val"],
                        out=Path(out) / "run", quiet=True,
                        overrides=[f"data.image_size={config['size']}", f"data.batch_size={config['batch']}", "train.augment.preset=none",
                                   "train.stages=all:2", "train.min_steps=0", "train.warmup_epochs=0", f"runtime.threads={config['threads']}",
                                   f"runtime.accelerator={config['accelerator']}", f"runtime.precision={config['precision']}"])
        records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines() if line.strip()]
        epochs = [record for record in records if record.get("event") == "epoch"]  # the "returned" record names an epoch too
    return {"images_per_s": config["train_images"] / epochs[-1]["seconds"], "epoch_seconds": epochs[-1]["seconds"]}


def measure_raw_training(config: dict[str, Any]) -> dict[str, Any]:
    """A minimal PyTorch loop: the same model, batch, AdamW, ready tensors, the same validation pass; its 2nd epoch."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(config["threads"])
    model = _model()
    device = torch.device("cuda" if config["accelerator"] == "cuda" else "cpu")
    pre = _preprocessing(model, config["size"])
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)

    def ready(path: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = np.load(path)
        x = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=(config["size"], config["size"]), mode="bilinear", antialias=True)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last), torch.from_numpy(data["labels"])

    (train_x, train_y), (val_x, val_y) = ready(config["train"]), ready(config["val"])
    model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = config["batch"]
    seconds = 0.0
    for _ in range(2):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_x))
        for start in range(0, len(train_x) - batch + 1, batch):
            index = order[start:start + batch]
            loss = F.cross_entropy(model(train_x[index].to(device)), train_y[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(val_x), batch * 2):
                model(val_x[start:start + batch * 2].to(device)).argmax(1).cpu()
        seconds = time.perf_counter() - started
    return {"images_per_s": config["train_images"] / seconds, "epoch_seconds": seconds}


def measure_scan(config: dict[str, Any]) -> dict[str, Any]:
    """Listing and checking a folder with graft's reader (a second process sees what the first cached)."""
    from graft.data.sources import load_images

    started = time.perf_counter()
    images = load_images(config["folder"])
    return {"files_per_s": len(images) / (time.perf_counter() - started), "files": len(images)}


def measure_peak_rss(config: dict[str, Any]) -> dict[str, Any]:
    """Peak resident memory of a process that extracts the features of ``images`` CIFAR-10 images at ``size`` px."""
    result = measure_extraction(config)
    return {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, **result}  # ru_maxrss: KiB on Linux


MEASUREMENTS = {"extraction": measure_extraction, "forward": measure_forward, "graft_training": measure_graft_training,
                "raw_training": measure_raw_training, "scan": measure_scan, "peak_rss": measure_peak_rss}


def run_measurement(name: str, config: dict[str, Any], threads: int, environment: dict[str, str] | None = None) -> dict[str, Any]:
    """``name`` in a fresh process with ``threads`` torch threads (OMP_NUM_THREADS) and the command's wait policy."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **(environment or {})}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the graft command sets it (graft.__main__)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")])
    env.pop("GRAFT_THREADS", None)  # bench/common would override the threads under test
    done = subprocess.run([sys.executable, __file__, "measure", name, json.dumps({**config, "threads": threads})],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"measurement {name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{name} {config.get('label', '')}: {result}", flush=True)
    return result


def busy_process() -> subprocess.Popen:
    """One process that keeps a core busy (the 'other job' of a shared machine)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: proves the bench runs (numbers not for publishing)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads of each measurement")
    parser.add_argument("--workers", type=int, nargs="*", default=None, help="loader workers to try on the folder (default: 0, 1, ..., cores-1)")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--table", action="store_true", help="only print the table of the results saved in --out")
    parser.add_argument("--only-scan", action="store_true", help="measure the folder scan again, keeping the other results in --out")
    args = parser.parse_args()
    if args.table:
        print_table(json.loads(args.out.read_text()))
        return
    require_shared()
    sizes = SIZES["quick" if args.quick else "full"]
    cores = len(os.sched_getaffinity(0))
    base = {"accelerator": args.accelerator, "precision": args.precision, "size": args.size, "batch": args.batch}
    results: dict[str, Any] = {"config": {**base, **sizes, "threads": args.threads, "quick": args.quick, "backbone": BACKBONE},
                               "machine": {"usable_cores": cores, "cpu": platform.processor() or platform.machine(), "python": platform.python_version()}}
    if args.accelerator == "cuda":
        import torch

        results["machine"]["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="graft-throughput-") as temporary:
        folder = Path(temporary)
        environment = {"GRAFT_CACHE": str(folder / "cache")}
        started = time.perf_counter()
        jpegs = make_jpeg_folder(folder / "jpegs", sizes["jpegs"])
        results["jpeg_generation_s"] = round(time.perf_counter() - started, 1)
        if args.only_scan:  # e.g. after a change to the listing: the other measurements are kept as they were
            results = {**json.loads(args.out.read_text()), **scan_results(jpegs, args.threads, environment)}
            save(args.out, results)
            print_table(results)
            return

        npz = cifar_subset(folder, sizes["npz_images"], "extract")
        forward = run_measurement("forward", {**base, "images": sizes["npz_images"]}, args.threads, environment)
        from_npz = run_measurement("extraction", {**base, "data": str(npz), "images": sizes["npz_images"]}, args.threads, environment)
        results.update(forward_images_per_s=forward["images_per_s"], extraction_npz_images_per_s=from_npz["images_per_s"],
                       extraction_ratio=from_npz["images_per_s"] / forward["images_per_s"])
        by_workers = {}
        for workers in (args.workers if args.workers is not None else range(cores)):
            measured = run_measurement("extraction", {**base, "data": str(jpegs), "images": sizes["folder_images"], "workers": workers,
                                                      "label": f"folder, {workers} workers"}, args.threads, environment)
            by_workers[str(workers)] = measured["images_per_s"]
        default = run_measurement("extraction", {**base, "data": str(jpegs), "images": sizes["folder_images"], "label": "folder, default"},
                                  args.threads, environment)
        results.update(extraction_folder_by_workers=by_workers, extraction_folder_default_workers=default["workers"],
                       extraction_folder_images_per_s=default["images_per_s"],
                       extraction_folder_ratio=default["images_per_s"] / forward["images_per_s"])

        train = {**base, "batch": 64, "train": str(cifar_subset(folder, sizes["train_images"], "train")),
                 "val": str(cifar_subset(folder, 256, "val", offset=sizes["train_images"])), "train_images": sizes["train_images"]}
        graft_training = run_measurement("graft_training", train, args.threads, environment)
        raw_training = run_measurement("raw_training", train, args.threads, environment)
        results.update(train_graft_images_per_s=graft_training["images_per_s"], train_raw_images_per_s=raw_training["images_per_s"],
                       train_ratio=graft_training["images_per_s"] / raw_training["images_per_s"])

        results.update(scan_results(jpegs, args.threads, environment))

        rss_data = cifar_subset(folder, sizes["rss_images"], "rss")
        rss = run_measurement("peak_rss", {**base, "data": str(rss_data), "images": sizes["rss_images"]}, args.threads, environment)
        results.update(peak_rss_gb=rss["peak_rss_gb"])

        alone = run_measurement("graft_training", {**train, "label": "1 thread alone"}, 1, environment)
        other = busy_process()
        try:
            shared = run_measurement("graft_training", {**train, "label": "2 threads beside a busy process"}, 2, environment)
        finally:
            other.kill()
            other.wait()
        results.update(epoch_1_thread_alone_s=alone["epoch_seconds"], epoch_2_threads_shared_s=shared["epoch_seconds"],
                       shared_thread_slowdown=shared["epoch_seconds"] / alone["epoch_seconds"],
                       omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    save(args.out, results)
    print_table(results)


def scan_results(jpegs: Path, threads: int, environment: dict[str, str]) -> dict[str, Any]:
    """Listing and checking the JPEG folder twice, each in its own process: the first run, then from the cache."""
    first = run_measurement("scan", {"folder": str(jpegs)}, threads, environment)
    again = run_measurement("scan", {"folder": str(jpegs)}, threads, environment)
    return {"scan_files": first["files"], "scan_files_per_s": first["files_per_s"], "scan_cached_files_per_s": again["files_per_s"]}


def print_table(results: dict[str, Any]) -> None:
    """The measurements against the issue's goals, and extraction from the JPEG folder per loader-worker count."""
    c, m = results["config"], results["machine"]
    print(f"{m['usable_cores']} usable cores ({m['cpu']}{', ' + m['gpu'] if 'gpu' in m else ''}), {c['accelerator']}, {c['precision']}, "
          f"{c['backbone']} at {c['size']} px, {c['threads']} torch threads{' (quick sizes: not for publishing)' if c['quick'] else ''}\n")
    rows = [
        ("extraction from .npz, images/s", f"{results['extraction_npz_images_per_s']:.0f}",
         f"{results['forward_images_per_s']:.0f} (raw forward)", f"{results['extraction_ratio']:.2f}x", "≥ 0.9x"),
        (f"extraction from {c['folder_images']:,} JPEGs, {results['extraction_folder_default_workers']} workers (default), images/s",
         f"{results['extraction_folder_images_per_s']:.0f}", f"{results['forward_images_per_s']:.0f} (raw forward)",
         f"{results['extraction_folder_ratio']:.2f}x", "stated"),
        ("fine-tune epoch, images/s", f"{results['train_graft_images_per_s']:.0f}", f"{results['train_raw_images_per_s']:.0f} (minimal loop)",
         f"{results['train_ratio']:.2f}x", "≥ 0.9x"),
        (f"scan of {results['scan_files']:,} JPEGs, first, files/s", f"{results['scan_files_per_s']:,.0f}", "-", "-", "≥ 5,000"),
        ("scan again (cached), files/s", f"{results['scan_cached_files_per_s']:,.0f}", "-", "-", "≥ 50,000"),
        (f"peak RSS extracting {c['rss_images']:,} CIFAR-10 images, GB", f"{results['peak_rss_gb']:.2f}", "-", "-", "≤ 2"),
        ("epoch, 2 threads beside a busy process / 1 thread alone", f"{results['epoch_2_threads_shared_s']:.1f} s",
         f"{results['epoch_1_thread_alone_s']:.1f} s", f"{results['shared_thread_slowdown']:.2f}x", "≤ 1.5x"),
    ]
    print("| measurement | graft | plain | ratio | goal |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    workers = results.get("extraction_folder_by_workers", {})
    if workers:
        print("\n| loader workers (JPEG folder) | " + " | ".join(workers) + " |\n|---|" + "---|" * len(workers))
        print("| images/s | " + " | ".join(f"{v:.0f}" for v in workers.values()) + " |")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "measure":
        print(json.dumps(MEASUREMENTS[sys.argv[2]](json.loads(sys.argv[3]))))
    else:
        main()
