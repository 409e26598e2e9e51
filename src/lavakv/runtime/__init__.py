"""The runtime: a session attaches resolved components to a model; a compressor per cache does the evictions."""

from lavakv.runtime.session import Session, SessionStats

__all__ = ["Session", "SessionStats"]
