"""What the device machine has, what the GPU run needs there, and an environment that holds no more.

    python3 benchmarks/device_env.py missing               # the wheels to carry: NAME SPECIFIER per line
    python3 benchmarks/device_env.py closure WHEEL...       # what those wheels need that the device lacks
    python3 benchmarks/device_env.py venv DEST              # a venv of the device list's packages only
    python3 benchmarks/device_env.py fence-table --out FILE [--wheels DIR]   # the import fence's table

The device's distributions are data, benchmarks/device_packages.txt (read from the device tool's
package list, with its source and date). The run's needs are pyproject's runtime dependencies as
they resolve on the device (CPython 3.12, Linux x86_64), less those no step of the plan imports
(NOT_IMPORTED), plus the benchmarks' own (BENCH_NEEDS, with pyproject's dev specifiers).

``venv`` builds the rehearsal's environment from this machine's installed packages without copying
them: a virtual environment without system site-packages whose site-packages folder holds symbolic
links to the distributions the plan needs that are on the device list (and what they need, as far
as the list has it), nothing else. A shared namespace folder (``nvidia/``) is linked member by
member, so a package of another distribution in it (``nvidia/dali``) stays out.

Where this machine's version of a device package needs a distribution the device list lacks (a
newer typer here needs pydantic; the device's needs click), that distribution is linked too, as
"support": the fence lets only its dependants' code import it, never a step's own.

``fence-table`` writes what the import fence (benchmarks/fence/sitecustomize.py) allows: every
top-level module of an allowed distribution (the device list, the carried wheels, the project),
the support modules with who may import them, and every other installed one with its
distribution, which the fence refuses.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DEVICE_LIST = REPO / "benchmarks" / "device_packages.txt"
PROJECT = "resnet-cifar"
# The device's interpreter and platform, for pyproject's and the wheels' environment markers.
DEVICE_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}
# Runtime dependencies that no step of the GPU run imports, and why (the fence checks the claim).
NOT_IMPORTED = {
    "optuna": "only `resnet-cifar sweep` imports it",
    "nvidia-dali-cuda120": "imported lazily; the dali step is optional (skipped and recorded without it)",
}
# What the benchmark steps import beyond the library's own needs (specifiers from pyproject's dev extra).
BENCH_NEEDS = ("pytest", "pytest-benchmark", "torchvision")
# What installing the project from the working tree needs (pip, and the build backend of pyproject).
INSTALL_NEEDS = ("pip", "setuptools", "wheel")


def device_packages(path: Path = DEVICE_LIST) -> dict[str, Version | None]:
    """The device's distributions: {canonical name: version, or None where none was seen}."""
    packages: dict[str, Version | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition(" ")
            packages[canonicalize_name(name)] = Version(version) if version else None
    return packages


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def on_device(requirement: Requirement) -> bool:
    """Whether the requirement's marker holds on the device (no extras)."""
    return requirement.marker is None or requirement.marker.evaluate(DEVICE_MARKERS)


def runtime_needs() -> list[Requirement]:
    """pyproject's runtime dependencies that a step of the GPU run imports on the device."""
    needs = [Requirement(text) for text in pyproject()["dependencies"]]
    return [need for need in needs if on_device(need) and canonicalize_name(need.name) not in NOT_IMPORTED]


def bench_needs() -> list[Requirement]:
    """The benchmark steps' extra needs, with pyproject's dev specifiers."""
    dev = {canonicalize_name(Requirement(text).name): Requirement(text) for text in pyproject()["optional-dependencies"]["dev"]}
    return [dev.get(name, Requirement(name)) for name in BENCH_NEEDS]


def missing(requirements: Iterable[Requirement], device: dict[str, Version | None]) -> list[Requirement]:
    """The requirements the device does not meet: not on its list, or listed at a version outside
    the specifier (a listed package without a version is taken as meeting it; the environment
    check on the device reads the real version)."""
    absent = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name not in device:
            absent.append(requirement)
        elif device[name] is not None and not requirement.specifier.contains(device[name], prereleases=True):
            absent.append(requirement)
    return absent


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """A wheel's Requires-Dist that hold on the device (extras left out)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(item for item in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", item))
        text = archive.read(name).decode()
    found = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.split(":", 1)[1].strip())
            if on_device(requirement):
                found.append(requirement)
    return found


def wheel_name(wheel: Path) -> str:
    return canonicalize_name(wheel.name.split("-", 1)[0])


# ----------------------------------------------------------------------------- the rehearsal's venv


def installed() -> dict[str, metadata.Distribution]:
    """This interpreter's distributions by canonical name, the first on sys.path winning (as imports do)."""
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist)
    return found


