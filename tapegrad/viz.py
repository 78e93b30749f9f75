"""Pictures of a tensor's history, like torchviz's ``make_dot``.

    import tapegrad as torch
    from tapegrad.viz import make_dot, tape_listing

    x = torch.tensor([1.0, 2.0], requires_grad=True)
    z = torch.sin(x ** 2)
    g = make_dot(z, params={"x": x})
    g.save("z.svg")                # or .png; g.source is the DOT text
    print(tape_listing(z, {"x": x}))

The picture is drawn from the same objects PyTorch users inspect: it starts at
``t.grad_fn`` and follows ``next_functions`` (tapegrad's façade over the tape,
``tapegrad/autograd/graph.py``). Each grad_fn box also shows its tape record,
numbered as ``torch.tape(t)`` numbers it (``%1: f32[2] = sin %0``), so the
picture and the listing can be read side by side. Blue boxes are leaves (with
their ``AccumulateGrad`` node), orange boxes the values a backward rule reads
(the op table's ``saves`` column: ``self``, ``other``, ``result``...), the green
box is the output. After ``backward()`` (without ``retain_graph=True``) the
records are freed and their saved values are drawn as ``[freed]``.

Rendering needs no system package: a real Graphviz ``dot`` on PATH is used
when there is one, otherwise the ``graphviz-pure`` program that
``pip install graphviz-pure`` puts next to the Python executable.
"""
import html
import os
import re
import shutil
import subprocess
import sys

__all__ = ["Graph", "GraphAndTape", "graph_and_tape", "make_dot", "renderer", "tape_listing"]

_NODE_ATTR = dict(style="filled", shape="box", align="left", fontsize="10", ranksep="0.1",
                  height="0.2", fontname="Courier")
_LEAF, _SAVED, _OUT, _FN, _FREED = "lightblue", "orange", "darkolivegreen1", "lightgrey", "white"
PNG_DPI = 144          # saved PNGs: twice Graphviz's 72 dpi, sharp on high-density screens
INSTALL_HINT = ("no Graphviz renderer found. Install the one that needs no system package with "
                "`pip install graphviz-pure` (into the Python that runs tapegrad: "
                f"`{sys.executable} -m pip install graphviz-pure`), or put Graphviz's `dot` on PATH. "
                "The DOT text is available without a renderer as Graph.source.")


# ----- names and the listing ----------------------------------------------------------------
def _id_names(params):
    """params as torchviz takes it ({name: tensor}, e.g. dict(model.named_parameters())) or as
    torch.tape takes it ({id(tensor): name}) -> {id(tensor): name}."""
    if not params:
        return {}
    out = {}
    for k, v in params.items():
        if isinstance(k, str):
            out[id(v)] = k
        else:
            out[k] = v
    return out


def _roots(t):
    ts = list(t) if isinstance(t, (tuple, list)) else [t]
    from .tensor import Tensor
    for v in ts:
        if not isinstance(v, Tensor):
            raise TypeError(f"make_dot() expects a Tensor or a tuple of Tensors, got {type(v).__name__}")
    return ts


def _listing(roots, names):
    """(lines, {global record index: listing number}) for the records behind `roots`, numbered
    from %0 exactly as ``print(torch.tape(t))`` numbers a single tensor's history."""
    from .tape.printer import _history, _pad, lines
    keep = set()
    for t in roots:
        if t._rec >= 0:
            keep |= _history(t._rec)
    if not keep:
        return [], {}
    ls = [ln for ln in lines(min(keep), max(keep) + 1, names) if int(ln[1:ln.index(":")]) in keep]
    order = {g: i for i, g in enumerate(sorted(keep))}
    ls = [re.sub(r"%(\d+)", lambda m: f"%{order.get(int(m.group(1)), m.group(1))}", ln) for ln in ls]
    return [_pad(ln) for ln in ls], order


def tape_listing(t, params=None):
    """The tape records behind `t` as ``print(torch.tape(t, names))`` prints them (one line a
    record, numbered from %0 like the boxes of ``make_dot(t)``). `params` names leaves:
    ``{"x": x}`` or ``{id(x): "x"}``. A tuple of tensors lists the union of their histories."""
    roots = _roots(t)
    names = _id_names(params)
    if len(roots) == 1:
        from .tape.printer import TapeView
        return str(TapeView(roots[0], names))
    ls, _ = _listing(roots, names)
    return "\n".join(ls) if ls else "(empty tape)"


def _size(t):
    return "(" + ", ".join(str(int(d)) for d in t.shape) + ")"


