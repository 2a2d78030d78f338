"""What the README and docs/ say holds, and they say it where a user looks (issue 22,
defects 22 and 23): the README leads with the set-up and its two commands, names no
file outside the repository, and its test-helper example runs with plain ``pytest``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, cli_env, run_fanout

README = ROOT / "README.md"
MARKDOWN = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def sections(text: str, level: int = 2) -> dict[str, str]:
    """The text of each section of ``level`` (``##``: 2), by its title."""
    parts = re.split(rf"^{'#' * level} (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.M | re.S)


def test_the_readme_leads_with_the_set_up_and_its_two_commands() -> None:
    titles = list(sections(README.read_text()))
    first = sections(README.read_text())[titles[0]]
    assert titles[0].startswith("Set-up"), titles
    commands = "\n".join(blocks(first, "sh"))
    assert re.search(r"^fanout run \S+", commands, re.M), commands
    assert re.search(r"^pytest\b", commands, re.M), commands


def test_the_readme_is_a_guide_and_the_details_live_in_docs() -> None:
    """A dense README (601 lines, edge cases among the first steps): what a user does
    first, then a map of docs/."""
    text = README.read_text()
    guide = text[: text.index("## Changelog")]
    assert len(guide.splitlines()) <= 320  # it was 550 before the changelog
    for page in ("docs/cli.md", "docs/runs.md", "docs/seed/README.md", "docs/architecture.md"):
        assert page in text, page
        assert (ROOT / page).exists(), page


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_names_a_file_outside_the_repository(page: Path) -> None:
    """`../shared/seed/`, `../shared/tools/structure.py`: files a clone does not have."""
    text = page.read_text()
    assert "shared/seed" not in text
    assert "shared/tools" not in text
    for ref in re.findall(r"(?:\]\(|`)(\.\.?/[^)`\s#]*)", text):
        target = (page.parent / ref).resolve()
        assert target.is_relative_to(ROOT), f"{ref} is outside the repository"
        assert target.exists(), f"{ref} does not exist"


@pytest.mark.slow
def test_the_readmes_testing_example_passes_with_plain_pytest(tmp_path: Path) -> None:
    """It failed with ModuleNotFoundError: pytest does not put a project's root on
    sys.path by itself. The README's own blocks, in a project of their own."""
    section = sections(README.read_text(), 3)["Testing code that uses fanout"]
    (toml,) = blocks(section, "toml")
    (example,) = blocks(section, "python")
    (tmp_path / "pyproject.toml").write_text(toml)
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "images.py").write_text(
        "def thumbnail_size(width):\n    return width // 4\n"
    )
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_resize.py").write_text(example)
    env = cli_env()
    env.pop("PYTHONPATH", None)  # plain: nothing of ours on the path
    pytest_script = Path(sys.executable).with_name("pytest")
    done = subprocess.run([str(pytest_script), "-q", "-p", "no:cacheprovider"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"\b1 passed\b", done.stdout), done.stdout


def test_a_task_that_exits_ends_an_inline_run_with_its_code_as_documented() -> None:
    """Defect 23: on inline, a task runs in the fanout process itself, so os._exit(7)
    ends fanout with exit 7. That is what it does, and the docs say so."""
    inline = run_fanout("run", "tests.tasks:exit_hard", "7", "--backend", "inline")
    assert inline.returncode == 7, inline.stderr
    local = run_fanout("run", "tests.tasks:exit_hard", "7", "--workers", "1", "--json")
    assert local.returncode == 1, local.stderr  # elsewhere: a WorkerLost result
    exit_codes = sections((ROOT / "docs" / "cli.md").read_text())["Exit codes"]
    said = [" ".join(p.split()) for p in exit_codes.split("\n\n")]
    said = [p for p in said if "inline" in p and "os._exit(7)" in p]
    assert said, exit_codes
    assert "exit with code 7" in said[0]


def test_no_page_names_this_machines_checkout() -> None:
    for page in MARKDOWN:
        assert f"{os.sep}work{os.sep}main{os.sep}" not in page.read_text(), page
