"""Datasets fedrec can fetch from their publishers, and the local cache they live in.

Only ``ml-latest-small`` ships inside the package (its licence allows it). Every other
dataset is fetched by its user with :func:`fetch` (``fedrec data fetch NAME``): the
download is verified, its licence terms are shown, and it is unpacked into the cache
``$FEDREC_DATA`` (default ``~/.cache/fedrec``) as ``<cache>/<name>/``. ``--data NAME``
then finds it there. A local copy given by path always works without the cache.

Checksums are the publisher's, never made up:

- GroupLens publishes an MD5 beside each MovieLens zip (``<zip>.md5``). Where the value
  is known it is pinned in the entry (``md5``); otherwise the publisher's file is read at
  fetch time (``md5_url``).
- Where a publisher publishes none, the SHA-256 of the first download is pinned in
  ``<cache>/checksums.json`` (trust on first use) and every later download must match it.

Downloads resume: an interrupted download leaves ``<cache>/.downloads/<file>.part``
and the next fetch continues it with an HTTP range request.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = [
    "DatasetEntry",
    "FetchError",
    "REGISTRY",
    "cached_dataset",
    "data_root",
    "fetch",
    "missing_dataset_message",
]

_GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
_GROUPLENS_TERMS = ("GroupLens research licence: research use only, no commercial use, cite Harper & Konstan "
                    "(2015); the user may NOT redistribute the data without separate permission")


class FetchError(RuntimeError):
    """A download that cannot be completed or verified (one line: what, where, what to do)."""


@dataclass(frozen=True)
class DatasetEntry:
    """Where a dataset comes from and how to read it.

    Attributes
    ----------
    name : str
        Name used by ``--data`` and ``fedrec data fetch``; also the cache directory.
    url : str
        The publisher's download URL (a ``.zip`` archive or a single file).
    terms : str
        One-line summary of the licence terms (the full terms ship with the data).
    terms_file : str
        File of the unpacked dataset holding the full terms.
    folder : str
        Directory inside the zip archive holding the files ("" for a single file).
    md5 : str or None
        The publisher's MD5 of the download, pinned; ``None`` where not known.
    md5_url : str or None
        Where the publisher publishes the MD5 (read at fetch time when ``md5`` is None).
    file_name : str
        Single-file downloads: the name it gets in the dataset directory.
    header : str or None
        Single-file downloads without a header line: the header written before the data.
    reader : dict
        ``format`` and reader options that ``--data NAME`` applies by default.
    size : str
        Approximate download size, for the listing.
    """

    name: str
    url: str
    terms: str
    terms_file: str = "README.txt"
    folder: str = ""
    md5: str | None = None
    md5_url: str | None = None
    file_name: str = ""
    header: str | None = None
    reader: dict = field(default_factory=dict)
    size: str = ""

    @property
    def checksum_source(self) -> str:
        """Where the checksum this entry is verified against comes from."""
        if self.md5:
            return "publisher's MD5 (pinned)"
        if self.md5_url:
            return "publisher's MD5, read at fetch time"
        return "none published: SHA-256 of the first download pinned (trust on first use)"


def _movielens(name: str, md5: str | None, folder: str, size: str, terms: str = _GROUPLENS_TERMS,
               terms_file: str = "README.txt") -> DatasetEntry:
    url = f"{_GROUPLENS}{name}.zip"
    return DatasetEntry(name, url, terms, terms_file=terms_file, folder=folder, md5=md5, md5_url=url + ".md5",
                        size=size)


#: Every dataset ``fedrec data fetch`` knows. MD5 values are GroupLens's own (the
#: ``.md5`` files beside its zips); ML-32M's and ml-latest-small's are read from
#: GroupLens at fetch time (ml-latest-small is re-released, so no value is pinned).
REGISTRY: dict[str, DatasetEntry] = {
    e.name: e
    for e in (
        _movielens("ml-100k", "0e33842e24a9c977be4e0107933c0723", "ml-100k", "5 MB", terms_file="README"),
        _movielens("ml-1m", "c4d9eecfca2ab87c1945afe126590906", "ml-1m", "6 MB", terms_file="README"),
        _movielens("ml-10m", "ce571fd55effeba0271552578f2648bd", "ml-10M100K", "63 MB", terms_file="README.html"),
        _movielens("ml-20m", "cd245b17a1ae2cc31bb14903e1204af3", "ml-20m", "190 MB"),
        _movielens("ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada", "ml-25m", "250 MB"),
        _movielens("ml-32m", None, "ml-32m", "240 MB"),
        _movielens("ml-latest-small", None, "ml-latest-small", "1 MB",
                   terms="GroupLens licence: research use, no commercial use; the user MAY redistribute it, "
                         "including transformations, under the same conditions (it ships with fedrec)"),
        DatasetEntry(
            "amazon-digital-music",
            "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/categoryFilesSmall/Digital_Music.csv",
            "Amazon Review Data (2018), Ni, Li & McAuley (EMNLP 2019): research use; cite the paper; "
            "no redistribution terms granted",
            terms_file="SOURCE.json",
            file_name="interactions.csv",
            header="item,user,rating,timestamp",
            reader={"format": "generic", "user_col": "user", "item_col": "item", "rating_col": "rating",
                    "timestamp_col": "timestamp", "duplicates": "last"},
            size="60 MB",
        ),
    )
}


def data_root() -> Path:
    """The dataset cache: ``$FEDREC_DATA``, else ``~/.cache/fedrec``."""
    return Path(os.environ.get("FEDREC_DATA") or Path.home() / ".cache" / "fedrec")


def cached_dataset(name: str, root: Path | None = None) -> Path | None:
    """The cached directory of dataset ``name``, or ``None`` when it is not there."""
    path = (root or data_root()) / name
    return path if path.is_dir() and any(path.iterdir()) else None


def missing_dataset_message(name: str, root: Path | None = None) -> str:
    """The one line that says how to get a registered dataset that is not in the cache."""
    return (f"dataset {name!r} is not in the cache {root or data_root()}: fetch it with "
            f"`fedrec data fetch {name}` (it does not ship with fedrec) or pass the path of a local copy")


def fetch(
    name: str | DatasetEntry,
    *,
    root: Path | None = None,
    mirror: str | None = None,
    force: bool = False,
    say: Callable[[str], None] = print,
    timeout: float = 60.0,
) -> Path:
    """Download, verify and unpack a dataset into the cache.

    Parameters
    ----------
    name
        A :data:`REGISTRY` name, or an entry (tests and private registries).
    root
        Cache directory (default :func:`data_root`).
    mirror
        Base URL that replaces the publisher's directory (the file name is kept),
        for institutional mirrors and offline tests.
    force
        Download again even when the dataset is already in the cache.
    say
        Receives progress and the licence terms, one line each.
    timeout
        Seconds to wait for the server on each request.

    Returns
    -------
    Path
        The dataset directory ``<root>/<name>``.

    Raises
    ------
    FetchError
        Unknown name, network failure, truncated download (kept to resume) or checksum
        mismatch (the bad download is removed); the cache is left as it was.
    """
    entry = _entry(name)
    root = Path(root or data_root())
    target = root / entry.name
    if cached_dataset(entry.name, root) and not force:
        say(f"{entry.name} is already at {target} (--force fetches it again)")
        return target
    url = _mirrored(entry.url, mirror)
    say(f"{entry.name}: {entry.terms}")
    downloads = root / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    part = downloads / (entry.url.rsplit("/", 1)[1] + ".part")
    _download(url, part, say=say, timeout=timeout)
    digests = _verify(entry, part, root, url=url, mirror=mirror, say=say, timeout=timeout)
    _unpack(entry, part, target, root, source={"url": url, **digests}, say=say)
    part.unlink()
    say(f"{entry.name} is ready at {target}; its full licence terms: {target / entry.terms_file}")
    return target


def _mirrored(url: str, mirror: str | None) -> str:
    """``url``, or the same file name under ``mirror``."""
    return url if not mirror else mirror.rstrip("/") + "/" + url.rsplit("/", 1)[1]


def _entry(name: str | DatasetEntry) -> DatasetEntry:
    if isinstance(name, DatasetEntry):
        return name
    if name not in REGISTRY:
        raise FetchError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _download(url: str, part: Path, *, say: Callable[[str], None], timeout: float) -> None:
    """Download ``url`` into ``part``, continuing a partial file with a range request."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "fedrec",
                                                   **({"Range": f"bytes={have}-"} if have else {})})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file is already whole: the checksum decides
            return
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"{url}: cannot connect ({getattr(e, 'reason', e)}); check the network "
                         "or use --mirror") from None
    with response:
        resumed = response.status == 206
        if have and not resumed:
            say(f"the server does not resume downloads: starting {part.name} again")
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        got = have
        last = time.monotonic()
        with open(part, "ab" if resumed else "wb") as fh:
            try:
                while chunk := response.read(1 << 20):
                    fh.write(chunk)
                    got += len(chunk)
                    if time.monotonic() - last > 5:
                        last = time.monotonic()
                        say(f"  {got / 1e6:.1f}" + (f" of {total / 1e6:.1f}" if total else "") + " MB")
            except (OSError, http.client.HTTPException) as e:  # a dropped connection, IncompleteRead
                raise FetchError(f"{url}: download interrupted after {got} bytes ({type(e).__name__}); run the "
                                 f"same command again to resume") from None
    if total is not None and got < total:
        raise FetchError(f"{url}: download truncated at {got} of {total} bytes; run the same command again to resume")


