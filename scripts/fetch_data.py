#!/usr/bin/env python3
"""Download and prepare the public data sets the docs use, into data/.

    python3 scripts/fetch_data.py                  # the default set (about 63 MB on disk)
    python3 scripts/fetch_data.py tinyshakespeare mnist
    python3 scripts/fetch_data.py --list           # what there is, and what is here (offline)
    python3 scripts/fetch_data.py --check          # verify what is here (offline)
    python3 scripts/fetch_data.py --from ../shared/data   # copy from a local copy (offline)

Layout under --dest (the same as ../shared/data, so either works in the
commands of docs/experiments.md):

    tinyshakespeare.txt                  karpathy/char-rnn's input.txt
    mnist/*-ubyte.gz                     MNIST, IDX, gzipped (4 files)
    fashion-mnist/*-ubyte.gz             Fashion-MNIST, the same layout
    imdb/train.jsonl.xz, test.jsonl.xz   IMDB reviews as JSON Lines {"text", "label"}
    gpt2/encoder.json, vocab.bpe         GPT-2's BPE files; tiktoken-cache/ holds
                                         them under tiktoken's names
    cifar10/                             CIFAR-10's python batches (only when named)

Every download is checked against a published size and checksum before it
is moved into place; a file is written to a temporary name beside its
destination and renamed only once verified, so an interruption or a failed
check leaves nothing half-written. Files already present and verified are
not downloaded again (--force does). Each failure prints one line starting
with "error:" and the exit status is 1 when any file failed.

IMDB is prepared from the Stanford archive (aclImdb_v1.tar.gz, about 84 MB): each
split's 25,000 reviews become {"text": <file content>, "label": 0|1} lines
(1 = positive), sorted by (label, review id) and shuffled with
random.Random(1234), xz-compressed. The uncompressed lines are checked
against the sha256 of the reference copy in ../shared/data.

Standard library only (urllib, hashlib, tarfile, lzma): it runs before the
package is installed.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import lzma
import os
import random
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / "data"
USER_AGENT = "mingpt-c scripts/fetch_data.py (Python urllib)"
TIMEOUT_S = 60
CHUNK = 1 << 20

# ---------------------------------------------------------------- what there is


@dataclass
class Remote:
    """One file as published: where it goes under --dest, where it comes
    from (mirrors in order), and what it must be."""
    name: str
    urls: list
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None


@dataclass
class Dataset:
    name: str
    title: str
    licence: str
    files: list = field(default_factory=list)   # Remote: downloaded as they are
    archive: Remote | None = None                # downloaded, then prepared by `prepare`
    outputs: list = field(default_factory=list)  # Remote-like facts of what `prepare` writes
    default: bool = True                         # fetched when no names are given
    disk_mb: float | None = None                 # on disk, where the files' sizes are not listed

    def targets(self) -> list:
        return self.files + self.outputs

    def on_disk_mb(self) -> float:
        return self.disk_mb or sum(f.size or 0 for f in self.targets()) / 1e6


def _mirrors(bases: list, name: str) -> list:
    return [b + name for b in bases]


CHAR_RNN = "https://raw.githubusercontent.com/karpathy/char-rnn/{}/data/tinyshakespeare/input.txt"
MNIST_MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"]
FASHION_MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                   "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/"
                   "b2617bb6d3ffa2e429640350f613e3291e10b141/data/fashion/"]
GPT2_BASE = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"


def _idx_files(folder: str, mirrors: list, table: list) -> list:
    return [Remote(f"{folder}/{n}", _mirrors(mirrors, n), size, sha, md5) for n, size, md5, sha in table]


DATASETS = {d.name: d for d in [
    Dataset(
        "tinyshakespeare", "Tiny Shakespeare (karpathy/char-rnn), plain text, 65 characters",
        "public-domain text; char-rnn is MIT-licensed",
        files=[Remote("tinyshakespeare.txt",
                      [CHAR_RNN.format("6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e"), CHAR_RNN.format("master")],
                      1_115_394, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")]),
    Dataset(
        "mnist", "MNIST handwritten digits, IDX gz, 60,000 train / 10,000 test",
        "CC BY-SA 3.0 (Y. LeCun, C. Cortes)",
        files=_idx_files("mnist", MNIST_MIRRORS, [
            ("train-images-idx3-ubyte.gz", 9_912_422, "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            ("train-labels-idx1-ubyte.gz", 28_881, "d53e105ee54ea40749a09fcbcd1e9432",
             "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            ("t10k-images-idx3-ubyte.gz", 1_648_877, "9fb629c4189551a2d022fa330f9573f3",
             "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            ("t10k-labels-idx1-ubyte.gz", 4_542, "ec29112dd5afa0611ce80d1b7f02629c",
             "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        ])),
    Dataset(
        "fashion-mnist", "Fashion-MNIST (Zalando), IDX gz, 60,000 train / 10,000 test",
        "MIT (Zalando SE)",
        files=_idx_files("fashion-mnist", FASHION_MIRRORS, [
            ("train-images-idx3-ubyte.gz", 26_421_880, "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
             "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            ("train-labels-idx1-ubyte.gz", 29_515, "25c81989df183df01b3e8a0aad5dffbe",
             "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            ("t10k-images-idx3-ubyte.gz", 4_422_102, "bef4ecab320f06d8554ea6380940ec79",
             "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            ("t10k-labels-idx1-ubyte.gz", 5_148, "bb300cfdad3c16e7a12a480ee83cd310",
             "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        ])),
    Dataset(
        "imdb", "IMDB Large Movie Review Dataset v1.0 as JSON Lines, 25,000 train / 25,000 test",
        "research use; cite Maas et al., ACL 2011",
        archive=Remote("aclImdb_v1.tar.gz", ["https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                                             "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"],
                       md5="7c2ac02c03563afcf9b574c7e56c153a"),
        # sha256 of the .xz files as in ../shared/data (Python's lzma at preset 6
        # reproduces them byte for byte); IMDB_CONTENT_SHA256 (the lines) is what must match.
        outputs=[Remote("imdb/train.jsonl.xz", [], 9_366_540,
                        "35a200b0f4f3d44853832a69b6460d48f3fd74848f7bde4040bb444ec9414228"),
                 Remote("imdb/test.jsonl.xz", [], 9_129_564,
                        "22836c422af139a17fbf1c00af8751a5880858ffd34b01caadd20814ddb5cc3e")]),
    Dataset(
        "gpt2", "GPT-2 byte-level BPE files (encoder.json, vocab.bpe) and a tiktoken cache of them",
        "OpenAI, modified MIT",
        files=[Remote("gpt2/encoder.json", [GPT2_BASE + "encoder.json"], 1_042_301,
                      "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
               Remote("gpt2/vocab.bpe", [GPT2_BASE + "vocab.bpe"], 456_318,
                      "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5")]),
    Dataset(
        "cifar10", "CIFAR-10 python batches (5 train, 1 test, meta); a 163 MiB download, only when named",
        "free to use; cite Krizhevsky 2009",
        archive=Remote("cifar-10-python.tar.gz", ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"],
                       md5="c58f30108f718f92721af3b95e74349a"),
        outputs=[Remote(f"cifar10/{n}", [], md5=md5) for n, md5 in [
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
            ("test_batch", "40351d587109b95175f43aff81a1287e"),
            ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        ]],
        disk_mb=186,
        default=False),
]}

# sha256 of the uncompressed JSON Lines (the reference copy's content)
IMDB_CONTENT_SHA256 = {
    "train": "2c9a5d1348dd2d4e68efcf17e9c49a4e63f6f1582abf2329e0c5f0ce4b8fec32",
    "test": "5a910fc4502a13e7e6588f9257c708508e97b8f65ee065aafde8382e5c9fec06",
}
IMDB_SHUFFLE_SEED = 1234
# tiktoken caches a file under the sha1 of its download address
TIKTOKEN_CACHE = "tiktoken-cache"

# ---------------------------------------------------------------- checks


def say(*args, **kwargs) -> None:
    print(*args, **kwargs, flush=True)


class FetchError(Exception):
    """One file failed: the message is the whole line to print."""


def _digests(path: Path) -> dict:
    h256, h5, n = hashlib.sha256(), hashlib.md5(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h256.update(chunk)
            h5.update(chunk)
            n += len(chunk)
    return {"size": n, "sha256": h256.hexdigest(), "md5": h5.hexdigest()}


def _mismatch(r: Remote, got: dict) -> str | None:
    """None when got (size, sha256, md5) is what r publishes, else why not."""
    if r.size is not None and got["size"] != r.size:
        return f"size {got['size']:,} bytes, expected {r.size:,}"
    for algo in ("sha256", "md5"):
        want = getattr(r, algo)
        if want and got[algo] != want:
            return f"{algo} {got[algo]}, expected {want}"
    return None


def _verified(path: Path, r: Remote) -> bool:
    return path.is_file() and (r.size is None or path.stat().st_size == r.size) and _mismatch(r, _digests(path)) is None


# ---------------------------------------------------------------- writing safely


_UMASK = os.umask(0)
os.umask(_UMASK)


class _Staged:
    """A temporary file beside dest, renamed onto dest by commit() and
    removed in every other case (an error, Ctrl-C)."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.made_dir = not dest.parent.exists()   # removed again if nothing lands in it
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".fetch-{dest.name}.", suffix=".part", dir=dest.parent)
        self.file = os.fdopen(fd, "wb")
        self.path = Path(name)
        self.done = False

    def commit(self) -> None:
        self.file.close()
        os.chmod(self.path, 0o666 & ~_UMASK)   # mkstemp makes 0600; give what open() would
        os.replace(self.path, self.dest)
        self.done = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.file.closed:
            self.file.close()
        if not self.done:
            self.path.unlink(missing_ok=True)
            if self.made_dir:
                try:
                    self.dest.parent.rmdir()
                except OSError:   # not empty: something else landed there
                    pass
        return False


