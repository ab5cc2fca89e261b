"""A traffic simulator for the A/B measurement: users, sessions, generations and events.

- ``model``: user kinds, behaviour parameters and the candidate's true ``Effects``;
- ``generate``: the deterministic, vectorised generator (``Simulator``);
- ``reduce``: the SQL metric definitions recomputed in numpy (ground truth, fast path);
- ``truth``: each metric's true value per arm, measured on a large population;
- ``pipeline``: drives the real gateway, producer, job records and event ingestion;
- ``command``: `canary simulate`, a simulated experiment in the configured database.
"""
