"""Check a ledger against what a client kept (signed checkpoints, certificates, exports), without the database.

An insider can rewrite the chain and recompute every hash (and, holding the signing key, re-sign new heads),
but cannot change the copies clients kept: a kept head the chain no longer reaches is a fork, a kept head
beyond its end a truncation. `lethe ledger verify --against FILE` runs this.
"""

from __future__ import annotations

from typing import Any

from app.ledger.service import GENESIS, entry_hash
from app.ledger.signing import verify_certificate, verify_checkpoint


def collect(document: Any, certificates: list[dict[str, Any]] | None = None) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]]]:
    """(checkpoints, entries) found anywhere in a kept JSON document: POST /forget answers, certificates,
    GET /ledger/head, /ledger/checkpoints or /ledger pages, or lists of any of these. Certificates found are
    appended to `certificates` when given."""
    checkpoints: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if str(node.get("certificate", "")).startswith("lethe.deletion/") and certificates is not None:
                certificates.append(node)
            if {"seq", "head", "signed_at", "signature"} <= set(node) and isinstance(node["signature"], str):
                checkpoints.append(node)
            elif {"seq", "hash"} <= set(node) and isinstance(node["hash"], str):
                entries.append({"seq": int(node["seq"]), "hash": node["hash"]})
            for value in node.values():
                walk(value)

    walk(document)
    return checkpoints, entries


def recompute(entries: list[dict[str, Any]], *, tenant_id: str) -> dict[str, Any]:
    """Recompute the chain from its entries (as GET /ledger shows them): the first entry that does not verify."""
    prev, expected = GENESIS, 1
    for e in entries:
        if e["seq"] != expected:
            return {"ok": False, "broken_at": e["seq"], "reason": f"sequence gap: expected {expected}"}
        if e["prev_hash"] != prev or e["hash"] != entry_hash(
                tenant_id=tenant_id, seq=e["seq"], event=e["event"], subject_type=e["subject_type"],
                subject_id=e["subject_id"], data=e["data"], at=e["at"], prev_hash=prev):
            return {"ok": False, "broken_at": e["seq"], "reason": "entry does not match its hash or link"}
        prev, expected = e["hash"], expected + 1
    return {"ok": True, "broken_at": None, "reason": None}


def check(*, entries: list[dict[str, Any]], tenant_id: str, kept: Any, public_key_pem: str) -> dict[str, Any]:
    """Compare the chain with every kept checkpoint and entry hash; report a fork or truncation.

    `first_differing` is the first entry that is not what was kept: exact when the entry just before it was
    kept too, else the report gives the range it lies in (between the last matching kept point and the first
    differing one).
    """
    certificates: list[dict[str, Any]] = []
    checkpoints, kept_entries = collect(kept, certificates)
    mine = [c for c in checkpoints if c.get("tenant_id", tenant_id) == tenant_id]
    bad = [c for c in mine if not verify_checkpoint(c | {"tenant_id": tenant_id}, public_key_pem)]
    points = sorted({(int(c["seq"]), c["head"], "checkpoint") for c in mine if c not in bad}
                    | {(e["seq"], e["hash"], "entry") for e in kept_entries})
    chain = {e["seq"]: e["hash"] for e in entries}
    last = max(chain, default=0)
    internal = recompute(entries, tenant_id=tenant_id)
    report: dict[str, Any] = {
        "ok": internal["ok"] and not bad, "tenant_id": tenant_id, "entries": len(entries), "last_seq": last,
        "checkpoints_checked": len(mine) - len(bad), "entries_checked": len(kept_entries),
        "bad_signatures": [{"seq": c["seq"], "signed_at": c["signed_at"]} for c in bad],
        "certificates_checked": len(certificates),
        "bad_certificates": [c.get("request_id") for c in certificates
                             if not verify_certificate(c, public_key_pem)],
        "chain": internal, "problem": None,
    }
    report["ok"] = report["ok"] and not report["bad_certificates"]
    matched = 0
    for seq, value, kind in points:
        if seq == 0:
            if value != GENESIS:
                report["bad_signatures"].append({"seq": 0, "signed_at": None})
            continue
        if seq > last:
            report["problem"] = {
                "kind": "truncation", "first_differing": last + 1, "between": [last + 1, seq],
                "detail": f"the chain ends at seq {last}, but a kept {kind} has seq {seq}: entries from "
                          f"{last + 1} on were removed"}
        elif chain[seq] != value:
            exact = matched == seq - 1
            report["problem"] = {
                "kind": "fork", "first_differing": seq if exact else None, "between": [matched + 1, seq],
                "detail": f"kept {kind} at seq {seq} has hash {value[:16]}…, the chain has {chain[seq][:16]}…; "
                          + (f"first differing entry: seq {seq}" if exact else
                             f"the first differing entry is between seq {matched + 1} and {seq} "
                             f"(seq {matched} matches what was kept)")}
        else:
            matched = seq
            continue
        report["ok"] = False
        break
    return report
