"""probe/paths.py: an output path that cannot be written is named before any work
(a folder where a file goes, a file where a folder goes, a file above the path), in one line."""

from __future__ import annotations

from probe.paths import output_path_problem


def test_an_output_path_that_can_be_made_has_no_problem(tmp_path):
    (tmp_path / "dir").mkdir()
    assert output_path_problem(tmp_path / "new.csv") is None
    assert output_path_problem(tmp_path / "dir" / "deeper" / "new.csv") is None
    assert output_path_problem(tmp_path / "dir", folder=True) is None
    assert output_path_problem(tmp_path / "fresh" / "sub", folder=True) is None
    (tmp_path / "old.csv").write_text("x")
    assert output_path_problem(tmp_path / "old.csv") is None  # replacing a file is the caller's decision


def test_a_directory_a_file_or_a_file_above_is_named(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("keep me")
    assert output_path_problem(tmp_path / "dir") == (
        f"{tmp_path / 'dir'} is a directory; name a file to write (e.g. {tmp_path / 'dir' / 'table.csv'}), or move "
        "the directory away")
    assert output_path_problem(tmp_path / "file", folder=True).startswith(f"{tmp_path / 'file'} is a file, not a dir")
    for under in (tmp_path / "file" / "x.csv", tmp_path / "file" / "a" / "b"):
        for folder in (False, True):
            assert output_path_problem(under, folder=folder) == (
                f"{under} cannot be created: {tmp_path / 'file'} is a file; choose a path outside it, or move the "
                "file away")
    assert (tmp_path / "file").read_text() == "keep me"
