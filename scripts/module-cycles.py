#!/usr/bin/env python3
"""Import cycles between the server's modules (src/), from `crate::` paths.

Reports the strongly connected components of the module graph twice: between
modules (files) and between top-level modules (a directory counts as one).
Code after a file's `#[cfg(test)]` and comments are left out. Exits 1 when
either graph has a cycle.

    python3 scripts/module-cycles.py
"""
import collections
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(path):
    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return "::".join(parts)


def code(text):
    cut = text.find("#[cfg(test)]")
    text = text if cut < 0 else text[:cut]
    return re.sub(r"//[^\n]*", "", text)


def cycles(edges):
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
                found.append(sorted(scc))

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def main():
    mods = {}
    for d, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".rs"):
                with open(os.path.join(d, f)) as fh:
                    mods[module_of(os.path.join(d, f))] = code(fh.read())
    edges = collections.defaultdict(set)
    path = re.compile(r"crate::((?:[a-z_0-9]+::)*[a-z_0-9]+)(?:::\{([^;]*?)\})?", re.S)
    for m, text in mods.items():
        if m in ("", "main") or m.endswith("::tests") or m == "session::tests":
            continue
        for hit in path.finditer(text):
            names = [hit.group(1)]
            for item in re.split(r"[,\s]+", hit.group(2) or ""):
                item = item.strip("{}").split("::")[0]
                if item and item != "self":
                    names.append(hit.group(1) + "::" + item)
            for name in names:
                parts = name.split("::")
                while parts and "::".join(parts) not in mods:
                    parts.pop()
                t = "::".join(parts)
                if t and t != m and not m.startswith(t + "::") and not t.startswith(m + "::"):
                    edges[m].add(t)
    top = collections.defaultdict(set)
    for a, bs in edges.items():
        for b in bs:
            if a.split("::")[0] != b.split("::")[0]:
                top[a.split("::")[0]].add(b.split("::")[0])
    bad = False
    for what, graph in (("modules", edges), ("top-level modules", top)):
        found = cycles(graph)
        print(f"{what}: {len(found)} cycle(s)" + "".join(f"\n  {c}" for c in found))
        bad |= bool(found)
    sys.exit(1 if bad else 0)


main()
