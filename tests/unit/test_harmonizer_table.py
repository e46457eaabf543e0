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
