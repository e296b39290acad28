import numpy as np
import pytest

from squeezenet.utils import numpy_small_pages

switch = getattr(getattr(getattr(np, "_core", None), "multiarray", None), "_set_madvise_hugepage", None)


@pytest.mark.skipif(switch is None, reason="this numpy has no huge-page switch")
def test_numpy_small_pages_turns_huge_pages_off_inside_and_restores_the_setting_after():
    before = switch(True)  # set a known state; returns the previous one
    try:
        with numpy_small_pages():
            assert switch(False) is False  # off inside
        assert switch(True) is True  # back on after
        with pytest.raises(RuntimeError), numpy_small_pages():
            raise RuntimeError
        assert switch(True) is True  # restored after an exception too
    finally:
        switch(before)
