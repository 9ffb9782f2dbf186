"""The page: Gradio Blocks wired to `steps`, errors shown as their one-line messages, a live training display.

Layout, top to bottom, in the order of the work: 1 the clip (upload, or the toy-world example; frames and
size), 2 the masks (click the object or draw boxes on key frames, then Make masks; or upload masks; the
tracked mask plays as an overlay), 3 the edit (edited first frame, captions, edited later frames, an
optional ground truth), 4 training and sampling (settings; Train and edit with a progress bar and the
loss curve as it comes; Sample with the trained LoRA for a new edited first frame, one click), 5 the
result (input | output, contact sheet, metrics, downloads of the mp4 and the LoRA).

Nothing leaves the machine: analytics off, no share link, no run history, no footer links, fonts local.
Every file the page gets is a copy in Gradio's cache (`display.offered`), and Gradio serves files from that
cache only (no `allowed_paths`): a browser session can fetch what it was given, never a file under --work by
its path (another session's results or LoRA, its own session folder).
Every event handler is wrapped by `display.shown` (errors as one-line messages). The GPU jobs (`jobs`) run
on the process's resident model, at most `concurrency` at a time; the others wait in Gradio's queue, which
shows each its position, and Cancel stops a running training between steps or a waiting job before it runs.
"""

from __future__ import annotations

import os
from dataclasses import fields, replace
from pathlib import Path
from types import SimpleNamespace

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before Gradio is imported: it reads this at import time

import gradio as gr  # noqa: E402

from .. import uploads  # noqa: E402
from ..errors import Cancelled, InputError  # noqa: E402
from .access import Access, check_access  # noqa: E402
from ..conditioning import MODES  # noqa: E402
from . import cleanup, jobs, prompts, steps  # noqa: E402
from .display import offered, progress_html, result_outputs, shown  # noqa: E402
from .history import edits_markdown  # noqa: E402
from .models import MODELS  # noqa: E402
from .session import Session  # noqa: E402
from .settings import AppConfig, Settings, check_config, default_settings  # noqa: E402

#: The largest upload the page accepts (Gradio refuses bigger ones before they arrive; `uploads` checks
#: each field's own limit while storing).
MAX_UPLOAD = max(uploads.KINDS[k].max_bytes for k in ("video", "mask", "image"))
CSS = ("#train-status progress {width: 50%; height: 14px; accent-color: #f97316; vertical-align: middle} "
       "#metrics th, #metrics td:nth-child(-n+2) {white-space: nowrap} "
       "#edited-first img, #later-image img {width: 100%; height: 100%; object-fit: contain; "
       "image-rendering: pixelated}")

# ---- the page ---------------------------------------------------------------------------------------


