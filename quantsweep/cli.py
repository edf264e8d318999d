"""The ``quantsweep`` command: ``demo``, ``run``, ``sweep``, ``judge``, ``report``, ``export``, ``measure``, ``sensitivity`` and ``recipes``.

A user's mistake (unknown recipe or task, missing model path, malformed recipe
YAML, a group size that does not divide a layer, a missing device) prints one
line ``quantsweep: error: ...`` and exits with code 2, never a traceback.

Example:
    $ quantsweep demo --out demo-out
    $ quantsweep run --model toy --recipe fp --recipe w4-rtn --tasks toy_mc4,toy_ppl --limit 200
    $ quantsweep sweep recipes/sweeps/toy.yaml --out toy-sweep
    $ quantsweep judge toy-sweep --alpha 0.01
    $ quantsweep report toy-sweep
    $ quantsweep export --model toy --recipe w4-gptq --out toy-w4-gptq
    $ quantsweep measure --model toy --recipe w8-bnb --recipe w4-bnb-nf4
    $ quantsweep sensitivity --model toy --recipe w2-rtn --budget 2.7 --out toy-sensitivity
    $ quantsweep recipes
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from quantsweep._text import safe_text

EXIT_USER_ERROR = 2
EXIT_FILE_SYSTEM_ERROR = 1  # a file the run needs cannot be read or written (not the input's fault)
EXIT_RUN_FAILED = 1  # the run finished but its baseline failed, so it answered nothing
DEMO_RECIPES = ["fp", "w8-rtn", "w4-rtn", "w2-rtn", "w1-rtn"]
DEMO_TASKS = ["toy_mc4", "toy_mc2", "toy_ppl", "toy_gen"]
DEMO_LIMIT = None  # every document (1,600 per multiple-choice task): with 800, binary's 95% retention bound stays above 15%, so it cannot be called collapsed; about 45 s in all on 2 cores


class UserError(Exception):
    """A mistake in the command line or its inputs (exit code 2)."""


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:  # the console; per-cell log files take INFO on their own
        handler.setLevel(logging.INFO if verbose else logging.WARNING)
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setFormatter(_SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("quantsweep").setLevel(logging.INFO if verbose else logging.WARNING)
    for noisy in ("lm_eval", "lm-eval", "transformers", "datasets", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore")


def _split_tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise UserError("--tasks needs at least one task name, e.g. --tasks toy_mc4,toy_ppl")
    return tasks


def _add_verdict_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--alpha", type=float, default=None, help="significance level of the verdict tests (default 0.05)"
    )
    parser.add_argument(
        "--accuracy-tolerance",
        type=float,
        default=None,
        help="largest accuracy drop still called lossless (default 0.01 = 1 point)",
    )
    parser.add_argument(
        "--perplexity-tolerance",
        type=float,
        default=None,
        help="largest relative perplexity increase still called lossless (default 0.01 = 1%%)",
    )
    parser.add_argument(
        "--collapse-retention",
        type=float,
        default=None,
        help="share of the baseline's margin above chance at or below which a result is collapsed (default 0.15)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")


def _add_resume_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retry-failed", action="store_true", help="run cells that failed in an earlier run again")
    parser.add_argument(
        "--force",
        action="store_true",
        help="recompute every cell (stored cells are replaced one by one as new ones finish)",
    )


def add_evaluation_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """One flag per evaluation setting (``--batch-size`` for ``batch_size``), made from the field's metadata.

    A new :class:`~quantsweep.eval.settings.EvalSettings` field is a new flag of ``run``
    with no change here. Flags not given are None, so the spec's defaults apply.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_evaluation_flags(parser)
        >>> parser.parse_args(["--batch-size", "8", "--include-path", "a"]).batch_size
        8
    """
    import dataclasses

    from quantsweep.eval.settings import EvalSettings

    for setting in dataclasses.fields(EvalSettings):
        if names is not None and setting.name not in names:
            continue
        options = {k: v for k, v in setting.metadata.items() if k in ("type", "action")}
        flag = "--" + setting.name.replace("_", "-")
        parser.add_argument(flag, dest=setting.name, default=None, help=setting.metadata["help"], **options)


def _evaluation_flags_given(args) -> dict:
    import dataclasses

    from quantsweep.eval.settings import EvalSettings

    names = (f.name for f in dataclasses.fields(EvalSettings))
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _add_run_options(parser: argparse.ArgumentParser, settings: tuple[str, ...] | None = None) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, npu or npu:N (default auto)")
    parser.add_argument(
        "--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA/NPU), float32, bfloat16, float16"
    )
    add_evaluation_flags(parser, settings)
    parser.add_argument(
        "--out", default=None, help="store folder: one file per cell, results.jsonl and summary.json; a rerun resumes"
    )
    _add_resume_options(parser)
    _add_verdict_options(parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``quantsweep`` command.

    Example:
        >>> build_parser().parse_args(["recipes"]).command
        'recipes'
    """
    parser = argparse.ArgumentParser(
        prog="quantsweep",
        description="Quantize causal LMs and evaluate each recipe with lm-eval, with verdicts against the baseline.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="toy model × {fp, w8, w4, w2, w1}-rtn × the four demo tasks")
    _add_run_options(demo, ("limit", "batch_size", "max_length"))
    demo.set_defaults(out="quantsweep-demo", limit=DEMO_LIMIT)

    run = sub.add_parser("run", help="run recipes × tasks on one model")
    run.add_argument("--model", required=True, help="'toy' or a local Hugging Face model directory")
    run.add_argument(
        "--recipe", action="append", required=True, help="recipe name, grid name or path to recipe YAML (repeatable)"
    )
    run.add_argument("--tasks", required=True, help="comma-separated task names (or a suite name)")
    run.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")
    _add_calibration_options(run)
    _add_run_options(run)
    run.set_defaults(out="quantsweep-out")

    sweep = sub.add_parser("sweep", help="run a sweep spec (models x recipes x tasks) into a store, resumably")
    sweep.add_argument("spec", help="sweep spec YAML, e.g. recipes/sweeps/toy.yaml")
    sweep.add_argument("--out", required=True, help="store folder (created if missing; a rerun resumes)")
    sweep.add_argument(
        "--backend",
        default="local",
        choices=["local", "ray"],
        help="local: this process; ray: a Ray cluster (pip install 'quantsweep[ray]')",
    )
    sweep.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    add_evaluation_flags(sweep, ("aa_control",))
    _add_resume_options(sweep)
    _add_verdict_options(sweep)

    judge = sub.add_parser("judge", help="re-judge a store from disk with new verdict thresholds")
    judge.add_argument("store", help="store folder written by `quantsweep run` or `quantsweep sweep`")
    _add_verdict_options(judge)

    sub.add_parser("recipes", help="list the registered recipes and grids")
    _add_report_parser(sub)
    _add_export_parser(sub)
    _add_measure_parser(sub)
    _add_sensitivity_parser(sub)
    return parser


def _print_progress_row(outcome) -> None:
    """One line per finished recipe, so long runs show progress; the aligned table follows at the end."""
    from quantsweep.report import format_cell, primary_records

    cells = [f"{record['task']}={format_cell(record)}" for record in primary_records(outcome.records)]
    print(f"[{outcome.recipe.name}] " + "  ".join(cells), flush=True)


def _print_plan(plan) -> None:
    print(plan.describe(), flush=True)


def _one_model_spec(args, **fields):
    """The run's :class:`~quantsweep.sweep.runner.RunSpec`: the flags as a one-model spec mapping, validated as a
    spec file is; an impossible setting is named by its flag."""
    from quantsweep.eval.settings import SettingError
    from quantsweep.sweep.runner import RunSpec

    try:
        return RunSpec(
            device=args.device,
            dtype=args.dtype,
            out_dir=args.out,
            verdict_config=_verdict_config(args),
            retry_failed=args.retry_failed,
            force=args.force,
            **fields,
            **_evaluation_flags_given(args),
        )
    except ValueError as error:
        cause = error
        while cause is not None and not isinstance(cause, SettingError):
            cause = cause.__context__
        if cause is not None:
            raise UserError(cause.for_flag()) from None
        raise


def _run(spec) -> int:
    from quantsweep.report import LEGEND, format_table
    from quantsweep.sweep.runner import run

    outcomes = run(spec, on_outcome=_print_progress_row, on_plan=_print_plan, progress=True)
    records = [record for outcome in outcomes for record in outcome.records]
    print()
    print(format_table(records))  # columns from the records: suites arrive expanded into their tasks
    print()
    print(LEGEND)
    _print_summary(records)
    if spec.out_dir is not None:
        print(f"results written to {Path(spec.out_dir) / 'results.jsonl'}")
    if outcomes and outcomes[0].error is not None:
        print(
            f"quantsweep: the baseline {outcomes[0].recipe.name!r} failed ({outcomes[0].error}); "
            "no recipe could be compared with it",
            file=sys.stderr,
        )
        return EXIT_RUN_FAILED
    return 0


def _print_summary(records) -> None:
    from quantsweep.verdicts.summary import summarize_records
    from quantsweep.verdicts.views import split_views

    views = split_views(records)
    for view in views:
        summary = summarize_records(view.records)
        named = f" of model {view.title}" if len(views) > 1 else ""
        if summary["by_recipe"]:
            print(f"\nverdict by recipe{named} (worst over its tasks):")
            for recipe, value in summary["by_recipe"].items():
                counts = ", ".join(f"{n} {name}" for name, n in value["counts"].items() if n)
                print(f"  {recipe:<20} {value['verdict']:<13} ({counts})")
        for recipe, error in sorted(summary["failed"].items()):
            print(f"  {recipe:<20} ERROR: {error}")


def _verdict_config(args):
    from quantsweep.verdicts.config import VerdictConfig

    chosen = {
        "alpha": args.alpha,
        "accuracy_tolerance": args.accuracy_tolerance,
        "perplexity_relative_tolerance": args.perplexity_tolerance,
        "collapse_retention": args.collapse_retention,
    }
    return VerdictConfig(**{k: v for k, v in chosen.items() if v is not None})


def _command_demo(args) -> int:
    print(f"quantsweep demo: toy model × {', '.join(DEMO_RECIPES)} × {', '.join(DEMO_TASKS)}", flush=True)
    return _run(_one_model_spec(args, model="toy", recipes=DEMO_RECIPES[1:], tasks=DEMO_TASKS))


def _command_run(args) -> int:
    spec = _one_model_spec(
        args,
        model=args.model,
        recipes=args.recipe,
        tasks=_split_tasks(args.tasks),
        trust_remote_code=args.trust_remote_code,
        calibration_source=args.calib_source,
        calibration_samples=args.calib_samples,
        calibration_seq_len=args.calib_seq_len,
        calibration_seed=args.calib_seed,
    )
    return _run(spec)


def _command_sweep(args) -> int:
    import dataclasses

    from quantsweep.report import LEGEND, format_table
    from quantsweep.sweep.api import run_sweep
    from quantsweep.sweep.spec import load_spec

    spec = load_spec(args.spec)
    overrides = {k: v for k, v in _verdict_config(args).to_dict().items() if _verdict_flag_given(args, k)}
    if overrides:
        spec = dataclasses.replace(spec, verdict={**spec.verdict, **overrides})
    if args.aa_control:
        spec = dataclasses.replace(spec, aa_control=True)
    result = run_sweep(
        spec,
        args.out,
        backend=args.backend,
        address=args.address,
        retry_failed=args.retry_failed,
        force=args.force,
        on_plan=_print_plan,
    )
    print()
    print(format_table(result.records))  # one table per model and setting, each under its title
    print()
    print(LEGEND)
    _print_summary(result.records)
    print(f"results written to {result.out / 'results.jsonl'}")
    return 0


_VERDICT_FLAGS = {
    "alpha": "alpha",
    "accuracy_tolerance": "accuracy_tolerance",
    "perplexity_relative_tolerance": "perplexity_tolerance",
    "collapse_retention": "collapse_retention",
}


def _verdict_flag_given(args, field: str) -> bool:
    return getattr(args, _VERDICT_FLAGS.get(field, field), None) is not None


def _command_judge(args) -> int:
    from quantsweep.report import LEGEND, format_table
    from quantsweep.sweep.api import judge

    thresholds = {k: v for k, v in _verdict_config(args).to_dict().items() if _verdict_flag_given(args, k)}
    records = judge(args.store, **thresholds)
    if not records:
        raise UserError(f"the store {args.store} holds no finished cells yet")
    print(format_table(records))  # one table per model and setting, each under its title
    print()
    print(LEGEND)
    _print_summary(records)
    print(
        f"re-judged {len({r['cell_key'] for r in records})} cells; results written to "
        f"{Path(args.store) / 'results.jsonl'}"
    )
    return 0


def _command_recipes(args) -> int:
    from quantsweep.recipes import get_recipe, list_grids, list_recipes, needs_calibration

    recipes = [get_recipe(name) for name in list_recipes()]
    width = max([12] + [len(recipe.method) for recipe in recipes])  # composed methods read rotate+gptq+a4+kv4
    for name, recipe in zip(list_recipes(), recipes):
        calibrated = " (calibrated)" if needs_calibration(recipe) else ""
        print(f"{name:<20} {recipe.method:<{width}} {recipe.description}{calibrated}")
    grids = list_grids()
    if grids:
        print("\ngrids: " + ", ".join(grids))
    return 0


def _add_report_parser(sub) -> None:
    report = sub.add_parser("report", help="write one self-contained HTML report of a results folder")
    report.add_argument("results_dir", metavar="DIR", help="a results folder (holding results.jsonl)")
    report.add_argument(
        "--out",
        default=None,
        help="the HTML file to write (default DIR/report.html); results.csv, results.parquet and the PNGs go beside it",
    )
    report.add_argument("--title", default=None, help="page title (default: names the model)")
    report.add_argument("-v", "--verbose", action="store_true", help="log progress details")


def _command_report(args) -> int:
    import quantsweep.report
    from quantsweep.sweep.api import refresh_derived

    refresh_derived(args.results_dir)  # a store killed before its last rebuild: the report reads it whole
    path = quantsweep.report(args.results_dir, args.out, title=args.title)
    print(f"report written to {path} (results.csv, results.parquet and PNGs beside it)")
    return 0


# --- export and measure (issue 11) ------------------------------------------------------


def _add_calibration_options(parser: argparse.ArgumentParser) -> None:
    """The calibration flags of ``run``, with the same defaults (shared by export and measure)."""
    parser.add_argument(
        "--calib-source",
        default=None,
        help="calibration text: 'toy', a .txt/.jsonl file, or wikitext2/c4/pile (default: toy for the toy model)",
    )
    parser.add_argument(
        "--calib-samples", type=int, default=None, help="calibration samples N (default 128; 32 for toy)"
    )
    parser.add_argument(
        "--calib-seq-len", type=int, default=None, help="tokens per calibration sample L (default 2048; 64 for toy)"
    )
    parser.add_argument("--calib-seed", type=int, default=0, help="seed for sampling calibration windows")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype, --trust-remote-code, -v: as ``run`` has them."""
    parser.add_argument("--model", required=True, help="'toy' or a local Hugging Face model directory")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, npu or npu:N (default auto)")
    parser.add_argument(
        "--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA/NPU), float32, bfloat16, float16"
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")


def _add_export_parser(sub) -> None:
    export = sub.add_parser("export", help="quantize a model and write it as a GPTQ checkpoint")
    _add_model_options(export)
    export.add_argument(
        "--recipe", required=True, help="an exportable recipe (uniform 2/3/4/8-bit weights): name or YAML path"
    )
    export.add_argument("--out", required=True, help="folder to write the checkpoint to (must be empty)")
    export.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    export.add_argument(
        "--checkpoint-format",
        default="gptq",
        choices=["gptq", "gptq_v2"],
        help="gptq (v1: stores zero - 1, what auto-gptq writes) or gptq_v2 (default gptq)",
    )
    _add_calibration_options(export)


def _add_measure_parser(sub) -> None:
    measure = sub.add_parser("measure", help="measured cost of recipes: bytes, peak memory, prefill and decode speed")
    _add_model_options(measure)
    measure.add_argument("--recipe", action="append", required=True, help="recipe name, grid or YAML path (repeatable)")
    measure.add_argument(
        "--prompt-tokens", type=int, default=None, help="prefill prompt length (default 512; 256 for toy)"
    )
    measure.add_argument("--new-tokens", type=int, default=None, help="decode steps (default 128; 64 for toy)")
    measure.add_argument("--repeats", type=int, default=5, help="timed runs (default 5)")
    measure.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    measure.add_argument("--out", default=None, help="write the records to this .jsonl file")
    _add_calibration_options(measure)


def _command_export(args) -> int:
    from quantsweep.export import export_model

    out = export_model(
        args.model,
        args.recipe,
        args.out,
        device=args.device,
        dtype=args.dtype,
        calibration_source=args.calib_source,
        calibration_samples=args.calib_samples,
        calibration_seq_len=args.calib_seq_len,
        calibration_seed=args.calib_seed,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
        checkpoint_format=args.checkpoint_format,
    )
    print(f"GPTQ checkpoint of {args.model} with {args.recipe} written to {out}")
    return 0


def _format_rate(record, key) -> str:
    value = record.get(key)
    return "-" if value is None else f"{value:,.0f}"


def _command_measure(args) -> int:
    from quantsweep.measure.step import measure_recipes

    toy = args.model == "toy"
    records = measure_recipes(
        args.model,
        args.recipe,
        device=args.device,
        dtype=args.dtype,
        calibration_source=args.calib_source,
        calibration_samples=args.calib_samples,
        calibration_seq_len=args.calib_seq_len,
        calibration_seed=args.calib_seed,
        trust_remote_code=args.trust_remote_code,
        out=args.out,
        prompt_tokens=args.prompt_tokens or (256 if toy else 512),
        new_tokens=args.new_tokens or (64 if toy else 128),
        repeats=args.repeats,
        warmup=args.warmup,
    )
    print(
        f"{'recipe':<20} {'kernel':<13} {'bits/w':>7} {'theory MB':>10} {'stored MB':>10} "
        f"{'peak MB':>9} {'prefill t/s':>12} {'decode t/s':>11}  measured on"
    )
    for r in records:
        peak = r.get("peak_memory_bytes")
        print(
            f"{r['recipe']:<20} {r['kernel']:<13} {r['theoretical_bits_per_weight']:>7.2f} "
            f"{r['theoretical_bytes'] / 1e6:>10.2f} {r['stored_bytes'] / 1e6:>10.2f} "
            f"{'-' if peak is None else f'{peak / 1e6:.0f}':>9} {_format_rate(r, 'prefill_tokens_per_s'):>12} "
            f"{_format_rate(r, 'decode_tokens_per_s'):>11}  {r['speed_measured_on']}"
        )
    first = records[0]
    print(
        f"\nwhere: {first.get('device_name')}, {first.get('threads')} threads; peak memory is "
        f"{first.get('peak_memory_kind')}; fake-quant rows repeat the fp model's memory and speed"
    )
    if args.out:
        print(f"records written to {args.out}")
    return 0


# --- sensitivity (issue 17) -------------------------------------------------------------


def _add_sensitivity_parser(sub) -> None:
    from quantsweep.sensitivity.defaults import DEFAULT_TOKENS, TEXT_SEED_OFFSET  # light: the parser loads no torch

    sensitivity = sub.add_parser(
        "sensitivity",
        help="quantize one decoder layer at a time, rank layers by KL from the fp model, write a mixed-precision recipe",
    )
    _add_model_options(sensitivity)
    sensitivity.add_argument(
        "--recipe", required=True, help="the recipe whose weight stage is scanned: name or YAML path"
    )
    sensitivity.add_argument(
        "--out", required=True, help="folder for the table, plot, recipe and per-layer records (a rerun resumes)"
    )
    sensitivity.add_argument(
        "--budget",
        type=float,
        default=None,
        help="average bits per quantized weight: write a recipe keeping the most sensitive layers at --high-bits",
    )
    sensitivity.add_argument(
        "--high-bits",
        type=int,
        default=None,
        help="precision of the kept layers (default 4 for a 1-3 bit recipe, else 8)",
    )
    sensitivity.add_argument(
        "--granularity",
        default="layer",
        choices=["layer", "linear"],
        help="layer: one decoder layer at a time; linear: one Linear of one layer at a time (default layer)",
    )
    sensitivity.add_argument(
        "--text",
        default=None,
        help="the fixed text: 'toy', a .txt/.jsonl file, or wikitext2/c4/pile (default: the calibration source); "
        f"its windows are drawn with the calibration seed + {TEXT_SEED_OFFSET}, so not the calibration's own",
    )
    sensitivity.add_argument(
        "--tokens",
        type=int,
        default=DEFAULT_TOKENS,
        help=f"tokens of text each layer is measured on (default {DEFAULT_TOKENS})",
    )
    sensitivity.add_argument("--seq-len", type=int, default=None, help="tokens per window (default: --calib-seq-len's)")
    sensitivity.add_argument("--force", action="store_true", help="measure every layer again")
    _add_calibration_options(sensitivity)


def _command_sensitivity(args) -> int:
    import quantsweep.sensitivity

    calibration = {
        "source": args.calib_source,
        "samples": args.calib_samples,
        "seq_len": args.calib_seq_len,
        "seed": args.calib_seed,
    }

    def progress(record) -> None:
        print(
            f"[{record['unit']}] KL {record['kl_mean']:.4g} nats, top-1 same {record['top1_agreement']:.3f}", flush=True
        )

    result = quantsweep.sensitivity(
        args.model,
        args.recipe,
        out=args.out,
        budget=args.budget,
        high_bits=args.high_bits,
        granularity=args.granularity,
        text=args.text,
        tokens=args.tokens,
        seq_len=args.seq_len,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        calibration={k: v for k, v in calibration.items() if v is not None},
        force=args.force,
        on_unit=progress,
    )
    reused = len(result.rows) - len(result.measured)
    if reused:
        print(f"{reused} of {len(result.rows)} units already measured in {args.out}")
    print(result.table())
    print(f"\ntable written to {result.table_path}, plot to {result.plot_path}")
    if result.mixed is not None:
        mixed = result.mixed
        print(
            f"recipe written to {result.recipe_path}: {args.recipe} with {len(mixed.promoted)} of {len(result.rows)} units at "
            f"{mixed.high_bits} bits, {mixed.bits_per_weight:.3f} bits per weight (budget {mixed.budget:g}; "
            f"{mixed.uniform_bits_per_weight:.3f} for {args.recipe} alone)"
        )
    return 0


COMMANDS = {
    "demo": _command_demo,
    "run": _command_run,
    "sweep": _command_sweep,
    "judge": _command_judge,
    "report": _command_report,
    "recipes": _command_recipes,
    "export": _command_export,
    "measure": _command_measure,
    "sensitivity": _command_sensitivity,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``quantsweep`` command; returns the exit code.

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()) as out:
        ...     code = main(["recipes"])
        >>> code, "w4-rtn" in out.getvalue()
        (0, True)
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(getattr(args, "verbose", False))
    stdout = sys.stdout
    sys.stdout = _SafeStream(stdout)  # names come from users' files: no escape sequence reaches the terminal
    try:
        return COMMANDS[args.command](args)
    except (UserError, ValueError, TypeError, FileNotFoundError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"quantsweep: error: {safe_text(message)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:  # the disk or the file system (permission denied, I/O error): one line, no traceback
        logging.getLogger(__name__).debug("file system error", exc_info=True)
        print(f"quantsweep: error: {safe_text(error)}", file=sys.stderr)
        return EXIT_FILE_SYSTEM_ERROR
    except KeyboardInterrupt:
        print("quantsweep: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout


class _SafeStream:
    """A text stream that shows control characters as ``\\x..`` (line breaks and tabs pass)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(safe_text(text, keep="\n\t"))

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _SafeFormatter(logging.Formatter):
    """Log lines with control characters shown, not sent (a recipe name may carry an escape sequence)."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_text(super().format(record), keep="\n\t")


if __name__ == "__main__":
    sys.exit(main())
