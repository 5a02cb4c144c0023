"""The image's HEALTHCHECK: exit 0 when GET <url> answers 200, else 1 (the runtime images have no curl).

    python docker/healthcheck.py http://127.0.0.1:80/health
"""
from __future__ import annotations

import sys
import urllib.error
import urllib.request


def healthy(url: str, *, timeout_s: float = 5.0) -> bool:
    """True when the server answers GET url with 200 within timeout_s seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        # Refused, timed out, or an HTTP error status (HTTPError is a URLError): not healthy.
        return False


def main(argv: list[str]) -> int:
    assert len(argv) == 1, f"usage: healthcheck.py URL, got arguments {argv}"
    return 0 if healthy(argv[0]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
