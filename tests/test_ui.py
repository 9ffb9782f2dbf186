"""The web app: its steps without a browser (fast), then one whole edit in a real browser (Chromium, headless).

The steps run on the tiny random Wan folder (`wan21_dir`); the browser test runs `loraedit ui`'s app on the
`toy` model as a user would: the toy-world example, boxes drawn on two key frames, an edited later frame,
training with the live progress bar and loss curve, the result with its metrics, both downloads, and a new
edited first frame sampled with the trained LoRA. It saves a screenshot in its tmp folder, and refreshes
docs/ui.png (the README's) when LORAEDIT_UPDATE_SCREENSHOT=1.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("gradio", reason="the web app needs the ui extra: pip install -e '.[test,ui]'")

from loraedit import api, lora_io, media, uploads  # noqa: E402
from loraedit.cli import build_parser, main  # noqa: E402
from loraedit.errors import InputError, LoraEditError  # noqa: E402
from loraedit.ui import jobs, prompts, steps  # noqa: E402
from loraedit.ui.history import edits_markdown  # noqa: E402
from loraedit.ui.models import MODELS, ModelHolder  # noqa: E402
from loraedit.ui.session import Session, store_mask_frames, store_upload  # noqa: E402
from loraedit.ui.settings import BOX, OBJECT, AppConfig, Result, Settings, model_facts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FAST = dict(stage1_steps=2, stage2_steps=2, rank=4, learning_rate=1e-3, steps=2)


@pytest.fixture
def cfg(tmp_path, wan21_dir) -> AppConfig:
    return AppConfig(model=str(wan21_dir), work=tmp_path / "work", cache_dir=tmp_path / "cache")


@pytest.fixture
def example(cfg):
    s = Session.start(cfg.work)
    return s, steps.load_example(cfg, s)


def _png(path: Path, image: torch.Tensor) -> Path:
    media.write_image(path, image)
    return path


def _click_box(cfg: AppConfig, s: Session, frame: int, box: tuple[int, int, int, int]):
    """Two clicks, as the page reports them: in the pixels of the (enlarged) frame it shows."""
    k = prompts.display_scale(s)
    prompts.click(cfg, s, frame, box[0] * k, box[1] * k, BOX)
    return prompts.click(cfg, s, frame, box[2] * k, box[3] * k, BOX)


# ---- sessions and uploads -------------------------------------------------------------------------------


def test_a_session_has_a_private_folder_found_only_by_its_id(tmp_path):
    s = Session.start(tmp_path)
    assert s.folder.is_dir() and s.folder.stat().st_mode & 0o777 == 0o700
    with pytest.raises(InputError, match="unknown session"):
        _ = Session("../" + s.id, tmp_path).folder


def test_uploads_are_stored_under_names_the_app_chooses(tmp_path, clip_files):
    s = Session.start(tmp_path)
    received = tmp_path / "gradio" / "My clip (final).MP4"  # a name uploads.py would refuse as it is
    received.parent.mkdir()
    received.write_bytes(clip_files["video"].read_bytes())
    stored = store_upload(s, received, "input", "video")
    assert stored.parent == s.folder and stored.name == "input-1.mp4"
    assert stored.read_bytes() == received.read_bytes()
    assert store_upload(s, received, "input", "video").name == "input-2.mp4"  # never replaces a stored file
    fake = tmp_path / "gradio" / "edit.png"
    fake.write_bytes(b"not a picture at all")
    with pytest.raises(InputError, match="first bytes"):
        store_upload(s, fake, "edited-first-frame", "image")
    with pytest.raises(InputError, match="must be one of"):
        store_upload(s, clip_files["edited0"], "input", "video")
    assert not [p for p in s.folder.iterdir() if p.name.startswith(".upload-")]  # refused uploads leave nothing


def test_mask_frames_keep_their_names_order_and_each_set_is_kept(tmp_path):
    s = Session.start(tmp_path)
    sent = []
    for i in (10, 2, 1):
        mask = torch.zeros(8, 8)
        mask[:i % 8 + 1] = 1
        sent.append(_png(tmp_path / f"m{i}.png", mask))
    first = store_mask_frames(s, sent)
    assert sorted(p.name for p in first.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert torch.equal(media.read_mask_image(first / "00002.png"), media.read_mask_image(tmp_path / "m10.png"))
    second = store_mask_frames(s, sent[:1])
    assert first.is_dir() and second != first and len(list(second.iterdir())) == 1
    assert not (s.folder / uploads.KINDS["mask-frame"].folder).exists()  # the upload folder was renamed
    with pytest.raises(InputError, match="PNG"):
        store_mask_frames(s, [tmp_path / "clip.mp4"])


# ---- the steps ------------------------------------------------------------------------------------------


def test_an_uploaded_video_becomes_the_clip_and_resets_the_last_ones_inputs(cfg, example, clip_files, tmp_path):
    s, _ = example
    clip = steps.load_video(s, clip_files["video"])
    assert clip.frames == 17 and clip.info == "17 frames at 64x64, 16 fps" and clip.video.name.startswith("input-")
    assert s.masks is None and s.reference is None and s.edited_frames == {} and not s.boxes
    assert prompts.frame_view(s, 99).shape == (64 * prompts.display_scale(s), 64 * prompts.display_scale(s), 3)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\0\0\0\x18ftypmp42" + b"\0" * 64)  # the right first bytes, no video in it
    with pytest.raises(InputError):
        steps.load_video(s, broken)


def test_the_example_fills_every_input(cfg, example):
    s, ex = example
    facts = model_facts(cfg.model)
    assert ex.clip.frames == facts.default_frames and "frames at" in ex.clip.info
    assert len(list(s.masks.iterdir())) == facts.default_frames and ex.mask_preview.is_file()
    assert s.edited_first.is_file() and s.reference.is_file()
    assert ex.settings.train_prompt and ex.settings.prompt
    assert (ex.settings.width, ex.settings.height) == facts.working_size
    for path in (s.video, s.masks, s.edited_first, s.reference):
        assert path.resolve().is_relative_to(s.folder.resolve())


def test_boxes_drawn_on_key_frames_become_interpolated_masks(cfg, example):
    s, ex = example
    last = ex.clip.frames - 1
    k = prompts.display_scale(s)
    prompts.click(cfg, s, 0, 20 * k, 6 * k, BOX)  # any two opposite corners
    assert "first corner of a box on frame 0" in prompts.prompts_text(s)
    view = prompts.click(cfg, s, 0, 4 * k, 22 * k, BOX)
    assert view.shape[:2] == (k * model_facts(cfg.model).working_size[1],
                              k * model_facts(cfg.model).working_size[0])  # enlarged, the box drawn on it
    _click_box(cfg, s, last, (30, 20, 50, 40))
    assert prompts.prompts_text(s) == f"--box 0:4,6,20,22\n--box {last}:30,20,50,40"
    preview, info = prompts.make_masks(cfg, s)
    assert preview.is_file() and "key-frame boxes" in info
    made = media.read_masks(s.masks)
    assert made.shape[0] == ex.clip.frames
    assert made[0, 6:22, 4:20].all() and made[0].sum() == 16 * 16
    assert made[last, 20:40, 30:50].all() and made[last].sum() == 20 * 20


def test_bad_clicks_are_refused_with_a_message(cfg, example):
    s, _ = example
    with pytest.raises(InputError, match="--sam"):
        prompts.click(cfg, s, 0, 5, 5, OBJECT)
    k = prompts.display_scale(s)
    prompts.click(cfg, s, 0, 5 * k, 5 * k, BOX)
    with pytest.raises(InputError, match="empty"):
        prompts.click(cfg, s, 0, 5 * k, 40 * k, BOX)  # a box of no width
    s.clear_prompts()
    with pytest.raises(InputError, match="no prompts"):
        prompts.make_masks(cfg, s)
    with pytest.raises(InputError, match="no clip"):
        prompts.click(cfg, Session.start(cfg.work), 0, 1, 1, BOX)


def test_a_click_on_the_object_is_tracked_with_sam2(cfg, example, tmp_path):
    from test_masks import write_tiny_sam2

    with_sam = replace(cfg, sam=write_tiny_sam2(tmp_path / "sam2"))
    s, _ = example
    k = prompts.display_scale(s)
    prompts.click(with_sam, s, 0, 30 * k, 30 * k, OBJECT)
    prompts.click(with_sam, s, 0, 2 * k, 2 * k, "click: not the object")
    assert prompts.prompts_text(s) == "--points 0:30,30,1\n--points 0:2,2,0"
    preview, info = prompts.make_masks(with_sam, s, shape="outline")
    assert "sam2 + outline" in info and preview.is_file()
    assert media.read_masks(s.masks).shape[0] == model_facts(cfg.model).default_frames


def test_uploaded_masks_must_fit_the_clip(cfg, example, tmp_path):
    s, ex = example
    masks = media.read_masks(s.masks)
    sent = [_png(tmp_path / f"frame{t}.png", masks[t]) for t in range(masks.shape[0])]
    with pytest.raises(InputError, match="frames but the video has"):
        prompts.load_masks(s, sent[:-1])
    assert s.masks is None  # a refused upload leaves no half-set behind
    preview, info = prompts.load_masks(s, sent)
    assert preview.is_file() and info == f"{ex.clip.frames} masks uploaded"
    assert torch.equal(media.read_masks(s.masks), masks)
    media.write_video(tmp_path / "masks.mp4", masks[:, None].expand(-1, 3, -1, -1) * 2 - 1)
    prompts.load_masks(s, [tmp_path / "masks.mp4"])
    assert s.masks.suffix == ".mp4"


def test_edited_frames_ground_truth_and_captions(cfg, example, tmp_path):
    s, ex = example
    image = _png(tmp_path / "edit.png", torch.zeros(3, 64, 64))
    with pytest.raises(InputError, match="frame 0 is the edited first frame"):
        steps.add_edited_frame(s, 0, image)
    with pytest.raises(InputError, match="outside the video"):
        steps.add_edited_frame(s, ex.clip.frames, image)
    assert steps.add_edited_frame(s, 4, image) == "edited later frames: frame 4"
    assert "no edited later frames" in steps.clear_edited_frames(s)
    path, note = steps.load_edited_first(s, image)
    assert s.edited_first == path and s.reference is None and "ground truth belonged" in note
    steps.load_reference(s, s.video)
    assert s.reference is not None
    with pytest.raises(InputError, match="--caption"):
        steps.captions(cfg, s)


def test_captions_come_from_florence2_when_the_app_has_it(cfg, example, tmp_path):
    from test_captions import write_tiny_florence2

    s, _ = example
    train, edited = steps.captions(replace(cfg, caption=write_tiny_florence2(tmp_path / "florence2")), s)
    assert isinstance(train, str) and isinstance(edited, str)


def test_train_and_edit_then_sample_with_the_lora_on_one_loaded_model(cfg, example, tmp_path):
    s, ex = example
    settings = Settings(**{**ex.settings.__dict__, **FAST})
    models = ModelHolder()
    with pytest.raises(InputError, match="Train and edit first"):
        jobs.sample_with_lora(cfg, s, settings, models=models)
    seen = []
    result = jobs.train_and_edit(cfg, s, settings, on_step=seen.append, models=models)
    assert [p.done for p in seen] == [0, 1, 2] and seen[-1].total == 2
    assert result.video.is_file() and result.side_by_side.is_file() and result.report.is_file()
    assert {"bg_psnr", "bg_ssim", "ref_psnr", "ref_ssim", "ref_edit_psnr"} <= set(result.metrics)
    assert [p.name for p in result.loras] == ["lora.safetensors"] and s.trained.loras == result.loras
    _check_report_zip(result.bundle.read_bytes(), tmp_path / "report")

    steps.load_edited_first(s, _png(tmp_path / "other.png", media.read_image(s.edited_first).flip(0)))
    again = jobs.sample_with_lora(cfg, s, replace(settings, first_block_cache=0.5), models=models)
    assert again.video.name == "edit-2.mp4" and again.loras == result.loras
    recorded = json.loads(again.metrics_json.read_text())["settings"]
    assert recorded["first_block_cache"] == 0.5 and 0 <= recorded["step_cache_skipped"] <= 1
    assert "bg_psnr" in again.metrics and not any(k.startswith("ref_") for k in again.metrics)

    other = Session.start(cfg.work)  # another tab, the same loaded model
    steps.load_example(cfg, other)
    jobs.train_and_edit(cfg, other, settings, models=models)
    assert models.loads == 1, "every job after the first reuses the loaded base"
    [(_, backend)] = models.backends()
    assert all(not getattr(t, "peft_config", None) for t in backend.transformers())  # no LoRA left on it
    assert "1 model load(s)" in models.memory_text() and "on cpu" in models.memory_text()

    # The resident base with the LoRA attached and removed gives what a fresh load gives.
    fresh = tmp_path / "fresh.mp4"
    api.sample(cfg.model, s.trained.inputs, s.edited_first, fresh, list(s.trained.loras),
               jobs._run_options(cfg, settings), jobs._sample_config(settings))
    same = jobs.sample_with_lora(cfg, s, settings, models=models)
    assert torch.equal(media.read_video(same.video)[0], media.read_video(fresh)[0])


def _lora_of_another_model(src: Path, dst: Path) -> Path:
    """`src` as if trained on another base model (its recorded fingerprint changed)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta["loraedit"] = json.dumps({**json.loads(meta["loraedit"]), "base_model": "0123456789abcdef"})
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_a_lora_from_an_earlier_training_samples_in_a_fresh_tab(cfg, example, tmp_path):
    s, ex = example
    settings = Settings(**{**ex.settings.__dict__, **FAST})
    models = ModelHolder()
    trained = jobs.train_and_edit(cfg, s, settings, models=models)
    sent = tmp_path / "sent" / "lora.safetensors"
    sent.parent.mkdir()
    sent.write_bytes(s.trained.loras[0].read_bytes())  # what the user downloaded, without its sidecar

    tab = Session.start(cfg.work)
    with pytest.raises(InputError, match="no clip"):  # the clip and masks to sample with come first
        jobs.load_lora_files(cfg, tab, [sent], settings)
    steps.load_example(cfg, tab)
    with pytest.raises(InputError) as exc:
        jobs.load_lora_files(cfg, tab, [_lora_of_another_model(sent, tmp_path / "other" / "lora.safetensors")],
                             settings)
    assert "lora.safetensors was trained for another base model" in str(exc.value)
    assert "sessions" not in str(exc.value) and tab.trained is None  # no server path; nothing kept
    assert not list(tab.folder.glob("uploaded-lora-*"))
    assert "fits this model" in jobs.load_lora_files(cfg, tab, [sent], settings)
    result = jobs.sample_with_lora(cfg, tab, settings, models=models)
    assert result.video.is_file() and "bg_psnr" in result.metrics and models.loads == 1

    # "my edits": each result with its settings and the command line that makes the same video.
    assert [e.kind for e in s.edits] == ["train and edit"] and [e.video for e in tab.edits] == [result.video]
    listed = edits_markdown(s.edits + tab.edits)
    assert listed.index("sample with a LoRA") < listed.index("train and edit") and "loraedit edit --model" in listed
    for edit, made in ((s.edits[0], trained), (tab.edits[0], result)):
        args = shlex.split(edit.command)[1:]
        again = tmp_path / "again" / edit.video.name
        args[args.index("--out") + 1] = str(again)
        assert main([*args, "--quiet"]) == 0, edit.command
        # The same video up to float rounding (seen: 0.6% of pixels off by an mp4 level or a few, mean 2e-4).
        assert (media.read_video(again)[0] - media.read_video(made.video)[0]).abs().mean() < 2e-3, edit.command


