"""Every test: the user cache in a temporary folder, and no timing of CPU batch sizes.

``ranlib.training.config.resolve`` measures the fastest batch of a CPU profile (``ranlib.training.cpu_batch``);
outside the tests that ask for ``real_step_timing`` the measurement answers at once, the
largest candidate fastest, so a CPU resolves the profiles' own batches as before.
"""

from __future__ import annotations

import pytest

from ranlib.training import cpu_batch

STEP_IMAGES_PER_S = cpu_batch.step_images_per_s


@pytest.fixture(autouse=True)
def _user_cache_and_no_batch_timing(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
    monkeypatch.setattr(cpu_batch, "step_images_per_s", lambda model, *, batch_size, **_: float(batch_size))


@pytest.fixture
def real_step_timing(monkeypatch):
    """``ranlib.training.cpu_batch.step_images_per_s`` times real steps again."""
    monkeypatch.setattr(cpu_batch, "step_images_per_s", STEP_IMAGES_PER_S)
