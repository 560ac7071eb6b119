"""The ``dvsguard`` command line: one command per stage; it only parses and delegates.

Every command takes ``--json``: its last line of stdout is then one JSON object with the
paths it wrote and the figures it measured. Library errors (``DvsguardError``) become a
one-line message and exit code 1; bad arguments a one-line message and exit code 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import typer

from dvsguard.errors import DvsguardError

app = typer.Typer(
    name="dvsguard",
    help="Event-camera recordings to adversarially robust spiking networks for Loihi.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

JsonOpt = typer.Option(False, "--json", help="Print one JSON object (paths written, figures measured) as the last line.")


def _emit(result: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], str] | None = None) -> None:
    """Print a command's result: a human summary, then (with ``--json``) one JSON line."""
    if human is not None and not as_json:
        typer.echo(human(result))
    if as_json:
        typer.echo(json.dumps(result, default=str))


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    _setup_logging(verbose)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps usage errors to exit 2 and library errors to exit 1, one line each."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    args = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--debug"]
    try:
        code = app(args=args, prog_name="dvsguard", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(n) comes back as a return value here
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("dvsguard: aborted\n")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors carry exit code 2
        message = " ".join(exc.format_message().split())
        sys.stderr.write(f"dvsguard: error: {message}\n")
        sys.exit(exc.exit_code)
    except DvsguardError as exc:
        if debug:
            raise
        sys.stderr.write(f"dvsguard: error: {exc}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("dvsguard: interrupted\n")
        sys.exit(130)


@app.command()
def synth(
    out_dir: Path = typer.Argument(..., help="Folder to write the recordings into (new, empty, or a previous synth output)."),
    per_class: int = typer.Option(200, "--per-class", min=1, help="Recordings per class (10 digit classes)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice (same seed, same files)."),
    size: int = typer.Option(48, "--size", min=16, max=512, help="Sensor width and height in pixels."),
    noise: float = typer.Option(2.0, "--noise", min=0.0, help="Background-activity noise, events per pixel per second."),
    workers: int = typer.Option(2, "--workers", min=1, help="Processes simulating recordings (the files do not depend on it)."),
    as_json: bool = JsonOpt,
) -> None:
    """Simulate a DVS watching handwritten digits move in saccades: .npz recordings + labels.csv."""
    from dvsguard.data.synth import SynthConfig, make_digits

    result = make_digits(out_dir, SynthConfig(per_class=per_class, seed=seed, size=size, noise=noise), workers=workers)
    _emit(
        result,
        as_json,
        lambda r: f"wrote {r['n_recordings']} recordings ({r['n_events']} events) of {len(r['classes'])} classes "
        f"to {r['out_dir']} in {r['seconds']:.1f} s",
    )


@app.command()
def preprocess(
    source: str = typer.Argument(..., help="'cifar10dvs', or a folder of recordings (labels.csv or class sub-folders)."),
    cache_dir: Path = typer.Option(Path("data_cache"), "--cache-dir", help="Folder of the frame caches."),
    frames: int = typer.Option(10, "--frames", min=1, help="Frames T per recording."),
    mode: str = typer.Option("events", "--mode", help="events: equal event counts per frame; time: equal time spans."),
    size: int = typer.Option(48, "--size", min=1, help="Frame height and width in pixels."),
    count_cap: int = typer.Option(None, "--count-cap", min=1, max=255, help="Clip event counts per pixel at N (frames = count/N in [0, 1]; default 15)."),
    workers: int = typer.Option(2, "--workers", min=1, help="Processes reading and framing recordings."),
    root: Path = typer.Option(None, "--root", help="cifar10dvs: folder holding (or to receive) the recordings (default: data)."),
    download: bool = typer.Option(False, "--download", help="cifar10dvs: download/extract when not on disk."),
    labels: Path = typer.Option(None, "--labels", help="CSV of path,class for a folder (default: its labels.csv)."),
    as_json: bool = JsonOpt,
) -> None:
    """Frame recordings into a train and a test HDF5 cache (9:1 per class), using all workers."""
    if mode not in ("events", "time"):
        raise typer.BadParameter(f"--mode must be 'events' or 'time', not {mode!r}")
    from dvsguard.data.frames import FramingConfig
    from dvsguard.data.preprocess import preprocess as run_preprocess

    cfg = FramingConfig(n_frames=frames, mode=mode, height=size, width=size,
                        **({"count_cap": count_cap} if count_cap is not None else {}))
    result = run_preprocess(source, cache_dir, cfg, workers=workers, root=root, download=download, labels_file=labels)
    _emit(
        result.to_json(),
        as_json,
        lambda r: f"train: {r['train']} ({r['n_train']} samples)\ntest:  {r['test']} ({r['n_test']} samples)\n"
        f"classes: {', '.join(r['classes'])}\nunreadable recordings skipped: {len(r['failed'])}",
    )


@app.command()
def train(
    cache: Path = typer.Option(..., "--cache", help="Train-split frame cache (.h5); the test split is found beside it."),
    defense: str = typer.Option(..., "--defense", help="vanilla, sr, fgsm-at, pgd-at, sr-star or rat."),
    out: Path = typer.Option(..., "--out", help="Run folder: last.pt, best.pt, metrics.jsonl, config.json."),
    preset: str = typer.Option("small", "--preset", help="Model preset: vgg11 (paper), vgg11-loihi, small, tiny."),
    epochs: int = typer.Option(200, "--epochs", min=1, help="Epochs (the cosine schedule spans them)."),
    batch: int = typer.Option(24, "--batch", min=1, help="Batch size (per process under torchrun)."),
    lr: float = typer.Option(0.1, "--lr", help="Initial learning rate (about 1e-3 for adam)."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd (the paper's, momentum 0.9) or adam (short runs)."),
    lam: float = typer.Option(None, "--lam", help="SR weight λ (default 0.002)."),
    sr_form: str = typer.Option("sq", "--sr-form", help="SR term: sq = mean squared difference quotient (released code), abs = Eq. 14."),
    eps: str = typer.Option("2/255", "--eps", help="Adversarial-training and robust-check ε in frame units, e.g. 2/255."),
    attack: str = typer.Option("fgsm", "--attack", help="sr-star's adversary: fgsm or pgd."),
    pgd_steps: int = typer.Option(5, "--pgd-steps", min=1, help="PGD steps k (pgd-at, sr-star with --attack pgd)."),
    pgd_alpha: str = typer.Option(None, "--pgd-alpha", help="PGD step α in frame units (default 2.5·ε/k)."),
    weight_decay: float = typer.Option(None, "--weight-decay", help="Default 5e-4 (0 for rat)."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, data order, augmentation and PGD starts."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Train without random crop and flip."),
    limit_train: int = typer.Option(None, "--limit-train", min=1, help="Train on a fixed seeded subset of N samples."),
    limit_test: int = typer.Option(None, "--limit-test", min=1, help="Evaluate on a fixed seeded subset of N test samples."),
    robust_limit: int = typer.Option(256, "--robust-limit", min=0, help="Test samples of the per-epoch FGSM check (0: off)."),
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader worker processes."),
    threads: int = typer.Option(None, "--threads", min=1, help="Intra-op CPU threads per process (default: torch's choice)."),
    device: str = typer.Option("auto", "--device", help="auto (GPU if present), cpu, cuda or cuda:N."),
    amp: bool = typer.Option(False, "--amp", help="bf16 autocast for convolutions and linear layers."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    init: Path = typer.Option(None, "--init", help="Start from this trained checkpoint's weights (same preset and data)."),
    fixed_point: bool = typer.Option(False, "--fixed-point", help="Fine-tune --init in Loihi 2 fixed point: the model trained is the integer network `export` writes."),
    as_json: bool = JsonOpt,
) -> None:
    """Train a spiking VGG with a defense; checkpoints every epoch, resumable, DDP under torchrun."""
    from dvsguard.train.trainer import TrainConfig, parse_eps
    from dvsguard.train.trainer import train as run_train

    cfg = TrainConfig(
        cache=str(cache), defense=defense, preset=preset, epochs=epochs, batch=batch, lr=lr, optimizer=optimizer,
        weight_decay=weight_decay, lam=lam, sr_form=sr_form, eps=parse_eps(eps), attack=attack,
        pgd_steps=pgd_steps, pgd_alpha=parse_eps(pgd_alpha) if pgd_alpha is not None else None, seed=seed,
        augment=not no_augment, limit_train=limit_train, limit_test=limit_test, robust_limit=robust_limit, amp=amp,
        init=str(init) if init is not None else None, fixed_point=fixed_point,
    )
    result = run_train(cfg, out, resume=resume, workers=workers, device=device, threads=threads)
    if result["rank"] != 0:  # under torchrun only rank 0 reports
        return
    _emit(
        result,
        as_json,
        lambda r: f"trained {r['defense']} for {r['epochs']} epoch(s): best clean test acc {r['best_test_acc']:.4f} "
        f"(epoch {r['best_epoch']})\nlast: {r['last']}\nbest: {r['best']}",
    )


@app.command()
def attack(
    checkpoint: Path = typer.Argument(..., help="Checkpoint of the target model (.pt)."),
    cache: Path = typer.Option(..., "--cache", help="A frame cache (.h5) of the dataset; its --split sibling is attacked."),
    split: str = typer.Option("test", "--split", help="Which split of the cache to attack."),
    attacks: str = typer.Option("clean,fgsm,pgd10,pgd30,pgd50,apgd10", "--attacks", help="Comma list: clean, fgsm, rfgsm, random, pgd<k>, apgd<k>."),
    eps: str = typer.Option("8/255", "--eps", help="ε in frame units, a comma list draws robust accuracy against ε, e.g. 8/255,4/255."),
    ensemble: bool = typer.Option(True, "--ensemble/--no-ensemble", help="Fooled if any of the gradient modes triangle:1, sigmoid:4, atan:2, rga fools the model."),
    modes: str = typer.Option(None, "--modes", help="Ensemble gradient modes instead of the paper's four, e.g. triangle:0.5,rga; grid = 30 triangle widths γ 0.1…3.0."),
    source: Path = typer.Option(None, "--source", help="Black box: craft the examples on this checkpoint, judge them on the target."),
    limit: int = typer.Option(None, "--limit", min=1, help="Attack a fixed seeded subset of N samples."),
    batch: int = typer.Option(64, "--batch", min=1, help="Samples per batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random starts (per sample) and of the --limit subset."),
    alpha: str = typer.Option(None, "--alpha", help="PGD step α in frame units, e.g. 0.01 or 2/255 (default 2.5·ε/k)."),
    out: Path = typer.Option(None, "--out", help="Folder for attack.json, attack.md, robust_vs_eps.png (default: the checkpoint's)."),
    as_json: bool = JsonOpt,
) -> None:
    """Robust accuracy under FGSM/PGD/APGD (white box, and black box with --source) as a table."""
    from dvsguard.attack.evaluate import EvalConfig, parse_eps, parse_eps_list
    from dvsguard.attack.evaluate import run as run_attack

    cfg = EvalConfig(
        attacks=tuple(a.strip().lower() for a in attacks.split(",") if a.strip()),
        eps=parse_eps_list(eps), ensemble=ensemble,
        modes=tuple(m.strip() for m in modes.split(",") if m.strip()) if modes else None,
        batch_size=batch, limit=limit, seed=seed, pgd_alpha=parse_eps(alpha) if alpha is not None else None,
    )
    result = run_attack(checkpoint, cache, cfg, split=split, source=source, out_dir=out)
    if result["rank"] != 0:  # under torchrun only rank 0 reports
        return
    _emit(
        {k: v for k, v in result.items() if k != "table"},
        as_json,
        lambda r: f"{result['table']}\n\n{r['n_samples']} samples; written: {', '.join(r['paths'].values())}",
    )


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Argument(..., help="Trained checkpoint (.pt)."),
    out: Path = typer.Option(Path("export"), "--out", help="Folder for NAME.net (netx HDF5) and NAME.json (manifest)."),
    name: str = typer.Option(None, "--name", help="File name stem (default: from the checkpoint's path)."),
    verify: int = typer.Option(0, "--verify", min=0, help="Run N test samples in Lava; compare with the integer simulator and PyTorch."),
    compare: bool = typer.Option(False, "--compare", help="Score the test split with the integer simulator against PyTorch."),
    limit: int = typer.Option(None, "--limit", min=1, help="--compare on the first N test samples only."),
    cache: Path = typer.Option(None, "--cache", help="Frame cache (.h5, any split; its test sibling is used) for --verify/--compare (default: the checkpoint's)."),
    build_lava: bool = typer.Option(False, "--build-lava", help="Build .lava-env (scripts/lava_env.sh) if it is missing."),
    timeout: float = typer.Option(None, "--timeout", min=1, help="Stop the Lava run after this many seconds."),
    as_json: bool = JsonOpt,
) -> None:
    """Export to lava-dl netx for Loihi 2 (integer weights, folded BN and pooling) with a resource table."""
    from dvsguard.export.exporter import compare_export, export_checkpoint, lava_estimate, resolve_test_split, verify_export

    result, model, payload = export_checkpoint(checkpoint, out, name)
    report: dict[str, Any] = {
        "net": str(result.net_path),
        "manifest": str(result.manifest_path),
        "fits_chip": result.manifest["resources"]["fits_chip"],
        "resources": result.manifest["resources"]["totals"],
        "time_steps": result.manifest["time_steps"],
        "lag": result.manifest["lag"],
        "warnings": result.manifest["warnings"],
    }
    if not as_json:
        typer.echo(result.table)
    if compare or verify:
        test_path = resolve_test_split(payload, cache)
        if compare:
            report["compare"] = compare_export(model, result.net_path, test_path, max_samples=limit)
        if verify:
            n_run, eta = lava_estimate(result.net_path, test_path, verify)
            typer.echo(f"Lava: running {n_run} test sample(s) through {len(result.manifest['layers'])} layers in "
                       f"Lava's CPU simulator; estimated {eta:.0f} s", err=True)
            report["verify"] = verify_export(model, result.net_path, test_path, verify, timeout=timeout, build=build_lava)

    def human(r: dict[str, Any]) -> str:
        lines = [f"netx: {r['net']}", f"manifest: {r['manifest']}"]
        lines += [f"warning: {w}" for w in r["warnings"]]
        if "compare" in r:
            c = r["compare"]
            lines.append(
                f"integer simulator vs PyTorch on {c['n']} test samples: agreement {c['agreement']:.4f}, "
                f"accuracy {c['accuracy_int']:.4f} (PyTorch {c['accuracy_float']:.4f}), "
                f"mean |logit error| {c['logit_mean_abs_error']:.4g}"
            )
            if c["spike_mismatch"] is not None:
                lines.append(f"spikes differing from PyTorch per hidden layer: {c['spike_mismatch']} "
                             f"(of {c['spikes_compared']} compared)")
            sat = [f"layer {k}: " + ", ".join(f"{n} {e[n]}" for n in e) for k, e in enumerate(c["layer_events"]) if e]
            if sat:
                lines.append("saturation events (integer limits reached): " + "; ".join(sat)
                             + f"; {c['departures']} of them can change a spike or the read-out")
        if "verify" in r:
            v = r["verify"]
            lines.append(
                f"Lava vs integer simulator on {v['n']} samples: "
                + ("identical (every spike, every layer, read-out voltages)" if v["identical"] else "DIFFERENT")
                + f"; Lava vs PyTorch agreement {v['agreement_torch']:.4f}; {v['lava_wall_seconds']:.0f} s"
            )
        return "\n".join(lines)

    _emit(report, as_json, human)
    if verify and not report["verify"]["identical"]:
        raise typer.Exit(1)


@app.command()
def predict(
    folder: Path = typer.Argument(..., help="Folder of recordings (searched recursively, any known format)."),
    model: Path = typer.Option(..., "--model", help="Trained checkpoint (.pt); its framing is used."),
    out: Path = typer.Option(Path("predictions.csv"), "--out", help="Output rows: .csv or .jsonl."),
    labels: str = typer.Option(None, "--labels", help="Labels CSV (path,class) or 'folders' (sub-folder names): adds accuracy."),
    attack: str = typer.Option(None, "--attack", help="Attack name (fgsm, pgd10, apgd, ...): adds robust accuracy."),
    eps: str = typer.Option(None, "--eps", help="Attack radius in frame units, e.g. 8/255."),
    netx: Path = typer.Option(None, "--netx", help="Predict with this exported netx network in Lava's simulator."),
    batch: int = typer.Option(32, "--batch", min=1),
    workers: int = typer.Option(2, "--workers", min=0, help="Reader/framing processes."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = JsonOpt,
) -> None:
    """Classify every recording under FOLDER; exit 1 if any file failed."""
    from dvsguard.pipeline.config import parse_eps
    from dvsguard.pipeline.predict import predict as run_predict

    eps_value = parse_eps(eps, "--eps") if eps is not None else None
    result = run_predict(folder, model, out, labels=labels, attack=attack, eps=eps_value, netx=netx,
                         batch_size=batch, workers=workers, seed=seed)

    def human(r: dict[str, Any]) -> str:
        lines = [f"{r['n_files']} files, {r['n_failed']} failed → {r['out']}"]
        if r["accuracy"] is not None:
            lines.append(f"accuracy {r['accuracy']:.4f}")
        if r["robust_accuracy"] is not None:
            lines.append(f"robust accuracy ({r['attack']}, ε={r['eps']:.5g}) {r['robust_accuracy']:.4f}")
        lines += [f"failed: {f['error']}" for f in r["failed"]]
        return "\n".join(lines)

    _emit(result.to_json(), as_json, human)
    if result.n_failed:
        raise typer.Exit(1)


@app.command()
def analyze(
    checkpoints: list[Path] = typer.Argument(..., help="Checkpoints (.pt); several are compared in every figure."),
    cache: Path = typer.Option(..., "--cache", help="Frame cache (.h5) of any split; --split picks its sibling."),
    split: str = typer.Option("test", "--split", help="Split analysed."),
    out: Path = typer.Option(None, "--out", help="Output folder (default: analysis/ beside the first checkpoint)."),
    limit: int = typer.Option(256, "--limit", min=0, help="Samples analysed: a seeded random subset (0: all)."),
    eps: str = typer.Option(None, "--eps", help="ε list of the random-vs-FGSM curves, e.g. 0,4/255,16/255 (default 0 to 64/255)."),
    theory_eps: str = typer.Option("2/255", "--theory-eps", help="Small ε of the measured ρ_adv/ρ_rand (Theorem 4.3)."),
    mc_draws: int = typer.Option(32, "--mc-draws", min=1, help="Uniform draws per sample for ρ_rand."),
    adv_steps: int = typer.Option(5, "--adv-steps", min=0, help="Sign-gradient ascent steps per start for ρ_adv."),
    fd_steps: str = typer.Option("0.001,0.01,0.1", "--fd-steps", help="Finite-difference steps h (Proposition 4.4)."),
    pgd_eps: str = typer.Option("8/255", "--pgd-eps", help="ε of the PGD accuracy (λ sweep)."),
    pgd_steps: int = typer.Option(10, "--pgd-steps", min=1, help="Steps of that PGD attack."),
    batch: int = typer.Option(32, "--batch", min=1, help="Samples per forward pass."),
    grad_mode: str = typer.Option(None, "--grad-mode", help="Surrogate gradient for g and the attacks, e.g. sigmoid:4 or rga (default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample subset and of every random draw."),
    as_json: bool = JsonOpt,
) -> None:
    """The paper's measurements on checkpoints: random vs FGSM accuracy, Theorem 4.3, Prop. 4.4, sparsity, heatmaps, λ sweep."""
    from dvsguard.analyze.analysis import AnalysisSettings, DEFAULT_EPS, parse_eps_list
    from dvsguard.analyze.analysis import analyze as run_analyze

    settings = AnalysisSettings(
        eps=parse_eps_list(eps) if eps else DEFAULT_EPS,
        theory_eps=parse_eps_list(theory_eps, "--theory-eps")[0],
        mc_draws=mc_draws,
        adv_steps=adv_steps,
        fd_steps=parse_eps_list(fd_steps, "--fd-steps"),
        pgd_eps=parse_eps_list(pgd_eps, "--pgd-eps")[0],
        pgd_steps=pgd_steps,
        batch=batch,
        limit=limit or None,
        grad_mode=grad_mode,
    )
    result = run_analyze(checkpoints, cache, split=split, out_dir=out, settings=settings, seed=seed)

    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4g}"

    _emit(
        result,
        as_json,
        lambda r: "\n".join(
            f"{name:<20} clean {num(m['clean_acc'])}%  PGD {num(m['pgd_acc'])}%  mean ‖g‖₁ {num(m['mean_l1'])}  "
            f"‖g‖₂ {num(m['mean_l2'])}  median ρ_adv/ρ_rand predicted {num(m['median_ratio_pred'])} "
            f"measured {num(m['median_ratio_emp'])}"
            for name, m in r["models"].items()
        ) + f"\nwritten to {r['out_dir']}",
    )


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A pipeline run folder (or a single training run folder)."),
    as_json: bool = JsonOpt,
) -> None:
    """One self-contained HTML page (report.html, images embedded) and report.md of a run."""
    from dvsguard.analyze.report import build_report

    result = build_report(run_dir)
    _emit(result, as_json, lambda r: f"report: {r['html']}\nmarkdown: {r['markdown']}\nsections: {', '.join(r['sections'])}")


@app.command()
def run(
    pipeline: Path = typer.Argument(..., help="Pipeline file (TOML), e.g. pipelines/quickstart.toml."),
    from_stage: str = typer.Option(None, "--from", help="Rerun from this stage (or group: data, train, attack, ...) on."),
    only: str = typer.Option(None, "--only", help="Rerun only this stage (or group)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and exit."),
    as_json: bool = JsonOpt,
) -> None:
    """Run a pipeline of stages; unchanged stages are skipped, a killed run resumes."""
    from dvsguard.pipeline import load_pipeline, plan, run_pipeline

    if from_stage and only:
        raise typer.BadParameter("give --from or --only, not both")
    cfg = load_pipeline(pipeline)
    if dry_run:
        rows = plan(cfg, start=from_stage, only=only)
        _emit(
            {"pipeline": str(cfg.path), "run_dir": str(cfg.run_dir), "plan": rows},
            as_json,
            lambda r: "\n".join(f"{row['action']:<20} {row['stage']:<22} {' '.join(row['command'])}" for row in r["plan"]),
        )
        return
    result = run_pipeline(cfg, start=from_stage, only=only)
    _emit(result, as_json, lambda r: "\n".join(f"{k:<22} {v}" for k, v in r["stages"].items()) + f"\nrun folder: {r['run_dir']}")


@app.command()
def version(as_json: bool = JsonOpt) -> None:
    """Print the dvsguard version."""
    from dvsguard import __version__

    _emit({"version": __version__}, as_json, lambda r: f"dvsguard {r['version']}")
