import logging, sys, torch, glob, os
logging.basicConfig(level=logging.ERROR)
from quantsweep.sweep.prepare import PreparedModel
from quantsweep.sweep.spec import model_from_dict
from quantsweep.eval.health import diagnose_nonfinite
recipes = sys.argv[2:] or sorted(os.path.basename(p)[:-5] for p in glob.glob("recipes/*.yaml") if "grid" not in p)
prepared = PreparedModel(model_from_dict({"path": sys.argv[1], "device": "cpu", "calibration": {"source": "toy", "samples": 8, "seq_len": 32}}))
for r in recipes:
    try:
        res = prepared.quantize(r)
        d = diagnose_nonfinite(prepared.model, prepared.tokenizer)
        print(f"{r:20s} logits_finite={d.logits_finite} first={d.first_module} weights={d.nonfinite_weights[:3]}")
    except Exception as e:
        print(f"{r:20s} ERROR {type(e).__name__}: {str(e)[:200]}")
