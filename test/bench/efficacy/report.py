#!/usr/bin/python3
"""Report of the efficacy benchmark: reads a results directory written by
run.sh (raw/, arms/, run.env) and writes

  degradation_runs.csv, queue_runs.csv   one row per arm and round
  summary.csv, summary.md                one row per arm: medians over rounds
  plots/*.png                            latency, backlog, dead tuples over time

With --docs DIR it writes DIR/efficacy.md and DIR/efficacy/*.png instead: the
same tables and plots with how the numbers were made and how to reproduce
them. Every number in that page comes from the results directory.

Usage: report.py RESULTS [--docs DOCS_DIR]
"""

import csv
import glob
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import arms as armdefs  # noqa: E402

BASELINE = "no-limits"
P99_RATIO_TARGET = 2.0     # critical p99 under the flood, over its unloaded p99
COMPLETED_TARGET = 0.5     # best-effort completed, over what it completes with no limits
BACKLOG_TARGET_PCT = 1.0   # queue backlog, percent of the jobs produced


# ---- reading ------------------------------------------------------------------

def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            key, sep, value = line.rstrip("\n").partition("=")
            if sep:
                env[key] = value
    return env


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def phases(run_dir):
    return {r["phase"]: (float(r["start"]), float(r["end"])) for r in read_csv(os.path.join(run_dir, "phases.csv"))}


def pgbench_log(run_dir, prefix):
    """(end time, latency ms) of every transaction in pgbench's -l files."""
    rows = []
    for path in glob.glob(os.path.join(run_dir, prefix + ".*")):
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) >= 6 and p[2].isdigit():
                    rows.append((int(p[4]) + int(p[5]) / 1e6, int(p[2]) / 1000.0))
    rows.sort()
    return rows


def pct(values, q):
    return float(np.percentile(values, q)) if len(values) else float("nan")


def median(values):
    values = [v for v in values if v == v]  # without NaN
    return statistics.median(values) if values else float("nan")


def spread(values):
    values = [v for v in values if v == v]
    return (min(values), max(values)) if values else (float("nan"), float("nan"))


def rounds_of(results, test, arm):
    return sorted(glob.glob(os.path.join(results, "raw", test, arm, "r*")),
                  key=lambda p: int(os.path.basename(p)[1:]))


def count_outcomes(rows, start, end):
    out = {"completed": 0, "refused": 0, "canceled": 0, "error": 0}
    for r in rows:
        if r["outcome"] in out and start <= float(r["end"]) <= end:
            out[r["outcome"]] += 1
    return out


def others_load(run_dir):
    """What processes other than the benchmark took during a run: percent of
    the machine's CPU, and their mean number of runnable threads."""
    rows = read_csv(os.path.join(run_dir, "cpu.csv"))
    if not rows:
        return {"others_cpu_pct": float("nan"), "others_runnable": float("nan")}
    return {"others_cpu_pct": float(rows[0]["others_pct"]),
            "others_runnable": float(rows[0].get("others_runnable_mean") or "nan")}


def degradation_run(run_dir):
    ph = phases(run_dir)
    alone = [l for _, l in pgbench_log(run_dir, "crit_alone")]
    flood = [l for _, l in pgbench_log(run_dir, "crit_flood")]
    attempts = read_csv(os.path.join(run_dir, "best_effort.csv"))
    if "flood" in ph and "critical_under_flood" in ph:
        counts = count_outcomes(attempts, ph["flood"][0], ph["critical_under_flood"][1])
        window = ph["critical_under_flood"][1] - ph["flood"][0]
    else:
        counts, window = count_outcomes([], 0, 0), float("nan")
    refusals = [r for r in attempts if r["outcome"] == "refused"]
    return {
        "alone_n": len(alone), "alone_p50": pct(alone, 50), "alone_p99": pct(alone, 99),
        "flood_n": len(flood), "flood_p50": pct(flood, 50), "flood_p99": pct(flood, 99),
        "flood_max": max(flood) if flood else float("nan"),
        "p99_ratio": pct(flood, 99) / pct(alone, 99) if alone and flood else float("nan"),
        "be_window_s": window,
        "be_completed": counts["completed"], "be_refused": counts["refused"],
        "be_canceled": counts["canceled"], "be_errors": counts["error"],
        "refusal_example": (refusals[0]["message"] + " " + refusals[0]["detail"]).strip() if refusals else "",
        **others_load(run_dir),
    }


