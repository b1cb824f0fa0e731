"""GET /: the dashboard, ``api_worker/static/dashboard.html``, served as it is.

The page is a static file with no data in it, so it is served without a token (a browser's
page load cannot carry an Authorization header anyway): the page takes the token from the URL
fragment (``/#token=...``, which never reaches any server or log) or a prompt, keeps it in
sessionStorage and sends ``Authorization: Bearer`` on every API call, including the event
stream (read with fetch(), because EventSource cannot send headers). Every byte of data stays
behind the token.

The Content-Security-Policy allows exactly the page's own inline scripts (by sha256, computed
here from the file), inline styles, data: images and connections to this origin: nothing can
be loaded from anywhere else, and injected markup cannot run script.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

DASHBOARD = Path(__file__).with_name("static") / "dashboard.html"
_SCRIPT_RE = re.compile(r"<script>(.*?)</script>", re.DOTALL)


@dataclass(frozen=True)
class Page:
    body: bytes
    csp: str


def _csp(html: str) -> str:
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in _SCRIPT_RE.findall(html))
    return (f"default-src 'none'; script-src {hashes or chr(39) + 'none' + chr(39)}; "
            "style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")


def load(path: Path = DASHBOARD) -> Page | None:
    """The page and its CSP; None when the file is missing (GET / is then a 404)."""
    try:
        body = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    return Page(body, _csp(body.decode()))
