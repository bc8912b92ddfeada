"""Round 2's report as markdown (README "Round 2 protocol"; the runs and lr choice: `experiments.round2.protocol`).

Per task: the lr selection on holdout, the ceilings and every init at its chosen lr (dev; share of
full fine-tuning's gain over the majority class; convergence) with the ceiling ratio, RTE's gate, the
small-lr half, their paired tests (one Holm family over every task), steps to target, and the rank-16
row against rank 4 (its own Holm family); after them the follow-up checks' parts (`experiments.round2.checks`).
Every metric is on the GLUE dev split unless a column says holdout. Shared pieces: `experiments.round2.tables`.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from experiments.round2.checks import CONFIRM, LONG, confirm_markdown, long_markdown
from experiments.round2.plan import ceiling_ratio
from experiments.round2.protocol import (
    BUDGET,
    COMPARED_INITS,
    EPOCHS,
    GOAL,
    HOLDOUT,
    LIMIT_RANK,
    MAIN_TESTS,
    RANK,
    RTE_GATE,
    SMALL_LR,
    TASKS,
    at_selected,
    at_small_lr,
    grid_lrs,
    selected_lrs,
)
from experiments.round2.tables import family, series_markdown, within
from utils.glue import get_task
from utils.report import (
    compute_table,
    fmt_lr,
    fmt_p,
    format_table,
    paired_markdown,
    shares,
    steps_markdown,
    to_markdown,
)
from utils.selection import holdout_scores
from utils.stats import (
    PAIRED_BY_SERIES,
    holdout_majority,
    paired_comparison,
    series_order,
    steps_to_target,
    summary_table,
    with_variant,
)

RANK_PAIRED_BY = ("task", "model", "method", "init", "variant")  # rank 16 − rank 4 of one init


def _pairs(summaries: pd.DataFrame, selected: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Round 2's paired tests, final and best, each family Holm-adjusted on its own:
    the main family (rank `RANK`): every init − random and pissa − svd, each init at its selected lr
    (part "selected") and all at `SMALL_LR` (part "small lr"); the rank family: rank `LIMIT_RANK` −
    rank `RANK` of each init, each at its own selected lr."""
    adapters = summaries[summaries["method"] == "lora-fa"]
    main = adapters[adapters["rank"] == RANK]
    parts = {"selected": at_selected(main, selected), "small lr": at_small_lr(main)}
    contrasts = [(i, "random") for i in COMPARED_INITS if i != "random"] + [("pissa", "svd")]
    frames = [paired_comparison(df, a, b, w, keys=PAIRED_BY_SERIES).assign(part=part)
              for part, df in parts.items() for a, b in contrasts for w in ("final", "best")]
    ranks = [paired_comparison(at_selected(adapters, selected), LIMIT_RANK, RANK, w, keys=RANK_PAIRED_BY, by="rank")
             for w in ("final", "best")]
    return family(frames, MAIN_TESTS), family(within(ranks, "r{}"))


def _rte_gate(summaries: pd.DataFrame, selected: pd.DataFrame) -> str:
    """Step 1's rule for RTE, as a sentence: does full fine-tuning's seed-0 run (at MRPC's lr) end at least
    `RTE_GATE` above the holdout's majority class in holdout accuracy?"""
    full = at_selected(summaries[(summaries["method"] == "full") & (summaries["seed"] == 0)], selected)
    if full.empty:
        return "\nRTE's gate (step 1): waiting for full fine-tuning's seed-0 run."
    majority = holdout_majority("rte", HOLDOUT)  # reads RTE's train labels: only once there is a run to judge
    if majority is None:
        return "\nRTE's gate (step 1): needs the GLUE data (GLUE_DIR) for the holdout's majority class."
    acc, m0 = float(full["final_holdout_accuracy"].iloc[0]), majority["accuracy"]
    verdict = "passes: RTE is worth a LoRA-FA grid in a later round" if acc - m0 >= RTE_GATE else \
        "fails: RTE stays out of the LoRA-FA comparison"
    return (f"\nRTE's gate (step 1): full fine-tuning ends at holdout accuracy {acc:.3f} against the holdout's "
            f"majority class {m0:.3f} ({100 * (acc - m0):+.1f} points; the rule asks for {100 * RTE_GATE:+.0f}): it {verdict}.")


def _label(method: str, init: str, rank: int) -> str:
    return method if method != "lora-fa" else init if rank == RANK else f"{init} (rank {rank})"


