"""tapegrad.viz: make_dot's DOT for article 000's example (labels, record numbers, edges
against next_functions), the tape listing beside it, and rendering through graphviz-pure."""
import re
import sys

import pytest

import tapegrad as torch
from tapegrad import viz
from tapegrad.viz import graph_and_tape, make_dot, tape_listing


def parse(source):
    """DOT written by make_dot -> ({id: attrs}, [(src, dst, attrs)])."""
    nodes, edges = {}, []

    def attrs(s):
        out = {}
        for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s\]]+)', s):
            if v.startswith('"'):
                v = v[1:-1].replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
            out[k] = v
        return out

    for line in source.splitlines():
        m = re.match(r"^\t(\w+) -> (\w+)(?: \[(.*)\])?$", line)
        if m:
            edges.append((m.group(1), m.group(2), attrs(m.group(3) or "")))
            continue
        m = re.match(r"^\t(\w+) \[(.*)\]$", line)
        if m and m.group(1) not in ("graph", "node"):
            nodes[m.group(1)] = attrs(m.group(2))
    return nodes, edges


def article_000():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x ** 2
    z = torch.sin(y)
    return x, y, z


def by_label(nodes, first_line):
    return [k for k, a in nodes.items() if a.get("label", "").split("\n")[0] == first_line]


def test_article_000_nodes_and_labels():
    x, y, z = article_000()
    nodes, edges = parse(make_dot(z, params={"x": x}).source)
    labels = sorted(a["label"] for a in nodes.values())
    assert labels == sorted([
        "SinBackward0\n%1:f32[2] = sin %0",
        "PowBackward0\n%0:f32[2] = pow x 2.0",
        "AccumulateGrad",
        "x\n (2)",                 # the leaf: its name and shape, as torchviz
        " (2)",                    # the output
        "self = %0",               # sin saves its input (op table: saves=("self",))
        "self = x",                # pow_scalar saves its input
    ])
    (leaf,) = by_label(nodes, "x")
    assert nodes[leaf]["fillcolor"] == "lightblue"
    saved = [k for k, a in nodes.items() if a["label"].startswith("self")]
    assert all(nodes[k]["fillcolor"] == "orange" for k in saved)
    assert all(any(e[0] == k and e[2].get("dir") == "none" for e in edges) for k in saved)


def test_record_numbers_match_the_tape_listing():
    x, y, z = article_000()
    nodes, _ = parse(make_dot(z, params={"x": x}).source)
    listing = tape_listing(z, {"x": x})
    assert listing == str(torch.tape(z, names={id(x): "x"}))
    code = [ln.split(" # ")[0].strip() for ln in listing.splitlines()]
    fns = [a["label"].split("\n") for a in nodes.values() if "Backward" in a["label"]]
    assert sorted(f[1] for f in fns) == sorted(code)
    for name, line in fns:
        n = int(line[1:line.index(":")])
        assert listing.splitlines()[n].rstrip().endswith("# " + name)
    # the global record behind each box is its tooltip, and grad_fn.record_index says the same
    (sin_id,) = by_label(nodes, "SinBackward0")
    assert nodes[sin_id]["tooltip"] == f"record_index {z.grad_fn.record_index}"
    (pow_id,) = by_label(nodes, "PowBackward0")
    assert nodes[pow_id]["tooltip"] == f"record_index {y.grad_fn.record_index}"


def test_edges_follow_next_functions():
    x, y, z = article_000()
    nodes, edges = parse(make_dot(z, params={"x": x}).source)
    graph_edges = {(nodes[a]["label"].split("\n")[0], nodes[b]["label"].split("\n")[0])
                   for a, b, at in edges if at.get("dir") != "none"}

    expected, stack = set(), [z.grad_fn]
    while stack:
        n = stack.pop()
        for u, _ in n.next_functions:
            if u is None:
                continue
            expected.add((u.name().replace("torch::autograd::", ""), n.name()))
            stack.append(u)
            if hasattr(u, "variable"):
                expected.add(("x", "AccumulateGrad"))
    expected.add(("SinBackward0", " (2)"))   # grad_fn -> the output box
    assert graph_edges == expected
    acc = z.grad_fn.next_functions[0][0].next_functions[0][0]
    assert acc.variable is x


