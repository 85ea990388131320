"""An executor process's collector: what was loaded at start is left alone, young collections come seldom."""

import gc

from mge.executor.worker import tune_gc_for_bursts


def test_the_objects_loaded_at_start_are_frozen_and_young_collections_are_rarer():
    before = gc.get_threshold()
    try:
        tune_gc_for_bursts()

        assert gc.get_freeze_count() > 10_000  # this process's modules, at least
        young, middle, old = gc.get_threshold()
        assert young >= 50 * before[0]
        assert (middle, old) == before[1:]
        full_collection_every = young * middle * old
        assert full_collection_every > 1_000_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