def _headline(summaries: pd.DataFrame, selected: pd.DataFrame, pairs: pd.DataFrame, baselines: dict) -> str:
    """The answer at a glance: on each of `TASKS`, every rank-4 init and both ceilings at their chosen lr,
    the final dev main metric (mean ± std, seeds), the share of full fine-tuning's gain over the majority
    class, and the paired final difference from `random` with its Holm p (the main family)."""
    rows: dict[str, dict] = {}
    for task in TASKS:
        t = get_task(task)
        name, m0 = t.title, baselines.get(t.name, {}).get(t.main_metric, math.nan)
        s = summaries[(summaries["task"] == t.name) & summaries["rank"].isin([0, RANK])]
        chosen = summary_table(at_selected(s, selected)) if len(s) else pd.DataFrame()
        if chosen.empty:
            continue
        vs = pairs[(pairs["task"] == t.name) & (pairs["part"] == "selected") & (pairs["which"] == "final")
                   & (pairs["b"] == "random")] if not pairs.empty else pairs
        for (_, r), share in zip(chosen.iterrows(), shares(chosen, m0)):
            label = _label(r["method"], r["init"], RANK)
            d = vs[vs["a"] == r["init"]] if not vs.empty else vs
            rows.setdefault(label, {"series": label, "_o": series_order((r["method"], r["init"]))}).update({
                f"{name} lr": fmt_lr(r["lr"]),
                f"{name} {t.main_metric} (seeds)": (f"{r['final_mean']:.3f}" + ("" if pd.isna(r["final_std"])
                                                    else f" ± {r['final_std']:.3f}") + f" ({r['n']})"),
                f"{name} share": share,
                f"{name} − random (p Holm)": "" if d.empty else
                f"{d['diff'].iloc[0]:+.3f} ({fmt_p(d['p_holm'].iloc[0])})"})
    if not rows:
        return ""
    table = pd.DataFrame(sorted(rows.values(), key=lambda r: r["_o"])).drop(columns="_o").fillna("")
    return (f"\n### At a glance: rank {RANK}, each at its chosen lr (dev, final)\n\n"
            "Share: of full fine-tuning's gain over the majority class; − random: paired by seed, "
            f"p Holm-adjusted over the {MAIN_TESTS} registered tests of the family below.\n\n" + to_markdown(table))


def _selection_markdown(runs: pd.DataFrame, task: str, selected: pd.DataFrame) -> str:
    """One row per series of `task`: holdout score (final dev metric) at each lr of its grid, the
    chosen lr in bold; one table for the ceilings, one for LoRA-FA (every rank)."""
    out = []
    for methods in (("full", "head"), ("lora-fa",)):
        sel = selected[(selected["task"] == task) & selected["method"].isin(methods)]
        grid = sorted({lr for m, rank in zip(sel["method"], sel["rank"]) for lr in grid_lrs(m, rank)})
        rows = []
        for _, r in sel.iterrows():
            scores = holdout_scores(runs, task, r["init"], method=r["method"], epochs=EPOCHS[task], rank=r["rank"])
            row = {"series": _label(r["method"], r["init"], r["rank"]), "finished": r["grid"]}
            for lr in grid:
                hit = scores[np.isclose(scores["lr"], lr)]
                cell = "" if hit.empty else f"{hit['score'].iloc[0]:.3f} ({hit['final_dev'].iloc[0]:.3f})"
                row[fmt_lr(lr)] = f"**{cell}**" if cell and np.isclose(lr, r["lr"]) else cell
            row["chosen lr"] = "–" if pd.isna(r["lr"]) else fmt_lr(r["lr"])
            rows.append(row)
        if rows:
            out.append(to_markdown(pd.DataFrame(rows)))
    return "\n".join(out)