def build_app(cfg: AppConfig) -> gr.Blocks:
    """The whole page for one model; each browser tab gets its own session when it loads the page."""
    facts = check_config(cfg)  # a bad model, SAM2 or Florence-2 folder stops the app before it serves
    start = default_settings(cfg)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(cfg.work).resolve() / "gradio"))  # Gradio's copies stay here
    with gr.Blocks(title="loraedit", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        ui = SimpleNamespace(state=gr.State(None))
        gr.Markdown(f"# loraedit: edit a video from its edited first frame\nModel **{cfg.model}** ({facts.kind}, "
                    f"{facts.working_size[0]}x{facts.working_size[1]}, {facts.default_frames} frames) · masks: "
                    f"{'SAM2 tracking of clicks, or ' if cfg.sam else ''}key-frame boxes, or uploaded · captions: "
                    f"{'Florence-2 on request' if cfg.caption else 'typed'}")
        with gr.Row(equal_height=False):
            with gr.Column():
                _clip_panel(ui, start)
            with gr.Column():
                _mask_panel(ui, cfg, facts.default_frames)
            with gr.Column():
                _edit_panel(ui, cfg, start)
        _train_panel(ui, start)
        _result_panel(ui)
        _wire(ui, cfg, demo)
    return demo


def _clip_panel(ui: SimpleNamespace, start: Settings) -> None:
    gr.Markdown("## 1 · Clip")
    with gr.Row():
        ui.example_seed = gr.Number(0, precision=0, label="example seed", minimum=0, scale=1)
        ui.example_button = gr.Button("Load toy-world example", elem_id="load-example", scale=2)
    ui.video = gr.Video(label="input video", sources=["upload"], elem_id="input-video", height=260)
    ui.frames_zip = gr.File(label="…or a zip of frame images (a frames folder)", file_types=[".zip"],
                            elem_id="frames-zip", height=80)
    ui.clip_info = gr.Markdown("no clip yet", elem_id="clip-info")
    with gr.Row():
        ui.frames = gr.Number(start.frames, precision=0, label="frames (4k+1)", elem_id="frames")
        ui.width = gr.Number(start.width, precision=0, label="width", elem_id="width")
        ui.height = gr.Number(start.height, precision=0, label="height", elem_id="height")


def _mask_panel(ui: SimpleNamespace, cfg: AppConfig, frames: int) -> None:
    gr.Markdown("## 2 · Masks")
    ui.frame_index = gr.Slider(0, max(frames - 1, 1), value=0, step=1, label="frame", elem_id="frame-index")
    ui.frame_image = gr.Image(label="click on the frame", interactive=False, elem_id="frame-image", height=260,
                              format="png")
    ui.tool = gr.Radio(list(cfg.tools), value=cfg.tools[0], label="a click means", elem_id="tool")
    ui.prompts = gr.Textbox(label="prompts (as `loraedit mask` options)", interactive=False, lines=2,
                            elem_id="prompts")
    with gr.Row():
        ui.clear_button = gr.Button("Clear prompts", elem_id="clear-prompts")
        ui.mask_button = gr.Button("Make masks", variant="primary", elem_id="make-masks")
    ui.shape = gr.Radio(["box", "outline"], value="box", label="mask shape (SAM2)", visible=cfg.sam is not None)
    ui.mask_files = gr.File(label="…or upload masks: one video, one PNG per frame, or a zip of them (white = edit)",
                            file_count="multiple", file_types=[".png", ".zip", *prompts.VIDEO_SUFFIXES], elem_id="mask-files",
                            height=100)
    ui.mask_preview = gr.Video(label="tracked mask (overlay)", interactive=False, elem_id="mask-preview", height=260,
                               autoplay=True, loop=True)
    ui.mask_info = gr.Markdown("", elem_id="mask-info")


def _edit_panel(ui: SimpleNamespace, cfg: AppConfig, start: Settings) -> None:
    gr.Markdown("## 3 · Edit")
    ui.edited_first = gr.Image(label="edited first frame", type="filepath", image_mode=None, sources=["upload"],
                               elem_id="edited-first", height=260, format="png")
    ui.edit_info = gr.Markdown("", elem_id="edit-info")
    ui.train_prompt = gr.Textbox(start.train_prompt, label="caption of the input's first frame (training)",
                                 elem_id="train-caption")
    ui.prompt = gr.Textbox(start.prompt, label="caption of the edited first frame (sampling)", elem_id="caption")
    ui.caption_button = gr.Button("Caption with Florence-2", visible=cfg.caption is not None,
                                  elem_id="caption-button")
    with gr.Accordion("edited later frames (optional)", open=False):
        ui.later_index = gr.Number(None, precision=0, label="source frame index", minimum=1)
        ui.later_image = gr.Image(label="edited frame", type="filepath", image_mode=None, sources=["upload"],
                                  height=160, format="png", elem_id="later-image")
        ui.later_mask = gr.File(label="its mask (optional, PNG)", file_types=[".png"], height=80)
        with gr.Row():
            ui.later_add = gr.Button("Add edited frame")
            ui.later_clear = gr.Button("Clear")
    ui.later_info = gr.Markdown(steps.edited_frames_text({}), elem_id="later-info")
    with gr.Accordion("ground truth (optional)", open=False):
        ui.reference = gr.Video(label="ground-truth edited video", sources=["upload"], height=160)
    ui.reference_info = gr.Markdown("", elem_id="reference-info")


def _train_panel(ui: SimpleNamespace, start: Settings) -> None:
    gr.Markdown("## 4 · Train and sample")
    with gr.Row():
        ui.stage1_steps = gr.Number(start.stage1_steps, precision=0, label="stage-1 steps (motion)",
                                    elem_id="stage1-steps")
        ui.stage2_steps = gr.Number(start.stage2_steps, precision=0, label="stage-2 steps (empty: 10 epochs)",
                                    elem_id="stage2-steps")
        ui.steps = gr.Number(start.steps, precision=0, label="sampling steps", elem_id="sample-steps")
        with gr.Column():
            ui.train_button = gr.Button("Train and edit", variant="primary", elem_id="train")
            ui.sample_button = gr.Button("Sample with the trained LoRA (new edited first frame)",
                                         elem_id="sample-again")
            ui.cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
    with gr.Accordion("more settings", open=False):
        with gr.Row():
            ui.mode = gr.Dropdown(list(MODES), value=start.mode, label="mode")
            ui.rank = gr.Number(start.rank, precision=0, label="LoRA rank")
            ui.learning_rate = gr.Number(start.learning_rate, label="learning rate")
            ui.guidance = gr.Number(start.guidance, label="guidance (CFG; empty: the model's own)")
            ui.seed = gr.Number(start.seed, precision=0, label="sampling seed")
            ui.first_block_cache = gr.Number(start.first_block_cache, label="first-block cache (0: exact; 0.1: "
                                             "faster sampling, approximate)")
        ui.negative_prompt = gr.Textbox(start.negative_prompt, label="negative prompt (empty: the model's own)",
                                        lines=2)
    with gr.Row():
        ui.lora_files = gr.File(label="…or a LoRA from an earlier training (lora.safetensors; with lora_2 for "
                                "Wan2.2), for Sample with this clip and masks", file_count="multiple",
                                file_types=[".safetensors"], elem_id="lora-files", height=80)
        ui.lora_info = gr.Markdown("", elem_id="lora-info")
    ui.train_status = gr.HTML(progress_html(None, "not started"), elem_id="train-progress")
    ui.memory = gr.Markdown(MODELS.memory_text(), elem_id="model-memory")


def _result_panel(ui: SimpleNamespace) -> None:
    gr.Markdown("## 5 · Result")
    with gr.Row(equal_height=False):
        ui.side_by_side = gr.Video(label="input | output", interactive=False, elem_id="side-by-side", autoplay=True,
                                   loop=True, height=300)
        ui.contact = gr.Image(label="input, mask, output", interactive=False, elem_id="contact", height=300)
        with gr.Column(min_width=420):
            ui.metrics = gr.Markdown("no result yet", elem_id="metrics")
            ui.download_video = gr.DownloadButton("Download the mp4", interactive=False, elem_id="download-video")
            ui.download_lora = gr.DownloadButton("Download the LoRA", interactive=False, elem_id="download-lora")
            ui.all_files = gr.File(label="all files of the result", interactive=False, elem_id="result-files")
    with gr.Accordion("my edits (this session), with the command line that repeats each", open=True):
        ui.my_edits = gr.Markdown(edits_markdown([]), elem_id="my-edits")


def _wire(ui: SimpleNamespace, cfg: AppConfig, demo: gr.Blocks) -> None:
    """Connect the page's events to the steps. Every handler returns the session first (Gradio keeps it)."""
    settings_in = [getattr(ui, f.name) for f in fields(Settings)]  # the components are named like the fields
    result_panel = [ui.side_by_side, ui.contact, ui.metrics, ui.download_video, ui.download_lora, ui.all_files,
                    ui.my_edits]
    cache = demo.GRADIO_CACHE  # every file the page gets is a copy here (`offered`), the only folder served

    def offer(path) -> str | None:
        return offered(path, cache)

    def session(state: Session | None) -> Session:
        if not isinstance(state, Session):  # a new tab: old sessions are swept first
            jobs.forget(cleanup.remove_old_sessions(cfg.work, cfg.keep_hours))
            state = Session.start(cfg.work)
        cleanup.touch(state.id)
        return state

    def clip_outputs(s: Session, clip: steps.Clip) -> tuple:
        return (offer(clip.video), clip.info, gr.Slider(maximum=max(clip.frames - 1, 1), value=0),
                prompts.frame_view(s, 0))

    @shown
    def on_load(state):
        return session(state), MODELS.memory_text()

    @shown
    def on_example(state, seed_value):
        s = session(state)
        ex = steps.load_example(cfg, s, seed_value)
        return (s, *clip_outputs(s, ex.clip), prompts.prompts_text(s), offer(ex.mask_preview),
                "the example's box masks", offer(ex.edited_first), "the example's edit (a ground truth comes with it)",
                ex.edited_frames,
                *[getattr(ex.settings, f.name) for f in fields(Settings)])

    @shown
    def on_video(state, received):
        s = session(state)
        if received is None:
            return (s, *[gr.skip()] * 6)
        clip = steps.load_video(s, received)
        return (s, *clip_outputs(s, clip)[1:], prompts.prompts_text(s), None, steps.edited_frames_text(s.edited_frames))

    @shown
    def on_frames_zip(state, received):
        s = session(state)
        if received is None:
            return (s, *[gr.skip()] * 6)
        clip = steps.load_frames_zip(cfg, s, received)
        return (s, *clip_outputs(s, clip)[1:], prompts.prompts_text(s), None, steps.edited_frames_text(s.edited_frames))

    @shown
    def on_frame(state, index):
        s = session(state)
        return s, prompts.frame_view(s, index) if s.video is not None else None

    @shown
    def on_click(state, index, tool_name, evt: gr.SelectData):
        s = session(state)
        x, y = evt.index
        return s, prompts.click(cfg, s, index, x, y, tool_name), prompts.prompts_text(s)

    @shown
    def on_clear(state, index):
        s = session(state)
        s.clear_prompts()
        return s, prompts.frame_view(s, index) if s.video is not None else None, prompts.prompts_text(s)

    @shown
    def on_make_masks(state, shape_name):
        s = session(state)
        preview, info = prompts.make_masks(cfg, s, shape_name)
        return s, offer(preview), info

    @shown
    def on_mask_files(state, received):
        s = session(state)
        if not received:
            return s, gr.skip(), gr.skip()
        preview, info = prompts.load_masks(s, list(received), cfg)
        return s, offer(preview), info

    @shown
    def on_edited_first(state, received):
        s = session(state)
        return s, steps.load_edited_first(s, received)[1] if received is not None else gr.skip()

    @shown
    def on_reference(state, received):
        s = session(state)
        return s, steps.load_reference(s, received) if received is not None else gr.skip()

    @shown
    def on_add_later(state, index, image, mask):
        s = session(state)
        return s, steps.add_edited_frame(s, index, image, mask)

    @shown
    def on_clear_later(state):
        s = session(state)
        return s, steps.clear_edited_frames(s)

    @shown
    def on_caption(state):
        s = session(state)
        return (s, *steps.captions(cfg, s))

    @shown
    def on_lora_files(state, received, *values):
        s = session(state)
        if not received:
            return s, gr.skip()
        return s, jobs.load_lora_files(cfg, s, list(received), Settings(*values))

    @shown
    def on_start(state):
        s = session(state)
        jobs.start_job(s)
        return s

    @shown
    def on_cancel(state):
        s = session(state)
        jobs.request_cancel(s)
        return s

    @shown
    def on_train(state, *values):
        s = session(state)
        skip = [gr.skip()] * len(result_panel)
        yield (s, progress_html(None, "loading the model and encoding the clip…"), *skip, gr.skip())
        last, outcome = None, {}
        with cleanup.hold(s.id):
            for last in jobs.train_in_thread(cfg, s, Settings(*values), outcome):
                note = "sampling the edit…" if last.done == last.total else "training…"
                yield (s, progress_html(last, note), *skip, gr.skip())
        if isinstance(outcome.get("error"), Cancelled):
            note = f"cancelled at step {last.done}/{last.total}" if last is not None else str(outcome["error"])
            if s.cancelled:
                note += "; Train and edit with the same inputs and settings resumes from its checkpoint"
            yield (s, progress_html(last, note), *skip, MODELS.memory_text())
            return
        if "error" in outcome:
            raise outcome["error"]
        yield (s, progress_html(last, "done"), *result_outputs(outcome["result"], cache), edits_markdown(s.edits),
               MODELS.memory_text())

    @shown
    def on_sample(state, *values):
        s = session(state)
        try:
            with cleanup.hold(s.id):
                result = jobs.sample_with_lora(cfg, s, Settings(*values))
        except Cancelled as exc:
            return (s, progress_html(None, str(exc)), *[gr.skip()] * len(result_panel), gr.skip())
        return (s, gr.skip(), *result_outputs(result, cache), edits_markdown(s.edits), MODELS.memory_text())

    state = ui.state
    demo.load(on_load, [state], [state, ui.memory])
    ui.example_button.click(on_example, [state, ui.example_seed],
                            [state, ui.video, ui.clip_info, ui.frame_index, ui.frame_image, ui.prompts,
                             ui.mask_preview, ui.mask_info, ui.edited_first, ui.edit_info, ui.later_info,
                             *settings_in])
    ui.video.upload(on_video, [state, ui.video],
                    [state, ui.clip_info, ui.frame_index, ui.frame_image, ui.prompts, ui.mask_preview, ui.later_info])
    ui.frames_zip.upload(on_frames_zip, [state, ui.frames_zip],
                         [state, ui.clip_info, ui.frame_index, ui.frame_image, ui.prompts, ui.mask_preview,
                          ui.later_info])
    ui.frame_index.change(on_frame, [state, ui.frame_index], [state, ui.frame_image])
    ui.frame_image.select(on_click, [state, ui.frame_index, ui.tool], [state, ui.frame_image, ui.prompts])
    ui.clear_button.click(on_clear, [state, ui.frame_index], [state, ui.frame_image, ui.prompts])
    ui.mask_button.click(on_make_masks, [state, ui.shape], [state, ui.mask_preview, ui.mask_info])
    ui.mask_files.upload(on_mask_files, [state, ui.mask_files], [state, ui.mask_preview, ui.mask_info])
    ui.edited_first.upload(on_edited_first, [state, ui.edited_first], [state, ui.edit_info])
    ui.reference.upload(on_reference, [state, ui.reference], [state, ui.reference_info])
    ui.later_add.click(on_add_later, [state, ui.later_index, ui.later_image, ui.later_mask], [state, ui.later_info])
    ui.later_clear.click(on_clear_later, [state], [state, ui.later_info])
    ui.caption_button.click(on_caption, [state], [state, ui.train_prompt, ui.prompt])
    ui.lora_files.upload(on_lora_files, [state, ui.lora_files, *settings_in], [state, ui.lora_info]).failure(
        lambda: (None, ""), None, [ui.lora_files, ui.lora_info], show_progress="hidden")  # a refused file goes
    gpu = dict(concurrency_id="model", concurrency_limit=cfg.concurrency)  # one queue for both GPU jobs
    job_outputs = [state, ui.train_status, *result_panel, ui.memory]
    ui.train_button.click(on_start, [state], [state], concurrency_limit=None, show_progress="hidden").then(
        on_train, [state, *settings_in], job_outputs, **gpu)
    ui.sample_button.click(on_start, [state], [state], concurrency_limit=None, show_progress="hidden").then(
        on_sample, [state, *settings_in], job_outputs, **gpu)
    ui.cancel_button.click(on_cancel, [state], [state], concurrency_limit=None, show_progress="hidden")


def serve(cfg: AppConfig, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
          access: Access | None = None) -> gr.Blocks:
    """Start the app: local only unless `host` says otherwise (then with a login, see `access`), no share link,
    nothing sent anywhere; at most `cfg.concurrency` GPU jobs at once, the rest queued; files served only from
    Gradio's cache, where the handlers put what they return (`display.offered`)."""
    access = access or Access(host)
    check_access(replace(access, host=host))
    if cfg.concurrency < 1:
        raise InputError(f"--concurrency {cfg.concurrency}: give 1 or more")
    Path(cfg.work).mkdir(parents=True, exist_ok=True)
    demo = build_app(cfg)
    demo.queue(default_concurrency_limit=1)
    max_bytes = MAX_UPLOAD if cfg.max_upload_mb is None else min(MAX_UPLOAD, cfg.max_upload_mb << 20)
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
                max_file_size=max_bytes, footer_links=[],
                run_history=False, ssr_mode=False, pwa=False, mcp_server=False, show_error=False, quiet=not block,
                theme=gr.themes.Default(), css=CSS, auth=list(access.logins) or None,
                auth_message="loraedit: log in with the user and password you were given")
    return demo
