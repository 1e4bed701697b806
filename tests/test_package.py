"""The package imports cheaply and exposes its top-level names on first use."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_load_torch_and_names_resolve():
    code = (
        "import sys, transferlens\n"
        "assert 'torch' not in sys.modules, 'import transferlens loaded torch'\n"
        "from transferlens import AnalysisResult, load_model\n"
        "assert load_model.__module__ == 'transferlens.models.loading'\n"
        "assert set(transferlens.__all__) <= set(dir(transferlens))\n"
        "try:\n"
        "    transferlens.nope\n"
        "except AttributeError as e:\n"
        "    assert 'nope' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
