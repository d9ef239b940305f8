"""A model card per run: ``RUN/README.md`` in the Hugging Face model-card format.

YAML front matter (``library_name``, ``base_model``, ``datasets``, ``metrics``, a ``model-index`` entry, ``license``
left empty for the user, and a ``graft`` block with hashes and split sizes), then a Markdown body: what was trained
and how, the test results per class, what the model is for and the limits the run knows about (Mitchell et al.
2019, "Model Cards for Model Reporting"; the layout is the Hub's, so the folder can be uploaded as it is).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import yaml

from graft.data.sources import ImageSet


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (of ``model.safetensors`` for a run directory)."""
    path = path / "model.safetensors" if path.is_dir() else path
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_weights(recipe: dict[str, Any]) -> dict[str, Any]:
    """Where the starting weights came from: a file or run (with its sha256), the hub, or a random initialisation."""
    model = recipe["model"]
    weights = model.get("weights")
    if weights and Path(weights).exists():
        return {"source": str(weights), "sha256": file_sha256(Path(weights))}
    if model["backbone"].startswith("run:"):
        path = Path(model["backbone"][4:])
        return {"source": str(path), "sha256": file_sha256(path) if (path / "model.safetensors").exists() else None}
    return {"source": "hub" if model.get("pretrained", True) else "random initialisation", "sha256": None}


def dataset_entry(images: Optional[ImageSet], split: str) -> Optional[dict[str, Any]]:
    if images is None or not len(images):
        return None
    return {"name": Path(images.origin).name or images.origin, "split": split, "images": len(images), "fingerprint": images.fingerprint()[:16]}


def _schedule_events(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("event") == "schedule" and r.get("stretch", 1) > 1]


def front_matter(meta: dict[str, Any], folder: Path, splits: dict[str, Optional[ImageSet]]) -> dict[str, Any]:
    """The YAML header: the Hub's own keys first, graft's details under ``graft``."""
    recipe, metrics = meta["recipe"], meta["metrics"]
    datasets = [d for d in (dataset_entry(images, split) for split, images in splits.items()) if d]
    measured = [{"type": "accuracy", "name": "test accuracy", "value": metrics["test_accuracy"]}] if "test_accuracy" in metrics else []
    if "test_mAP" in metrics:
        measured = [{"type": "mAP", "name": "test mAP", "value": metrics["test_mAP"]}]
    test = next((d for d in datasets if d["split"] == "test"), None)
    header: dict[str, Any] = {
        "library_name": "graft",
        "license": None,  # for the user to choose: the weights inherit the base model's and the data's terms
        "base_model": meta["backbone"],
        "pipeline_tag": "image-classification",
        "tags": ["graft", "image-classification", "transfer-learning", f"route-{meta['route']}"],
        "datasets": sorted({d["name"] for d in datasets}),
        "metrics": [m["type"] for m in measured],
    }
    if measured and test:
        header["model-index"] = [{"name": folder.name.removeprefix(".").removesuffix(".partial"), "results": [{
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"name": test["name"], "type": test["name"], "split": "test", "revision": test["fingerprint"]},
            "metrics": measured}]}]
    header["graft"] = {"route": meta["route"], "classes": meta["classes"], "weights_sha256": file_sha256(folder / "model.safetensors"),
                       "base_model_weights": base_weights(recipe), "data": datasets, "metrics": metrics}
    return header


def body(meta: dict[str, Any], evaluation: Any, header: dict[str, Any], folder: Path) -> str:
    recipe, metrics = meta["recipe"], meta["metrics"]
    train = recipe["train"]
    data = header["graft"]["data"]
    lines = [f"# {header.get('model-index', [{}])[0].get('name', folder.name)}", "",
             f"An image classifier of {len(meta['classes'])} classes ({', '.join(meta['classes'])}), trained by "
             f"graft's route `{meta['route']}` from `{meta['backbone']}` "
             f"({header['graft']['base_model_weights']['source']}).", "", "## Training", ""]
    lines += [f"- {d['split']}: {d['images']} images of `{d['name']}` (fingerprint `{d['fingerprint']}`)" for d in data]
    info = meta.get("info") or {}
    # what the route recorded says how it trained: a probe alone (C chosen, no stages), or stages of the training loop
    how = (f"- a linear probe on frozen features (C={info['probe_c']} from {recipe['linear']['c_grid']}, {info.get('probe_selection')})"
           if "probe_c" in info and "stages" not in info else
           f"- stages `{train['stages']}`, {train['optimizer']} lr {train['lr']} (backbone x{train['backbone_lr_ratio']}), "
           f"weight decay {train['weight_decay']}, {train['schedule']} schedule, augmentation `{train['augment']['preset']}`, "
           f"seed {recipe['runtime']['seed']}")
    lines += [f"- input {meta['preprocessing'].get('size')} px, mean {meta['preprocessing'].get('mean')}, std {meta['preprocessing'].get('std')}",
              how, "- the whole recipe is `recipe.yaml`; library versions are in `env.json`", "", "## Results", ""]
    lines += [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items()]
    per_class = getattr(evaluation, "per_class", None) or getattr(evaluation, "per_class_ap", None)
    if per_class:
        metric = "accuracy" if hasattr(evaluation, "per_class") else "AP"
        lines += ["", f"| class | test {metric} |", "|---|---:|", *[f"| {c} | {v:.4f} |" for c, v in per_class.items()]]
    lines += ["", "## Intended use and limits", "",
              f"For images like the training data: the same {len(meta['classes'])} classes, photographed or scanned the same way, "
              f"preprocessed as above (`graft predict RUN IMAGE`). It was tested on one held-out split only; an image of any "
              f"other class still gets one of these {len(meta['classes'])} labels."]
    limits = []
    if meta.get("skipped_files"):
        limits.append(f"{len(meta['skipped_files'])} unreadable files were skipped across the splits (listed in `model.json`).")
    for event in _schedule_events(folder):
        limits.append(f"The schedule was stretched x{event['stretch']} to stages `{event['stages']}` ({event['steps_per_epoch']} steps an epoch "
                      f"were fewer than `train.min_steps`): the training set is small.")
    counts = {d["split"]: d["images"] for d in data}
    if counts.get("test", 0) < 100:
        limits.append(f"The test split has {counts.get('test', 0)} images: its accuracy is a rough estimate.")
    lines += [f"- {limit}" for limit in limits]
    lines += ["", "## License", "", "Not set by graft: choose one in the `license` field above before sharing (mind the base "
              "model's and the data's terms)."]
    return "\n".join(lines) + "\n"


def write_model_card(folder: Path, meta: dict[str, Any], evaluation: Any, splits: dict[str, Optional[ImageSet]]) -> Path:
    """Write ``folder/README.md`` for the run whose ``model.json`` is ``meta`` (``model.safetensors`` already written)."""
    header = front_matter(meta, folder, splits)
    text = "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n" + body(meta, evaluation, header, folder)
    path = folder / "README.md"
    path.write_text(text)
    return path


def read_front_matter(path: Path) -> dict[str, Any]:
    """The YAML header of a model card."""
    text = path.read_text()
    if not text.startswith("---\n"):
        return {}
    return yaml.safe_load(text[4: text.index("\n---\n", 4)])