def test_training_is_cancelled_between_steps_and_resumes(cfg, example):
    s, ex = example
    settings = Settings(**{**ex.settings.__dict__, **FAST, "stage1_steps": 4, "stage2_steps": 0})
    models = ModelHolder()

    def cancel_after_two(progress):
        if progress.done == 2:
            jobs.request_cancel(s)

    jobs.start_job(s)
    with pytest.raises(LoraEditError, match="cancelled at step 2"):
        jobs.train_and_edit(cfg, s, settings, on_step=cancel_after_two, models=models)
    assert s.cancelled is not None and s.trained is None
    [(_, backend)] = models.backends()  # handed back, without the half-trained LoRA
    assert all(not getattr(t, "peft_config", None) for t in backend.transformers())

    jobs.request_cancel(s)  # a job cancelled while it waits in the queue never runs
    with pytest.raises(LoraEditError, match="waiting in the queue"):
        jobs.train_and_edit(cfg, s, settings, models=models)

    jobs.start_job(s)
    seen = []
    result = jobs.train_and_edit(cfg, s, settings, on_step=seen.append, models=models)
    assert seen[0].done == 2 and seen[-1].done == 4  # resumed from the checkpoint, not from step 0
    assert result.video.name == "edit-1.mp4" and models.loads == 1