def test_params_forms_and_names():
    x, y, z = article_000()
    a = make_dot(z, params={"x": x}).source
    assert make_dot(z, params={id(x): "x"}).source == a      # torch.tape's form
    x._name = "x"
    assert make_dot(z).source == a                            # Tensor._name
    x2, y2, z2 = article_000()
    nodes, _ = parse(make_dot(z2).source)                     # unnamed: as the tape listing names it
    (leaf,) = [v["label"] for v in nodes.values() if v.get("fillcolor") == "lightblue"]
    assert leaf.split("\n")[0] in tape_listing(z2)
    nodes, _ = parse(make_dot(z2, params={"x": x2, "z": z2}).source)
    assert any(v["label"] == "z\n (2)" and v["fillcolor"] == "darkolivegreen1" for v in nodes.values())


def test_freed_records_after_backward():
    x, y, z = article_000()
    z.backward(torch.ones_like(z))
    nodes, _ = parse(make_dot(z, params={"x": x}).source)
    saved = [a for a in nodes.values() if a["label"].startswith("self")]
    assert len(saved) == 2 and all(a["label"].endswith("[freed]") for a in saved)
    assert "[freed]" in tape_listing(z, {"x": x})


def test_leaf_tuple_and_network():
    x, y, z = article_000()
    nodes, _ = parse(make_dot(x, params={"x": x}).source)
    assert [a["label"] for a in nodes.values()] == ["x\n (2)"]
    nodes, edges = parse(make_dot((y, z), params={"x": x}).source)
    assert len(by_label(nodes, "PowBackward0")) == 1          # shared by both outputs
    assert sum(1 for a in nodes.values() if a.get("fillcolor") == "darkolivegreen1") == 2
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    out = net(torch.randn(2, 3))
    params = dict(net.named_parameters())
    nodes, edges = parse(make_dot(out, params=params).source)
    leaf_labels = sorted(a["label"].split("\n")[0] for a in nodes.values() if a.get("fillcolor") == "lightblue")
    assert leaf_labels == sorted(params)
    assert len(by_label(nodes, "TanhBackward0")) == 1


def test_graph_and_tape_object():
    x, y, z = article_000()
    gt = graph_and_tape(z, {"x": x})
    assert repr(gt) == tape_listing(z, {"x": x})
    assert gt._repr_mimebundle_()["text/vnd.graphviz"] == make_dot(z, {"x": x}).source
    g = make_dot(z, {"x": x})
    assert re.fullmatch(r"<tapegrad.viz.Graph: 7 nodes, 6 edges>", repr(g))


# ----- rendering ---------------------------------------------------------------------------
def _renderer_or_skip():
    try:
        return viz.renderer()
    except RuntimeError as e:
        pytest.skip(str(e))


def test_render_svg_and_png(tmp_path):
    _renderer_or_skip()
    x, y, z = article_000()
    g = make_dot(z, params={"x": x})
    svg = g.render("svg")
    assert b"<svg" in svg and b"SinBackward0" in svg and b"PowBackward0" in svg
    png = g.render("png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert g._repr_svg_().lstrip().startswith(("<?xml", "<svg"))
    html = g._repr_html_()
    assert "<svg" in html and "<?xml" not in html
    for ext, magic in (("svg", b"<"), ("png", b"\x89PNG"), ("dot", b"digraph")):
        p = g.save(tmp_path / f"z.{ext}")
        assert open(p, "rb").read().lstrip().startswith(magic)
    with pytest.raises(ValueError):
        g.save(tmp_path / "z.pdf")
    assert "<pre" in graph_and_tape(z, {"x": x})._repr_html_()


def test_graphviz_pure_is_found_next_to_the_interpreter(monkeypatch, tmp_path):
    monkeypatch.delenv("TAPEGRAD_DOT", raising=False)
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)     # no dot, nothing on PATH
    fake = tmp_path / "bin"
    fake.mkdir()
    prog = fake / "graphviz-pure"
    prog.write_text("#!/bin/sh\necho '<svg/>'\n")
    prog.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake / "python"))
    assert viz.renderer() == str(prog)
    prog.unlink()
    with pytest.raises(RuntimeError, match="pip install graphviz-pure"):
        viz.renderer()
    x, y, z = article_000()
    with pytest.raises(RuntimeError, match="graphviz-pure"):
        make_dot(z).render("svg")
    assert make_dot(z).source.startswith("digraph")               # the DOT text needs no renderer


def test_real_dot_on_path_comes_first(monkeypatch):
    monkeypatch.delenv("TAPEGRAD_DOT", raising=False)
    monkeypatch.setattr(viz.shutil, "which", lambda name: "/opt/graphviz/bin/dot" if name == "dot" else None)
    assert viz.renderer() == "/opt/graphviz/bin/dot"
