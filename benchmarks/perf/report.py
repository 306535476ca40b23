"""Write results/perf.md from a pytest-benchmark JSON file (what `make perf` runs).

Usage: python benchmarks/perf/report.py results/perf/latest.json results/perf.md
(results/perf/side-by-side.json, when benchmarks/perf/side_by_side.py wrote it, adds the section on
the authors' code.)

Every figure comes from the one JSON (one run): ratios compare benchmarks measured side by side on
the same machine state. Targets are the performance issue's; a missed target says "missed".
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path



def _param(bench: dict) -> str:
    name = bench["name"]
    return name[name.index("[") + 1 : -1] if "[" in name else name


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _side_by_side(side: dict) -> list[str]:
    """The section on the authors' code: ours under the harness's allocator vs theirs as shipped (the
    target) and, for a fair reading, both codes under the same allocator setting."""
    med, setting = side["median"], side["setting"]
    both = side.get("allocator") == "both"  # keys "<setting>:<case>/<who>"; older files: one setting
    rounds = len(next(iter(side["seconds_per_step"].values())))
    out = ["## Outer step beside the authors' code (one run, alternating rounds)", "",
           f"`benchmarks/perf/side_by_side.py` on {side['when']} UTC "
           f"({'; '.join(side['reference'].values())}); {setting['dataset']}, {setting['arch']}, LD/LD-RR "
           f"{setting['base_images']} base images, base batch {setting['base_batch']}, target batch "
           f"{setting['target_batch']}; SLDD known init, 10 images, 1 step x 3 epochs; "
           f"{setting['threads']} thread(s). Theirs: {setting['theirs']}. Ours: {setting['ours']}. "
           f"Medians over {rounds} rounds.", ""]
    if both:
        out += ["Each round ran one process per C-heap setting (`harness/allocator.py`), each timing both "
                "codes: `default` is glibc's, as the authors' code runs on its own; `kept` is the harness's "
                "(freed blocks stay in the heap), applied to their code too in the last columns.", "",
                "| distiller | theirs, as shipped | ours | ours / theirs | target | | theirs, kept | "
                "ours / theirs, both kept | both default |", "|---|---|---|---|---|---|---|---|---|"]
        for name in ("ld", "ld-rr", "sldd"):
            if f"kept:{name}/ours" not in med:
                continue
            shipped, ours = med[f"default:{name}/theirs"], med[f"kept:{name}/ours"]
            kept_theirs = med[f"kept:{name}/theirs"]
            plain = med[f"default:{name}/ours"] / shipped
            out.append(f"| {name} | {_fmt(shipped)} | {_fmt(ours)} | {ours / shipped:.2f} | ≤ 0.5 | "
                       f"{_verdict(ours / shipped <= 0.5)} | {_fmt(kept_theirs)} | {ours / kept_theirs:.2f} | "
                       f"{plain:.2f} |")
    else:
        out += ["| distiller | theirs (data included) | ours | ours / theirs | target | |", "|---|---|---|---|---|---|"]
        for name in ("ld", "ld-rr", "sldd"):
            if f"{name}/ours" not in med:
                continue
            theirs, ours = med[f"{name}/theirs"], med[f"{name}/ours"]
            out.append(f"| {name} | {_fmt(theirs)} | {_fmt(ours)} | {ours / theirs:.2f} | ≤ 0.5 | "
                       f"{_verdict(ours / theirs <= 0.5)} |")
    return out + ["", "Not side by side (no target in the issue): dd (SsnL code, the same Trainer as sldd) and "
                  "dc/dsa/dm (DC code).", ""]


def _overhead_parts(info: dict, trials: int) -> list[str]:
    """Where the bench's time outside the trial function goes, timed inside the same bench runs:
    per trial (its MLflow run) and per grid (what does not grow with the grid), and what follows for
    the trial length at which the overhead falls under 3%."""
    fixed = statistics.median(info["fixed"])
    per_trial = statistics.median(info["per_trial_logging"]) / trials
    inside = statistics.median(info["inside"])
    rounds = [i / b - 1 for b, i in zip(info["bare"], info["inside"])]

    def threshold(n: int) -> str:
        return _fmt((fixed / n + per_trial) / 0.03)

    return [f"Where the time outside the trial function goes, timed inside the same bench runs (medians of "
            f"rounds; read off one run, not a difference of two, so steadier than the paired overhead): "
            f"**{_fmt(per_trial)} per trial** for its MLflow run (created, claimed, finished, a run per recipe) "
            f"and **{_fmt(fixed)} per grid** (the store's set-up, the resume checks, the summary table and its "
            f"figures). The trials themselves took {_fmt(inside)} inside the bench, {statistics.median(rounds):+.1%} "
            "vs bare (the in-trial cost of live curves and progress, paired like the overhead). "
            f"So the overhead is under 3% for trials of {threshold(trials)} or more on a grid of {trials} trials, "
            f"{threshold(100)} or more on a grid of 100.", ""]


def _separately(info: dict) -> str:
    """The clause naming a benchmark's own run, when it was measured apart from the rest of the file."""
    when = info.get("measured_separately")
    return f"; measured separately from the rest of this file: {when}" if when else ""