def _file_digests(path: Path) -> dict[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            md5.update(block)
            sha.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def _publisher_md5(entry: DatasetEntry, mirror: str | None, timeout: float) -> str | None:
    """The MD5 the publisher publishes beside the file, or ``None`` if it cannot be read."""
    if entry.md5:
        return entry.md5.lower()
    if not entry.md5_url:
        return None
    url = _mirrored(entry.md5_url, mirror)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "fedrec"}),
                                    timeout=timeout) as r:
            text = r.read(4096).decode("ascii", "replace")
    except (urllib.error.URLError, OSError):
        return None
    return parse_md5_text(text)


def parse_md5_text(text: str) -> str | None:
    """The hex digest in an ``.md5`` file (``MD5 (f.zip) = HEX`` or ``HEX  f.zip``)."""
    for token in text.replace("=", " ").split():
        token = token.strip().lower()
        if len(token) == 32 and all(c in "0123456789abcdef" for c in token):
            return token
    return None


def _verify(entry: DatasetEntry, part: Path, root: Path, *, url: str, mirror: str | None,
            say: Callable[[str], None], timeout: float) -> dict[str, str]:
    """Check the download against the publisher's MD5 or the pinned first download."""
    digests = _file_digests(part)
    expected = _publisher_md5(entry, mirror, timeout)
    if expected is not None:
        if digests["md5"] != expected:
            part.unlink()
            raise FetchError(f"{url}: checksum mismatch (MD5 {digests['md5']}, the publisher's is {expected}); the "
                             f"download was removed, nothing was unpacked")
        say(f"MD5 {expected} matches the publisher's")
        return digests
    pins_file = root / "checksums.json"
    pins = json.loads(pins_file.read_text()) if pins_file.exists() else {}
    pinned = pins.get(entry.name, {}).get("sha256")
    if pinned and pinned != digests["sha256"]:
        part.unlink()
        raise FetchError(f"{url}: checksum mismatch (SHA-256 {digests['sha256']}, pinned at the first download: "
                         f"{pinned}); the download was removed. If the publisher re-released the file, remove "
                         f"its entry from {pins_file}")
    if pinned:
        say(f"SHA-256 matches the one pinned at the first download ({pins_file})")
    else:
        pins[entry.name] = {"sha256": digests["sha256"], "url": url,
                            "pinned": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        pins_file.write_text(json.dumps(pins, indent=1, sort_keys=True))
        say(f"the publisher gives no checksum for {entry.name}: pinned SHA-256 {digests['sha256']} of this "
            f"first download in {pins_file} (trust on first use)")
    return digests


def _unpack(entry: DatasetEntry, part: Path, target: Path, root: Path, *, source: dict,
            say: Callable[[str], None]) -> None:
    """Unpack into a temporary directory beside ``target``, then move it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=root))
    try:
        if entry.url.endswith(".zip"):
            try:
                with zipfile.ZipFile(part) as archive:
                    for member in archive.namelist():
                        dest = (tmp / member).resolve()
                        if not dest.is_relative_to(tmp.resolve()):
                            raise FetchError(f"{entry.url}: archive member {member!r} points outside the dataset")
                    archive.extractall(tmp)
            except zipfile.BadZipFile as e:
                raise FetchError(f"{entry.url}: not a zip archive ({e})") from None
            folder = tmp / entry.folder if entry.folder else tmp
            if not folder.is_dir():
                raise FetchError(f"{entry.url}: the archive has no folder {entry.folder!r}")
        else:
            folder = tmp / "data"
            folder.mkdir()
            with open(folder / (entry.file_name or entry.url.rsplit("/", 1)[1]), "wb") as out, open(part, "rb") as src:
                if entry.header:
                    out.write(entry.header.encode() + b"\n")
                shutil.copyfileobj(src, out, 1 << 20)
        (folder / "SOURCE.json").write_text(json.dumps(
            {"name": entry.name, **source, "terms": entry.terms, "checksum": entry.checksum_source,
             "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
