"""Where every benchmark writes its results.

A full run writes `<prefix>_<date>.json` and `<prefix>_latest.md`; a quick (smoke) run
writes `<prefix>_<date>_quick.json` and `<prefix>_quick.md`, so it never replaces a full
run's files. A full run's JSON never replaces an earlier one of the same day either: the
later run's name adds the time of day (`_HHMM`, then `_HHMM_2`, ...). The Markdown table
is the latest run's by design. Each file is written to a temporary name and renamed, so
a run killed while writing leaves the previous file whole.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any


def _write_atomically(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _json_path(out_dir: str, prefix: str, date: str, quick: bool, now: dt.datetime) -> str:
    if quick:
        return os.path.join(out_dir, f"{prefix}_{date}_quick.json")
    path = os.path.join(out_dir, f"{prefix}_{date}.json")
    stem = os.path.join(out_dir, f"{prefix}_{date}_{now:%H%M}")
    n = 1
    while os.path.exists(path):
        path = stem + (f"_{n}" if n > 1 else "") + ".json"
        n += 1
    return path


def write_results(
    report: dict[str, Any],
    table: str,
    out_dir: str,
    prefix: str,
    *,
    quick: bool = False,
    now: dt.datetime | None = None,
) -> tuple[str, str]:
    """Writes `report` as JSON and `table` as Markdown under `out_dir`; returns both
    paths. The date is `report["date"]` where it has one, else today's."""
    now = now or dt.datetime.now()
    date = str(report.get("date") or now.date().isoformat())
    os.makedirs(out_dir, exist_ok=True)
    json_path = _json_path(out_dir, prefix, date, quick, now)
    md_path = os.path.join(out_dir, f"{prefix}_{'quick' if quick else 'latest'}.md")
    _write_atomically(json_path, json.dumps(report, indent=2) + "\n")
    _write_atomically(md_path, table if table.endswith("\n") else table + "\n")
    return json_path, md_path
