"""Print kzoo's import cycles and the imports that cross from one folder of the package to another.

The graph is read from the source with ``ast`` (nothing is imported): an edge ``a -> b`` for
every ``import`` of a kzoo module ``b`` in module ``a``. Module-level imports are the ones that
run when ``a`` is imported; function-level imports run later, but a cycle through them is a
knot all the same, so both are counted. Imports under ``if TYPE_CHECKING:`` are left out.

Usage: ``python scripts/tools/import_graph.py [--root kzoo] [--all-edges]``. Prints the number
of module-level cycles (and the cycles), the number of cycles counting function-level imports
too, then the cross-folder imports grouped by folder pair. Exits 1 when there is a cycle.
"""

import argparse
import ast
import collections
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def module_files(package_dir):
    """``{dotted module name: path}`` of every ``.py`` file under ``package_dir``."""
    base = os.path.dirname(os.path.abspath(package_dir))
    modules = {}
    for folder, _, files in os.walk(package_dir):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            dotted = os.path.relpath(path, base)[:-3].replace(os.sep, ".")
            if dotted.endswith(".__init__"):
                dotted = dotted[: -len(".__init__")]
            modules[dotted] = path
    return modules


def _type_checking_nodes(tree):
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    return skipped


def _module_level(tree):
    """ids of the import nodes that run when the module is imported (not inside a def)."""
    top = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                top.add(id(child))
            visit(child)

    visit(tree)
    return top


def _resolve(name, modules):
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports(modules, package):
    """``[(importer, imported, module_level)]`` for every import of a module of ``package``."""
    edges = []
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        skipped = _type_checking_nodes(tree)
        top = _module_level(tree)
        is_package = path.endswith("__init__.py")
        for node in ast.walk(tree):
            if id(node) in skipped or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = module.split(".") if is_package else module.split(".")[:-1]
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    resolved = _resolve(target, modules)
                    if resolved and resolved != module:
                        edges.append((module, resolved, id(node) in top))
    return edges


def cycles(edges):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    graph = collections.defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
        graph.setdefault(b, set())
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def folder(module, depth=2):
    """The folder a module belongs to: its first ``depth`` dotted parts (``kzoo.models``)."""
    return ".".join(module.split(".")[:depth])


def cross_folder(edges, depth=2):
    """``{(from folder, to folder): sorted [(importer, imported)]}`` for edges between folders."""
    crossing = collections.defaultdict(set)
    for a, b, _ in edges:
        fa, fb = folder(a, depth), folder(b, depth)
        if fa != fb:
            crossing[(fa, fb)].add((a, b))
    return {k: sorted(v) for k, v in sorted(crossing.items())}


def report(package_dir, all_edges=False, out=sys.stdout):
    """Print the report; returns the number of cycles (module-level and function-level)."""
    package = os.path.basename(os.path.abspath(package_dir))
    modules = module_files(package_dir)
    edges = imports(modules, package)
    top_cycles = cycles([(a, b) for a, b, top in edges if top])
    all_cycles = cycles([(a, b) for a, b, _ in edges])
    print(f"{len(modules)} modules, {len(edges)} imports of {package} modules", file=out)
    print(f"module-level import cycles: {len(top_cycles)}", file=out)
    for cycle in top_cycles:
        print("  " + " <-> ".join(cycle), file=out)
    print(f"cycles counting function-level imports too: {len(all_cycles)}", file=out)
    for cycle in all_cycles:
        print("  " + " <-> ".join(cycle), file=out)
    print("cross-folder imports (from -> to: count):", file=out)
    for (fa, fb), pairs in cross_folder(edges).items():
        print(f"  {fa} -> {fb}: {len(pairs)}", file=out)
        if all_edges:
            for a, b in pairs:
                print(f"      {a} -> {b}", file=out)
    return len(top_cycles), len(all_cycles)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.path.join(ROOT, "kzoo"), help="package directory")
    parser.add_argument(
        "--all-edges", action="store_true", help="list every cross-folder import, not counts"
    )
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.root, "__init__.py")):
        parser.error(f"--root {args.root!r} is not a package directory (no __init__.py)")
    top, every = report(args.root, all_edges=args.all_edges)
    return 1 if top or every else 0


if __name__ == "__main__":
    sys.exit(main())
