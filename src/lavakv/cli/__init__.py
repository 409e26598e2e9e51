"""The ``lavakv`` command: ``generate``, ``demo``, ``bench``, ``eval``, ``report`` and friends."""

from lavakv.cli.app import main

__all__ = ["main"]
