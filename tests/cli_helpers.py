"""Helpers of the command-line tests: a clean environment, a scrape by sample name."""

from __future__ import annotations

import os
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without PAGEHEAT_* settings (the test runner's own switches stay)."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("PAGEHEAT_") or k.upper() == "PAGEHEAT_REQUIRE_KERNEL"}
    return {**env, **extra}


def scrape(port: int, path: str = "/metrics") -> dict[str, list]:
    """Samples by sample name (pageheat_errors_total, pageheat_build_info, ...)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out
