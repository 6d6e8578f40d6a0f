"""Watchers: what is in each managed folder, and when a file there is complete."""
from .events import SourceWatcher
from .scan import SourceView

__all__ = ["SourceView", "SourceWatcher"]