def closure(roots: Iterable[str], dists: dict[str, metadata.Distribution], allowed: set[str]) -> tuple[set[str], dict[str, set[str]]]:
    """``roots`` and, recursively, what they require here (markers of this interpreter): the
    installed ones on the ``allowed`` list, and apart, {name: the distributions needing it} for
    those that only this machine's versions of the allowed ones need ("support": e.g. a newer
    typer here needs pydantic, which the device, whose typer needs click, does not have)."""
    wanted: set[str] = set()
    support: dict[str, set[str]] = {}
    todo = [(canonicalize_name(root), "") for root in roots]
    while todo:
        name, needed_by = todo.pop()
        if name not in dists:
            continue
        if name not in allowed:
            if not needed_by:
                continue  # a root the device lacks: it comes as a wheel, or not at all
            known = name in support
            support.setdefault(name, set()).add(needed_by)
            if known:
                continue
        elif name in wanted:
            continue
        else:
            wanted.add(name)
        for text in dists[name].requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append((canonicalize_name(requirement.name), name))
    return wanted, support


def _owned_paths(dist: metadata.Distribution) -> tuple[Path, list[tuple[str, ...]]]:
    """The distribution's site folder and its files' paths in it (scripts outside it left out)."""
    root = Path(dist.locate_file("")).resolve()
    paths = []
    for file in dist.files or []:
        parts = Path(file).parts
        if parts and ".." not in parts:
            paths.append(parts)
    return root, paths


# Folders shared by several distributions sit near the top (nvidia/<package>/...): ownership is
# tracked this deep, and a file under a folder still shared deeper is linked on its own.
SHARED_DEPTH = 3


def link_distributions(names: set[str], dists: dict[str, metadata.Distribution], site: Path) -> list[str]:
    """Symbolic links in ``site`` to the files of the distributions ``names``: each at the shortest
    path that no other installed distribution also owns something under. Returns the links."""
    owners: dict[tuple[Path, tuple[str, ...]], set[str]] = {}
    layouts = {name: _owned_paths(dist) for name, dist in dists.items()}
    for name, (root, paths) in layouts.items():
        for parts in paths:
            for depth in range(1, min(len(parts), SHARED_DEPTH) + 1):
                owners.setdefault((root, parts[:depth]), set()).add(name)
    linked: set[tuple[str, ...]] = set()
    for name in sorted(names):
        root, paths = layouts[name]
        for parts in paths:
            exclusive = (d for d in range(1, min(len(parts), SHARED_DEPTH) + 1) if owners[(root, parts[:d])] <= names)
            prefix = parts[: next(exclusive, len(parts))]
            depth = len(prefix)
            if prefix in linked or any(prefix[:d] in linked for d in range(1, depth)):
                continue
            source = root.joinpath(*prefix)
            if not source.exists():
                continue  # listed in RECORD, not there (e.g. a .pyc never written)
            target = site.joinpath(*prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(source)
            linked.add(prefix)
    return sorted("/".join(prefix) for prefix in linked)


def plan_roots() -> list[str]:
    return [need.name for need in runtime_needs()] + list(BENCH_NEEDS) + list(INSTALL_NEEDS)


def build_venv(dest: Path) -> dict[str, object]:
    """The rehearsal's environment at ``dest`` (see the module notes); returns what it holds."""
    device = device_packages()
    dists = installed()
    names, support = closure(plan_roots(), dists, set(device))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(dest)], check=True)
    site = dest / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    links = link_distributions(names | set(support), dists, site)
    not_installed = sorted(canonicalize_name(root) for root in plan_roots() if canonicalize_name(root) not in names)
    report = {
        "python": str(dest / "bin" / "python3"),
        "distributions": sorted(names),
        "support": {name: sorted(by) for name, by in sorted(support.items())},
        "links": len(links),
        "not_linked": not_installed,
    }
    return report


