"""The status page at `/` of the metrics address: what `offsite status` prints, as one
read-only HTML page that refreshes itself.

Pure rendering: the agent's status (the dict `offsite status --json` prints) in, HTML out.
Every value is escaped; the style is inline; there is no script, no form and nothing fetched
from elsewhere, so the page works offline and `CSP` (sent with it) forbids the rest.
"""
from __future__ import annotations

from html import escape

from .. import __version__
from ..units import format_bytes, format_duration

REFRESH = 10  # seconds between the page's own reloads
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
HEADERS = [("Content-Type", "text/html; charset=utf-8"), ("Content-Security-Policy", CSP),
           ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
           ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY")]
COLOURS = {"idle": "#2e7d32", "syncing": "#1565c0", "waiting": "#6d6d6d", "starting": "#6d6d6d",
           "paused": "#e65100", "error": "#c62828"}
STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d1f23}
header{background:#1d1f23;color:#f4f5f7;padding:.8em 1.4em}
header h1{font-size:1.25em;margin:0 0 .2em}
header p{margin:0;color:#c7cad1}
main{padding:1em 1.4em;max-width:72em}
section.job{background:#fff;border:1px solid #dcdfe4;border-radius:6px;padding:.8em 1.1em;margin:0 0 1em}
h2{font-size:1.15em;margin:0 0 .5em}
h3{font-size:1em;margin:.9em 0 .3em;color:#44474d}
.state{display:inline-block;color:#fff;border-radius:4px;padding:0 .5em;font-size:.9em;margin-left:.4em}
table{border-collapse:collapse}
table+table{margin-top:.6em}
th,td{text-align:left;padding:.15em .9em .15em 0;vertical-align:top}
th{font-weight:600;color:#44474d}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.alert{background:#fdecea;border-left:4px solid #c62828;padding:.35em .7em;margin:.3em 0}
.bad{color:#c62828;font-weight:600}
.ok{color:#2e7d32;font-weight:600}
.muted{color:#6d6d6d}
progress{width:22em;vertical-align:middle}
.bar{display:inline-block;height:.7em;vertical-align:middle}
.in{background:#90a4ae}.out{background:#1565c0}
code{font-size:.95em}
footer{padding:0 1.4em 1.4em;color:#6d6d6d;font-size:.9em}
"""


def e(value: object) -> str:
    """A value as HTML text."""
    return escape(str(value), quote=True)


def when(iso: object) -> str:
    """An ISO time as people read it (the date, then the time)."""
    return e(str(iso).replace("T", " ")) if iso else "never"


def size(n: object) -> str:
    return e(format_bytes(n)) if isinstance(n, (int, float)) else "unknown"


def age(seconds: object) -> str:
    return e(format_duration(seconds)) if isinstance(seconds, (int, float)) else "unknown"


def rows(pairs: list[tuple[str, str]]) -> str:
    """A two-column table; the values are HTML already."""
    return "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def alerts(xs: object) -> str:
    return "".join(f'<div class="alert"><b>ALERT {e(x.get("name", ""))}</b> since {when(x.get("since"))}: '
                   f'{e(x.get("message", ""))}</div>' for x in (xs if isinstance(xs, list) else [])
                   if isinstance(x, dict))


def agent(a: dict | None, agent_alerts: object, written: object) -> str:
    if not a:
        line = "agent running"
    elif a.get("running"):
        line = (f"agent running, pid {e(a.get('pid'))}, since {when(a.get('started'))}, "
                f"memory {size(a.get('rss_bytes') or 0)}")
    else:
        line = "agent not running"
    if a and a.get("state_bytes") is not None:
        line += f", state {size(a['state_bytes'])}"
    as_of = f"as of {when(written)}, " if written else ""
    return (f'<header><h1>offsite status</h1><p>{line}</p><p>{as_of}refreshes every {REFRESH} s; '
            f'offsite {e(__version__)}</p></header>' + alerts(agent_alerts))


def transfer(t: dict) -> str:
    done, total = t.get("done") or 0, t.get("total") or 0
    pct = 100 * done / total if total else 100
    rate = f", {size(t['rate'])}/s" if t.get("rate") else ""
    eta = f", {age(t['eta'])} left" if t.get("eta") is not None else ""
    return (f"<h3>Sending</h3><p>sending <code>{e(t.get('path', ''))}</code>: {size(done)} of {size(total)} "
            f'({pct:.0f}%){rate}{eta}<br><progress max="100" value="{pct:.0f}">{pct:.0f}%</progress></p>')


def restorable(points: list) -> str:
    body = []
    for r in points:
        if not isinstance(r, dict):
            continue
        if r.get("point") and r.get("time") is None:
            point = f"<code>{e(r['point'])}</code> (its time is not known)"
        elif r.get("point"):
            point = (f"<code>{e(r['point'])}</code> of {when(r.get('time'))}, "
                     f"{age(r.get('age_seconds') or 0)} old")
        else:
            point = '<span class="bad">nothing restorable offsite yet</span>'
        notes = []
        if not r.get("base_offsite", True):
            notes.append("its base is not replicated: taken as seeded")
        if r.get("missing"):
            notes.append(f"the newest point at the source waits for {r['missing']}")
        body.append(f"<tr><td>{e(r.get('chain', ''))}</td><td>{point}</td>"
                    f"<td class=\"muted\">{e('; '.join(notes))}</td></tr>")
    if not body:
        return ""
    return ("<h3>Restorable from the offsite copy alone</h3><table><tr><th>volume or definition</th>"
            "<th>newest restorable point</th><th></th></tr>" + "".join(body) + "</table>")


def backlog(b: object) -> str:
    """The backlog and its forecast (present once the agent computes one)."""
    if not isinstance(b, dict):
        return ""
    out = ["<h3>Backlog</h3>"]
    if b.get("forecast"):
        out.append(f"<p>{e(b['forecast'])}</p>")
    pairs = []
    if b.get("pending_bytes") is not None:
        pairs.append(("pending", size(b["pending_bytes"])))
    if b.get("inflow_bytes_per_day") is not None:
        pairs.append(("new backups per day", size(b["inflow_bytes_per_day"])))
    if b.get("outflow_bytes_per_day") is not None:
        pairs.append(("sent per day", size(b["outflow_bytes_per_day"])))
    if "catch_up_seconds" in b:
        c = b["catch_up_seconds"]
        pairs.append(("caught up in", age(c) if c is not None else "not at this rate"))
    if b.get("seeding"):
        pairs.append(("seeding", "yes: the first copy is being sent"))
    out.append(rows(pairs) if pairs else "")
    days = [d for d in b.get("days") or [] if isinstance(d, dict)]
    if days:
        top = max([d.get("inflow_bytes") or 0 for d in days] + [d.get("outflow_bytes") or 0 for d in days]) or 1
        out.append("<table><tr><th>day</th><th>new</th><th>sent</th><th></th></tr>")
        for d in days:
            i, o = d.get("inflow_bytes") or 0, d.get("outflow_bytes") or 0
            bars = "".join(f'<span class="bar {c}" style="width:{12 * v / top:.2f}em"></span><br>'
                           for c, v in (("in", i), ("out", o)) if isinstance(v, (int, float)))
            out.append(f'<tr><td>{e(d.get("date", ""))}</td><td class="n">{size(i)}</td>'
                       f'<td class="n">{size(o)}</td><td>{bars}</td></tr>')
        out.append("</table>")
    return "".join(out)


def last_sync(ls: dict | None) -> str:
    if not ls:
        return "<h3>Last sync</h3><p class=\"muted\">none yet</p>"
    verdict = '<span class="ok">ok</span>' if ls.get("ok") else '<span class="bad">FAILED</span>'
    errors = "".join(f"<li>{'retried after: ' if ls.get('ok') else ''}{e(x)}</li>" for x in ls.get("errors") or [])
    return (f"<h3>Last sync</h3><p>last sync: {when(ls.get('started'))} to {when(ls.get('finished'))}: {verdict}, "
            f"{e(ls.get('files_sent', 0))} sent ({size(ls.get('bytes_sent') or 0)}), "
            f"{e(ls.get('files_deleted', 0))} deleted, {e(ls.get('files_skipped', 0))} skipped</p>"
            + (f"<ul>{errors}</ul>" if errors else ""))


def job(j: dict) -> str:
    state = str(j.get("state", ""))
    colour = COLOURS.get(state, "#6d6d6d")
    pending = f"{e(j.get('pending_files', 0))} file(s), {size(j.get('pending_bytes') or 0)}"
    pairs = [("state", e(state)), ("lag", age(j.get("lag_seconds") or 0)), ("pending", pending)]
    if j.get("failed_files"):
        pairs.append(("failed", f'<span class="bad">{e(j["failed_files"])} file(s)</span>'))
    if j.get("next_window"):
        pairs.append(("next window", when(j["next_window"])))
    pairs.append(("owner ID", e(j.get("owner", "unknown"))))
    bin_ = (f"{size(j['bin_bytes'])} in {e(j.get('bin_files', 0))} file(s)" if j.get("bin_bytes") is not None
            else "not looked at yet")
    pairs.append(("bin", bin_))
    lock = j.get("lock")
    if isinstance(lock, dict):
        pairs.append(("object lock", ("holds" if lock.get("ok") else '<span class="bad">DOES NOT HOLD</span>')
                      + f" (lock canary of {when(lock.get('checked'))})"))
    if j.get("error"):
        pairs.append(("error", f'<span class="bad">{e(j["error"])}</span>'))
    if j.get("held_reason"):
        pairs.append(("held", f"{e(j['held_reason'])}; <code>offsite sync {e(j.get('name', ''))} "
                              f"--allow-deletes</code> applies them"))
    return (f'<section class="job"><h2>{e(j.get("name", ""))}<span class="state" style="background:{colour}">'
            f"{e(state)}</span></h2>" + alerts(j.get("alerts")) + rows(pairs)
            + (transfer(j["transfer"]) if isinstance(j.get("transfer"), dict) else "")
            + restorable(j.get("restorable") or []) + backlog(j.get("backlog"))
            + last_sync(j.get("last_sync")) + "</section>")


def render(status: dict) -> str:
    """The page for one status (`offsite status --json`, or the agent's snapshot of it)."""
    jobs = [j for j in status.get("jobs") or [] if isinstance(j, dict)]
    a = status.get("agent")
    body = "".join(job(j) for j in jobs) or '<p class="muted">no jobs</p>'
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="refresh" content="{REFRESH}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>offsite status</title><style>{STYLE}</style></head><body>"
            + agent(a if isinstance(a, dict) else None,
                    status.get("agent_alerts", (a or {}).get("alerts") if isinstance(a, dict) else None),
                    status.get("written"))
            + f"<main>{body}</main><footer>Read-only: this page changes nothing. Prometheus metrics are at "
            "<code>/metrics</code>.</footer></body></html>\n")
