"""The HTTP limits' pure parts: trigger attributes (defaults, Nuclio's readBufferSize, field-precise
errors), the size of a head, and the rate-limited log of refused connections."""

from __future__ import annotations

import asyncio
import logging

import pytest

from nubis.errors import SpecError
from nubis.processor.triggers.http_config import HttpTriggerConfig
from nubis.processor.triggers.http_limits import HttpLimits, RefusalLog, exact_head_size

WHERE = "spec.triggers.http.attributes"


def limits(attributes: dict[str, object]) -> HttpLimits:
    return HttpTriggerConfig.from_attributes(attributes, WHERE).limits


def test_defaults_are_out_of_reach_of_real_clients() -> None:
    assert limits({}) == HttpLimits(
        max_header_count=100,
        max_header_bytes=64 * 1024,
        max_url_bytes=16 * 1024,
        header_read_timeout=10.0,
        idle_timeout=75.0,
        max_connections=4096,
    )


def test_attributes_are_read_case_insensitively_and_zero_turns_a_timeout_off() -> None:
    read = limits(
        {
            "MAXHEADERCOUNT": 5,
            "maxheaderbytes": "2048",
            "MaxUrlBytes": 512,
            "headerReadTimeout": "1.5s",
            "idleTimeout": "0",
            "maxConnections": "10",
        }
    )
    assert read == HttpLimits(5, 2048, 512, 1.5, None, 10)


def test_read_buffer_size_bounds_the_head_unless_max_header_bytes_is_given() -> None:
    # In Nuclio a head must fit the trigger's readBufferSize.
    assert limits({"readBufferSize": 4096}).max_header_bytes == 4096
    assert limits({"readBufferSize": 4096, "maxHeaderBytes": 8192}).max_header_bytes == 8192


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"maxHeaderCount": 0}, f"{WHERE}.maxHeaderCount: must be positive (expected a positive number of headers"),
        ({"maxHeaderBytes": "big"}, f"{WHERE}.maxHeaderBytes: must be an integer (expected an integer, found 'big')"),
        ({"readBufferSize": -1}, f"{WHERE}.readBufferSize: must be positive"),
        ({"maxUrlBytes": True}, f"{WHERE}.maxUrlBytes: must be an integer"),
        ({"maxConnections": 0}, f"{WHERE}.maxConnections: must be positive (expected a positive number of connections"),
        ({"headerReadTimeout": "10"}, f"{WHERE}.headerReadTimeout: invalid duration (expected a Go duration"),
        ({"idleTimeout": 30}, f"{WHERE}.idleTimeout: invalid duration"),
        ({"idleTimeout": "-5s"}, f"{WHERE}.idleTimeout: must not be negative (expected a duration such as '10s'"),
    ],
)
def test_errors_name_the_field_and_what_was_expected(attributes: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError) as info:
        limits(attributes)
    assert message in str(info.value)


def test_exact_head_size_counts_the_url_and_every_header_line() -> None:
    headers = [(b"Host", b"a"), (b"X-Long", b"v" * 100)]
    # "/path" + " \r\n" less the method and version, then "Host: a\r\n" and "X-Long: v...\r\n"
    assert exact_head_size(b"/path", headers) == 5 + 2 + (4 + 1 + 4) + (6 + 100 + 4)


def test_refused_connections_are_logged_once_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    async def refuse_five() -> None:
        refusals = RefusalLog(
            logging.getLogger("nubis.test"), lambda count: f"refused {count}", interval=0.01, clock=lambda: 0.0
        )
        for _ in range(5):
            refusals.refused()
        # one line at once; the four refused in the quiet time follow in one line when it ends
        assert [record.getMessage() for record in caplog.records] == ["refused 1"]
        deadline = asyncio.get_running_loop().time() + 5
        while len(caplog.records) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        refusals.close()

    with caplog.at_level(logging.WARNING, logger="nubis.test"):
        asyncio.run(refuse_five())
    assert [record.getMessage() for record in caplog.records] == ["refused 1", "refused 4"]
