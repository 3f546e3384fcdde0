"""Run with ``python manage.py test shop``: no broker needed, the agents are
served in the test process on memory://."""

from django.test import SimpleTestCase

from replies.contrib.django import serving_in_memory


class SquareTests(SimpleTestCase):
    @serving_in_memory()
    def test_square(self) -> None:
        response = self.client.get("/square/7")
        self.assertEqual(response.status_code, 200)
        self.assertEqual((response.json()["n"], response.json()["square"]), (7, 49))

    def test_many_requests(self) -> None:
        with serving_in_memory():
            for n in range(20):
                self.assertEqual(self.client.get(f"/square/{n}").json()["square"], n * n)
