"""OpenDSR processor: discovery, requests, status, cancel, signed callbacks.

Importing the package registers what OpenDSR adds to shared machinery: its signed status-callback renderer with
the webhook sender, its deadline collector with /metrics, and its status refresh on forget requests closing.
"""

from app.forget import service as _forget
from app.opendsr import callbacks, hooks, metrics  # noqa: F401 - callbacks and metrics register on import

_forget.on_close(hooks.request_changed)
