"""offsite: gets backup images offsite and keeps them there."""
__version__ = "0.3.0"
