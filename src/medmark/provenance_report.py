"""The report's provenance page (README: "Auditing results/"): for each table, the commit,
config hash and code of the job that wrote it and the manifest entry of each of its inputs,
then the summary of an audit of the tree (:mod:`medmark.audit`)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from medmark.audit import Audit
from medmark.io import write_text_atomic
from medmark.provenance import PROVENANCE_DIR, sha256_tree

FINDINGS_SHOWN = 20


def output_records(results: Path, workdir: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """Output path -> (record path, record) over every readable record of ``results``."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for path in sorted((results / PROVENANCE_DIR).rglob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        rel = path.relative_to(workdir).as_posix()
        for o in rec.get("outputs", {}):
            out[o] = (rel, rec)
    return out


def _short(h: Any) -> str:
    return f"`{str(h)[:12]}`" if h else "—"


def _commit(rec: dict[str, Any]) -> str:
    git = rec.get("code", {}).get("git", {})
    if not git.get("commit"):
        return "not a git checkout"
    dirty = f" + diff {_short(git.get('diff_sha256'))}" if git.get("dirty") else ""
    return f"{_short(git['commit'])}{dirty}"


def table_section(table: str, records: dict[str, tuple[str, dict]], workdir: Path) -> list[str]:
    """Markdown of one table: its job's commit/config/code, then one row per input."""
    lines = [f"### `{table}`", ""]
    if table not in records:
        return [*lines, "No provenance record names this table.", ""]
    rec_path, rec = records[table]
    code = rec.get("code", {})
    lines += [
        f"- record: `{rec_path}` (rule `{rec.get('rule')}`, finished {rec.get('end')})",
        f"- commit: {_commit(rec)}; config hash {_short(rec.get('config', {}).get('hash'))}; "
        f"package source hash {_short(code.get('package_source_hash'))}",
        "",
        "| input | sha256 read by the job | now | produced by (rule, record, commit) |",
        "|---|---|---|---|",
    ]
    for inp, digest in sorted(rec.get("inputs", {}).items()):
        p = workdir / inp
        now = sha256_tree(p)["sha256"] if p.exists() else None
        read = (digest or {}).get("sha256")
        state = "same" if now == read else ("missing" if now is None else "**changed**")
        producer = records.get(inp)
        made = (
            f"`{producer[1].get('rule')}`, `{producer[0]}`, {_commit(producer[1])}"
            if producer
            else "no record"
        )
        lines.append(f"| `{inp}` | {_short(read)} | {state} | {made} |")
    return [*lines, ""]


def audit_section(audit: Audit) -> list[str]:
    kinds = Counter(f.kind for f in audit.findings)
    checked = ", ".join(f"{v} {k}" for k, v in sorted(audit.counts.items()))
    head = "clean" if audit.clean else ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
    lines = [
        "## Audit",
        "",
        f"`medmark audit` when this page was built: **{head}** (checked {checked}); "
        "the full result is `audit.json` beside this page.",
        "",
    ]
    if audit.findings:
        lines += ["| kind | path | reason |", "|---|---|---|"]
        for f in sorted(set(audit.findings))[:FINDINGS_SHOWN]:
            lines.append(f"| {f.kind} | `{f.path}` | {f.reason} |")
        lines.append("")
    return lines


def write_provenance_page(
    tables: list[str],
    results: str | os.PathLike[str],
    out_md: str | os.PathLike[str],
    out_audit: str | os.PathLike[str],
) -> Audit:
    """Audit ``results`` and write the provenance page and the audit JSON."""
    from medmark.audit import run_audit, write_audit

    res = Path(results).resolve()
    workdir = res.parent
    audit = run_audit(res, workdir)
    records = output_records(res, workdir)
    lines = ["# Provenance", ""]
    for t in tables:
        lines += table_section(Path(t).as_posix(), records, workdir)
    lines += audit_section(audit)
    write_audit(audit, out_audit)
    write_text_atomic(out_md, "\n".join(lines))
    return audit
