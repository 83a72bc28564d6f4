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


def package_relative(path: Path, root: Path = PACKAGE_ROOT) -> str:
    """``path`` as the manifest writes it: relative to ``root``, through the subpackage links.

    In a checkout ``statecast/models`` is a link, so a resolved ``<repo>/models/onnx/x.onnx``
    is not under the resolved package directory; it is ``models/onnx/x.onnx`` all the same.
    """
    target = path.resolve()
    for base in (root, *sorted(p for p in root.iterdir() if p.is_symlink())):
        try:
            rel = target.relative_to(base.resolve())
        except ValueError:
            continue
        return (rel if base == root else Path(base.name) / rel).as_posix()
    raise ValueError(f"{path} is not inside the package directory {root}")
