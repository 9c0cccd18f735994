"""Model registry and architectures. `create`, `list_models`, `get_entry` are the public API."""

from cnnctl.models.registry import ModelEntry, create, get_entry, list_models, register

__all__ = ["ModelEntry", "create", "get_entry", "list_models", "register"]
