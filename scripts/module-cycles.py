#!/usr/bin/env python3
"""Fails when a crate's top-level modules depend on each other in a cycle.

For every crate under crates/, each file under src/ belongs to a top-level
module (src/foo.rs and src/foo/** are `foo`; lib.rs and main.rs are the
root, which may name anything). A module depends on another when its code
(not its comments) names `crate::other` or `super::other` from the top level.
Cycles among those edges are printed, and the exit code is 1.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PATH = re.compile(r"\bcrate::(\w+)|^\s*use\s+crate::\{([^}]*)\}", re.M)


def code_of(text):
    """The text without comments and string literals."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def module_of(src, path):
    rel = path.relative_to(src)
    if rel.parts[0] == "bin":
        return None
    name = rel.parts[0].removesuffix(".rs")
    return None if name in ("lib", "main") else name


def edges(src):
    graph = {}
    for path in src.rglob("*.rs"):
        module = module_of(src, path)
        if module is None:
            continue
        text = code_of(path.read_text())
        # `mod tests` of a module may use anything.
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
        names = set()
        for m in PATH.finditer(text):
            if m.group(1):
                names.add(m.group(1))
            else:
                names.update(n.strip().split("::")[0] for n in m.group(2).split(","))
        if path.parent == src:
            for m in re.finditer(r"\bsuper::(\w+)", text):
                names.add(m.group(1))
        graph.setdefault(module, set()).update(
            n for n in names if n and n != module and ((src / f"{n}.rs").exists() or (src / n).is_dir())
        )
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main():
    found = False
    for src in sorted(ROOT.glob("crates/*/src")):
        graph = edges(src)
        for scc in cycles(graph):
            found = True
            crate = src.parent.name
            links = [f"{a} -> {b}" for a in scc for b in sorted(graph[a]) if b in scc]
            print(f"{crate}: modules in a cycle: {', '.join(scc)} ({'; '.join(links)})")
    if found:
        return 1
    print("no module cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