def queue_run(run_dir):
    samples = read_csv(os.path.join(run_dir, "samples.csv"))
    deq = read_csv(os.path.join(run_dir, "dequeues.csv"))
    ph = phases(run_dir)
    lock = [float(r["lock_ms"]) for r in deq]
    age = [float(r["job_age_ms"]) for r in deq]
    produced = int(samples[-1]["produced"]) if samples else 0
    backlog = [int(s["backlog"]) for s in samples]
    dead = [int(s["n_dead_tup"]) for s in samples]
    start, end = ph.get("queue", (0, 1e18))
    attempts = read_csv(os.path.join(run_dir, "analytics.csv"))
    analytics = count_outcomes(attempts, start, end)
    refusals = [r for r in attempts if r["outcome"] == "refused"]
    return {
        "produced": produced, "dequeued": len(deq),
        "backlog_max": max(backlog) if backlog else 0, "backlog_final": backlog[-1] if backlog else 0,
        "backlog_max_pct": 100.0 * max(backlog) / produced if produced else float("nan"),
        "backlog_final_pct": 100.0 * backlog[-1] / produced if produced else float("nan"),
        "dead_max": max(dead) if dead else 0, "dead_final": dead[-1] if dead else 0,
        "lock_p50": pct(lock, 50), "lock_p99": pct(lock, 99), "job_age_p99": pct(age, 99),
        "autovacuums": (int(samples[-1]["autovacuum_count"]) - int(samples[0]["autovacuum_count"])) if samples else 0,
        "xmin_age_max": max(int(s["max_xmin_age"]) for s in samples) if samples else 0,
        "an_completed": analytics["completed"], "an_refused": analytics["refused"],
        "an_canceled": analytics["canceled"], "an_errors": analytics["error"],
        "refusal_example": (refusals[0]["message"] + " " + refusals[0]["detail"]).strip() if refusals else "",
        **others_load(run_dir),
    }


def load_results(results):
    env = read_env(os.path.join(results, "run.env"))
    arms, skipped = [], []
    for path in sorted(glob.glob(os.path.join(results, "arms", "*.status"))):
        name = os.path.basename(path)[:-len(".status")]
        with open(path) as f:
            status, _, reason = f.read().partition("\n")
        conf_path = os.path.join(results, "arms", name + ".json")
        arm = armdefs.load(conf_path) if os.path.exists(conf_path) else {"title": name}
        arm["name"], arm["status"], arm["reason"] = name, status.strip(), reason.strip()
        (arms if arm["status"] == "ran" else skipped).append(arm)
    order = [a["name"] for a in armdefs.all_arms()]
    for group in (arms, skipped):
        group.sort(key=lambda a: order.index(a["name"]) if a["name"] in order else len(order))
    for arm in arms:
        arm["degradation"] = [dict(degradation_run(d), round=int(os.path.basename(d)[1:]))
                              for d in rounds_of(results, "degradation", arm["name"])]
        arm["queue"] = [dict(queue_run(d), round=int(os.path.basename(d)[1:]))
                        for d in rounds_of(results, "queue", arm["name"])]
    return env, arms, skipped


# ---- summarising --------------------------------------------------------------

DEGRADATION_KEYS = ["alone_p50", "alone_p99", "flood_p50", "flood_p99", "p99_ratio",
                    "be_completed", "be_refused", "be_canceled", "be_errors"]
QUEUE_KEYS = ["produced", "backlog_max_pct", "backlog_final_pct", "backlog_max", "dead_max", "lock_p50",
              "lock_p99", "job_age_p99", "autovacuums", "an_completed", "an_refused", "an_canceled"]


def summarise(arms):
    base = next((a for a in arms if a["name"] == BASELINE), None)
    base_completed = median([r["be_completed"] for r in base["degradation"]]) if base else float("nan")
    for arm in arms:
        s = {}
        for key in DEGRADATION_KEYS:
            vals = [r[key] for r in arm["degradation"]]
            s[key], s[key + "_range"] = median(vals), spread(vals)
        for key in QUEUE_KEYS:
            vals = [r[key] for r in arm["queue"]]
            s["q_" + key], s["q_" + key + "_range"] = median(vals), spread(vals)
        s["completed_ratio"] = (s["be_completed"] / base_completed
                                if base_completed and base_completed == base_completed else float("nan"))
        s["meets_degradation"] = (s["p99_ratio"] <= P99_RATIO_TARGET and s["completed_ratio"] >= COMPLETED_TARGET)
        s["meets_queue"] = s["q_backlog_max_pct"] <= BACKLOG_TARGET_PCT
        arm["summary"] = s
    return base_completed


