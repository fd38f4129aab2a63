"""Examples in the OpenAPI document: answers of a real `make run` session (the digits demo), trimmed to one
item per list. tests/app/test_docs.py validates each against its schema, so they cannot drift."""

from app.examples.routes import ROUTES
from app.examples.schemas import SCHEMAS

__all__ = ["ROUTES", "SCHEMAS"]
