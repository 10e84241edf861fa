"""The dashboard's HTML: the board with its charts (SVG, inline), their text alternatives and
tables, the filters, the alerts and feeds panels; and the sign-in page. Pure functions that
return text; everything that comes from data is escaped.

The page needs no script to be read: filters are a plain form (GET), printing is the
browser's. Its one script (`dashboard.js`, same origin) trades a sign-in link's fragment for a
cookie and adds a print button.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

from services.reporting.dashboard.board import Board
from services.reporting.dashboard.charts import Chart
from services.reporting.dashboard.signals import AlertView, FeedView

__all__ = ["STATIC", "error_page", "page", "signin_page"]

STATIC = "/dashboard/static"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _document(title: str, body: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_e(title)}</title>"
        f'<link rel="stylesheet" href="{STATIC}/dashboard.css">'
        f'<script src="{STATIC}/dashboard.js" defer></script>'
        f"</head><body>{body}</body></html>\n"
    )


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]], caption: str) -> str:
    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            (f'<th scope="row">{_e(cell)}</th>' if i == 0 else f"<td>{_e(cell)}</td>")
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return (
        f'<div class="table-wrap"><table><caption>{_e(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _chart(chart: Chart, svg: str) -> str:
    note = f'<p class="note">{_e(chart.note)}</p>' if chart.note else ""
    return (
        f'<section class="card chart" id="{chart.id}" data-marks="{chart.marks}" '
        f'data-hidden="{chart.hidden}" aria-labelledby="{chart.id}-title">'
        f'<h2 id="{chart.id}-title">{_e(chart.title)}</h2>'
        f'<figure role="img" aria-describedby="{chart.id}-summary">'
        f'<div class="svg">{svg}</div>'
        f'<figcaption id="{chart.id}-summary">{_e(chart.summary)}</figcaption></figure>'
        f"{note}"
        "<details><summary>The table behind this chart</summary>"
        f"{_table(chart.columns, chart.rows, chart.title)}</details></section>"
    )


def _alerts(alerts: Sequence[AlertView] | None) -> str:
    head = '<section class="card panel" id="alerts"><h2>Open alerts</h2>'
    if alerts is None:
        return head + '<p class="empty">Spike alerts are not available yet.</p></section>'
    if not alerts:
        return head + '<p class="empty">No open alerts.</p></section>'
    rows = [
        (
            a.county,
            a.level,
            a.detector,
            str(a.observed),
            "" if a.expected is None else f"{a.expected:.1f}",
            f"{_when(a.window_start)} to {_when(a.window_end)}",
        )
        for a in alerts
    ]
    columns = ("County", "Level", "Detector", "Observed", "Expected", "Window")
    return head + _table(columns, rows, "Open spike alerts") + "</section>"


def _feeds(feeds: Sequence[FeedView] | None) -> str:
    head = '<section class="card panel" id="feeds"><h2>Feed health</h2>'
    if feeds is None:
        return head + '<p class="empty">Feed health is not available yet.</p></section>'
    if not feeds:
        return head + '<p class="empty">No partner feeds yet.</p></section>'
    rows = [(f.partner, f.source_kind, f.status, _when(f.last_message_at), f.detail) for f in feeds]
    columns = ("Partner", "Kind", "Status", "Last message", "Detail")
    return head + _table(columns, rows, "Partner feeds") + "</section>"


def _filters(board: Board, *, may_see_internal: bool) -> str:
    f = board.filters
    options = ['<option value="">All counties</option>'] + [
        f'<option value="{_e(c)}"{" selected" if c == f.county else ""}>{_e(c)}</option>'
        for c in board.counties
    ]
    if f.county is not None and f.county not in board.counties:
        options.append(f'<option value="{_e(f.county)}" selected>{_e(f.county)}</option>')
    internal = ""
    if may_see_internal:
        checked = " checked" if f.view == "internal" else ""
        internal = (
            '<label class="check"><input type="checkbox" name="view" value="internal"'
            f"{checked}> Internal view (exact figures)</label>"
        )
    return (
        '<form class="filters" method="get" action="/dashboard" aria-label="Filters">'
        f'<label>From <input type="date" name="from" value="{f.start.isoformat()}" required>'
        "</label>"
        f'<label>To <input type="date" name="to" value="{f.end.isoformat()}" required></label>'
        f'<label>County <select name="county">{"".join(options)}</select></label>'
        f'{internal}<button type="submit">Show</button></form>'
    )


def page(
    board: Board,
    svgs: Sequence[str],
    *,
    alerts: Sequence[AlertView] | None,
    feeds: Sequence[FeedView] | None,
    may_see_internal: bool,
    signed_in_by_cookie: bool,
) -> str:
    f = board.filters
    where = f.county or "all counties"
    if f.view == "internal":
        banner = (
            '<p class="banner internal" role="note"><strong>INTERNAL FIGURES - NOT FOR '
            "PUBLICATION.</strong> Exact figures for the program's own use; small numbers "
            "are not hidden.</p>"
        )
    else:
        banner = (
            f'<p class="banner" role="note">Published figures: counts from 1 to '
            f"{board.threshold - 1} show as &lt;{board.threshold}, and figures that would "
            "reveal them as *.</p>"
        )
    tiles = "".join(
        f'<div class="tile{" suppressed" if t.suppressed else ""}" data-metric="{t.metric}">'
        f'<span class="value">{_e(t.display)}</span><span class="label">{_e(t.label)}</span>'
        "</div>"
        for t in board.tiles
    )
    signout = ""
    if signed_in_by_cookie:
        signout = (
            '<form method="post" action="/dashboard/signout" class="signout">'
            '<button type="submit">Sign out</button></form>'
        )
    charts = "".join(_chart(c, svg) for c, svg in zip(board.charts, svgs, strict=True))
    body = (
        '<header class="top"><div><p class="brand">PORTline</p>'
        f"<h1>{_e(board.program_id)}: overdose response dashboard</h1>"
        f'<p class="period">Overdoses from {f.start.isoformat()} to {f.end.isoformat()}, '
        f"{_e(where)}. As of {_when(board.as_of)}.</p></div>"
        f'<div class="actions"><button type="button" id="print" hidden>Print</button>'
        f"{signout}</div></header>"
        f"{_filters(board, may_see_internal=may_see_internal)}{banner}"
        f'<main><section class="tiles" aria-label="Headline figures">{tiles}</section>'
        f'<div class="grid">{charts}{_alerts(alerts)}{_feeds(feeds)}</div></main>'
        "<footer><p>Every figure is defined in the reporting guide (docs/reporting.md) and "
        "carries its metric's version in GET /v1/metrics. Dates are incident dates on the "
        "program's clock.</p></footer>"
    )
    return _document(f"PORTline dashboard: {board.program_id}", body)


def signin_page(message: str) -> str:
    body = (
        '<main class="signin"><p class="brand">PORTline</p><h1>Dashboard</h1>'
        f'<p id="signin-status">{_e(message)}</p>'
        "<p>Open the dashboard through your organisation's sign-in, or in development with "
        "the link <code>make run</code> prints.</p></main>"
    )
    return _document("PORTline dashboard: sign in", body)


def error_page(status: int, code: str, message: str) -> str:
    body = (
        f'<main class="signin"><p class="brand">PORTline</p><h1>Dashboard</h1>'
        f'<p class="error" data-code="{_e(code)}">{_e(message)}</p>'
        f'<p><a href="/dashboard">Back to the dashboard</a></p></main>'
    )
    return _document(f"PORTline dashboard: {status}", body)
