"""The README as a newcomer reads it: its Layout names what exists."""

from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_layout_names_every_module_and_script():
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    modules = [p for p in (ROOT / "vwt_export").rglob("*.py") if p.name not in ("__init__.py", "__main__.py")
               and "python_model" not in p.parts]
    scripts = [p for p in (ROOT / "scripts").iterdir() if p.is_file()]
    missing = sorted(str(p.relative_to(ROOT)) for p in modules + scripts if p.name not in layout)
    assert not missing, f"README's Layout does not name {missing}"
