"""Limits on the sizes an input file claims, checked before any memory is allocated for them.

A few kilobytes of HDF5, npz, AEDAT or checkpoint can declare billions of events, frames
or weights; every reader compares such a claim with a limit here first and raises a one-line
error naming the file, the claim and the limit. Each limit can be raised (or lowered) with an
environment variable holding a positive integer (``1e9`` and ``1_000_000`` are accepted):

- :data:`MAX_EVENTS`, ``DVSGUARD_MAX_EVENTS``: events in one recording, default 100,000,000
  (about 13 bytes each once read, several times that while a recording is converted);
- :data:`MAX_FRAMES`, ``DVSGUARD_MAX_FRAMES``: frames T per sample in a framing, a frame cache
  or a checkpoint, default 10,000;
- :data:`MAX_PARAMETERS`, ``DVSGUARD_MAX_PARAMETERS``: weights and biases a model config
  implies, default 500,000,000 (2 GB of float32);
- :data:`MAX_WIDTH`, ``DVSGUARD_MAX_WIDTH``: channels of a convolution, units of a linear layer
  or classes, default 65,536;
- :data:`MAX_ARRAY_BYTES`, ``DVSGUARD_MAX_ARRAY_BYTES``: bytes of one uncompressed array (an npz
  member, one sample's float32 frames ``[T, 2, H, W]``), default 2**31 (2 GiB).

The environment is read at each check, so a variable set before a command (or by a test)
applies to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dvsguard.errors import ConfigError, DvsguardError


@dataclass(frozen=True)
class Limit:
    """One limit: its ``default``, the ``unit`` it counts and the environment variable ``env`` that overrides it."""

    env: str
    default: int
    unit: str

    def value(self) -> int:
        """The limit in force: ``env`` when set (a positive integer), else ``default``.

        Raises ConfigError when the variable is set to anything but a positive integer.
        """
        text = os.environ.get(self.env, "").strip()
        if not text:
            return self.default
        try:
            number = float(text.replace("_", ""))
        except ValueError:
            number = float("nan")
        if not (number >= 1 and number == int(number)):
            raise ConfigError(f"{self.env}={text!r}: expected a positive integer ({self.unit})")
        return int(number)

    def check(self, claim: int, where: str, what: str, error: type[DvsguardError]) -> None:
        """Raise ``error("<where>: <what> claims N <unit>, above the limit of M ...")`` when ``claim`` exceeds the limit.

        ``where`` names the file (or setting), ``what`` the thing that makes the claim
        (e.g. ``"HDF5 dataset 'events'"``); the message says how to raise the limit.
        """
        limit = self.value()
        if claim > limit:
            raise error(f"{where}: {what} claims {claim:,} {self.unit}, above the limit of {limit:,} "
                        f"(set {self.env} to allow more)")


MAX_EVENTS = Limit("DVSGUARD_MAX_EVENTS", 100_000_000, "events")
"""Events in one recording."""

MAX_FRAMES = Limit("DVSGUARD_MAX_FRAMES", 10_000, "frames")
"""Frames T per sample."""

MAX_PARAMETERS = Limit("DVSGUARD_MAX_PARAMETERS", 500_000_000, "parameters")
"""Parameters (weights and biases) of one model."""

MAX_WIDTH = Limit("DVSGUARD_MAX_WIDTH", 65_536, "channels or units")
"""Channels or units of one layer (and classes of the output layer)."""

MAX_ARRAY_BYTES = Limit("DVSGUARD_MAX_ARRAY_BYTES", 2**31, "bytes")
"""Bytes of one uncompressed array."""
