"""The ``harness`` command line. torch and mlflow are imported only inside commands that need them."""

from __future__ import annotations

import json
import shlex
import signal
import sys
from pathlib import Path

import click

from . import __version__
from .errors import HarnessError

LIST_KINDS = {"distillers": "distillers", "datasets": "datasets", "archs": "architectures",
              "architectures": "architectures", "executors": "executors"}


def _plugins(warn: bool = True):
    from .plugins import get_plugins

    plugins = get_plugins()
    if warn:
        for problem in plugins.problems:
            click.echo(f"warning: {problem} (see `harness plugins`)", err=True)
    return plugins


set_option = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                          help="Override a grid-file value, e.g. --set eval.epochs=10 (repeatable).")
only_option = click.option("--only", "only", multiple=True, metavar="GLOB",
                           help="Keep only trials whose name (distiller/dataset/arch/budget/seed) matches "
                                "GLOB, e.g. --only 'sldd/*' (repeatable; trial keys are unchanged, so "
                                "separate processes can split one grid).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="distill-harness")
def cli() -> None:
    """Benchmark dataset-distillation methods × datasets × architectures, tracked in MLflow."""


@cli.command()
@click.argument("grid_file", type=click.Path(path_type=Path))
@set_option
@only_option
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the grid's, else auto).")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow store [default: sqlite:///results/mlflow.db; env MLFLOW_TRACKING_URI].")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, envvar="HARNESS_DATA_DIR",
              help="Where datasets live [env HARNESS_DATA_DIR; default ~/.cache/distill-harness/data].")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Skip trials already finished in the experiment (matched by trial key).")
@click.option("--executor", default=None, help="How trials run: inline | process | ... (default: the grid's).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Trials at once: process (default: one per GPU, else 2), ray (default: what the cluster fits).")
@click.option("--ray-address", default=None,
              help="Ray executor: join this cluster (auto, HOST:PORT, or ray://HOST:10001 through Ray Client) "
                   "(default: $RAY_ADDRESS, else a local cluster of its own).")
