"""A self-contained HTML page for people, rendered from the JSON report.

One file, no external resources: images (and WAV audio) produced by checks are inlined as
``data:`` URIs. Shows the verdict banner, the model, load findings, the check table, recovered
triggers (target hint next to G(z*), as in the paper's Fig. 5 reconstructions, Rawat et al.
arXiv 2108.01644), and every check's evidence and pictures (nearest BF-OI samples, weight
structure, ...).

Everything in a report can come from an attacker (file names, target names, check summaries
quoting the file), so every text goes through ``html.escape``; the page also carries a
Content-Security-Policy that forbids scripts and any non-inline resource. Artifacts are read
only from inside the artifacts directory (no ``..``, no symlink escapes), only with an allowed
media type whose magic bytes match, and only up to a size limit.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

MAX_INLINE_BYTES = 4 * 1024 * 1024  # per artifact
MAX_TOTAL_INLINE_BYTES = 64 * 1024 * 1024  # per page
MAX_EVIDENCE_CHARS = 6000
# media type -> magic-byte prefixes accepted for inlining
INLINE_TYPES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "audio/wav": (b"RIFF",),
    "audio/x-wav": (b"RIFF",),
}
VERDICT_COLOURS: dict[str, str] = {
    "clean": "#1a7f37",
    "suspicious": "#9a6700",
    "backdoored": "#cf222e",
    "rejected": "#8250df",
    "inconclusive": "#57606a",
}
STATUS_COLOURS: dict[str, str] = {
    "pass": "#1a7f37",
    "warn": "#9a6700",
    "fail": "#cf222e",
    "error": "#8250df",
    "skipped": "#57606a",
}
CSP = "default-src 'none'; img-src data:; media-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1f2328}
h1{font-size:1.4rem;word-break:break-all}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;width:100%;font-size:.9rem}td,th{border:1px solid #d0d7de;padding:.3rem .5rem;
text-align:left;vertical-align:top}th{background:#f6f8fa}.banner{color:#fff;padding:1rem 1.5rem;border-radius:8px}
.banner h2{border:none;margin:0;font-size:1.6rem;text-transform:uppercase}.badge{color:#fff;border-radius:4px;
padding:0 .4rem;font-weight:600;font-size:.8rem}.gallery{display:flex;flex-wrap:wrap;gap:1rem}figure{margin:0}
figcaption{font-size:.8rem;max-width:260px;word-break:break-all}img{image-rendering:pixelated;max-width:260px;
border:1px solid #d0d7de}pre{background:#f6f8fa;padding:.5rem;overflow:auto;max-height:24rem;font-size:.8rem}
.mono{font-family:ui-monospace,monospace;word-break:break-all}.name{font-family:ui-monospace,monospace;white-space:nowrap}
"""


class _Inliner:
    """Reads artifacts safely and turns them into data URIs, within a total budget."""

    def __init__(self, artifacts_dir: Path | None) -> None:
        self.root = artifacts_dir.resolve() if artifacts_dir is not None else None
        self.total = 0

    def data_uri(self, artifact: Mapping[str, Any] | None) -> tuple[str, str] | None:
        """(media_type, data URI) of an inlinable artifact, or None with no error (it is listed instead)."""
        if not artifact or self.root is None:
            return None
        media_type = str(artifact.get("media_type", ""))
        magic = INLINE_TYPES.get(media_type)
        if magic is None:
            return None
        path = (self.root / str(artifact.get("name", ""))).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        size = path.stat().st_size
        if size > MAX_INLINE_BYTES or self.total + size > MAX_TOTAL_INLINE_BYTES:
            return None
        data = path.read_bytes()
        if not data.startswith(magic):
            return None
        self.total += size
        return media_type, f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"

    def figure(self, artifact: Mapping[str, Any] | None, caption: str) -> str:
        inlined = self.data_uri(artifact)
        cap = f"<figcaption>{escape(caption)}</figcaption>"
        if inlined is None:
            name = artifact.get("name", "") if artifact else ""
            return f"<figure><div class='mono'>{escape(str(name)) or '(no picture)'}</div>{cap}</figure>"
        media_type, uri = inlined
        if media_type.startswith("audio/"):
            return f"<figure><audio controls src='{escape(uri)}'></audio>{cap}</figure>"
        return f"<figure><img alt='{escape(caption)}' src='{escape(uri)}'>{cap}</figure>"


def _fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#57606a")
    return f"<span class='badge' style='background:{colour}'>{escape(status)}</span>"


def _evidence_text(evidence: Any) -> str:
    text = json.dumps(evidence, indent=1, ensure_ascii=False, default=str)
    if len(text) > MAX_EVIDENCE_CHARS:
        text = text[:MAX_EVIDENCE_CHARS] + f"\n… ({len(text) - MAX_EVIDENCE_CHARS} more characters in the JSON report)"
    return text


