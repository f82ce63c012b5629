"""The web UI at /ui/: what is pushed and cached, tags, manifests, deletes and the cache's
counters, under the same users and access rules as the API."""

from entrepot.http.ui.access import UiAccess, access_for
from entrepot.http.ui.pages import UiSettings, ui_routes

__all__ = ["UiAccess", "UiSettings", "access_for", "ui_routes"]
