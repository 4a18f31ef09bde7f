"""One scheme registry (``backends/schemes.py``): config validation and
``create_backend`` give the same verdict, in the same words, for every URL."""

from __future__ import annotations

from pathlib import Path

import pytest

import llm_governor
from llm_governor.backends import create_backend, schemes
from llm_governor.backends.sqlite import SQLiteBackend
from llm_governor.errors import ConfigError

REFUSED = ["postgres://app:pgsecret@db/x", "sqlite:relative", "sqlite:/x.db", "redis:/h",
           "Memory", "", "memory://", "http://h", "mysql://root@h"]


@pytest.mark.parametrize("url", REFUSED)
def test_both_paths_refuse_in_the_same_words(url: str) -> None:
    with pytest.raises(ConfigError) as by_config:
        llm_governor.load_config({"backend": url})
    with pytest.raises(ConfigError) as by_factory:
        create_backend(url, {})
    reason = schemes.problem(url)
    assert reason is not None
    for exc in (by_config.value, by_factory.value):
        assert reason in str(exc) and "pgsecret" not in str(exc)
        for name in ("memory", "sqlite:///", "redis://", "rediss://", "unix://"):
            assert name in str(exc)


def test_both_paths_accept_what_the_registry_names(tmp_path: Path) -> None:
    from tests._redis_server import shared_server  # skips (fails in CI) without redis-server

    redis_url = shared_server().url
    accepted = ["memory", f"sqlite://{tmp_path}/a.db", f"SQLITE://{tmp_path}/b.db",
                redis_url, redis_url.replace("redis://", "REDIS://", 1)]
    for url in accepted:
        assert schemes.problem(url) is None
        assert llm_governor.load_config({"backend": url}).backend == url
        backend = create_backend(url, {}, namespace="schemes-test")
        try:
            assert backend.admit  # built, and usable
            if url.lower().startswith("sqlite"):
                assert isinstance(backend, SQLiteBackend)
                assert backend.path.parent == tmp_path
        finally:
            backend.close()


def test_every_scheme_has_a_factory_and_an_example() -> None:
    for name, scheme in schemes.SCHEMES.items():
        assert name == name.lower() and scheme.examples and callable(scheme.factory)
        for example in scheme.examples:
            assert schemes.problem(example) is None
