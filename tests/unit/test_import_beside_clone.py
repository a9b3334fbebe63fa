"""A script saved next to a clone named ``mmpretrain/`` imports the real package.

The trap: Python's path search looks at the script's folder first and takes the clone (a folder
with no ``__init__.py``) for a PEP 420 namespace package, which has no ``load_pretrained``. It
settles on a namespace package only when no regular package of that name is on sys.path, and
setuptools' default editable install puts none there (it maps the package with a finder that is
asked only after the path search). The Makefile's compat install puts the repository root on
sys.path through a .pth file, so the real package is found there and wins.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mmpretrain

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """\
import mmpretrain
print(getattr(mmpretrain, "__file__", None))
print(callable(mmpretrain.load_pretrained))
"""


def test_a_script_beside_a_clone_named_mmpretrain_gets_the_real_package(tmp_path: Path) -> None:
    clone = tmp_path / "mmpretrain"  # what `git clone ... mmpretrain` leaves: no __init__.py
    clone.mkdir()
    (clone / "README.md").write_text("a clone's root\n")
    (tmp_path / "script.py").write_text(SCRIPT)
    # The script's own environment, as a user's shell gives it (CI has no PYTHONPATH: there the
    # install's wiring alone decides).
    out = subprocess.run(
        [sys.executable, "script.py"],
        cwd=tmp_path,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.split() == [mmpretrain.__file__, "True"], (
        "a script next to a folder named mmpretrain/ got the namespace package, not the real "
        "one: reinstall with `make install` (pip install -e . --config-settings "
        f"editable_mode=compat)\n{out.stdout}{out.stderr}"
    )


def test_the_makefile_installs_in_compat_mode() -> None:
    """The test above passes without it wherever PYTHONPATH names the checkout; CI has none."""
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"pip install .*-e .*", makefile)
    assert installs and all("editable_mode=compat" in line for line in installs), installs
