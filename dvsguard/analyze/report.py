"""The ``report`` stage: one self-contained HTML page and a Markdown twin of a run folder.

A run folder as the pipeline runner makes it::

    RUN_DIR/pipeline_state.json   stage → {"result": the stage command's JSON, ...}
    RUN_DIR/train/<name>/         config.json, metrics.jsonl, best.pt, last.pt
    RUN_DIR/attack/<name>/        attack.json, attack.md, *.png
    RUN_DIR/deployed/<name>/      <name>.net and manifest, attack_events.json (the integer network's event curve)
    RUN_DIR/analyze/              analysis.json, *.png
    RUN_DIR/export/               *.json (manifest, verification)

or a single training run folder (config.json, metrics.jsonl, and ``analysis/`` beside the
checkpoints when ``analyze`` wrote there). Any subset of the parts is fine. The HTML embeds every
image as a base64 data URI (the file can be mailed alone) and runs no script; ``report.md``
references the images by relative paths. Training curves are drawn into ``RUN_DIR/report_files/``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvsguard.errors import ConfigError
from dvsguard.units import eps_label

log = logging.getLogger(__name__)

HTML_NAME, MD_NAME, ASSETS = "report.html", "report.md", "report_files"
EVENTS_JSON = "attack_events.json"
ANALYSIS_FIGURES = (
    ("vulnerability.png", "Random vs adversarial perturbation (Fig. 1)"),
    ("theorem.png", "Theorem 4.3 measured: predicted vs measured ρ_adv/ρ_rand"),
    ("finite_difference.png", "Proposition 4.4: finite difference against ‖∇ₓ f_y‖₁"),
    ("sparsity.png", "Distribution of gradient components (Fig. 4)"),
    ("heatmaps.png", "Gradient heatmaps (Fig. 5)"),
    ("lambda_sweep.png", "Accuracy and gradient norms against λ (Fig. 3)"),
)


# ----------------------------------------------------------------------------- document model


@dataclass
class Table:
    """A table: ``header`` and ``rows`` of cells (already formatted strings)."""

    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    """A PNG on disk shown with ``caption``."""

    path: Path
    caption: str


@dataclass
class Text:
    """A paragraph (plain text)."""

    text: str


@dataclass
class Pre:
    """Preformatted text (code/JSON)."""

    text: str


@dataclass
class Section:
    """A titled block of items; ``level`` 2 or 3."""

    title: str
    items: list[Any] = field(default_factory=list)
    level: int = 2


# ----------------------------------------------------------------------------- reading the run


@dataclass
class RunLayout:
    """What a run folder holds (any part may be missing)."""

    root: Path
    kind: str  # "pipeline" or "train"
    state: dict[str, Any] | None
    train: dict[str, Path]
    attack: dict[str, Path]
    analyze: Path | None
    export: Path | None
    extra_analyses: dict[str, Path] = field(default_factory=dict)  # train/<name>/analysis folders
    deployed: dict[str, Path] = field(default_factory=dict)  # deployed/<name> folders (event curves)


_READ: list[Path] = []  # the files read by the section being built, to name one when its content is malformed


def _text(path: Path, what: str = "JSON") -> str:
    """``path``'s UTF-8 text; ConfigError naming the file when it is binary."""
    _READ.append(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: binary content, expected {what} text") from None


def _read_json(path: Path, obj: bool = True) -> Any | None:
    """The JSON in ``path``; None (with a warning) when unreadable or half written.

    A binary file, or (with ``obj``) JSON that is not an object, is a ConfigError naming the file.
    """
    try:
        doc = json.loads(_text(path))
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("%s: skipped (%s)", path, exc)
        return None
    if obj and not isinstance(doc, dict):
        raise ConfigError(f"{path}: holds a JSON {_json_kind(doc)}, expected an object")
    return doc


def _json_kind(doc: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(doc), "number")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = _text(path).splitlines()
    except OSError as exc:
        log.warning("%s: skipped (%s)", path, exc)
        return rows
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: a line is not JSON (a write in progress?); skipped", path)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _subdirs(path: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(path.iterdir()) if p.is_dir() and p.name != ASSETS} if path.is_dir() else {}


def discover(run_dir: str | os.PathLike[str]) -> RunLayout:
    """Find the parts of a run folder; ConfigError when it is not a folder or holds none of them."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: run folder not found")
    if (root / "metrics.jsonl").is_file() or (root / "config.json").is_file() and not (root / "train").is_dir():
        analysis = root / "analysis"
        return RunLayout(root, "train", None, {root.name: root}, {}, analysis if analysis.is_dir() else None, None)
    state_path = root / "pipeline_state.json"
    state = _read_json(state_path) if state_path.is_file() else None
    train = {k: v for k, v in _subdirs(root / "train").items() if (v / "metrics.jsonl").is_file() or (v / "config.json").is_file()}
    attack = _subdirs(root / "attack")
    analyze = root / "analyze" if (root / "analyze").is_dir() else None
    export = root / "export" if (root / "export").is_dir() else None
    deployed = {k: v for k, v in _subdirs(root / "deployed").items() if (v / EVENTS_JSON).is_file()}
    if state is None and not (train or attack or analyze or export or deployed):
        raise ConfigError(f"{root}: not a run folder (no pipeline_state.json, train/, attack/, deployed/, analyze/, "
                          f"export/ or metrics.jsonl)")
    extra = {name: folder / "analysis" for name, folder in train.items() if (folder / "analysis").is_dir()}
    return RunLayout(root, "pipeline", state, train, attack, analyze, export, extra, deployed)


# ----------------------------------------------------------------------------- formatting helpers


def fmt(v: Any) -> str:
    """A cell: floats to 4 significant digits, None to an em dash, containers to compact JSON."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple, dict)):
        text = json.dumps(v, default=str)
        return text if len(text) <= 80 else text[:77] + "…"
    return str(v)


def eps_text(v: Any) -> str:
    """ε (or a list of them) in frame units as :func:`dvsguard.units.eps_label` writes it; other values as :func:`fmt`."""
    if isinstance(v, (list, tuple)):
        return ", ".join(eps_text(e) for e in v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return eps_label(float(v))
    return fmt(v)


def _pct(v: Any) -> str:
    """An accuracy as a percentage; fractions (≤ 1) are scaled by 100."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return fmt(v)
    return f"{100 * v:.1f}" if v <= 1.0 else f"{v:.1f}"


def kv_table(d: dict[str, Any], skip: Iterable[str] = ()) -> Table:
    """A two-column key/value table of a flat dict (nested values shown as compact JSON)."""
    skip = set(skip)
    return Table(["setting", "value"], [[str(k), fmt(v)] for k, v in d.items() if k not in skip])


def json_table(obj: Any) -> Table | None:
    """A table from JSON-like data: a list of dicts, a dict of dicts, or a flat dict; else None."""
    if isinstance(obj, list) and obj and all(isinstance(r, dict) for r in obj):
        cols: list[str] = []
        for r in obj:
            cols += [k for k in r if k not in cols]
        return Table(cols, [[fmt(r.get(c)) for c in cols] for r in obj])
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        cols = []
        for r in obj.values():
            cols += [k for k in r if k not in cols]
        return Table(["name", *cols], [[str(k), *[fmt(r.get(c)) for c in cols]] for k, r in obj.items()])
    if isinstance(obj, dict) and obj:
        return kv_table(obj)
    return None


def markdown_tables(text: str) -> list[Table]:
    """The pipe tables of a Markdown text (header row, separator row, body rows)."""
    tables: list[Table] = []
    lines = [ln.strip() for ln in text.splitlines()]
    i = 0
    while i + 1 < len(lines):
        if lines[i].startswith("|") and set(lines[i + 1].replace("|", "").replace(":", "").strip()) <= {"-"} \
                and "-" in lines[i + 1]:
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows = []
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append([c.strip() for c in lines[j].strip("|").split("|")])
                j += 1
            tables.append(Table(header, rows))
            i = j
        else:
            i += 1
    return tables


# ----------------------------------------------------------------------------- sections


def overview_section(layout: RunLayout) -> Section:
    """Run folder, date, version and (for pipelines) the stage table."""
    from dvsguard import __version__

    sec = Section("Run")
    sec.items.append(Table(["", ""], [
        ["folder", str(layout.root.resolve())],
        ["kind", "pipeline run" if layout.kind == "pipeline" else "training run"],
        ["report written", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")],
        ["dvsguard", __version__],
    ]))
    stages = (layout.state or {}).get("stages") or {}
    if stages:
        rows = []
        for name, st in stages.items():
            started, finished = st.get("started"), st.get("finished")
            status = "finished" if finished else ("failed" if st.get("error") else "not finished")
            secs = f"{finished - started:.1f}" if isinstance(started, (int, float)) and isinstance(finished, (int, float)) else "—"
            rows.append([name, status, secs])
        sec.items.append(Text("Pipeline stages (from pipeline_state.json):"))
        sec.items.append(Table(["stage", "status", "seconds"], rows))
        for name in ("synth", "preprocess"):
            result = (stages.get(name) or {}).get("result")
            if isinstance(result, dict) and result:
                sec.items.append(Section(f"Data: {name}", [kv_table(_flat(result))], level=3))
    for toml in sorted(layout.root.glob("*.toml")):
        try:
            sec.items.append(Section(f"Pipeline file: {toml.name}", [Pre(_text(toml, "TOML"))], level=3))
        except OSError as exc:
            log.warning("%s: skipped (%s)", toml, exc)
    return sec


TRAIN_KEYS = ("defense", "preset", "epochs", "batch", "lr", "weight_decay", "lam", "sr_form", "h", "eps", "attack",
              "pgd_steps", "seed", "augment", "limit_train", "amp")


def training_section(layout: RunLayout, assets: Path) -> Section | None:
    """Per training run: its configuration, curves (drawn into ``assets``) and best/final metrics."""
    if not layout.train:
        return None
    from dvsguard.analyze.figures import save_png, training_curves_figure

    sec = Section("Training")
    config_rows = []
    data_cfg: dict[str, Any] | None = None
    for name, folder in layout.train.items():
        cfg = _read_json(folder / "config.json") if (folder / "config.json").is_file() else None
        train_cfg = (cfg or {}).get("train", {}) if isinstance(cfg, dict) else {}
        data_cfg = data_cfg or ((cfg or {}).get("data") if isinstance(cfg, dict) else None)
        if train_cfg:
            cells = {k: fmt(train_cfg.get(k)) for k in TRAIN_KEYS}
            cells["eps"] = eps_text(train_cfg.get("eps"))
            if train_cfg.get("defense") in ("sr", "sr-star") and train_cfg.get("lam") is None:
                from dvsguard.train.defenses import DEFAULT_LAMBDA

                cells["lam"] = f"{DEFAULT_LAMBDA:g} (default)"
            config_rows.append([name, *[cells[k] for k in TRAIN_KEYS]])
    if config_rows:
        sec.items.append(Section("Configuration", [Table(["run", *TRAIN_KEYS], config_rows)], level=3))
    if data_cfg:
        framing = data_cfg.get("framing") or {}
        rows = {"protocol": data_cfg.get("protocol", "events"), **{f"framing.{k}": v for k, v in framing.items()},
                "classes": ", ".join(map(str, data_cfg.get("classes") or [])),
                "value_range": data_cfg.get("value_range"), "cache": data_cfg.get("cache")}
        sec.items.append(Section("Data", [kv_table(rows)], level=3))
    summary_rows = []
    for name, folder in layout.train.items():
        rows = _read_jsonl(folder / "metrics.jsonl") if (folder / "metrics.jsonl").is_file() else []
        if not rows:
            continue
        png = save_png(training_curves_figure(rows, name), assets / f"train_{_safe(name)}.png")
        sec.items.append(Image(png, f"Training curves: {name}"))
        best = max(rows, key=lambda r: r.get("test_acc", float("-inf")) if isinstance(r.get("test_acc"), (int, float)) else float("-inf"))
        last = rows[-1]
        summary_rows.append([name, fmt(last.get("epoch", len(rows))), _pct(best.get("test_acc")), fmt(best.get("epoch")),
                             _pct(last.get("test_acc")), _pct(last.get("robust_acc")), fmt(last.get("train_loss")),
                             fmt(sum(r.get("seconds", 0.0) for r in rows if isinstance(r.get("seconds"), (int, float))))])
    if summary_rows:
        sec.items.insert(len(sec.items) - len(summary_rows), Table(
            ["run", "epochs", "best test acc (%)", "best epoch", "last test acc (%)", "last FGSM acc (%)",
             "last train loss", "seconds"], summary_rows))
    return sec


ATTACK_INFO = ("checkpoint", "source", "cache", "split", "n_samples", "seed", "ensemble", "members", "eps", "seconds")


def attack_section(layout: RunLayout) -> Section | None:
    """Per attacked model: the robustness table(s) from attack.json (or attack.md) and its figures."""
    if not layout.attack:
        return None
    sec = Section("Robustness")
    for name, folder in layout.attack.items():
        sub = Section(name, level=3)
        doc = _read_json(folder / "attack.json") if (folder / "attack.json").is_file() else None
        if isinstance(doc, dict):
            info = {k: doc[k] for k in ATTACK_INFO if k in doc}
            if "eps" in info:
                info["eps"] = eps_text(info["eps"])
            if info:
                sub.items.append(kv_table(info))
        tables = attack_tables(doc) if doc is not None else []
        if not tables and (folder / "attack.md").is_file():
            tables = markdown_tables(_text(folder / "attack.md", "Markdown"))
        if tables:
            sub.items.append(Text("Accuracy (%) under attack:"))
        sub.items += tables
        for png in sorted(folder.glob("*.png")):
            sub.items.append(Image(png, f"{name}: {png.stem.replace('_', ' ')}"))
        if not sub.items:
            sub.items.append(Text("no attack.json, attack.md or figure in this folder yet"))
        sec.items.append(sub)
    return sec


DEPLOYED_TITLE = "Deployed robustness against event budgets"


def deployed_section(layout: RunLayout, assets: Path) -> Section | None:
    """The event curve of each deployed model's integer network beside its float-frame curve, and their table."""
    if not layout.deployed:
        return None
    from dvsguard.analyze.figures import deployed_robustness_figure, save_png

    events: dict[str, list[dict[str, Any]]] = {}
    judges: dict[str, str] = {}
    for name, folder in layout.deployed.items():
        doc = _read_json(folder / EVENTS_JSON)
        if isinstance(doc, dict) and isinstance(doc.get("results"), list):
            events[name] = doc["results"]
            judges[name] = f"{name}: {doc.get('n_samples', '?')} samples, judged on the {doc.get('judge', '?')}"
    if not events:
        return Section(DEPLOYED_TITLE, [Text("no readable attack_events.json in deployed/ yet")])
    frames = {}
    for name, folder in layout.attack.items():
        doc = _read_json(folder / "attack.json") if (folder / "attack.json").is_file() else None
        if isinstance(doc, dict) and isinstance(doc.get("results"), list):
            frames[name] = doc["results"]
    png = save_png(deployed_robustness_figure(frames, events), assets / "deployed_robustness.png")
    sec = Section(DEPLOYED_TITLE, [
        Text("Each model exported to lava-dl netx and attacked with whole events (budget: events inserted plus "
             "deleted per sample, on the integer counts per frame bin); an example succeeds when the exported "
             "integer network misclassifies it. Float disagreement: the share of samples whose adversarial frames "
             "the float model classifies differently from the integer network. " + "; ".join(judges.values()) + "."),
        Image(png, "Robust accuracy against ε on float frames (float model, white box) and against the event "
                   "budget (integer network; labels: float disagreement, %)"),
    ])
    rows = [[name, str(r["attack"]), str(r["budget"]), _pct(r["accuracy"]), _pct(r.get("float_disagreement")),
             fmt(r.get("events_per_attacked_sample")), fmt(r.get("total"))]
            for name, records in events.items() for r in records]
    sec.items.append(Table(["model", "attack", "events per sample", "integer network accuracy (%)",
                            "float disagreement (%)", "events spent per attacked sample", "samples"], rows))
    return sec


def attack_tables(doc: Any) -> list[Table]:
    """The paper-style table of an attack.json (its Markdown ``table``), else its ``results`` records."""
    if isinstance(doc, dict):
        if isinstance(doc.get("table"), str):
            found = markdown_tables(doc["table"])
            if found:
                return found
        for key in ("results", "rows"):
            if key in doc:
                t = json_table(doc[key])
                if t is not None:
                    return [t]
        return []
    t = json_table(doc)
    return [t] if t is not None else []


def analysis_section(folder: Path | None, title: str = "Analysis") -> Section | None:
    """The summary of analysis.json and every analysis figure."""
    if folder is None:
        return None
    sec = Section(title)
    doc = _read_json(folder / "analysis.json") if (folder / "analysis.json").is_file() else None
    if isinstance(doc, dict) and isinstance(doc.get("models"), dict):
        s = doc.get("settings", {})
        sec.items.append(Text(
            f"{doc.get('samples', {}).get('n', '?')} samples of {doc.get('samples', {}).get('source', '?')}; "
            f"Theorem 4.3 measured at ε = {eps_text(s.get('theory_eps'))} with {s.get('mc_draws')} random draws and "
            f"{s.get('adv_steps')} ascent steps per start; ‖g‖₀ counts |g_i| > {fmt(s.get('l0_tol'))}·max|g|."))
        rows = []
        for name, m in doc["models"].items():
            sm = m.get("summary", {})
            th = sm.get("theorem", {})
            fd = sm.get("finite_difference", {})
            fd_small = fd[min(fd, key=float)] if fd else {}
            rows.append([name, fmt(m.get("defense")), fmt(m.get("lam")), fmt(sm.get("clean_acc")), fmt(sm.get("pgd_acc")),
                         fmt(sm.get("mean_l1")), fmt(sm.get("mean_l2")), fmt(sm.get("mean_l0_fraction")),
                         fmt(sm.get("median_ratio_pred")), fmt(sm.get("median_ratio_emp")),
                         fmt(th.get("bounds_emp_rate")), fmt((th.get("ratio") or {}).get("spearman")),
                         fmt(fd_small.get("spearman"))])
        sec.items.append(Table(
            ["model", "defense", "λ", "clean (%)", "PGD (%)", "mean ‖g‖₁", "mean ‖g‖₂", "‖g‖₀/m",
             "median 3‖g‖₁²/‖g‖₂²", "median ρ_adv/ρ_rand", "3 ≤ ρ_adv/ρ_rand ≤ 3‖g‖₀", "Spearman (ratio)",
             "Spearman (FD, smallest h)"], rows))
    known = {f for f, _ in ANALYSIS_FIGURES}
    for fname, caption in ANALYSIS_FIGURES:
        if (folder / fname).is_file():
            sec.items.append(Image(folder / fname, caption))
    for png in sorted(folder.glob("*.png")):
        if png.name not in known:
            sec.items.append(Image(png, png.stem.replace("_", " ")))
    if len(sec.items) == 0:
        sec.items.append(Text("the analysis folder holds no analysis.json or figure yet"))
    return sec


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not isinstance(v, (dict, list)) or (isinstance(v, list) and len(v) <= 8
                                                                              and not any(isinstance(x, (dict, list)) for x in v))}


def export_section(folder: Path | None, state: dict[str, Any] | None = None) -> Section | None:
    """Every JSON file of the export folder (manifest) and the export stage's comparison/verification result."""
    result = ((state or {}).get("stages") or {}).get("export", {}).get("result") if state else None
    if folder is None and not result:
        return None
    sec = Section("Export")
    for path in sorted(folder.glob("*.json")) if folder is not None else []:
        doc = _read_json(path, obj=False)
        if doc is None:
            continue
        sub = Section(path.name, level=3)
        if isinstance(doc, dict):
            flat = _flat(doc)
            if flat:
                sub.items.append(kv_table(flat))
            for k, v in doc.items():
                if k in flat:
                    continue
                t = json_table(_flat(v) if isinstance(v, dict) and not all(isinstance(x, dict) for x in v.values()) else v)
                if t is not None and t.rows:
                    sub.items += [Text(f"{k}:"), t]
        else:
            t = json_table(doc)
            sub.items.append(t if t is not None else Pre(json.dumps(doc, indent=1)[:4000]))
        sec.items.append(sub)
    if isinstance(result, dict):
        for key, title in (("compare", "Integer simulator vs PyTorch"), ("verify", "Verification in Lava")):
            if isinstance(result.get(key), dict):
                sec.items.append(Section(title, [kv_table(_flat(result[key]))], level=3))
    for png in sorted(folder.glob("*.png")) if folder is not None else []:
        sec.items.append(Image(png, png.stem.replace("_", " ")))
    if not sec.items:
        sec.items.append(Text("the export folder holds no JSON result yet"))
    return sec


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ----------------------------------------------------------------------------- rendering

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.8em}
"""


def _html_items(items: Sequence[Any], out: list[str]) -> int:
    n_images = 0
    for it in items:
        if isinstance(it, Section):
            out.append(f"<h{it.level}>{html.escape(it.title)}</h{it.level}>")
            n_images += _html_items(it.items, out)
        elif isinstance(it, Table):
            out.append("<table>")
            if any(it.header):
                out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in it.header) + "</tr>")
            for row in it.rows:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
            out.append("</table>")
        elif isinstance(it, Image):
            data = base64.b64encode(it.path.read_bytes()).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(it.caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{html.escape(it.caption)}</figcaption></figure>")
            n_images += 1
        elif isinstance(it, Text):
            out.append(f"<p>{html.escape(it.text)}</p>")
        elif isinstance(it, Pre):
            out.append(f"<pre>{html.escape(it.text)}</pre>")
    return n_images


def render_html(title: str, sections: Sequence[Section]) -> tuple[str, int]:
    """The page and the number of images embedded."""
    out = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    n = _html_items(sections, out)
    out.append("</body></html>")
    return "\n".join(out) + "\n", n


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_items(items: Sequence[Any], root: Path, out: list[str]) -> None:
    for it in items:
        if isinstance(it, Section):
            out += ["#" * it.level + " " + it.title, ""]
            _md_items(it.items, root, out)
        elif isinstance(it, Table):
            header = it.header if any(it.header) else ["", ""][: len(it.header)] or [""]
            out.append("| " + " | ".join(_md_cell(h) or " " for h in header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in it.rows]
            out.append("")
        elif isinstance(it, Image):
            rel = os.path.relpath(it.path.resolve(), root.resolve())
            out += [f"![{it.caption}]({Path(rel).as_posix()})", "", f"*{it.caption}*", ""]
        elif isinstance(it, Text):
            out += [it.text, ""]
        elif isinstance(it, Pre):
            out += ["```", it.text, "```", ""]


def render_markdown(title: str, sections: Sequence[Section], root: Path) -> str:
    """The Markdown twin; image paths relative to ``root`` (the folder of report.md)."""
    out = [f"# {title}", ""]
    _md_items(sections, root, out)
    return "\n".join(out).rstrip() + "\n"


def _section(builder: Any, state: Path | None) -> Section | None:
    """``builder()``; a file of the run with values of the wrong JSON type is a ConfigError naming it
    (the last file read, else the pipeline state ``state``)."""
    _READ[:] = [state] if state is not None else []
    try:
        return builder()
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
        where = _READ[-1] if _READ else "run folder"
        raise ConfigError(f"{where}: unexpected content ({type(exc).__name__}: {' '.join(str(exc).split())})") from None


def build_report(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``RUN_DIR/report.html`` and ``RUN_DIR/report.md``; return paths, sections and image count."""
    from dvsguard.atomic import write_text

    layout = discover(run_dir)
    root = layout.root
    assets = root / ASSETS
    builders = [lambda: overview_section(layout), lambda: training_section(layout, assets),
                lambda: attack_section(layout), lambda: deployed_section(layout, assets),
                lambda: analysis_section(layout.analyze),
                *[lambda f=folder, n=name: analysis_section(f, f"Analysis: {n}")
                  for name, folder in layout.extra_analyses.items()],
                lambda: export_section(layout.export, layout.state)]
    state = root / "pipeline_state.json" if layout.state is not None else None
    sections = [sec for sec in (_section(b, state) for b in builders) if sec is not None]
    title = f"dvsguard run: {root.resolve().name}"
    page, n_images = render_html(title, sections)
    html_path = write_text(root / HTML_NAME, page)
    md_path = write_text(root / MD_NAME, render_markdown(title, sections, root))
    return {
        "html": str(html_path),
        "markdown": str(md_path),
        "sections": [s.title for s in sections],
        "images": n_images,
        "kind": layout.kind,
    }
