"""What the page shows, apart from the page itself: errors as one-line messages, the live training display,
the metrics table and the result panel's values.

Every event handler is wrapped by `shown`: a `LoraEditError` becomes its message (HTML-escaped) in an
error toast; anything else becomes one line too, its traceback only in the server's log.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from ..errors import LoraEditError, error_text
from ..report import loss_curve_svg
from ..train import TrainProgress
from .settings import Result

log = logging.getLogger("loraedit.ui")

METRIC_MEANING = {
    "bg_psnr": "output vs input outside the mask (dB): how well the background is kept",
    "bg_ssim": "the same as SSIM (1 = identical)",
    "ref_psnr": "output vs the ground-truth edit, whole frame (dB)",
    "ref_ssim": "output vs the ground-truth edit, whole frame, SSIM",
    "ref_edit_psnr": "output vs the ground-truth edit inside the mask (dB): how well the edit follows",
}


# ---- errors -----------------------------------------------------------------------------------------


def message(exc: LoraEditError) -> str:
    """The CLI's error text without its program prefix, escaped, one line per problem."""
    text = error_text(exc).removeprefix("loraedit: error: ")
    return "<br>".join(html.escape(line) for line in text.splitlines())


def shown(fn: Callable) -> Callable:
    """Run an event handler so that the user sees a failure as one message, never as a traceback."""

    def translate(exc: Exception) -> gr.Error:
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, LoraEditError):
            return gr.Error(message(exc), print_exception=False)
        log.exception("internal error in %s", fn.__name__)
        one_line = " ".join(str(exc).split())[:300]
        return gr.Error(html.escape(f"internal error: {type(exc).__name__}: {one_line} (details in the server log)"),
                        print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 (every failure is shown, see translate)
                raise translate(exc) from None
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise translate(exc) from None
    return call


# ---- what the page shows ----------------------------------------------------------------------------


def progress_html(progress: TrainProgress | None, note: str = "") -> str:
    """The live training display: a progress bar, the step and loss, and the loss curve so far (SVG)."""
    if progress is None:
        return f'<div id="train-status"><progress value="0" max="1"></progress> {html.escape(note)}</div>'
    last = next((values[-1] for values in reversed(progress.losses) if values), None)
    loss = f", loss {last:.4f}" if last is not None else ""
    return (f'<div id="train-status"><progress value="{progress.done}" max="{progress.total}"></progress> '
            f'step {progress.done}/{progress.total}{loss} {html.escape(note)}</div>' + loss_curve_svg(progress.log()))


def metrics_table(result: Result) -> str:
    """The metrics as a markdown table with what each means, and the prompts the run used."""
    rows = ["| metric | value | meaning |", "|---|---|---|"]
    rows += [f"| {name} | {value:.4g} | {METRIC_MEANING.get(name, '')} |" for name, value in result.metrics.items()
             if value is not None]
    if not any(name.startswith("ref_") for name in result.metrics):
        rows.append("| (ground truth) | none | upload a ground-truth edit to compare with it |")
    used = [f"- {name.replace('_', ' ')}: `{html.escape(text)}`" for name, text in result.prompts.items()]
    return "\n".join(rows + [f"\n{result.video.name}: made in {result.seconds} s"] + used)


def offered(path: str | Path | None, cache: str | Path) -> str | None:
    """`path` as the page may have it: a copy in Gradio's cache `cache`, in a folder named by a keyed hash of its
    bytes (Gradio's own `save_file_to_cache`, the copy Gradio itself makes of a returned file). The app serves
    files from that cache only (`serve` gives Gradio no `allowed_paths`), so a browser session can fetch what it
    was given and nothing else under --work, where the session folders are, not even their files by path."""
    if path is None:
        return None
    from gradio.processing_utils import save_file_to_cache

    return save_file_to_cache(path, str(cache))


def result_outputs(result: Result, cache: str | Path) -> tuple:
    """Values for the result panel: input|output video, contact sheet, metrics, the two downloads, all files
    (the report as a zip with what it shows, then the files themselves), every file a copy in `cache`."""
    lora = result.loras[0] if result.loras else None
    files = [p for p in (result.bundle, result.video, *result.loras, result.metrics_json, result.side_by_side,
                         result.contact) if p is not None]
    return (offered(result.side_by_side, cache), offered(result.contact, cache), metrics_table(result),
            gr.DownloadButton(value=offered(result.video, cache), interactive=True),
            gr.DownloadButton(value=offered(lora, cache), interactive=lora is not None),
            [offered(p, cache) for p in files])
