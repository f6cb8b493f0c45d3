"""transformers' own common test files, for the transformers version installed here.

transformers publishes its shared test mixins (`ModelTesterMixin`, `ConfigTester`, `ProcessorTesterMixin`,
`ImageProcessingTestMixin`) in the `tests/` folder of its source distribution, not in the wheel. This module downloads
that sdist from the package registry pip uses (`pip download --no-deps --no-binary :all: transformers==<installed>`),
keeps its top-level `tests/*.py` files in a cache outside the repository, and imports them as the package
`transformers_tests`.

The sdist ships only the top-level common files, so the four modules they import from elsewhere in transformers' repo
are replaced by the small stubs in `stubs/` (each says what it stands in for):

| imported as                               | by                              | stub                           |
|-------------------------------------------|---------------------------------|--------------------------------|
| `tests/exporters/test_export.py`          | `test_modeling_common`          | `stub_export.py`               |
| `tests/generation/test_utils.py`          | `test_modeling_common`          | `stub_generation.py`           |
| `tests/utils/test_configuration_utils.py` | `test_configuration_common`     | `stub_configuration_utils.py`  |
| `utils/fetch_hub_objects_for_ci.py`       | processing / image-processing   | `stub_fetch_hub_objects_for_ci.py` |

`tests/__init__.py` is empty in transformers' repo and absent from the sdist: it is written empty (the common files
import each other relatively, and `test_configuration_common` executes that file).

Cache: `$MMAR_TRANSFORMERS_TESTS_CACHE`, else `$XDG_CACHE_HOME/mmar-hf/transformers-tests` (default
`~/.cache/mmar-hf/transformers-tests`), one folder per transformers version. A failed download raises
`UpstreamTestsUnavailable`: the test files turn it into failing tests, never into skips.
"""

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers
from filelock import FileLock

PACKAGE = "transformers_tests"
STUBS_DIR = Path(__file__).resolve().parent / "stubs"
# module name as the common files import it -> the stub that stands in for it
STUBBED_MODULES = {
    f"{PACKAGE}.exporters.test_export": "stub_export.py",
    f"{PACKAGE}.generation.test_utils": "stub_generation.py",
    f"{PACKAGE}.utils.test_configuration_utils": "stub_configuration_utils.py",
    "fetch_hub_objects_for_ci": "stub_fetch_hub_objects_for_ci.py",
}
COMMON_FILES = (
    "__init__.py",  # empty in transformers' repo (tests/ is a package there) but not in the sdist: written empty
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_processing_common.py",
    "test_image_processing_common.py",
)
DOWNLOAD_TIMEOUT_S = 300  # the whole `pip download`; pip itself gives up on a silent index after --timeout
_failure: "UpstreamTestsUnavailable | None" = None  # a failed download is not retried by every test module


class UpstreamTestsUnavailable(RuntimeError):
    """transformers' common test files could not be downloaded or imported."""


def cache_root() -> Path:
    if os.environ.get("MMAR_TRANSFORMERS_TESTS_CACHE"):
        return Path(os.environ["MMAR_TRANSFORMERS_TESTS_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "mmar-hf" / "transformers-tests"


def cached_tests_dir(version: str = transformers.__version__) -> Path:
    """`<cache>/<version>/tests`, holding the sdist's top-level `tests/*.py` (downloaded on first use)."""
    version_dir = cache_root() / version
    tests_dir = version_dir / "tests"
    if all((tests_dir / name).is_file() for name in COMMON_FILES):
        return tests_dir
    version_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(version_dir / ".download.lock")):  # pytest-xdist workers download once
        if all((tests_dir / name).is_file() for name in COMMON_FILES):
            return tests_dir
        with tempfile.TemporaryDirectory(dir=version_dir) as scratch:
            extracted = _download_sdist_tests(version, Path(scratch))
            shutil.rmtree(tests_dir, ignore_errors=True)
            os.replace(extracted, tests_dir)  # atomic: a complete folder or none
    return tests_dir


def _download_sdist_tests(version: str, scratch: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
               "--timeout", "30", "--retries", "2", "--dest", str(scratch), f"transformers=={version}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        raise UpstreamTestsUnavailable(f"`{' '.join(command)}` took over {DOWNLOAD_TIMEOUT_S} s") from error
    archives = sorted(scratch.glob("transformers-*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise UpstreamTestsUnavailable(
            f"could not download transformers=={version}'s source distribution (its tests/ holds the common test "
            f"mixins): `{' '.join(command)}` exited with {result.returncode}:\n{result.stderr.strip()[-2000:]}"
        )
    out = scratch / "tests"
    out.mkdir()
    with tarfile.open(archives[0]) as archive:
        for member in archive.getmembers():
            parts = Path(member.name).parts  # transformers-X/tests/<file>.py: the top-level common files only
            if member.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                (out / parts[2]).write_bytes(archive.extractfile(member).read())
    (out / "__init__.py").write_text("")
    missing = [name for name in COMMON_FILES if not (out / name).is_file()]
    if missing:
        raise UpstreamTestsUnavailable(f"transformers=={version}'s sdist has no tests/{', tests/'.join(missing)}")
    return out


def _register_package(name: str, path: Path | None) -> None:
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(path)] if path is not None else []
        sys.modules[name] = package


def _register_stub(module_name: str, stub_file: str) -> None:
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, STUBS_DIR / stub_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)


def import_common(module: str) -> types.ModuleType:
    """`transformers_tests.<module>` (e.g. "test_modeling_common"), fetching the files first when needed."""
    global _failure
    if _failure is not None:
        raise _failure
    try:
        tests_dir = cached_tests_dir()
    except UpstreamTestsUnavailable as error:
        _failure = error
        raise
    except Exception as error:  # a broken cache, a full disk, a corrupt archive: as loud as a failed download
        _failure = UpstreamTestsUnavailable(f"could not prepare transformers' common tests: {error!r}")
        raise _failure from error
    _register_package(PACKAGE, tests_dir)
    for subpackage in ("exporters", "generation", "utils"):  # absent from the sdist: only the stubs live there
        _register_package(f"{PACKAGE}.{subpackage}", None)
    for module_name, stub_file in STUBBED_MODULES.items():
        _register_stub(module_name, stub_file)
    return importlib.import_module(f"{PACKAGE}.{module}")


class _FailingMixin:
    """Stands in for a common mixin that could not be fetched: every test of the class fails with the reason."""

    upstream_error = ""

    def setUp(self):  # the MMAR test classes call super().setUp() first
        raise UpstreamTestsUnavailable(self.upstream_error)

    def test_transformers_common_tests_are_available(self):
        raise UpstreamTestsUnavailable(self.upstream_error)


def import_common_or_failing(module: str):
    """`import_common(module)`, or, when that failed, a stand-in whose every attribute is a mixin that fails each
    test with the reason, so that the download error shows as failures (never as skips) while the rest of the suite
    still runs."""
    try:
        return import_common(module)
    except UpstreamTestsUnavailable as error:
        failing = type("UpstreamTestsUnavailableMixin", (_FailingMixin,), {"upstream_error": str(error)})
        stand_in = types.ModuleType(f"{PACKAGE}.{module}")
        stand_in.__getattr__ = lambda name: failing
        return stand_in
