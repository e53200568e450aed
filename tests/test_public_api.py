"""The curated public API: every name in gradfit.__all__ resolves, and importing costs no torch."""

from __future__ import annotations

import subprocess
import sys

import gradfit


def test_every_public_name_resolves():
    for name in gradfit.__all__:
        assert getattr(gradfit, name) is not None, name
    assert set(dir(gradfit)) == set(gradfit.__all__)


def test_import_does_not_import_torch():
    code = "import sys, gradfit; gradfit.FitOptions; gradfit.parse('w*x'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_every_fit_option_is_documented_where_fit_and_fit_options_say():
    # loss_scale, max_iter, starts and the checkpoint options were named in neither docstring
    import dataclasses

    fields = [f.name for f in dataclasses.fields(gradfit.FitOptions)]
    options_doc, fit_doc = gradfit.FitOptions.__doc__, gradfit.fit.__doc__
    assert [name for name in fields if f"``{name}``" not in fit_doc] == []
    assert [name for name in fields if name not in options_doc.split("Attributes")[1]] == []
