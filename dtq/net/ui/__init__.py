"""The web dashboard at /ui/: server-rendered page shells, one small ES module per page."""

from dtq.net.ui.routes import make_ui_blueprint

__all__ = ["make_ui_blueprint"]