def render(data: dict, side: dict | None = None) -> str:
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"] or b["name"]][_param(b)] = b
    machine = data.get("machine_info", {})
    out = ["# Performance (`make perf`)", "",
           f"One run of `make perf` on {machine.get('node', '?')} ({machine.get('cpu', {}).get('brand_raw', 'CPU')}, "
           f"{machine.get('cpu', {}).get('count', '?')} logical cores), {data.get('datetime', '')[:19]} UTC, "
           f"commit {data.get('commit_info', {}).get('id', '?')[:7]}. Means over the rounds shown; ratios are "
           "within this one run (the machine is shared and noisy: compare ratios, not absolute times). "
           f"Raw data: `results/perf/latest.json`. Regenerate: `make perf`.", ""]

    evals = sorted(g for g in groups if g.startswith("eval-") and g != "eval-primitives")
    if evals:
        separately = sorted({b.get("extra_info", {}).get("measured_separately") for g in evals
                             for b in groups[g].values()} - {None})
        out += ["## Evaluation: K = 5 models one after another vs at once (`eval_mode`)", "",
                "Training only (the test pass is the same code on both paths); "
                "see benchmarks/perf/test_eval_modes.py for the sets and epochs.", "",
                *([f"Measured separately from the rest of this file: {separately[0]}.", ""] if separately else []),
                "`ceiling`: one model trained on the K sets at once (the same arithmetic, none of the "
                "per-model overhead); sequential / ceiling bounds what training the K models together "
                "can gain on this machine.", "",
                "`vectorised` batches the K models layer by layer (`layered_forward`); `vmap` is the same "
                "training through `torch.func.vmap`, the path models of other layers take.", "",
                "| arch | sequential | vectorised | speed-up | vmap | its speed-up | ceiling | its speed-up | target | |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        speedups = {}
        for g in evals:
            seq, vec = groups[g].get(f"{g[5:]}-sequential"), groups[g].get(f"{g[5:]}-vectorised")
            if not (seq and vec):
                continue
            speedup = speedups[g[5:]] = seq["stats"]["mean"] / vec["stats"]["mean"]

            def beside(name: str) -> str:
                other = groups[g].get(f"{g[5:]}-{name}")
                return (f"{_fmt(other['stats']['mean'])} | {seq['stats']['mean'] / other['stats']['mean']:.2f}x"
                        if other else "– | –")

            target, ok = (("≥ 1.0x (no slower)", speedup >= 1.0) if g == "eval-convnet" else ("≥ 3x", speedup >= 3))
            out.append(f"| {g[5:]} | {_fmt(seq['stats']['mean'])} | {_fmt(vec['stats']['mean'])} | "
                       f"{speedup:.2f}x | {beside('vmap')} | {beside('ceiling')} | {target} | {_verdict(ok)} |")
        out += ["", "`eval_mode = \"auto\"` vectorises convolutional models on CUDA only, and models without "
                "convolutions (MLP) everywhere: vectorised MLPs measured 1.3-1.7x faster on Intel Xeon hosts. "
                "On a CPU, batched convolutions at best match K separate ones (the ConvNet-3 ceiling) while "
                "holding K models' activations at once, so `auto` keeps them sequential there."]
        if speedups.get("mlp", 1.0) < 1.0:
            out += [f"On this host they are slower ({speedups['mlp']:.2f}x): the CPU decides, and "
                    "`eval_mode = \"sequential\"` is the faster choice here for MLP grids."]
        out += ["Where the ceiling's speed-up is below the target, no way of training the K models together "
                "reaches it on this CPU.", ""]

    if "outer-step" in groups:
        out += ["## Distillation: time per outer step (mnist-subset, LeNet, CPU)", "",
                "Each round runs `distill` from scratch with a short and a long budget; one outer step = "
                "the difference / the extra steps, set-up = the short run minus its steps "
                "(benchmarks/perf/test_distill_step.py).", "",
                "| distiller | per outer step | set-up |", "|---|---|---|"]
        runs: dict[str, dict[int, float]] = defaultdict(dict)
        for b in groups["outer-step"].values():
            info = b.get("extra_info", {})
            runs[info.get("distiller", b["name"])][int(info.get("outer_steps", 1))] = b["stats"]["mean"]
        for name, by_steps in runs.items():
            if len(by_steps) < 2:
                continue
            short, long = min(by_steps), max(by_steps)
            step = (by_steps[long] - by_steps[short]) / (long - short)
            out.append(f"| {name} | {_fmt(step)} | {_fmt(max(by_steps[short] - short * step, 0.0))} |")
        out.append("")

    if side is not None:
        out += _side_by_side(side)

    if "harness-overhead" in groups:
        info = next(iter(groups["harness-overhead"].values())).get("extra_info", {})
        if info.get("bare") and info.get("bench"):
            bare, bench = statistics.median(info["bare"]), statistics.median(info["bench"])
            rounds = [b / a - 1 for a, b in zip(info["bare"], info["bench"])]
            over = statistics.median(rounds)  # of the paired rounds: each pair saw the same machine load
            undecided = min(rounds) <= 0.03 < max(rounds)  # a median between rounds that disagree decides nothing
            out += ["## Harness overhead on a grid", "",
                    "`run_bench` (plan, MLflow runs, live curves, artifacts, leaderboard) vs the bare trial "
                    "function over the same 4 trials, paired in each round "
                    f"(benchmarks/perf/test_harness_overhead.py; medians of {len(info['bare'])} rounds; the overhead is the "
                    "median of each round's own)"
                    + _separately(info) + ".", "",
                    "| bare trials | bench | overhead | target | |", "|---|---|---|---|---|",
                    f"| {_fmt(bare)} | {_fmt(bench)} | {over:+.1%} | ≤ 3% | "
                    f"{'**unresolved**' if undecided else _verdict(over <= 0.03)} |", "",
                    "Each round's overhead, in order: "
                    + ", ".join(f"{r:+.1%}" for r in rounds) + "."
                    + (" A negative overhead is noise: the difference is below what this machine resolves."
                       if min(rounds) < 0 else "")
                    + (" The rounds fall on both sides of the target, so this run does not decide it (the "
                       "machine's load changed between the paired runs): rerun on a quieter machine."
                       if undecided else "")
                    + " One unrecorded warm-up round ran first (the first bare run pays the process's one-time "
                    "costs).", ""]
            trials = info.get("trials", 4)
            if info.get("fixed") and info.get("per_trial_logging") and info.get("inside"):
                out += _overhead_parts(info, trials)
            elif over > 0:
                added = over * bare  # the median round's overhead, on the median bare time
                per_trial = added / trials
                out += [f"The bench added {_fmt(added)} to {trials} trials of {_fmt(bare / trials)} each: "
                        f"its MLflow requests per trial (run created, claimed, finished, a run per recipe) and per "
                        f"grid (the store's set-up, the summary table and its figures). None of it grows with a "
                        f"trial's length, so on a grid of this size it is under 3% for trials of "
                        f"{_fmt(per_trial / 0.03)} or more.", ""]
            if info.get("note"):
                out += [info["note"], ""]

    if "figures" in groups and "figures-constrained" in groups:
        b = next(iter(groups["figures"].values()))
        fixed = b["stats"]["mean"]
        constrained = next(iter(groups["figures-constrained"].values()))["stats"]["mean"]
        out += ["Of the per-grid time, the leaderboard's two figures (accuracy vs budget, cost frontier; "
                "benchmarks/perf/test_figures.py, 4 distillers x 3 budgets) take "
                f"{_fmt(fixed)} to draw and save at fixed margins, where matplotlib's constrained layout took "
                f"{_fmt(constrained)} in the same run ({1 - fixed / constrained:.0%} less)"
                + _separately(b.get("extra_info", {})) + ".", ""]

    if "executors" in groups:
        info = next(iter(groups["executors"].values())).get("extra_info", {})
        if info.get("inline") and info.get("process"):
            inline, process = min(info["inline"]), min(info["process"])  # interference only adds time
            out += ["## Process executor vs inline", "",
                    f"4 CPU-bound trials, {info.get('workers', 2)} workers, paired per round "
                    f"(benchmarks/perf/test_executors.py; best of {len(info['inline'])} rounds: on this shared "
                    f"machine interference only adds time, and a disturbed round would flatter either side)"
                    + _separately(info) + ".", "",
                    "| inline | process | speed-up | target | |", "|---|---|---|---|---|",
                    f"| {_fmt(inline)} | {_fmt(process)} | {inline / process:.2f}x | ≥ 1.7x | "
                    f"{_verdict(inline / process >= 1.7)} |", ""]
            if info.get("bare") and info.get("bare2"):
                bare, bare2 = min(info["bare"]), min(info["bare2"])
                out += ["The ceiling, the bare trial function without any harness in the same rounds: the 4 "
                        f"trials one after another in one process {_fmt(bare)}, as 2 processes of 2 trials "
                        f"(one thread each, their start-up included) {_fmt(bare2)}: **{bare / bare2:.2f}x** is "
                        "what two processes gain on this machine at all; the process executor reaches "
                        f"{(inline / process) / (bare / bare2):.0%} of it.", ""]
            if info.get("ray"):
                ray = min(info["ray"])
                per_trial = (ray - process) / info.get("trials", 4)
                out += ["The ray executor on a local 2-CPU cluster (started in each round), same trials: "
                        f"{_fmt(ray)}, {inline / ray:.2f}x inline; overhead per trial vs the process executor "
                        f"{_fmt(per_trial)} (Ray's cluster start-up and task scheduling).", ""]

    if "mlflow" in groups:
        b = next(iter(groups["mlflow"].values()))
        mean, requests = b["stats"]["mean"], b.get("extra_info", {}).get("requests")
        one = next(iter(groups.get("mlflow-request", {}).values()), None)
        out += ["## MLflow cost per trial", "",
                "Logging one finished trial (params, its dataset inputs, metrics, 200 curve points, per-model "
                "accuracies, a safetensors artifact, a run per recipe: two recipes) into a sqlite store"
                + _separately(b.get("extra_info", {})) + ".", ""]
        if requests and one:
            by = b.get("extra_info", {}).get("by_request", {})
            parts = ", ".join(f"{name} {count} x {_fmt(seconds / count)}"
                              for name, (count, seconds) in sorted(by.items(), key=lambda kv: -kv[1][1]))
            out += [f"It takes {requests} store requests; one light request alone (a "
                    f"`set_tag`) costs {_fmt(one['stats']['mean'])}, so the time is in what the heavy requests "
                    "do inside MLflow (its SQLAlchemy store re-reads the run it creates or ends, and checks "
                    "each logged metric), not in their number"
                    + (f". Where it goes, timed in one more logging of the same trial: {parts}." if parts else "."), ""]
        out += ["| per trial | target | |", "|---|---|---|",
                f"| {_fmt(mean)} | ≤ 50 ms | {_verdict(mean <= 0.05)} |", ""]
        rollback = next(iter(groups.get("mlflow-rollback", {}).values()), None)
        if rollback:
            slow = rollback["stats"]["mean"]
            out += ["The store is in sqlite's write-ahead-log mode, committed without a sync each "
                    "(`harness/sqlite_store.py`). The same logging into a store left in sqlite's default "
                    f"rollback journal, synced on every commit, took {_fmt(slow)} in this run: "
                    f"write-ahead logging takes {1 - mean / slow:.0%} off.", ""]

    if "cli-cold-start" in groups:
        out += ["## CLI cold start (a fresh process each round)", "",
                "| command | mean | target | |", "|---|---|---|---|"]
        for name, b in groups["cli-cold-start"].items():
            mean = b["stats"]["mean"]
            out.append(f"| `harness {name}` | {_fmt(mean)} | ≤ 1 s | {_verdict(mean <= 1.0)} |")
        out += ["", "`validate` is timed up to its first error on a grid with a typo (before data loads).", ""]

    if "data-cold-load" in groups:
        out += ["## Loading a dataset in a fresh process", "",
                "Train and test splits, timed inside a new process after its imports (what each `harness bench`, "
                "and each worker of the process and Ray executors, pays once; benchmarks/perf/test_data_load.py). "
                "Medians of the rounds.", "", "| dataset | load |", "|---|---|"]
        for name, b in groups["data-cold-load"].items():
            loads = b.get("extra_info", {}).get("load", [])
            if loads:
                out.append(f"| {name} | {_fmt(statistics.median(loads))} |")
        out.append("")

    for group, title in (("artifacts", "Trial artifacts"), ("eval-primitives", "Evaluation primitives (8x8 digits)")):
        if group in groups:
            out += [f"## {title}", "", "| benchmark | mean |", "|---|---|"]
            out += [f"| {b['name']} | {_fmt(b['stats']['mean'])} |" for b in groups[group].values()] + [""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: report.py BENCHMARK.json OUT.md", file=sys.stderr)
        return 2
    data = json.loads(Path(argv[1]).read_text())
    side_file = Path(argv[1]).with_name("side-by-side.json")  # written by side_by_side.py, when it was run
    side = json.loads(side_file.read_text()) if side_file.is_file() else None
    Path(argv[2]).write_text(render(data, side))
    print(f"wrote {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
