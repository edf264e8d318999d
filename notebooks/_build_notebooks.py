"""Writes the notebooks in notebooks/ (run from the repository root: python notebooks/_build_notebooks.py)."""
import nbformat as nbf
from pathlib import Path

def nb(cells):
    book = nbf.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.cells = [nbf.v4.new_markdown_cell(c[1]) if c[0] == "md" else nbf.v4.new_code_cell(c[1]) for c in cells]
    return book

quick = nb([
 ("md", "# quantsweep quickstart\n\nLoad the embedded `toy` model (openPangu-Embedded architecture, trained by this repo), quantize it, evaluate it with lm-eval, and judge the result against the full-precision baseline. Runs on CPU in about a minute."),
 ("code", "import quantsweep\nfrom quantsweep.verdicts.task import judge_task\n\nmodel, tokenizer = quantsweep.load_model(\"toy\", device=\"cpu\")\nsnapshot = quantsweep.WeightSnapshot(model)  # full-precision copy, to restore between recipes\nquantsweep.list_recipes()"),
 ("code", "baseline = quantsweep.evaluate(model, tokenizer, tasks=[\"toy_mc4\"])  # all 1,600 documents\nbase_task = baseline.tasks[\"toy_mc4\"]\nprint(\"fp accuracy\", base_task.metrics[\"acc\"].value, \"+/-\", base_task.metrics[\"acc\"].stderr, \"n =\", base_task.n)"),
 ("code", "results = {}\nfor recipe in [\"w8-rtn\", \"w2-rtn\", \"w1-rtn\"]:\n    snapshot.restore(model)\n    quantsweep.quantize(model, recipe)\n    task = quantsweep.evaluate(model, tokenizer, tasks=[\"toy_mc4\"]).tasks[\"toy_mc4\"]\n    results[recipe] = judge_task(task, base_task, metric=\"acc\", vocab_size=model.config.vocab_size)\n    print(f\"{recipe:8s} acc={task.metrics['acc'].value:.3f} verdict={results[recipe]['verdict']:12s} delta={results[recipe]['delta']:+.3f}\")\n    print(f\"         why: {results[recipe]['reason']}\")\nsnapshot.restore(model)"),
 ("code", "assert results[\"w8-rtn\"][\"verdict\"] == \"lossless\"\nassert results[\"w1-rtn\"][\"verdict\"] == \"collapsed\"  # binary keeps under 15% of the margin above chance\nassert all(r[\"reason\"] for r in results.values())  # every verdict says why"),
 ("md", "## The report of what it ran\n\nThe same recipes as one run that stores its results, then `quantsweep.report`: one self-contained HTML file (open it in any browser, offline), with `results.csv`, `results.parquet` and the figures beside it."),
 ("code", "import tempfile\nfrom pathlib import Path\nfrom IPython.display import Image, display\nfrom quantsweep.sweep.runner import RunSpec, run\n\nout = Path(tempfile.mkdtemp())\nrun(RunSpec(model=\"toy\", recipes=[\"w8-rtn\", \"w2-rtn\", \"w1-rtn\"], tasks=[\"toy_mc4\"], device=\"cpu\", out_dir=out))\nreport = quantsweep.report(out)\nprint(\"report:\", report, f\"({report.stat().st_size // 1024} KiB)\")\ndisplay(Image(filename=str(out / \"report-verdict-map.png\")))\nassert \"w1-rtn\" in report.read_text() and (out / \"results.parquet\").is_file()"),
])

