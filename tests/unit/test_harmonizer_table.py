"""The harmonizer table is generated from the classes and covers every conf/harmonizer/*.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra.utils import get_class, instantiate

from uda.harmonizers import Harmonizer
from uda.harmonizers.table import (
    BEGIN,
    COLUMNS,
    CONF_DIR,
    END,
    harmonizer_classes,
    main,
    markdown,
    replace_in_readme,
    rows,
)

CONFS = sorted(CONF_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", CONFS, ids=lambda p: p.stem)
def test_every_harmonizer_config_is_an_exported_class_listed_in_the_table(path: Path) -> None:
    node = yaml.safe_load(path.read_text())
    cls = get_class(node["_target_"])
    assert cls in harmonizer_classes(), f"{cls.__name__} is not exported from uda.harmonizers"
    assert isinstance(instantiate(node), Harmonizer)
    listed = [row for row in rows() if f"`{path.stem}`" in row[COLUMNS[0]].split(", ")]
    assert len(listed) == 1


def test_every_exported_harmonizer_has_a_config() -> None:
    assert all(row[COLUMNS[0]] != "(no config)" for row in rows())


def test_table_cells_come_from_the_class_attributes() -> None:
    by_option = {row[COLUMNS[0]]: row for row in rows()}
    famo, upgrad, gh = by_option["`famo`"], by_option["`upgrad`"], by_option["`gh`"]
    assert (famo["needs"], famo["stateful"], famo["never conflicts"]) == ("Gram + losses", "yes", "no")
    assert (upgrad["losses"], upgrad["never conflicts"], upgrad["loss order"]) == ("≤ 10", "yes", "symmetric")
    assert (gh["losses"], gh["needs"], gh["stateful"]) == ("2", "Gram", "no")
    text = markdown()
    assert text.count("\n") == len(rows()) + 2 and text.startswith("| `harmonizer=` |")


def test_cli_prints_the_table_and_rewrites_a_readme_section(tmp_path: Path, capsys) -> None:
    assert main([]) == 0
    assert capsys.readouterr().out == markdown()
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{BEGIN}\nold hand-written list\n{END}\n\nafter\n")
    assert main(["--readme", str(readme)]) == 0
    assert readme.read_text() == f"# title\n\n{BEGIN}\n{markdown()}{END}\n\nafter\n"
    with pytest.raises(ValueError, match="markers"):
        replace_in_readme("no markers here", markdown())


# ------------------------------------------------ details found by mutation testing (make mutate)
def test_markdown_is_a_well_formed_table_whose_cells_escape_pipes(monkeypatch) -> None:
    from uda.harmonizers import GH

    monkeypatch.setattr(GH, "cost", "closed form | no solver")
    text = markdown()
    lines = text.split("\n")
    assert lines[-1] == "" and lines[-2].endswith(" |")  # one trailing newline after the last row
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    assert lines[1] == "|" + "---|" * len(COLUMNS)
    for line in lines[2:-1]:
        assert line.startswith("| `") or line.startswith("| (no config)")
        assert line.endswith(" |") and line.count(" | ") == len(COLUMNS) - 1  # escaped pipes are "\\|"
    gh_line = next(line for line in lines if line.startswith("| `gh`"))
    assert gh_line.endswith(" | closed form \\| no solver |")


def first_doc_line(cls: type) -> str:
    return cls.__doc__.strip().splitlines()[0].replace("``", "`").rstrip() if cls.__doc__ else ""


def test_rows_are_ordered_by_option_and_classes_without_a_config_still_appear(tmp_path, monkeypatch) -> None:
    from uda.harmonizers import ProGrad

    (tmp_path / "zz_gh.yaml").write_text("_target_: uda.harmonizers.GH\n")
    (tmp_path / "aa_prograd.yaml").write_text("_target_: uda.harmonizers.ProGrad\n")
    monkeypatch.setattr(ProGrad, "cost", "")
    table = rows(tmp_path)
    options = {"GH": "zz_gh", "ProGrad": "aa_prograd"}
    expected = sorted(harmonizer_classes(), key=lambda c: options.get(c.__name__, c.name))
    assert [r[COLUMNS[1]] for r in table] == [first_doc_line(c) for c in expected]
    assert [r[COLUMNS[0]] for r in table] == [
        f"`{options[c.__name__]}`" if c.__name__ in options else "(no config)" for c in expected
    ]
    assert (table[0][COLUMNS[6]], table[0][COLUMNS[7]]) == ("ordered", "(not stated)")  # ProGrad, first


def test_summary_line_and_losses_supported() -> None:
    from uda.harmonizers import PCGrad
    from uda.harmonizers.table import losses_supported, summary_line

    class Documented(Harmonizer):
        """Weights from ``K`` alone.   \n\n        More text."""

    class Undocumented(Harmonizer):
        pass

    assert summary_line(Documented) == "Weights from `K` alone."
    assert summary_line(Undocumented) == ""
    assert losses_supported(PCGrad) == "any"


def test_cli_help_states_what_it_does(capsys) -> None:
    import uda.harmonizers.table as table_module

    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert table_module.__doc__.splitlines()[0].strip() in out
    assert "--readme README rewrite the table between the markers of this file" in out