def test_settings_from_the_form_are_checked(cfg, example):
    s, ex = example
    with pytest.raises(InputError, match="stage-1 steps None is not a whole number"):
        jobs.train_and_edit(cfg, s, Settings(**{**ex.settings.__dict__, "stage1_steps": None}))
    with pytest.raises(InputError, match="learning rate 'x' is not a number"):
        jobs.train_and_edit(cfg, s, Settings(**{**ex.settings.__dict__, "learning_rate": "x"}))
    with pytest.raises(InputError, match="is not 4k\\+1"):  # the library's own checks, before anything loads
        jobs.train_and_edit(cfg, s, Settings(**{**ex.settings.__dict__, **FAST, "frames": 6}))


# ---- the page's wrapper, displays and start-up ----------------------------------------------------------


def test_errors_reach_the_page_as_one_message_without_a_traceback():
    import gradio as gr

    from loraedit.ui.display import shown

    @shown
    def bad_input():
        raise InputError("mask <m> has 9 frames", "frames 10 is not 4k+1")

    @shown
    def bug():
        raise RuntimeError("oops <x>\n  at line 3")

    @shown
    def stream():
        yield 1
        raise LoraEditError("the GPU ran out of memory")

    with pytest.raises(gr.Error) as exc:
        bad_input()
    assert exc.value.message == ("2 problems with the input (nothing was loaded or run):<br>  - mask &lt;m&gt; has 9 "
                                 "frames<br>  - frames 10 is not 4k+1")
    with pytest.raises(gr.Error) as exc:
        bug()
    assert exc.value.message == "internal error: RuntimeError: oops &lt;x&gt; at line 3 (details in the server log)"
    gen = stream()
    assert next(gen) == 1
    with pytest.raises(gr.Error, match="the GPU ran out of memory"):
        next(gen)