def _q(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# ----- the graph ----------------------------------------------------------------------------
def make_dot(t, params=None, show_saved=True):
    """A Graphviz picture of the history of `t` (a tensor or a tuple of tensors), like
    torchviz.make_dot: a box per grad_fn node (PyTorch's name and its tape record:
    ``%1: f32[2] = sin %0``), the leaves with their name and shape and their
    AccumulateGrad node, the values each backward rule saves, and edges that follow
    ``next_functions``, drawn from an input to the node that consumes it.

    `params` names leaves: ``{"x": x}`` / ``dict(model.named_parameters())`` (torchviz's
    form) or ``{id(x): "x"}`` (``torch.tape``'s form); a tensor's ``_name`` is used
    otherwise, then ``leaf<slot>`` as in the tape listing."""
    from .autograd.graph import AccumulateGrad, _op_name
    from .ops.table import OPS

    roots = _roots(t)
    names = _id_names(params)
    lines, order = _listing(roots, names)
    text_of = {}          # listing number -> (lhs, rhs, freed)
    for ln in lines:
        code, _, comment = ln.partition(" # ")
        lhs, _, rhs = code.strip().partition(" = ")
        text_of[int(lhs[1:lhs.index(":")])] = (lhs, rhs, "[freed]" in comment)

    out = ["digraph {",
           "\tgraph [size=\"12,12\"]",
           "\tnode [" + " ".join(f"{k}={_q(v)}" for k, v in _NODE_ATTR.items()) + "]"]
    nodes, edges = [], []
    ids = {}              # python id of a Node / leaf tensor -> DOT id
    seen_leaf = {}
    accs = []

    def leaf_name(v):
        nm = names.get(id(v)) or getattr(v, "_name", None)
        if nm:
            return nm
        slot = getattr(v, "_slot", -1)
        return f"leaf{slot}" if slot is not None and slot >= 0 else ""

    def add_leaf(v):
        if id(v) not in seen_leaf:
            k = f"L{len(seen_leaf)}"
            seen_leaf[id(v)] = k
            nm = leaf_name(v)
            nodes.append(f"\t{k} [label={_q((nm + chr(10) if nm else '') + ' ' + _size(v))} "
                         f"fillcolor={_LEAF}]")
        return seen_leaf[id(v)]

    def node_id(n):
        k = ids.get(id(n))
        if k is None:
            if isinstance(n, AccumulateGrad):
                k = f"A{len(accs)}"
                accs.append(k)
            else:
                num = order.get(n.record_index)
                k = f"R{num if num is not None else n.record_index}"
            ids[id(n)] = k
        return k

    held = []             # keep Node objects alive while drawing (their ids must stay unique)
    stack = []
    for v in roots:
        if v.grad_fn is None:          # a leaf (or a tensor without history): one box
            if v.requires_grad:
                add_leaf(v)
            else:
                nodes.append(f"\tT{len(nodes)} [label={_q(' ' + _size(v))} fillcolor={_LEAF}]")
            continue
        stack.append(v.grad_fn)
    visited = set()
    while stack:
        n = stack.pop(0)
        if id(n) in visited:
            continue
        visited.add(id(n))
        held.append(n)
        k = node_id(n)
        if isinstance(n, AccumulateGrad):
            nodes.append(f"\t{k} [label=\"AccumulateGrad\"]")
            lk = add_leaf(n.variable)
            edges.append(f"\t{lk} -> {k}")
            continue
        num = order.get(n.record_index)
        lhs, rhs, freed = text_of.get(num, (f"%{n.record_index}", "", False))
        label = n.name() + "\n" + (f"{lhs} = {rhs}" if rhs else lhs)
        nodes.append(f"\t{k} [label={_q(label)}"
                     + (f" tooltip={_q('record_index ' + str(n.record_index))}" if num is not None else "") + "]")
        if show_saved:
            spec = OPS.get(_op_name(n.record_index) or "")
            operands = rhs.split()[1:] if rhs else []
            for s in (spec.saves if spec is not None else ()):
                if s == "result":
                    what = lhs.split(":")[0]
                else:
                    j = 0 if s == "self" else 1
                    what = operands[j] if j < len(operands) else ""
                sk = f"{k}_{s}"
                lab = f"{s} = {what}" if what else s
                if freed:
                    lab += "\n[freed]"
                nodes.append(f"\t{sk} [label={_q(lab)} fillcolor={_FREED if freed else _SAVED}"
                             + (" style=\"filled,dashed\"" if freed else "") + "]")
                edges.append(f"\t{sk} -> {k} [dir=none]")
        for u, _ in n.next_functions:
            if u is None:
                continue
            held.append(u)
            edges.append(f"\t{node_id(u)} -> {k}")
            stack.append(u)
    for i, v in enumerate(roots):
        if v.grad_fn is None:
            continue
        nm = names.get(id(v)) or getattr(v, "_name", None) or ""
        ok = f"O{i}"
        nodes.append(f"\t{ok} [label={_q((nm + chr(10) if nm else '') + ' ' + _size(v))} fillcolor={_OUT}]")
        edges.append(f"\t{node_id(v.grad_fn)} -> {ok}")
    del held
    return Graph("\n".join(out + nodes + edges + ["}"]) + "\n")


# ----- rendering ----------------------------------------------------------------------------
def renderer():
    """The command that turns DOT into pictures: a real ``dot`` on PATH, else the
    ``graphviz-pure`` program next to sys.executable, else ``graphviz-pure`` on PATH.
    ``TAPEGRAD_DOT`` names another program. Raises RuntimeError when there is none."""
    env = os.environ.get("TAPEGRAD_DOT")
    if env:
        return env
    dot = shutil.which("dot")
    if dot:
        return dot
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    for name in ("graphviz-pure", "graphviz-pure.exe"):
        p = os.path.join(bindir, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    p = shutil.which("graphviz-pure")
    if p:
        return p
    raise RuntimeError(INSTALL_HINT)


def render_dot(source, fmt="svg", dpi=None):
    """Render DOT text to bytes in `fmt` ("svg", "png", ...); `dpi` sets a bitmap's resolution."""
    prog = renderer()
    cmd = [prog, f"-T{fmt}"] + ([f"-Gdpi={dpi}"] if dpi else [])
    try:
        r = subprocess.run(cmd, input=source.encode(), capture_output=True, timeout=120)
    except OSError as e:
        raise RuntimeError(f"could not run {prog}: {e}; {INSTALL_HINT}") from e
    if r.returncode != 0 or not r.stdout:
        raise RuntimeError(f"{prog} -T{fmt} failed (exit {r.returncode}): {r.stderr.decode(errors='replace')}")
    return r.stdout


def _svg_body(svg):
    """An SVG document without its XML prolog and DOCTYPE, to embed in HTML."""
    i = svg.find("<svg")
    return svg[i:] if i >= 0 else svg


class Graph:
    """DOT text plus rendering: ``.source``, ``.render(fmt) -> bytes``, ``.save(path)``
    (.svg, .png, or .dot/.gv for the text), and inline display in Jupyter."""

    def __init__(self, source):
        self.source = source
        self._cache = {}

    def render(self, fmt="svg", dpi=None):
        """The picture as bytes: "svg", "png" (`dpi`: its resolution, Graphviz's default is 72)."""
        key = (fmt, dpi)
        if key not in self._cache:
            self._cache[key] = render_dot(self.source, fmt, dpi)
        return self._cache[key]

    def save(self, path, dpi=PNG_DPI):
        """Write .svg, .png (at `dpi`) or .dot/.gv (the DOT text), chosen by the extension."""
        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower().lstrip(".")
        if ext in ("dot", "gv"):
            data = self.source.encode()
        elif ext in ("svg", "png"):
            data = self.render(ext, dpi if ext == "png" else None)
        else:
            raise ValueError(f"Graph.save: unknown extension {ext!r} (use .svg, .png, .dot or .gv)")
        with open(path, "wb") as f:
            f.write(data)
        return path

    # Jupyter
    def _repr_svg_(self):
        return self.render("svg").decode()

    def _repr_html_(self):
        return "<div>" + _svg_body(self._repr_svg_()) + "</div>"

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/vnd.graphviz": self.source}     # the DOT text travels with the notebook

    @property
    def node_count(self):
        return len(re.findall(r"^\t(?!graph |node |edge )\w+ \[", self.source, re.M))

    @property
    def edge_count(self):
        return len(re.findall(r"^\t\w+ -> \w+", self.source, re.M))

    def __repr__(self):
        return f"<tapegrad.viz.Graph: {self.node_count} nodes, {self.edge_count} edges>"


class GraphAndTape:
    """The picture next to the tape listing (HTML in Jupyter; the listing as text)."""

    def __init__(self, graph, listing):
        self.graph = graph
        self.listing = listing

    def _repr_html_(self):
        return ('<div style="display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start">'
                f'<div>{_svg_body(self.graph._repr_svg_())}</div>'
                f'<pre style="font-size:90%">{html.escape(self.listing)}</pre></div>')

    def _repr_svg_(self):
        return self.graph._repr_svg_()

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/vnd.graphviz": self.graph.source}

    def __repr__(self):
        return self.listing


def graph_and_tape(t, params=None, show_saved=True):
    """``make_dot(t, params)`` and ``tape_listing(t, params)`` side by side (for notebooks)."""
    return GraphAndTape(make_dot(t, params, show_saved), tape_listing(t, params))
