"""A container's HTTP healthcheck (docker-compose.yml): healthy when URL answers one of the statuses.

    python scripts/healthcheck.py URL STATUS [STATUS ...]

The request names the first host of ALLOWED_HOSTS, as a client of the deployment would, so a web
server that refuses its own configured name (400) is reported unhealthy rather than passing.
"""
import os
import sys
import urllib.error
import urllib.request


def host_header() -> str | None:
    for host in os.environ.get("ALLOWED_HOSTS", "").split(","):
        host = host.strip().lstrip(".")
        if host and host != "*":
            return host
    return None


def main(url: str, expected: set[int]) -> int:
    request = urllib.request.Request(url)
    if host := host_header():
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        print(f"healthcheck: {url}: {error}")
        return 1
    if status not in expected:
        print(f"healthcheck: {url} answered {status}, expected {sorted(expected)}")
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], {int(s) for s in sys.argv[2:]}))