def test_progress_display_and_metrics_table():
    from loraedit.train import TrainProgress
    from loraedit.ui.display import metrics_table, progress_html

    progress = TrainProgress(3, 10, ({"stage": 1, "expert": "transformer", "steps": 10},), ((0.5, 0.4, 0.3),))
    shown = progress_html(progress, "training…")
    assert '<progress value="3" max="10">' in shown and "step 3/10, loss 0.3000" in shown and "<svg" in shown
    result = Result(Path("edit-1.mp4"), *[Path("x")] * 4, (), {"bg_psnr": 31.234, "bg_ssim": 0.9},
                          {"prompt": "p3rs0n, a <b>"}, 2.5)
    table = metrics_table(result)
    assert "| bg_psnr | 31.23 |" in table and "(ground truth) | none" in table and "&lt;b&gt;" in table


def test_the_app_refuses_to_start_on_bad_folders(tmp_path):
    from loraedit.ui.app import build_app

    with pytest.raises(InputError) as exc:
        build_app(AppConfig(model=str(tmp_path / "nowhere"), work=tmp_path, sam=tmp_path / "nosam"))
    assert len(exc.value.problems) == 2 and "--model" in exc.value.problems[0] and "--sam" in exc.value.problems[1]
    assert main(["ui", "--model", str(tmp_path / "nowhere"), "--work", str(tmp_path)]) == 2
    args = build_parser().parse_args(["ui"])
    assert (args.host, args.model, args.port) == ("127.0.0.1", "toy", None)


