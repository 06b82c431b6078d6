"""Helpers shared by promstat's tests: waiting for events, canned fleets and scenarios.

A package (not top-level modules found only through pytest's import mode), imported as
``from _support.waiting import poll_until``: pytest puts ``tests/`` on ``sys.path``.
"""
