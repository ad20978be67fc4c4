"""
Password guessing against a running edge: concurrent guesses for one
account, many names from one address, and the owner logging in from an
address of their own while an attacker guesses.
"""

from __future__ import annotations

import json
import math
import time

import treq
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relay.edge.login_throttle import LoginThrottle, Throttled, address_group
from tests.edge.security.world import PASSWORD, SecureEdge

MANY = "[web]\nmax_connections_per_address = 256\n"


async def login(base: str, name: str, password: str) -> tuple[int, str | None]:
    response = await treq.post(f"{base}/api/login", json={"name": name, "password": password}, persistent=False)
    await response.content()
    retry = response.headers.getRawHeaders("retry-after")
    return response.code, None if retry is None else retry[0]


def body(name: str, password: str) -> bytes:
    return json.dumps({"name": name, "password": password}).encode()


class ConcurrentLoginTests(TestCase):
    timeout = 120

    async def concurrent(self, edge: SecureEdge, n: int, right_at: int | None) -> list[tuple[int, str | None]]:
        attempts = [
            Deferred.fromCoroutine(login(edge.base, "alice", PASSWORD if i == right_at else f"guess {i}"))
            for i in range(n)
        ]
        return list(await gatherResults(attempts))

    async def test_50_concurrent_guesses_are_not_all_evaluated(self) -> None:
        edge = SecureEdge(self, MANY)
        answers = await self.concurrent(edge, 50, right_at=45)
        evaluated = [code for code, _ in answers if code != 429]
        self.assertLessEqual(len(evaluated), 3, answers)
        self.assertEqual(set(evaluated), {401})
        self.assertEqual(answers[45][0], 429, "the right password, sent 46th, was not evaluated")
        self.assertTrue(all(retry is not None and int(retry) >= 1 for code, retry in answers if code == 429))

    async def test_200_concurrent_guesses(self) -> None:
        edge = SecureEdge(self, MANY)
        started = time.monotonic()
        answers = await self.concurrent(edge, 200, right_at=None)
        elapsed = time.monotonic() - started
        evaluated = [code for code, _ in answers if code != 429]
        # Three free failures, then one more each time the delay (1 s,
        # doubling) has passed since the last one.
        allowed = 3 + math.floor(math.log2(elapsed + 1))
        self.assertLessEqual(len(evaluated), allowed, (elapsed, answers))
        self.assertEqual(set(evaluated), {401})

    async def test_the_owner_logs_in_from_an_address_without_failures(self) -> None:
        edge = SecureEdge(self, MANY)
        for i in range(10):
            await login(edge.base, "alice", f"guess {i}")
        self.assertEqual((await login(edge.base, "alice", PASSWORD))[0], 429, "the guessing address waits")
        # A second address that guesses gets one try, then is held back by
        # the account's failures.
        wrong = body("alice", "another guess")
        head = edge.request_head("POST", "/api/login", {"Content-Type": "application/json",
                                                        "Content-Length": str(len(wrong)), "Connection": "close"})
        first = await edge.exchange(head, [wrong], source="127.0.0.10")
        self.assertEqual(first.status, 401)
        second = await edge.exchange(head, [wrong], source="127.0.0.10")
        self.assertEqual(second.status, 429)
        # The owner, from an address of their own, is not.
        head = edge.request_head("POST", "/api/login", {"Content-Type": "application/json",
                                                        "Content-Length": str(len(body("alice", PASSWORD))),
                                                        "Connection": "close"})
        seen = await edge.exchange(head, [body("alice", PASSWORD)], source="127.0.0.9")
        self.assertEqual(seen.status, 200, seen)

    async def test_many_names_from_one_address_are_limited(self) -> None:
        edge = SecureEdge(self, MANY)
        answers = [await login(edge.base, f"user{i}", "guess") for i in range(30)]
        self.assertEqual([code for code, _ in answers[:3]], [401, 401, 401])
        self.assertEqual({code for code, _ in answers[3:]}, {429})

    async def test_unknown_names_get_the_same_answers(self) -> None:
        edge = SecureEdge(self, MANY)
        self.assertEqual(await login(edge.base, "alice", "guess"), await login(edge.base, "mallory", "guess"))


class ThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LoginThrottle(self.clock, free=3, delay=1.0, cap=8.0, window=100.0, in_flight=5)

    def test_reserved_attempts_count_before_they_are_checked(self) -> None:
        held = [self.throttle.reserve("alice", "a1") for _ in range(3)]
        with self.assertRaises(Throttled) as refused:
            self.throttle.reserve("alice", "a1")
        self.assertEqual(refused.exception.retry_after, 1)
        held[0].succeeded()  # a right password takes its reservation back
        self.throttle.reserve("alice", "a1")

    def test_the_delay_doubles_up_to_the_cap(self) -> None:
        waits = []
        for _ in range(8):
            while True:
                try:
                    self.throttle.reserve("alice", "a1").failed()
                    break
                except Throttled as t:
                    waits.append(t.retry_after)
                    self.clock.advance(t.retry_after)
        self.assertEqual(waits, [1, 2, 4, 8, 8])

    def test_failures_are_forgotten_after_the_window(self) -> None:
        for _ in range(3):
            self.throttle.reserve("alice", "a1").failed()
        self.assertRaises(Throttled, self.throttle.reserve, "alice", "a1")
        self.clock.advance(101)
        self.throttle.reserve("alice", "a1")

    def test_a_clean_address_passes_the_account_s_failures(self) -> None:
        for _ in range(3):
            self.throttle.reserve("alice", "a1").failed()
        self.throttle.reserve("alice", "a2").succeeded()

    def test_attempts_in_flight_are_capped(self) -> None:
        for i in range(5):
            self.throttle.reserve(f"user{i}", f"a{i}")
        self.assertRaises(Throttled, self.throttle.reserve, "user9", "a9")

    def test_an_ipv6_64_is_one_address(self) -> None:
        self.assertEqual(address_group("2001:db8:1:2:aaaa::1"), address_group("2001:db8:1:2:bbbb::9"))
        self.assertNotEqual(address_group("2001:db8:1:2::1"), address_group("2001:db8:1:3::1"))
        self.assertEqual(address_group("::ffff:192.0.2.7"), "192.0.2.7")
        for i in range(3):
            self.throttle.reserve(f"user{i}", f"2001:db8::{i}").failed()
        self.assertRaises(Throttled, self.throttle.reserve, "user9", "2001:db8::99")

    def test_an_unsettled_attempt_counts_as_failed(self) -> None:
        attempt = self.throttle.reserve("alice", "a1")
        attempt.failed()
        attempt.succeeded()  # too late: settled once
        self.assertEqual(self.throttle.in_flight, 0)
