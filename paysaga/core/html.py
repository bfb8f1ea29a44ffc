"""Self-contained HTML pages: one file a person opens in a browser, offline, that loads nothing.

The pages show records (details, reasons, payment ids) that we did not write ourselves. Each piece
is escaped where it is placed; the Content-Security-Policy is the second line: the page may run
only its own script, named by its hash, and fetch nothing at all, so a record that slipped past
the escaping can neither run code nor call out.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape

__all__ = ["STYLE", "escape", "page", "script_hash"]

# Light and plain, the system's fonts; the status classes (ok, bad, warn) colour a verdict or a cell.
STYLE = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #1f2328; background: #fff; margin: 2rem auto; max-width: 78rem; padding: 0 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 .5rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .6rem; border-bottom: 1px solid #d0d7de; padding-bottom: .25rem; }
code, .mono, td.id { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; }
.muted { color: #59636e; }
.verdict { display: inline-block; font-size: 2rem; font-weight: 700; letter-spacing: .04em;
  padding: .3rem 1rem; border-radius: .4rem; color: #fff; }
.ok { background: #1a7f37; } .bad { background: #cf222e; } .warn { background: #bf8700; }
span.ok, span.bad, span.warn { color: #fff; padding: 0 .4rem; border-radius: .25rem; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: .8rem 0; }
dl.facts dt { color: #59636e; } dl.facts dd { margin: 0; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .92rem; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #d8dee4; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; position: sticky; top: 0; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fbfcfd; }
svg { display: block; max-width: 100%; height: auto; margin: .5rem 0 1rem; }
svg text { font: 12px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: #1f2328; }
svg .axis { stroke: #8c959f; } svg .grid { stroke: #eaeef2; }
select { font: inherit; padding: .15rem .3rem; }
[hidden] { display: none !important; }
"""


def script_hash(script: str) -> str:
    """The CSP source that lets exactly this script text run (the browser hashes the element's text)."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


def page(title: str, body: str, script: str = "") -> str:
    """A complete HTML5 document. title is text (escaped here); body is HTML the caller escaped;
    script is the page's one inline script, our own code and never data, run at the end of the body."""
    if "</script" in script.lower():
        raise ValueError("a page's script may not contain '</script': it would end the element early")
    scripts = script_hash(script) if script else "'none'"
    policy = "; ".join(
        (
            "default-src 'none'",
            "style-src 'unsafe-inline'",
            f"script-src {scripts}",
            "base-uri 'none'",
            "form-action 'none'",
        )
    )
    # Fixed words and base64 only (no double quotes, no angle brackets): safe in the attribute as it is.
    assert '"' not in policy and "<" not in policy
    tail = f"<script>{script}</script>\n" if script else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n{tail}</body>\n</html>\n"
    )