def _progress(label: str, done: int, total: int | None) -> None:
    if not sys.stderr.isatty():
        return
    if total:
        sys.stderr.write(f"\r  {label}: {done / 1e6:7.1f} / {total / 1e6:.1f} MB")
    else:
        sys.stderr.write(f"\r  {label}: {done / 1e6:7.1f} MB")
    sys.stderr.flush()


def _end_progress() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _download_to(url: str, staged: _Staged, label: str, expected_size: int | None) -> dict:
    """Streams url into staged.file; returns its size and digests."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    h256, h5, n = hashlib.sha256(), hashlib.md5(), 0
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            total = expected_size or int(resp.headers.get("Content-Length") or 0) or None
            while chunk := resp.read(CHUNK):
                staged.file.write(chunk)
                h256.update(chunk)
                h5.update(chunk)
                n += len(chunk)
                _progress(label, n, total)
    finally:
        _end_progress()
    staged.file.flush()
    return {"size": n, "sha256": h256.hexdigest(), "md5": h5.hexdigest()}


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def fetch_file(r: Remote, dest_root: Path, source: Path | None) -> str:
    """Puts r at dest_root/r.name, verified; returns a one-line note.
    Mirrors are tried in order; FetchError when none gives the right bytes."""
    dest = dest_root / r.name
    if source is not None:
        src = source / r.name
        if not src.is_file():
            raise FetchError(f"{r.name}: not in {source}")
        got = _digests(src)
        bad = _mismatch(r, got)
        if bad:
            raise FetchError(f"{r.name}: the copy in {source} does not match ({bad})")
        with _Staged(dest) as st, open(src, "rb") as f:
            shutil.copyfileobj(f, st.file, CHUNK)
            st.commit()
        return f"{r.name}: copied from {source}, {got['size']:,} bytes, verified"
    tried = []
    for url in r.urls:
        try:
            with _Staged(dest) as st:
                got = _download_to(url, st, r.name, r.size)
                bad = _mismatch(r, got)
                if bad:
                    tried.append(f"{url}: {bad}")
                    continue
                st.commit()
            return f"{r.name}: downloaded, {got['size']:,} bytes, verified"
        except (OSError, http.client.HTTPException, ValueError) as exc:   # HTTP errors, timeouts, resets
            tried.append(f"{url}: {_why(exc)}")
    shown = r.name.removeprefix(".fetch-")   # an archive's temporary name: say which archive
    raise FetchError(f"{shown}: no mirror gave a verified copy ({'; '.join(tried)})")


# ---------------------------------------------------------------- preparing


def _fetch_archive(d: Dataset, dest_root: Path, source: Path | None) -> Path:
    """The verified archive of d: a local copy read in place (--from), or a
    download to a hidden temporary file under dest_root that the caller
    deletes (its name starts with .fetch-)."""
    a = d.archive
    if source is not None:
        src = source / a.name
        if not src.is_file():
            raise FetchError(f"{d.name}: neither the prepared files nor {a.name} are in {source}")
        bad = _mismatch(a, _digests(src))
        if bad:
            raise FetchError(f"{a.name}: the copy in {source} does not match ({bad})")
        return src
    tmp = Remote(f".fetch-{a.name}", a.urls, a.size, a.sha256, a.md5)
    fetch_file(tmp, dest_root, None)
    return dest_root / tmp.name


IMDB_MEMBER = re.compile(r"^aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")


def imdb_rows(archive: Path) -> dict:
    """{split: [(label, id, text)]} from aclImdb_v1.tar.gz, read in one pass."""
    rows = {"train": [], "test": []}
    with tarfile.open(archive, "r|gz") as tar:
        for m in tar:
            hit = IMDB_MEMBER.match(m.name)
            if not hit or not m.isfile():
                continue
            split, polarity, rid, _rating = hit.groups()
            text = tar.extractfile(m).read().decode("utf-8")
            rows[split].append((1 if polarity == "pos" else 0, int(rid), text))
    return rows


def imdb_lines(rows: list) -> bytes:
    """The JSON Lines of one split: sorted by (label, id), then shuffled with
    random.Random(1234), one {"text", "label"} object a line, UTF-8 as is."""
    rows = sorted(rows, key=lambda r: (r[0], r[1]))
    random.Random(IMDB_SHUFFLE_SEED).shuffle(rows)
    return "".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n" for y, _, t in rows).encode("utf-8")


def _check_imdb_split(split: str, rows: list) -> None:
    for label in (0, 1):
        ids = sorted(r[1] for r in rows if r[0] == label)
        if ids != list(range(12_500)):
            raise FetchError(f"imdb/{split}: {len(ids):,} reviews of label {label}, expected ids 0-12,499")


def prepare_imdb(d: Dataset, dest_root: Path, source: Path | None) -> None:
    archive = _fetch_archive(d, dest_root, source)
    try:
        rows = imdb_rows(archive)
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise FetchError(f"{d.archive.name}: cannot be read ({_why(exc)})") from exc
    finally:
        if archive.name.startswith(".fetch-"):
            archive.unlink(missing_ok=True)
    for out in d.outputs:
        split = "train" if "train" in out.name else "test"
        _check_imdb_split(split, rows[split])
        data = imdb_lines(rows[split])
        content = hashlib.sha256(data).hexdigest()
        with _Staged(dest_root / out.name) as st:
            comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=6)
            view = memoryview(data)
            for i in range(0, len(data), CHUNK):
                st.file.write(comp.compress(view[i:i + CHUNK]))
            st.file.write(comp.flush())
            st.commit()
        if content != IMDB_CONTENT_SHA256[split]:
            # the archive's checksum passed, so the data are the published reviews;
            # a difference here means the preparation differs from the reference's
            say(f"  {out.name}: prepared, 25,000 reviews; warning: its lines differ from the reference "
                f"copy (sha256 {content}, expected {IMDB_CONTENT_SHA256[split]}), so published "
                f"figures may not reproduce exactly")
        elif _verified(dest_root / out.name, out):
            say(f"  {out.name}: prepared, 25,000 reviews, identical to the reference copy")
        else:
            say(f"  {out.name}: prepared, 25,000 reviews, lines identical to the reference copy "
                f"(the xz bytes differ: another liblzma)")


def prepare_cifar10(d: Dataset, dest_root: Path, source: Path | None) -> None:
    archive = _fetch_archive(d, dest_root, source)
    want = {Path(o.name).name: o for o in d.outputs}
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for m in tar:
                name = Path(m.name).name
                if m.name != f"cifar-10-batches-py/{name}" or name not in want or not m.isfile():
                    continue
                out = want.pop(name)
                with _Staged(dest_root / out.name) as st:
                    shutil.copyfileobj(tar.extractfile(m), st.file, CHUNK)
                    st.file.close()
                    bad = _mismatch(out, _digests(st.path))
                    if bad:
                        raise FetchError(f"{out.name}: {bad} (inside a verified archive: report this)")
                    st.commit()
                say(f"  {out.name}: extracted, verified")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FetchError(f"{d.archive.name}: cannot be read ({_why(exc)})") from exc
    finally:
        if archive.name.startswith(".fetch-"):
            archive.unlink(missing_ok=True)
    if want:
        raise FetchError(f"{d.archive.name}: lacks {', '.join(sorted(want))}")


PREPARE = {"imdb": prepare_imdb, "cifar10": prepare_cifar10}

# ---------------------------------------------------------------- the commands


def fill_tiktoken_cache(dest_root: Path) -> str:
    """Copies gpt2/ into tiktoken-cache/ under tiktoken's names, so that
    TIKTOKEN_CACHE_DIR=data/tiktoken-cache gives tiktoken's gpt2 offline."""
    for r in DATASETS["gpt2"].files:
        key = hashlib.sha1(r.urls[0].encode()).hexdigest()
        dst = dest_root / TIKTOKEN_CACHE / key
        if _verified(dst, r):
            continue
        with _Staged(dst) as st, open(dest_root / r.name, "rb") as f:
            shutil.copyfileobj(f, st.file, CHUNK)
            st.commit()
    return f"{TIKTOKEN_CACHE}/: the GPT-2 files under tiktoken's cache names (TIKTOKEN_CACHE_DIR={dest_root / TIKTOKEN_CACHE})"


