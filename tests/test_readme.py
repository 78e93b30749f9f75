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


def _blocks():
    text = open(os.path.join(ROOT, "README.md")).read()
    return text, re.findall(r"```(\w*)\n(.*?)```", text, re.S)


def _run(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_readme_autograd_example_output():
    _, blocks = _blocks()
    i = next(i for i, (lang, body) in enumerate(blocks) if lang == "python" and "autograd.Function" in body)
    assert _run(blocks[i][1]) == blocks[i + 1][1]


def test_readme_capture_example_output():
    text, blocks = _blocks()
    code = next(body for lang, body in blocks if lang == "python" and "@torch.capture" in body)
    said = re.search(r"prints `([^`]*)` \(the eager loop", text).group(1)
    assert _run(code).strip() == said
    eager = _run(code.replace("@torch.capture\n", "").replace(', step.stats)', ')'))
    assert eager.strip() == said.split(" ")[0]      # the eager loop gives the same loss
