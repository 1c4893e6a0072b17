"""What can go wrong when a model is downloaded, in words a user can act on.

Every expected failure of :class:`~gemma_desktop.core.models.downloads.DownloadManager`
is a :class:`DownloadError` subclass with a reason and a hint;
:func:`translate_error` turns huggingface_hub's and the network's exceptions
(gated repo, bad token, missing repo, unreachable Hub, 5xx) into them.
"""

from __future__ import annotations

import errno
from pathlib import Path

from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.models.catalog import Variant

TOKENS_URL = "https://huggingface.co/settings/tokens"


class DownloadError(GemmaDesktopError):
    """A download failed; ``retryable`` says whether Resume/Retry may help as is."""

    retryable = False


class DownloadCancelledError(DownloadError):
    """The user cancelled. Finished files stay in the cache."""

    retryable = True


class NotDownloadableError(DownloadError):
    """The bundled model ships with the app; it is never downloaded."""


class InsufficientDiskSpaceError(DownloadError):
    """Not enough free space where the Hugging Face cache lives."""

    def __init__(self, reason: str, hint: str, *, needed: int, free: int, where: Path) -> None:
        super().__init__(reason, hint)
        self.needed = needed
        self.free = free
        self.where = where


class GatedModelError(DownloadError):
    """A gated repo without a token, or with one whose account has no access."""

    def __init__(self, reason: str, hint: str, *, url: str) -> None:
        super().__init__(reason, hint)
        self.url = url


class InvalidTokenError(DownloadError):
    """The Hub rejected the token (401)."""


class RepoNotFoundError(DownloadError):
    """The repository (or the planned revision of it) does not exist on the Hub."""


class HubUnreachableError(DownloadError):
    """The network or the Hub could not be reached."""

    retryable = True


class HubServerError(DownloadError):
    """The Hub answered with a server error (5xx, 429) after retries."""

    retryable = True


class OfflineModelMissingError(DownloadError):
    """``HF_HUB_OFFLINE`` is set and the model is not in the cache."""


class CorruptDownloadError(DownloadError):
    """A file did not match the Hub's hash twice in a row; it was deleted."""

    retryable = True


def translate_error(
    exc: BaseException, variant: Variant, token: str | None, endpoint: str
) -> DownloadError | None:
    """The user-facing error for a huggingface_hub / network failure, or ``None`` if unknown."""
    import httpx2
    from huggingface_hub import errors as hf

    url = variant.hub_url or f"https://huggingface.co/{variant.id}"
    status = _status(exc)
    if isinstance(exc, hf.GatedRepoError):
        if status == 403 or token:
            return GatedModelError(
                f"Your Hugging Face account has no access to {variant.id} yet: Google's "
                "Gemma license has not been accepted for it (or approval is still pending).",
                f"Open {url}, sign in with the account the token belongs to and accept the "
                "license, then retry. A fine-grained token also needs read access to public "
                "gated repositories.",
                url=url,
            )
        return GatedModelError(
            f"{variant.id} is a gated model: its license must be accepted on the model's "
            "page, and downloads need a Hugging Face access token.",
            f"Open {url}, sign in and accept the license, then add a read token from "
            f"{TOKENS_URL} in the Hugging Face token field (or HF_TOKEN).",
            url=url,
        )
    if isinstance(exc, (hf.RevisionNotFoundError, hf.RemoteEntryNotFoundError)):
        return RepoNotFoundError(
            f"{variant.id} changed on the Hub while it was being downloaded.",
            "Start the download again to fetch the current version.",
        )
    if isinstance(exc, hf.RepositoryNotFoundError):
        return RepoNotFoundError(
            f"The repository {variant.id} was not found on the Hub ({endpoint}).",
            "Check the variant id. If the repository is private, the token in the Hugging "
            "Face token field must belong to an account with access."
            + ("" if token else " No token is set."),
        )
    if isinstance(exc, hf.OfflineModeIsEnabled):
        return HubUnreachableError(
            "huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was loaded).",
            "Unset HF_HUB_OFFLINE and restart the app to download.",
        )
    if isinstance(exc, hf.HfHubHTTPError) and status is not None:
        if status == 401:
            return InvalidTokenError(
                "The Hugging Face Hub rejected the access token (401 Unauthorized).",
                "Check the Hugging Face token field (or HF_TOKEN): the token may be mistyped, "
                f"expired or revoked. Create a new read token at {TOKENS_URL}.",
            )
        if status == 429 or status >= 500:
            return HubServerError(
                f"The Hugging Face Hub answered HTTP {status} while downloading {variant.id}.",
                "The Hub may be busy or down; try again in a few minutes. Files already "
                "downloaded are kept.",
            )
        if status == 403:
            return GatedModelError(
                f"The Hub refused access to {variant.id} (403 Forbidden).",
                f"Check that your token may read {url} and that its license is accepted.",
                url=url,
            )
        return HubServerError(
            f"The Hugging Face Hub answered HTTP {status} for {variant.id}.",
            "Try again later. Files already downloaded are kept.",
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return InsufficientDiskSpaceError(
            "The disk filled up during the download.",
            "Free some space (or point HF_HUB_CACHE at a bigger disk) and Resume; finished "
            "files are kept.",
            needed=0,
            free=0,
            where=Path(exc.filename or "."),
        )
    network = (httpx2.TransportError, hf.LocalEntryNotFoundError, ConnectionError, TimeoutError)
    consistency = isinstance(exc, OSError) and "Consistency check failed" in str(exc)
    if isinstance(exc, network) or consistency:
        return HubUnreachableError(
            f"Could not reach the Hugging Face Hub at {endpoint} ({_short(exc)}).",
            "Check the internet connection (and HTTPS_PROXY if you use a proxy), then "
            "Resume: finished files are kept.",
        )
    return None


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:160]