# ---- formatting -----------------------------------------------------------------

def fmt(v, digits=1):
    if v is None or v != v:
        return "–"
    if digits == 0 or isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return "{:,.0f}".format(v)
    return "%.*f" % (digits, v)


def fmt_range(rng, digits=1):
    lo, hi = rng
    return fmt(lo, digits) if lo == hi else "%s–%s" % (fmt(lo, digits), fmt(hi, digits))


def yes_no(flag):
    return "yes" if flag else "**no**"


def degradation_table(arms, rounds):
    many = rounds > 1
    head = ["arm", "critical p50 / p99 alone (ms)", "critical p50 / p99 under flood (ms)",
            "p99 ÷ alone p99", "best-effort completed / refused / canceled", "completed ÷ no limits",
            "meets target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        s = a["summary"]
        flood = "%s / %s" % (fmt(s["flood_p50"]), fmt(s["flood_p99"]))
        ratio = fmt(s["p99_ratio"], 2)
        if many:
            flood += " (p99 %s)" % fmt_range(s["flood_p99_range"])
            ratio += " (%s)" % fmt_range(s["p99_ratio_range"], 2)
        done = "%s / %s / %s" % (fmt(s["be_completed"], 0), fmt(s["be_refused"], 0), fmt(s["be_canceled"], 0))
        if many:
            done += " (done %s)" % fmt_range(s["be_completed_range"], 0)
        lines.append("| " + " | ".join([
            a["title"], "%s / %s" % (fmt(s["alone_p50"], 2), fmt(s["alone_p99"], 2)), flood, ratio, done,
            fmt(s["completed_ratio"], 2), yes_no(s["meets_degradation"])]) + " |")
    return "\n".join(lines)


def queue_table(arms, rounds):
    many = rounds > 1
    head = ["arm", "jobs produced", "backlog max / final (% of produced)", "max dead tuples",
            "dequeue p50 / p99 (ms)", "job age p99 (ms)", "autovacuums", "analytics completed / refused / canceled",
            "backlog ≤ 1 %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        s = a["summary"]
        backlog = "%s / %s" % (fmt(s["q_backlog_max_pct"], 1), fmt(s["q_backlog_final_pct"], 1))
        dead = fmt(s["q_dead_max"], 0)
        lock = "%s / %s" % (fmt(s["q_lock_p50"], 1), fmt(s["q_lock_p99"], 1))
        if many:
            backlog += " (max %s)" % fmt_range(s["q_backlog_max_pct_range"], 1)
            dead += " (%s)" % fmt_range(s["q_dead_max_range"], 0)
            lock += " (p99 %s)" % fmt_range(s["q_lock_p99_range"], 1)
        lines.append("| " + " | ".join([
            a["title"], fmt(s["q_produced"], 0), backlog, dead, lock, fmt(s["q_job_age_p99"], 0),
            fmt(s["q_autovacuums"], 0),
            "%s / %s / %s" % (fmt(s["q_an_completed"], 0), fmt(s["q_an_refused"], 0), fmt(s["q_an_canceled"], 0)),
            yes_no(s["meets_queue"])]) + " |")
    return "\n".join(lines)


def skipped_lines(skipped):
    return ["- **%s** (`%s`) — %s: %s" % (a.get("title", a["name"]), a["name"], a["status"], a["reason"])
            for a in skipped]


def notes_lines(arms):
    out = []
    for a in arms:
        if a["reason"]:
            out.append("- %s: the server logged: %s" % (a["title"], "; ".join(a["reason"].splitlines())))
    return out


def observations(arms, base_completed):
    """Sentences that follow from the numbers (no number is typed by hand)."""
    out = []
    base = next((a for a in arms if a["name"] == BASELINE), None)
    if base:
        s = base["summary"]
        out.append("With no limits the flood raises critical p99 from %s ms to %s ms (%s×) and best-effort "
                   "completes %s statements per run." % (fmt(s["alone_p99"], 2), fmt(s["flood_p99"]),
                                                       fmt(s["p99_ratio"], 1), fmt(s["be_completed"], 0)))
    for a in arms:
        s = a["summary"]
        if a is base:
            continue
        if s["be_completed"] == 0 and s["be_refused"] > 0:
            example = next((r["refusal_example"] for r in a["degradation"] if r["refusal_example"]), "")
            out.append("%s starves best-effort: 0 completed, %s refused per run%s." % (
                a["title"], fmt(s["be_refused"], 0), (" (`%s`)" % example) if example else ""))
        elif s["be_completed"] == 0 and s["be_canceled"] > 0:
            out.append("%s starves best-effort: every statement is canceled (%s per run), none completes." % (
                a["title"], fmt(s["be_canceled"], 0)))
        if s["meets_degradation"]:
            out.append("%s meets the graceful-degradation target (p99 %s× the unloaded p99, best-effort %s× "
                       "of no limits)." % (a["title"], fmt(s["p99_ratio"], 2), fmt(s["completed_ratio"], 2)))
    healthy = [a["title"] for a in arms if a["summary"]["meets_queue"]]
    growing = ["%s (%s %%)" % (a["title"], fmt(a["summary"]["q_backlog_max_pct"], 1))
               for a in arms if not a["summary"]["meets_queue"]]
    if arms and arms[0]["queue"]:
        out.append("Queue health: backlog at most 1 %% of the jobs produced with %s; more with %s." % (
            ", ".join(healthy) or "no arm", ", ".join(growing) or "no arm"))
    for a in arms:
        s = a["summary"]
        if s["q_an_completed"] == 0 and s["q_an_refused"] > 0:
            example = next((r["refusal_example"] for r in a["queue"] if r["refusal_example"]), "")
            out.append("Queue health, %s: the long analytics never completed (%s refusals per run%s)." % (
                a["title"], fmt(s["q_an_refused"], 0), (", `%s`" % example) if example else ""))
    return ["- " + o for o in out]


# ---- plots --------------------------------------------------------------------------

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
STYLES = ["-", "--", ":", "-."]


def log_ticks(axis):
    """Ticks at 1, 2, 5 × 10^n on a log axis, labelled as plain numbers."""
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: "%g" % v))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def binned(points, t0, width, fn):
    """(bin start, fn(values)) per `width`-second bin of (t, value) points."""
    bins = {}
    for t, v in points:
        bins.setdefault(int((t - t0) // width), []).append(v)
    keys = sorted(bins)
    return [k * width for k in keys], [fn(bins[k]) for k in keys]


def plot_degradation(results, arms, path):
    n = len(arms)
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 2.6 * rows), sharex=True, sharey=True, squeeze=False)
    for i, arm in enumerate(arms):
        ax = axes[i // cols][i % cols]
        for j, run_dir in enumerate(rounds_of(results, "degradation", arm["name"])):
            ph = phases(run_dir)
            if "alone" not in ph or "flood" not in ph:
                continue
            t0 = ph["flood"][0]
            style = STYLES[j % 4]
            for k, prefix in enumerate(("crit_alone", "crit_flood")):
                pts = pgbench_log(run_dir, prefix)
                x, p99 = binned(pts, t0, 1.0, lambda v: pct(v, 99))
                ax.plot(x, p99, style, color=COLORS[0], lw=1,
                        label="p99 per second, round %d" % (j + 1) if k == 0 else None)
                x, p50 = binned(pts, t0, 1.0, lambda v: pct(v, 50))
                ax.plot(x, p50, style, color=COLORS[2], lw=0.8, label="p50, round %d" % (j + 1) if k == 0 else None)
            if j == 0 and "critical_under_flood" in ph:
                ax.axvspan(0, ph["critical_under_flood"][1] - t0, color="0.9", zorder=0)
        ax.set_yscale("log")
        log_ticks(ax.yaxis)
        ax.set_title(arm["title"], fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        if i % cols == 0:
            ax.set_ylabel("critical latency (ms)")
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds from the start of the flood (shaded)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("Critical primary-key lookups (200/s): alone, then under the best-effort flood", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_degradation_summary(arms, path):
    names = [a["title"] for a in arms][::-1]
    ratio = [a["summary"]["p99_ratio"] for a in arms][::-1]
    done = [a["summary"]["completed_ratio"] for a in arms][::-1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.45 * len(arms) + 1.6), sharey=True)
    y = np.arange(len(names))
    ax1.barh(y, [r if r == r else 0 for r in ratio], color=COLORS[0])
    ax1.axvline(P99_RATIO_TARGET, color="k", ls="--", lw=1)
    ax1.set_xscale("log")
    log_ticks(ax1.xaxis)
    ax1.set_yticks(y)
    ax1.set_yticklabels(names, fontsize=8)
    ax1.set_xlabel("critical p99 under flood ÷ p99 alone (target ≤ %g, dashed)" % P99_RATIO_TARGET)
    ax2.barh(y, [d if d == d else 0 for d in done], color=COLORS[1])
    ax2.axvline(COMPLETED_TARGET, color="k", ls="--", lw=1)
    for yi, d in zip(y, done):
        if d == 0:
            ax2.text(0.01, yi, "0: starved", va="center", fontsize=8)
    ax2.set_xlabel("best-effort completed ÷ no limits (target ≥ %g, dashed)" % COMPLETED_TARGET)
    for ax in (ax1, ax2):
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("Graceful degradation: medians over rounds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_queue(results, arms, path):
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for i, arm in enumerate(arms):
        color = COLORS[i % len(COLORS)]
        for j, run_dir in enumerate(rounds_of(results, "queue", arm["name"])):
            samples = read_csv(os.path.join(run_dir, "samples.csv"))
            ph = phases(run_dir)
            if not samples or "queue" not in ph:
                continue
            t0 = ph["queue"][0]
            label = arm["title"] if j == 0 else None
            t = [float(s["t"]) - t0 for s in samples]
            axes[0].plot(t, [int(s["backlog"]) for s in samples], STYLES[j % 4], color=color, lw=1.2, label=label)
            axes[1].plot(t, [int(s["n_dead_tup"]) for s in samples], STYLES[j % 4], color=color, lw=1.2)
            deq = [(float(r["start"]), float(r["lock_ms"])) for r in read_csv(os.path.join(run_dir, "dequeues.csv"))]
            x, p99 = binned(deq, t0, 2.0, lambda v: pct(v, 99))
            axes[2].plot(x, p99, STYLES[j % 4], color=color, lw=1.2)
    axes[0].set_ylabel("backlog (jobs not done)")
    axes[1].set_ylabel("dead tuples (jobs)")
    axes[2].set_ylabel("dequeue p99 per 2 s (ms)")
    axes[2].set_yscale("log")
    log_ticks(axes[2].yaxis)
    axes[2].set_xlabel("seconds (solid: round 1, dashed: round 2)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Queue health: producer at a fixed rate, SKIP LOCKED workers, long analytics", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_plots(results, arms, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    plot_degradation(results, arms, os.path.join(out_dir, "degradation_latency.png"))
    plot_degradation_summary(arms, os.path.join(out_dir, "degradation_summary.png"))
    plot_queue(results, arms, os.path.join(out_dir, "queue_health.png"))


# ---- noise ----------------------------------------------------------------------------

def machine_noise(results):
    rows = read_csv(os.path.join(results, "raw", "machine.csv"))
    if len(rows) < 2:
        return {}
    load = [float(r["load1"]) for r in rows]
    keys = ["cpu_user", "cpu_nice", "cpu_system", "cpu_idle", "cpu_iowait", "cpu_steal"]
    first, last = rows[0], rows[-1]
    delta = {k: int(last[k]) - int(first[k]) for k in keys}
    total = sum(delta.values()) or 1
    return {"load_mean": statistics.mean(load), "load_max": max(load), "load_min": min(load),
            "busy_pct": 100.0 * (total - delta["cpu_idle"] - delta["cpu_iowait"]) / total,
            "steal_pct": 100.0 * delta["cpu_steal"] / total}


def noise_lines(arms, env, results):
    out = []
    alone = [r["alone_p99"] for a in arms for r in a["degradation"]]
    if alone:
        out.append("- Critical p99 *alone* (the same load in every arm, so its spread is the machine's): "
                   "%s–%s ms over %d arm-rounds, median %s ms." % (fmt(min(alone), 2), fmt(max(alone), 2),
                                                                  len(alone), fmt(median(alone), 2)))
    rounds = int(env.get("rounds", "1"))
    if rounds > 1:
        worst = []
        for a in arms:
            s = a["summary"]
            for key, label in (("flood_p99", "critical p99 under flood"), ("be_completed", "best-effort completed")):
                lo, hi = s[key + "_range"]
                mid = s[key]
                if mid and mid == mid:
                    worst.append(((hi - lo) / mid, a["title"], label, lo, hi))
        worst.sort(reverse=True)
        for rel, title, label, lo, hi in worst[:3]:
            out.append("- Largest spread between rounds: %s, %s %s–%s (±%.0f%% of the median)." % (
                title, label, fmt(lo), fmt(hi), 50 * rel))
    others = [(r["others_cpu_pct"], r["others_runnable"], a["title"], test, r["round"])
              for a in arms for test in ("degradation", "queue") for r in a[test]
              if r["others_cpu_pct"] == r["others_cpu_pct"]]
    if others:
        out.append("- Other processes on the machine (everything but this benchmark's servers, PgBouncer, load "
                   "generators and pgbench, which are accounted apart) took %s–%s %% of all CPUs during the "
                   "arm-runs (median %s %%), with %s–%s of their threads runnable on average (median %s) on %s "
                   "CPUs. The CPU they took grows when an arm leaves some idle; their runnable threads are "
                   "their demand. Per arm-run (`others_cpu_pct`, `others_runnable` in the runs CSVs):" % (
                       fmt(spread([o[0] for o in others])[0], 0), fmt(spread([o[0] for o in others])[1], 0),
                       fmt(median([o[0] for o in others]), 0), fmt(spread([o[1] for o in others])[0], 1),
                       fmt(spread([o[1] for o in others])[1], 1), fmt(median([o[1] for o in others]), 1),
                       env.get("cpus", "?")))
        rounds = sorted({o[4] for o in others})
        out += ["", "| arm | " + " | ".join("degradation r%d" % r for r in rounds) + " | " +
                " | ".join("queue r%d" % r for r in rounds) + " |", "|---|" + "---|" * (2 * len(rounds))]
        for a in arms:
            cells = []
            for test in ("degradation", "queue"):
                by_round = {r["round"]: r for r in a[test]}
                cells += ["%s %% · %s" % (fmt(by_round[r]["others_cpu_pct"], 0), fmt(by_round[r]["others_runnable"], 1))
                          if r in by_round else "–" for r in rounds]
            out.append("| %s | %s |" % (a["title"], " | ".join(cells)))
        out += ["", "(each cell: others' share of the CPUs · their mean runnable threads)", ""]
    m = machine_noise(results)
    if m:
        out.append("- Machine: load average %s (min %s, max %s) during the run; all CPUs %s%% busy "
                   "(benchmark and everything else on the machine), steal %s%%." % (
                       fmt(m["load_mean"]), fmt(m["load_min"]), fmt(m["load_max"]), fmt(m["busy_pct"], 0),
                       fmt(m["steal_pct"], 1)))
    return out


# ---- output -----------------------------------------------------------------------------

def write_run_csvs(results, arms):
    for test in ("degradation", "queue"):
        rows = [dict(r, arm=a["name"]) for a in arms for r in a[test]]
        if not rows:
            continue
        fields = ["arm", "round"] + [k for k in rows[0] if k not in ("arm", "round")]
        with open(os.path.join(results, "%s_runs.csv" % test), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    with open(os.path.join(results, "summary.csv"), "w", newline="") as f:
        fields = ["arm"] + [k for k in arms[0]["summary"] if not k.endswith("_range")]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for a in arms:
            w.writerow(dict({k: v for k, v in a["summary"].items() if not k.endswith("_range")}, arm=a["name"]))


def parameters_lines(env):
    return [
        "- Graceful degradation, per arm and round: critical alone for %s s, then the best-effort flood starts "
        "and %s s later critical runs again for %s s; best-effort is counted from the start of the flood to the "
        "end of the critical phase." % (env.get("alone_s"), env.get("ramp_s"), env.get("flood_s")),
        "- Critical: pgbench `-R %s -c %s -M prepared -l`, a primary-key lookup on `pgbench_accounts` (scale %s) "
        "tagged `/*priority='critical'*/`, as the superuser; latency from the scheduled start (includes "
        "schedule lag)." % (env.get("critical_rate"), env.get("critical_clients"), env.get("scale")),
        "- Best-effort: %s persistent connections of the role `analytics`, each looping a CPU-heavy "
        "`count(*)` over `pgbench_accounts` (parallel plans allowed, 2 workers planned); SQLSTATE 53000 is retried "
        "after the HINT's `retry after N ms`, else after 200 ms." % env.get("flood_connections"),
        "- Queue health, per arm and round: %s s; producer pgbench `-R %s` inserting jobs; %s workers "
        "(`SELECT ... ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED`, %s ms of work holding the row, `DELETE`, "
        "`COMMIT`; the dequeue latency is the `SELECT`); %s analytics connections starting %s s apart, each "
        "looping an 8-pass `count(*)` over `pgbench_accounts`; a sample every 2 s of the backlog (`count(*)` of "
        "jobs), `n_dead_tup`, autovacuum runs. Autovacuum on (`autovacuum_naptime = 5s`, the jobs table "
        "vacuumed after 500 dead rows, no cost delay)." % (
            env.get("queue_s"), env.get("producer_rate"), env.get("workers"), env.get("work_ms"),
            env.get("analytics_connections"), env.get("analytics_stagger_s")),
        "- %s round(s), the arms' order rotating; medians over rounds, the range in parentheses." % env.get("rounds"),
        "- Machine: %s CPUs (%s), kernel %s, %s, %s; commit %s; started %s, %s s." % (
            env.get("cpus"), env.get("cpu_model"), env.get("kernel"), env.get("postgres"), env.get("pgbouncer"),
            env.get("commit"), env.get("started"), env.get("elapsed_s")),
    ]


def summary_md(results, env, arms, skipped, base_completed, image_dir):
    rounds = int(env.get("rounds", "1"))
    lines = ["# Efficacy benchmark: %s run" % env.get("mode", "?"), ""]
    lines += parameters_lines(env) + [""]
    if skipped:
        lines += ["Arms not run:", ""] + skipped_lines(skipped) + [""]
    lines += ["## Graceful degradation", "", degradation_table(arms, rounds), "",
              "![critical latency over time](%s/degradation_latency.png)" % image_dir, "",
              "![summary](%s/degradation_summary.png)" % image_dir, "",
              "## Queue health", "", queue_table(arms, rounds), "",
              "![backlog, dead tuples, dequeue latency](%s/queue_health.png)" % image_dir, "",
              "## Observations", ""] + observations(arms, base_completed) + ["", "## Noise", ""] + \
        noise_lines(arms, env, results)
    notes = notes_lines(arms)
    if notes:
        lines += ["", "## Server warnings", ""] + notes
    return "\n".join(lines) + "\n"


def arm_config_lines(arms, skipped):
    sources = {a["name"]: a["file"] for a in armdefs.all_arms()}
    out = []
    for a in arms + skipped:
        status = "" if a["status"] == "ran" else " — *%s in this run: %s*" % (a["status"], a["reason"])
        out.append("- **%s** (`test/bench/efficacy/%s`)%s: %s" % (
            a["title"], sources.get(a["name"], "arms/%s.json" % a["name"]), status, a.get("about", "")))
        if "traffic_control" in a:
            settings = armdefs.tc_settings(a)
            out.append("  `traffic_control.budgets = '%s'`, `traffic_control.rules = '%s'`" % (
                settings["traffic_control.budgets"], settings["traffic_control.rules"]))
        for stmt in armdefs.sql_statements(a):
            if stmt.startswith("ALTER ROLE"):
                out.append("  `%s`" % stmt)
        if "pgbouncer" in a:
            out.append("  PgBouncer: `%s`" % ", ".join("%s = %s" % kv for kv in a["pgbouncer"].items()))
        for key, value in a.get("server_settings", {}).items():
            out.append("  `%s = %s`" % (key, value))
    return out


def docs_md(results, env, arms, skipped, base_completed):
    rounds = int(env.get("rounds", "1"))
    lines = [
        "# Efficacy: does a budget keep critical traffic fast under overload?",
        "",
        "<!-- Written by test/bench/efficacy/report.py from a run of test/bench/efficacy/run.sh;",
        "     do not edit by hand: rerun the benchmark. -->",
        "",
        "Two tests from the design's performance targets, run side by side against the",
        "other ways a DBA can rein in analytics: no limit at all, `statement_timeout` for the",
        "analytics role, and a PgBouncer pool cap for it. Every arm is its own cluster, a copy",
        "of one template with the same data; the arms take turns, in an order that rotates",
        "from round to round, so they see the same machine.",
        "",
        "- **Graceful degradation**: critical primary-key lookups at a fixed rate while",
        "  best-effort analytics floods the server from persistent connections that retry on",
        "  SQLSTATE 53000. Target with a budget a DBA would write for best-effort: critical p99",
        "  within %g× its unloaded p99, and best-effort completes at least %g× what it completes" % (
            P99_RATIO_TARGET, COMPLETED_TARGET),
        "  with no limits (no starvation).",
        "- **Queue health** (PlanetScale's published test, scaled to 2 cores): a producer at",
        "  a fixed rate, `FOR UPDATE SKIP LOCKED` workers, overlapping long analytics queries",
        "  that hold the xmin horizon back. Target with budgets: backlog ≤ %g %% of the jobs" % BACKLOG_TARGET_PCT,
        "  produced and dead tuples bounded. PlanetScale's figures (15 minutes, 800 jobs/s,",
        "  8 workers, three 120-second analytics queries at a time): without budgets a",
        "  155,000-job backlog, 383,000 dead tuples and lock times over 300 ms; with analytics",
        "  limited to 1 concurrent, no backlog and 2 ms. Reference only: their machine, not this one.",
        "",
        "## How it was run",
        "",
    ] + parameters_lines(env) + [
        "",
        "Arms (one JSON file each; an arm whose configuration the server rejects is skipped and",
        "listed here):",
        "",
    ] + arm_config_lines(arms, skipped) + [
        "",
        "## Graceful degradation",
        "",
        "Medians over rounds (range over rounds in parentheses); best-effort counts are per",
        "arm-run. \"Meets target\": p99 ratio ≤ %g and completed ÷ no limits ≥ %g." % (
            P99_RATIO_TARGET, COMPLETED_TARGET),
        "",
        degradation_table(arms, rounds),
        "",
        "![critical latency per second, per arm](efficacy/degradation_latency.png)",
        "",
        "![p99 ratio and best-effort work, per arm](efficacy/degradation_summary.png)",
        "",
        "## Queue health",
        "",
        "Backlog as a percentage of the jobs produced in the arm-run; dequeue latency is the",
        "`SELECT ... FOR UPDATE SKIP LOCKED` as the workers measure it; job age is from insert",
        "to dequeue.",
        "",
        queue_table(arms, rounds),
        "",
        "![backlog, dead tuples and dequeue latency over time](efficacy/queue_health.png)",
        "",
        "## What the numbers say",
        "",
    ] + observations(arms, base_completed) + [
        "",
        "## Noise",
        "",
        "The VM is shared and noisy (identical rounds differ by ±10 % or more), which is why",
        "arms are interleaved and compared by medians. In this run:",
        "",
    ] + noise_lines(arms, env, results)
    notes = notes_lines(arms)
    if notes:
        lines += ["", "Server warnings while the arms were configured:", ""] + notes
    lines += [
        "",
        "## Priority inversion",
        "",
        "The critical traffic above only reads. Whether a lowered `cpu_priority` slows critical",
        "*writes*, which can wait for row, buffer and WAL locks that a low-priority backend",
        "holds, is measured separately: [efficacy-inversion.md](efficacy-inversion.md)",
        "(`test/bench/efficacy/inversion.sh`).",
        "",
        "## Reproduce",
        "",
        "```sh",
        "test/bench/efficacy/run.sh            # full run (2 rounds), writes this page and docs/efficacy/*.png",
        "test/bench/efficacy/run.sh --quick    # smoke test, about 3 minutes; results only",
        "test/bench/efficacy/run.sh --arms no-limits,tc-max-concurrent-1 --rounds 3 --no-docs",
        "```",
        "",
        "As root on Debian 12 with 2 CPUs: it installs what is missing (pgbouncer, psycopg,",
        "matplotlib), builds and installs the extension into the PostgreSQL `pg_config` names,",
        "starts every server as the `postgres` OS user (with `CAP_SYS_NICE`, as `cpu_priority`",
        "needs) and stops them at the end. Raw data (pgbench logs, every best-effort attempt,",
        "every dequeue, the samples) and per-run CSVs stay in `build/efficacy/<time>/`;",
        "`report.py RESULTS --docs docs` rewrites this page from them. To add or change an arm,",
        "edit or add a JSON file in `test/bench/efficacy/arms/` (its keys are described in",
        "`arms.py`).",
        "",
    ]
    return "\n".join(lines)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    results = os.path.abspath(sys.argv[1])
    env, arms, skipped = load_results(results)
    if not arms:
        sys.exit("no arm ran in %s" % results)
    base_completed = summarise(arms)
    if len(sys.argv) >= 4 and sys.argv[2] == "--docs":
        docs = os.path.abspath(sys.argv[3])
        make_plots(results, arms, os.path.join(docs, "efficacy"))
        with open(os.path.join(docs, "efficacy.md"), "w") as f:
            f.write(docs_md(results, env, arms, skipped, base_completed))
        return
    write_run_csvs(results, arms)
    make_plots(results, arms, os.path.join(results, "plots"))
    text = summary_md(results, env, arms, skipped, base_completed, "plots")
    with open(os.path.join(results, "summary.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