add = nb([
 ("md", "# Add your own quantization method\n\nA method is one function registered with `@register_method` plus a frozen config dataclass; a recipe is a YAML mapping whose keys are exactly that dataclass's fields. Here: a *stochastic-free* 'sign-magnitude' quantizer that keeps only the top-k largest weights per row (a toy pruning method) — one cell of code, no change to quantsweep."),
 ("code", "from dataclasses import dataclass\nimport torch\nimport quantsweep\nfrom quantsweep.methods.registry import RecipeConfig, register_method\nfrom quantsweep.recipes import recipe_from_yaml\nfrom quantsweep.methods.targets import weight_targets\n\n@dataclass(frozen=True, kw_only=True)\nclass TopKConfig(RecipeConfig):\n    \"\"\"Keep the `keep` fraction of largest-magnitude weights per row; zero the rest.\"\"\"\n    keep: float = 0.5\n\n@register_method(\"notebook-topk\", config=TopKConfig)\ndef apply_topk(model, config, calibration=None):\n    with torch.no_grad():\n        for name, linear in weight_targets(model, config).items():\n            w = linear.weight\n            k = max(1, int(w.shape[1] * config.keep))\n            threshold = w.abs().kthvalue(w.shape[1] - k + 1, dim=1, keepdim=True).values\n            w.mul_((w.abs() >= threshold).to(w.dtype))\n    return model"),
 ("code", "recipe = recipe_from_yaml(\"\"\"\nname: topk-50\nmethod: notebook-topk\ndescription: keep half of each row's weights\nkeep: 0.5\n\"\"\")\nmodel, tokenizer = quantsweep.load_model(\"toy\", device=\"cpu\")\nquantsweep.quantize(model, recipe)\nzeros = (model.model.layers[0].mlp.up_proj.weight == 0).float().mean().item()\nprint(f\"fraction of zeroed weights: {zeros:.2f}\")\nassert abs(zeros - 0.5) < 0.02"),
 ("code", "try:\n    recipe_from_yaml(\"name: x\\nmethod: notebook-topk\\nkeeep: 0.3\\n\")\nexcept ValueError as error:\n    print(error)  # an unknown key is named, with the allowed keys"),
])

analyse = nb([
 ("md", "# Analyse a sweep\n\nRun the toy sweep of `recipes/sweeps/toy.yaml`, then look at it as a pandas DataFrame: the verdict map inline, answer flips, and every cell that is not lossless with the reason for its verdict. `quantsweep.report(out)` writes the same as one HTML file."),
 ("code", "import tempfile\nfrom pathlib import Path\nimport pandas as pd\nimport quantsweep\n\nSPEC = Path(\"..\") / \"recipes\" / \"sweeps\" / \"toy.yaml\"\nout = Path(tempfile.mkdtemp())\nframe = quantsweep.sweep(SPEC, out=out)  # one row per cell and metric, with the verdict columns\nframe.head()"),
 ("code", "again = quantsweep.load_results(out)  # the same table, read back from the store\nassert len(again) == len(frame)\ncells = again[again[\"primary\"].fillna(False).astype(bool)]  # the primary metric of every (recipe, task)\ncells[[\"recipe\", \"task\", \"metric\", \"value\", \"delta\", \"ci_low\", \"ci_high\", \"n\", \"verdict\"]]"),
 ("md", "## The verdict map\n\nRecipes against tasks, each cell coloured by its verdict (the report's figure)."),
 ("code", "from IPython.display import Image\nfrom quantsweep.report.plots import png_bytes, verdict_heatmap\n\nrecipes = list(dict.fromkeys(cells[\"recipe\"]))\ntasks = list(dict.fromkeys(cells[\"task\"]))\nImage(png_bytes(verdict_heatmap(cells, recipes, tasks)))"),
 ("md", "## Answer flips\n\nThe share of documents right for the baseline and wrong for the recipe, and the reverse. Equal accuracy can hide many changed answers (Dutta et al., 2024)."),
 ("code", "flips = cells.dropna(subset=[\"flips_right_to_wrong\"])[[\"recipe\", \"task\", \"delta\", \"flips_right_to_wrong\", \"flips_wrong_to_right\"]]\nassert (flips[\"flips_right_to_wrong\"] >= 0).all() and len(flips) > 0\nflips"),
 ("md", "## Every cell that is not lossless, and why"),
 ("code", "not_lossless = cells[~cells[\"verdict\"].isin([\"lossless\", \"baseline\"])]\nassert not_lossless[\"reason\"].map(bool).all()  # every verdict carries its reason\npd.set_option(\"display.max_colwidth\", None)\nnot_lossless[[\"recipe\", \"task\", \"verdict\", \"reason\", \"documents_needed\"]]"),
 ("code", "report = quantsweep.report(out)\nprint(\"HTML report:\", report)"),
])

for name, book in [("quickstart", quick), ("add_a_recipe", add), ("analyse_a_sweep", analyse)]:
    nbf.write(book, Path("notebooks") / f"{name}.ipynb")
