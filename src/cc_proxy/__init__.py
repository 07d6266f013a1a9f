"""cc-proxy: a model gateway between Claude Code and self-hosted models."""

__version__ = "0.1.0"
