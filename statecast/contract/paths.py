"""Where the package's files live, in a checkout and in an installed wheel alike.

Manifest paths (``models/onnx/x.onnx``) are relative to the ``statecast`` package
directory: in a checkout ``statecast/models`` links to the top-level ``models/`` folder,
in a wheel the files sit inside the package.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """Prepared data sets and downloaded wheels: ``.cache`` of the checkout, else the user's."""
    checkout = PACKAGE_ROOT.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout / ".cache"
    return Path.home() / ".cache" / "statecast"
