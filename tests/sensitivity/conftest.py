"""Shared inputs of the sensitivity tests: the toy's text written once to a file (drawing it is the slow part)."""

import pytest


@pytest.fixture(scope="session")
def toy_text(tmp_path_factory):
    """A .txt file of toy bios: the same kind of text as the ``toy`` source, drawn once per session."""
    from quantsweep.toy import calibration_texts

    path = tmp_path_factory.mktemp("text") / "toy-bios.txt"
    path.write_text("\n\n".join(calibration_texts(64, seed=0)))
    return path
