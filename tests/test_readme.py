"""The README's example prints what the README says (run in a fresh process: leaf numbering starts at 0)."""
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_readme_example_output():
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, re.S)
    i = next(i for i, (lang, body) in enumerate(blocks) if lang == "python" and "import tapegrad" in body)
    code, expected = blocks[i][1], blocks[i + 1][1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected
