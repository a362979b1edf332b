"""Maps the repository's top-level folders into the single import namespace ``anydecode``.

The layout (DESIGN.md) keeps ``algorithms/``, ``plugins/``, ``kernels/`` and ``conformance/`` at the repository
root; they are installed as ``anydecode.algorithms`` and so on, so nothing generic lands at the top level of
site-packages.
"""

from setuptools import find_packages, setup

PACKAGE_ROOTS = {
    "anydecode": "anydecode",
    "anydecode.algorithms": "algorithms",
    "anydecode.plugins": "plugins",
    "anydecode.kernels": "kernels",
    "anydecode.conformance": "conformance",
}

packages = []
for prefix, folder in PACKAGE_ROOTS.items():
    packages.append(prefix)
    packages.extend(f"{prefix}.{sub}" for sub in find_packages(folder))

setup(packages=packages, package_dir=PACKAGE_ROOTS, package_data={"": ["*.lark", "*.gbnf", "*.json", "*.jsonl"]})
