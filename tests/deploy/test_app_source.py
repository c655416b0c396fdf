"""The app copy that tests and benchmarks run packs into the same FAB as the project, less what the app never
imports."""

import io
import zipfile

from flwr.cli.build import build_fab_from_disk

from deploy.processes import APP_PARTS, PROJECT, app_source


def _members(app) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(app))) as fab:
        return {name: fab.read(name) for name in fab.namelist() if not name.startswith(".info/")}


def test_the_copy_packs_the_projects_app_files_unchanged():
    project, copy = _members(PROJECT), _members(app_source())
    app_files = {name: data for name, data in project.items() if name.split("/")[0] in APP_PARTS}
    assert copy == app_files
    assert {"server_app/app.py", "client_app/app.py", "common/models.py", "pyproject.toml"} <= copy.keys()
    # What stays behind is what the ServerApp and ClientApp never import.
    assert {name.split("/")[0] for name in project.keys() - copy.keys()} <= {
        "benchmarks",
        "deploy",
        "docs",
        "tests",
        "docker-compose.yml",
        # The project's own papers: licence, history, how to contribute, cite and report.
        "LICENSE",
        "CHANGELOG.md",
        "CONTRIBUTING.md",
        "CITATION.cff",
        "SECURITY.md",
        # The documentation site's configuration.
        "mkdocs.yml",
        "mkdocs_hooks.py",
    }
