"""`import quantsweep` must not import torch_npu nor initialise any accelerator."""

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_import_does_not_touch_torch_npu_or_accelerators():
    out = _run("""
        import sys
        import quantsweep
        import quantsweep.device, quantsweep.recipes, quantsweep.cli
        quantsweep.list_recipes()
        import torch
        print("torch_npu" in sys.modules, torch.cuda.is_initialized())
    """)
    assert out == "False False"


def test_import_is_lazy_about_heavy_modules():
    out = _run("""
        import sys
        import quantsweep
        print(any(m in sys.modules for m in ("lm_eval", "transformers", "torch")))
    """)
    assert out == "False"