def fetch(d: Dataset, dest_root: Path, source: Path | None, force: bool) -> int:
    """Fetches one data set; prints a line per file; returns the failures."""
    failures = 0
    if not force and all(_verified(dest_root / t.name, t) for t in d.targets()):
        say(f"{d.name}: already here, verified")
        if d.name == "gpt2":
            say(f"  {fill_tiktoken_cache(dest_root)}")
        return 0
    for r in d.files:
        if not force and _verified(dest_root / r.name, r):
            say(f"  {r.name}: already here, verified")
            continue
        try:
            say(f"  {fetch_file(r, dest_root, source)}")
        except FetchError as exc:
            say(f"error: {exc}", file=sys.stderr)
            failures += 1
    if d.name in PREPARE:
        if source is not None and all((source / o.name).is_file() for o in d.outputs):
            for o in d.outputs:   # a prepared copy: take it as it is, verified
                try:
                    say(f"  {fetch_file(o, dest_root, source)}")
                except FetchError as exc:
                    say(f"error: {exc}", file=sys.stderr)
                    failures += 1
        else:
            try:
                PREPARE[d.name](d, dest_root, source)   # says a line per file written
            except FetchError as exc:
                say(f"error: {exc}", file=sys.stderr)
                failures += 1
    if d.name == "gpt2" and failures == 0:
        say(f"  {fill_tiktoken_cache(dest_root)}")
    say(f"{d.name}: {'done' if failures == 0 else f'{failures} file(s) failed'}")
    return failures