def render_html(report: Mapping[str, Any], *, artifacts_dir: Path | None = None) -> str:
    """The report as one HTML page; pictures are read from ``artifacts_dir`` when given."""
    inline = _Inliner(artifacts_dir)
    model = report["model"]
    verdict = str(report["verdict"])
    parts: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">",
        f"<title>dgmscan: {escape(verdict)} — {escape(model['file_name'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>dgmscan report for <span class='mono'>{escape(model['file_name'])}</span></h1>",
        f"<div class='banner' style='background:{VERDICT_COLOURS.get(verdict, '#57606a')}'>",
        f"<h2>{escape(verdict)}</h2><ul>",
        *(f"<li>{escape(reason)}</li>" for reason in report.get("verdict_reasons", [])),
        "</ul></div>",
    ]

    latent = model.get("latent") or {}
    output = model.get("output") or {}
    rows = [
        ("file", model["file_name"]),
        ("sha256", model["sha256"]),
        ("size", f"{model['size_bytes']} bytes"),
        ("format", _fmt(model.get("format"))),
        ("architecture", _fmt(model.get("architecture"))),
        ("latent", f"{latent.get('distribution', '—')} {latent.get('shape', '')}" if latent else "—"),
        (
            "output",
            f"{output.get('kind', '—')} {output.get('shape', '')} in {output.get('value_range', '')}"
            f", {output.get('final_activation', '')}"
            if output
            else "—",
        ),
        ("parameters", _fmt(model.get("parameters"))),
        ("profile / seed / device", f"{report['profile']} / {report['seed']} / {report['device']}"),
        ("started / duration", f"{report['started_at']} / {report['duration_s']} s"),
        ("tool", f"{report['tool']['name']} {report['tool']['version']}"),
    ]
    if report.get("load_error"):
        rows.append(("load error", report["load_error"]))
    parts.append("<h2>Model</h2><table>")
    parts += [f"<tr><th>{escape(k)}</th><td class='mono'>{escape(str(v))}</td></tr>" for k, v in rows]
    parts.append("</table>")

    if report.get("findings"):
        parts.append("<h2>File findings</h2><table><tr><th>severity</th><th>code</th><th>message</th></tr>")
        for f in report["findings"]:
            parts.append(
                f"<tr><td>{escape(str(f.get('severity', '')))}</td><td class='mono'>{escape(str(f.get('code', '')))}"
                f"</td><td>{escape(str(f.get('message', '')))}</td></tr>"
            )
        parts.append("</table>")

    parts.append(
        "<h2>Checks</h2><table><tr><th>check</th><th>status</th><th>score</th><th>threshold</th>"
        "<th>summary</th><th>time (s)</th></tr>"
    )
    for c in report["checks"]:
        parts.append(
            f"<tr><td class='name'><a href='#check-{escape(c['name'])}'>{escape(c['name'])}</a></td>"
            f"<td>{_badge(c['status'])}</td><td>{escape(_fmt(c.get('score')))}</td>"
            f"<td>{escape(_fmt(c.get('threshold')))}</td><td>{escape(str(c['summary']))}</td>"
            f"<td>{escape(_fmt(c.get('duration_s')))}</td></tr>"
        )
    parts.append("</table>")

    targets_by_name = {t["name"]: t for t in report.get("targets", []) if t.get("name")}
    if report.get("recovered_triggers"):
        parts.append("<h2>Recovered triggers</h2><p>Target hint next to G(z*) at the recovered latent z*.</p>")
        for i, trig in enumerate(report["recovered_triggers"]):
            target = targets_by_name.get(trig.get("target") or "")
            parts.append(
                f"<h3>#{i} from {escape(str(trig.get('source', '')))}: target "
                f"{escape(str(target['file_name']) if target else str(trig.get('target') or 'none (target-free)'))},"
                f" TarDis (per-element mean) {escape(_fmt(trig.get('tardis_mean')))}</h3><div class='gallery'>"
            )
            if target:
                parts.append(inline.figure(target.get("artifact"), f"target {target['file_name']}"))
            parts.append(inline.figure(trig.get("artifact"), "G(z*)"))
            parts.append("</div>")

    if report.get("targets"):
        parts.append("<h2>Target hints</h2><div class='gallery'>")
        parts += [inline.figure(t.get("artifact"), str(t["file_name"])) for t in report["targets"]]
        parts.append("</div>")

    parts.append("<h2>Check details</h2>")
    for c in report["checks"]:
        parts.append(
            f"<h3 id='check-{escape(c['name'])}'>{escape(c['name'])} {_badge(c['status'])}</h3>"
            f"<p>{escape(str(c.get('description') or ''))}</p><p>{escape(str(c['summary']))}</p>"
        )
        if c.get("artifacts"):
            parts.append("<div class='gallery'>")
            parts += [inline.figure(a, a.get("description") or a.get("name", "")) for a in c["artifacts"]]
            parts.append("</div>")
        if c.get("evidence"):
            parts.append(
                f"<details><summary>evidence</summary><pre>{escape(_evidence_text(c['evidence']))}</pre></details>"
            )

    parts.append("</body></html>\n")
    return "\n".join(parts)
