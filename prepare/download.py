"""ClimbMix shards from the Hugging Face hub: parallel, retried, verified, atomic, resumable.

Each shard is fetched with hf_hub_download (which honours HF_ENDPOINT) into a staging folder,
checked against the hub's metadata (size, and the sha256 that LFS files carry as their etag) and
for a readable parquet footer, and only then renamed into data/. A file in data/ is therefore
either complete or absent; a shard already there is skipped when its parquet footer reads, and
deleted and fetched again when it does not (a partial file of an older downloader).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm

from .cache import shard_name
from .constants import HF_REPO_ID, HF_REPO_TYPE, MAX_SHARD, VAL_SHARD
from .corpus import check_shard

STAGING = ".download"
_SHA256 = re.compile(r"[0-9a-f]{64}")
OFFLINE_HINT = "without network, build the data from local text files: python -m prepare --from-files 'DIR/**/*.txt'"
_PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class DownloadError(RuntimeError):
    pass


class _SilentTqdm(auto_tqdm):
    """hf_hub_download's per-file bars would interleave; one bar over shards is shown instead."""

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def shard_indices(num_shards: int) -> list[int]:
    """Training shards 0..N-1 (-1: all of them) plus the validation shard."""
    if num_shards == -1:
        num_shards = MAX_SHARD
    if not 0 <= num_shards <= MAX_SHARD:
        raise ValueError(f"--num-shards must be -1 or between 0 and {MAX_SHARD}, got {num_shards}")
    return list(range(num_shards)) + [VAL_SHARD]


def check_reachable(endpoint: str | None = None) -> None:
    """Fail at once, pointing at --from-files, when the hub cannot be reached at all: HF_HUB_OFFLINE,
    or its host name does not resolve (an offline machine: the retries would only wait). Behind a
    proxy the name is the proxy's business: not checked."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise DownloadError(f"HF_HUB_OFFLINE is set, so no shard can be downloaded; {OFFLINE_HINT}")
    if any(os.environ.get(name) for name in _PROXIES):
        return
    host = urlparse(endpoint or constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as error:
        raise DownloadError(f"cannot resolve {host} ({error.strerror}): this machine looks offline; "
                            f"{OFFLINE_HINT}") from None


def _permanent(error: Exception) -> bool:
    """Errors that another attempt cannot fix (missing file or repo, refused access)."""
    if isinstance(error, (EntryNotFoundError, OfflineModeIsEnabled)):
        return True
    if isinstance(error, HfHubHTTPError) and getattr(error, "response", None) is not None:
        code = error.response.status_code
        return 400 <= code < 500 and code not in (408, 429)
    return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_verified(filename: str, data_dir: Path, repo_id: str, endpoint: str | None) -> None:
    url = hf_hub_url(repo_id, filename, repo_type=HF_REPO_TYPE, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint)
    staged = Path(hf_hub_download(repo_id, filename, repo_type=HF_REPO_TYPE, local_dir=data_dir / STAGING,
                                  endpoint=endpoint, tqdm_class=_SilentTqdm))
    try:
        size = staged.stat().st_size
        if meta.size is not None and size != meta.size:
            raise DownloadError(f"size {size} != {meta.size} announced by the hub")
        etag = (meta.etag or "").lower()
        if _SHA256.fullmatch(etag) and _sha256(staged) != etag:
            raise DownloadError("sha256 does not match the hub's etag")
        check_shard(staged)
    except (DownloadError, ValueError):
        staged.unlink(missing_ok=True)
        raise
    staged.replace(data_dir / filename)


def download_shard(index: int, data_dir: Path, *, repo_id: str = HF_REPO_ID, endpoint: str | None = None,
                   retries: int = 5, backoff_s: float = 1.0, force: bool = False) -> bool:
    """Fetch one shard unless a readable copy is there (or `force`); True when it was downloaded."""
    filename = shard_name(index)
    final = data_dir / filename
    if final.exists() and not force:
        try:
            check_shard(final)
            return False
        except ValueError:
            final.unlink()   # partial or corrupt: fetch it again
    for attempt in range(1, retries + 1):
        try:
            _fetch_verified(filename, data_dir, repo_id, endpoint)
            return True
        except Exception as error:  # network, HTTP and verification errors alike
            if _permanent(error) or attempt == retries:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise DownloadError(f"{filename}: {reason} (attempt {attempt} of {retries})") from error
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def download_shards(indices: list[int], data_dir: Path, *, workers: int = 8, repo_id: str = HF_REPO_ID,
                    endpoint: str | None = None, retries: int = 5, backoff_s: float = 1.0,
                    force: bool = False) -> int:
    """Fetch the shards with a pool of `workers` threads; returns how many were downloaded."""
    if workers < 1:
        raise ValueError(f"--download-workers must be at least 1, got {workers}")
    if retries < 1:
        raise ValueError(f"--retries must be at least 1, got {retries}")
    if force or not all((data_dir / shard_name(i)).exists() for i in indices):
        check_reachable(endpoint)     # shards already here need no hub: an offline machine may prepare
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(data_dir / STAGING, ignore_errors=True)   # leftovers of an interrupted run
    downloaded = 0
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(total=len(indices), desc="shards", unit="shard") as bar:
        futures = [pool.submit(download_shard, i, data_dir, repo_id=repo_id, endpoint=endpoint,
                               retries=retries, backoff_s=backoff_s, force=force) for i in indices]
        try:
            for future in as_completed(futures):
                downloaded += future.result()
                bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    shutil.rmtree(data_dir / STAGING, ignore_errors=True)
    return downloaded
