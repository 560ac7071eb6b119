"""The paper's Table 2 (Liu et al., ICML 2024) on the embedded digits, over several seeds.

For every seed this writes a pipeline file and runs it with :mod:`dvsguard.pipeline`: the
embedded dataset (``synth``: 1000 recordings on a 64×64 sensor, framed at 32×32 with T = 10, the
quickstart's data), vanilla trained from scratch, FGSM-AT, SR and SR* (optionally PGD-AT and RAT)
each fine-tuned from that vanilla model with the same schedule, and a separately trained vanilla
*source* model (its own seed) that crafts every model's black-box examples. Each model is attacked
white box with the four-member ensemble (clean, FGSM, PGD50) and black box from the source, at the
reported ε, and then (``dvsguard.stages.attack``) with ensemble PGD10 at a list of ε for the
robust-accuracy-vs-ε curve.

The reported ε is the paper's 8/255 on CIFAR10-DVS translated into this data's frame units: there
8/255 is 0.031 events per sensor pixel and frame bin; here a frame pixel sums 2×2 sensor pixels and
frames are count/15, so one frame unit is k = 15/4 = 3.75 events per sensor pixel and
ε = (8/255)/3.75 = 32/3825 ≈ 0.0084 (:func:`dvsguard.units.convert_budget`). The SR weight
converts by k² (the squared SR term): λ = 0.002/3.75² ≈ 1.4e-4. Every defense trains at the
reported ε (six fine-tuning epochs, where the paper trains 200 epochs at a quarter of it).

Every cell is mean ± sd over the seeds; SR* is compared per seed with FGSM-AT, SR and vanilla
(paired t test and two-sided sign test over seeds on the per-seed differences). ``--quickstart``
also runs ``pipelines/quickstart.toml`` for seeds 0, 1, 2; ``--lambda-sweep`` fine-tunes SR at
several λ and measures clean and PGD accuracy and the mean ‖∇ₓf_y‖₁, ‖∇ₓf_y‖₂ (the analyze
stage; the paper's Fig. 3).

    .venv/bin/python benchmarks/table2_digits.py --seeds 0,1,2
    .venv/bin/python benchmarks/table2_digits.py --quickstart-only
    .venv/bin/python benchmarks/table2_digits.py --lambda-sweep-only
    .venv/bin/python benchmarks/table2_digits.py --preset vgg11-chip --defenses vanilla,sr-star

Timings depend on the CPU and on what else runs on it; float rounding of convolution kernels
differs by CPU (oneDNN chooses them by instruction set), so the figures move between machines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dvsguard.units import convert_budget, eps_label, events_per_sensor_pixel, paper_units_per_events_unit  # noqa: E402

COUNT_CAP = 15
PAPER_EPS = 8 / 255
"""The paper's attack budget on CIFAR10-DVS: 8/255 events per sensor pixel and frame bin."""
PAPER_LAMBDA = 0.002
"""The paper's SR weight on CIFAR10-DVS (squared form, raw counts)."""


@dataclass(frozen=True)
class Setting:
    """What is trained and attacked: the quickstart's data and schedule by default.

    Attributes:
        per_class, sensor, size, frames, noise: the embedded dataset (recordings per class, synth's
            sensor side and the frame side in pixels, frames T, background events per pixel per second).
        preset, batch: model preset and batch size of every model.
        epochs, lr: vanilla's Adam schedule from scratch (the black-box source's too).
        finetune_epochs, finetune_lr: every other defense fine-tunes the seed's vanilla weights with Adam.
        lam: SR weight λ (frames count/15).
        train_eps: adversarial-training ε, frame units.
        eps: the reported attack ε, frame units.
        curve_eps: ε of the robust-accuracy-vs-ε curve (ensemble PGD10), frame units.
        limit: test samples attacked (a seeded subset; None: all).
        defenses: the models of the table (train names are the defense names).
        sweep_lams: λ of the Fig. 3 sweep (SR fine-tuned without adversary; 0 is vanilla itself).
    """

    per_class: int = 100
    sensor: int = 64
    size: int = 32
    frames: int = 10
    noise: float = 0.5
    preset: str = "small"
    batch: int = 32
    epochs: int = 15
    lr: float = 0.003
    finetune_epochs: int = 6
    finetune_lr: float = 0.001
    lam: float = 1.4e-4
    train_eps: float = 32 / 3825
    eps: float = 32 / 3825
    curve_eps: tuple[float, ...] = (16 / 3825, 32 / 3825, 64 / 3825, 8 / 255)
    limit: int | None = None
    defenses: tuple[str, ...] = ("vanilla", "fgsm-at", "sr", "sr-star")
    sweep_lams: tuple[float, ...] = (0.0, 3.5e-5, 1.4e-4, 5.6e-4, 2.24e-3)

    @classmethod
    def tiny(cls) -> "Setting":
        """Minutes per seed: a 32×32 sensor framed at 16×16, 4 frames, the tiny preset (the slow test)."""
        return cls(per_class=40, sensor=32, size=16, frames=4, preset="tiny", batch=16, epochs=8, lr=0.005,
                   finetune_epochs=2, finetune_lr=0.002, limit=40, curve_eps=(32 / 3825, 8 / 255),
                   sweep_lams=(0.0, 1e-3))

    def k(self) -> float:
        """One frame unit in the paper's units (events per sensor pixel) for this framing."""
        return paper_units_per_events_unit(COUNT_CAP, (self.sensor, self.sensor), (self.size, self.size))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def _table(header: str, values: dict[str, Any]) -> str:
    return f"\n{header}\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items() if v is not None)


