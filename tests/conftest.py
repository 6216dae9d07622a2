import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="loads BPF programs: needs root")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)