# ---- a whole edit in a real browser ---------------------------------------------------------------------


def _browser_or_skip():
    """Playwright driving Debian's Chromium; under CI the test must run, elsewhere it is skipped without them."""
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)"
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        reason = "playwright is missing (pip install -e '.[test]')"
    if reason is None:
        return sync_playwright
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the browser test must run under CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


class Page:
    """A few user actions on the app's page (Playwright), in the clip's own pixels where it matters."""

    def __init__(self, page, clip_width: int):
        self.page, self.clip_width = page, clip_width

    def text(self, elem_id: str) -> str:
        return self.page.inner_text(f"#{elem_id}")

    def wait_text(self, elem_id: str, needle: str, timeout: float = 120) -> str:
        self.page.wait_for_function("([id, s]) => document.getElementById(id)?.innerText.includes(s)",
                                    arg=[elem_id, needle], timeout=timeout * 1000)
        return self.text(elem_id)

    def frame_shown(self, not_src: str = "") -> str:
        """Wait until the frame to click on is loaded (and is not `not_src`); its address."""
        self.page.wait_for_function("s => { const i = document.querySelector('#frame-image img'); "
                                    "return i && i.complete && i.naturalWidth > 0 && i.src != s; }", arg=not_src)
        return self.page.eval_on_selector("#frame-image img", "i => i.src")

    def click_frame(self, x: float, y: float) -> None:
        """Click clip pixel (x, y) on the shown frame, placed the way the page maps clicks back (contain, <= 1:1)."""
        self.frame_shown()
        before = self.page.input_value("#prompts textarea")
        left, top, width, height, nw, nh = self.page.eval_on_selector(
            "#frame-image img", "i => {const b = i.getBoundingClientRect(); "
            "return [b.left, b.top, b.width, b.height, i.naturalWidth, i.naturalHeight]}")
        k = nw / self.clip_width
        scale = min(width / nw, height / nh, 1)
        self.page.mouse.click(left + (width - nw * scale) / 2 + (x + 0.5) * k * scale,
                              top + (height - nh * scale) / 2 + (y + 0.5) * k * scale)
        self.page.wait_for_function("v => document.querySelector('#prompts textarea').value != v", arg=before)

    def box(self, frame: int, box: tuple[int, int, int, int]) -> None:
        number = self.page.locator("#frame-index input[type=number]")
        if number.input_value() != str(frame):
            shown = self.frame_shown()
            number.fill(str(frame))
            number.press("Enter")
            self.frame_shown(not_src=shown)  # the new frame is drawn
        self.click_frame(box[0], box[1])
        self.click_frame(box[2] - 1, box[3] - 1)

    def download(self, elem_id: str, to: Path) -> Path:
        with self.page.expect_download() as event:
            self.page.click(f"#{elem_id}")
        event.value.save_as(to)
        return to