def _data_table(s: Setting, cache_dir: Path) -> str:
    return _table("[data]", {"source": "synth", "per_class": s.per_class, "noise": s.noise, "frames": s.frames,
                             "sensor_size": s.sensor, "size": s.size, "cache_dir": str(cache_dir)})


def _train_tables(s: Setting, models: dict[str, dict[str, Any]]) -> str:
    """One ``[[train]]`` per model: vanilla from scratch, anything with ``init`` fine-tuned from it."""
    text = ""
    for name, extra in models.items():
        schedule = ({"epochs": s.finetune_epochs, "lr": s.finetune_lr} if "init" in extra
                    else {"epochs": s.epochs, "lr": s.lr})
        text += _table("[[train]]", {"name": name, **extra, "preset": s.preset, **schedule, "optimizer": "adam",
                                     "batch": s.batch, "augment": False, "robust_limit": 0})
    return text


def pipeline_text(s: Setting, seed: int, run_dir: Path, cache_dir: Path) -> str:
    """The pipeline file of one seed: data, every defense, the black-box source, the attacks."""
    models: dict[str, dict[str, Any]] = {}
    for defense in s.defenses:
        extra: dict[str, Any] = {"defense": defense}
        if defense != "vanilla":
            extra["init"] = "vanilla"
        if defense in ("sr", "sr-star"):
            extra["lam"] = s.lam
        if defense not in ("vanilla", "sr"):
            extra["eps"] = s.train_eps
        models[defense] = extra
    # the black-box source: vanilla, trained separately (another seed of initialisation and data order)
    models["source"] = {"defense": "vanilla", "seed": seed + 1000}
    text = _table("[pipeline]", {"name": f"table2-seed{seed}", "run_dir": str(run_dir), "seed": seed})
    text += _data_table(s, cache_dir) + _train_tables(s, models)
    text += _table("[attack]", {"models": list(s.defenses), "attacks": ["clean", "fgsm", "pgd50"], "eps": [s.eps],
                                "limit": s.limit, "black_box": True, "black_box_source": "source"})
    return text


def run_seed(s: Setting, seed: int, work: Path) -> dict[str, Any]:
    """Run one seed's pipeline and its ε curve; returns {model: {cell: accuracy %}} and the seconds taken."""
    from dvsguard.pipeline import load_pipeline, run_pipeline
    from dvsguard.stages import attack

    run_dir = work / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "table2.toml"
    path.write_text(pipeline_text(s, seed, run_dir / "run", work / "cache"))
    t0 = time.monotonic()
    done = run_pipeline(load_pipeline(path))
    results = done["results"]
    cache = Path(results["preprocess"]["train"])
    cells: dict[str, dict[str, float]] = {}
    for model in s.defenses:
        doc = json.loads((run_dir / "run" / "attack" / model / "attack.json").read_text())
        row = {}
        for r in doc["results"]:
            key = "clean" if r["attack"] == "clean" else f"{r['setting']} {r['attack']}"
            row[key] = 100 * r["accuracy"]
        curve = attack.run(attack.Config(checkpoint=Path(results[f"train:{model}"]["best"]), cache=cache,
                                         attacks=("pgd10",), eps=s.curve_eps, limit=s.limit, seed=seed,
                                         out=run_dir / "curve" / model))
        for r in curve.results:
            row[f"pgd10 {eps_label(r['eps'])}"] = 100 * r["accuracy"]
        cells[model] = row
    return {"cells": cells, "seconds": time.monotonic() - t0}


