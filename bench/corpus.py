"""Real English text for benchmarks, from Debian documentation packages.

``get_corpus(megabytes)`` fetches packages with ``apt-get download`` (no
root needed), unpacks them with ``dpkg-deb -x``, keeps the plain-text docs
(HTML stripped to text), and caches the joined text under ``bench/.cache/``.
Files are joined in sorted path order, so the corpus is the same on every
machine with the same package versions. Run it directly to pre-fetch:

    python bench/corpus.py 25
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"

#: (package, file-name suffixes to keep), fetched in order until there is enough text.
PACKAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("python3.11-doc", (".rst.txt",)),  # the reST sources of the Python docs, ~11 MB
    ("perl-doc", (".pod",)),  # ~9 MB
    ("git-doc", (".txt",)),  # asciidoc sources, ~3 MB
    ("postgresql-doc-15", (".html",)),
)


class _TextOnly(HTMLParser):
    """Collects the visible text of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag in ("p", "div", "pre", "li", "tr", "h1", "h2", "h3", "h4", "br", "dt", "dd"):
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(page: str) -> str:
    parser = _TextOnly()
    parser.feed(page)
    text = html.unescape("".join(parser.parts))
    return re.sub(r"\n[ \t]*\n(\s*\n)+", "\n\n", text).strip() + "\n"


def _fetch_package(package: str, suffixes: tuple[str, ...], work: Path) -> str:
    """Text of one package's docs, cached as ``bench/.cache/<package>.txt``."""
    cached = CACHE / f"{package}.txt"
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise RuntimeError("the benchmark corpus needs apt-get and dpkg-deb (a Debian/Ubuntu machine)")
    print(f"corpus: apt-get download {package} ...", file=sys.stderr)
    subprocess.run(["apt-get", "download", package], cwd=work, check=True, capture_output=True)
    deb = next(work.glob(f"{package}_*.deb"))
    root = work / package
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    texts = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(suffixes)):
        raw = path.read_text(encoding="utf-8", errors="replace")
        texts.append(html_to_text(raw) if path.name.endswith(".html") else raw)
    text = "\n".join(texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, cached)
    return text


def get_corpus(megabytes: int) -> str:
    """The first ``megabytes`` MB (UTF-8 bytes, 10**6 each) of the documentation corpus."""
    want = int(megabytes * 1_000_000)
    parts: list[str] = []
    have = 0
    with tempfile.TemporaryDirectory() as tmp:
        for package, suffixes in PACKAGES:
            if have >= want:
                break
            text = _fetch_package(package, suffixes, Path(tmp))
            parts.append(text)
            have += len(text.encode("utf-8"))
    if have < want:
        raise RuntimeError(f"the documentation packages hold only {have / 1e6:.1f} MB; asked for {megabytes} MB")
    data = "\n".join(parts).encode("utf-8")[:want]
    return data.decode("utf-8", errors="ignore")  # drop a character cut at the end


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 25
    corpus = get_corpus(size)
    print(f"{len(corpus.encode('utf-8')) / 1e6:.1f} MB, {corpus.count(chr(10))} lines, starts: {corpus[:60]!r}")