# ----------------------------------------------------------------------------- the import fence


def fence_table(allowed_dists: set[str], device: set[str], dists: dict[str, metadata.Distribution]) -> dict[str, object]:
    """The import fence's table for every distribution importable here: "allowed" (top-level
    modules of allowed distributions), "support" ({module: {"distribution", "needed_by",
    "importers"}}: what only this machine's versions of the device's packages need, importable
    from their code and its own, from nothing else) and "refused" ({module: distribution})."""
    _, support = closure(device & set(dists), dists, allowed_dists)
    modules_of: dict[str, set[str]] = {}
    owners: dict[str, set[str]] = {}
    for module, names in metadata.packages_distributions().items():
        canonical = {canonicalize_name(name) for name in names}
        owners[module] = canonical
        for name in canonical:
            modules_of.setdefault(name, set()).add(module)
    allowed, supported, refused = set(), {}, {}
    for module, canonical in owners.items():
        if canonical & allowed_dists:
            allowed.add(module)
        elif canonical & set(support):
            names = sorted(canonical & set(support))
            needed_by = sorted(set().union(*(support[name] for name in names)))
            importers = set().union(*(modules_of.get(name, set()) for name in [*names, *needed_by]))
            supported[module] = {"distribution": names[0], "needed_by": needed_by, "importers": sorted(importers)}
        else:
            refused[module] = sorted(canonical)[0]
    # A namespace package shared by allowed and other distributions (nvidia: the CUDA libraries,
    # and DALI): its second-level packages are decided one by one.
    for module, canonical in owners.items():
        if module in allowed and len(canonical) > 1:
            for name in sorted(canonical - allowed_dists):
                for file in dists[name].files or [] if name in dists else []:
                    parts = Path(file).parts
                    if len(parts) > 2 and parts[0] == module:
                        refused.setdefault(f"{module}.{parts[1]}", name)
    return {"allowed": sorted(allowed), "support": dict(sorted(supported.items())), "refused": dict(sorted(refused.items()))}


def carried(wheels: Path | None) -> set[str]:
    return {wheel_name(wheel) for wheel in sorted(wheels.glob("*.whl"))} if wheels and wheels.is_dir() else set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("missing", help="the plan's needs the device lacks, as pip requirements")
    wheel_check = commands.add_parser("closure", help="the carried wheels' needs the device and the wheels lack")
    wheel_check.add_argument("wheels", nargs="*", type=Path)
    venv = commands.add_parser("venv", help="build the rehearsal's environment")
    venv.add_argument("dest", type=Path)
    fence = commands.add_parser("fence-table", help="write the import fence's table")
    fence.add_argument("--out", type=Path, required=True)
    fence.add_argument("--wheels", type=Path, help="the carried wheels (allowed too)")
    args = parser.parse_args(argv)
    device = device_packages()
    if args.command == "missing":
        for requirement in missing([*runtime_needs(), *bench_needs()], device):
            print(f"{requirement.name}{requirement.specifier}")
        return 0
    if args.command == "closure":
        have = set(device) | {wheel_name(wheel) for wheel in args.wheels}
        lacking = {
            f"{requirement.name}{requirement.specifier}"
            for wheel in args.wheels
            for requirement in wheel_requirements(wheel)
            if canonicalize_name(requirement.name) not in have
        }
        print("\n".join(sorted(lacking)))
        return 0
    if args.command == "venv":
        print(json.dumps(build_venv(args.dest), indent=2))
        return 0
    table = fence_table(set(device) | carried(args.wheels) | {PROJECT}, set(device), installed())
    args.out.write_text(json.dumps(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
