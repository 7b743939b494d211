#!/usr/bin/env python3
"""Launcher of the exporter package (tools/export/celsus_export): `python3 tools/export/export.py --help`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from celsus_export.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