def mean_sd(values: list[float]) -> str:
    """``mean ± sd`` (sample sd over seeds; a single value has none)."""
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def paired_tests(a: list[float], b: list[float]) -> dict[str, float | None]:
    """Per-seed differences a − b: mean, paired t test p and two-sided sign test p (ties dropped)."""
    from scipy import stats

    diff = [x - y for x, y in zip(a, b)]
    t_p = None
    if len(diff) >= 2 and statistics.stdev(diff) > 0:
        t_p = float(stats.ttest_rel(a, b).pvalue)
    wins, losses = sum(d > 0 for d in diff), sum(d < 0 for d in diff)
    sign_p = float(stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else None
    return {"mean_diff": statistics.mean(diff), "t_p": t_p, "sign_p": sign_p, "wins": wins, "n": len(diff)}


NAMES = {"vanilla": "Vanilla", "fgsm-at": "AT (FGSM)", "pgd-at": "AT (PGD)", "sr": "SR", "sr-star": "SR*",
         "rat": "RAT"}


def report(s: Setting, seeds: list[int], per_seed: list[dict[str, Any]], seconds: float) -> str:
    """The table (mean ± sd over seeds), the ε curve, the paired tests and the time, as Markdown."""
    e = eps_label(s.eps)
    cols = ["clean", "white fgsm", "white pgd50", "black fgsm", "black pgd50"]
    heads = ["Clean", f"WB FGSM {e}", f"WB PGD50 {e}", f"BB FGSM {e}", f"BB PGD50 {e}"]
    sensor_events = events_per_sensor_pixel(s.eps, "events", COUNT_CAP, (s.sensor, s.sensor), (s.size, s.size))
    lines = [
        f"Seeds {', '.join(map(str, seeds))}; ε = {e} frame units = {s.eps * COUNT_CAP:.4f} events per frame pixel "
        f"= {sensor_events:.4f} events per sensor pixel and frame bin; the paper's {eps_label(PAPER_EPS)} on "
        f"CIFAR10-DVS is {convert_budget(PAPER_EPS, 'eps', s.k(), to='events'):.4g} here and its λ = {PAPER_LAMBDA:g} "
        f"is {convert_budget(PAPER_LAMBDA, 'lam', s.k(), to='events'):.3g} (k = {s.k():g}); "
        f"training ε = {eps_label(s.train_eps)}, λ = {s.lam:g}; "
        f"{s.limit or 'all'} test samples per seed; black box from a separately trained vanilla source.",
        "", "Accuracy in %, mean ± sd over seeds:", "",
        "| Defense | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads),
    ]
    for model in s.defenses:
        vals = [mean_sd([p["cells"][model][c] for p in per_seed]) for c in cols]
        lines.append(f"| {NAMES.get(model, model)} | " + " | ".join(vals) + " |")
    curve_cols = [f"pgd10 {eps_label(x)}" for x in s.curve_eps]
    lines += ["", "White-box ensemble PGD10 accuracy (%) against ε (frame units):", "",
              "| Defense | " + " | ".join(eps_label(x) for x in s.curve_eps) + " |",
              "|---|" + "---:|" * len(curve_cols)]
    for model in s.defenses:
        lines.append(f"| {NAMES.get(model, model)} | "
                     + " | ".join(mean_sd([p["cells"][model][c] for p in per_seed]) for c in curve_cols) + " |")
    lines += ["", "SR* against the others, per seed (points; paired t test and sign test over seeds):", ""]
    for other in [d for d in ("vanilla", "fgsm-at", "sr") if d in s.defenses and "sr-star" in s.defenses]:
        for col in ("clean", "white pgd50", "black pgd50"):
            a = [p["cells"]["sr-star"][col] for p in per_seed]
            b = [p["cells"][other][col] for p in per_seed]
            t = paired_tests(a, b)
            fmt = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
            lines.append(f"- SR* − {NAMES[other]}, {col}: {t['mean_diff']:+.1f} (per seed "
                         f"{', '.join(f'{x - y:+.1f}' for x, y in zip(a, b))}; t test p {fmt(t['t_p'])}, "
                         f"sign test p {fmt(t['sign_p'])})")
    per_seed_min = ", ".join(f"{p['seconds'] / 60:.1f}" for p in per_seed)
    lines += ["", f"Took {seconds / 60:.1f} min ({per_seed_min} min per seed)."]
    return "\n".join(lines)


def run_quickstart(seeds: list[int], work: Path) -> str:
    """Run pipelines/quickstart.toml once per seed; its clean and white-box PGD10 accuracies and time, and the
    deployed event curve of each model when the quickstart draws one."""
    from dvsguard.pipeline import load_pipeline, run_pipeline

    text = (ROOT / "pipelines" / "quickstart.toml").read_text()
    rows = ["| seed | vanilla clean | SR* clean | vanilla PGD10 | SR* PGD10 | margin | minutes |", "|---|" + "---:|" * 6]
    figures: dict[str, list[float]] = {k: [] for k in ("vc", "sc", "vp", "sp")}
    curves: dict[tuple[str, str, int], list[tuple[float, float | None]]] = {}
    for seed in seeds:
        run_dir = work / f"quickstart-seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        body = text.replace('run_dir = "runs/quickstart"', f'run_dir = "{run_dir / "run"}"')
        body = body.replace("seed = 0\n", f"seed = {seed}\n", 1)
        body = body.replace("[data]\n", f'[data]\ncache_dir = "{work / "cache"}"\n', 1)
        path = run_dir / "quickstart.toml"
        path.write_text(body)
        t0 = time.monotonic()
        run_pipeline(load_pipeline(path))
        minutes = (time.monotonic() - t0) / 60
        acc = {}
        for model in ("vanilla", "sr-star"):
            doc = json.loads((run_dir / "run" / "attack" / model / "attack.json").read_text())
            acc[model] = {"clean": 100 * doc["clean_accuracy"],
                          "pgd": 100 * min((r for r in doc["results"] if r["attack"] == "pgd10" and r["setting"] == "white"),
                                           key=lambda r: r["eps"])["accuracy"]}
        vc, sc, vp, sp = acc["vanilla"]["clean"], acc["sr-star"]["clean"], acc["vanilla"]["pgd"], acc["sr-star"]["pgd"]
        for k, v in zip(("vc", "sc", "vp", "sp"), (vc, sc, vp, sp)):
            figures[k].append(v)
        rows.append(f"| {seed} | {vc:.1f} | {sc:.1f} | {vp:.1f} | {sp:.1f} | {sp - vp:+.1f} | {minutes:.1f} |")
        print(rows[-1], flush=True)
        collect_event_curves(run_dir / "run", ("vanilla", "sr-star", "event-at"), curves)
    rows.append(f"| mean ± sd | {mean_sd(figures['vc'])} | {mean_sd(figures['sc'])} | {mean_sd(figures['vp'])} | "
                f"{mean_sd(figures['sp'])} | {mean_sd([a - b for a, b in zip(figures['sp'], figures['vp'])])} | |")
    text = "Quickstart (white-box ensemble PGD10 at its reported ε), accuracy in %:\n\n" + "\n".join(rows)
    return text + ("\n\n" + event_curve_table(curves) if curves else "")


def collect_event_curves(run: Path, models: tuple[str, ...],
                         curves: dict[tuple[str, str, int], list[tuple[float, float | None]]]) -> None:
    """Append each deployed model's (accuracy %, float disagreement %) per (model, attack, budget) to ``curves``.

    Reads ``run/deployed/<model>/attack_events.json`` (the integer network's event curve); a run
    without one adds nothing.
    """
    for model in models:
        path = run / "deployed" / model / "attack_events.json"
        if not path.is_file():
            continue
        for r in json.loads(path.read_text())["results"]:
            disagree = r.get("float_disagreement")
            curves.setdefault((model, r["attack"], r["budget"]), []).append(
                (100 * r["accuracy"], None if disagree is None else 100 * disagree))


def event_curve_table(curves: dict[tuple[str, str, int], list[tuple[float, float | None]]]) -> str:
    """The deployed curve as mean ± sd over the seeds: integer-network accuracy and float disagreement (%)."""
    rows = ["| model | attack | events per sample | integer network accuracy | float disagreement | seeds |",
            "|---|---|---:|---:|---:|---:|"]
    for (model, attack, budget), points in curves.items():
        disagree = [d for _, d in points if d is not None]
        rows.append(f"| {model} | {attack} | {budget} | {mean_sd([a for a, _ in points])} | "
                    f"{mean_sd(disagree) if disagree else '—'} | {len(points)} |")
    return ("Quickstart deployed curve (each model exported, greedy and random events judged on its integer "
            "network), in %:\n\n" + "\n".join(rows))


def lambda_sweep(s: Setting, seed: int, work: Path) -> str:
    """SR at each λ of ``s.sweep_lams`` (λ = 0 is vanilla), measured by the analyze stage (Fig. 3)."""
    from dvsguard.pipeline import load_pipeline, run_pipeline

    run_dir = work / f"sweep-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    models = {("vanilla" if lam == 0 else f"sr-{lam:g}"): ({"defense": "vanilla"} if lam == 0 else
                                                            {"defense": "sr", "init": "vanilla", "lam": lam})
              for lam in s.sweep_lams}
    names = list(models)
    text = _table("[pipeline]", {"name": f"sweep-seed{seed}", "run_dir": str(run_dir / "run"), "seed": seed})
    text += _data_table(s, work / "cache") + _train_tables(s, models)
    text += _table("[analyze]", {"models": names, "limit": s.limit or 0, "pgd_eps": s.eps, "pgd_steps": 10,
                                 "theory_eps": s.eps, "eps": [0.0, s.eps, 4 * s.eps]})
    path = run_dir / "sweep.toml"
    path.write_text(text)
    t0 = time.monotonic()
    done = run_pipeline(load_pipeline(path))
    models = done["results"]["analyze"]["models"]
    lines = [f"λ sweep (SR, seed {seed}, {s.limit or 'all'} test samples, PGD10 at {eps_label(s.eps)}; single-gradient "
             f"PGD with the model's surrogate, not the ensemble):", "",
             "| λ | clean % | PGD10 % | mean ‖∇ₓf_y‖₁ | mean ‖∇ₓf_y‖₂ |", "|---:|---:|---:|---:|---:|"]
    l1s = []
    for lam, name in zip(s.sweep_lams, names):
        m = models[name]
        l1s.append(m["mean_l1"])
        lines.append(f"| {lam:g} | {m['clean_acc']:.1f} | {m['pgd_acc']:.1f} | {m['mean_l1']:.4g} | {m['mean_l2']:.4g} |")
    falling = all(b <= a for a, b in zip(l1s, l1s[1:]))
    lines += ["", f"‖∇ₓf_y‖₁ {'falls monotonically' if falling else 'does not fall monotonically'} as λ grows "
              f"({l1s[0]:.4g} at λ = 0, {l1s[-1]:.4g} at λ = {s.sweep_lams[-1]:g}); "
              f"{(time.monotonic() - t0) / 60:.1f} min. Figures: {done['results']['analyze']['out_dir']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="Comma list of seeds (default 0,1,2).")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "table2_digits",
                        help="Folder of the runs (finished stages are reused).")
    parser.add_argument("--tiny", action="store_true", help="Seconds per seed instead of minutes (a smoke test).")
    parser.add_argument("--defenses", help="Comma list overriding vanilla,fgsm-at,sr,sr-star (add pgd-at, rat).")
    parser.add_argument("--preset", help="Model preset of every model (default: the setting's, small), e.g. vgg11-chip.")
    parser.add_argument("--quickstart", action="store_true", help="Also run the quickstart pipeline for seeds 0,1,2.")
    parser.add_argument("--quickstart-only", action="store_true", help="Only the quickstart runs.")
    parser.add_argument("--lambda-sweep", action="store_true", help="Also the λ sweep (Fig. 3) on the first seed.")
    parser.add_argument("--lambda-sweep-only", action="store_true", help="Only the λ sweep.")
    parser.add_argument("--json", type=Path, help="Also write every per-seed figure to this JSON file.")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()  # a pipeline's relative paths are relative to its own file
    logging.basicConfig(level=logging.WARNING)
    s = Setting.tiny() if args.tiny else Setting()
    if args.defenses:
        s = dataclasses.replace(s, defenses=tuple(d.strip() for d in args.defenses.split(",") if d.strip()))
    if args.preset:
        s = dataclasses.replace(s, preset=args.preset)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    print(f"CPU: {cpu}")
    t0 = time.monotonic()
    doc: dict[str, Any] = {"setting": dataclasses.asdict(s), "seeds": seeds, "cpu": cpu}
    if not (args.quickstart_only or args.lambda_sweep_only):
        per_seed = []
        for seed in seeds:
            per_seed.append(run_seed(s, seed, args.work))
            print(f"seed {seed} done in {per_seed[-1]['seconds'] / 60:.1f} min", flush=True)
        doc["per_seed"] = per_seed
        doc["table"] = report(s, seeds, per_seed, time.monotonic() - t0)
        print(doc["table"], flush=True)
    if args.lambda_sweep or args.lambda_sweep_only:
        doc["lambda_sweep"] = lambda_sweep(s, seeds[0], args.work)
        print(doc["lambda_sweep"], flush=True)
    if args.quickstart or args.quickstart_only:
        doc["quickstart"] = run_quickstart([0, 1, 2], args.work)
        print(doc["quickstart"], flush=True)
    print(f"total {(time.monotonic() - t0) / 60:.1f} min")
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
