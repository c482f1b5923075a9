"""Timings of the repository itself, each a command run from the repository root:
``python -m scripts.test_suite`` (the test suite from a fresh clone) and
``python -m scripts.main_job`` (the main job from a fresh clone); their committed results
are in ``scripts/test_suite/`` and ``scripts/main_job/``. The shell scripts beside them
(``env.sh``, ``main.sh``, ``test.sh``) are the README's commands."""
