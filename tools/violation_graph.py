#!/usr/bin/python3
"""Draws traffic_control.violation_history as a PNG: the "violation graph".

One line per budget of the statements it refused per minute (all three
limits together), and a dashed line of the same colour of those it warned
about. Minutes without a row count as zero.

Connects with psycopg 3 using the PG* environment variables (PGHOST, PGPORT,
PGUSER, PGDATABASE, ...); the user must be a superuser or a member of
pg_read_all_stats. Debian packages: python3-matplotlib, python3-psycopg (run
it with /usr/bin/python3 when `python3` on PATH is another interpreter).

    PGHOST=/tmp PGDATABASE=app /usr/bin/python3 tools/violation_graph.py -o graph.png
"""
import argparse
import datetime
import sys

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import psycopg  # noqa: E402

QUERY = """
SELECT budget, minute,
       blocked_max_concurrent + blocked_per_query_limit + blocked_server_share AS refused,
       warned
  FROM traffic_control.violation_history
 WHERE minute >= now() - make_interval(mins => %s)
 ORDER BY budget, minute
"""


def read_history(minutes):
    with psycopg.connect("") as conn:
        rows = conn.execute(QUERY, (minutes,)).fetchall()
    history = {}
    for budget, minute, refused, warned in rows:
        history.setdefault(budget, {})[minute] = (refused, warned)
    return history


def draw(history, output, title):
    fig, ax = plt.subplots(figsize=(11, 5), dpi=110)
    if history:
        all_minutes = sorted({m for per_budget in history.values() for m in per_budget})
        first, last = all_minutes[0], all_minutes[-1]
        span = int((last - first).total_seconds() // 60) + 1
        minutes = [first + datetime.timedelta(minutes=i) for i in range(span)]
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (budget, per_minute) in enumerate(sorted(history.items())):
            color = colors[i % len(colors)]
            refused = [per_minute.get(m, (0, 0))[0] for m in minutes]
            warned = [per_minute.get(m, (0, 0))[1] for m in minutes]
            marker = "o" if len(minutes) <= 30 else None
            ax.plot(minutes, refused, color=color, linewidth=2, marker=marker,
                    label=f"{budget}: refused")
            if any(warned):
                ax.plot(minutes, warned, color=color, linewidth=1.5, linestyle="--",
                        marker=marker, label=f"{budget}: warned")
        step = max(1, span // 12)  # at most a dozen labelled minutes
        ax.xaxis.set_major_locator(mdates.MinuteLocator(interval=step, tz=first.tzinfo))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=first.tzinfo))
        ax.set_xlim(first - datetime.timedelta(seconds=20), last + datetime.timedelta(seconds=20))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    else:
        ax.text(0.5, 0.5, "no statements recorded", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel("minute")
    ax.set_ylabel("statements per minute")
    ax.set_ylim(bottom=-0.02 * max(ax.get_ylim()[1], 1))  # lines at zero stay visible
    ax.margins(y=0.1)
    ax.grid(True, alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="violation_graph.png",
                        help="PNG file to write (default: %(default)s)")
    parser.add_argument("--minutes", type=int, default=360,
                        help="how far back to draw, at most 360 (default: %(default)s)")
    parser.add_argument("--title", default="traffic_control: refused (solid) and warned "
                        "(dashed) statements per minute")
    args = parser.parse_args()
    history = read_history(args.minutes)
    draw(history, args.output, args.title)
    print(f"wrote {args.output}: {len(history)} budget(s)", file=sys.stderr)


if __name__ == "__main__":
    main()
