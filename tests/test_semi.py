"""Distillation and pseudo-labels: the losses against direct computations, the pure selection, the α(t)
schedule, unlabelled labels never read, and a tiny teacher -> student run that beats labels alone."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import graft
from graft.data.transforms import Preprocessing
from graft.data.unlabeled import load_unlabeled
from graft.errors import GraftError
from graft.teacher import Teacher, TeacherLogits, convert_batch
from graft.train.semi import class_thresholds, kd_loss, pseudo_weight, select_pseudo_labels

from conftest import FAST
from test_runs import Interrupt

STUDENT = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.2, -1.0]])
TEACHER = torch.tensor([[2.0, 0.0, 1.0], [-1.0, 1.5, 0.5]])
LABELS = torch.tensor([2, 1])


def test_kd_loss_equals_direct_computation_and_is_cross_entropy_at_alpha_0():
    alpha, T = 0.7, 3.0
    p = torch.softmax(TEACHER / T, 1)
    q = torch.softmax(STUDENT / T, 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    ce = -torch.log_softmax(STUDENT, 1)[torch.arange(2), LABELS].mean()
    expected = alpha * T**2 * kl + (1 - alpha) * ce
    assert torch.allclose(kd_loss(STUDENT, TEACHER, LABELS, alpha, T), expected, atol=1e-6)
    assert torch.allclose(kd_loss(STUDENT, TEACHER, LABELS, 0.0, T), F.cross_entropy(STUDENT, LABELS), atol=1e-7)
    assert torch.allclose(kd_loss(STUDENT, TEACHER, None, alpha, T), alpha * T**2 * kl, atol=1e-6)  # unlabelled: KL only


def _soft_gradient(temperature: float, scale_t2: bool = True) -> torch.Tensor:
    student = (STUDENT * 0.1).clone().requires_grad_(True)
    loss = kd_loss(student, TEACHER * 0.1, None, 1.0, temperature)
    (loss if scale_t2 else loss / temperature**2).backward()
    return student.grad


def test_t_squared_keeps_the_soft_gradient_scale_across_temperatures():
    # Hinton et al. 2015 §2.1: for logits small against T, dKL/dz ~ (z - v) / (C·T²); the T² factor cancels it
    g4, g8, g16 = (_soft_gradient(t).norm() for t in (4.0, 8.0, 16.0))
    assert abs(g8 / g4 - 1) < 0.05 and abs(g16 / g4 - 1) < 0.05
    centred = lambda z: z - z.mean(1, keepdim=True)  # noqa: E731
    limit = (centred(STUDENT * 0.1) - centred(TEACHER * 0.1)) / (3 * len(STUDENT))
    assert torch.allclose(_soft_gradient(16.0), limit, atol=2e-4)
    # without the factor the gradient would shrink as 1/T²: the test above could fail
    assert abs(_soft_gradient(8.0, False).norm() / _soft_gradient(4.0, False).norm() - 0.25) < 0.02


PROBABILITIES = np.array([
    [0.95, 0.03, 0.02],  # 0: class 0, confident
    [0.80, 0.10, 0.10],  # 1: class 0
    [0.60, 0.30, 0.10],  # 2: class 0, unsure
    [0.10, 0.85, 0.05],  # 3: class 1
    [0.05, 0.92, 0.03],  # 4: class 1, confident
    [0.20, 0.10, 0.70],  # 5: class 2
    [0.10, 0.10, 0.80],  # 6: class 2
    [0.90, 0.05, 0.05],  # 7: class 0
])


def picked(*args, **kwargs) -> tuple[list[int], list[int]]:
    selection = select_pseudo_labels(*args, **kwargs)
    return selection.indices.tolist(), selection.labels.tolist()


def test_selection_by_fixed_threshold():
    assert picked(PROBABILITIES, threshold=0.8, per_class=False) == ([0, 1, 3, 4, 6, 7], [0, 0, 1, 1, 2, 0])
    assert picked(PROBABILITIES, threshold=0)[0] == list(range(8))  # Lee 2013: every image, by its argmax


def test_self_adaptive_thresholds_follow_freematch():
    mean_top = PROBABILITIES.max(1).mean()
    mean_class = PROBABILITIES.mean(0)
    expected = mean_top * mean_class / mean_class.max()  # FreeMatch: tau * MaxNorm(p~)
    assert np.allclose(class_thresholds(PROBABILITIES), expected)
    assert np.allclose(class_thresholds(PROBABILITIES, per_class=False), mean_top)
    assert np.allclose(class_thresholds(PROBABILITIES, threshold=0.9), 0.9 * mean_class / mean_class.max())
    # the most predicted class (0) keeps the global threshold; rarer classes need less
    thresholds = class_thresholds(PROBABILITIES)
    assert thresholds[0] == pytest.approx(mean_top) and thresholds[1] < mean_top and thresholds[2] < mean_top
    selection = select_pseudo_labels(PROBABILITIES)
    confidence = PROBABILITIES.max(1)
    expected_indices = [i for i in range(8) if confidence[i] >= thresholds[PROBABILITIES[i].argmax()]]
    assert selection.indices.tolist() == expected_indices
    assert selection.candidates.sum() == len(expected_indices)


def test_adaptive_selection_takes_a_hard_class_a_fixed_threshold_drops():
    # class 2 is never predicted above 0.8, so a fixed 0.8 takes none of it; the per-class threshold scales down for it
    fixed = select_pseudo_labels(PROBABILITIES, threshold=0.8, per_class=False)
    adaptive = select_pseudo_labels(PROBABILITIES, threshold=0.8)
    assert 5 not in fixed.indices.tolist() and 5 in adaptive.indices.tolist()


def test_selection_top_k_per_class_keeps_the_most_confident():
    assert picked(PROBABILITIES, threshold=0, top_k=2) == ([0, 3, 4, 5, 6, 7], [0, 1, 1, 2, 2, 0])


def test_selection_class_balance_caps_every_class_at_the_rarest():
    indices, labels = picked(PROBABILITIES, threshold=0.8, per_class=False, balance=True)
    # candidates: class 0 {0,1,7}, class 1 {3,4}, class 2 {6} -> one each, the most confident
    assert indices == [0, 4, 6] and labels == [0, 1, 2]
    assert picked(PROBABILITIES, threshold=0.99, per_class=False, balance=True)[0] == []


def test_pseudo_weight_follows_lee_2013_schedule():
    alpha_f, t1, t2 = 3.0, 0.2, 0.6
    for t in np.linspace(0, 1, 41):
        expected = 0.0 if t < t1 else alpha_f if t >= t2 else alpha_f * (t - t1) / (t2 - t1)
        assert pseudo_weight(float(t), alpha_f, t1, t2) == pytest.approx(expected)
    assert pseudo_weight(0.4, alpha_f, t1, t2) == pytest.approx(1.5)


def test_convert_batch_changes_normalisation_and_size():
    a = Preprocessing(8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    b = Preprocessing(8, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = torch.rand(2, 3, 8, 8)
    normalise = lambda x, p: (x - torch.tensor(p.mean).view(1, 3, 1, 1)) / torch.tensor(p.std).view(1, 3, 1, 1)  # noqa: E731
    assert torch.allclose(convert_batch(normalise(pixels, a), a, b), normalise(pixels, b), atol=1e-5)
    assert convert_batch(normalise(pixels, a), a, Preprocessing(16, b.mean, b.std)).shape == (2, 3, 16, 16)


def quadrant_images(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Class = the quadrant holding a small bright square of random colour and place, on noise.

    A random-init net cannot find this from one label per class, but a teacher's soft targets on a few
    hundred unlabelled images teach it: the unlabelled images genuinely help.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 90, (n, size, size, 3)).astype(np.uint8)
    half = size // 2
    for i, label in enumerate(labels):
        dy, dx = rng.integers(0, half - 4, 2)
        y, x = (label // 2) * half + dy, (label % 2) * half + dx
        images[i, y:y + 4, x:x + 4] = rng.integers(120, 256, 3)
    return images, labels


@pytest.fixture(scope="module")
def quadrants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp_path = tmp_path_factory.mktemp("quadrants")
    files = {}
    for name, n, seed in [("teach", 200, 1), ("few", 8, 2), ("pool", 240, 3), ("test", 200, 4)]:
        images, labels = quadrant_images(n, seed)
        files[name] = tmp_path / f"{name}.npz"
        np.savez(files[name], images=images, labels=labels, classes=np.array(["tl", "tr", "bl", "br"]))
    return files


QUICK = [*FAST, "train.stages=all:6", "data.val_fraction=0", "data.test_fraction=0"]


@pytest.fixture(scope="module")
def teacher(quadrants):
    return graft.fit(quadrants["teach"], route="scratch", backbone="graft_convnet_s", out=quadrants["teach"].parent / "teacher", quiet=True,
                     # 6 epochs: at 4 the teacher only just converged (train accuracy 0.45 after 2), and how many pool images it
                     # labelled with confidence >= 0.7 depended on its random initialisation
                     overrides=[*FAST, "train.stages=all:6", "train.lr=3e-3", "data.val_fraction=0", "data.test_fraction=0"])


def test_distilled_student_beats_labels_only_with_unlabelled_images(quadrants, teacher, tmp_path):
    labels_only = graft.fit(quadrants["few"], route="scratch", backbone="graft_convnet_s", test=quadrants["test"],
                            out=tmp_path / "alone", quiet=True, overrides=QUICK)
    student = graft.fit(quadrants["few"], route="distill", backbone="graft_convnet_s", test=quadrants["test"], out=tmp_path / "kd",
                        quiet=True, overrides=[*QUICK, "model.pretrained=false", f"distill.teacher={teacher.path}",
                                               f"data.unlabeled={quadrants['pool']}"])
    assert graft.evaluate(teacher, quadrants["test"]).accuracy > 0.9
    assert student.metrics["test_accuracy"] > labels_only.metrics["test_accuracy"] + 0.3
    info = student.meta["info"]
    assert info["teacher_logits"] == "cached once" and info["transfer_set"] == {"labelled": 8, "unlabelled": 240}
    sizes = info["sizes"]
    for role in ("teacher", "student"):
        assert sizes[role]["parameters"] > 0 and sizes[role]["mflops"] > 0 and sizes[role]["images_per_second"] > 0


def test_teacher_logits_per_batch_see_the_teachers_own_size_and_normalisation():
    # a teacher that only takes 3x16x16 inputs, given a student's 12 px batch: the batch reaches it at 16 px in its
    # own normalisation; uniform colours survive resizing exactly, so the logits equal the teacher's on its own input
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).eval()
    teacher_pre = Preprocessing(16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    student_pre = Preprocessing(12, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    colours = torch.rand(5, 3, 1, 1)
    def normalise(size: int, p: Preprocessing) -> torch.Tensor:
        return (colours.expand(-1, -1, size, size) - torch.tensor(p.mean).view(1, 3, 1, 1)) / torch.tensor(p.std).view(1, 3, 1, 1)

    targets = TeacherLogits(Teacher(model, teacher_pre, "linear16"), student_pre)
    logits = targets(normalise(12, student_pre), torch.arange(5), True)
    assert torch.allclose(logits, model(normalise(16, teacher_pre)), atol=1e-4)


@pytest.mark.parametrize("augment", [[], ["train.augment.color=0.3"]])  # colour jitter keeps the quadrant (a flip would not)
def test_pretrained_student_at_a_smaller_size_than_its_teacher_learns_from_it(quadrants, teacher, source_run, tmp_path, augment):
    # the bench's setting (bench/distill.py: a pretrained student at 48 px, its teacher at 128 px) at toy scale: a
    # pretrained student at 12 px, the teacher at 16 px; augmentation off caches the teacher's logits at its own size,
    # on converts each student batch to it
    small = [*QUICK, "data.image_size=12", *augment]
    labels_only = graft.fit(quadrants["few"], route="lpft", backbone="graft_convnet_s", weights=str(source_run.path),
                            test=quadrants["test"], out=tmp_path / "alone", quiet=True, overrides=small)
    student = graft.fit(quadrants["few"], route="distill", backbone="graft_convnet_s", weights=str(source_run.path), test=quadrants["test"],
                        out=tmp_path / "kd", quiet=True, overrides=[*small, f"distill.teacher={teacher.path}", f"data.unlabeled={quadrants['pool']}"])
    info = student.meta["info"]
    assert info["student_start"] == "pretrained, linear probe"
    assert info["teacher_logits"] == ("computed per batch" if augment else "cached once")
    assert (info["sizes"]["teacher"]["input_size"], info["sizes"]["student"]["input_size"]) == (16, 12)
    # measured over runtime.seed 0-2: labels only 0.43-0.55, distilled 0.67-0.72 (cached) and 0.67-0.68 (colour jitter)
    assert student.metrics["test_accuracy"] > labels_only.metrics["test_accuracy"] + 0.1


def test_pseudo_route_records_counts_per_class_and_audited_precision(quadrants, teacher, tmp_path):
    run = graft.fit(quadrants["few"], route="pseudo", backbone="graft_convnet_s", test=quadrants["test"], out=tmp_path / "pl",
                    quiet=True, overrides=[*QUICK, "model.pretrained=false", f"distill.teacher={teacher.path}",
                                           f"data.unlabeled={quadrants['pool']}", "pseudo.audit=true", "pseudo.top_k=20", "pseudo.rounds=2"])
    rounds = run.meta["info"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    first = rounds[0]
    assert first["per_class"] == {"tl": 20, "tr": 20, "bl": 20, "br": 20} and first["selected"] == 80
    assert first["precision"] > 0.9  # the teacher is right on this task; hidden labels were read for the audit only
    logged = [line for line in (run.path / "metrics.jsonl").read_text().splitlines() if '"pseudo_labels"' in line]
    assert len(logged) == 2


def test_pseudo_and_distill_compose(quadrants, teacher, tmp_path):
    run = graft.fit(quadrants["few"], route="distill", backbone="graft_convnet_s", test=quadrants["test"], out=tmp_path / "both",
                    quiet=True, overrides=[*QUICK, "model.pretrained=false", f"distill.teacher={teacher.path}",
                                           f"data.unlabeled={quadrants['pool']}", "distill.with_pseudo=true", "pseudo.audit=true",
                                           "train.augment.preset=flip"])
    info = run.meta["info"]
    assert info["teacher_logits"] == "computed per batch"  # augmentation on: the teacher sees each augmented batch
    assert info["rounds"][0]["selected"] > 0 and info["rounds"][0]["precision"] > 0.9
    assert run.metrics["test_accuracy"] > 0.6


def test_unlabelled_npz_labels_are_never_read(tmp_path, toy_npz, source_run):
    images, _ = quadrant_images(30, 5)
    path = tmp_path / "pool.npz"
    # an object array: numpy refuses to load it without allow_pickle, so reading 'labels' would raise
    np.savez(path, images=images, labels=np.array([{"secret": i} for i in range(30)], dtype=object))
    with pytest.raises(GraftError):
        graft.data.sources.load_images(path)  # the labelled reader does open 'labels' ...
    pool = load_unlabeled(path, ["red", "green", "blue"])  # ... the unlabelled one never does
    assert len(pool) == 30 and (pool.labels == -1).all()
    run = graft.fit(toy_npz, route="pseudo", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "p",
                    quiet=True, overrides=[*FAST, "train.stages=new:1,all:2", f"data.unlabeled={path}", f"distill.teacher={source_run.path}"])
    assert run.meta["info"]["rounds"][0]["of"] == 30


def test_unlabelled_folder_and_refusals(tmp_path, toy_npz):
    from PIL import Image

    images, _ = quadrant_images(4, 6)
    (tmp_path / "pool" / "any").mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "pool" / ("any" if i % 2 else "") / f"{i}.png")
    (tmp_path / "pool" / "broken.png").write_bytes(b"not an image")
    pool = load_unlabeled(tmp_path / "pool", ["a"])
    assert len(pool) == 4 and len(pool.skipped) == 1
    with pytest.raises(GraftError, match="does not use --unlabeled"):
        graft.fit(toy_npz, route="lpft", backbone="graft_convnet_s", quiet=True, overrides=[*FAST, f"data.unlabeled={tmp_path / 'pool'}"])
    with pytest.raises(GraftError, match="needs a teacher"):
        graft.fit(toy_npz, route="distill", backbone="graft_convnet_s", quiet=True, out=tmp_path / "d", overrides=[*FAST, "model.pretrained=false"])


def test_pseudo_without_teacher_labels_with_a_model_trained_on_the_labels(toy_npz, source_run, tmp_path):
    run = graft.fit(toy_npz, route="pseudo", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "self",
                    quiet=True, overrides=[*FAST, "train.stages=new:1,all:2", f"data.unlabeled={toy_npz}", "pseudo.audit=true",
                                           "pseudo.threshold=0", "pseudo.top_k=5"])
    info = run.meta["info"]
    assert info["labeller"] == "the model trained on the labels alone"
    assert info["rounds"][0]["per_class"] == {"red": 5, "green": 5, "blue": 5} and info["rounds"][0]["precision"] > 0.6
    epochs = [h for h in (run.path / "metrics.jsonl").read_text().splitlines() if '"event": "epoch"' in h]
    assert len(epochs) == 4  # round 0 (labels only) and round 1, two epochs each after the probe
    assert run.metrics["test_accuracy"] > 0.6


def test_pseudo_run_warns_and_says_why_when_it_selects_under_5_percent(toy_npz, source_run, tmp_path):
    run = graft.fit(toy_npz, route="pseudo", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "few",
                    quiet=True, overrides=[*FAST, "train.stages=new:1,all:1", f"data.unlabeled={toy_npz}", "pseudo.threshold=1",
                                           "pseudo.per_class=false"])
    round_one = run.meta["info"]["rounds"][0]
    assert round_one["selected"] < 0.05 * round_one["of"]
    warning = run.meta["info"]["warnings"][0]
    assert "pseudo.threshold" in warning and f"of {round_one['of']} unlabelled images" in warning
    assert "pseudo.threshold" in (run.path / "report.html").read_text()
    default = graft.fit(toy_npz, route="pseudo", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "default",
                        quiet=True, overrides=[*FAST, "train.stages=new:1,all:1", f"data.unlabeled={toy_npz}"])
    chosen = default.meta["info"]["rounds"][0]
    assert chosen["selected"] >= 0.3 * chosen["of"]  # self-adaptive: about the images above the mean confidence
    assert "warnings" not in default.meta["info"]


@pytest.mark.parametrize("cut", [1, 3])  # inside round 0 (labels only), inside round 1 (pseudo-labels)
def test_interrupted_pseudo_run_resumes_to_the_same_weights(toy_npz, source_run, tmp_path, cut):
    from safetensors.torch import load_file

    common = dict(route="pseudo", backbone="graft_convnet_s", weights=str(source_run.path), quiet=True,
                  overrides=[*FAST, "train.stages=new:1,all:2", f"data.unlabeled={toy_npz}", "pseudo.threshold=0", "pseudo.top_k=5",
                             "train.augment.preset=flip"])
    whole = graft.fit(toy_npz, out=tmp_path / "whole", **common)
    with pytest.raises(KeyboardInterrupt):
        graft.fit(toy_npz, out=tmp_path / "cut", callbacks=[Interrupt(cut)], **common)
    resumed = graft.fit(resume=tmp_path / "cut", quiet=True)
    a, b = load_file(str(whole.path / "model.safetensors")), load_file(str(resumed.path / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.meta["info"]["rounds"] == whole.meta["info"]["rounds"]
    assert not (resumed.path / "parts").exists()


def test_consistency_step_masks_by_the_shared_threshold_rule():
    from graft.data.transforms import Preprocessing, TwoViews
    from graft.recipe import AugmentConfig
    from graft.train.semi import ConsistencyStep

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    raw = torch.randint(0, 255, (3, 12, 12), dtype=torch.uint8)
    views = TwoViews(Preprocessing(size=8, mean=(0.5,) * 3, std=(0.5,) * 3), AugmentConfig(preset="flip"))(raw)
    assert views.shape == (2, 3, 8, 8) and not torch.equal(views[0], views[1])  # the strong view is changed further
    pool = torch.stack([TwoViews(Preprocessing(size=8, mean=(0.5,) * 3, std=(0.5,) * 3), AugmentConfig(preset="flip"))(raw)
                        for _ in range(5)])
    supervised = nn.functional.cross_entropy(model(images), labels)
    never = ConsistencyStep(3, threshold=1.01, per_class=False)(model, (images, labels), unlabeled=(pool, torch.full((5,), -1)))
    assert torch.allclose(never["loss"], supervised)  # nothing passes: the labelled loss alone
    always = ConsistencyStep(3, threshold=0.0, per_class=False, weight=2.0)
    out = always(model, (images, labels), unlabeled=(pool, torch.full((5,), -1)))
    guess = model(pool[:, 0]).argmax(1)
    expected = supervised + 2.0 * nn.functional.cross_entropy(model(pool[:, 1]), guess)
    assert torch.allclose(out["loss"], expected, atol=1e-6) and always.masked == [5, 5]
    assert always.state_dict()["mean_top"] > 1 / 3 - 1e-9  # the moving average moved from 1/C towards the batch


def test_consistency_route_trains_from_weak_and_strong_views_and_resumes_exactly(toy_npz, source_run, tmp_path):
    from safetensors.torch import load_file

    common = dict(route="pseudo", backbone="graft_convnet_s", weights=str(source_run.path), quiet=True,
                  overrides=[*FAST, "train.stages=new:1,all:2", f"data.unlabeled={toy_npz}", "pseudo.method=consistency",
                             "train.augment.preset=flip"])
    whole = graft.fit(toy_npz, out=tmp_path / "whole", **common)
    info = whole.meta["info"]
    assert info["method"].startswith("consistency") and 0 < info["unlabelled_used"] <= 1
    assert whole.metrics["test_accuracy"] > 0.6
    with pytest.raises(KeyboardInterrupt):
        graft.fit(toy_npz, out=tmp_path / "cut", callbacks=[Interrupt(1)], **common)
    resumed = graft.fit(resume=tmp_path / "cut", quiet=True)
    a, b = load_file(str(whole.path / "model.safetensors")), load_file(str(resumed.path / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.meta["info"]["unlabelled_used"] == info["unlabelled_used"]
