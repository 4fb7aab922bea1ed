# Metadata is in setup.cfg. This shim exists so that pip 21.3.1 (the newest
# pip for Python 3.6) can do a legacy editable install (`pip install -e .`).
from setuptools import setup

setup()
