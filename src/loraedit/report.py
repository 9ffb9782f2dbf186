"""What a person opens after a run: input | output side by side, the metrics JSON, a one-page HTML report.

Beside `out/car.mp4` (and its contact sheet, from `api.write_outputs`) go `car.side_by_side.mp4`,
`car.metrics.json` and `car.report.html`; beside a trained LoRA, `report.html`. The report is one static
page with relative links to those files and the loss curve drawn as inline SVG from `train_log.json`
(no plotting library, no script, nothing fetched). Every string from the user (prompts, paths) is
HTML-escaped, since the web app serves these pages.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import torch

from . import media

SVG_WIDTH, SVG_HEIGHT, SVG_PAD = 640, 240, 40
PHASE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def result_paths(out: Path) -> dict[str, Path]:
    """The files beside an output video `out` (the mp4 itself included)."""
    out = Path(out)
    return {"video": out, "contact": out.with_suffix(".contact.png"),
            "side_by_side": out.with_suffix(".side_by_side.mp4"), "metrics": out.with_suffix(".metrics.json"),
            "report": out.with_suffix(".report.html")}


def side_by_side(left: torch.Tensor, right: torch.Tensor, gap: int = 4) -> torch.Tensor:
    """[T, 3, H, W] twice -> [T, 3, H, 2W + gap], a dark gap between; the right is cover-cropped to the left's size."""
    if right.shape[-2:] != left.shape[-2:]:
        right = media.cover_crop(right, (left.shape[-1], left.shape[-2]))
    frames = min(left.shape[0], right.shape[0])
    sep = torch.full((frames, 3, left.shape[-2], gap), -0.8)
    return torch.cat([left[:frames].cpu(), sep, right[:frames].cpu()], dim=-1)


def write_json(path: Path, data: dict) -> None:
    """Atomically, as strict JSON: NaN/inf (a metric over an empty region) become null, paths strings."""
    with media.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_strict(data), indent=2, default=str, allow_nan=False))


def _strict(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def loss_curve_svg(log: dict) -> str:
    """The training losses of `train_log.json` as an inline SVG: raw points, a running mean, one colour per phase."""
    phases = log.get("phases") or []
    losses = log.get("losses") or []
    series, start = [], 0
    for i, values in enumerate(losses):
        label = f"stage {phases[i]['stage']} ({phases[i]['expert']})" if i < len(phases) else f"phase {i + 1}"
        series.append((label, list(range(start, start + len(values))), [float(v) for v in values]))
        start += len(values)
    points = [v for _, _, ys in series for v in ys if math.isfinite(v)]
    if not points:
        return "<p>No training losses were logged.</p>"
    lo, hi = min(points), max(points)
    hi = hi if hi > lo else lo + 1e-6
    steps = max(start - 1, 1)

    def xy(step: int, value: float) -> str:
        x = SVG_PAD + (SVG_WIDTH - 2 * SVG_PAD) * step / steps
        y = SVG_HEIGHT - SVG_PAD - (SVG_HEIGHT - 2 * SVG_PAD) * (value - lo) / (hi - lo)
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{SVG_HEIGHT}" '
             f'viewBox="0 0 {SVG_WIDTH} {SVG_HEIGHT}" role="img" aria-label="training loss">',
             f'<rect x="0" y="0" width="{SVG_WIDTH}" height="{SVG_HEIGHT}" fill="white"/>',
             f'<line x1="{SVG_PAD}" y1="{SVG_HEIGHT - SVG_PAD}" x2="{SVG_WIDTH - SVG_PAD}" '
             f'y2="{SVG_HEIGHT - SVG_PAD}" stroke="#444"/>',
             f'<line x1="{SVG_PAD}" y1="{SVG_PAD}" x2="{SVG_PAD}" y2="{SVG_HEIGHT - SVG_PAD}" stroke="#444"/>',
             f'<text x="{SVG_PAD - 4}" y="{SVG_PAD + 4}" font-size="11" text-anchor="end">{hi:.3g}</text>',
             f'<text x="{SVG_PAD - 4}" y="{SVG_HEIGHT - SVG_PAD}" font-size="11" text-anchor="end">{lo:.3g}</text>',
             f'<text x="{SVG_WIDTH / 2}" y="{SVG_HEIGHT - 8}" font-size="11" text-anchor="middle">step (0-{start - 1})'
             '</text>']
    for i, (label, xs, ys) in enumerate(series):
        colour = PHASE_COLOURS[i % len(PHASE_COLOURS)]
        finite = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
        parts += [f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="1.5" fill="{colour}" opacity="0.35"/>'
                  for p in (xy(x, y) for x, y in finite)]
        smooth = _running_mean([y for _, y in finite], window=max(1, len(finite) // 10))
        if len(finite) > 1:
            line = " ".join(xy(x, y) for (x, _), y in zip(finite, smooth))
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{SVG_WIDTH - SVG_PAD}" y="{SVG_PAD + 14 * i}" font-size="11" text-anchor="end" '
                     f'fill="{colour}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _table(rows: dict) -> str:
    cells = []
    for key, value in rows.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        cells.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(shown)}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    """A plain self-describing page; `sections` are (heading, already-escaped HTML)."""
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
img,video{{max-width:100%}} table{{border-collapse:collapse}} th,td{{border:1px solid #ccc;padding:3px 8px;
text-align:left}}</style></head>
<body><h1>{html.escape(title)}</h1>
{body}
</body></html>
"""


def write_result_report(out: Path, video: torch.Tensor, source: torch.Tensor, masks: torch.Tensor, fps: float,
                        settings: dict, train_log: Path | None = None) -> dict[str, Path]:
    """Side-by-side mp4, metrics JSON and HTML report beside the output video `out` (already written)."""
    from .metrics import pixel_metrics

    paths = result_paths(out)
    video = video.detach().float().cpu()
    media.write_video(paths["side_by_side"], side_by_side(source, video), fps=fps)
    metrics = pixel_metrics(video, source, masks)
    files = {k: p.name for k, p in paths.items()}
    write_json(paths["metrics"], {"metrics": metrics, "settings": settings, "files": files,
                                  "note": "background metrics compare the output with the input outside the mask, "
                                  "frames after the first; `loraedit eval --clip DIR` adds the CLIP metrics"})
    log = _read_log(train_log)
    sections = [("Input | output", f'<video src="{html.escape(paths["side_by_side"].name)}" controls loop muted '
                 'autoplay></video>'),
                ("Contact sheet (input, mask, output)", f'<img src="{html.escape(paths["contact"].name)}" '
                 'alt="contact sheet">'),
                ("Metrics", _table(metrics)),
                ("Training loss", loss_curve_svg(log) if log else "<p>No training in this run (no train_log.json "
                 "beside the LoRA).</p>"),
                ("Settings", _table(settings))]
    with media.atomic_path(paths["report"]) as tmp:
        tmp.write_text(html_page(f"loraedit: {Path(out).name}", sections))
    return paths


def write_training_report(out_dir: Path, settings: dict) -> Path:
    """`report.html` beside a trained LoRA: the loss curve and the settings."""
    out_dir = Path(out_dir)
    log = _read_log(out_dir / "train_log.json") or {}
    path = out_dir / "report.html"
    with media.atomic_path(path) as tmp:
        tmp.write_text(html_page(f"loraedit: LoRA in {out_dir.name}", [
            ("Training loss", loss_curve_svg(log)), ("Settings", _table(settings))]))
    return path


def _read_log(path: Path | None) -> dict | None:
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
