"""The package's public names resolve on first use, and list tools start without torch."""

from __future__ import annotations

import importlib
import subprocess
import sys

import s4v_data


def test_every_public_name_resolves() -> None:
    assert set(s4v_data.__all__) == set(s4v_data._WHERE)
    for name in s4v_data.__all__:
        module = importlib.import_module(f"s4v_data.{s4v_data._WHERE[name]}")
        assert getattr(s4v_data, name) is getattr(module, name), name


def test_extraction_and_checking_do_not_import_torch() -> None:
    code = (
        "import sys, s4v_data.extract, s4v_data.check, s4v_data.synthetic\n"
        "from s4v_data import read_video_list, read_labels\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
