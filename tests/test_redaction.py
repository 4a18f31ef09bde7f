"""One redaction rule (``llm_governor/redaction.py``) behind every place that masks
secrets: URL redaction, the CLI's scrubber and the Redis store's error scrubbing."""

from __future__ import annotations

import pytest

from llm_governor import redaction
from llm_governor.backends.redis import RedisStore
from llm_governor.cli.scrub import remember_url, scrub
from llm_governor.config import redact_url
from llm_governor.errors import ConfigError

URLS = ["redis://user:pw1secret@h:6379/0", "rediss://:pw1secret@h:6380/2",
        "redis://pw1secret@h", "redis://user:p%40w1secret@h/0"]


def test_old_import_paths_are_the_one_function() -> None:
    assert redact_url is redaction.redact_url


@pytest.mark.parametrize("url", URLS)
def test_every_scrubber_removes_the_same_secrets(url: str) -> None:
    text = f"connect {url} failed; password {redaction.url_secrets(url)}"
    one = redaction.Scrubber(url).scrub(text)
    assert "1secret" not in one
    remember_url(url)
    assert scrub(text) == one


def test_redis_store_scrubs_with_the_shared_rule() -> None:
    url = "redis://user:pw1secret@127.0.0.1:notaport/0"
    with pytest.raises(ConfigError) as info:
        RedisStore(url)
    assert "pw1secret" not in str(info.value)
    assert "redis://user:***@127.0.0.1" in str(info.value)


def test_short_secrets_are_masked_in_urls_not_in_text() -> None:
    url = "redis://:ab@h"
    assert redact_url(url) == "redis://:***@h"
    assert redaction.Scrubber(url).scrub("a cab") == "a cab"
