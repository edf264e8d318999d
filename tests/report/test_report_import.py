"""quantsweep.report is both the subpackage (text helpers) and the report verb, in either import order."""

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_report_verb_and_subpackage_in_both_orders():
    verb_first = _run("""
        import quantsweep
        print(callable(quantsweep.report))
        from quantsweep.report import format_table
        import quantsweep.report.text
        print(callable(quantsweep.report), format_table.__module__)
    """)
    assert verb_first.splitlines() == ["True", "True quantsweep.report.text"]
    package_first = _run("""
        from quantsweep.report import format_table, LEGEND, format_cell, primary_records
        import quantsweep
        import sys
        print(callable(quantsweep.report), quantsweep.report is sys.modules["quantsweep.report"])
        print(any(m in sys.modules for m in ("pandas", "matplotlib", "jinja2", "torch")))
    """)
    assert package_first.splitlines() == ["True True", "False"]