def test_a_whole_edit_in_a_real_browser(tmp_path, monkeypatch):
    sync_playwright = _browser_or_skip()
    from loraedit.ui.app import serve

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    cfg = AppConfig(model="toy", work=tmp_path / "work", cache_dir=tmp_path / "cache")
    facts = model_facts("toy")
    scenario = steps.example_scenario(cfg, 0)
    frames, (width, _) = facts.default_frames, facts.working_size
    later = frames // 2
    later_png = _png(tmp_path / "later.png", scenario.edited_video[later])
    new_edit = _png(tmp_path / "new-edit.png", scenario.edited_first_frame.flip(0))  # another colour

    MODELS.clear()
    app = serve(cfg, host="127.0.0.1", port=_free_port(), block=False)
    costs, outside = {}, []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
                (app.local_url, "data:", "blob:")) else None)
            ui = Page(page, width)
            page.goto(app.local_url)

            # Bad input: one line in an error toast, nothing else happens.
            page.click("#train")
            page.get_by_text("no clip is loaded").first.wait_for(timeout=30_000)

            started = time.perf_counter()
            page.click("#load-example")
            assert "frames at" in ui.wait_text("clip-info", f"{frames} frames at")
            page.wait_for_function("document.querySelector('#input-video video')?.readyState >= 2")
            assert ui.text("edit-info").startswith("the example's edit")
            costs["load"] = time.perf_counter() - started

            started = time.perf_counter()
            ui.box(0, _bbox(scenario.box_masks[0]))
            ui.box(frames - 1, _bbox(scenario.box_masks[-1]))
            assert re.fullmatch(rf"--box 0:[\d.,]+\n--box {frames - 1}:[\d.,]+", page.input_value("#prompts textarea"))
            page.click("#make-masks")
            assert f"{frames} masks (key-frame boxes" in ui.wait_text("mask-info", "masks (")
            page.wait_for_function("document.querySelector('#mask-preview video')?.readyState >= 2")
            costs["mask"] = time.perf_counter() - started

            page.get_by_text("edited later frames (optional)").click()
            page.get_by_label("source frame index").fill(str(later))
            page.locator("#later-image input[type=file]").set_input_files(str(later_png))
            page.wait_for_function("document.querySelector('#later-image img')")
            page.get_by_role("button", name="Add edited frame").click()
            ui.wait_text("later-info", f"frame {later}")

            stage1, stage2, sampling = 6, 2, 6
            total = stage1 + stage2
            for elem_id, value in (("stage1-steps", stage1), ("stage2-steps", stage2), ("sample-steps", sampling)):
                page.fill(f"#{elem_id} input", str(value))
            page.evaluate("""() => { window.seen = [];
                new MutationObserver(() => { const p = document.querySelector('#train-status progress');
                    if (p) window.seen.push([p.value, p.max]); })
                .observe(document.getElementById('train-progress'), {subtree: true, childList: true,
                                                                      characterData: true}); }""")
            started = time.perf_counter()
            page.click("#train")
            metrics = ui.wait_text("metrics", "bg_psnr", timeout=180)
            costs["train"] = time.perf_counter() - started
            seen = page.evaluate("window.seen")
            assert [total, total] in seen and any(v < total and top == total for v, top in seen), seen  # live
            assert f"step {total}/{total}" in ui.text("train-status")
            assert page.locator("#train-progress svg polyline").count()  # the loss curve
            for name in ("bg_psnr", "bg_ssim", "ref_psnr", "ref_ssim", "ref_edit_psnr"):  # ground truth included
                assert re.search(rf"{name}\s+-?\d+(\.\d+)?", metrics), (name, metrics)
            page.wait_for_function("document.querySelector('#side-by-side video')?.readyState >= 2")

            video = media.read_video(ui.download("download-video", tmp_path / "download.mp4"))[0]
            assert video.shape == (frames, 3, facts.working_size[1], width)
            state, settings = lora_io.read_lora(ui.download("download-lora", tmp_path / "download.safetensors"))
            assert state and settings.rank == 16 and settings.base_kind == facts.kind
            links = page.eval_on_selector_all("#result-files a", "as => as.map(a => a.href)")
            [bundle] = [link for link in links if link.endswith("/edit-1.zip")]  # the report with what it shows
            assert all("/gradio_api/file=" + str(tmp_path / "gradio") in link for link in links), links
            _check_report_zip(page.request.get(bundle).body(), tmp_path / "report")

            started = time.perf_counter()
            page.locator("#edited-first input[type=file]").set_input_files(str(new_edit))
            ui.wait_text("edit-info", "new edited first frame")
            page.click("#sample-again")
            metrics = ui.wait_text("metrics", "edit-2.mp4", timeout=120)
            costs["sample"] = time.perf_counter() - started
            assert re.search(r"bg_psnr\s+\d", metrics) and "ref_psnr" not in metrics  # no ground truth for it
            assert MODELS.loads == 1, "Train and edit, then Sample: the model was loaded once"
            assert re.search(r"edit-2.mp4 \(sample with a LoRA.*edit-1.mp4 \(train and edit.*loraedit edit --model",
                             ui.text("my-edits"), re.S)
            assert "1 model load(s)" in ui.wait_text("model-memory", "1 model load(s)")
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
            if os.environ.get("LORAEDIT_UPDATE_SCREENSHOT"):  # refresh the README's picture on purpose only
                shutil.copyfile(tmp_path / "ui.png", REPO / "docs" / "ui.png")

            # A fresh tab samples a new edit with the downloaded LoRA; a LoRA of another model is refused.
            fresh = browser.new_context().new_page()
            fresh.goto(app.local_url)
            fresh.click("#load-example")
            Page(fresh, width).wait_text("clip-info", "frames at")
            fresh.fill("#sample-steps input", str(sampling))
            wrong = _lora_of_another_model(tmp_path / "download.safetensors", tmp_path / "wrong" / "lora.safetensors")
            fresh.locator("#lora-files input[type=file]").set_input_files(str(wrong))
            fresh.get_by_text("was trained for another base model").first.wait_for(timeout=30_000)
            fresh.locator("#lora-files").get_by_text("Drop File Here").wait_for(timeout=30_000)  # refused: cleared
            fresh.locator("#lora-files input[type=file]").set_input_files(str(tmp_path / "download.safetensors"))
            Page(fresh, width).wait_text("lora-info", "fits this model")
            assert "1 model load(s)" in Page(fresh, width).text("model-memory")  # the page shows what is held
            fresh.locator("#edited-first input[type=file]").set_input_files(str(new_edit))
            Page(fresh, width).wait_text("edit-info", "new edited first frame")
            fresh.click("#sample-again")
            assert re.search(r"bg_psnr\s+\d", Page(fresh, width).wait_text("metrics", "edit-1.mp4", timeout=120))
            assert MODELS.loads == 1
            browser.close()
    finally:
        app.close()
    assert outside == []  # the page fetched nothing from outside the app
    assert (tmp_path / "ui.png").stat().st_size > 10_000
    print("browser test seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items()))


def _check_report_zip(data: bytes, to: Path) -> None:
    """The result's zip, unpacked: the report page with every file it links."""
    import io
    import zipfile

    zipfile.ZipFile(io.BytesIO(data)).extractall(to)
    [report] = to.glob("*.report.html")
    linked = re.findall(r'(?:src|href)="([^"#:]+)"', report.read_text())
    assert len(linked) >= 2 and all((to / name).is_file() for name in linked), linked


def _urls(value) -> list[str]:
    """The file addresses in an output the API client returned (files not downloaded)."""
    if isinstance(value, dict):
        found = [value["url"]] if isinstance(value.get("url"), str) else []
        return found + [u for v in value.values() for u in _urls(v)]
    if isinstance(value, (list, tuple)):
        return [u for v in value for u in _urls(v)]
    return []


def test_only_files_the_app_returned_are_served(tmp_path, monkeypatch):
    """Over HTTP, without a browser: a file the app handed to this session is served; any other file under
    --work (a planted one, another session's result, this session's own files by their server path) is not."""
    import tempfile

    import httpx
    from gradio_client import Client

    from loraedit.ui.app import serve

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    elsewhere = tmp_path / "system-temp"  # --work outside the system temp folder and the working folder, as on a
    elsewhere.mkdir()  # server: Gradio then refuses to copy a returned file itself unless it is allowed
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    cfg = AppConfig(model="toy", work=tmp_path / "work", cache_dir=tmp_path / "cache")
    secret = cfg.work / "other-session" / "secret.txt"
    secret.parent.mkdir(parents=True)
    secret.write_text("not yours")
    other = Session.start(cfg.work)
    (other.folder / "results").mkdir()
    (other.folder / "results" / "edit-1.mp4").write_bytes(b"another session's result")

    app = serve(cfg, host="127.0.0.1", port=_free_port(), block=False)
    try:
        client = Client(app.local_url, download_files=False, verbose=False)
        outputs = client.predict(0, api_name="/on_example")
        urls = _urls(outputs)
        assert len(urls) == 4, outputs  # the input video, the frame to click on, the mask overlay, the edited frame
        mine = [p for p in (cfg.work / "sessions").iterdir() if p.name != other.id]
        assert len(mine) == 1
        own_files = {p.read_bytes(): p for p in mine[0].rglob("*") if p.is_file()}
        with httpx.Client(timeout=30) as http:
            served = [http.get(url) for url in urls]
            assert all(got.status_code == 200 for got in served)
            copies = [got.content for got in served if got.content in own_files]  # the frame view is Gradio's PNG
            assert len(copies) == 3 and all("/gradio_api/file=" + str(tmp_path / "gradio") in url for url in urls)
            refused = [secret, other.folder / "results" / "edit-1.mp4", *own_files.values()]
            for path in refused:
                got = http.get(f"{app.local_url}gradio_api/file={path}")
                assert 400 <= got.status_code < 500 and b"not yours" not in got.content, path
            assert http.get(f"{app.local_url}gradio_api/file={tmp_path / 'gradio'}/../work/other-session/"
                            "secret.txt").status_code >= 400
    finally:
        app.close()


def _log_in(page, url: str, user: str, password: str) -> None:
    page.goto(url)
    page.locator("input[type=password]").wait_for(timeout=30_000)
    assert page.locator("#train").count() == 0  # nothing of the app before the login
    page.locator("input[type=text]").first.fill(user)
    page.fill("input[type=password]", password)
    page.get_by_role("button", name="Login").click()
    page.locator("#train").wait_for(timeout=30_000)


def test_a_second_job_queues_and_both_can_be_cancelled_behind_a_login(tmp_path, monkeypatch):
    """Two logged-in tabs: A trains, B's job waits in the queue with its position shown; B cancels (its job
    never runs), A cancels (training stops between steps, the model is handed back)."""
    sync_playwright = _browser_or_skip()
    from loraedit.ui.access import Access
    from loraedit.ui.app import serve

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    cfg = AppConfig(model="toy", work=tmp_path / "work", cache_dir=tmp_path / "cache")
    with pytest.raises(InputError, match="needs a login"):
        serve(cfg, host="0.0.0.0", port=_free_port(), block=False)  # refused before it listens
    MODELS.clear()
    app = serve(cfg, host="127.0.0.1", port=_free_port(), block=False, access=Access(logins=(("ann", "s3cret"),)))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            wrong = browser.new_page()
            wrong.goto(app.local_url)
            wrong.locator("input[type=text]").first.fill("ann")
            wrong.fill("input[type=password]", "wrong")
            wrong.get_by_role("button", name="Login").click()
            wrong.get_by_text("Incorrect").first.wait_for(timeout=30_000)
            tabs = [browser.new_context().new_page() for _ in range(2)]
            for page in tabs:
                _log_in(page, app.local_url, "ann", "s3cret")
                page.click("#load-example")
                Page(page, 1).wait_text("clip-info", "frames at")
                page.fill("#stage1-steps input", "400")
            a, b = tabs
            a.click("#train")
            Page(a, 1).wait_text("train-status", "training…", timeout=120)
            b.click("#train")
            b.get_by_text(re.compile(r"queue: 1/1")).first.wait_for(timeout=30_000)  # its place in the queue
            b.click("#cancel")
            a.click("#cancel")
            note = Page(a, 1).wait_text("train-status", "cancelled at step", timeout=60)
            assert "resumes from its checkpoint" in note
            Page(b, 1).wait_text("train-status", "cancelled while waiting in the queue", timeout=60)
            assert MODELS.loads == 1 and "no result yet" in Page(b, 1).text("metrics")
            browser.close()
    finally:
        app.close()


def test_logins_and_the_network_rule(tmp_path):
    from loraedit.ui.access import Access, check_access, is_loopback, parse_login, read_auth_file

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))
    assert parse_login("ann:pa:ss") == ("ann", "pa:ss")
    with pytest.raises(InputError, match="USER:PASSWORD"):
        parse_login("ann:")
    (tmp_path / "logins").write_text("# the team\nann:one\n\nbob:two\n")
    assert read_auth_file(tmp_path / "logins") == (("ann", "one"), ("bob", "two"))
    (tmp_path / "bad").write_text("ann:one\nbob\n")
    with pytest.raises(InputError, match="line 2") as exc:
        read_auth_file(tmp_path / "bad")
    assert "one" not in str(exc.value)  # no password in a message
    check_access(Access("127.0.0.1"))
    check_access(Access("0.0.0.0", (("ann", "one"),)))
    check_access(Access("0.0.0.0", insecure_no_auth=True))
    with pytest.raises(InputError, match="needs a login"):
        check_access(Access("0.0.0.0"))
    assert main(["ui", "--host", "0.0.0.0", "--work", str(tmp_path)]) == 2  # refused before anything loads
    args = build_parser().parse_args(["ui", "--auth", "a:b", "--auth", "c:d", "--concurrency", "2"])
    assert args.auth == ["a:b", "c:d"] and args.concurrency == 2 and not args.insecure_no_auth


