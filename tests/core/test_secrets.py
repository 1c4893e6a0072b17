"""Where the remote API key and the local endpoint's token are kept (real keyring backends)."""

from __future__ import annotations

from pathlib import Path

import keyring
import pytest

from gemma_desktop.core.engine.local_api import LocalApiTokenStore
from gemma_desktop.core.engine.remote import ApiKeyStore, RemoteEngineError, normalize_base_url
from gemma_desktop.core.secrets import KeyringUnavailableError


@pytest.mark.keyring
@pytest.mark.usefixtures("real_keyring")
def test_api_key_round_trip_in_the_secret_service() -> None:
    store = ApiKeyStore("http://gpu-server:8000/v1/")
    assert store.keyring_user == "remote-api:http://gpu-server:8000"
    assert store.get() is None
    store.save("  sk-team-key  ")
    assert store.get() == "sk-team-key"
    assert keyring.get_password("gemma-desktop", "remote-api:http://gpu-server:8000") == (
        "sk-team-key"
    )
    assert ApiKeyStore("http://gpu-server:8000").get() == "sk-team-key", "same server"
    assert ApiKeyStore("http://other-server:8000").get() is None, "one key per server"
    assert keyring.get_password("gemma-desktop", "huggingface") is None, "HF token untouched"
    assert store.delete() is True
    assert store.get() is None


@pytest.mark.usefixtures("fail_keyring")
def test_api_key_without_a_keyring_lives_for_the_session_only() -> None:
    store = ApiKeyStore("http://gpu-server:8000")
    with pytest.raises(KeyringUnavailableError):
        store.save("sk-team-key")
    store.session_key = "sk-team-key"
    assert store.get() == "sk-team-key"
    with pytest.raises(KeyringUnavailableError):
        store.delete()
    assert store.session_key is None


@pytest.mark.keyring
@pytest.mark.usefixtures("real_keyring")
def test_local_api_token_prefers_the_keyring(tmp_path: Path) -> None:
    store = LocalApiTokenStore(tmp_path / "local-api-token")
    token = store.get_or_create()
    assert token.source == "keyring"
    assert not store.token_file.exists(), "no plaintext copy when the keyring works"
    assert keyring.get_password("gemma-desktop", "local-api") == token.value
    assert store.get_or_create() == token


def test_base_url_forms() -> None:
    assert normalize_base_url(" http://h:8000/v1/ ") == "http://h:8000"
    assert normalize_base_url("https://gpu.example/vllm") == "https://gpu.example/vllm"
    for bad in ("gpu-server:8000", "ftp://h", "", "http://"):
        with pytest.raises(RemoteEngineError):
            normalize_base_url(bad)
