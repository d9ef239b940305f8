"""Forward passes outside the training loop run on the lifecycle's device under its precision (autocast)."""
import numpy as np
import pytest
import torch

import graft
from graft.backbones import create_model
from graft.console import Reporter
from graft.data.sources import load_images
from graft.data.split import make_splits
from graft.data.transforms import resolve_preprocessing
from graft.features import cache_dir, cached_features, extract_features
from graft.lifecycle import Lifecycle
from graft.protocols import protocol_features
from graft.recipe import Recipe

from conftest import FAST


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_bf16_mixed_changes_extracted_features_and_stays_close(toy_npz):
    torch.manual_seed(0)
    model = create_model("graft_convnet_s", 3, pretrained=False)
    model.train()
    images = load_images(toy_npz)
    pre = resolve_preprocessing({"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.25,) * 3}, Recipe().data)
    full = extract_features(model, images, pre, channels_last=False, placement=Lifecycle.for_inference("32-true").placement)
    half = extract_features(model, images, pre, channels_last=False, placement=Lifecycle.for_inference("bf16-mixed").placement)
    assert full.dtype == half.dtype == np.float32 and full.shape == half.shape
    assert not np.array_equal(full, half)  # autocast really ran the convolutions in bfloat16
    assert cosine(full, half).min() > 0.99
    assert model.training and next(model.parameters()).dtype == torch.float32  # the caller's model is left as it was


def test_fit_under_bf16_extracts_its_own_features(toy_npz, source_run, tmp_path):
    common = dict(route="linear", backbone="graft_convnet_s", weights=str(source_run.path), quiet=True)
    full = graft.fit(toy_npz, out=tmp_path / "fp32", overrides=FAST, **common)
    half = graft.fit(toy_npz, out=tmp_path / "bf16", overrides=[*FAST, "runtime.precision=bf16-mixed"], **common)
    full_features = sorted((cache_dir() / "features").glob("*.npy"))
    # train, val and test features of each precision under their own cache keys: bf16 never reuses fp32 features
    assert len(full_features) == 6
    assert half.meta["recipe"]["runtime"]["precision"] == "bf16-mixed"
    _, _, test = make_splits(Recipe.from_dict(full.meta["recipe"]), Reporter(quiet=True))
    fp32, cached = cached_features(full.model, test, full.preprocessing, channels_last=False,
                                   placement=Lifecycle.for_inference("32-true").placement)
    bf16, cached_too = cached_features(half.model, test, half.preprocessing, channels_last=False,
                                       placement=Lifecycle.for_inference("bf16-mixed").placement)
    assert cached and cached_too and not np.array_equal(fp32, bf16) and cosine(fp32, bf16).min() > 0.99


def test_fp32_features_are_equal_whichever_entry_point_extracts_them(toy_npz, source_run, tmp_path):
    run = graft.fit(toy_npz, route="linear", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "linear",
                    quiet=True, overrides=FAST)
    _, _, test = make_splits(Recipe.from_dict(run.meta["recipe"]), Reporter(quiet=True))
    placement = Lifecycle.for_inference("32-true").placement
    from_fit, cached = cached_features(run.model, test, run.preprocessing, channels_last=False, placement=placement)
    assert cached  # the array `graft fit` extracted and cached for its test split
    from_features_command = protocol_features(run.model, test, run.preprocessing, "linear", placement=placement)
    analysis = graft.analyze(run.path, count=2, k=3, max_images=len(test), embedding="tsne")  # every test image, in class-balanced order
    order = [int(np.flatnonzero([np.array_equal(test.image(i), analysis.images.image(j)) for i in range(len(test))])[0])
             for j in range(len(analysis.images))]
    from_analysis = analysis.features
    np.testing.assert_array_equal(from_fit, from_features_command)
    np.testing.assert_array_equal(from_fit[order], from_analysis)
    # and the recorded test logits are those features through the saved head
    logits = from_fit @ run.model.get_classifier().weight.detach().numpy().T + run.model.get_classifier().bias.detach().numpy()
    assert float((logits.argmax(1) == test.labels).mean()) == run.metrics["test_accuracy"]


def test_evaluate_and_predict_run_under_the_callers_precision(toy_npz, source_run):
    data = load_images(toy_npz)
    full = graft.predict(source_run, data, top_k=3)
    half = graft.predict(source_run, data, top_k=3, precision="bf16-mixed")
    p_full = np.array([[t["probability"] for t in sorted(r["top"], key=lambda t: t["class"])] for r in full])
    p_half = np.array([[t["probability"] for t in sorted(r["top"], key=lambda t: t["class"])] for r in half])
    assert not np.array_equal(p_full, p_half) and np.abs(p_full - p_half).max() < 0.1
    # by default a run is evaluated under the precision it recorded (here 32-true)
    evaluation = graft.evaluate(source_run.path, toy_npz)
    assert evaluation.extra["device"] == "cpu" and evaluation.extra["precision"] == "32-true"  # said in evaluation.json too
    assert evaluation.accuracy == graft.evaluate(source_run.path, toy_npz, precision="32-true").accuracy
    with pytest.raises(graft.GraftError, match="precision"):
        graft.evaluate(source_run.path, toy_npz, precision="12-bits")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path is checked on a machine with one")
def test_forward_passes_run_on_the_gpu_under_bf16(toy_npz, source_run, tmp_path):
    life = Lifecycle.for_inference("bf16-mixed", "gpu")
    assert life.placement.device.type == "cuda" and life.placement.pin_memory
    model = source_run.model
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    handle = first.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0].device.type, output.dtype)))
    on_gpu = extract_features(model, load_images(toy_npz), source_run.preprocessing, placement=life.placement)
    handle.remove()
    assert seen and all(device == "cuda" and dtype == torch.bfloat16 for device, dtype in seen)
    assert next(model.parameters()).device.type == "cpu" and on_gpu.dtype == np.float32
    on_cpu = extract_features(model, load_images(toy_npz), source_run.preprocessing, placement=Lifecycle.for_inference("32-true", "cpu").placement)
    assert cosine(on_cpu, on_gpu).min() > 0.99
    run = graft.fit(toy_npz, route="linear", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "gpu", quiet=True,
                    overrides=[*FAST, "runtime.accelerator=gpu", "runtime.precision=bf16-mixed"])
    evaluation = graft.evaluate(run.path, toy_npz, accelerator="gpu")
    assert evaluation.extra["device"].startswith("cuda") and evaluation.extra["precision"] == "bf16-mixed"
    assert abs(evaluation.accuracy - graft.evaluate(run.path, toy_npz, accelerator="cpu", precision="32-true").accuracy) <= 0.05