def test_old_sessions_are_removed_but_never_one_in_use(tmp_path):
    from loraedit.ui import cleanup

    old, busy, recent = (Session.start(tmp_path) for _ in range(3))
    for s in (old, busy, recent):
        (s.folder / "results").mkdir()
        (s.folder / "results" / "edit-1.mp4").write_bytes(b"x")
    (tmp_path / "sessions" / "not-a-session").mkdir()  # never touched: not a session id
    now = time.time() + 5 * 3600
    cleanup.touch(recent.id)
    os.utime(recent.folder / "results" / "edit-1.mp4", (now, now))  # written within the hour
    with cleanup.hold(busy.id):
        assert cleanup.remove_old_sessions(tmp_path, keep_hours=4, now=now) == [old.id]
    assert not (tmp_path / "sessions" / old.id).exists()
    assert busy.folder.is_dir() and recent.folder.is_dir() and (tmp_path / "sessions" / "not-a-session").is_dir()
    assert cleanup.remove_old_sessions(tmp_path, keep_hours=4, now=now) == [busy.id]  # once its job ended
    assert cleanup.remove_old_sessions(tmp_path, keep_hours=0, now=now + 10**6) == []  # 0: keep forever
    with pytest.raises(InputError, match="unknown session"):
        _ = old.folder