@click.option("--system-metrics", is_flag=True, help="Log MLflow's system metrics (CPU, memory, GPU) on the bench's run.")
def bench(grid_file, overrides, only, device, tracking_uri, data_dir, resume, executor, workers, ray_address,
          system_metrics) -> None:
    """Run the grid in GRID_FILE and log every trial to MLflow.

    Exit code 0 when every trial passed, 1 when some failed, 2 for invalid input.
    """
    from rich.console import Console

    from .bench import run_bench
    from .grid import check_device, load_grid, select_trials

    plugins = _plugins()
    if executor:
        overrides = (*overrides, f"executor={json.dumps(executor)}")
    grid = select_trials(load_grid(grid_file, list(overrides), plugins), only)
    if device:
        check_device(device, "--device")
    console = Console()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` ends runs KILLED, as Ctrl-C does
    try:
        outcome = run_bench(grid, plugins, tracking_uri=tracking_uri, data_dir=data_dir, device=device,
                            resume=resume, console=console, workers=workers, address=ray_address,
                            system_metrics=system_metrics)
    finally:
        signal.signal(signal.SIGTERM, previous)
    _summarise(console, outcome, tracking_uri)


def _summarise(console, outcome, tracking_uri) -> None:
    """The leaderboard and where to look next; exit 0 when every trial passed, else 1."""
    if outcome.board is not None and len(outcome.board):
        if console.is_terminal:
            _print_board(console, outcome.board, f"Leaderboard: {outcome.experiment}")
        else:  # piped or logged: markdown with full names, not a table wrapped at 80 columns
            from .report import render

            click.echo(render(outcome.board, "md", f"Leaderboard: {outcome.experiment}",
                              f"harness report --experiment {outcome.experiment}"), nl=False)
    console.print(f"{outcome.passed} passed, {outcome.failed} failed, {outcome.skipped} skipped (already finished). "
                  f"Tables: harness report --experiment {outcome.experiment}"
                  + ("" if tracking_uri is None else f" --tracking-uri {tracking_uri}")
                  + f"; UI: {ui_hint(outcome.tracking_uri, outcome.experiment_id)}", highlight=False, soft_wrap=True)
    sys.exit(0 if outcome.ok else 1)


@cli.command(name="eval")
@click.argument("sets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--dataset", required=True, help="The dataset the sets were distilled from (its test split evaluates them).")
@click.option("--arch", required=True, help="The architecture the sets were distilled with ([eval] archs 'same').")
@click.option("--grid", "recipes_file", type=click.Path(path_type=Path), default=None,
              help="A grid file whose [eval] recipes, seeds, device, ... to use (no [[grid]] tables).")
@click.option("--seeds", default=None, metavar="0,1,2", help="Evaluation seeds (default: the --grid file's, else 0).")
@click.option("--experiment", default=None, help="MLflow experiment (default: the --grid file's name, else 'eval'); "
                                                 "name a bench's experiment to put the runs beside its own.")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the --grid file's, else auto).")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow store [default: sqlite:///results/mlflow.db; env MLFLOW_TRACKING_URI].")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, envvar="HARNESS_DATA_DIR",
              help="Where datasets live [env HARNESS_DATA_DIR; default ~/.cache/distill-harness/data].")
def eval_command(sets, dataset, arch, recipes_file, seeds, experiment, device, tracking_uri, data_dir) -> None:
    """Evaluate distilled sets made elsewhere (SETS: safetensors files, docs/distilled-set-format.md)
    under the same protocol as `bench`, with the random baseline at each set's budget.

    Exit code 0 when every trial passed, 1 when some failed, 2 for invalid input.
    """
    from rich.console import Console

    from .bench import run_bench
    from .errors import ConfigError
    from .evalset import eval_grid
    from .grid import check_device

    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {seeds!r}") from None
    plugins = _plugins()
    grid = eval_grid([str(s) for s in sets], dataset, arch, plugins, seed_list,
                     str(recipes_file) if recipes_file else None, experiment)
    if device:
        check_device(device, "--device")
    console = Console()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        outcome = run_bench(grid, plugins, tracking_uri=tracking_uri, data_dir=data_dir, device=device, console=console)
    finally:
        signal.signal(signal.SIGTERM, previous)
    _summarise(console, outcome, tracking_uri)


@cli.command()
@click.argument("grid_file", type=click.Path(path_type=Path))
@set_option
@only_option
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, envvar="HARNESS_DATA_DIR",
              help="Where datasets live [env HARNESS_DATA_DIR; default ~/.cache/distill-harness/data].")
def validate(grid_file, overrides, only, data_dir) -> None:
    """Check GRID_FILE (and overrides) as `bench` would before computing: names, types, budgets
    against the real data, architectures against the datasets. Loads the data; trains nothing."""
    from .grid import load_grid, select_trials
    from .plan import prepare

    plugins = _plugins()
    grid = select_trials(load_grid(grid_file, list(overrides), plugins), only)
    click.echo(prepare(grid, plugins, data_dir).describe())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json) -> None:
    """List plugin distributions, their versions, what each registered, and broken ones."""
    loaded = _plugins(warn=False)
    infos = [{"plugin": i.name, "distribution": i.distribution, "version": i.version, "module": i.module,
              "registered": i.registered} for i in loaded.infos.values()]
    problems = [{"plugin": p.plugin, "distribution": p.distribution, "reason": p.reason} for p in loaded.problems]
    if as_json:
        click.echo(json.dumps({"plugins": infos, "problems": problems}, indent=2))
        return
    for info in infos:
        click.echo(f"{info['distribution']} {info['version']}  ({info['plugin']}: {info['module']})")
        for kind, names in info["registered"].items():
            click.echo(f"    {kind}: {', '.join(names)}")
    for p in problems:
        click.echo(f"BROKEN {p['distribution']} ({p['plugin']}): {p['reason']}")


@cli.command(name="ls")
@click.argument("kind", type=click.Choice(sorted(LIST_KINDS)))
@click.argument("pattern", required=False)
def ls_command(kind, pattern) -> None:
    """List registered distillers, datasets, archs or executors (PATTERN filters by name)."""
    from .specs import capabilities_of, describe

    registry = getattr(_plugins(), LIST_KINDS[kind])
    names = registry.names(pattern)
    if not names:
        click.echo(f"no {kind} match '{pattern}'" if pattern else f"no {kind} registered", err=True)
        sys.exit(1)
    width = max(len(n) for n in names)
    registered = {name: (item, source) for name, item, source in registry.items()}  # lists without importing
    for name in names:
        item, source = registered[name]
        extra = ""
        if kind == "datasets":
            extra = f" [{item.modality}, {item.num_classes} classes, {'x'.join(map(str, item.input_shape))}]"
        elif kind in ("archs", "architectures"):
            extra = f" [{'/'.join(item.modalities)}{'; features' if item.features else ''}]"
        elif kind == "distillers":
            caps = [k for k, v in vars(capabilities_of(item)).items() if v]
            extra = f" [{', '.join(caps)}]" if caps else ""
        click.echo(f"{name:<{width}}  {describe(item)}{extra}  ({source})")


@cli.command()
@click.option("--experiment", "experiments", multiple=True,
              help="MLflow experiment (= grid name); repeatable. Default: every experiment with trials.")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow store [default: sqlite:///results/mlflow.db].")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Where <experiment>.md and .csv are written.")
@click.option("--grid", "grid_file", type=click.Path(path_type=Path), default=None,
              help="Only the trials this grid file defines now (its experiment unless --experiment): "
                   "runs left over from earlier versions of the grid are not reported.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="With --grid: the same overrides the grid was run with.")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv", "json"]), default=None,
              help="What is printed: table (terminal), md, csv or json [default: table on a terminal, else md].")
@click.option("--plots", is_flag=True, help="Also write the plots (accuracy vs budget, cost frontier, "
                                             "cross-architecture) to OUT/<experiment>-plots/.")
def report(experiments, tracking_uri, out_dir, grid_file, overrides, fmt, plots) -> None:
    """Leaderboards (mean ± std over seeds) printed and written to OUT/<experiment>.md and .csv."""
    from rich.console import Console

    from .grid import check_experiment_name
    from .report import leaderboard, render, runs_frame, write_report
    from .tracking import Tracker

    keys = None
    if grid_file is not None:
        from .grid import load_grid

        grid = load_grid(grid_file, list(overrides))
        keys = {t.grid_key for t in grid.trials}  # no data loaded here: the grid's own keys
        experiments = experiments or (grid.name,)
    tracker = Tracker(tracking_uri)
    names = list(experiments) or [e.name for e in tracker.client.search_experiments()
                                  if e.name != "Default"]
    if not names:
        raise HarnessError(f"no experiments in {tracker.uri}; run `harness bench` first")
    console = Console()
    for name in names:
        if not experiments:  # every experiment of the store: one another tool named oddly is passed over
            try:
                check_experiment_name(name)
            except HarnessError as exc:
                click.echo(f"experiment '{name}' skipped: {exc}", err=True)
                continue
        frame = runs_frame(tracker, name, keys)
        if not len(frame):
            click.echo(f"experiment '{name}' has no trial runs yet", err=True)
            continue
        board = leaderboard(frame)
        command = (f"harness report --grid {grid_file}" if grid_file else f"harness report --experiment {name}") \
            + "".join(f" --set {o}" for o in overrides) + (f" --tracking-uri {tracking_uri}" if tracking_uri else "")
        md, csv = write_report(board, out_dir, name, command)
        fmt = fmt or ("table" if sys.stdout.isatty() else "md")  # piped: full names, no 80-column wrap
        if fmt == "table":
            _print_board(console, board, f"Leaderboard: {name}")
        else:
            click.echo(render(board, fmt, f"Leaderboard: {name}", command), nl=False)
        click.echo(f"wrote {md} and {csv}", err=fmt != "table")  # keeps a piped csv/json parseable
        if plots:
            from .plots import write_plots

            written = write_plots(board, out_dir, name)
            click.echo(f"wrote {len(written)} plot(s) to {Path(out_dir) / (name + '-plots')}", err=fmt != "table")


@cli.command()
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow store [default: sqlite:///results/mlflow.db; env MLFLOW_TRACKING_URI].")
def sync(tracking_uri) -> None:
    """Log trials that finished while the tracking store was unavailable (kept in the spool).

    `harness bench` does the same before it starts; the spool is $HARNESS_SPOOL_DIR, else
    ~/.cache/distill-harness/spool.
    """
    from .spool import flush, pending
    from .tracking import Tracker

    tracker = Tracker(tracking_uri)
    waiting = len(pending(tracker.uri))
    done = flush(tracker)
    click.echo(f"logged {done} of {waiting} spooled trial(s) into {tracker.uri}")


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """How to look at the runs: the command for a local store and the page that opens on them (MLflow
    3's UI opens in its GenAI view unless told ``workflowType=machine_learning``)."""
    page = f"#/experiments/{experiment_id}?workflowType=machine_learning" if experiment_id else ""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {tracking_uri}, then open http://127.0.0.1:5000/{page}"


def _print_board(console, board, title: str) -> None:
    from rich.table import Table

    from .report import COLUMNS, board_cells

    shown = COLUMNS[:12]  # the terminal leaves out the timing columns
    table = Table(title=title, show_lines=False)
    for col in shown:
        table.add_column(col, justify="right" if col in ("acc", "random", "gain", "to full", "vs best", "seeds") else "left")
    for cells in board_cells(board):
        table.add_row(*cells[: len(shown)])
    console.print(table)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _interrupted_message() -> str:
    """What Ctrl-C (or SIGTERM) prints: for bench, the command that resumes the grid."""
    args = sys.argv[1:]
    if args[:1] == ["bench"]:
        resume = shlex.join(["harness", *(a for a in args if a != "--no-resume")])
        return ("interrupted: finished trials are kept, the interrupted one is marked KILLED; "
                f"resume with: {resume}")
    return "interrupted"


def main() -> None:
    try:
        _plugins(warn=False).add_commands(cli)
        cli.main(standalone_mode=False)
    except HarnessError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:  # click turns KeyboardInterrupt inside a command into Abort
        click.echo(_interrupted_message(), err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(_interrupted_message(), err=True)
        sys.exit(130)
