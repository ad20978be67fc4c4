"""
The RFC 9110 rules of a download (L{relay.edge.downloads.http}), one by one.
"""

from __future__ import annotations

from twisted.trial import unittest

from relay.edge.downloads.http import (
    Answer,
    content_type,
    decide,
    disposition,
    etag_of,
    http_date,
    parse_range,
)

SHA = "ab" * 32
ETAG = etag_of(SHA)
MODIFIED = 1_700_000_000.0
LENGTH = 1000


def ask(**headers: str) -> Answer:
    return decide({k.replace("_", "-"): v for k, v in headers.items()}, LENGTH, ETAG, MODIFIED)


class Ranges(unittest.TestCase):
    def test_one_range_of_each_form(self) -> None:
        self.assertEqual(parse_range("bytes=0-99", LENGTH), (0, 100))
        self.assertEqual(parse_range("bytes=900-", LENGTH), (900, 1000))
        self.assertEqual(parse_range("bytes=-100", LENGTH), (900, 1000))
        self.assertEqual(parse_range("bytes=-5000", LENGTH), (0, 1000))
        self.assertEqual(parse_range("bytes = 10 - 19", LENGTH), (10, 20))

    def test_a_range_past_the_end_is_clamped_and_one_starting_there_unsatisfiable(self) -> None:
        self.assertEqual(parse_range("bytes=990-5000", LENGTH), (990, 1000))
        self.assertEqual(parse_range("bytes=1000-", LENGTH), "unsatisfiable")
        self.assertEqual(parse_range("bytes=-0", LENGTH), "unsatisfiable")
        self.assertEqual(parse_range("bytes=0-", 0), "unsatisfiable")

    def test_malformed_multiple_or_other_units_are_ignored(self) -> None:
        for value in ("bytes=0-1,5-6", "bytes=5-1", "items=0-1", "bytes=", "bytes=-", "bytes=a-b", "0-1",
                      "bytes=0-1 junk", "bytes=" + ",".join(["0-1"] * 1000), "bytes=１-２"):
            self.assertIsNone(parse_range(value, LENGTH), value)
        self.assertEqual(ask(range="bytes=0-1,3-4"), Answer(200, 0, LENGTH))

    def test_answers(self) -> None:
        self.assertEqual(ask(), Answer(200, 0, LENGTH))
        self.assertEqual(ask(range="bytes=10-19"), Answer(206, 10, 20))
        self.assertEqual(ask(range="bytes=5000-"), Answer(416))


class Conditions(unittest.TestCase):
    def test_if_none_match_is_304_and_compares_weakly(self) -> None:
        self.assertEqual(ask(if_none_match=ETAG).status, 304)
        self.assertEqual(ask(if_none_match=f'"other", W/{ETAG}').status, 304)
        self.assertEqual(ask(if_none_match="*").status, 304)
        self.assertEqual(ask(if_none_match='"other"').status, 200)

    def test_if_modified_since_only_without_if_none_match(self) -> None:
        self.assertEqual(ask(if_modified_since=http_date(MODIFIED)).status, 304)
        self.assertEqual(ask(if_modified_since=http_date(MODIFIED - 10)).status, 200)
        self.assertEqual(
            ask(if_modified_since=http_date(MODIFIED), if_none_match='"other"').status, 200
        )
        self.assertEqual(ask(if_modified_since="not a date").status, 200)

    def test_if_match_compares_strongly(self) -> None:
        self.assertEqual(ask(if_match=ETAG).status, 200)
        self.assertEqual(ask(if_match=f"W/{ETAG}").status, 412)
        self.assertEqual(ask(if_match='"other"').status, 412)
        self.assertEqual(ask(if_unmodified_since=http_date(MODIFIED - 10)).status, 412)

    def test_if_range_with_an_old_etag_or_date_sends_the_whole_file(self) -> None:
        self.assertEqual(ask(range="bytes=10-19", if_range=ETAG), Answer(206, 10, 20))
        self.assertEqual(ask(range="bytes=10-19", if_range='"old"'), Answer(200, 0, LENGTH))
        self.assertEqual(ask(range="bytes=10-19", if_range=f"W/{ETAG}"), Answer(200, 0, LENGTH))
        self.assertEqual(
            ask(range="bytes=10-19", if_range=http_date(MODIFIED)), Answer(206, 10, 20)
        )
        self.assertEqual(
            ask(range="bytes=10-19", if_range=http_date(MODIFIED - 1)), Answer(200, 0, LENGTH)
        )
        # A stale If-Range makes even an unsatisfiable range the whole file.
        self.assertEqual(ask(range="bytes=5000-", if_range='"old"'), Answer(200, 0, LENGTH))


class Headers(unittest.TestCase):
    def test_content_disposition_has_a_safe_ascii_name_and_the_real_one(self) -> None:
        self.assertEqual(disposition("report.json"),
                         "attachment; filename=\"report.json\"; filename*=UTF-8''report.json")
        value = disposition('设计 "v2"\r\n/../x.v')
        ascii_part = value.split(";")[1]
        self.assertTrue(value.isascii())
        self.assertNotIn("\r", value)
        self.assertNotIn("/", ascii_part)
        self.assertIn("filename*=UTF-8''%E8%AE%BE%E8%AE%A1%20%22v2%22%0D%0A_.._x.v", value)
        self.assertTrue(disposition("a\ud800b").isascii())
        self.assertIn('filename="download"', disposition("设计"))

    def test_content_type_is_the_stored_one_when_it_is_passive(self) -> None:
        self.assertEqual(content_type("application/json"), "application/json")
        self.assertEqual(content_type("text/plain; charset=utf-8"), "text/plain; charset=utf-8")
        for active in ("text/html", "TEXT/HTML; charset=utf-8", "image/svg+xml", "application/xhtml+xml",
                       "text/javascript", "", "nonsense", "text/plain\r\nX-Evil: 1"):
            self.assertEqual(content_type(active), "application/octet-stream", active)
