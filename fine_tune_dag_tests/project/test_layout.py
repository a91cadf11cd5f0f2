"""The package's shape, checked from its source: no import cycles, core stages that depend one way, asset modules
that borrow only assets from each other, torch-free stages and a code location that never load torch, SQL only in
the store layer, table writes only through store functions, and every core setting reachable from Dagster config."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import tomllib

import fine_tune_dag
from fine_tune_dag.assets import config as stage_config

PACKAGE = Path(fine_tune_dag.__file__).parent
SQL = re.compile(r"\b(SELECT\s|INSERT\s+INTO\b|DELETE\s+FROM\b|UPDATE\s+\w+\s+SET\b|CREATE\s+TABLE\b)")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def imported_names(name: str) -> list[tuple[str, list[str]]]:
    """(module, names) of every `import`/`from … import` in the module that names a fine_tune_dag module,
    wherever it stands (inside functions too), except under `if TYPE_CHECKING:`."""
    found = []
    typing_only = {
        id(child)
        for node in ast.walk(TREES[name])
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in ast.walk(node)
    }
    for node in ast.walk(TREES[name]):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fine_tune_dag"):
            submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
            found.append((node.module, [a.name for a in node.names]))
            found += [(m, []) for m in submodules]
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("fine_tune_dag")]
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: {m for m, _ in imported_names(name) if m in MODULES and m != name} for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_package():
    assert find_cycle(import_graph()) is None


def test_sft_and_dpo_share_only_the_loop_module():
    graph = import_graph()
    sft, dpo = "fine_tune_dag.core.training.sft", "fine_tune_dag.core.training.dpo"
    assert dpo not in graph[sft] and sft not in graph[dpo]
    assert "fine_tune_dag.core.training.loop" in graph[sft] & graph[dpo]


def defines_assets(name: str) -> bool:
    decorators = {"asset", "multi_asset", "asset_check"}
    return any(
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and any(ast.unparse(d).split("(")[0].split(".")[-1] in decorators for d in node.decorator_list)
        for node in ast.walk(TREES[name])
    )


ASSET_MODULES = sorted(n for n in MODULES if n.startswith("fine_tune_dag.assets.") and defines_assets(n))


def test_asset_modules_are_found():
    assert {"fine_tune_dag.assets.training", "fine_tune_dag.assets.evaluation", "fine_tune_dag.assets.sweep"} <= set(
        ASSET_MODULES
    )


@pytest.mark.parametrize("name", ASSET_MODULES)
def test_an_asset_module_takes_only_assets_from_another(name):
    """Shared helpers live in core/workflows (or assets/common, assets/config), never in a stage module."""
    for module, names in imported_names(name):
        if module in ASSET_MODULES and module != name:
            imported = importlib.import_module(module)
            borrowed = [n for n in names if not isinstance(getattr(imported, n), dg.AssetsDefinition)]
            assert not borrowed, f"{name} imports {borrowed} from {module}: move them out of the asset module"


def test_core_never_imports_dagster():
    for name in MODULES:
        if name.startswith("fine_tune_dag.core"):
            imports = [a.name for n in ast.walk(TREES[name]) if isinstance(n, ast.Import) for a in n.names]
            imports += [n.module or "" for n in ast.walk(TREES[name]) if isinstance(n, ast.ImportFrom)]
            assert not [m for m in imports if m.split(".")[0] == "dagster"], name


# core's stages, lowest first: a subpackage imports only those before it (workflows, the Dagster-free steps the
# assets call, sits on top). Five of them never load torch.
STAGES = (
    "common",
    "ingest",
    "synthesis",
    "models",
    "retrieval",
    "dataset",
    "store",
    "privacy",
    "export",
    "generation",
    "llm",
    "training",
    "evaluation",
    "serving",
    "workflows",
)
TORCH_FREE_STAGES = ("common", "ingest", "synthesis", "dataset", "store", "privacy")


def stage_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 3 and parts[:2] == ["fine_tune_dag", "core"] else None


def test_every_core_module_is_in_a_stage():
    core = [n for n in MODULES if n.startswith("fine_tune_dag.core.") and n.count(".") >= 3]
    assert {stage_of(n) for n in core} == set(STAGES)
    loose = [n for n in MODULES if n.count(".") == 2 and n.startswith("fine_tune_dag.core.") and n.split(".")[2] not in STAGES]
    assert loose == []


def stage_imports_against_the_order() -> list[str]:
    wrong = []
    for name in MODULES:
        mine = stage_of(name)
        for module, _ in imported_names(name):
            theirs = stage_of(module) if module.count(".") >= 3 else None
            if mine and theirs and theirs != mine and STAGES.index(theirs) > STAGES.index(mine):
                wrong.append(f"{name} imports {module}")
    return wrong


def test_stages_depend_one_way():
    assert stage_imports_against_the_order() == []


def test_the_order_check_sees_an_import_against_it(monkeypatch):
    tree = ast.parse("from fine_tune_dag.core.evaluation.report import report_markdown")
    monkeypatch.setitem(TREES, "fine_tune_dag.core.store.registry", tree)
    assert stage_imports_against_the_order() == [
        "fine_tune_dag.core.store.registry imports fine_tune_dag.core.evaluation.report"
    ]


LIGHT_MODULES = sorted(n for n in MODULES if stage_of(n) in TORCH_FREE_STAGES)


def test_torch_free_stages_never_import_torch():
    code = (
        "import importlib, sys\n"
        f"for name in {LIGHT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)\n"
        "    assert not heavy, f'{name} imports {heavy}'\n"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert {"fine_tune_dag.core.synthesis.chunking", "fine_tune_dag.core.common.llm_types"} <= set(LIGHT_MODULES)


def test_loading_the_code_location_never_imports_torch():
    """Every run process loads the definitions first: torch there cost each one seconds before it did anything.
    The time is printed for the record (`-s`); the assertion is that torch, transformers and peft stay out."""
    code = (
        "import sys, time\n"
        "started = time.perf_counter()\n"
        "from fine_tune_dag.definitions import defs\n"
        "assert len(defs().resolve_asset_graph().get_all_asset_keys()) > 10\n"
        "print(f'{time.perf_counter() - started:.2f}')\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    print(f"code location loaded in {finished.stdout.strip()} s")


def sql_strings(name: str) -> list[str]:
    return [
        node.value
        for node in ast.walk(TREES[name])
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value)
    ]


def test_the_sql_finder_finds_sql():
    assert SQL.search("SELECT * FROM adapters") and SQL.search("DELETE FROM rejected_notes WHERE x")
    assert not SQL.search("Select the better answer")


def test_sql_lives_only_in_the_store_layer():
    outside = {n: sql_strings(n) for n in MODULES if not n.startswith("fine_tune_dag.core.store")}
    assert {n: s for n, s in outside.items() if s} == {}
    assert sql_strings("fine_tune_dag.core.store.registry")  # the finder does see the store's SQL


TABLE_WRITES = ("insert_rows", "replace_rows")
# The one module left that names the tables it writes: dataset_splits, reworked apart from this change. Remove it
# here when its writes become store functions (the test below fails once it has none).
KNOWN_TABLE_WRITERS = {"fine_tune_dag.assets.dataset"}


def table_writes(name: str) -> list[str]:
    """`insert_rows("<table>", …)` and `replace_rows("<table>", …)` calls that name their table literally."""
    return [
        f"{node.func.attr}({node.args[0].value!r})"
        for node in ast.walk(TREES[name])
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in TABLE_WRITES
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ]


def test_the_table_write_finder_finds_a_write(monkeypatch):
    tree = ast.parse('db.insert_rows("edge_cases", rows)\nwarehouse.replace_rows("passages", rows, {})\nf(x)')
    monkeypatch.setitem(TREES, "fine_tune_dag.assets.edge_cases", tree)
    assert table_writes("fine_tune_dag.assets.edge_cases") == ["insert_rows('edge_cases')", "replace_rows('passages')"]


def test_every_table_write_is_a_store_function():
    """A table is written only by a named function in core/store, so what writes it is found in one place."""
    outside = {n: table_writes(n) for n in MODULES if not n.startswith("fine_tune_dag.core.store")}
    assert {n: w for n, w in outside.items() if w and n not in KNOWN_TABLE_WRITERS} == {}
    assert all(outside[n] for n in KNOWN_TABLE_WRITERS), "a known exception writes no table now: remove it"
    assert table_writes("fine_tune_dag.core.store.registry")  # the finder does see the store's writes


CONFIGS = [
    value
    for value in vars(stage_config).values()
    if isinstance(value, type) and issubclass(value, stage_config.SettingsConfig) and hasattr(value, "SETTINGS")
]


def test_every_settings_dataclass_has_a_config():
    covered = {config.SETTINGS.__name__ for config in CONFIGS}
    assert covered >= {
        "TrainingSettings",
        "DpoSettings",
        "SynthesisSettings",
        "ChunkingSettings",
        "EvaluationSettings",
        "PreferenceSettings",
    }


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_setting_is_configurable_or_excluded_with_a_reason(config):
    configurable = set(config.model_fields)
    for spec in dataclasses.fields(config.SETTINGS):
        assert spec.name in configurable or config.EXCLUDED.get(spec.name), (
            f"{config.SETTINGS.__name__}.{spec.name} is neither in {config.__name__} nor excluded with a reason"
        )


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_config_defaults_give_the_settings_defaults(config):
    assert config().settings() == config.SETTINGS()


def test_a_configured_value_reaches_the_settings():
    settings = stage_config.TrainingConfig(weight_decay=0.01, max_grad_norm=0.5, target_modules=["q_proj"]).settings()
    assert (settings.weight_decay, settings.max_grad_norm, settings.target_modules) == (0.01, 0.5, ("q_proj",))


def test_test_stand_ins_are_not_in_the_product_package():
    assert not [n for n in MODULES if n.split(".")[-1] in ("testing", "gemini_stub")]


def declared_distributions() -> tuple[set[str], set[str]]:
    """Distributions the project declares: required, and those of its extras."""
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=!\[ ;@]", r)[0].lower().replace("_", "-") for r in requirements}

    extras = set().union(*(names(r) for r in project["optional-dependencies"].values()))
    return names(project["dependencies"]), extras


def test_every_third_party_import_is_a_declared_dependency():
    """Required for module-level imports; an extra suffices for an import made only inside a function (the
    optional k8s executor)."""
    required, extras = declared_distributions()
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for name, tree in TREES.items():
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "fine_tune_dag":
                    continue
                provided = {d.lower().replace("_", "-") for d in distributions.get(top, [])}
                allowed = required if id(node) in top_level else required | extras
                if not provided & allowed:
                    missing.append(f"{name}: {module} ({', '.join(sorted(provided)) or 'not installed'})")
    assert missing == []
