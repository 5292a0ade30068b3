"""DSNs that list several PostgreSQL hosts (a primary and its standby) with
``target_session_attrs=read-write``: nothing in the project takes them apart, and where one
is shown (logs, ``rideshare status``, reprs) its password is masked in every form."""

from __future__ import annotations

import pytest

from rideshare.settings import InfraUrls, mask_url

MULTI = (
    "postgresql://rideshare:s3cret@10.0.0.1:5432,10.0.0.2:5432/rideshare"
    "?target_session_attrs=read-write"
)


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        (
            MULTI,
            "postgresql://rideshare:***@10.0.0.1:5432,10.0.0.2:5432/rideshare"
            "?target_session_attrs=read-write",
        ),
        (
            "postgresql://u:s3cret@pg-a,pg-b/db?target_session_attrs=read-write",
            "postgresql://u:***@pg-a,pg-b/db?target_session_attrs=read-write",
        ),
        (
            "postgresql://u@pg-a:5432,pg-b:5432/db?password=s3cret&target_session_attrs=read-write",
            "postgresql://u@pg-a:5432,pg-b:5432/db?password=***&target_session_attrs=read-write",
        ),
        (
            "host=pg-a,pg-b port=5432 user=u password=s3cret target_session_attrs=read-write",
            "host=pg-a,pg-b port=5432 user=u password=*** target_session_attrs=read-write",
        ),
        ("host=pg-a password='s3 cret' dbname=db", "host=pg-a password=*** dbname=db"),
        ("postgresql://u@pg-a,pg-b/db", "postgresql://u@pg-a,pg-b/db"),
    ],
)
def test_a_password_is_masked_in_every_form_of_a_multi_host_dsn(dsn: str, masked: str) -> None:
    assert mask_url(dsn) == masked
    assert "s3" not in mask_url(dsn)


def test_the_settings_keep_a_multi_host_dsn_as_given_and_never_show_its_password() -> None:
    urls = InfraUrls(redis_url="redis://r:6379/0", postgres_dsn=MULTI, nats_url="nats://n:4222")
    assert urls.postgres_dsn == MULTI
    assert urls.for_service("trip").postgres_dsn == MULTI
    assert "s3cret" not in repr(urls)
