"""setup.py of scripts/install.sh's build copy: a wheel whose hot modules are compiled
with mypyc (pyproject.toml, [tool.smalldp.compile]), next to their .py files.

install.sh copies this file to setup.py in the copy it builds from, with
scripts/mypyc_build.py, and runs ``pip wheel --no-build-isolation`` in a virtualenv
holding setuptools and the ``compile`` extra (mypy).  The checkout itself has no
setup.py on purpose: ``pip install -e .`` never compiles, since extension modules next to
the sources would shadow them for every interpreted run (the development build goes to
build/compiled/ instead: scripts/mypyc_build.py).
"""

import os
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "scripts"))
import mypyc_build  # noqa: E402

os.chdir(HERE)
setup(ext_modules=mypyc_build.extensions("src", mypyc_build.modules(HERE)))