def round2_report(runs: pd.DataFrame, summaries: pd.DataFrame, baselines: dict, frac: float = 0.9,
                  tasks=None, checks: dict | None = None, hours: tuple[float, float] | None = None) -> str:
    """Round 2's tables as markdown, per task (all, or `tasks`; the Holm families span every task,
    whichever are shown). `checks`: {check name: (runs, summaries)} of the follow-up checks' folders
    (`experiments.round2.checks`), each shown after its task; `hours`: (worker-hours so far, projected total)
    of `experiments.round2.plan.current_plan`, stated at the end."""
    checks = checks or {}
    if summaries.empty:
        return "No finished runs.\n"
    summaries, selected = with_variant(summaries), selected_lrs(runs)
    pairs, rank_pairs = _pairs(summaries, selected)
    tests = int(pairs["p"].notna().sum()) if not pairs.empty else 0
    rank_tests = int(rank_pairs["p"].notna().sum()) if not rank_pairs.empty else 0
    out = ["Selection: seed 0, score = holdout main metric averaged over the last epoch's evaluations "
           "(holdout: 10 % of train, never trained on); cells are score (final dev metric), the chosen lr "
           "in bold. Everything else is on the GLUE dev split: mean ± std over seeds, 95 % CI a t-interval; "
           "share of full FT = (final − majority) / (full fine-tuning's final − majority). Paired: same seeds, "
           f"a − b, two-sided paired t-test; p (Holm) adjusted over the {MAIN_TESTS} registered paired tests of round 2 "
           f"at rank {RANK}, the {MAIN_TESTS - tests} without a p (no runs yet, or a zero difference on every seed) counted as p = 1; "
           f"p (Holm, defined tests only) over the {tests} defined ones, as first reported (the rank-{LIMIT_RANK} "
           f"row's {rank_tests} tests are a family of their own).\n"]
    if tasks is None:
        out.append(_headline(summaries, selected, pairs, baselines))
    for task in sorted(summaries["task"].unique() if tasks is None else [get_task(t).name for t in tasks]):
        t, s = get_task(task), summaries[summaries["task"] == task]
        m0 = baselines.get(t.name, {}).get(t.main_metric, math.nan)
        out.append(f"\n### {t.title} ({t.main_metric}; majority-class {t.main_metric} = {m0:.3f})\n")
        if task in TASKS:
            out += ["\nLearning-rate selection (holdout score (final dev), seed 0):\n",
                    _selection_markdown(runs, task, selected)]
        table = series_markdown(s, runs[runs["task"] == task], selected, m0)
        if table:
            out += ["\nEvery series at its chosen lr (dev):\n", table]
            best, share = ceiling_ratio(s, selected, task, m0)
            if best is not None:
                out.append(f"\nCeiling ratio (the best init at rank {RANK} by mean final dev {t.main_metric}, every "
                           f"finished seed): `{best}`, {share:.2f} of full fine-tuning's gain over the majority "
                           f"class; the goal of {GOAL:.0%} is {'met' if share >= GOAL else 'not met'}.")
        if task == "rte":
            out.append(_rte_gate(s, selected))
        lora = s[(s["method"] == "lora-fa") & (s["rank"] == RANK)]
        small = summary_table(at_small_lr(lora))
        if not small.empty:
            out += [f"\nThe small-lr half: every init at lr {fmt_lr(SMALL_LR)} (dev):\n",
                    to_markdown(format_table(small).drop(columns=["task", "metric"]))]
        mine = pairs[pairs["task"] == task] if not pairs.empty else pairs
        for part in ("selected", "small lr"):
            p = mine[mine["part"] == part] if not mine.empty else mine
            if not p.empty:
                label = "each init at its chosen lr" if part == "selected" else f"all at lr {fmt_lr(SMALL_LR)}"
                out += [f"\nPaired comparisons, {label}:\n", paired_markdown(p)]
        lora_runs = runs[(runs["task"] == task) & (runs["method"] == "lora-fa") & (runs["rank"] == RANK)]
        for label, sub in (("each init at its chosen lr", at_selected(lora_runs, selected)),
                           (f"all at lr {fmt_lr(SMALL_LR)}", at_small_lr(lora_runs))):
            steps = steps_to_target(sub, baselines, frac, keys=("task", "model", "variant")) if len(sub) else sub
            if len(steps):
                out += [f"\nSteps (and wall minutes) to {frac:.0%} of the way from the majority class to the best "
                        f"init's mean best, {label}:\n", steps_markdown(steps, wall=True)]
        mine = rank_pairs[rank_pairs["task"] == task] if not rank_pairs.empty else rank_pairs
        if not mine.empty:
            out += [f"\nIs rank the limit? Rank {LIMIT_RANK} − rank {RANK} of each init, each at the lr chosen at "
                    f"its rank (Holm over the {rank_tests} tests of this family):\n", paired_markdown(mine)]
    names = [get_task(t).name for t in (TASKS if tasks is None else tasks)]
    if LONG.name in checks and LONG.task in names:
        out.append(long_markdown(checks[LONG.name], runs, summaries, selected,
                                  baselines.get(LONG.task, {}).get(get_task(LONG.task).main_metric, math.nan)))
    if CONFIRM.name in checks and CONFIRM.task in names:
        out.append(confirm_markdown(with_variant(checks[CONFIRM.name][1])))
    shown = summaries if tasks is None else summaries[summaries["task"].isin(names)]
    out += ["\n### Compute (wall time of each finished run, as logged)\n", to_markdown(compute_table(shown))]
    if hours is not None:
        out.append(f"\nRound 2 so far: {hours[0]:.1f} worker-hours, every folder; projected total {hours[1]:.1f} "
                   f"(budget {BUDGET}): each remaining run of the registered plan at the median time so far of its "
                   f"task, method and rank; the {LONG.epochs}-epoch runs at the median of their own finished runs (twice "
                   f"a {EPOCHS[LONG.task]}-epoch run before one has finished); the {CONFIRM.model} runs likewise, once they "
                   "join the plan (after every MiniLM run, as far as the budget allows).")
    return "\n".join(out)
