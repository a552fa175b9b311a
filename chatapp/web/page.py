"""The chat page."""

from flask import Blueprint, render_template

bp = Blueprint("page", __name__)


@bp.get("/")
def index():
    """The single-page chat client (static HTML; data comes from the JSON API)."""
    return render_template("index.html")
