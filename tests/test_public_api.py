"""The public API from `ldm` itself, imported on first use: `import ldm` costs nothing, each name is its module's."""

import subprocess
import sys

import ldm


def test_import_ldm_imports_no_torch():
    code = "import sys, ldm; print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('ldm.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False []"


def test_each_public_name_is_its_defining_modules():
    from ldm.core.errors import LdmError
    from ldm.formats.load import load_model
    from ldm.sampling.options import SamplingOptions
    from ldm.tasks.inpaint import outpaint
    from ldm.tasks.txt2img import txt2img

    assert (ldm.load_model, ldm.txt2img, ldm.outpaint) == (load_model, txt2img, outpaint)
    assert ldm.SamplingOptions is SamplingOptions and ldm.LdmError is LdmError
    assert set(ldm.__all__) == set(ldm._PUBLIC) and set(ldm.__all__) <= set(dir(ldm))
    for name in ldm.__all__:
        assert callable(getattr(ldm, name)), name


def test_an_unknown_name_is_an_attribute_error():
    try:
        ldm.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("ldm.no_such_thing did not raise")
