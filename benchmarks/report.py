"""The benchmark report: ratios to the reference, the JSON document and its markdown twin.

JSON (SPEC.md, "Benchmarks"): top-level date, device, torch, cuda, commit, ceilings, rows; every
row has section, op, shape, dtype, impl, ms, gbps or tflops, pct_of_peak, ratio_to_ref (plus
note, and pass for kernels; img_per_s for train/generate). A row that could not run keeps its
place with ms (and the metrics) null and a note that says why.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import re
import subprocess
from pathlib import Path
from typing import Any, Sequence

import torch

ROW_KEYS = ("section", "op", "shape", "dtype", "impl", "ms", "pct_of_peak", "ratio_to_ref")
SECTIONS = ("kernels", "train", "generate")


def _key(row: dict[str, Any]) -> tuple:
    return (row["section"], row["op"], row.get("pass"), row["shape"], row["dtype"])


def finish_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row with all the keys: ratio_to_ref = ref_ms / ms against the 'ref' row of the same
    section, op, pass, shape and dtype (like for like), null where either side did not run."""
    ref_ms = {_key(r): r.get("ms") for r in rows if r["impl"] == "ref" and r.get("ms")}
    out = []
    for r in rows:
        r = dict(r)
        for k in ROW_KEYS:
            r.setdefault(k, None)
        if "gbps" not in r and "tflops" not in r:
            r["tflops"] = None
        ref = ref_ms.get(_key(r))
        r["ratio_to_ref"] = ref / r["ms"] if ref and r.get("ms") else None
        r.setdefault("note", "")
        bad = [k for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)]
        for k in bad:  # JSON has no inf/nan; say so instead of writing an invalid file
            r[k] = None
        if bad:
            r["note"] = "; ".join(filter(None, [r["note"], f"non-finite {', '.join(bad)}"]))
        out.append(r)
    return out


def git_commit(repo: Path) -> str:
    """Short HEAD hash, with "+dirty" if the tree differs from it (untracked files too);
    "unknown" outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo,
                               capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.machine()} ({torch.get_num_threads()} threads)"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.+]+", "-", text.lower()).strip("-") or "unknown"


def document(rows: Sequence[dict[str, Any]], device: torch.device, ceilings: dict[str, Any],
             commit: str, settings: dict[str, Any], now: _dt.datetime | None = None) -> dict[str, Any]:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return {
        "date": now.strftime("%Y-%m-%d"),
        "time_utc": now.strftime("%H:%M:%S"),
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "commit": commit,
        "ceilings": ceilings,
        "settings": settings,
        "rows": finish_rows(rows),
    }


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        mag = math.floor(math.log10(abs(v)))
        return f"{v:.{max(digits - 1 - mag, 0)}f}" if -3 <= mag < 6 else f"{v:.{digits - 1}e}"
    return str(v)


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def markdown(doc: dict[str, Any]) -> str:
    """The report as markdown: a header list, then one table line per row."""
    c = doc["ceilings"]
    peaks = ", ".join(f"{k} {_fmt(v)}" for k, v in c.get("matmul_tflops", {}).items())
    lines = [
        f"# Benchmarks {doc['date']} on {doc['device']}",
        "",
        f"- torch {doc['torch']}, CUDA {doc['cuda'] or '-'}, commit {doc['commit']}",
        f"- ceilings (measured in this run): copy {_fmt(c.get('copy_gbps'))} GB/s; matmul TFLOP/s: {peaks}",
        "- ms: median per call (kernels), per training step, per generated batch; "
        "ratio_to_ref = ref ms / ms, same dtype and policy",
    ]
    not_run = doc.get("settings", {}).get("not_run")
    if not_run:
        lines.append(f"- stopped by --time-limit: {not_run} tasks not run")
    lines += [
        "",
        "| section | op | pass | shape | dtype | impl | ms | GB/s | TFLOP/s | img/s | % peak | vs ref | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ran, skipped = _split_skipped(doc["rows"])
    for r in ran:
        cells = [r["section"], r["op"], r.get("pass") or "", r["shape"], r["dtype"], r["impl"],
                 _fmt(r.get("ms")), _fmt(r.get("gbps")), _fmt(r.get("tflops")), _fmt(r.get("img_per_s")),
                 _fmt(r.get("pct_of_peak"), 2), _fmt(r.get("ratio_to_ref"), 2), r.get("note") or ""]
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    if skipped:
        # One line per (section, reason) instead of a table row each: on a CPU more than half the
        # quick run's rows would otherwise read "skipped: needs a CUDA device". The JSON keeps them all.
        lines += ["", "Not run (every row is in the JSON):"]
        lines += [f"- {section}: {n} row{'s' if n != 1 else ''} {note}" for (section, note), n in skipped.items()]
    return "\n".join(lines) + "\n"


def _split_skipped(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[tuple[str, str], int]]:
    """(rows that ran, {(section, note): count} of rows skipped with a 'skipped: ...' note)."""
    ran, skipped = [], {}
    for r in rows:
        note = r.get("note") or ""
        if r.get("ms") is None and note.startswith("skipped:"):
            key = (r["section"], note)
            skipped[key] = skipped.get(key, 0) + 1
        else:
            ran.append(r)
    return ran, skipped


def _json_default(v: Any) -> Any:
    if isinstance(v, (torch.dtype, torch.device, Path)):
        return str(v)
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def write(doc: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """<out_dir>/<date>-<device>-<commit>.{json,md}; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{doc['date']}-{slug(doc['device'])}-{slug(doc['commit'])}"
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    jpath.write_text(json.dumps(doc, indent=1, default=_json_default, allow_nan=False) + "\n")
    mpath.write_text(markdown(doc))
    return jpath, mpath
