"""What the benchmarks share: the machine a run measured on, proportions and means with their intervals, and the
end of a run (its JSON and PNG written, its tables printed)."""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

VERDICTS = ("passed", "failed", "inconclusive")  # the pool audit's


def clopper_pearson(x: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided exact binomial interval."""
    from scipy.stats import beta

    a = (1 - confidence) / 2
    lo = 0.0 if x == 0 else float(beta.ppf(a, x, n - x + 1))
    hi = 1.0 if x == n else float(beta.ppf(1 - a, x + 1, n - x))
    return lo, hi


def machine() -> dict[str, Any]:
    """CPU, memory and library versions of the machine a run measured on."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                            "platform": platform.platform(), "numpy": np.__version__}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name"))
        info["memory_gb"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except (OSError, StopIteration, IndexError, ValueError):
        pass
    return info


def json_default(o: Any) -> Any:
    """numpy values as lists, anything else as its string (json.dumps(default=...))."""
    return o.tolist() if hasattr(o, "tolist") else str(o)


def rate(verdicts: list[str], which: str) -> dict[str, Any]:
    """The share of `which` among the verdicts, with its Clopper-Pearson 95% interval."""
    x, n = sum(v == which for v in verdicts), len(verdicts)
    lo, hi = clopper_pearson(x, n) if n else (None, None)
    return {"count": x, "n": n, "rate": x / n if n else None, "ci95": [lo, hi]}


def mean_sd(values: list[float | None]) -> dict[str, Any]:
    """Mean, sd and standard error of the values that are not None."""
    v = np.array([a for a in values if a is not None], dtype=np.float64)
    if not len(v):
        return {"mean": None, "sd": None, "se": None, "n": 0}
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "sd": sd, "se": sd / np.sqrt(len(v)), "n": int(len(v))}


def run_and_report(run: Callable[..., dict[str, Any]], cfg: Any, out: Path, *,
                   write: Callable[[dict[str, Any], Path], None],
                   print_tables: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Run `cfg` (logging as it goes), write the JSON and its PNG to `out`, print the tables, say where."""
    results = run(cfg, log=lambda m: print(m, flush=True))
    write(results, out)
    print_tables(results)
    took = f"total {results['total_seconds'] / 60:.1f} min; " if "total_seconds" in results else ""
    print(f"\n{took}wrote {out} and {out.with_suffix('.png')}")
    return results


def command_line(doc: str, *, setting: str, quick: str, large: str) -> argparse.ArgumentParser:
    """A benchmark's command line: --setting digits|fashion, --quick or --large (a smoke run or a bigger one) and
    --out; the benchmark adds its own options."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=("digits", "fashion"), default="digits", help=setting)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=quick)
    size.add_argument("--large", action="store_true", help=large)
    p.add_argument("--out", type=Path)
    return p
