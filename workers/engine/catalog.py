"""What the engine offers, by name, without importing torch: the scorers, the unlearning algorithms (with their
parameter models) and the installed model kinds. The API, the metrics and the engine's own dispatch tables all
read these names from here."""

from __future__ import annotations

from typing import Literal

from workers.engine import plugins
from workers.engine.params import PARAMS

# "less" is LESS's Γ with the shared momentum (the paper's form); "less_own" only the point's own term.
SCORERS = ("gradnorm", "hessian", "less", "less_own")
Scorer = Literal["gradnorm", "hessian", "less", "less_own"]
DEFAULT_SCORER: Scorer = "gradnorm"  # a policy's scorer until calibration says otherwise

ALGORITHMS = tuple(PARAMS)
DEFAULT_ALGORITHM = "finetune"
# The informational loss-MIA margin over a retrain reference's AUC that an audit reports, unless the policy sets one.
DEFAULT_REFERENCE_MARGIN = 0.03


def architectures() -> list[str]:
    """The model kinds installed here (entry points `lethe.models`)."""
    return plugins.installed_kinds()