def list_datasets(dest_root: Path) -> None:
    say(f"data sets (--dest {dest_root}); * = fetched when no names are given\n")
    for d in DATASETS.values():
        here = [t for t in d.targets() if (dest_root / t.name).is_file()
                and (t.size is None or (dest_root / t.name).stat().st_size == t.size)]
        state = "here" if len(here) == len(d.targets()) else ("partly here" if here else "missing")
        mark = "*" if d.default else " "
        size = f"{'~' if d.disk_mb else ''}{d.on_disk_mb():.1f} MB"
        say(f"{mark} {d.name:<16} {size:>9}  {state:<11}  {d.title}")
        source = d.archive.urls[0] if d.archive else d.files[0].urls[0]
        say(f"    from {source}{' (then prepared)' if d.archive else ''}; licence: {d.licence}")
    say("\nsizes are on disk after preparation; `--check` verifies the checksums of what is here")


def check(names: list, dest_root: Path) -> int:
    failures = 0
    for name in names:
        d = DATASETS[name]
        for t in d.targets():
            path = dest_root / t.name
            if not path.is_file():
                say(f"error: {t.name}: missing (run: python3 scripts/fetch_data.py {name})", file=sys.stderr)
                failures += 1
                continue
            bad = _mismatch(t, _digests(path))
            if bad:
                say(f"error: {t.name}: {bad}", file=sys.stderr)
                failures += 1
            else:
                say(f"{t.name}: verified")
    return failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Download and prepare the public data sets the docs use (checksums verified).",
        epilog="data sets: " + ", ".join(f"{n}{'' if d.default else ' (only when named)'}"
                                          for n, d in DATASETS.items())
               + ". Offline: --list, --check, or --from a local copy.")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="data sets to fetch (default: all but cifar10); 'all' for every one")
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"where to put them (default: {DEFAULT_DEST})")
    p.add_argument("--list", action="store_true", help="list the data sets and whether they are here; no network")
    p.add_argument("--check", action="store_true", help="verify the checksums of what is here; no network")
    p.add_argument("--from", dest="source", type=Path, metavar="DIR",
                   help="copy from a local folder with the same layout (e.g. ../shared/data) instead of downloading")
    p.add_argument("--force", action="store_true", help="fetch again even when a verified copy is here")
    args = p.parse_args(argv)

    names = args.names or [n for n, d in DATASETS.items() if d.default]
    if names == ["all"]:
        names = list(DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        p.error(f"unknown data set {unknown[0]!r}: choose from {', '.join(DATASETS)} (or all)")
    if args.list:
        list_datasets(args.dest)
        return 0
    if args.check:
        return 1 if check(names, args.dest) else 0
    if args.source is not None and not args.source.is_dir():
        p.error(f"--from {args.source}: not a folder")

    failures = 0
    try:
        for name in names:
            say(f"{name}:")
            failures += fetch(DATASETS[name], args.dest, args.source, args.force)
    except KeyboardInterrupt:
        say("error: interrupted; files already verified were kept, nothing half-written", file=sys.stderr)
        return 130
    if failures:
        say(f"error: {failures} file(s) failed; run again to retry (verified files are kept)", file=sys.stderr)
        return 1
    say(f"all verified, in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
