"""Models by name: `hf://ORG/REPO[/FILE.gguf][@REVISION]` resolved through huggingface_hub's cache.

    corelm run hf://bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf -p Hi
    corelm serve hf://HuggingFaceTB/SmolLM2-135M-Instruct           # an HF folder (safetensors)
    corelm.load("hf://ORG/REPO")                                    # the repo's only GGUF, or its Q4_K_M

Every command that takes MODEL accepts such a name (models.load_model resolves it first). Online,
files are downloaded into huggingface_hub's cache (~/.cache/huggingface/hub, HF_HOME / HF_HUB_CACHE
move it) with its progress bar, and an interrupted download resumes where it stopped. Offline
(HF_HUB_OFFLINE=1, or the Hub unreachable) the cached copy is used. Neither cached nor reachable is
one line saying so. HF_ENDPOINT points it at a mirror, HF_TOKEN at private repositories, as for
every huggingface_hub user.

Without a file name the repository decides: its only .gguf file, else the one named Q4_K_M (as
llama.cpp's -hf picks), else a Hugging Face folder (config.json and *.safetensors with the
tokenizer files) when it has one; several GGUF files and no Q4_K_M is an error listing them.
"""

from __future__ import annotations

import os
import re
import socket
from os import PathLike
from pathlib import Path
from urllib.parse import urlsplit

PREFIX = "hf://"
# What an HF folder needs of a repository (weights, config, tokenizer, chat template, pooling)
FOLDER_FILES = ("*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt", "1_Pooling/*", "2_Normalize/*")
_NAME = re.compile(r"^[\w.-]+$")


def is_hub_name(path: str | PathLike[str]) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def parse(name: str) -> tuple[str, str | None, str | None]:
    """hf://ORG/REPO[/FILE][@REVISION] -> (repo id, file or None, revision or None)."""
    spec = name[len(PREFIX) :]
    revision = None
    if "@" in spec:
        spec, revision = spec.rsplit("@", 1)
        if not revision:
            raise ValueError(f"{name}: empty revision after '@'")
    parts = [p for p in spec.split("/") if p]
    if len(parts) < 2 or not all(_NAME.match(p) for p in parts[:2]):
        raise ValueError(f"{name}: expected hf://ORG/REPO or hf://ORG/REPO/FILE.gguf")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None, revision


def resolve(path: str | PathLike[str]) -> Path:
    """A local path for `path`: as it is, or a hub name downloaded (or found in the cache)."""
    if not is_hub_name(path):
        return Path(path)
    name = str(path)
    repo, file, revision = parse(name)
    try:
        import huggingface_hub as hub
        from huggingface_hub import errors
    except ImportError:
        raise ValueError(f"{name}: hf:// names need huggingface_hub (pip install huggingface_hub)") from None
    # An endpoint that refuses connections would cost huggingface_hub's five retries (~25 s of
    # warnings) per call: look first, and go to the cache at once when nobody answers.
    local = _offline() or not _reachable()
    try:
        if file is not None:
            return Path(hub.hf_hub_download(repo, file, revision=revision, local_files_only=local))
        files = _files(hub, repo, revision, local)
        chosen = _choose(name, files)
        if chosen is not None:
            return Path(hub.hf_hub_download(repo, chosen, revision=revision, local_files_only=local))
        return Path(
            hub.snapshot_download(repo, revision=revision, allow_patterns=list(FOLDER_FILES), local_files_only=local)
        )
    except errors.LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if _offline() else "the Hub cannot be reached"
        raise ValueError(f"{name}: not in the local cache and {why} (HF_ENDPOINT: {_endpoint()})") from None
    except errors.RepositoryNotFoundError:
        raise ValueError(f"{name}: no repository {repo} (or it is private: set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise ValueError(f"{name}: repository {repo} has no revision {revision}") from None
    except errors.EntryNotFoundError:
        raise ValueError(f"{name}: repository {repo} has no file {file}") from None
    except errors.HfHubHTTPError as e:
        raise ValueError(f"{name}: {_first_line(e)}") from None


def _files(hub, repo: str, revision: str | None, local: bool) -> list[str]:
    """The repository's files: listed by the Hub, else (local, or the listing fails) those of its
    cached snapshot."""
    from huggingface_hub import errors

    if not local:
        try:
            return [
                f.path
                for f in hub.HfApi().list_repo_tree(repo, recursive=True, revision=revision)
                if isinstance(f, hub.hf_api.RepoFile)
            ]
        except errors.OfflineModeIsEnabled:
            pass
        except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError):
            raise
        except Exception:  # unreachable (connection refused, timeout, 5xx): the cache decides
            pass
    folder = Path(hub.snapshot_download(repo, revision=revision, local_files_only=True))
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _choose(name: str, files: list[str]) -> str | None:
    """The GGUF file to fetch, or None for an HF folder."""
    ggufs = [f for f in files if f.lower().endswith(".gguf")]
    if len(ggufs) == 1:
        return ggufs[0]
    preferred = [f for f in ggufs if "q4_k_m" in f.lower()]
    if len(preferred) == 1:
        return preferred[0]
    if "config.json" in files and any(f.endswith(".safetensors") for f in files):
        return None
    if ggufs:
        listed = ", ".join(ggufs[:12]) + (", ..." if len(ggufs) > 12 else "")
        raise ValueError(f"{name}: the repository has {len(ggufs)} GGUF files; name one: {name}/FILE ({listed})")
    raise ValueError(f"{name}: the repository has no .gguf file and no config.json with *.safetensors")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _reachable(timeout: float = 3.0) -> bool:
    """Whether the endpoint's host accepts a TCP connection (True behind a proxy: it decides)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True
    url = urlsplit(_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _endpoint() -> str:
    """The Hub's address as huggingface_hub uses it (HF_ENDPOINT, else its default)."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
