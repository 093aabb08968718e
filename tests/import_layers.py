"""A contract type for import-linter that its built-in types cannot express.

The CLI entry (``plugbus/__main__.py``) and the test kit may use ``plugbus.api``, but only from
inside a function: the kit is loaded into every pytest session of a project that installs
plugbus (its ``pytest11`` entry point), and importing plugbus must not start the web stack.
import-linter's ``forbidden`` contract counts an import inside a function like any other, and
grimp's ``is_lazy`` flag marks only PEP 810 ``lazy import`` statements, so this contract reads
the importing module's source to tell the two apart. pyproject.toml names it under
``[tool.importlinter] contract_types``; tests/test_import_layers.py proves it can fail.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

from grimp import ImportGraph
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.domain.contract import ContractCheck


class ImportTimeForbiddenContract(ForbiddenContract):
    """A ``forbidden`` contract over the imports that run when a module is imported.

    An import between two modules is left out when every statement behind it sits inside a
    function (or is a PEP 810 ``lazy import``); one at module or class level keeps it in.
    Options are those of ``forbidden``.
    """

    type_name = "forbidden_at_import_time"

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        deferred = []
        for importer in graph.modules:
            for imported in graph.find_modules_directly_imported_by(importer):
                details = graph.get_import_details(importer=importer, imported=imported)
                if details and all(
                    d["is_lazy"] or d["line_number"] in _deferred_import_lines(importer)
                    for d in details
                ):
                    deferred.append((importer, imported))
        # import-linter hands each contract its own copy of the graph, so removing is safe.
        for importer, imported in deferred:
            graph.remove_import(importer=importer, imported=imported)
        return super().check(graph, verbose)


@functools.cache
def _deferred_import_lines(module: str) -> frozenset[int]:
    """First lines of the import statements of ``module`` that sit inside a function."""
    path = _source_path(module)
    if path is None:
        return frozenset()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return frozenset(
        inner.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for inner in ast.walk(node)
        if isinstance(inner, ast.Import | ast.ImportFrom)
    )


def _source_path(module: str) -> Path | None:
    # Resolved from the top-level package's directory rather than with find_spec(module),
    # which would import (run) every parent package on the way.
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations)), *rest)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None
