"""MkDocs hooks: README.md is the site's home page, and every repository file the pages link to outside docs/ (the
benchmarks' README and results, deploy/nginx/) is part of the site at its repository path, with the links rewritten
to reach it; a link to a folder reaches its README.md, or a generated page that lists its files, as GitHub shows a
folder. So the same Markdown reads right on GitHub and in the site, and a strict build checks those links too.
"""

import posixpath
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parent
DOCS = "docs/"
LISTING = "index.md"  # the page generated for a folder without a README.md
# A Markdown link or image target, relative, with an optional anchor.
LINK = re.compile(r"(\]\()(?![a-z][a-z0-9+.-]*:|#|/)([^)\s#]+)((?:#[^)\s]*)?\))")
# Site path -> repository path of the files mounted from outside docs/ (a listing: the folder's path + LISTING).
MOUNTED: dict[str, str] = {}


def site_path(repo_path: str) -> str:
    """Where a repository file is in the site: docs/<x> at <x>, README.md as the home page, others where they are."""
    if repo_path == "README.md":
        return "index.md"
    return repo_path.removeprefix(DOCS) if repo_path.startswith(DOCS) else repo_path


def repo_path(src_uri: str) -> str:
    return MOUNTED.get(src_uri, DOCS + src_uri)


def _resolve(target: str) -> str | None:
    """The repository file a link to `target` shows: the file, or a folder's README.md or listing; None if none."""
    path = ROOT / target
    if path.is_file():
        return target
    if path.is_dir() and path != ROOT:
        return f"{target}/README.md" if (path / "README.md").is_file() else f"{target}/{LISTING}"
    return None


def _is_listing(repo_file: str) -> bool:
    return posixpath.basename(repo_file) == LISTING and not (ROOT / repo_file).is_file()


def _listing(folder: str) -> str:
    """A folder's page: its files and folders, linked."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in (ROOT / folder).iterdir() if p.name[0] not in "._")
    return f"# {folder}/\n\n" + "".join(f"- [{name}]({name})\n" for name in names)


def _text(repo_file: str) -> str:
    return _listing(posixpath.dirname(repo_file)) if _is_listing(repo_file) else (ROOT / repo_file).read_text("utf-8")


def _targets(repo_file: str) -> list[str]:
    """The repository files a Markdown file links to."""
    folder = posixpath.dirname(repo_file)
    found = []
    for match in LINK.finditer(_text(repo_file)):
        if shown := _resolve(posixpath.normpath(posixpath.join(folder, match.group(2)))):
            found.append(shown)
    return found


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Mount README.md and, following links from every page, each file outside docs/ that a page links to."""
    queue = ["README.md", *(DOCS + f.src_uri for f in files.documentation_pages())]
    seen = set(queue)
    while queue:
        current = queue.pop()
        if current == "README.md" or not current.startswith(DOCS):
            MOUNTED[site_path(current)] = current
            if _is_listing(current):
                files.append(File.generated(config, site_path(current), content=_listing(posixpath.dirname(current))))
            else:
                files.append(File.generated(config, site_path(current), abs_src_path=str(ROOT / current)))
        if current.endswith(".md"):
            for target in _targets(current):
                if target not in seen:
                    seen.add(target)
                    queue.append(target)
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Links written relative to the page's repository file, rewritten relative to its place in the site."""
    source = repo_path(page.file.src_uri)
    folder, here = posixpath.dirname(source), posixpath.dirname(page.file.src_uri) or "."

    def rewrite(match: re.Match) -> str:
        shown = _resolve(posixpath.normpath(posixpath.join(folder, match.group(2))))
        if shown is None:
            return match.group(0)  # left for MkDocs to report
        return match.group(1) + posixpath.relpath(site_path(shown), here) + match.group(3)

    return LINK.sub(rewrite, markdown)
