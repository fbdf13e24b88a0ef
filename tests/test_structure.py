"""The layout holds: no import circles among the top-level modules (imports inside functions
counted), no module over 500 lines, one epoch loop, and the names Uni-Sign users import."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = {os.path.splitext(os.path.basename(p))[0]: p for p in glob.glob(os.path.join(ROOT, "*.py"))}


def imported_modules(path):
    """Top-level project modules a file imports anywhere in it (functions included)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(MODULES)


def test_no_import_circles():
    graph = {name: imported_modules(path) - {name} for name, path in MODULES.items()}
    state, circles = {}, []

    def visit(name, trail):
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                circles.append(trail[trail.index(other):] + [other])
            elif other not in state:
                visit(other, trail + [other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, circles


def test_no_module_over_500_lines():
    long = {name: n for name, path in MODULES.items()
            if (n := sum(1 for _ in open(path, encoding="utf-8"))) > 500}
    assert not long, long


def test_one_epoch_loop():
    loops = [name for name, path in MODULES.items()
             if "for epoch in range(" in open(path, encoding="utf-8").read()]
    assert loops == ["fine_tuning"]


def test_top_level_holds_the_product():
    assert not {"demo_data", "demo_news", "demo_signing", "tiny_mt5", "cslr"} & set(MODULES)
    for name in ("fine_tuning", "pretraining", "models", "stgcn_layers", "datasets", "config",
                 "SLRT_metrics"):
        assert name in MODULES


def test_names_uni_sign_users_import():
    import config
    import datasets
    import models
    import SLRT_metrics
    import utils
    for module, names in ((datasets, ("load_part_kp", "read_pose", "S2T_Dataset")),
                          (models, ("Uni_Sign",)), (utils, ("get_args_parser",)),
                          (config, ("resolve_paths",)),
                          (SLRT_metrics, ("translation_performance", "wer_list"))):
        for name in names:
            assert callable(getattr(module, name)), f"{module.__name__}.{name}"
