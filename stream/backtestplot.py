"""Backtest plots: one PNG per product and one HTML page (needs the ``report`` extra).

Each plot: weekly volume with every method's calls (top), and the detector's predicted
ratio exp(trend index) next to the realized ratio of the next 90 days to the last 90
(bottom, on the weekly grid), with the enter thresholds.
"""

from __future__ import annotations

import html
import math
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from stream import backtest as bt
from stream.events import day_of
from stream.trends import signals_at
from stream.windows import ProductState

_MARK = {"rising": ("^", "tab:green"), "falling": ("v", "tab:red"), "stable": ("o", "0.5")}
_ROW = {"trendstream": 1.0, "momentum": 0.9, "rating": 0.8}


def _date(day: int) -> date:
    return date(1970, 1, 1) + timedelta(days=day)


def _full_state(inputs: Any, product_id: str) -> ProductState:
    state = ProductState(product_id, partition=0)
    for s in inputs.scores:
        if s.product_id == product_id:
            state.add((s.review_id, s.content_sha256, s.score if s.is_text_used else None,
                       s.rating), day_of(s.ts_ms))
            state.category = s.category or state.category
    return state


def plot_product(inputs: Any, result: dict[str, Any], product_id: str, path: Path) -> None:
    """The two-panel plot of one product."""
    v, h = inputs.volume, inputs.params.horizon_days
    first, last = v.first_day(product_id), inputs.last_day
    weeks = list(bt.grid(first, last))
    counts = [v.count(product_id, d - 6, d) for d in weeks]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    top.bar([_date(d) for d in weeks], counts, width=6, color="0.75", label="events per week")
    ymax = max([*counts, 1]) * 1.15
    for method, (calls, alerts) in result["runs"].items():
        for c in (c for c in calls if c.product_id == product_id):
            marker, colour = _MARK[c.state]
            top.scatter([_date(c.day)], [ymax * _ROW[method]], marker=marker, color=colour,
                        s=50 if method == "trendstream" else 22, zorder=3)
        for a in (a for a in alerts if a.product_id == product_id):
            top.scatter([_date(a.day)], [ymax * _ROW[method]], marker="x", color="black", s=60)
    top.set_ylim(0, ymax * 1.08)
    top.set_ylabel("events / week")
    rows = ", ".join(result["runs"])
    top.set_title(f"{product_id}: calls (rows: {rows}; ▲ rising, ▼ falling, ● stable, "
                  f"x sharp drop)", fontsize=9)
    state = _full_state(inputs, product_id)
    predicted = [math.exp(signals_at(state, d, inputs.params).trend_index) for d in weeks]
    realized = [(o.after / o.before) if o.is_scored and o.before else math.nan
                for o in (bt.outcome(v, product_id, d, h) for d in weeks)]
    days = [_date(d) for d in weeks]
    bottom.plot(days, predicted, color="tab:blue", label="predicted ratio (detector)")
    bottom.plot(days, realized, color="black", linestyle="--", label="realized next/last 90 d")
    for y in (inputs.params.fall_enter_ratio, inputs.params.rise_enter_ratio):
        bottom.axhline(y, color="0.6", linewidth=0.8, linestyle=":")
    bottom.set_yscale("log")
    bottom.set_ylabel("ratio")
    bottom.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _card_rows(card: dict[str, Any]) -> str:
    rows = []
    for method, m in card["methods"].items():
        cells = [method]
        for state in ("falling", "rising"):
            d = m[state]
            cells += [str(d["calls"]), str(d["precision"]), str(d["recall"]),
                      str(d["median_lead_days"])]
        cells += [str(m["sharp_drop"]["alerts"]), str(m["sharp_drop"]["false_per_product_year"])]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return "\n".join(rows)


def write_report(inputs: Any, result: dict[str, Any], out: Path, *, max_products: int) -> None:
    """PNGs for the products with the most events, and index.html with the scorecard."""
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    ranked = sorted(inputs.volume.days, key=lambda p: (-len(inputs.volume.days[p]), p))
    chosen = ranked[:max_products]
    for pid in chosen:
        plot_product(inputs, result, pid, plots / f"{pid}.png")
    card = {"methods": result["scorecard"]}
    head = ("<tr><th>method</th><th>falling calls</th><th>precision</th><th>recall</th>"
            "<th>median lead d</th><th>rising calls</th><th>precision</th><th>recall</th>"
            "<th>median lead d</th><th>sharp drops</th><th>false / product-year</th></tr>")
    images = "\n".join(f'<h3>{html.escape(p)}</h3><img src="plots/{html.escape(p)}.png">'
                       for p in chosen)
    (out / "index.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>TrendStream backtest"
        f"</title><style>td,th{{padding:2px 8px;border:1px solid #ccc}}</style></head><body>"
        f"<h1>Backtest: {html.escape(str(inputs.path))}</h1><p>model {inputs.model_id}, "
        f"detector {inputs.params.version}, horizon {inputs.params.horizon_days} days; "
        f"definitions in the README (Backtest); plots for the {len(chosen)} products with "
        f"the most events (--plots)</p><table>{head}{_card_rows(card)}</table>"
        f"{images}</body></html>\n")