def test_frames_and_masks_as_zips(cfg, example, tmp_path):
    import zipfile

    s, ex = example
    frames, _ = media.read_video(s.video)
    masks = media.read_masks(s.masks)
    frames_zip, masks_zip = tmp_path / "frames.zip", tmp_path / "masks.zip"
    with zipfile.ZipFile(frames_zip, "w") as z:
        for t in reversed(range(frames.shape[0])):  # the members' order does not matter, their names do
            media.write_image(tmp_path / "f.png", frames[t])
            z.write(tmp_path / "f.png", f"clip/../frame{t}.png")  # a member path is never used as a path
        z.writestr("__MACOSX/clip/._frame0.png", b"junk")
        z.writestr("clip/.DS_Store", b"junk")
    with zipfile.ZipFile(masks_zip, "w") as z:
        for t in range(masks.shape[0]):
            _png(tmp_path / "m.png", masks[t])
            z.write(tmp_path / "m.png", f"mask_{t}.png")
    clip = steps.load_frames_zip(cfg, s, frames_zip)
    assert clip.frames == ex.clip.frames and s.video.parent == s.folder and s.video.name.startswith("frames-")
    assert torch.equal(media.read_video(s.video)[0], frames)
    preview, info = prompts.load_masks(s, [masks_zip], cfg)
    assert info == f"{ex.clip.frames} masks uploaded" and torch.equal(media.read_masks(s.masks), masks)
    assert not (tmp_path / "evil.png").exists() and not list(s.folder.glob("frames-*.zip"))

    with pytest.raises(InputError, match="limit of 3"):
        steps.load_frames_zip(replace(cfg, max_files=3), s, frames_zip)
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"not a zip at all")
    with pytest.raises(InputError, match="first bytes"):
        steps.load_frames_zip(cfg, s, fake)
    with zipfile.ZipFile(tmp_path / "odd.zip", "w") as z:
        z.writestr("frame0.exe", b"MZ")
    with pytest.raises(InputError, match="must be one of"):
        steps.load_frames_zip(cfg, s, tmp_path / "odd.zip")
