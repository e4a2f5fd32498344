"""HiddenScope."""
